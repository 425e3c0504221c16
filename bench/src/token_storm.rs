//! `token-storm`: N requests that all need a refresh at the same moment.
//!
//! A loopback OAuth2 token endpoint (refresh_token grant, rotating refresh tokens, ~20 ms of
//! latency, counting requests) and a loopback API (accepting only access tokens it currently
//! knows as valid) are started. The credential's access token expires "just now" (in 1 s, so it
//! is due under `BeforeExpiry { skew: 60 s }`). N requests are released at once:
//!
//! 1. through Deckhand's authenticated client (`BearerAuth` over `api_http_client()`, the same
//!    chain `TokenManager::http_client` builds), against one pair of servers;
//! 2. through a naive client following the "axios interceptor" tutorial pattern (a shared token
//!    variable; each request checks the expiry and, if due, fetches a token itself; no gate),
//!    against a fresh pair of servers with the same expiry setup.
//!
//! The figure that matters is the number of token requests each side caused.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deckhand::auth::{
    BearerAuth, Grant, MemorySink, Strategy, TokenEndpoint, TokenManager, api_http_client,
};
use deckhand::credentials::Credentials;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::loopback::{InFlightLimit, LoopbackServer, ensure_fd_limit};
use crate::stats::median_sorted;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const SEED_ACCESS: &str = "at-seed";
const SEED_REFRESH: &str = "rt-seed";
/// Lifetime of the tokens the endpoint issues.
const ISSUED_LIFETIME: Duration = Duration::from_secs(3600);
/// The seed access token expires this long after the run is set up.
const SEED_LIFETIME: Duration = Duration::from_secs(1);
/// With `--with-baseline`, the seed lives this long, so it is not due.
const BASELINE_LIFETIME: Duration = Duration::from_secs(3600);
const API_PATH: &str = "/api/data";
const TOKEN_PATH: &str = "/oauth2/token";

