//! Deckhand's benchmark programs. Each subcommand prints context lines, then its figures as
//! `key=value` lines; see `bench/README.md`.
//!
//! Layout: one module per benchmark, each exposing `Args` (its clap options) and
//! `run(&Args) -> Result<ExitCode, _>`, which builds the Tokio runtime that benchmark needs;
//! `loopback` holds the in-process servers and helpers they share, `stats` the latency
//! statistics.

mod auth_overhead;
mod chaos;
mod fleet;
mod loopback;
mod rotation_torture;
mod runtime_throughput;
mod stats;
mod token_storm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks for the Deckhand SDK and runtime. Run in release mode:
/// `cargo run --release -p deckhand-bench -- <SUBCOMMAND>`.
#[derive(Parser, Debug)]
#[command(name = "deckhand-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N concurrent requests whose token is due for refresh: token requests caused by
    /// Deckhand's single-flight manager vs a naive "check, fetch, store" interceptor.
    TokenStorm(token_storm::Args),
    /// Per-request latency of the authenticated client vs a plain reqwest client (no refresh
    /// due), interleaved; prints the ratio of medians.
    AuthOverhead(auth_overhead::Args),
    /// Messages per second through the Deckhand AMQP worker (the echo example as a separate
    /// process) vs a minimal lapin consume→publish loop, interleaved; plus peak RSS and
    /// start-up time. Needs RabbitMQ.
    RuntimeThroughput(runtime_throughput::Args),
    /// N worker processes x M accounts sharing credentials, SIGKILLs, a SIGSTOP and held-back
    /// token responses: refreshes, invalid_grant and lost rotations with the PostgreSQL
    /// credential store vs per-process gates. Needs PostgreSQL.
    Fleet(fleet::Args),
    /// One worker process of `fleet` (started by it).
    #[command(hide = true)]
    FleetWorker(fleet::WorkerArgs),
    /// The rotation torture test with many cases (20,000 by default): random interleavings of
    /// calls, 401s, expiries, token and sink faults, component updateKeys, cancellations and
    /// shutdown against the emulator's strict rotation; prints the figures.
    RotationTorture(rotation_torture::Args),
    /// The AMQP worker through forced connection closes, duplicate-id distinct messages, a
    /// broker restart, SIGKILL and a cluster node stop, on a 3-node RabbitMQ cluster of its
    /// own; prints lost / duplicates / dropped_distinct / error_routed / failover_s per
    /// scenario.
    Chaos(chaos::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::TokenStorm(args) => token_storm::run(args),
        Command::AuthOverhead(args) => auth_overhead::run(args),
        Command::RuntimeThroughput(args) => runtime_throughput::run(args),
        Command::Fleet(args) => fleet::run(args),
        Command::FleetWorker(args) => fleet::run_worker(args),
        Command::RotationTorture(args) => rotation_torture::run(args),
        Command::Chaos(args) => chaos::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
