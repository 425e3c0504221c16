//! `fleet`: N worker *processes* × M accounts sharing credentials, with crashes.
//!
//! The provider emulator runs in this process (single-use refresh tokens, strict by default or
//! with a reuse grace window; 2 s tokens). Every worker process serves every account (the
//! replicas of a step all hold the same credential) and, per account, asks for the access
//! token every `--call-interval-ms` and calls the Graph-like API with it. Tokens are refreshed
//! when they have expired (or on a 401), so every refresh answers one expiry.
//!
//! Meanwhile a random worker is killed with SIGKILL every ~`--kill-every-secs` and restarted,
//! one is stopped with SIGSTOP for longer than the lease once, and every
//! ~`--drop-every-secs` one token response is held back after the provider rotated (an
//! injected drop: the client's deadline passes, the rotation never reaches it).
//!
//! Two runs, same settings, same machine, one after the other:
//! 1. **store**: each worker keeps its credentials in the PostgreSQL credential store
//!    (`deckhand::store`, a schema of its own, dropped at the end);
//! 2. **baseline**: per-process gates only, as without a store; a restarted worker starts
//!    from the keys of its step (the seed), since nothing else persisted the rotations.
//!
//! Figures (one line each): `invalid_grant=`, `families_revoked=`, `token_requests=`,
//! `expiries=` (distinct access tokens that some worker found expired or had rejected),
//! `rotations_lost=` (accounts the store marked `rotation_lost`), `injected_drops=`,
//! `waiter_p99_ms=` (p99 latency of token look-ups that waited for a refresh, ≥ 1 ms),
//! `calls=`, `failed_calls=`.

use std::collections::HashSet;
use std::error::Error;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use deckhand::auth::{
    AccountId, CredentialStore, Grant, HolderId, MemorySink, Strategy, TokenEndpoint, TokenManager,
};
use deckhand::credentials::Credentials;
use deckhand::store::{KeyRing, PgCredentialStore, StoreOptions};
use deckhand_emulator::{Emulator, EmulatorConfig, RefreshRotation, TokenFault};
use rand::Rng;
use serde_json::json;

use crate::stats::Stats;

/// Rotation policy of the emulated provider.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Single-use refresh tokens; reuse revokes the family.
    Strict,
    /// Single-use with a reuse grace window (`--grace-window-secs`).
    Grace,
}

/// Options of `fleet`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Accounts (credentials); every worker serves all of them.
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    /// Length of each of the two runs, in seconds.
    #[arg(long, default_value_t = 180)]
    duration_secs: u64,
    /// Access-token lifetime.
    #[arg(long, default_value_t = 2)]
    token_lifetime_secs: u64,
    /// Provider rotation policy.
    #[arg(long, value_enum, default_value_t = Rotation::Strict)]
    rotation: Rotation,
    /// Reuse window under `--rotation grace`.
    #[arg(long, default_value_t = 30)]
    grace_window_secs: u64,
    /// Lease of the credential store, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
    /// Per account and worker: one API call this often.
    #[arg(long, default_value_t = 1000)]
    call_interval_ms: u64,
    /// A random worker is SIGKILLed and restarted about this often (±25 %).
    #[arg(long, default_value_t = 20)]
    kill_every_secs: u64,
    /// One token response is held back after the rotation about this often (0 = never).
    #[arg(long, default_value_t = 30)]
    drop_every_secs: u64,
    /// Skip the baseline run.
    #[arg(long)]
    no_baseline: bool,
    /// PostgreSQL server (a schema of its own is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    store_url: String,
}

/// Options of the hidden `fleet-worker` subcommand (one worker process).
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    store: bool,
    #[arg(long)]
    token_url: String,
    #[arg(long)]
    api_url: String,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    client_secret: String,
    /// A JSON array of the seed refresh tokens, one per account.
    #[arg(long)]
    seed_file: std::path::PathBuf,
    #[arg(long, default_value = "")]
    store_url: String,
    #[arg(long, default_value = "")]
    schema: String,
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
    #[arg(long)]
    call_interval_ms: u64,
}

fn account_id(n: usize) -> String {
    format!("acct-{n:04}")
}

