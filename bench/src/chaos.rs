//! `chaos`: an operator's bad day for the AMQP worker, on a RabbitMQ cluster of its own.
//!
//! The benchmark starts three broker nodes of its own on loopback (`deckhand_tests::cluster`:
//! own node names, ports, data dirs and cookie; the shared broker is never touched) and runs
//! the release `echo` example (`echo run`, action `passthrough`) as a separate process through
//! each scenario, on a fresh exchange and queues:
//!
//! * `connection_close`: the worker's connections are force-closed by the broker 5 times.
//! * `duplicate_ids`: no fault; the point is the input mix below under prefetch.
//! * `broker_restart`: the broker app of the worker's (only) node is stopped and started;
//!   classic durable queues, persistent messages.
//! * `node_stop`: the worker knows all three nodes; the node it is connected to is shut down
//!   mid-load. Quorum queues with `x-delivery-limit`.
//! * `sigkill`: the worker is killed with SIGKILL mid-load and started again. Delivery is
//!   at-least-once: what was processed but not yet acked runs again, so duplicates are
//!   expected here and reported, not counted as a failure.
//!
//! Every scenario's input (`--messages`, default 20,000, persistent) mixes ordinary messages,
//! pairs of *distinct* messages sharing one `messageId` (every 10th message reuses its
//! predecessor's id, as Node's id-less outputs of one input do) and one malformed message per
//! thousand (not ciphertext). Each scenario prints
//! `scenario=… lost=… duplicates=… dropped_distinct=… error_routed=…/expected failover_s=… elapsed_s=…`:
//!
//! * `lost`: good messages with no output; `dropped_distinct`: of those, the ones sharing
//!   their id with another message; `duplicates`: outputs beyond one per message, split into
//!   `rerun` (the input ran again: a new `messageId`) and `republished` (the same output
//!   published again after its broker confirm was lost with the connection: same `messageId`
//!   and `publishId`);
//! * `downstream_duplicates` / `downstream_lost`: the same count one step further. A second
//!   echo worker (the downstream step, on a node no scenario touches, no faults of its own)
//!   consumes a copy of every output after the scenario. A republished copy cannot be kept out
//!   of the output queue — no publisher can tell a lost confirm from a lost message, so it
//!   publishes again (at-least-once) — but the downstream step recognises it and does not run
//!   it twice (`deckhand_runtime::dedup`);
//! * `error_routed`: error events (one per malformed input expected);
//! * `failover_s`: the longest time from a fault to the next output.
//!
//! The exit status is non-zero if a scenario lost or dropped a message, mis-routed errors, or
//! (except `sigkill`) ran an input twice or let the downstream step run a copy twice.

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::protocol::js_string;
use deckhand_tests::cluster::Cluster;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

use crate::runtime_throughput::{
    CRYPTO_IV, CRYPTO_PASSWORD, EchoStep, Process, echo_binary, echo_worker_env,
};

const PUBLISH_BATCH: usize = 500;
/// Every `SHARED_ID_EVERY`-th message reuses the previous message's `messageId`.
const SHARED_ID_EVERY: usize = 10;
/// Every `MALFORMED_EVERY`-th message is not ciphertext.
const MALFORMED_EVERY: usize = 1000;
const ADMIN_CONNECTION: &str = "deckhand-chaos-admin";

/// Options of `chaos`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages per scenario.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// `basic.qos` prefetch of the worker.
    #[arg(long, default_value_t = 10)]
    prefetch: u16,
    /// Scenarios to run (comma-separated): connection_close, duplicate_ids, broker_restart,
    /// sigkill, node_stop.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connection_close,duplicate_ids,broker_restart,sigkill,node_stop"
    )]
    scenarios: Vec<String>,
    /// Give up on a scenario when the output has not grown for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// The connector binary run as the worker (`<bin> run`). Default: the release `echo`
    /// example, built with cargo first.
    #[arg(long)]
    echo_bin: Option<PathBuf>,
    /// Do not build the echo example first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    ConnectionClose,
    DuplicateIds,
    BrokerRestart,
    Sigkill,
    NodeStop,
}

