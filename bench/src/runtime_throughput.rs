//! `runtime-throughput`: messages per second through the Deckhand AMQP worker, compared with
//! a minimal lapin consume→publish loop that does the same broker work.
//!
//! Each run gets fresh queues on a private exchange, pre-filled with N encrypted protocol-v1
//! messages (about 1 KiB of `body`, the headers an upstream Sailor step sends) **before** the
//! consumer starts. Then one of two consumers runs as a separate process:
//!
//! * **deckhand**: the release `echo` example (`echo run`, action `passthrough`), configured by
//!   `ELASTICIO_*` variables: prefetch 10, Sailor's outgoing throttles disabled. For every
//!   delivery it decrypts and parses the envelope, runs the action, builds the outgoing message
//!   and its headers, encrypts it, publishes it with a broker confirm, and acks the input.
//! * **lapin loop**: this binary in a hidden mode. Two connections (read and write, as the
//!   worker), prefetch 10, a confirm channel; for every delivery (up to 10 at once) it
//!   decrypts the body, re-encrypts the plaintext with the same cipher, publishes it with the
//!   input's headers (persistent, as the worker's outputs), waits for the confirm and acks.
//!   No JSON, no envelope, no new headers.
//!   It is the practical limit of the broker, the client library and the cipher on this
//!   machine.
//!
//! Both processes log `first message consumed` on stderr. The rate is N divided by the time
//! from that line to the moment the output queue holds N messages (polled with passive
//! `queue.declare`; nothing consumes the output, so the measurement adds no consumer). Start-up
//! is process spawn to that line. Peak RSS is the process's `VmHWM` just before SIGTERM; the
//! process must then exit 0, every input must be acked, the output must hold exactly N
//! messages and the error queue none. Runs are interleaved (lapin loop, deckhand, lapin loop,
//! deckhand, …) and the figures are medians over rounds. The ratio is the median of the rounds'
//! own ratios (deckhand over the lapin loop run just before it): on a shared machine the load
//! drifts between rounds far more than between two adjacent runs.

use std::collections::VecDeque;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deckhand::runtime::config::AmqpUri;
use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::protocol::{js_number, js_string};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

const DEFAULT_AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The crypto settings of the broker tests (`sdk/tests/runtime_support`).
pub(crate) const CRYPTO_PASSWORD: &str = "testCryptoPassword";
pub(crate) const CRYPTO_IV: &str = "iv=any16_symbols";
/// The worker's log message for its first delivery; the lapin loop prints the same.
const FIRST_CONSUMED: &str = "first message consumed";
/// How often the output queue's message count is read.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long a process may take to consume its first message.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pre-fill publishes awaited per batch of confirms.
const PREFILL_BATCH: usize = 500;
/// Stderr lines kept per process for error reports.
const LOG_TAIL: usize = 30;
/// Warning and error lines per process shown after a run.
const NOTABLE_LINES: usize = 5;
/// Stderr lines shown when a process did not stop cleanly.
const STOP_FAILURE_LINES: usize = 4;

