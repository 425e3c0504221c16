//! The entry point of a connector binary: `deckhand::main(MyConnector, include_str!(…))`.
//!
//! Subcommands:
//! * `validate` — the embedded component.json, plus the cross-check of the connector's
//!   [`Router`](crate::connector::Router) against it: a declared function without a handler
//!   and a handler without a declaration are both errors (exit 1); see
//!   [`cross_check`](crate::connector::router::cross_check).
//! * `verify --credentials FILE` — prints `{"verified": …}`; exit 0 verified, 1 not verified,
//!   2 error.
//! * `exec FUNCTION --credentials FILE [--message FILE|-] [--config FILE] [--snapshot FILE]` —
//!   runs one message and prints each event as a JSON line; rotated keys are written back to the
//!   credentials file atomically. Exit 0, or 1 when the function emitted an error.
//! * `component` — prints the embedded descriptor.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::auth::{KeysSink, MemorySink};
use crate::component::ComponentDescriptor;
pub use crate::connector::message_from_json;
use crate::connector::{Connector, Message, Session, StepConfig, Verification};
use crate::credentials::{Credentials, CredentialsFile};
use crate::runtime::worker::StepData;
pub use crate::runtime::worker::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::transport::{FileKeysSink, JsonLines, LinesEmitter};

#[derive(Debug, Parser)]
#[command(version, about = "A Deckhand connector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the embedded component.json and check it against the connector's handlers.
    Validate,
    /// Verify credentials; prints the verification as JSON.
    Verify {
        /// JSON file with the credential's keys.
        #[arg(long)]
        credentials: PathBuf,
    },
    /// Run one message through a trigger or action; prints each event as a JSON line.
    Exec {
        /// The trigger or action to run.
        function: String,
        /// JSON file with the credential's keys; rotated keys are written back to it.
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// The input message as JSON (`{"body": …}`; an object without `body` is the body),
        /// or `-` for standard input. Default: an empty body.
        #[arg(long)]
        message: Option<String>,
        /// JSON object with the step's configuration fields.
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON file with the step's snapshot; a new snapshot the function emits is written
        /// back to it, so repeated polls continue where the last one stopped.
        #[arg(long)]
        snapshot: Option<PathBuf>,
    },
    /// Print the embedded component.json.
    Component,
    /// Run as a worker: over RabbitMQ with the elastic.io protocol (configured by the
    /// `ELASTICIO_*` environment variables), or with `--local` over JSON lines (no broker).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Use the local transport: messages as JSON lines from --input, events as JSON lines on
    /// standard output, rotated keys written to --credentials.
    #[arg(long)]
    local: bool,
    /// Step file: `{"function": …, "config": {…}, "snapshot": {…}}`.
    #[arg(long, env = "DECKHAND_STEP_FILE")]
    step: Option<PathBuf>,
    /// The trigger or action to run (overrides the step file's `function`).
    #[arg(long)]
    function: Option<String>,
    /// (--local) JSON file with the credential's keys; rotated keys are written back to it.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// (--local) Messages as JSON lines: a file, or `-` for standard input.
    #[arg(long, default_value = "-")]
    input: String,
}

/// Runs a connector binary's command line. Call it from `main`:
///
/// ```no_run
/// # use deckhand::connector::*;
/// # struct MyConnector;
/// # #[async_trait::async_trait]
/// # impl Connector for MyConnector {
/// #     fn router(&self) -> Router<Self> { Router::new() }
/// #     async fn verify_credentials(&self, _: &deckhand::credentials::Credentials, _: &VerifyContext) -> Result<Verification, ConnectorError> { Ok(Verification::Verified) }
/// # }
/// fn main() -> std::process::ExitCode {
///     deckhand::main(MyConnector, r#"{"title": "My connector"}"#)
/// }
/// ```
pub fn main<C: Connector>(connector: C, component_json: &'static str) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let connector = Arc::new(connector);
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Validate => validate(connector.as_ref(), component_json),
            Command::Component => {
                println!("{}", component_json.trim_end());
                EXIT_OK
            }
            Command::Verify { credentials } => {
                verify(connector, component_json, &credentials).await
            }
            Command::Run(args) => run(connector, component_json, args).await,
            Command::Exec {
                function,
                credentials,
                message,
                config,
                snapshot,
            } => {
                let args = ExecArgs {
                    function,
                    credentials,
                    message,
                    config,
                    snapshot,
                };
                exec(connector, component_json, args).await
            }
        }
    });
    ExitCode::from(code)
}

