//! `auth-overhead`: what the authenticated client adds to a request when no refresh is due.
//!
//! One loopback API with a minimal handler. The same sequential GET requests are sent through
//! three clients over identical `api_http_client()` connection pools, in interleaved batches
//! (the order of the clients rotates every round, after warm-up rounds that are not recorded):
//!
//! * `plain`: `deckhand::auth::api_http_client()`, a bare `reqwest::Client`;
//! * `header`: the plain client sending the same `Authorization: Bearer …` header by hand, to
//!   tell what carrying a token costs on the wire from what Deckhand's code costs;
//! * `middleware`: the same client wrapped by `reqwest_middleware` with no middleware, to tell
//!   the middleware framework's cost from `BearerAuth`'s;
//! * `auth`: `TokenManager::http_client(api)`, holding a valid token far from expiry.
//!
//! Latency is taken per request (send + body read). Absolute times on a shared machine are
//! noise; the ratio of medians is the figure.

use std::error::Error;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use deckhand::auth::{Grant, MemorySink, Strategy, TokenEndpoint, TokenManager, api_http_client};
use deckhand::credentials::Credentials;
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;

use crate::loopback::LoopbackServer;
use crate::stats::{Stats, median_sorted};

/// Options of `auth-overhead`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Measured rounds; each round sends one batch through every client.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Sequential requests per batch.
    #[arg(long, default_value_t = 200)]
    requests_per_round: usize,
    /// Rounds sent before measuring (connections, caches, allocator warmed up).
    #[arg(long, default_value_t = 5)]
    warmup_rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    Plain,
    Header,
    Middleware,
    Auth,
}

const ARMS: [Arm; 4] = [Arm::Plain, Arm::Header, Arm::Middleware, Arm::Auth];
const ARM_NAMES: [&str; 4] = ["plain", "header", "middleware", "auth"];
const PLAIN: usize = 0;
const AUTH: usize = 3;

const ACCESS_TOKEN: &str = "at-valid-for-an-hour";

struct Clients {
    plain: reqwest::Client,
    bearer: http::HeaderValue,
    middleware: ClientWithMiddleware,
    auth: ClientWithMiddleware,
}

impl Clients {
    /// One request: send, read the body; returns its latency in nanoseconds.
    async fn once(&self, arm: Arm, url: &str) -> Result<u64, String> {
        let started = Instant::now();
        let response = match arm {
            Arm::Plain => self
                .plain
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?,
            Arm::Header => self
                .plain
                .get(url)
                .header(http::header::AUTHORIZATION, self.bearer.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?,
            Arm::Middleware => self
                .middleware
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?,
            Arm::Auth => self.auth.get(url).send().await.map_err(|e| e.to_string())?,
        };
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        if status != reqwest::StatusCode::OK || body.is_empty() {
            return Err(format!("{arm:?}: HTTP {status}, {} body bytes", body.len()));
        }
        Ok(elapsed.as_nanos() as u64)
    }
}

/// Counts requests at the token endpoint (there should be none) and at the API.
#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    api_requests: AtomicU64,
    api_authorized: AtomicU64,
}

async fn data(
    State(counters): State<Arc<Counters>>,
    headers: axum::http::HeaderMap,
) -> DataResponse {
    counters.api_requests.fetch_add(1, Ordering::Relaxed);
    if headers.contains_key(header::AUTHORIZATION) {
        counters.api_authorized.fetch_add(1, Ordering::Relaxed);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true}"#,
    )
}

