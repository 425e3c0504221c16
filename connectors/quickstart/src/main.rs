//! The offline quick start: starts the OAuth2 provider emulator in-process, runs the
//! Salesforce-style and Microsoft-Graph-style connectors over the local transport for a batch
//! of messages spanning several token lifetimes, and reports what happened. Exits 0 only if
//! every message was processed, no refresh token was refused or reused, every rotation was
//! written to the credentials file, and the final credentials still work.
//!
//! `cargo run --release -p deckhand-quickstart [-- --batches N --per-batch M --lifetime-secs S]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deckhand::auth::KeysSink;
use deckhand::connector::{Connector, Session, StepConfig, Verification};
use deckhand::credentials::CredentialsFile;
use deckhand::transport::{FileKeysSink, JsonLines, run_local};
use deckhand_emulator::{Emulator, EmulatorConfig, RefreshRotation};
use deckhand_msgraph::MsGraph;
use deckhand_salesforce::{OAuthApp, Salesforce};
use serde_json::{Value, json};

struct Settings {
    batches: usize,
    per_batch: usize,
    lifetime: Duration,
}

impl Settings {
    fn from_args() -> Result<Self, String> {
        let mut settings = Self {
            batches: 4,
            per_batch: 5,
            lifetime: Duration::from_secs(2),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<u64, String> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("{name} needs a positive number"))
            };
            match arg.as_str() {
                "--batches" => settings.batches = value("--batches")? as usize,
                "--per-batch" => settings.per_batch = value("--per-batch")? as usize,
                "--lifetime-secs" => {
                    settings.lifetime = Duration::from_secs(value("--lifetime-secs")?)
                }
                "-h" | "--help" => {
                    return Err(
                        "usage: deckhand-quickstart [--batches N] [--per-batch M] [--lifetime-secs S]".into(),
                    );
                }
                other => return Err(format!("unknown argument `{other}` (try --help)")),
            }
        }
        Ok(settings)
    }
}

/// What one connector did.
struct Run {
    name: &'static str,
    messages: usize,
    processed: usize,
    failed: usize,
    token_requests: u64,
    refreshes: u64,
    update_keys_written: usize,
    lifetimes_spanned: u64,
    credentials: PathBuf,
    final_verification: Result<Verification, String>,
}

impl Run {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.processed != self.messages || self.failed > 0 {
            problems.push(format!(
                "{}: {} of {} messages processed, {} failed",
                self.name, self.processed, self.messages, self.failed
            ));
        }
        if self.update_keys_written as u64 != self.refreshes || self.refreshes == 0 {
            problems.push(format!(
                "{}: {} refreshes but {} updateKeys written",
                self.name, self.refreshes, self.update_keys_written
            ));
        }
        if self.token_requests > self.lifetimes_spanned + 1
            || self.token_requests as usize >= self.messages
        {
            problems.push(format!(
                "{}: {} token requests for {} token lifetimes ({} messages)",
                self.name, self.token_requests, self.lifetimes_spanned, self.messages
            ));
        }
        if !matches!(self.final_verification, Ok(Verification::Verified)) {
            problems.push(format!(
                "{}: the final credentials do not work: {:?}",
                self.name, self.final_verification
            ));
        }
        problems
    }
}