/// Options of `token-storm`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Requests released at once; every one of them needs the token.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// HTTP exchanges in flight at once per client (a connection cap, applied after
    /// authentication, so all requests still ask for the token concurrently). 0 = no cap, which
    /// needs about four file descriptors per request.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Latency the token endpoint adds to every token request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    token_latency_ms: u64,
    /// Refuse a refresh token that was already rotated (`invalid_grant`), as providers with
    /// refresh-token reuse detection do. By default reuse is counted but allowed, so the naive
    /// run completes and its token requests can be counted.
    #[arg(long)]
    strict_rotation: bool,
    /// Let the token endpoint answer after its latency even if not every request has been
    /// issued yet. By default it also waits until all of them have entered the client's
    /// middleware chain (and so checked the token), so that all N needed the token at once
    /// whatever the scheduler does; without the hold the naive count depends on how many
    /// requests a 2-core machine issues within the latency.
    #[arg(long)]
    no_hold: bool,
    /// Also run Deckhand with a token that is not due (no refresh): the cost of the requests
    /// alone, to compare the elapsed times with.
    #[arg(long)]
    with_baseline: bool,
    /// Give up on a side after this many seconds (its unfinished requests count as failed).
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// Runs the benchmark and prints its figures.
pub fn run(args: &Args) -> Result<ExitCode, Box<dyn Error>> {
    if args.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    // Client and servers share the process: two descriptors per loopback connection, for the
    // API and (naive side) the token endpoint, with headroom for pool churn.
    let connections = if args.max_in_flight == 0 {
        2 * args.requests
    } else {
        4 * args.max_in_flight
    };
    let fd_limit = ensure_fd_limit(2 * connections as u64 + 256)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let workers = runtime.metrics().num_workers();

    println!("# token-storm");
    println!(
        "requests={} max_in_flight={} token_latency_ms={} strict_rotation={} client_workers={workers} fd_limit={fd_limit}",
        args.requests,
        if args.max_in_flight == 0 {
            "unlimited".to_owned()
        } else {
            args.max_in_flight.to_string()
        },
        args.token_latency_ms,
        args.strict_rotation,
    );
    println!(
        "token endpoint: answers after {} ms{}",
        args.token_latency_ms,
        if args.no_hold {
            ""
        } else {
            ", and not before all requests were issued (every request checks the token before any token arrives)"
        }
    );
    println!(
        "setup: seed access token expires in {} s; strategy BeforeExpiry {{ skew: 60 s }} + on-401; naive checks `now + 60 s >= expires_at`",
        SEED_LIFETIME.as_secs()
    );

    if args.with_baseline {
        let baseline = runtime.block_on(run_deckhand(args, BASELINE_LIFETIME))?;
        baseline.print_context("baseline (token not due)");
    }
    let deckhand = runtime.block_on(run_deckhand(args, SEED_LIFETIME))?;
    deckhand.print_context("deckhand");
    let naive = runtime.block_on(run_naive(args))?;
    naive.print_context("naive");

    println!("token_requests={}", deckhand.token_requests);
    println!("requests_ok={}", deckhand.ok);
    println!("elapsed_ms={:.1}", deckhand.elapsed_ms());
    println!("naive_token_requests={}", naive.token_requests);
    println!("naive_requests_ok={}", naive.ok);
    println!("naive_elapsed_ms={:.1}", naive.elapsed_ms());

    runtime.shutdown_timeout(Duration::from_secs(1));
    if deckhand.ok != args.requests {
        eprintln!(
            "FAILED: {} of {} Deckhand requests failed",
            args.requests - deckhand.ok,
            args.requests
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What one side of the benchmark did.
struct SideReport {
    requests: usize,
    ok: usize,
    errors: Vec<(String, usize)>,
    elapsed: Duration,
    token_requests: u64,
    reused_refresh_tokens: u64,
    refused_grants: u64,
    api_accepted: u64,
    api_rejected: u64,
    api_connections: u64,
    token_connections: u64,
    authenticated_median_ms: f64,
    authenticated_max_ms: f64,
    extra: Vec<(&'static str, String)>,
}

impl SideReport {
    fn elapsed_ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3
    }

    fn print_context(&self, side: &str) {
        println!(
            "{side}: requests={} ok={} failed={} elapsed_ms={:.1} token_requests={} \
             refresh_token_reuse={} refused_grants={} api_accepted={} api_rejected={} \
             api_connections={} token_connections={}",
            self.requests,
            self.ok,
            self.requests - self.ok,
            self.elapsed_ms(),
            self.token_requests,
            self.reused_refresh_tokens,
            self.refused_grants,
            self.api_accepted,
            self.api_rejected,
            self.api_connections,
            self.token_connections,
        );
        let mut extra = vec![
            format!(
                "token_in_hand_median_ms={:.1}",
                self.authenticated_median_ms
            ),
            format!("token_in_hand_max_ms={:.1}", self.authenticated_max_ms),
        ];
        extra.extend(self.extra.iter().map(|(k, v)| format!("{k}={v}")));
        println!("{side}: {}", extra.join(" "));
        for (error, count) in &self.errors {
            println!("{side}: error x{count}: {error}");
        }
    }
}

/// The loopback identity provider and API of one side, sharing their view of valid tokens.
struct Provider {
    latency: Duration,
    /// When set, token responses also wait until every request was issued.
    hold: Option<Arc<AllIssued>>,
    strict_rotation: bool,
    token_requests: AtomicU64,
    reused_refresh_tokens: AtomicU64,
    refused_grants: AtomicU64,
    api_accepted: AtomicU64,
    api_rejected: AtomicU64,
    tokens: Mutex<Tokens>,
}

struct Tokens {
    serial: u64,
    /// Access tokens the API accepts, with their expiry.
    access: HashMap<String, SystemTime>,
    /// Refresh tokens not used yet.
    live_refresh: HashSet<String>,
    /// Refresh tokens already exchanged (rotated away).
    rotated_refresh: HashSet<String>,
}

impl Provider {
    fn new(
        latency: Duration,
        hold: Option<Arc<AllIssued>>,
        strict_rotation: bool,
        seed_expires_at: SystemTime,
    ) -> Arc<Self> {
        Arc::new(Self {
            latency,
            hold,
            strict_rotation,
            token_requests: AtomicU64::new(0),
            reused_refresh_tokens: AtomicU64::new(0),
            refused_grants: AtomicU64::new(0),
            api_accepted: AtomicU64::new(0),
            api_rejected: AtomicU64::new(0),
            tokens: Mutex::new(Tokens {
                serial: 0,
                access: HashMap::from([(SEED_ACCESS.to_owned(), seed_expires_at)]),
                live_refresh: HashSet::from([SEED_REFRESH.to_owned()]),
                rotated_refresh: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

async fn token_endpoint(
    State(provider): State<Arc<Provider>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    provider.token_requests.fetch_add(1, Ordering::Relaxed);
    match &provider.hold {
        None => tokio::time::sleep(provider.latency).await,
        Some(hold) => {
            tokio::join!(tokio::time::sleep(provider.latency), hold.wait());
        }
    }
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("client_id") != Some(CLIENT_ID) || field("client_secret") != Some(CLIENT_SECRET) {
        provider.refused_grants.fetch_add(1, Ordering::Relaxed);
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if field("grant_type") != Some("refresh_token") {
        provider.refused_grants.fetch_add(1, Ordering::Relaxed);
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let presented = field("refresh_token").unwrap_or_default();
    let mut tokens = provider.lock();
    if !tokens.live_refresh.remove(presented) {
        let reused = tokens.rotated_refresh.contains(presented);
        if reused {
            provider
                .reused_refresh_tokens
                .fetch_add(1, Ordering::Relaxed);
        }
        if !reused || provider.strict_rotation {
            provider.refused_grants.fetch_add(1, Ordering::Relaxed);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    tokens.rotated_refresh.insert(presented.to_owned());
    tokens.serial += 1;
    let access = format!("at-{}", tokens.serial);
    let refresh = format!("rt-{}", tokens.serial);
    tokens
        .access
        .insert(access.clone(), SystemTime::now() + ISSUED_LIFETIME);
    tokens.live_refresh.insert(refresh.clone());
    drop(tokens);
    Json(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ISSUED_LIFETIME.as_secs(),
        "refresh_token": refresh,
    }))
    .into_response()
}

async fn api(State(provider): State<Arc<Provider>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        provider
            .lock()
            .access
            .get(t)
            .is_some_and(|&expires_at| SystemTime::now() < expires_at)
    });
    if !valid {
        provider.api_rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)],
            Json(json!({ "error": "invalid_token" })),
        )
            .into_response();
    }
    provider.api_accepted.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "ok": true, "items": [1, 2, 3] })).into_response()
}

/// The token endpoint and the API, each on a server of its own.
struct Servers {
    provider: Arc<Provider>,
    idp: LoopbackServer,
    api: LoopbackServer,
}

impl Servers {
    fn start(
        args: &Args,
        hold: Option<Arc<AllIssued>>,
        seed_expires_at: SystemTime,
    ) -> std::io::Result<Self> {
        let provider = Provider::new(
            Duration::from_millis(args.token_latency_ms),
            hold,
            args.strict_rotation,
            seed_expires_at,
        );
        let idp = LoopbackServer::start(
            "bench-idp",
            Router::new()
                .route(TOKEN_PATH, post(token_endpoint))
                .with_state(provider.clone()),
            1,
        )?;
        let api = LoopbackServer::start(
            "bench-api",
            Router::new()
                .route(API_PATH, get(api))
                .with_state(provider.clone()),
            1,
        )?;
        Ok(Self { provider, idp, api })
    }

    fn report(&self, outcome: Outcome) -> SideReport {
        let p = &self.provider;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SideReport {
            requests: outcome.requests,
            ok: outcome.ok,
            errors: outcome.errors,
            elapsed: outcome.elapsed,
            token_requests: get(&p.token_requests),
            reused_refresh_tokens: get(&p.reused_refresh_tokens),
            refused_grants: get(&p.refused_grants),
            api_accepted: get(&p.api_accepted),
            api_rejected: get(&p.api_rejected),
            api_connections: self.api.connections_accepted(),
            token_connections: self.idp.connections_accepted(),
            authenticated_median_ms: outcome.authenticated_median_ms,
            authenticated_max_ms: outcome.authenticated_max_ms,
            extra: Vec::new(),
        }
    }
}

/// The seed credential's expiry, `lifetime` from now ("just now": 1 s), in whole seconds as
/// stored keys hold it.
fn seed_expiry(lifetime: Duration) -> (SystemTime, u64) {
    let secs = (SystemTime::now() + lifetime)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    (UNIX_EPOCH + Duration::from_secs(secs), secs)
}

fn in_flight_limit(args: &Args) -> Option<Arc<Semaphore>> {
    (args.max_in_flight > 0).then(|| Arc::new(Semaphore::new(args.max_in_flight)))
}

async fn run_deckhand(args: &Args, seed_lifetime: Duration) -> Result<SideReport, Box<dyn Error>> {
    let (seed_expires_at, seed_secs) = seed_expiry(seed_lifetime);
    let issued = AllIssued::new(args.requests);
    let servers = Servers::start(
        args,
        (!args.no_hold).then(|| issued.clone()),
        seed_expires_at,
    )?;
    let credentials = Credentials::from_keys(json!({
        "prodEnv": "bench",
        "oauth": {
            "access_token": SEED_ACCESS,
            "refresh_token": SEED_REFRESH,
            "token_type": "Bearer",
            "expires_at": seed_secs,
        }
    }))?;
    let endpoint = TokenEndpoint::new(&format!("{}{TOKEN_PATH}", servers.idp.url()), CLIENT_ID)?
        .client_secret(CLIENT_SECRET)
        .grant(Grant::RefreshToken);
    let sink = MemorySink::new();
    let manager = TokenManager::builder(credentials, endpoint, sink.clone())
        .strategy(Strategy::default())
        .build();
    let api_base = servers.api.url();
    // The chain `TokenManager::http_client` builds (`BearerAuth` over `api_http_client()`),
    // then a probe and the connection cap, after the authentication: every request asks for
    // the token before any of them waits for a connection.
    let probe = AuthenticatedAt::default();
    let mut builder = ClientBuilder::new(api_http_client()?)
        .with(IssuedProbe(issued))
        .with(BearerAuth::new(manager.clone()).allow_origin(&api_base)?)
        .with(probe.clone());
    if let Some(permits) = in_flight_limit(args) {
        builder = builder.with(InFlightLimit::new(permits));
    }
    let outcome = storm(
        args,
        builder.build(),
        format!("{api_base}{API_PATH}"),
        &probe,
    )
    .await;
    let mut report = servers.report(outcome);
    let metrics = manager.metrics();
    report.extra = vec![
        ("manager_token_requests", metrics.token_requests.to_string()),
        ("refreshes", metrics.refreshes.to_string()),
        ("coalesced_waiters", metrics.coalesced_waiters.to_string()),
        ("sink_updates", sink.updates().len().to_string()),
        ("generation", manager.generation().to_string()),
    ];
    Ok(report)
}

async fn run_naive(args: &Args) -> Result<SideReport, Box<dyn Error>> {
    let (seed_expires_at, _) = seed_expiry(SEED_LIFETIME);
    let issued = AllIssued::new(args.requests);
    let servers = Servers::start(
        args,
        (!args.no_hold).then(|| issued.clone()),
        seed_expires_at,
    )?;
    let permits = in_flight_limit(args);
    let naive = NaiveBearer {
        token: Arc::new(RwLock::new(NaiveToken {
            access: SEED_ACCESS.to_owned(),
            refresh: SEED_REFRESH.to_owned(),
            expires_at: seed_expires_at,
        })),
        skew: deckhand::auth::DEFAULT_SKEW,
        token_url: format!("{}{TOKEN_PATH}", servers.idp.url()),
        // Like Deckhand's token client: no redirects, 30 s timeout.
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?,
        permits: permits.clone(),
        stores: Arc::new(AtomicU64::new(0)),
    };
    let stores = naive.stores.clone();
    let probe = AuthenticatedAt::default();
    let mut builder = ClientBuilder::new(api_http_client()?)
        .with(IssuedProbe(issued))
        .with(naive)
        .with(probe.clone());
    if let Some(permits) = permits {
        builder = builder.with(InFlightLimit::new(permits));
    }
    let api_base = servers.api.url();
    let outcome = storm(
        args,
        builder.build(),
        format!("{api_base}{API_PATH}"),
        &probe,
    )
    .await;
    let mut report = servers.report(outcome);
    report.extra = vec![(
        "token_variable_overwrites",
        stores.load(Ordering::Relaxed).to_string(),
    )];
    Ok(report)
}

/// What the requests of one side came to.
struct Outcome {
    requests: usize,
    ok: usize,
    errors: Vec<(String, usize)>,
    elapsed: Duration,
    /// Median and last time (ms after the release) at which a request had its token.
    authenticated_median_ms: f64,
    authenticated_max_ms: f64,
}

/// Spawns every request, waits until all of them stand at the start line, releases them at
/// once and collects the outcomes.
async fn storm(
    args: &Args,
    client: ClientWithMiddleware,
    url: String,
    probe: &AuthenticatedAt,
) -> Outcome {
    let (go, start_line) = watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let client = client.clone();
        let url = url.clone();
        let mut start_line = start_line.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            ready.fetch_add(1, Ordering::Relaxed);
            start_line
                .wait_for(|go| *go)
                .await
                .map_err(|e| e.to_string())?;
            let response = client.get(url).send().await.map_err(describe)?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| describe(e.into()))?;
            if status != reqwest::StatusCode::OK {
                return Err(format!("HTTP {status}"));
            }
            if body.is_empty() {
                return Err("empty body".to_owned());
            }
            Ok(())
        }));
    }
    while ready.load(Ordering::Relaxed) < args.requests {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = probe.release();
    let _ = go.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut ok = 0;
    let mut errors: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let result = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("task failed: {join}")),
            Err(_) => Err(format!("not done after {} s", args.timeout_secs)),
        };
        match result {
            Ok(()) => ok += 1,
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    errors.truncate(5);
    let (authenticated_median_ms, authenticated_max_ms) = probe.summary();
    Outcome {
        requests: args.requests,
        ok,
        errors,
        elapsed,
        authenticated_median_ms,
        authenticated_max_ms,
    }
}

