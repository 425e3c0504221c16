//! The `component.json` of a connector: its typed model ([`ComponentDescriptor`]), the JSON
//! Schemas shipped in `component-schemas/`, and the validator behind `deckhand validate`.
//!
//! This crate reads descriptors and nothing else: it runs no connector, refreshes no token and
//! knows no transport. The connector API (`deckhand-connector`) and the runtime use it to learn
//! a component's functions and credential fields.
//!
//! A component is described by its `component.json` (see `component-schemas/README.md` and
//! `component-schemas/component.schema.json`). This crate
//!
//! * validates a descriptor against the JSON Schema and runs the checks a schema cannot
//!   express — unique function names, select models, metadata files and their draft-03
//!   schemas, `{{name}}` placeholders, `main` modules (or the TypeScript sources `tsc` builds
//!   them from) — reporting each problem with a stable [`Code`], its severity, its JSON pointer
//!   and the line and column of the offending value ([`validate_file`], [`validate_str`],
//!   [`Report`]). Errors are what the platform rejects or what fails at run time; the rest are
//!   warnings. Every rule is listed in [`Code`] (and `component-schemas/RULES.md`);
//! * reads only regular files inside the component directory, at most [`MAX_FILE_BYTES`]
//!   each, so FIFOs, devices and paths leading out of the directory are refused unread;
//! * parses a descriptor into a tolerant typed [`ComponentDescriptor`] for the rest of the SDK;
//! * exposes the other shipped schemas ([`Schema`]) and the `deckhand validate` command
//!   (`cli`, feature `cli`).
//!
//! ```
//! use std::path::Path;
//! use deckhand_component::{validate_str, Options, Severity};
//!
//! let source = r#"{
//!   "title": "Petstore",
//!   "description": "Pets",
//!   "credentials": {"fields": {}},
//!   "actions": {
//!     "create-pet": {"title": "Create", "main": "./lib/actions/createPet.js", "dynamicMetadata": true}
//!   }
//! }"#;
//! let report = validate_str(source, Path::new("component.json"), &Options::default());
//! assert!(report.has_errors());
//! let finding = &report.findings[0];
//! assert_eq!(finding.severity, Severity::Error);
//! assert_eq!(finding.pointer, "/actions/create-pet");
//! assert_eq!((finding.line, finding.column), (6, 19));
//! assert_eq!(finding.code, deckhand_component::Code::NameInvalid);
//! assert!(finding.to_string().starts_with("component.json:6:19: error: /actions/create-pet: invalid name"));
//! ```

#![warn(missing_docs, unnameable_types)]

mod checks;
#[cfg(feature = "cli")]
pub mod cli;
mod descriptor;
mod files;
mod metadata;
mod positions;
pub mod rules;
mod schemas;
mod template;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use thiserror::Error;

pub use descriptor::{
    ComponentDescriptor, CredentialsDescriptor, DynamicMetadata, EnvVarDescriptor, FieldDescriptor,
    FieldModel, FunctionDescriptor, FunctionKind, MetadataDescriptor, MetadataSource,
    OAuth2Descriptor,
};
pub use files::MAX_FILE_BYTES;
pub use rules::Code;
pub use schemas::{Schema, Violation};
pub use template::{Placeholder, TemplateError, placeholders, render_template};

/// How serious a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The platform or a Sailor would reject or misrun the component.
    Error,
    /// Probably a mistake, but the component can run.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a descriptor (or in a metadata file it references).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning; always `code.severity()`.
    pub severity: Severity,
    /// The rule that found it (see [`Code`] for every rule, why it exists and its fix).
    pub code: Code,
    /// The file the problem is in: the descriptor, or a metadata file it references.
    pub file: PathBuf,
    /// JSON pointer of the offending value in `file`; empty for the whole document. For a
    /// missing property it is the object that lacks it.
    pub pointer: String,
    /// 1-based line of the value at `pointer` (or of the parser error).
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong. Values quoted from the input are cut short.
    pub message: String,
}

impl Finding {
    /// One line saying how to fix it (the same for every finding of a code).
    pub fn fix(&self) -> &'static str {
        self.code.fix()
    }
}

impl Serialize for Finding {
    /// `{"severity", "file", "pointer", "line", "column", "message", "code", "fix"}`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("Finding", 8)?;
        out.serialize_field("severity", &self.severity)?;
        out.serialize_field("file", &self.file.to_string_lossy())?;
        out.serialize_field("pointer", &self.pointer)?;
        out.serialize_field("line", &self.line)?;
        out.serialize_field("column", &self.column)?;
        out.serialize_field("message", &self.message)?;
        out.serialize_field("code", &self.code)?;
        out.serialize_field("fix", self.code.fix())?;
        out.end()
    }
}