impl Scenario {
    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name.trim() {
            "connection_close" => Self::ConnectionClose,
            "duplicate_ids" => Self::DuplicateIds,
            "broker_restart" => Self::BrokerRestart,
            "sigkill" => Self::Sigkill,
            "node_stop" => Self::NodeStop,
            other => return Err(format!("unknown scenario `{other}`")),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::ConnectionClose => "connection_close",
            Self::DuplicateIds => "duplicate_ids",
            Self::BrokerRestart => "broker_restart",
            Self::Sigkill => "sigkill",
            Self::NodeStop => "node_stop",
        }
    }

    /// Quorum queues (replicated) for the node stop; classic durable queues otherwise.
    fn quorum(self) -> bool {
        self == Self::NodeStop
    }
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.messages < MALFORMED_EVERY || args.prefetch == 0 {
        return Err(format!(
            "--messages must be at least {MALFORMED_EVERY}, --prefetch at least 1"
        )
        .into());
    }
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build. Use `cargo run --release`.");
    }
    let echo = echo_binary(args.echo_bin.as_ref(), args.no_build)?;
    println!("starting a 3-node RabbitMQ cluster of its own on loopback…");
    let started = Instant::now();
    let mut cluster = Cluster::start(3);
    println!(
        "cluster up in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        cluster
            .nodes
            .iter()
            .map(|n| format!("{} (amqp {})", n.name, n.amqp_port))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "messages={} prefetch={} shared_id_every={SHARED_ID_EVERY} malformed_every={MALFORMED_EVERY}",
        args.messages, args.prefetch
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut failed = false;
    // The node stop kills a node: it goes last, whatever the order asked for.
    let mut ordered = scenarios.clone();
    ordered.sort_by_key(|s| *s == Scenario::NodeStop);
    for scenario in ordered {
        match runtime.block_on(run_scenario(args, &echo, &mut cluster, scenario)) {
            Ok(figures) => {
                println!("{}", figures.line(scenario));
                failed |= !figures.acceptable(scenario);
            }
            Err(e) => {
                println!("scenario={} error={e}", scenario.name());
                failed = true;
            }
        }
    }
    drop(cluster);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, Default)]
struct Figures {
    lost: usize,
    duplicates: usize,
    dropped_distinct: usize,
    error_routed: u32,
    expected_errors: usize,
    dead: u32,
    failover: Duration,
    elapsed: Duration,
    worker_errors: u64,
    /// Of the duplicates: outputs with the same `messageId` (a publish retried after its
    /// confirm was lost) and inputs run again (a new `messageId`).
    republished: usize,
    rerun: usize,
    first_errors: Vec<String>,
    /// Inputs with no output / with more than one at the downstream step.
    downstream_lost: usize,
    downstream_duplicates: usize,
    downstream_errors: u32,
    downstream_worker_errors: u64,
}

impl Figures {
    fn line(&self, scenario: Scenario) -> String {
        let mut line = format!(
            "scenario={} lost={} duplicates={} (rerun={} republished={}) downstream_duplicates={} downstream_lost={} dropped_distinct={} error_routed={}/{} failover_s={:.2} elapsed_s={:.1} dead_lettered={} worker_error_lines={}",
            scenario.name(),
            self.lost,
            self.duplicates,
            self.rerun,
            self.republished,
            self.downstream_duplicates,
            self.downstream_lost,
            self.dropped_distinct,
            self.error_routed,
            self.expected_errors,
            self.failover.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.dead,
            self.worker_errors,
        );
        if scenario == Scenario::Sigkill {
            line.push_str(
                " (at-least-once: a SIGKILL may duplicate what was processed but not acked)",
            );
        }
        if self.downstream_errors > 0 || self.downstream_worker_errors > 0 {
            line.push_str(&format!(
                " downstream_error_events={} downstream_worker_error_lines={}",
                self.downstream_errors, self.downstream_worker_errors
            ));
        }
        for error in &self.first_errors {
            line.push_str("\n  worker ERROR: ");
            line.push_str(error);
        }
        line
    }

    /// Copies in the output queue from republished outputs (`republished`) are what
    /// at-least-once publishing leaves after a lost confirm; they pass as long as the downstream
    /// step runs none of them twice. An input run twice (`rerun`) or a copy run twice downstream
    /// fails, except after a SIGKILL.
    fn acceptable(&self, scenario: Scenario) -> bool {
        self.lost == 0
            && self.downstream_lost == 0
            && self.dropped_distinct == 0
            && self.error_routed as usize == self.expected_errors
            && self.downstream_errors == 0
            && (scenario == Scenario::Sigkill
                || (self.rerun == 0 && self.downstream_duplicates == 0))
    }
}

