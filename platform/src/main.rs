//! `deckhand-platform`: the service (`serve`) and the operator's commands (accounts, steps,
//! API users, status). See the crate docs of `deckhand_platform` and the README.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deckhand_platform::api::{ApiOptions, serve};
use deckhand_platform::persister::{self, PersisterOptions};
use deckhand_platform::{Platform, StepDefinition};
use deckhand_runtime::crypto::MessageCipher;
use deckhand_store::KeyRing;

#[derive(Parser)]
#[command(
    name = "deckhand-platform",
    version,
    about = "The platform side of Deckhand: persists updateKeys with fencing, serves the step API and a status page"
)]
struct Cli {
    /// The PostgreSQL database (the credential store's).
    #[arg(long, env = "DECKHAND_STORE_URL", hide_env_values = true)]
    database: String,
    /// The schema (the credential store's).
    #[arg(long, env = "DECKHAND_PLATFORM_SCHEMA", default_value = "deckhand")]
    schema: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP API, the status page and the updateKeys persister.
    Serve {
        /// Address to listen on.
        #[arg(
            long,
            env = "DECKHAND_PLATFORM_LISTEN",
            default_value = "127.0.0.1:9090"
        )]
        listen: String,
        /// The broker; without it, no persister runs (API only).
        #[arg(long, env = "ELASTICIO_AMQP_URI", hide_env_values = true)]
        amqp_uri: Option<String>,
        /// The queue the persister consumes (declared if missing; `<queue>.dead` too).
        #[arg(
            long,
            env = "DECKHAND_PLATFORM_QUEUE",
            default_value = "deckhand.update_keys"
        )]
        queue: String,
        /// Bindings of the queue, `exchange=routing-key` (the workers'
        /// `ELASTICIO_PUBLISH_MESSAGES_TO` and `ELASTICIO_UPDATE_KEYS_ROUTING_KEY`); repeatable.
        #[arg(long = "bind", env = "DECKHAND_PLATFORM_BIND", value_delimiter = ',')]
        bindings: Vec<String>,
        /// Declare classic queues instead of quorum queues.
        #[arg(long)]
        classic_queues: bool,
        /// The largest request body, in bytes.
        #[arg(long, default_value_t = 256 * 1024)]
        max_body: usize,
    },
    /// Creates an account from a JSON keys object read from a file (`-`: standard input).
    CreateAccount {
        /// The account id.
        #[arg(long)]
        id: String,
        /// The keys file.
        #[arg(long)]
        keys_file: String,
    },
    /// Replaces an account's keys after the user authorized again (clears needs re-auth,
    /// rotation lost and fork marks); keys from a file (`-`: standard input).
    Reauthorize {
        /// The account id.
        #[arg(long)]
        id: String,
        /// The keys file.
        #[arg(long)]
        keys_file: String,
    },
    /// Creates or replaces a step from a JSON definition read from a file (`-`: standard
    /// input): `{"function", "comp_id", "account_id", "config", "snapshot", "is_passthrough",
    /// "variables", "crypto": {"password", "iv"}}`, all optional.
    PutStep {
        /// The flow (task) id.
        #[arg(long)]
        flow: String,
        /// The step id.
        #[arg(long)]
        step: String,
        /// The definition file.
        #[arg(long)]
        file: String,
    },
    /// Creates an API user (or gives it a new key) and prints the key, once.
    CreateUser {
        /// The username.
        #[arg(long)]
        username: String,
    },
    /// Prints the status (as `/status.json`).
    Status,
}

fn read_json(path: &str) -> Result<serde_json::Value, String> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
    // The file may hold keys: name the position, not the text.
    serde_json::from_str(&text)
        .map_err(|e| format!("{path}: not JSON (line {} column {})", e.line(), e.column()))
}

fn default_cipher() -> Result<Option<MessageCipher>, String> {
    match (
        std::env::var("ELASTICIO_MESSAGE_CRYPTO_PASSWORD"),
        std::env::var("ELASTICIO_MESSAGE_CRYPTO_IV"),
    ) {
        (Ok(password), Ok(iv)) => MessageCipher::new(&password, &iv)
            .map(Some)
            .map_err(|e| format!("ELASTICIO_MESSAGE_CRYPTO_PASSWORD/IV: {e}")),
        _ => Ok(None),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let keys = KeyRing::from_env().map_err(|e| e.to_string())?;
    let platform = Platform::connect(&cli.database, keys, &cli.schema, default_cipher()?)
        .await
        .map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve {
            listen,
            amqp_uri,
            queue,
            bindings,
            classic_queues,
            max_body,
        } => {
            let bindings = bindings
                .iter()
                .map(|b| {
                    b.split_once('=')
                        .map(|(e, k)| (e.trim().to_owned(), k.trim().to_owned()))
                        .ok_or_else(|| format!("--bind `{b}`: expected exchange=routing-key"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("listening on {listen}: {e}"))?;
            tracing::info!(address = %listen, "API and status page listening");
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let persister_task = amqp_uri.map(|amqp_uri| {
                let options = PersisterOptions {
                    amqp_uri,
                    queue,
                    bindings,
                    quorum: !classic_queues,
                    prefetch: 32,
                };
                let mut stop = stop_rx.clone();
                tokio::spawn(persister::run(platform.clone(), options, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }))
            });
            let mut stop = stop_rx.clone();
            let server = serve(listener, platform, ApiOptions { max_body }, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            let signals = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("stopping");
                let _ = stop_tx.send(true);
            };
            let (served, ()) = tokio::join!(server, signals);
            served.map_err(|e| format!("serving: {e}"))?;
            if let Some(task) = persister_task {
                let _ = task.await;
            }
            Ok(())
        }
        Command::CreateAccount { id, keys_file } => {
            let keys = read_json(&keys_file)?;
            let generation = platform
                .create_account(&id, keys)
                .await
                .map_err(|e| e.to_string())?;
            println!("account {id} created (generation {generation})");
            Ok(())
        }
        Command::Reauthorize { id, keys_file } => {
            let keys = read_json(&keys_file)?;
            let generation = platform
                .reauthorize(&id, keys)
                .await
                .map_err(|e| e.to_string())?;
            println!("account {id} re-authorized (generation {generation})");
            Ok(())
        }
        Command::PutStep { flow, step, file } => {
            let def: StepDefinition = serde_json::from_value(read_json(&file)?).map_err(|e| {
                format!(
                    "{file}: {}",
                    e.to_string().split(" at line").next().unwrap_or("invalid")
                )
            })?;
            let created = platform
                .put_step(&flow, &step, def)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "step {flow}/{step} {}",
                if created { "created" } else { "replaced" }
            );
            Ok(())
        }
        Command::CreateUser { username } => {
            let key = platform
                .create_api_user(&username)
                .await
                .map_err(|e| e.to_string())?;
            println!("{key}");
            Ok(())
        }
        Command::Status => {
            let status = platform.status().await.map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deckhand-platform: {e}");
            ExitCode::FAILURE
        }
    }
}