/// An error with its sources, for the error summary.
fn describe(err: reqwest_middleware::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Counts the requests that entered the middleware chain; the authentication middleware after
/// it checks the token in the same poll, so once all have entered, all have checked.
struct AllIssued {
    needed: usize,
    entered: AtomicUsize,
    all: watch::Sender<bool>,
}

impl AllIssued {
    fn new(needed: usize) -> Arc<Self> {
        Arc::new(Self {
            needed,
            entered: AtomicUsize::new(0),
            all: watch::Sender::new(false),
        })
    }

    fn entered(&self) {
        if self.entered.fetch_add(1, Ordering::AcqRel) + 1 == self.needed {
            self.all.send_replace(true);
        }
    }

    /// Returns once every request was issued (or after a safety timeout).
    async fn wait(&self) {
        let mut all = self.all.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), all.wait_for(|a| *a)).await;
    }
}

/// The first middleware of both chains: marks the request as issued.
struct IssuedProbe(Arc<AllIssued>);

#[async_trait]
impl Middleware for IssuedProbe {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.entered();
        next.run(req, extensions).await
    }
}

/// Records, per request, when it got through authentication (ms since the release), so the
/// report can tell how long the requests waited for their token.
#[derive(Clone, Default)]
struct AuthenticatedAt {
    released: Arc<OnceLock<Instant>>,
    samples: Arc<Mutex<Vec<u64>>>,
}