/// Options of `runtime-throughput`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages per run; each run gets a freshly filled input queue.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Size in bytes of each message's `body` as JSON. On the wire the encrypted envelope
    /// (protocol v1, base64) is about 4/3 of body + envelope.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Rounds; each runs the lapin loop, then the Deckhand worker. Figures are medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// `basic.qos` prefetch of both consumers, i.e. messages processed concurrently.
    #[arg(long, default_value_t = 10)]
    prefetch: u16,
    /// The broker (it must allow declaring and deleting exchanges and queues).
    #[arg(
        long,
        env = "DECKHAND_BENCH_AMQP_URI",
        default_value = DEFAULT_AMQP_URI,
        hide_env_values = true
    )]
    amqp_uri: String,
    /// The connector binary run as the Deckhand worker (`<bin> run`). Default: the release
    /// `echo` example of this binary's target directory, built with cargo first.
    #[arg(long)]
    echo_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p deckhand --example echo` first; fail if the
    /// binary is missing.
    #[arg(long)]
    no_build: bool,
    /// Fail a run when the output queue has not grown for this many seconds.
    #[arg(long, default_value_t = 30)]
    stall_secs: u64,
    /// Run the Deckhand worker with its metrics and health endpoints on this address
    /// (`DECKHAND_METRICS_ADDR`, e.g. `127.0.0.1:0`), to measure what they cost. Default: off.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Start both measured processes through this program (`PROGRAM <binary> <args…>`), e.g.
    /// a script that `exec`s `valgrind --tool=callgrind "$@"` to count instructions per message
    /// of both arms under the same conditions. Rates and start-up times are then meaningless.
    #[arg(long, value_name = "PROGRAM")]
    wrap: Option<PathBuf>,
    /// Internal: run as the lapin loop process (started by this benchmark).
    #[arg(long, hide = true, requires_all = ["queue", "exchange", "routing_key"])]
    lapin_loop_child: bool,
    /// Internal (lapin loop): the queue to consume.
    #[arg(long, hide = true)]
    queue: Option<String>,
    /// Internal (lapin loop): the exchange to publish to.
    #[arg(long, hide = true)]
    exchange: Option<String>,
    /// Internal (lapin loop): the routing key to publish with.
    #[arg(long, hide = true)]
    routing_key: Option<String>,
}

pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.lapin_loop_child {
        // The runtime `deckhand::main` builds for a connector binary.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime
            .block_on(lapin_loop(args))
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into);
    }
    if args.messages == 0 || args.rounds == 0 || args.prefetch == 0 {
        return Err("--messages, --rounds and --prefetch must be at least 1".into());
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; the lapin loop runs unoptimized. Use `cargo run --release`."
        );
    }
    let echo = echo_binary(args.echo_bin.as_ref(), args.no_build)?;
    // The bench side only fills queues and polls a count: one thread leaves both cores to the
    // process under test and the broker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args, &echo)).map_err(Into::into)
}

/// The echo example to run, built first unless `--no-build` or `--echo-bin`.
pub(crate) fn echo_binary(echo_bin: Option<&PathBuf>, no_build: bool) -> Result<PathBuf, String> {
    if let Some(path) = echo_bin {
        if !path.is_file() {
            return Err(format!("--echo-bin {}: no such file", path.display()));
        }
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))?;
    // <target>/<profile>/deckhand-bench
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot find the target directory of {}", exe.display()))?;
    let bin = target_dir.join("release").join("examples").join("echo");
    if !no_build {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        println!(
            "building the worker: cargo build --release -p deckhand --example echo --target-dir {}",
            target_dir.display()
        );
        let status = std::process::Command::new(&cargo)
            .args(["build", "--release", "-p", "deckhand", "--example", "echo"])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| {
                format!(
                    "cannot run `{cargo}` to build the echo example ({e}); build it with \
                     `cargo build --release -p deckhand --example echo` and pass --no-build \
                     or --echo-bin"
                )
            })?;
        if !status.success() {
            return Err(format!(
                "`cargo build --release -p deckhand --example echo` failed ({status})"
            ));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "the worker binary {} is missing: build it with `cargo build --release -p deckhand \
             --example echo` (same CARGO_TARGET_DIR), or pass --echo-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Which consumer a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    LapinLoop,
    Deckhand,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Self::LapinLoop => "lapin_loop",
            Self::Deckhand => "deckhand",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
struct RunFigures {
    startup: Duration,
    elapsed: Duration,
    msgs_per_s: f64,
    peak_rss_kib: u64,
    rss_at_stop_kib: u64,
    cpu: Duration,
    warnings: u64,
    errors: u64,
    /// Why the process did not stop cleanly (exit 0 after SIGTERM, every input acked). The
    /// figures were taken before the stop and stand, but the benchmark fails.
    stop_failure: Option<String>,
}

async fn bench(args: &Args, echo: &Path) -> Result<ExitCode, String> {
    let redacted = AmqpUri::parse(&args.amqp_uri)
        .map(|u| u.redacted())
        .map_err(|e| format!("DECKHAND_BENCH_AMQP_URI / --amqp-uri {e}"))?;
    let cipher = MessageCipher::new(CRYPTO_PASSWORD, CRYPTO_IV).map_err(|e| e.to_string())?;
    let sample = input_message(0, args.body_bytes, &cipher, "sample");
    println!(
        "runtime-throughput: messages={} body_bytes={} plaintext_bytes={} wire_bytes={} \
         input_headers={} prefetch={} rounds={} broker={redacted} worker={} cpus={}",
        args.messages,
        args.body_bytes,
        sample.plaintext_len,
        sample.body.len(),
        sample.headers.inner().len(),
        args.prefetch,
        args.rounds,
        echo.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let step_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let step_file = step_dir.path().join("step.json");
    std::fs::write(
        &step_file,
        json!({"function": "passthrough", "config": {}, "snapshot": {}}).to_string(),
    )
    .map_err(|e| format!("{}: {e}", step_file.display()))?;

    let mut topo = Topology::new(&args.amqp_uri, &redacted).await?;
    println!(
        "topology: exchange={} (queues per run, deleted after it)",
        topo.exchange
    );
    let result = rounds(args, &mut topo, &cipher, echo, &step_file).await;
    topo.cleanup().await;
    let (lapin, deckhand) = result?;
    Ok(report(&lapin, &deckhand))
}

async fn rounds(
    args: &Args,
    topo: &mut Topology,
    cipher: &MessageCipher,
    echo: &Path,
    step_file: &Path,
) -> Result<(Vec<RunFigures>, Vec<RunFigures>), String> {
    let mut lapin = Vec::new();
    let mut deckhand = Vec::new();
    for round in 1..=args.rounds {
        for arm in [Arm::LapinLoop, Arm::Deckhand] {
            let figures = one_run(args, topo, cipher, echo, step_file, arm, round).await?;
            println!(
                "round={round} {}: startup_ms={:.1} elapsed_ms={:.0} msgs_per_s={:.0} \
                 peak_rss_mib={:.1} rss_at_stop_mib={:.1} cpu_ms={:.0} cpu_us_per_msg={:.1} \
                 warn_lines={} error_lines={}",
                arm.name(),
                ms(figures.startup),
                ms(figures.elapsed),
                figures.msgs_per_s,
                mib(figures.peak_rss_kib),
                mib(figures.rss_at_stop_kib),
                ms(figures.cpu),
                figures.cpu.as_secs_f64() * 1e6 / args.messages as f64,
                figures.warnings,
                figures.errors,
            );
            match arm {
                Arm::LapinLoop => lapin.push(figures),
                Arm::Deckhand => deckhand.push(figures),
            }
        }
    }
    Ok((lapin, deckhand))
}

fn report(lapin: &[RunFigures], deckhand: &[RunFigures]) -> ExitCode {
    let rate = |runs: &[RunFigures]| median(runs.iter().map(|f| f.msgs_per_s).collect());
    let startup = |runs: &[RunFigures]| median(runs.iter().map(|f| ms(f.startup)).collect());
    let peak = |runs: &[RunFigures]| {
        runs.iter()
            .map(|f| mib(f.peak_rss_kib))
            .fold(0.0f64, f64::max)
    };
    // Every run handles the same N messages, so CPU time is proportional to CPU per message.
    let cpu = |runs: &[RunFigures]| median(runs.iter().map(|f| f.cpu.as_secs_f64()).collect());
    let deckhand_rate = rate(deckhand);
    let lapin_rate = rate(lapin);
    // Each round's deckhand run against the lapin loop run just before it.
    let paired: Vec<f64> = deckhand
        .iter()
        .zip(lapin)
        .map(|(d, l)| d.msgs_per_s / l.msgs_per_s)
        .collect();
    let ratio = median(paired.clone());
    let peak_rss = peak(deckhand);
    let startup_ms = startup(deckhand);
    println!(
        "lapin_loop: msgs_per_s_median={lapin_rate:.0} startup_ms_median={:.1} peak_rss_mib_max={:.1}",
        startup(lapin),
        peak(lapin),
    );
    println!(
        "deckhand: msgs_per_s_runs=[{}] lapin_loop_msgs_per_s_runs=[{}] cpu_ratio={:.3}",
        deckhand
            .iter()
            .map(|f| format!("{:.0}", f.msgs_per_s))
            .collect::<Vec<_>>()
            .join(","),
        lapin
            .iter()
            .map(|f| format!("{:.0}", f.msgs_per_s))
            .collect::<Vec<_>>()
            .join(","),
        cpu(deckhand) / cpu(lapin),
    );
    println!(
        "ratio_per_round=[{}] ratio_of_medians={:.3}",
        paired
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(","),
        deckhand_rate / lapin_rate,
    );
    let stop_failures = lapin
        .iter()
        .chain(deckhand)
        .filter(|f| f.stop_failure.is_some())
        .count();
    if stop_failures > 0 {
        println!(
            "stop_failures={stop_failures} (see the STOP FAILED lines); the figures stand, the \
             exit status is 1"
        );
    }
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "targets: ratio>=0.9 {} peak_rss_mib<=20 {} startup_ms<=100 {}",
        // Judged on the printed (rounded) figures.
        verdict((ratio * 1000.0).round() >= 900.0),
        verdict((peak_rss * 10.0).round() <= 200.0),
        verdict((startup_ms * 10.0).round() <= 1000.0),
    );
    println!("deckhand_msgs_per_s={deckhand_rate:.0}");
    println!("lapin_loop_msgs_per_s={lapin_rate:.0}");
    println!("ratio={ratio:.3}");
    println!("peak_rss_mib={peak_rss:.1}");
    println!("startup_ms={startup_ms:.1}");
    if stop_failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One run: fresh queues, pre-fill, spawn, measure, stop, verify, delete the queues.
async fn one_run(
    args: &Args,
    topo: &mut Topology,
    cipher: &MessageCipher,
    echo: &Path,
    step_file: &Path,
    arm: Arm,
    round: usize,
) -> Result<RunFigures, String> {
    let tag = format!("{}{round}", arm.name());
    let topo_id = topo.id.clone();
    let rk = |kind: &str| format!("{topo_id}.{tag}.{kind}");
    let input = topo.queue(&format!("{tag}-in"), &rk("input")).await?;
    let output = topo.queue(&format!("{tag}-out"), &rk("message")).await?;
    let errors = topo.queue(&format!("{tag}-errors"), &rk("error")).await?;
    let prefilled = Instant::now();
    prefill(topo, &rk("input"), args, cipher).await?;
    let ready = topo.ready(&input).await?;
    if ready as usize != args.messages {
        return Err(format!(
            "pre-fill: {input} holds {ready} messages, expected {}",
            args.messages
        ));
    }
    println!(
        "round={round} {}: pre-filled {} messages in {:.0} ms",
        arm.name(),
        args.messages,
        ms(prefilled.elapsed())
    );

    let mut command = match arm {
        Arm::Deckhand => {
            let mut c = wrapped(args.wrap.as_deref(), echo);
            c.arg("run").env_clear().envs(echo_worker_env(&EchoStep {
                flow_id: &topo.id,
                broker: ("ELASTICIO_AMQP_URI", args.amqp_uri.clone()),
                input: &input,
                exchange: &topo.exchange,
                routing_key: &rk,
                prefetch: args.prefetch,
                step_file,
            }));
            if let Some(addr) = &args.metrics_addr {
                c.env("DECKHAND_METRICS_ADDR", addr);
            }
            c
        }
        Arm::LapinLoop => {
            let mut c = wrapped(args.wrap.as_deref(), &this_binary()?);
            c.args(["runtime-throughput", "--lapin-loop-child"])
                .arg("--prefetch")
                .arg(args.prefetch.to_string())
                .arg("--queue")
                .arg(&input)
                .arg("--exchange")
                .arg(&topo.exchange)
                .arg("--routing-key")
                .arg(rk("message"))
                .env_clear()
                .env("DECKHAND_BENCH_AMQP_URI", &args.amqp_uri);
            c
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut process = Process::spawn(command, arm.name())?;
    let measured = measure(args, topo, &output, &errors, &mut process).await;
    let stopped = process.stop().await;
    let mut figures = match measured {
        Ok(figures) => figures,
        Err(e) => {
            return Err(format!(
                "round {round}, {}: {e}\n--- last stderr lines ---\n{}",
                arm.name(),
                process.tail()
            ));
        }
    };
    let (warning_lines, error_lines, notable) = process.log_summary();
    figures.warnings = warning_lines;
    figures.errors = error_lines;
    for line in notable {
        println!("round={round} {} logged: {line}", arm.name());
    }
    // Each input published exactly once and no error event, or the figures are wrong.
    let left = topo.ready(&input).await?;
    let out = topo.ready(&output).await?;
    let errs = topo.ready(&errors).await?;
    if out as usize != args.messages || errs != 0 {
        return Err(format!(
            "round {round}, {}: the output queue holds {out} messages (expected {}), the \
             error queue {errs} (expected 0)\n--- last stderr lines ---\n{}",
            arm.name(),
            args.messages,
            process.tail()
        ));
    }
    // A failed stop leaves the figures valid but fails the benchmark.
    let mut stop_problems = Vec::new();
    if let Err(e) = stopped {
        stop_problems.push(e);
    }
    if left != 0 {
        stop_problems.push(format!("{left} input messages were not acked"));
    }
    if !stop_problems.is_empty() {
        let failure = stop_problems.join("; ");
        println!(
            "round={round} {}: STOP FAILED: {failure}; last stderr lines:\n{}",
            arm.name(),
            process.tail_lines(STOP_FAILURE_LINES)
        );
        figures.stop_failure = Some(failure);
    }
    for q in [input, output, errors] {
        topo.delete_queue(&q).await;
    }
    Ok(figures)
}

/// A command running `binary`, directly or as the first argument of `wrapper`.
fn wrapped(wrapper: Option<&Path>, binary: &Path) -> tokio::process::Command {
    match wrapper {
        Some(wrapper) => {
            let mut c = tokio::process::Command::new(wrapper);
            // `/proc/self/exe` would name the wrapper's process, not this binary.
            c.arg(std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf()));
            c
        }
        None => tokio::process::Command::new(binary),
    }
}

/// This program, for the lapin loop process. `/proc/self/exe` still works when the file was
/// replaced by a rebuild while the benchmark runs (the target directory may be shared).
fn this_binary() -> Result<PathBuf, String> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))
}

/// The echo worker's step, as far as its environment differs between the benchmarks.
pub(crate) struct EchoStep<'a> {
    /// The flow id (the benchmarks use their topology's id).
    pub flow_id: &'a str,
    /// `ELASTICIO_AMQP_URI` (one node) or `ELASTICIO_AMQP_URIS` (a failover list), and its value.
    pub broker: (&'static str, String),
    /// The queue the worker consumes.
    pub input: &'a str,
    /// The exchange it publishes to.
    pub exchange: &'a str,
    /// The routing key of an event kind (`message`, `error`, `rebound`, `snapshot`).
    pub routing_key: &'a dyn Fn(&str) -> String,
    /// `basic.qos` prefetch.
    pub prefetch: u16,
    /// The step file (`config`, `snapshot`).
    pub step_file: &'a Path,
}

/// The worker's environment: a Sailor step running `passthrough` on the benchmarks' crypto
/// settings with every throttle off.
pub(crate) fn echo_worker_env(step: &EchoStep<'_>) -> Vec<(String, String)> {
    let rk = step.routing_key;
    [
        ("ELASTICIO_FLOW_ID", format!("flow-{}", step.flow_id)),
        ("ELASTICIO_EXEC_ID", "exec-1".to_owned()),
        ("ELASTICIO_STEP_ID", "step_1".to_owned()),
        ("ELASTICIO_CONTAINER_ID", "container-1".to_owned()),
        ("ELASTICIO_WORKSPACE_ID", "workspace-1".to_owned()),
        ("ELASTICIO_USER_ID", "user-1".to_owned()),
        ("ELASTICIO_COMP_ID", "comp-1".to_owned()),
        ("ELASTICIO_FUNCTION", "passthrough".to_owned()),
        (step.broker.0, step.broker.1.clone()),
        ("ELASTICIO_LISTEN_MESSAGES_ON", step.input.to_owned()),
        ("ELASTICIO_PUBLISH_MESSAGES_TO", step.exchange.to_owned()),
        ("ELASTICIO_DATA_ROUTING_KEY", rk("message")),
        ("ELASTICIO_ERROR_ROUTING_KEY", rk("error")),
        ("ELASTICIO_REBOUND_ROUTING_KEY", rk("rebound")),
        ("ELASTICIO_SNAPSHOT_ROUTING_KEY", rk("snapshot")),
        (
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD",
            CRYPTO_PASSWORD.to_owned(),
        ),
        ("ELASTICIO_MESSAGE_CRYPTO_IV", CRYPTO_IV.to_owned()),
        (
            "ELASTICIO_RABBITMQ_PREFETCH_SAILOR",
            step.prefetch.to_string(),
        ),
        // Sailor's default throttles (10 data, 2 errors, 2 snapshots per 100 ms) cap a step
        // at 100 msg/s; in Deckhand a limit of 0 disables a throttle (`config.rs`, RateLimits).
        ("ELASTICIO_DATA_RATE_LIMIT", "0".to_owned()),
        ("ELASTICIO_ERROR_RATE_LIMIT", "0".to_owned()),
        ("ELASTICIO_SNAPSHOT_RATE_LIMIT", "0".to_owned()),
        (
            "DECKHAND_STEP_FILE",
            step.step_file.to_string_lossy().into_owned(),
        ),
        ("LOG_LEVEL", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Waits for the first consumed message, then polls the output queue until it holds N.
async fn measure(
    args: &Args,
    topo: &Topology,
    output: &str,
    errors: &str,
    process: &mut Process,
) -> Result<RunFigures, String> {
    let first_rx = process
        .first_consumed
        .take()
        .ok_or("internal: first-consumed receiver taken twice")?;
    let first = tokio::select! {
        first = first_rx => match first {
            Ok(first) => first,
            Err(_) => {
                // Stderr closed: the process is exiting.
                let status = tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await;
                return Err(match status {
                    Ok(status) => format!("exited before consuming ({})", describe(status)),
                    Err(_) => "closed its stderr before consuming".to_owned(),
                });
            }
        },
        status = process.child.wait() => {
            return Err(format!("exited before consuming ({})", describe(status)));
        }
        _ = tokio::time::sleep(STARTUP_TIMEOUT) => {
            return Err(format!("no `{FIRST_CONSUMED}` within {STARTUP_TIMEOUT:?}"));
        }
    };
    let startup = first.duration_since(process.spawned);
    let stall = Duration::from_secs(args.stall_secs);
    let mut last_count = 0;
    let mut last_change = Instant::now();
    let done = loop {
        let count = topo.ready(output).await? as usize;
        let now = Instant::now();
        if count >= args.messages {
            break now;
        }
        if count != last_count {
            last_count = count;
            last_change = now;
        } else if now.duration_since(last_change) > stall {
            let errs = topo.ready(errors).await.unwrap_or(0);
            return Err(format!(
                "stalled: {count} of {} messages in the output queue, no progress for {stall:?} \
                 ({errs} error events)",
                args.messages
            ));
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!(
                "exited with {count} of {} messages published ({})",
                args.messages,
                describe(Ok(status))
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let elapsed = done.duration_since(first);
    let pid = process.pid;
    Ok(RunFigures {
        startup,
        elapsed,
        msgs_per_s: args.messages as f64 / elapsed.as_secs_f64(),
        peak_rss_kib: proc_status_kib(pid, "VmHWM")
            .ok_or_else(|| format!("cannot read VmHWM of pid {pid}"))?,
        rss_at_stop_kib: proc_status_kib(pid, "VmRSS").unwrap_or(0),
        cpu: proc_cpu_time(pid).unwrap_or_default(),
        warnings: 0,
        errors: 0,
        stop_failure: None,
    })
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// A field of `/proc/<pid>/status` given in kB (`VmHWM`, `VmRSS`).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// User + system CPU time of a process so far (`/proc/<pid>/stat` fields 14 and 15).
fn proc_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads its argument.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
}

/// A consumer process under test, its stderr read line by line as it arrives.
pub(crate) struct Process {
    child: tokio::process::Child,
    pid: u32,
    spawned: Instant,
    first_consumed: Option<oneshot::Receiver<Instant>>,
    log: Arc<Mutex<LogState>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct LogState {
    tail: VecDeque<String>,
    warnings: u64,
    errors: u64,
    /// The first warning and error lines, shown after the run.
    notable: Vec<String>,
    /// The first error lines.
    first_errors: Vec<String>,
}

impl Process {
    pub(crate) fn spawn(mut command: tokio::process::Command, what: &str) -> Result<Self, String> {
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the {what} process: {e}"))?;
        let pid = child.id().ok_or("the process exited at once")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, first_consumed) = oneshot::channel();
        let log = Arc::new(Mutex::new(LogState::default()));
        let shared = log.clone();
        let reader = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(FIRST_CONSUMED)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(Instant::now());
                }
                let mut log = shared.lock().unwrap_or_else(|e| e.into_inner());
                let warning = line.contains("\"level\":\"WARN\"");
                let error = line.contains("\"level\":\"ERROR\"");
                log.warnings += u64::from(warning);
                log.errors += u64::from(error);
                if (warning || error) && log.notable.len() < NOTABLE_LINES {
                    log.notable.push(line.clone());
                }
                if error && log.first_errors.len() < NOTABLE_LINES {
                    log.first_errors.push(line.clone());
                }
                if log.tail.len() == LOG_TAIL {
                    log.tail.pop_front();
                }
                log.tail.push_back(line);
            }
        });
        Ok(Self {
            child,
            pid,
            spawned,
            first_consumed: Some(first_consumed),
            log,
            reader: Some(reader),
        })
    }

    /// SIGTERM, then wait; a clean stop is exit status 0 within [`EXIT_TIMEOUT`].
    pub(crate) async fn stop(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("had already exited ({status})"));
        }
        let pid = libc::pid_t::try_from(self.pid).map_err(|e| e.to_string())?;
        // SAFETY: kill only sends a signal to our own child, which has not been reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(format!(
                "SIGTERM failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let exited = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await;
        // The lines written before the exit (shutdown warnings) are counted too.
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        match exited {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(status) => Err(format!("exited with {} after SIGTERM", describe(status))),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(format!(
                    "did not exit within {EXIT_TIMEOUT:?} of SIGTERM (killed)"
                ))
            }
        }
    }

    /// The first ERROR lines logged.
    pub(crate) fn first_errors(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.first_errors.clone()
    }

    /// SIGKILL, then reap: a crash, as an operator's `kill -9` or the OOM killer does it.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    /// Warning and error line counts, and the first of those lines.
    pub(crate) fn log_summary(&self) -> (u64, u64, Vec<String>) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        (log.warnings, log.errors, log.notable.clone())
    }

    fn tail(&self) -> String {
        self.tail_lines(LOG_TAIL)
    }

    /// The last `n` stderr lines.
    pub(crate) fn tail_lines(&self, n: usize) -> String {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let skip = log.tail.len().saturating_sub(n);
        log.tail
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An encrypted input message as an upstream Sailor step publishes it.
struct InputMessage {
    body: Vec<u8>,
    headers: FieldTable,
    plaintext_len: usize,
}

/// Text that needs no JSON escaping, to pad bodies to size.
const FILLER: &str =
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";

fn input_message(
    seq: usize,
    body_bytes: usize,
    cipher: &MessageCipher,
    flow: &str,
) -> InputMessage {
    let empty = json!({"seq": seq, "payload": ""}).to_string().len();
    let pad = body_bytes.saturating_sub(empty);
    let payload: String = FILLER.chars().cycle().take(pad).collect();
    let id = uuid::Uuid::new_v4().to_string();
    let plaintext = json!({
        "id": id,
        "body": {"seq": seq, "payload": payload},
        "attachments": {},
        "headers": {},
        "metadata": {},
    })
    .to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("taskId", js_string(flow)),
        ("execId", js_string("exec-0")),
        ("workspaceId", js_string("workspace-1")),
        ("containerId", js_string("container-0")),
        ("userId", js_string("user-1")),
        ("stepId", js_string("step_0")),
        ("compId", js_string("comp-0")),
        ("function", js_string("upstream")),
        ("threadId", js_string(uuid::Uuid::new_v4().to_string())),
        ("messageId", js_string(id)),
        (
            "parentMessageId",
            js_string(uuid::Uuid::new_v4().to_string()),
        ),
        ("start", js_number(now)),
        ("end", js_number(now)),
        ("protocolVersion", js_number(1)),
    ] {
        headers.insert(ShortString::from(name), value);
    }
    InputMessage {
        body: cipher.encrypt(plaintext.as_bytes(), ProtocolVersion::V1),
        headers,
        plaintext_len: plaintext.len(),
    }
}

/// Publishes N input messages with confirms, in batches.
async fn prefill(
    topo: &Topology,
    routing_key: &str,
    args: &Args,
    cipher: &MessageCipher,
) -> Result<(), String> {
    let channel = topo
        .conn
        .create_channel()
        .await
        .map_err(|e| format!("pre-fill channel: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("pre-fill confirm.select: {e}"))?;
    let flow = format!("flow-{}", topo.id);
    let mut seq = 0;
    while seq < args.messages {
        let end = (seq + PREFILL_BATCH).min(args.messages);
        let mut confirms = Vec::with_capacity(end - seq);
        for i in seq..end {
            let message = input_message(i, args.body_bytes, cipher, &flow);
            let confirm = channel
                .basic_publish(
                    topo.exchange.clone().into(),
                    routing_key.to_owned().into(),
                    BasicPublishOptions::default(),
                    &message.body,
                    input_properties(message.headers),
                )
                .await
                .map_err(|e| format!("pre-fill publish: {e}"))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm
                .await
                .map_err(|e| format!("pre-fill confirm: {e}"))?;
            if !confirmation.is_ack() {
                return Err("pre-fill: the broker nacked a message".into());
            }
        }
        seq = end;
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(())
}

/// Sailor's publish properties: JSON, UTF-8, transient.
fn input_properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf8".into())
        .with_delivery_mode(1)
        .with_headers(headers)
}

/// The benchmark's private exchange and the queues of the current run.
struct Topology {
    conn: Connection,
    channel: Channel,
    id: String,
    exchange: String,
    queues: Vec<String>,
}

impl Topology {
    /// Connects and declares `deckhand-bench-<uuid>` (direct, auto-delete) with an anchor
    /// queue.
    async fn new(uri: &str, redacted: &str) -> Result<Self, String> {
        let unreachable = |reason: String| {
            format!(
                "RabbitMQ not reachable at {redacted}: {reason}. Start it (e.g. `rabbitmq-server \
                 -detached`) or point DECKHAND_BENCH_AMQP_URI at a broker."
            )
        };
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(
                uri,
                ConnectionProperties::default().with_connection_name("deckhand-bench-admin".into()),
            ),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("connection timed out after 10 s".into())),
        };
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("admin channel: {e}"))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("deckhand-bench-{id}");
        channel
            .exchange_declare(
                exchange.clone().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("declare exchange {exchange}: {e}"))?;
        let mut topo = Self {
            conn,
            channel,
            id,
            exchange,
            queues: Vec::new(),
        };
        // Keeps the auto-delete exchange alive between runs (their queues come and go); if
        // the benchmark dies, it expires and the exchange goes with it.
        if let Err(e) = topo.queue("anchor", "anchor").await {
            topo.cleanup().await;
            return Err(e);
        }
        Ok(topo)
    }

    /// Declares `deckhand-bench-<uuid>-<suffix>` bound with `routing_key`. Queues expire after
    /// 10 idle minutes, so a benchmark killed half-way leaves nothing behind for long.
    async fn queue(&mut self, suffix: &str, routing_key: &str) -> Result<String, String> {
        let name = format!("{}-{suffix}", self.exchange);
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
        self.channel
            .queue_declare(name.clone().into(), QueueDeclareOptions::default(), args)
            .await
            .map_err(|e| format!("declare queue {name}: {e}"))?;
        self.queues.push(name.clone());
        self.channel
            .queue_bind(
                name.clone().into(),
                self.exchange.clone().into(),
                routing_key.to_owned().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("bind queue {name}: {e}"))?;
        Ok(name)
    }

    /// Messages ready in `queue` (passive declare).
    async fn ready(&self, queue: &str) -> Result<u32, String> {
        self.channel
            .queue_declare(
                queue.to_owned().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .map_err(|e| format!("passive declare of {queue}: {e}"))
    }

    async fn delete_queue(&mut self, queue: &str) {
        if let Err(e) = self
            .channel
            .queue_delete(queue.to_owned().into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("warning: deleting queue {queue}: {e}");
        }
        self.queues.retain(|q| q != queue);
    }

    /// Deletes the remaining queues and the exchange, and closes the connection.
    async fn cleanup(mut self) {
        // A failed broker operation closes the channel; clean up on a fresh one.
        if !self.channel.status().connected()
            && let Ok(channel) = self.conn.create_channel().await
        {
            self.channel = channel;
        }
        for queue in std::mem::take(&mut self.queues) {
            self.delete_queue(&queue).await;
        }
        if let Err(e) = self
            .channel
            .exchange_delete(
                self.exchange.clone().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
        {
            eprintln!("warning: deleting exchange {}: {e}", self.exchange);
        }
        let _ = self.conn.close(200, "OK".into()).await;
    }
}

/// The lapin loop process: consume with prefetch, decrypt, re-encrypt, publish with a confirm,
/// ack; up to `prefetch` deliveries at once. Stops on SIGTERM like the worker.
async fn lapin_loop(args: &Args) -> Result<(), String> {
    let (Some(queue), Some(exchange), Some(routing_key)) =
        (&args.queue, &args.exchange, &args.routing_key)
    else {
        return Err("--lapin-loop-child needs --queue, --exchange and --routing-key".into());
    };
    // Registered first, so a SIGTERM never finds the default handler.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    let cipher =
        Arc::new(MessageCipher::new(CRYPTO_PASSWORD, CRYPTO_IV).map_err(|e| e.to_string())?);
    let connect = |role: &str| {
        Connection::connect(
            &args.amqp_uri,
            ConnectionProperties::default()
                .with_connection_name(format!("deckhand-bench-lapin-loop-{role}").into()),
        )
    };
    let read = connect("read").await.map_err(|e| format!("connect: {e}"))?;
    let write = connect("write")
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let publish = write
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("confirm.select: {e}"))?;
    let consume = read
        .create_channel()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    consume
        .basic_qos(args.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| format!("basic.qos: {e}"))?;
    let mut consumer = consume
        .basic_consume(
            queue.clone().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("basic.consume {queue}: {e}"))?;
    let exchange = ShortString::from(exchange.clone());
    let routing_key = ShortString::from(routing_key.clone());
    let failures = Arc::new(AtomicU64::new(0));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut first = true;
    loop {
        let delivery = tokio::select! {
            _ = term.recv() => break,
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(format!("consumer: {e}")),
            None => break,
        };
        if first {
            first = false;
            log_line("INFO", FIRST_CONSUMED);
        }
        in_flight.spawn(relay(
            delivery,
            cipher.clone(),
            publish.clone(),
            exchange.clone(),
            routing_key.clone(),
            failures.clone(),
        ));
        while in_flight.try_join_next().is_some() {}
    }
    let _ = consume
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    while in_flight.join_next().await.is_some() {}
    let _ = read.close(200, "OK".into()).await;
    let _ = write.close(200, "OK".into()).await;
    let failed = failures.load(Ordering::Relaxed);
    log_line(
        if failed == 0 { "INFO" } else { "ERROR" },
        &format!("lapin loop stopped; {failed} deliveries failed"),
    );
    Ok(())
}

/// One delivery of the lapin loop.
async fn relay(
    delivery: lapin::message::Delivery,
    cipher: Arc<MessageCipher>,
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    failures: Arc<AtomicU64>,
) {
    let result = async {
        let plaintext = cipher
            .decrypt(&delivery.data, ProtocolVersion::V1)
            .map_err(|e| e.to_string())?;
        let body = cipher.encrypt(&plaintext, ProtocolVersion::V1);
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let confirmation = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                // Persistent, as the worker publishes by default: the same broker work.
                input_properties(headers).with_delivery_mode(2),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err("nacked".to_owned())
        }
    }
    .await;
    match result {
        Ok(()) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                failures.fetch_add(1, Ordering::Relaxed);
                log_line("ERROR", &format!("ack: {e}"));
            }
        }
        Err(e) => {
            failures.fetch_add(1, Ordering::Relaxed);
            log_line("ERROR", &format!("relay: {e}"));
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
        }
    }
}

/// A log line shaped like the worker's JSON lines (the parent matches on these fields).
fn log_line(level: &str, message: &str) {
    eprintln!(
        "{}",
        json!({"level": level, "fields": {"message": message}, "target": "lapin_loop"})
    );
}