fn token_hash(token: &str) -> u64 {
    let mut h = DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

/// What the workers reported, summed over every incarnation.
#[derive(Default)]
struct Reports {
    /// Last cumulative `(calls, failed)` of each worker incarnation.
    totals: Vec<(u64, u64)>,
    expired: HashSet<u64>,
    waits_us: Vec<u64>,
}

struct Fleet {
    args: Args,
    store_mode: bool,
    emulator: Arc<Emulator>,
    seed_file: std::path::PathBuf,
    schema: String,
    keys_spec: String,
    reports: Arc<Mutex<Reports>>,
    started: Arc<AtomicU64>,
}

impl Fleet {
    fn spawn(&self) -> Result<Child, Box<dyn Error>> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("fleet-worker")
            .args(["--token-url", &self.emulator.microsoft_token_url()])
            .args(["--api-url", &format!("{}/me", self.emulator.graph_url())])
            .args(["--client-id", &self.emulator.client().id])
            .args(["--client-secret", &self.emulator.client().secret])
            .arg("--seed-file")
            .arg(&self.seed_file)
            .args([
                "--call-interval-ms",
                &self.args.call_interval_ms.to_string(),
            ])
            .args(["--lease-ms", &self.args.lease_ms.to_string()])
            .env("DECKHAND_STORE_KEYS", &self.keys_spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if self.store_mode {
            cmd.arg("--store")
                .args(["--store-url", &self.args.store_url])
                .args(["--schema", &self.schema]);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reports = self.reports.clone();
        let slot = {
            let mut r = reports.lock().unwrap_or_else(|e| e.into_inner());
            r.totals.push((0, 0));
            r.totals.len() - 1
        };
        let started = self.started.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace();
                let mut r = reports.lock().unwrap_or_else(|e| e.into_inner());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("ready"), _, _) => {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    (Some("c"), Some(calls), Some(failed)) => {
                        r.totals[slot] = (calls.parse().unwrap_or(0), failed.parse().unwrap_or(0));
                    }
                    (Some("e"), Some(hash), _) => {
                        if let Ok(h) = hash.parse() {
                            r.expired.insert(h);
                        }
                    }
                    (Some("w"), Some(us), _) => r.waits_us.extend(us.parse::<u64>().ok()),
                    _ => {}
                }
            }
        });
        Ok(child)
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Runs `fleet` (both runs) and prints the figures.
pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "fleet: {} worker processes x {} accounts, {} s per run, {} s tokens, {:?} rotation, lease {} ms, a call per account per worker every {} ms, SIGKILL every ~{} s, one SIGSTOP of {} ms, a held-back token response every ~{} s",
            args.workers,
            args.accounts,
            args.duration_secs,
            args.token_lifetime_secs,
            args.rotation,
            args.lease_ms,
            args.call_interval_ms,
            args.kill_every_secs,
            args.lease_ms * 8 / 5,
            args.drop_every_secs
        );
        let store_ok = run_one(args, true).await?;
        if !args.no_baseline {
            run_one(args, false).await?;
        }
        Ok(if store_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

async fn run_one(args: &Args, store_mode: bool) -> Result<bool, Box<dyn Error>> {
    let rotation = match args.rotation {
        Rotation::Strict => RefreshRotation::Strict,
        Rotation::Grace => RefreshRotation::Grace {
            window: Duration::from_secs(args.grace_window_secs),
        },
    };
    let emulator = Arc::new(
        Emulator::start(EmulatorConfig {
            token_lifetime: Duration::from_secs(args.token_lifetime_secs),
            graph_refresh_rotation: rotation,
            ..EmulatorConfig::default()
        })
        .await?,
    );
    let seeds: Vec<String> = (0..args.accounts)
        .map(|_| emulator.issue_refresh_token(&emulator.client().id))
        .collect();
    let dir = tempfile::tempdir()?;
    let seed_file = dir.path().join("seeds.json");
    std::fs::File::create(&seed_file)?.write_all(serde_json::to_string(&seeds)?.as_bytes())?;
    let key: [u8; 32] = rand::random();
    let keys_spec = format!(
        "fleet={}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let schema = format!("dh_fleet_{}", uuid::Uuid::new_v4().simple());
    let store = if store_mode {
        let store = PgCredentialStore::connect(
            &args.store_url,
            KeyRing::parse(&keys_spec)?,
            StoreOptions {
                schema: schema.clone(),
                lease: Duration::from_millis(args.lease_ms),
                max_connections: 2,
            },
        )
        .await
        .map_err(|e| format!("PostgreSQL at {}: {e}", args.store_url))?;
        for (n, seed) in seeds.iter().enumerate() {
            let keys = Credentials::from_keys(json!({"oauth": {"refresh_token": seed}}))?;
            store
                .seed(&AccountId::new(account_id(n))?, &keys, 0)
                .await?;
        }
        Some(store)
    } else {
        None
    };
    let fleet = Fleet {
        args: args.clone(),
        store_mode,
        emulator: emulator.clone(),
        seed_file,
        schema: schema.clone(),
        keys_spec,
        reports: Arc::default(),
        started: Arc::default(),
    };
    let mut children = (0..args.workers)
        .map(|_| fleet.spawn())
        .collect::<Result<Vec<_>, _>>()?;
    let wait_ready = Instant::now() + Duration::from_secs(60);
    while fleet.started.load(Ordering::Relaxed) < args.workers as u64 && Instant::now() < wait_ready
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emulator.reset_counters();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let mut rng = rand::rng();
    let jitter = |rng: &mut rand::rngs::ThreadRng, every: u64| {
        Duration::from_millis(rng.random_range(every * 750..=every * 1250))
    };
    let mut next_kill = start + jitter(&mut rng, args.kill_every_secs);
    let mut next_drop =
        (args.drop_every_secs > 0).then(|| start + jitter(&mut rng, args.drop_every_secs));
    let stop_at = start + Duration::from_secs(args.duration_secs) / 3;
    let mut stopped: Option<(usize, Instant)> = None;
    let mut stop_done = false;
    let (mut kills, mut drops) = (0u64, 0u64);
    let stall = Duration::from_millis(args.lease_ms * 2);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        if !stop_done && now >= stop_at {
            let victim = rng.random_range(0..children.len());
            signal(&children[victim], libc::SIGSTOP);
            stopped = Some((victim, now + Duration::from_millis(args.lease_ms * 8 / 5)));
            stop_done = true;
        }
        if let Some((victim, until)) = stopped
            && now >= until
        {
            signal(&children[victim], libc::SIGCONT);
            stopped = None;
        }
        if now >= next_kill {
            let victim = rng.random_range(0..children.len());
            if stopped.is_none_or(|(s, _)| s != victim) {
                let _ = children[victim].kill();
                let _ = children[victim].wait();
                children[victim] = fleet.spawn()?;
                kills += 1;
            }
            next_kill = now + jitter(&mut rng, args.kill_every_secs);
        }
        if let Some(at) = next_drop
            && now >= at
        {
            emulator.fail_next_token_requests(1, TokenFault::Stall(stall));
            drops += 1;
            next_drop = Some(now + jitter(&mut rng, args.drop_every_secs));
        }
    }
    if let Some((victim, _)) = stopped {
        signal(&children[victim], libc::SIGCONT);
    }
    // Figures are read at the end of the run; the workers' last reports arrive within 0.5 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let counters = emulator.counters();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    emulator.clear_faults();
    let rotations_lost = match &store {
        Some(store) => store
            .count_by_state()
            .await?
            .into_iter()
            .find(|(state, _)| state == "rotation_lost")
            .map_or(0, |(_, n)| n)
            .to_string(),
        None => "n/a (no store: a lost rotation is not detected)".to_owned(),
    };
    let (calls, failed, expiries, waiter_p99_ms) = {
        let mut r = fleet.reports.lock().unwrap_or_else(|e| e.into_inner());
        let calls: u64 = r.totals.iter().map(|t| t.0).sum();
        let failed: u64 = r.totals.iter().map(|t| t.1).sum();
        let p99 = Stats::of(&mut r.waits_us).map_or(0.0, |s| s.p99 / 1000.0);
        (calls, failed, r.expired.len(), p99)
    };
    if let Some(store) = &store {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(store.pool())
            .await;
    }
    println!();
    println!(
        "[{}] kills={kills} sigstops=1",
        if store_mode {
            "with the credential store"
        } else {
            "baseline: per-process gates, no store"
        }
    );
    println!("invalid_grant={}", counters.invalid_grant);
    println!("families_revoked={}", counters.family_revocations);
    println!("token_requests={}", counters.token_requests);
    println!("expiries={expiries}");
    println!("rotations_lost={rotations_lost}");
    println!("injected_drops={drops}");
    println!("waiter_p99_ms={waiter_p99_ms:.1}");
    println!("calls={calls}");
    println!("failed_calls={failed}");
    if let Ok(emulator) = Arc::try_unwrap(emulator) {
        emulator.shutdown().await;
    }
    Ok(true)
}

/// One worker process: every account, one call per interval each.
pub fn run_worker(args: &WorkerArgs) -> Result<ExitCode, Box<dyn Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(worker(args))
}