impl fmt::Display for Finding {
    /// `file:line:column: severity: pointer: message`, the pointer left out when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file.display(),
            self.line,
            self.column,
            self.severity
        )?;
        if !self.pointer.is_empty() {
            write!(f, "{}: ", self.pointer)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything found in one descriptor, ordered by file, line and column (the descriptor's
/// own findings first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The findings, errors and warnings mixed.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The errors.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
}

impl Report {
    /// Whether any finding is a warning.
    pub fn has_warnings(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Warning)
    }

    /// The human output of `deckhand validate`: per file, the findings of one rule together
    /// (each as a `file:line:column: severity: pointer: message [code]` line, at most
    /// [`Grouped::LIMIT`] of them), then that rule's fix once.
    ///
    /// ```
    /// use std::path::Path;
    /// use deckhand_component::{validate_str, Options};
    /// let report = validate_str(r#"{"title": "T", "env": {}}"#, Path::new("c.json"), &Options::default());
    /// let text = report.grouped().to_string();
    /// assert!(text.contains("c.json:1:23: warning: /env: unknown top-level key \"env\""));
    /// assert!(text.contains("[W-unknown-key]\n  = fix: use the key the message suggests"));
    /// ```
    pub fn grouped(&self) -> Grouped<'_> {
        Grouped { report: self }
    }
}

/// [`Report::grouped`]'s rendering.
#[derive(Debug, Clone, Copy)]
pub struct Grouped<'r> {
    report: &'r Report,
}

impl Grouped<'_> {
    /// Findings of one rule shown per file; the rest are counted.
    pub const LIMIT: usize = 10;
}

impl fmt::Display for Grouped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (file, code) groups in order of their first finding.
        let mut groups: Vec<(&Path, Code, Vec<&Finding>)> = Vec::new();
        for finding in &self.report.findings {
            match groups
                .iter_mut()
                .find(|(file, code, _)| *file == finding.file && *code == finding.code)
            {
                Some((_, _, members)) => members.push(finding),
                None => groups.push((&finding.file, finding.code, vec![finding])),
            }
        }
        for (_, code, members) in groups {
            for finding in members.iter().take(Grouped::LIMIT) {
                writeln!(f, "{finding} [{code}]")?;
            }
            if members.len() > Grouped::LIMIT {
                writeln!(
                    f,
                    "  ... and {} more [{code}] in this file",
                    members.len() - Grouped::LIMIT
                )?;
            }
            writeln!(f, "  = fix: {}", code.fix())?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    /// One finding per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// What [`validate_str`] may look at besides the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Directory the descriptor's relative paths (metadata files, Node `main` modules) are
    /// resolved against. `None` skips every check that reads the file system.
    pub component_root: Option<PathBuf>,
    /// Check that Node-style `main` modules exist under `component_root`. Java class names
    /// are never looked up.
    pub check_main_files: bool,
}

impl Options {
    /// Options for a descriptor in `root`, with every file-system check on.
    pub fn for_directory(root: impl Into<PathBuf>) -> Self {
        Options {
            component_root: Some(root.into()),
            check_main_files: true,
        }
    }
}

/// Why a descriptor could not be validated at all.
#[derive(Debug, Error)]
pub enum ValidateError {
    /// The descriptor could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a file nor a directory holding `component.json`.
    #[error("{} is not a file or a component directory", path.display())]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
    /// The descriptor (after following symbolic links) is not a regular file, e.g. a FIFO
    /// or a device such as `/dev/zero`; it is never opened.
    #[error("{} is not a regular file but a {kind}; it was not read", path.display())]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
        /// What it is instead: "FIFO", "character device", "directory", ...
        kind: &'static str,
    },
    /// The descriptor is larger than [`MAX_FILE_BYTES`]; at most that much was read.
    #[error("{} is larger than {} MB; it was not validated", path.display(), MAX_FILE_BYTES / (1024 * 1024))]
    TooLarge {
        /// The offending path.
        path: PathBuf,
    },
}

/// Validates a `component.json`, or the `component.json` of a component directory, with every
/// file-system check on (metadata files and Node `main` modules resolved next to it).
///
/// Problems in the descriptor are [`Finding`]s of the returned [`Report`]; only failing to read
/// it is an `Err` — including a descriptor that is not a regular file (a FIFO, `/dev/zero`),
/// which is refused without being opened, and one over [`MAX_FILE_BYTES`]. Files the descriptor
/// names are read only when they are regular files inside its directory.
pub fn validate_file(path: &Path) -> Result<Report, ValidateError> {
    let metadata = std::fs::metadata(path).map_err(|source| ValidateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file = if metadata.is_dir() {
        path.join("component.json")
    } else if metadata.is_file() {
        path.to_owned()
    } else {
        return Err(ValidateError::NotAFile {
            path: path.to_owned(),
        });
    };
    let bytes = files::read_regular(&file).map_err(|error| match error {
        files::FileError::NotRegular(kind) => ValidateError::NotRegularFile {
            path: file.clone(),
            kind,
        },
        files::FileError::TooLarge => ValidateError::TooLarge { path: file.clone() },
        files::FileError::Io(source) | files::FileError::NotFound(source) => ValidateError::Io {
            path: file.clone(),
            source,
        },
        // Only paths named inside a descriptor can be outside its directory.
        files::FileError::Outside => ValidateError::Io {
            path: file.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        },
    })?;
    let root = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok(validate_bytes(&bytes, &file, &Options::for_directory(root)))
}

/// Validates descriptor text; `file` is only used to label findings.
pub fn validate_str(source: &str, file: &Path, options: &Options) -> Report {
    checks::run(source, file, options)
}

/// Validates raw descriptor bytes: invalid UTF-8 is reported as an error at its position.
pub fn validate_bytes(bytes: &[u8], file: &Path, options: &Options) -> Report {
    match checks::decode(bytes, file) {
        Ok(text) => checks::run(text, file, options),
        Err(finding) => Report {
            findings: vec![finding],
        },
    }
}
