//! The `validate` command, reusable by any binary that embeds Deckhand's command line.
//!
//! ```no_run
//! use clap::{Parser, Subcommand};
//! use deckhand_component::cli::ValidateArgs;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     command: Command,
//! }
//!
//! #[derive(Subcommand)]
//! enum Command {
//!     /// Validate component.json descriptors.
//!     Validate(ValidateArgs),
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     match Cli::parse().command {
//!         Command::Validate(args) => args
//!             .run(&mut std::io::stdout(), &mut std::io::stderr())
//!             .into(),
//!     }
//! }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{Finding, Report, validate_file};

/// Arguments of `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ValidateArgs {
    /// component.json files or component directories.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
    /// Exit 1 on warnings too, not only on errors (for CI).
    #[arg(long)]
    pub deny_warnings: bool,
}

impl ValidateArgs {
    /// Runs the command, writing results to `out` and read failures to `err`.
    pub fn run(&self, out: &mut dyn Write, err: &mut dyn Write) -> ValidateStatus {
        run_validate_with(
            &self.paths,
            &RunOptions {
                format: self.format,
                deny_warnings: self.deny_warnings,
            },
            out,
            err,
        )
    }
}

/// How [`run_validate_with`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Output format.
    pub format: OutputFormat,
    /// Treat warnings as failures: exit 1 when any descriptor has warnings.
    pub deny_warnings: bool,
}

/// How `validate` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Per file, the findings of each rule (one "file:line:column: severity: pointer: message"
    /// line each, ending with the rule's code), then the rule's fix; a summary line last.
    #[default]
    Human,
    /// A JSON array with one object per path and its findings (with `code` and `fix`).
    Json,
}

/// Outcome of `validate`, mapped to the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateStatus {
    /// Exit 0: no errors (warnings allowed unless denied).
    Valid,
    /// Exit 1: at least one descriptor has errors (or warnings, with `--deny-warnings`).
    Invalid,
    /// Exit 2: a path could not be read or the output could not be written.
    Failed,
}

impl ValidateStatus {
    /// The process exit code: 0, 1 or 2.
    pub fn code(self) -> u8 {
        match self {
            ValidateStatus::Valid => 0,
            ValidateStatus::Invalid => 1,
            ValidateStatus::Failed => 2,
        }
    }
}

impl From<ValidateStatus> for ExitCode {
    fn from(status: ValidateStatus) -> Self {
        ExitCode::from(status.code())
    }
}

/// JSON output for one path.
#[derive(Serialize)]
struct FileResult<'a> {
    path: String,
    valid: bool,
    errors: usize,
    warnings: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    io_error: Option<String>,
    findings: &'a [Finding],
}

/// Validates every path (a `component.json` or a component directory) and prints the results.
///
/// Human output: findings grouped by rule with the rule's fix (see [`Report::grouped`]), then
/// a summary line; read failures go to `err`.
/// JSON output: an array with, per path, `{"path", "valid", "errors", "warnings", "findings":
/// [{"severity", "file", "pointer", "line", "column", "message", "code", "fix"}]}` plus
/// `"io_error"` when the path could not be read.
///
/// Every path is processed even after a failure; the status is the worst seen.
pub fn run_validate(
    paths: &[PathBuf],
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ValidateStatus {
    run_validate_with(
        paths,
        &RunOptions {
            format,
            deny_warnings: false,
        },
        out,
        err,
    )
}

/// [`run_validate`] with every option, e.g. `deny_warnings` for CI.
pub fn run_validate_with(
    paths: &[PathBuf],
    options: &RunOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ValidateStatus {
    let results: Vec<(&Path, Result<Report, String>)> = paths
        .iter()
        .map(|path| {
            (
                path.as_path(),
                validate_file(path).map_err(|error| error.to_string()),
            )
        })
        .collect();
    let mut status = ValidateStatus::Valid;
    for (_, result) in &results {
        match result {
            Err(_) => status = ValidateStatus::Failed,
            Ok(report)
                if (report.has_errors() || (options.deny_warnings && report.has_warnings()))
                    && status == ValidateStatus::Valid =>
            {
                status = ValidateStatus::Invalid;
            }
            Ok(_) => {}
        }
    }
    let written = match options.format {
        OutputFormat::Human => write_human(&results, options.deny_warnings, out, err),
        OutputFormat::Json => write_json(&results, options.deny_warnings, out),
    };
    match written {
        Ok(()) => status,
        Err(_) => ValidateStatus::Failed,
    }
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("{count} {word}")
    } else {
        format!("{count} {word}s")
    }
}

fn write_human(
    results: &[(&Path, Result<Report, String>)],
    deny_warnings: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<()> {
    let (mut errors, mut warnings, mut failed) = (0, 0, 0);
    for (_, result) in results {
        match result {
            Ok(report) => {
                write!(out, "{}", report.grouped())?;
                errors += report.errors().count();
                warnings += report.warnings().count();
            }
            Err(message) => {
                writeln!(err, "deckhand validate: {message}")?;
                failed += 1;
            }
        }
    }
    write!(
        out,
        "{}, {} in {}",
        plural(errors, "error"),
        plural(warnings, "warning"),
        plural(results.len(), "path"),
    )?;
    if failed > 0 {
        write!(out, " ({} could not be read)", failed)?;
    }
    if deny_warnings && warnings > 0 {
        write!(out, "; warnings are denied")?;
    }
    writeln!(out)?;
    out.flush()
}

fn write_json(
    results: &[(&Path, Result<Report, String>)],
    deny_warnings: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let entries: Vec<FileResult<'_>> = results
        .iter()
        .map(|(path, result)| match result {
            Ok(report) => {
                let errors = report.errors().count();
                let warnings = report.warnings().count();
                FileResult {
                    path: path.to_string_lossy().into_owned(),
                    valid: errors == 0 && !(deny_warnings && warnings > 0),
                    errors,
                    warnings,
                    io_error: None,
                    findings: &report.findings,
                }
            }
            Err(message) => FileResult {
                path: path.to_string_lossy().into_owned(),
                valid: false,
                errors: 0,
                warnings: 0,
                io_error: Some(message.clone()),
                findings: &[],
            },
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &entries).map_err(std::io::Error::other)?;
    writeln!(out)?;
    out.flush()
}