/// Logs as JSON lines on standard error, level from `LOG_LEVEL` (default `info`).
///
/// `LOG_LEVEL` is a level (`info`, `debug`, …) or `tracing` directives (`info,deckhand_core=debug`).
/// A plain level gets a static level filter: directives are matched again each time a span
/// is entered, which for the span every message runs in costs throughput.
pub fn init_logging() {
    let setting = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let json_lines = || {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .with_span_list(true)
    };
    let _ = match setting
        .trim()
        .parse::<tracing_subscriber::filter::LevelFilter>()
    {
        Ok(level) => json_lines().with_max_level(level).try_init(),
        Err(_) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&setting)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            json_lines().with_env_filter(filter).try_init()
        }
    };
}

fn usage_error(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    EXIT_USAGE
}

fn validate<C: Connector>(connector: &C, component_json: &str) -> u8 {
    let file = Path::new("component.json");
    let report = crate::component::validate_str(component_json, file, &Default::default());
    print!("{}", report.grouped());
    let descriptor = match ComponentDescriptor::from_json(component_json) {
        Ok(d) => d,
        // The report above already says what is wrong, with line and column.
        Err(_) => return EXIT_FAILURE,
    };
    let router = connector.router();
    let problems = crate::connector::router::cross_check(&router, &descriptor);
    for p in &problems {
        println!("component.json: error: {p}");
    }
    if problems.is_empty() && !report.has_errors() {
        println!(
            "component.json: ok ({} warning(s)); every trigger and action has a handler{}",
            report.warnings().count(),
            if router.has_fallback() {
                " (those without their own go to the fallback handler)"
            } else {
                ""
            }
        );
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

/// Reads a credentials file, finding the token under the descriptor's OAuth field.
pub fn load_credentials(path: &Path, component_json: &str) -> Result<Credentials, String> {
    let credentials = CredentialsFile::new(path)
        .load()
        .map_err(|e| e.to_string())?;
    let descriptor = ComponentDescriptor::from_json(component_json)
        .map_err(|e| format!("the connector's component.json is not a valid descriptor: {e}"))?;
    match descriptor.oauth_field() {
        Some(field) if credentials.token_field() != Some(field) => {
            Credentials::with_token_field(credentials.to_keys(), field).map_err(|e| e.to_string())
        }
        _ => Ok(credentials),
    }
}

async fn verify<C: Connector>(connector: Arc<C>, component_json: &str, path: &Path) -> u8 {
    let credentials = match load_credentials(path, component_json) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let sink: Arc<dyn KeysSink> = Arc::new(FileKeysSink::new(CredentialsFile::new(path), None));
    let step = StepConfig {
        credentials: Some(credentials),
        ..StepConfig::default()
    };
    let session = match Session::new(connector, step, sink) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    match session.verify().await {
        Ok(v @ Verification::Verified) => {
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
            EXIT_OK
        }
        Ok(v) => {
            println!("{}", serde_json::to_string(&v).unwrap_or_default());
            EXIT_FAILURE
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"status": "error", "data": {"name": e.name(), "message": e.message()}})
            );
            eprintln!("error: could not verify the credentials: {e}");
            EXIT_USAGE
        }
    }
}

struct ExecArgs {
    function: String,
    credentials: Option<PathBuf>,
    message: Option<String>,
    config: Option<PathBuf>,
    snapshot: Option<PathBuf>,
}

fn read_json(source: &str) -> Result<Value, String> {
    let text = if source == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("standard input: {e}"))?;
        buf
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{source}: invalid JSON at line {}, column {}",
            e.line(),
            e.column()
        )
    })
}

async fn exec<C: Connector>(connector: Arc<C>, component_json: &str, args: ExecArgs) -> u8 {
    let lines = JsonLines::stdout();
    let credentials = match &args.credentials {
        Some(path) => match load_credentials(path, component_json) {
            Ok(c) => Some(c),
            Err(e) => return usage_error(e),
        },
        None => None,
    };
    let sink: Arc<dyn KeysSink> = match &args.credentials {
        Some(path) => Arc::new(FileKeysSink::new(
            CredentialsFile::new(path),
            Some(lines.clone()),
        )),
        None => Arc::new(MemorySink::new()),
    };
    let message = match args.message.as_deref().map(read_json) {
        None => Message::new(Value::Object(Map::new())),
        Some(Ok(v)) => match message_from_json(v) {
            Ok(m) => m,
            Err(e) => return usage_error(e),
        },
        Some(Err(e)) => return usage_error(e),
    };
    let fields = match args
        .config
        .as_ref()
        .map(|p| read_json(&p.to_string_lossy()))
    {
        None => Map::new(),
        Some(Ok(Value::Object(map))) => map,
        Some(Ok(_)) => return usage_error("--config must hold a JSON object"),
        Some(Err(e)) => return usage_error(e),
    };
    let snapshot = match args
        .snapshot
        .as_ref()
        .map(|p| read_json(&p.to_string_lossy()))
    {
        None => Value::Object(Map::new()),
        Some(Ok(v)) => v,
        Some(Err(e)) => return usage_error(e),
    };
    let step = StepConfig {
        fields,
        credentials,
        snapshot,
    };
    let session = match Session::new(connector, step, sink) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let before = session.snapshot();
    let outcome = session
        .process(&args.function, message, Arc::new(LinesEmitter::new(lines)))
        .await;
    if let Some(path) = &args.snapshot {
        let after = session.snapshot();
        if after != before
            && let Err(e) = write_json_atomically(path, &after)
        {
            return usage_error(format!("writing the snapshot: {e}"));
        }
    }
    let flushed = session
        .flush_keys_before_exit(
            &args.credentials.as_ref().map_or_else(
                || "(no credentials file)".to_owned(),
                |p| p.display().to_string(),
            ),
            KEYS_FLUSH_BUDGET,
        )
        .await;
    if outcome.errors > 0 || !flushed {
        EXIT_FAILURE
    } else {
        EXIT_OK
    }
}