impl AuthenticatedAt {
    fn release(&self) -> Instant {
        *self.released.get_or_init(Instant::now)
    }

    /// Median and maximum of the samples, in ms.
    fn summary(&self) -> (f64, f64) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.sort_unstable();
        let max = samples.last().copied().unwrap_or_default();
        (median_sorted(&samples) / 1e3, max as f64 / 1e3)
    }
}

#[async_trait]
impl Middleware for AuthenticatedAt {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if let Some(released) = self.released.get() {
            let micros = released.elapsed().as_micros() as u64;
            self.samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(micros);
        }
        next.run(req, extensions).await
    }
}

/// The tutorial's `let token`: the shared token variable.
#[derive(Clone)]
struct NaiveToken {
    access: String,
    refresh: String,
    expires_at: SystemTime,
}

/// The naive interceptor: check the shared token; if it is due, fetch a new one (no gate),
/// store it, use it.
struct NaiveBearer {
    token: Arc<RwLock<NaiveToken>>,
    skew: Duration,
    token_url: String,
    http: reqwest::Client,
    permits: Option<Arc<Semaphore>>,
    stores: Arc<AtomicU64>,
}

#[derive(Debug)]
struct NaiveError(String);

impl fmt::Display for NaiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for NaiveError {}

impl NaiveBearer {
    /// `acquireAccessToken()`: one token request with the refresh token this caller saw.
    async fn acquire(&self, refresh: &str) -> Result<NaiveToken, NaiveError> {
        let _permit = match &self.permits {
            Some(p) => Some(p.acquire().await.map_err(|e| NaiveError(e.to_string()))?),
            None => None,
        };
        let response = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ])
            .send()
            .await
            .map_err(|e| NaiveError(format!("token request: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| NaiveError(format!("token response: {e}")))?;
        if !status.is_success() {
            return Err(NaiveError(format!(
                "token endpoint answered {status} {}",
                body["error"].as_str().unwrap_or("?")
            )));
        }
        let access = body["access_token"]
            .as_str()
            .ok_or_else(|| NaiveError("no access_token".into()))?;
        let expires_in = body["expires_in"].as_u64().unwrap_or(3600);
        Ok(NaiveToken {
            access: access.to_owned(),
            refresh: body["refresh_token"].as_str().unwrap_or(refresh).to_owned(),
            expires_at: SystemTime::now() + Duration::from_secs(expires_in),
        })
    }
}

#[async_trait]
impl Middleware for NaiveBearer {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let seen = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        // `if (hasAccessTokenExpired(token)) token = await acquireAccessToken();`, with the same
        // skew Deckhand uses so that both sides consider the seed token due.
        let access = if SystemTime::now() + self.skew >= seen.expires_at {
            let fresh = self
                .acquire(&seen.refresh)
                .await
                .map_err(reqwest_middleware::Error::middleware)?;
            let access = fresh.access.clone();
            *self.token.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            self.stores.fetch_add(1, Ordering::Relaxed);
            access
        } else {
            seen.access
        };
        let value = http::HeaderValue::try_from(format!("Bearer {access}"))
            .map_err(reqwest_middleware::Error::middleware)?;
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        next.run(req, extensions).await
    }
}