/// What was sent: for each good message its number, and whether it shares its id.
struct Sent {
    shared: Vec<bool>,
    malformed: usize,
}

struct Names {
    exchange: String,
    input: String,
    output: String,
    errors: String,
    dead: String,
    /// A second copy of every output (bound like `output`): the input of the downstream step.
    downstream: String,
    /// The downstream step's data and error outputs.
    downstream_out: String,
    downstream_errors: String,
}

async fn connect(uri: &str) -> Result<(Connection, Channel), String> {
    let conn = Connection::connect(
        uri,
        ConnectionProperties::default().with_connection_name(ADMIN_CONNECTION.into()),
    )
    .await
    .map_err(|e| format!("connect {uri}: {e}"))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    Ok((conn, channel))
}

async fn declare(channel: &Channel, names: &Names, quorum: bool) -> Result<(), String> {
    channel
        .exchange_declare(
            names.exchange.clone().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declare exchange: {e}"))?;
    let queue = |name: &str, key: &str, dead: bool| {
        let mut args = FieldTable::default();
        if quorum {
            args.insert("x-queue-type".into(), js_string("quorum"));
        }
        if dead {
            args.insert(
                "x-dead-letter-exchange".into(),
                js_string(names.exchange.clone()),
            );
            args.insert("x-dead-letter-routing-key".into(), js_string("dead"));
            if quorum {
                args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(20));
            }
        }
        (name.to_owned(), key.to_owned(), args)
    };
    for (name, key, args) in [
        queue(&names.input, "input", true),
        queue(&names.output, "step.message", false),
        queue(&names.errors, "step.error", false),
        queue(&names.dead, "dead", false),
        queue(&names.downstream, "step.message", false),
        queue(&names.downstream_out, "step2.message", false),
        queue(&names.downstream_errors, "step2.error", false),
    ] {
        channel
            .queue_declare(
                name.clone().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| format!("declare queue {name}: {e}"))?;
        channel
            .queue_bind(
                name.clone().into(),
                names.exchange.clone().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("bind {name}: {e}"))?;
    }
    Ok(())
}

async fn publish_inputs(
    channel: &Channel,
    names: &Names,
    messages: usize,
    cipher: &MessageCipher,
) -> Result<Sent, String> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("confirm.select: {e}"))?;
    let mut sent = Sent {
        shared: Vec::with_capacity(messages),
        malformed: 0,
    };
    let mut confirms = Vec::with_capacity(PUBLISH_BATCH);
    for k in 0..messages {
        let shared = k % SHARED_ID_EVERY == 1;
        let malformed = k % MALFORMED_EVERY == MALFORMED_EVERY - 1;
        let id = if shared {
            format!("m-{}", k - 1)
        } else {
            format!("m-{k}")
        };
        let body = if malformed {
            sent.malformed += 1;
            b"this is not ciphertext".to_vec()
        } else {
            cipher.encrypt(
                json!({"id": id, "body": {"i": k}, "headers": {}})
                    .to_string()
                    .as_bytes(),
                ProtocolVersion::V1,
            )
        };
        sent.shared.push(shared && !malformed);
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), js_string(id));
        confirms.push(
            channel
                .basic_publish(
                    names.exchange.clone().into(),
                    "input".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .map_err(|e| format!("publish: {e}"))?,
        );
        if confirms.len() == PUBLISH_BATCH || k + 1 == messages {
            for confirm in confirms.drain(..) {
                let c = confirm.await.map_err(|e| format!("confirm: {e}"))?;
                if !c.is_ack() {
                    return Err("the broker nacked an input".into());
                }
            }
        }
    }
    Ok(sent)
}