/// How long `exec` and `run --local` try to persist rotated keys still pending before exiting.
const KEYS_FLUSH_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

fn read_step(path: Option<&Path>) -> Result<StepData, String> {
    match path {
        None => Ok(StepData::default()),
        Some(path) => {
            let value = read_json(&path.to_string_lossy())?;
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

async fn run<C: Connector>(connector: Arc<C>, component_json: &str, args: RunArgs) -> u8 {
    if !args.local {
        return crate::runtime::run_worker(connector, component_json).await;
    }
    let step = match read_step(args.step.as_deref()) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let Some(function) = args.function.or(step.function) else {
        return usage_error("no function to run: give --function or a step file with \"function\"");
    };
    let lines = JsonLines::stdout();
    let (credentials, sink): (Option<Credentials>, Arc<dyn KeysSink>) = match &args.credentials {
        Some(path) => match load_credentials(path, component_json) {
            Ok(c) => (
                Some(c),
                Arc::new(FileKeysSink::new(
                    CredentialsFile::new(path),
                    Some(lines.clone()),
                )),
            ),
            Err(e) => return usage_error(e),
        },
        None => (None, Arc::new(MemorySink::new())),
    };
    let step = StepConfig {
        fields: step.config,
        credentials,
        snapshot: if step.snapshot.is_null() {
            Value::Object(Map::new())
        } else {
            step.snapshot
        },
    };
    let session = match Session::new(connector, step, sink) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let result = if args.input == "-" {
        crate::transport::run_local(
            &session,
            &function,
            tokio::io::BufReader::new(tokio::io::stdin()),
            lines,
        )
        .await
    } else {
        match tokio::fs::File::open(&args.input).await {
            Ok(file) => {
                crate::transport::run_local(
                    &session,
                    &function,
                    tokio::io::BufReader::new(file),
                    lines,
                )
                .await
            }
            Err(e) => return usage_error(format!("{}: {e}", args.input)),
        }
    };
    match result {
        Ok(stats) => {
            tracing::info!(
                processed = stats.processed,
                failed = stats.failed,
                rejected = stats.rejected,
                "local run finished"
            );
            if session
                .flush_keys_before_exit("(local credentials)", KEYS_FLUSH_BUDGET)
                .await
            {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        Err(e) => usage_error(format!("reading {}: {e}", args.input)),
    }
}

fn write_json_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    std::io::Write::write_all(&mut tmp, b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_file(dir: &Path) -> PathBuf {
        let path = dir.join("keys.json");
        std::fs::write(
            &path,
            r#"{"oauth": {"access_token": "at", "refresh_token": "rt"}}"#,
        )
        .unwrap();
        path
    }

    #[test]
    fn a_malformed_descriptor_is_an_error_not_a_descriptor_without_credential_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = keys_file(dir.path());
        // `credentials` must be an object: this descriptor cannot say where the token is.
        let malformed = r#"{"title": "T", "credentials": ["oauth"]}"#;
        let error = load_credentials(&path, malformed).expect_err("must be rejected");
        assert!(error.contains("component.json"), "{error}");
    }

    #[test]
    fn the_token_is_found_under_the_descriptors_oauth_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = keys_file(dir.path());
        let descriptor = r#"{"title": "T", "credentials": {"fields": {
            "oauth": {"label": "Sign in", "viewClass": "OAuthFieldView"}}}}"#;
        let credentials = load_credentials(&path, descriptor).unwrap();
        assert_eq!(credentials.token_field(), Some("oauth"));
    }
}