async fn run_connector<C: Connector>(
    name: &'static str,
    connector: Arc<C>,
    credentials: &Path,
    function: &str,
    message: Value,
    settings: &Settings,
    dir: &Path,
) -> Result<Run, String> {
    let file = CredentialsFile::new(credentials);
    let events_path = dir.join(format!("{name}-events.jsonl"));
    let events = std::fs::File::create(&events_path).map_err(|e| e.to_string())?;
    let lines = JsonLines::new(events);
    let sink: Arc<dyn KeysSink> = Arc::new(FileKeysSink::new(file.clone(), Some(lines.clone())));
    let step = StepConfig {
        credentials: Some(file.load().map_err(|e| e.to_string())?),
        ..StepConfig::default()
    };
    let session = Session::new(connector.clone(), step, sink).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (mut processed, mut failed) = (0, 0);
    for batch in 0..settings.batches {
        if batch > 0 {
            // Past the token's lifetime: every batch starts with an expired token.
            tokio::time::sleep(settings.lifetime + Duration::from_millis(300)).await;
        }
        let input = format!("{}\n", message).repeat(settings.per_batch);
        let stats = run_local(&session, function, input.as_bytes(), lines.clone())
            .await
            .map_err(|e| e.to_string())?;
        processed += stats.processed;
        failed += stats.failed + stats.rejected;
    }
    let elapsed = started.elapsed();
    let metrics = session
        .token_manager()
        .map(|m| m.metrics())
        .unwrap_or_default();
    let update_keys_written = std::fs::read_to_string(&events_path)
        .map_err(|e| e.to_string())?
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|e| e["event"] == "updateKeys"))
        .count();
    // A fresh session from what is on disk: works only if the file holds the live tokens.
    let reloaded = StepConfig {
        credentials: Some(file.load().map_err(|e| e.to_string())?),
        ..StepConfig::default()
    };
    let final_verification =
        match Session::new(connector, reloaded, Arc::new(FileKeysSink::new(file, None))) {
            Ok(fresh) => fresh.verify().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    Ok(Run {
        name,
        messages: settings.batches * settings.per_batch,
        processed,
        failed,
        token_requests: metrics.token_requests,
        refreshes: metrics.refreshes,
        update_keys_written,
        lifetimes_spanned: elapsed
            .as_millis()
            .div_ceil(settings.lifetime.as_millis().max(1)) as u64,
        credentials: credentials.to_path_buf(),
        final_verification,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), String> {
    std::fs::write(
        path,
        serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

async fn quickstart(settings: Settings) -> Result<bool, String> {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: settings.lifetime,
        salesforce_refresh_rotation: RefreshRotation::Strict,
        graph_refresh_rotation: RefreshRotation::Strict,
        ..EmulatorConfig::default()
    })
    .await
    .map_err(|e| format!("starting the emulator: {e}"))?;
    let client = emulator.client().clone();
    let dir = tempfile::Builder::new()
        .prefix("deckhand-quickstart-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();

    println!("Deckhand quick start (offline)");
    println!(
        "  provider emulator at {} — access tokens live {} s; refresh tokens are single-use and rotate",
        emulator.base_url(),
        settings.lifetime.as_secs()
    );
    println!("  working directory {}", dir.display());

    let salesforce_creds = dir.join("salesforce-credentials.json");
    write_json(
        &salesforce_creds,
        &json!({
            "prodEnv": "login",
            "loginUrl": emulator.base_url(),
            "oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)},
        }),
    )?;
    let graph_creds = dir.join("msgraph-credentials.json");
    write_json(
        &graph_creds,
        &json!({
            "authMode": "delegated",
            "tenantId": emulator.config().tenant_id,
            "clientId": client.id,
            "clientSecret": client.secret,
            "authorityUrl": emulator.base_url(),
            "graphUrl": emulator.base_url(),
            "oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)},
        }),
    )?;

    // Both connectors at once, sharing the provider.
    let salesforce_app = OAuthApp::new(client.id.clone(), client.secret.clone());
    let (salesforce, msgraph) = tokio::join!(
        run_connector(
            "salesforce",
            Arc::new(Salesforce::new(salesforce_app)),
            &salesforce_creds,
            "query",
            json!({"body": {"query": "SELECT Id, Name FROM Account LIMIT 3"}}),
            &settings,
            &dir,
        ),
        run_connector(
            "msgraph",
            Arc::new(MsGraph::default()),
            &graph_creds,
            "listUsers",
            json!({"body": {"pageSize": 2}}),
            &settings,
            &dir,
        ),
    );
    let (salesforce, msgraph) = (salesforce?, msgraph?);

    let counters = emulator.counters();
    println!();
    for run in [&salesforce, &msgraph] {
        println!("{}:", run.name);
        println!(
            "  messages processed: {} of {} ({} failed)",
            run.processed, run.messages, run.failed
        );
        println!(
            "  token requests:     {} for {} messages spanning {} token lifetimes",
            run.token_requests, run.messages, run.lifetimes_spanned
        );
        println!(
            "  updateKeys written: {} to {}",
            run.update_keys_written,
            run.credentials.display()
        );
        println!(
            "  final credentials:  {}",
            match &run.final_verification {
                Ok(Verification::Verified) =>
                    "verified (a fresh session from the file works)".to_owned(),
                Ok(Verification::NotVerified { reason }) => format!("NOT verified: {reason}"),
                Err(e) => format!("error: {e}"),
            }
        );
    }
    println!("provider:");
    println!(
        "  token requests {} (refresh_token grant {}), invalid_grant {}, token families revoked {}",
        counters.token_requests,
        counters.refresh_token_requests,
        counters.invalid_grant,
        counters.family_revocations
    );

    let mut problems: Vec<String> = salesforce.problems();
    problems.extend(msgraph.problems());
    if counters.invalid_grant > 0 || counters.family_revocations > 0 {
        problems.push(format!(
            "the provider refused {} grants and revoked {} token families",
            counters.invalid_grant, counters.family_revocations
        ));
    }
    emulator.shutdown().await;
    println!();
    if problems.is_empty() {
        println!(
            "OK: every message processed, every rotation persisted before use, no refresh token lost"
        );
        Ok(true)
    } else {
        for p in &problems {
            println!("FAILED: {p}");
        }
        Ok(false)
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(quickstart(settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