/// Ready messages in `queue`, or `None` while its node is unreachable (the channel is then
/// reopened).
async fn count(conn: &Connection, channel: &mut Channel, queue: &str) -> Option<u32> {
    let result = channel
        .queue_declare(
            queue.to_owned().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match result {
        Ok(q) => Some(q.message_count()),
        Err(_) => {
            if let Ok(fresh) = conn.create_channel().await {
                *channel = fresh;
            }
            None
        }
    }
}

fn worker_command(echo: &Path, env: &[(String, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(echo);
    command
        .arg("run")
        .env_clear()
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[allow(clippy::too_many_lines)]
async fn run_scenario(
    args: &Args,
    echo: &Path,
    cluster: &mut Cluster,
    scenario: Scenario,
) -> Result<Figures, String> {
    let started = Instant::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = Names {
        exchange: format!("chaos-{id}"),
        input: format!("chaos-{id}-in"),
        output: format!("chaos-{id}-out"),
        errors: format!("chaos-{id}-errors"),
        dead: format!("chaos-{id}-dead"),
        downstream: format!("chaos-{id}-step2-in"),
        downstream_out: format!("chaos-{id}-step2-out"),
        downstream_errors: format!("chaos-{id}-step2-errors"),
    };
    let cipher = MessageCipher::new(CRYPTO_PASSWORD, CRYPTO_IV).map_err(|e| e.to_string())?;
    // Worker's node: node 1 (for the node stop, node 1 is the one stopped; counting and
    // publishing go through node 2, which stays up).
    let worker_uris = match scenario {
        Scenario::BrokerRestart => cluster.uri(0),
        _ => format!("{} {} {}", cluster.uri(0), cluster.uri(1), cluster.uri(2)),
    };
    {
        let (conn, channel) = connect(&cluster.uri(0)).await?;
        declare(&channel, &names, scenario.quorum()).await?;
        let _ = conn.close(200, "OK".into()).await;
    }
    let (admin_conn, mut admin) = connect(&cluster.uri(1)).await?;
    let sent = {
        let channel = admin_conn
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        publish_inputs(&channel, &names, args.messages, &cipher).await?
    };
    let expected_outputs = args.messages - sent.malformed;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let step_file = dir.path().join("step.json");
    std::fs::write(&step_file, r#"{"config": {}, "snapshot": {}}"#).map_err(|e| e.to_string())?;
    let mut env = echo_worker_env(&EchoStep {
        flow_id: "chaos",
        broker: ("ELASTICIO_AMQP_URIS", worker_uris),
        input: &names.input,
        exchange: &names.exchange,
        routing_key: &|kind| format!("step.{kind}"),
        prefetch: args.prefetch,
        step_file: &step_file,
    });
    // Reconnect rounds: the broker restart takes a few seconds.
    env.extend(
        [
            ("ELASTICIO_AMQP_RECONNECT_ATTEMPTS", "50"),
            ("ELASTICIO_AMQP_RECONNECT_TIMEOUT", "200"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut worker = Process::spawn(worker_command(echo, &env), "worker")?;
    let mut worker_errors = 0;

    // Faults at these output counts.
    let faults: Vec<usize> = match scenario {
        Scenario::ConnectionClose => (1..=5).map(|j| expected_outputs * j / 6).collect(),
        Scenario::DuplicateIds => Vec::new(),
        _ => vec![expected_outputs / 3],
    };
    let mut next_fault = 0;
    let mut fault_at: Option<(Instant, u32)> = None;
    // rabbitmqctl runs in the background so the output keeps being watched meanwhile; the
    // broker restart's `start_app` follows its `stop_app`.
    let mut background: Vec<std::process::Child> = Vec::new();
    let mut restart_pending = false;
    let mut failover = Duration::ZERO;
    let mut last_growth = Instant::now();
    let mut last = 0;
    loop {
        let out = count(&admin_conn, &mut admin, &names.output).await;
        let errors = count(&admin_conn, &mut admin, &names.errors).await;
        if restart_pending
            && background
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            restart_pending = false;
            background.push(cluster.ctl_spawn(0, &["start_app"]));
        }
        if let Some(out) = out {
            if out > last {
                last = out;
                last_growth = Instant::now();
            }
            if let Some((at, before)) = fault_at
                && out > before
            {
                failover = failover.max(at.elapsed());
                fault_at = None;
            }
            if out as usize >= expected_outputs
                && errors.is_some_and(|e| e as usize >= sent.malformed)
            {
                break;
            }
            if next_fault < faults.len() && out as usize >= faults[next_fault] && fault_at.is_none()
            {
                next_fault += 1;
                fault_at = Some((Instant::now(), out));
                match scenario {
                    Scenario::ConnectionClose => {
                        let targets = worker_connections(cluster);
                        if targets.is_empty() {
                            return Err("found no worker connection to close".into());
                        }
                        // Timed from the closes, not from finding the connections.
                        fault_at = Some((Instant::now(), out));
                        for (node, pid) in targets {
                            background.push(cluster.ctl_spawn(
                                node,
                                &["close_connection", &pid, "chaos: forced close", "-q"],
                            ));
                        }
                    }
                    Scenario::BrokerRestart => {
                        background.push(cluster.ctl_spawn(0, &["stop_app"]));
                        restart_pending = true;
                    }
                    Scenario::NodeStop => {
                        let names = cluster.connection_names(0);
                        if !names.iter().any(|n| n.ends_with("-read")) {
                            return Err(format!(
                                "the worker is not connected to node 1: {names:?}"
                            ));
                        }
                        fault_at = Some((Instant::now(), out));
                        background.push(cluster.begin_stop_node(0));
                    }
                    Scenario::Sigkill => {
                        worker.kill().await;
                        worker_errors += worker.log_summary().1;
                        worker = Process::spawn(worker_command(echo, &env), "worker")?;
                    }
                    Scenario::DuplicateIds => {}
                }
            }
        }
        if last_growth.elapsed() > Duration::from_secs(args.stall_secs) {
            let _ = worker.stop().await;
            return Err(format!(
                "stalled at {last} of {expected_outputs} outputs; worker log:\n{}",
                worker.tail_lines(10)
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for mut child in background {
        let _ = child.wait();
    }
    // Late duplicates, if any, arrive within this.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = worker.stop().await;
    worker_errors += worker.log_summary().1;
    let first_errors = worker.first_errors();
    if let Err(e) = stopped {
        return Err(format!(
            "the worker did not stop cleanly: {e}\n{}",
            worker.tail_lines(10)
        ));
    }
    let elapsed = started.elapsed();

    // The downstream step: a second echo worker consumes the copy of every output (no faults
    // of its own). Copies that the fault left in the output queue run twice only if it does
    // not recognise them.
    let downstream =
        run_downstream(args, echo, cluster, &env, &names, &admin_conn, &mut admin).await?;

    // Count the outputs per message.
    let seen = drain(&mut admin, &admin_conn, &names.output, &cipher).await?;
    let seen_downstream = drain(&mut admin, &admin_conn, &names.downstream_out, &cipher).await?;
    let mut figures = Figures {
        error_routed: count(&admin_conn, &mut admin, &names.errors)
            .await
            .unwrap_or(0),
        dead: count(&admin_conn, &mut admin, &names.dead)
            .await
            .unwrap_or(0),
        expected_errors: sent.malformed,
        failover,
        elapsed,
        worker_errors,
        first_errors,
        downstream_errors: count(&admin_conn, &mut admin, &names.downstream_errors)
            .await
            .unwrap_or(0),
        downstream_worker_errors: downstream.worker_errors,
        ..Figures::default()
    };
    for (k, shared) in sent.shared.iter().enumerate() {
        if k % MALFORMED_EVERY == MALFORMED_EVERY - 1 {
            continue;
        }
        match seen.get(&k) {
            None => {
                figures.lost += 1;
                figures.dropped_distinct += usize::from(*shared);
            }
            Some(ids) => {
                figures.duplicates += ids.len() - 1;
                let mut distinct = ids.clone();
                distinct.sort();
                distinct.dedup();
                figures.rerun += distinct.len() - 1;
                figures.republished += ids.len() - distinct.len();
            }
        }
        match seen_downstream.get(&k) {
            None => figures.downstream_lost += 1,
            Some(ids) => figures.downstream_duplicates += ids.len() - 1,
        }
    }
    // Everything of this scenario goes; the queues are durable, so delete them explicitly.
    for queue in [
        &names.input,
        &names.output,
        &names.errors,
        &names.dead,
        &names.downstream,
        &names.downstream_out,
        &names.downstream_errors,
    ] {
        let _ = admin
            .queue_delete(queue.clone().into(), Default::default())
            .await;
    }
    let _ = admin
        .exchange_delete(names.exchange.clone().into(), Default::default())
        .await;
    let _ = admin_conn.close(200, "OK".into()).await;
    Ok(figures)
}

/// The outputs in `queue`, consumed, by input number: the `messageId` of each copy.
async fn drain(
    admin: &mut Channel,
    admin_conn: &Connection,
    queue: &str,
    cipher: &MessageCipher,
) -> Result<HashMap<usize, Vec<String>>, String> {
    let mut seen: HashMap<usize, Vec<String>> = HashMap::new();
    let total = count(admin_conn, admin, queue)
        .await
        .ok_or_else(|| format!("the queue {queue} is unreachable"))? as usize;
    admin
        .basic_qos(1000, Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = admin
        .basic_consume(
            queue.to_owned().into(),
            format!("chaos-drain-{queue}").into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("drain {queue}: {e}"))?;
    for _ in 0..total {
        let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_secs(10), consumer.next()).await
        else {
            return Err(format!("draining {queue} stalled"));
        };
        let plain = cipher
            .decrypt(&delivery.data, ProtocolVersion::V1)
            .map_err(|e| format!("an output does not decrypt: {e}"))?;
        let message: Value = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
        let i = message["body"]["i"]
            .as_u64()
            .ok_or("an output without its input's number")? as usize;
        let message_id = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("messageId").cloned())
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        seen.entry(i).or_default().push(message_id);
    }
    let _ = admin.basic_cancel(consumer.tag(), Default::default()).await;
    Ok(seen)
}

struct Downstream {
    worker_errors: u64,
}

/// Runs the downstream step (an echo worker on node 2, which no scenario stops) until its
/// input queue is empty and its output stops growing, then stops it with SIGTERM.
async fn run_downstream(
    args: &Args,
    echo: &Path,
    cluster: &Cluster,
    upstream_env: &[(String, String)],
    names: &Names,
    admin_conn: &Connection,
    admin: &mut Channel,
) -> Result<Downstream, String> {
    let mut env: Vec<(String, String)> = upstream_env.to_vec();
    for (key, value) in [
        ("ELASTICIO_STEP_ID", "step_2".to_owned()),
        ("ELASTICIO_AMQP_URIS", cluster.uri(1)),
        ("ELASTICIO_LISTEN_MESSAGES_ON", names.downstream.clone()),
        ("ELASTICIO_DATA_ROUTING_KEY", "step2.message".to_owned()),
        ("ELASTICIO_ERROR_ROUTING_KEY", "step2.error".to_owned()),
        ("ELASTICIO_REBOUND_ROUTING_KEY", "step2.rebound".to_owned()),
        (
            "ELASTICIO_SNAPSHOT_ROUTING_KEY",
            "step2.snapshot".to_owned(),
        ),
    ] {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value));
    }
    let mut worker = Process::spawn(worker_command(echo, &env), "downstream worker")?;
    let mut last = (u32::MAX, 0);
    let mut settled_polls = 0;
    let mut last_growth = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let waiting = count(admin_conn, admin, &names.downstream).await;
        let out = count(admin_conn, admin, &names.downstream_out).await;
        let (Some(waiting), Some(out)) = (waiting, out) else {
            continue;
        };
        if out != last.1 {
            last_growth = Instant::now();
        }
        // Empty input and the same output for a second: everything delivered was processed
        // (the worker settles an input only after its output was confirmed).
        settled_polls = if waiting == 0 && (waiting, out) == last {
            settled_polls + 1
        } else {
            0
        };
        last = (waiting, out);
        if settled_polls >= 4 {
            break;
        }
        if last_growth.elapsed() > Duration::from_secs(args.stall_secs) {
            let _ = worker.stop().await;
            return Err(format!(
                "the downstream step stalled at {out} outputs; its log:\n{}",
                worker.tail_lines(10)
            ));
        }
    }
    let stopped = worker.stop().await;
    let worker_errors = worker.log_summary().1;
    if let Err(e) = stopped {
        return Err(format!(
            "the downstream worker did not stop cleanly: {e}\n{}",
            worker.tail_lines(10)
        ));
    }
    Ok(Downstream { worker_errors })
}

/// `(node, connection pid)` of every worker connection on the running nodes.
fn worker_connections(cluster: &Cluster) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !node.running {
            continue;
        }
        let out = cluster.ctl(
            i,
            &[
                "list_connections",
                "pid",
                "client_properties",
                "--no-table-headers",
                "-q",
            ],
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        for line in listing.lines() {
            let worker = (line.contains("-read\"}") || line.contains("-write\"}"))
                && !line.contains(ADMIN_CONNECTION);
            if let Some(pid) = line.split('\t').next().map(str::trim)
                && worker
            {
                found.push((i, pid.to_owned()));
            }
        }
    }
    found
}
