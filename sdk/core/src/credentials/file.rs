//! A credentials file: keys as JSON, rewritten atomically on every rotation.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Credentials;

/// Why a credentials file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsFileError {
    /// The file could not be read or written.
    #[error("credentials file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("credentials file {path}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message (it never quotes the file's content).
        message: String,
    },
    /// The JSON is not credential keys.
    #[error("credentials file {path}: {source}")]
    Keys {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: super::CredentialsError,
    },
}

/// A JSON file holding one credential's keys. As a [`KeysSink`](crate::auth::KeysSink)
/// (implemented in `auth`, which builds on `credentials`), it rewrites the file with every
/// rotated token set: to a temporary file in the same directory, fsync, rename over the old
/// file, fsync the directory — so after a crash the file holds either the old or the new keys,
/// never a torn mix, and a single-use refresh token survives a restart.
#[derive(Clone, Debug)]
pub struct CredentialsFile {
    path: PathBuf,
}

impl CredentialsFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the keys.
    pub fn load(&self) -> Result<Credentials, CredentialsFileError> {
        let text = std::fs::read(&self.path).map_err(|source| CredentialsFileError::Io {
            path: self.path.clone(),
            source,
        })?;
        let keys: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| CredentialsFileError::Json {
                path: self.path.clone(),
                line: e.line(),
                column: e.column(),
                message: json_error_kind(&e),
            })?;
        Credentials::from_keys(keys).map_err(|source| CredentialsFileError::Keys {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the file's content with `credentials`, atomically and durably.
    pub fn store(&self, credentials: &Credentials) -> Result<(), CredentialsFileError> {
        let io = |source| CredentialsFileError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut text = serde_json::to_vec_pretty(&credentials.to_keys())
            .map_err(|e| io(std::io::Error::other(e)))?;
        text.push(b'\n');
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        // The rename itself must reach the disk too.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// serde_json's message without the position (reported separately) and without quoting input.
fn json_error_kind(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read error".into(),
        Category::Syntax => "syntax error".into(),
        Category::Data => "unexpected data".into(),
        Category::Eof => "unexpected end of file".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = CredentialsFile::new(dir.path().join("creds.json"));
        let creds =
            Credentials::from_keys(json!({"oauth": {"refresh_token": "r1"}, "x": 1})).unwrap();
        file.store(&creds).unwrap();
        assert_eq!(file.load().unwrap(), creds);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_json_names_line_and_column_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        std::fs::write(&path, "{\n  \"oauth\": {\"refresh_token\": SECRET}\n}").unwrap();
        let err = CredentialsFile::new(&path).load().unwrap_err().to_string();
        assert!(err.contains("line 2, column"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }
}