type DataResponse = ([(header::HeaderName, &'static str); 1], &'static str);

async fn token(State(counters): State<Arc<Counters>>) -> StatusCode {
    counters.token_requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::SERVICE_UNAVAILABLE
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.rounds == 0 || args.requests_per_round == 0 {
        return Err("--rounds and --requests-per-round must be at least 1".into());
    }
    let counters = Arc::new(Counters::default());
    let server = LoopbackServer::start(
        "bench-api",
        Router::new()
            .route("/api/data", get(data))
            .route("/oauth2/token", post(token))
            .with_state(counters.clone()),
        1,
    )?;
    // A current-thread client runtime: sequential requests, no cross-thread wake-ups to add
    // noise. The server runs on its own thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let base = server.url();
    let url = format!("{base}/api/data");

    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_secs()
        .saturating_add(3600);
    let credentials = Credentials::from_keys(json!({
        "oauth": {
            "access_token": ACCESS_TOKEN,
            "refresh_token": "rt-unused",
            "token_type": "Bearer",
            "expires_at": expires_at,
        }
    }))?;
    let endpoint = TokenEndpoint::new(&format!("{base}/oauth2/token"), "bench-client")?
        .client_secret("bench-secret")
        .grant(Grant::RefreshToken);
    let manager = TokenManager::builder(credentials, endpoint, MemorySink::new())
        .strategy(Strategy::default())
        .build();
    let clients = runtime.block_on(async {
        Ok::<_, Box<dyn Error>>(Clients {
            plain: api_http_client()?,
            bearer: {
                let mut value = http::HeaderValue::try_from(format!("Bearer {ACCESS_TOKEN}"))?;
                value.set_sensitive(true);
                value
            },
            middleware: reqwest_middleware::ClientBuilder::new(api_http_client()?).build(),
            auth: manager.http_client(&base)?,
        })
    })?;

    println!("# auth-overhead");
    println!(
        "rounds={} requests_per_round={} warmup_rounds={} clients=plain,header,middleware,auth (order rotates per round)",
        args.rounds, args.requests_per_round, args.warmup_rounds
    );

    let mut measured = runtime.block_on(measure(args, &clients, &url))?;
    drop(clients);
    runtime.shutdown_timeout(Duration::from_secs(1));

    let metrics = manager.metrics();
    let token_requests = counters.token_requests.load(Ordering::Relaxed);
    let mut stats = Vec::with_capacity(ARMS.len());
    for samples in &mut measured.samples {
        stats.push(Stats::of(samples).ok_or("no samples")?);
    }
    let [plain_stats, header_stats, middleware_stats, auth_stats] =
        <[Stats; 4]>::try_from(stats).map_err(|_| "one statistic per client")?;
    for (name, s) in
        ARM_NAMES
            .iter()
            .zip([&plain_stats, &header_stats, &middleware_stats, &auth_stats])
    {
        println!(
            "{name}: n={} median_us={:.2} p90_us={:.2} p99_us={:.2} mean_us={:.2}",
            s.count,
            s.median / 1e3,
            s.p90 / 1e3,
            s.p99 / 1e3,
            s.mean / 1e3
        );
    }
    let mut round_ratios = std::mem::take(&mut measured.round_ratios);
    round_ratios.sort_by(f64::total_cmp);
    let round_ratio_median = round_ratios[round_ratios.len() / 2];
    println!(
        "header_only_ratio={:.3} middleware_only_ratio={:.3} auth_vs_middleware_ratio={:.3} \
         mean_ratio={:.3} p90_ratio={:.3} per_round_ratio_median={:.3} \
         per_round_ratio_range={:.3}..{:.3}",
        header_stats.median / plain_stats.median,
        middleware_stats.median / plain_stats.median,
        auth_stats.median / middleware_stats.median,
        auth_stats.mean / plain_stats.mean,
        auth_stats.p90 / plain_stats.p90,
        round_ratio_median,
        round_ratios[0],
        round_ratios[round_ratios.len() - 1],
    );
    println!(
        "api_requests={} api_authorized={} token_requests={token_requests} refreshes={} api_connections={}",
        counters.api_requests.load(Ordering::Relaxed),
        counters.api_authorized.load(Ordering::Relaxed),
        metrics.refreshes,
        server.connections_accepted(),
    );
    println!("plain_median_us={:.2}", plain_stats.median / 1e3);
    println!("auth_median_us={:.2}", auth_stats.median / 1e3);
    println!(
        "overhead_ratio={:.3}",
        auth_stats.median / plain_stats.median
    );

    if token_requests != 0 || metrics.refreshes != 0 {
        eprintln!("FAILED: the token was refreshed during the run; the figures are not overhead");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

struct Measured {
    /// Per-request latencies in ns, indexed like [`ARMS`].
    samples: [Vec<u64>; 4],
    /// Per round: median auth latency / median plain latency.
    round_ratios: Vec<f64>,
}

async fn measure(args: &Args, clients: &Clients, url: &str) -> Result<Measured, Box<dyn Error>> {
    let per_arm = args.rounds * args.requests_per_round;
    let mut samples: [Vec<u64>; 4] = std::array::from_fn(|_| Vec::with_capacity(per_arm));
    let mut round_ratios = Vec::with_capacity(args.rounds);
    let mut batch = Vec::with_capacity(args.requests_per_round);
    for round in 0..args.warmup_rounds + args.rounds {
        let recording = round >= args.warmup_rounds;
        let mut round_medians = [0.0; 4];
        for k in 0..ARMS.len() {
            let index = (round + k) % ARMS.len();
            batch.clear();
            for _ in 0..args.requests_per_round {
                batch.push(clients.once(ARMS[index], url).await?);
            }
            if recording {
                samples[index].extend_from_slice(&batch);
                batch.sort_unstable();
                round_medians[index] = median_sorted(&batch);
            }
        }
        if recording {
            round_ratios.push(round_medians[AUTH] / round_medians[PLAIN]);
        }
    }
    Ok(Measured {
        samples,
        round_ratios,
    })
}
