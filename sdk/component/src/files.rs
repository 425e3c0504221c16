//! Reading the files a descriptor names, safely.
//!
//! A descriptor is untrusted input: its metadata and `main` paths may point anywhere, and the
//! descriptor itself may be a FIFO or a link to `/dev/zero`. So only **regular files** are
//! opened (a FIFO would block `open`, a device never ends), never more than
//! [`MAX_FILE_BYTES`] is read, and a path the descriptor names is refused — without touching
//! the file — when it is absolute or climbs out of the component directory, lexically
//! (`lib/../../x.json`) or through a symbolic link.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Largest file the validator reads: 10 MiB, the platform's own message size limit.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum FileError {
    /// The path does not exist.
    NotFound(std::io::Error),
    /// The path is absolute or leaves the component directory.
    Outside,
    /// Not a regular file: the kind it is instead ("FIFO", "directory", ...).
    NotRegular(&'static str),
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge,
    /// Any other I/O error.
    Io(std::io::Error),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::NotFound(_) => f.write_str("not found"),
            FileError::Outside => f.write_str("outside the component directory"),
            FileError::NotRegular(kind) => write!(f, "not a regular file but a {kind}"),
            FileError::TooLarge => write!(f, "larger than {} MB", MAX_FILE_BYTES / (1024 * 1024)),
            FileError::Io(error) => write!(f, "{error}"),
        }
    }
}

fn io_error(error: std::io::Error) -> FileError {
    if error.kind() == std::io::ErrorKind::NotFound {
        FileError::NotFound(error)
    } else {
        FileError::Io(error)
    }
}

/// What kind of file system object `metadata` describes, for messages.
pub(crate) fn kind_of(metadata: &Metadata) -> &'static str {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        return "directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    if file_type.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Reads a regular file (following symbolic links) of at most [`MAX_FILE_BYTES`].
pub(crate) fn read_regular(path: &Path) -> Result<Vec<u8>, FileError> {
    // stat() never blocks, unlike open() on a FIFO, so the type is checked first.
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(FileError::NotRegular(kind_of(&metadata)));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    let file = File::open(path).map_err(io_error)?;
    // The file may have been swapped or grown since stat(): check again on the open handle
    // and never read past the cap.
    let opened = file.metadata().map_err(io_error)?;
    if !opened.is_file() {
        return Err(FileError::NotRegular(kind_of(&opened)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    Ok(bytes)
}

/// `root` joined with `relative`, without `.` components, or `Outside` when `relative` is
/// absolute or its `..` climb above `root`. Purely lexical: nothing is touched.
pub(crate) fn join_inside(root: &Path, relative: &str) -> Result<PathBuf, FileError> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for component in Path::new(relative).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::ParentDir => {
                if depth == 0 {
                    return Err(FileError::Outside);
                }
                out.pop();
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => return Err(FileError::Outside),
        }
    }
    Ok(out)
}

/// The component directory a descriptor's relative paths are resolved in.
#[derive(Debug, Clone)]
pub(crate) struct ComponentDir {
    root: PathBuf,
    /// `root` with symbolic links resolved, when it exists.
    canonical: Option<PathBuf>,
}

impl ComponentDir {
    pub(crate) fn new(root: &Path) -> Self {
        ComponentDir {
            root: root.to_path_buf(),
            canonical: std::fs::canonicalize(root).ok(),
        }
    }

    /// The path of `relative` in the directory, refused lexically when it leaves it.
    pub(crate) fn join(&self, relative: &str) -> Result<PathBuf, FileError> {
        join_inside(&self.root, relative)
    }

    /// Metadata of `path` (a result of [`ComponentDir::join`]) once symbolic links are
    /// resolved, or `Outside` when a link leads out of the directory.
    fn resolve(&self, path: &Path) -> Result<Metadata, FileError> {
        let resolved = std::fs::canonicalize(path).map_err(io_error)?;
        let inside = self
            .canonical
            .as_ref()
            .is_some_and(|root| resolved.starts_with(root));
        if !inside {
            return Err(FileError::Outside);
        }
        std::fs::metadata(&resolved).map_err(io_error)
    }

    /// Whether `path` is a regular file inside the directory (links resolved).
    pub(crate) fn is_regular_file(&self, path: &Path) -> bool {
        self.resolve(path).is_ok_and(|metadata| metadata.is_file())
    }

    /// Reads `path` (a result of [`ComponentDir::join`]): a regular file inside the directory,
    /// links resolved, of at most [`MAX_FILE_BYTES`].
    pub(crate) fn read(&self, path: &Path) -> Result<Vec<u8>, FileError> {
        let metadata = self.resolve(path)?;
        if !metadata.is_file() {
            return Err(FileError::NotRegular(kind_of(&metadata)));
        }
        read_regular(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_escapes_are_refused() {
        let root = Path::new("/c");
        assert_eq!(
            join_inside(root, "./lib/a.js").ok(),
            Some(PathBuf::from("/c/lib/a.js"))
        );
        assert_eq!(
            join_inside(root, "lib/../b.json").ok(),
            Some(PathBuf::from("/c/b.json"))
        );
        for bad in [
            "../x",
            "lib/../../x.json",
            "../../../../etc/shadow",
            "/etc/passwd",
            "a/../..",
        ] {
            assert!(
                matches!(join_inside(root, bad), Err(FileError::Outside)),
                "{bad}"
            );
        }
    }
}