async fn worker(args: &WorkerArgs) -> Result<ExitCode, Box<dyn Error>> {
    let seeds: Vec<String> = serde_json::from_slice(&std::fs::read(&args.seed_file)?)?;
    let store = if args.store {
        Some(Arc::new(
            PgCredentialStore::connect(
                &args.store_url,
                KeyRing::from_env()?,
                StoreOptions {
                    schema: args.schema.clone(),
                    lease: Duration::from_millis(args.lease_ms),
                    max_connections: 4,
                },
            )
            .await?,
        ))
    } else {
        None
    };
    let holder = HolderId::for_this_process();
    let http = reqwest::Client::new();
    let calls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for (n, seed) in seeds.iter().enumerate() {
        let endpoint = TokenEndpoint::new(&args.token_url, &args.client_id)?
            .client_secret(args.client_secret.as_str())
            .grant(Grant::RefreshToken);
        let account = AccountId::new(account_id(n))?;
        let manager = match &store {
            Some(store) => {
                let stored = store
                    .load(&account)
                    .await?
                    .ok_or("the account is not seeded")?;
                TokenManager::builder(stored.credentials, endpoint, MemorySink::new())
                    .generation(stored.generation)
                    .strategy(Strategy::on_401())
                    .store(store.clone(), account, holder.clone())
                    .build()
            }
            None => {
                let keys = Credentials::from_keys(json!({"oauth": {"refresh_token": seed}}))?;
                TokenManager::builder(keys, endpoint, MemorySink::new())
                    .strategy(Strategy::on_401())
                    .build()
            }
        };
        let interval = Duration::from_millis(args.call_interval_ms);
        let (http, calls, failed, out, api) = (
            http.clone(),
            calls.clone(),
            failed.clone(),
            out.clone(),
            args.api_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread the accounts over the interval.
            tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
            loop {
                let ok = call(&manager, &http, &api, &out).await;
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(interval).await;
            }
        }));
    }
    println!("ready");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let line = format!(
            "c {} {}\n",
            calls.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

fn report(out: &Mutex<std::io::Stdout>, line: String) {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = out.write_all(line.as_bytes());
}

/// One API call: the token (refreshed if it expired), the request, one retry after a 401.
async fn call(
    manager: &TokenManager,
    http: &reqwest::Client,
    api: &str,
    out: &Mutex<std::io::Stdout>,
) -> bool {
    let before = manager.credentials();
    if let Some(token) = before.token()
        && let Some(access) = token.access_token()
        && token
            .expires_at()
            .is_some_and(|at| at <= std::time::SystemTime::now())
    {
        report(
            out,
            format!("e {}\n", token_hash(&format!("Bearer {}", access.expose()))),
        );
    }
    let started = Instant::now();
    let authorization = manager.authorization().await;
    let waited = started.elapsed();
    if waited >= Duration::from_millis(1) {
        report(out, format!("w {}\n", waited.as_micros()));
    }
    let Ok(authorization) = authorization else {
        return false;
    };
    let send = |header: http::HeaderValue| {
        http.get(api)
            .header(http::header::AUTHORIZATION, header)
            .timeout(Duration::from_secs(10))
            .send()
    };
    match send(authorization.header().clone()).await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) if r.status() == 401 => {
            if let Ok(header) = authorization.header().to_str() {
                report(out, format!("e {}\n", token_hash(header)));
            }
            match manager
                .refresh_after_rejection(authorization.generation(), 401)
                .await
            {
                Ok(retry) => {
                    matches!(send(retry.into_header()).await, Ok(r) if r.status().is_success())
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}
