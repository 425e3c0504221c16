use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use http::HeaderValue;
use rand::Rng;

use crate::credentials::{Credentials, Secret};

use super::SinkError;
use super::endpoint::{Failed, Issued};
use super::metrics::Counters;
use super::store::{CredentialState, StoreBinding, StoreRefresh};
use super::{
    AuthError, AuthMetrics, Clock, FailureKind, Grant, KeysSink, KeysUpdate, PauseCause, Proactive,
    RefreshReason, Strategy, SystemClock, TokenEndpoint, TransientFailure,
};

/// How many refresh tokens this process remembers having rotated away from (to refuse keys
/// that would put one back).
const SPENT_REMEMBERED: usize = 64;

/// The `Authorization` header for one request and the credential generation it came from.
///
/// Pass the generation back to [`TokenManager::refresh_after_rejection`] when the API rejects
/// the token, so that concurrent rejections of the same token cause one refresh.
#[derive(Clone)]
pub struct Authorization {
    header: HeaderValue,
    generation: u64,
}

impl Authorization {
    /// The header value, `Bearer <token>`, marked sensitive.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The generation of the credential this token belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The header value, by value.
    pub fn into_header(self) -> HeaderValue {
        self.header
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("header", &"Bearer [redacted]")
            .field("generation", &self.generation)
            .finish()
    }
}

/// Keeps one credential's access token fresh: applies the [`Strategy`], runs the grant through
/// one single-flight gate, persists every rotation through a [`KeysSink`] before using it.
///
/// Cheap to clone; clones share the state. Create one per credential and share it between every
/// task and HTTP client using that credential.
///
/// # Guarantees
/// * Any number of concurrent callers that need a refresh cause **one** token request; the others
///   wait for it and reuse its outcome (success or failure). A caller re-checks the credential's
///   generation after taking the gate, so concurrent 401s on the same token refresh once.
/// * A refreshed token is used only after the sink acknowledged the [`KeysUpdate`]. If the sink
///   fails (an error, a timeout, a panic), the refreshed keys stay in memory and the next
///   caller persists them first; [`flush`](Self::flush) persists them at shutdown.
/// * A refresh token the provider sent is never dropped: a response whose access token is
///   unusable still has its refresh token merged and persisted (the caller gets
///   [`AuthError::MalformedTokenResponse`]). A `null` or mistyped field never overwrites a
///   stored token.
/// * Keys a component emits go through the same gate ([`apply_keys`](Self::apply_keys)):
///   merged over the newest keys, the next generation, persisted before use; keys that would
///   put back a refresh token this process already spent are refused.
/// * When a token request was sent and its answer lost, it is retried once with the same
///   refresh token; if the provider then refuses the grant, the error is
///   [`AuthError::RotationLost`], and there is no retry loop.
/// * Credential-wide pauses: after a `Retry-After` from the token endpoint, and for the
///   minimum refresh interval (1 s by default) after a token that arrived already expired, no
///   token request is sent; callers that need one wait up to a bound (5 s by default) or get
///   [`AuthError::RefreshPaused`] saying how long. A still-valid token is served meanwhile.
/// * Provider text in errors is cut short and has the credential's secrets replaced by
///   `[redacted]`.
/// * A refresh runs to completion even if the caller that started it is cancelled, so a rotated
///   refresh token is never dropped half-way.
/// * After the provider refuses the grant ([`AuthError::ReauthRequired`]) no more token requests
///   are sent; every caller gets that error until [`replace_credentials`](Self::replace_credentials).
/// * Under `BeforeExpiry`, a transient refresh failure while the current token is still valid is
///   logged and the current token is served; the refresh is tried again 5 s after the failed
///   one ended.
///
/// # Example
/// ```no_run
/// use deckhand_core::auth::{Grant, MemorySink, Strategy, TokenEndpoint, TokenManager};
/// use deckhand_core::credentials::Credentials;
/// use serde_json::json;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let credentials = Credentials::from_keys(json!({"oauth": {"refresh_token": "1//0g..."}}))?;
/// let endpoint = TokenEndpoint::new("https://login.example.com/oauth2/token", "client-id")?
///     .client_secret("client-secret")
///     .grant(Grant::RefreshToken);
/// let sink = MemorySink::new();
/// let manager = TokenManager::builder(credentials, endpoint, sink.clone())
///     .strategy(Strategy::default())
///     .build();
/// let client = manager.http_client("https://api.example.com")?;
/// let response = client.get("https://api.example.com/v1/me").send().await?;
/// println!("{} after {} refresh(es)", response.status(), manager.metrics().refreshes);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The epoch of the last finished refresh attempt: waiters watch it instead of queueing on
    /// the gate, so one refresh wakes them all at once.
    finished: tokio::sync::watch::Sender<u64>,
    endpoint: TokenEndpoint,
    strategy: Strategy,
    sink: Arc<dyn KeysSink>,
    clock: Arc<dyn Clock>,
    counters: Counters,
    stale_retry_interval: Duration,
    sink_timeout: Duration,
    min_refresh_interval: Duration,
    max_pause_wait: Duration,
    /// Set when the credential is shared through a credential store: refreshes go through it.
    store: Option<StoreBinding>,
}

/// A credential-wide "no token request before `until`".
#[derive(Clone, Copy, Debug)]
struct Pause {
    until: SystemTime,
    cause: PauseCause,
}

/// What a caller that needs a token request does about a pause.
enum PauseCheck {
    Clear,
    ServeCurrent(Arc<Current>),
    Wait(Duration),
    Refuse(AuthError),
}

struct State {
    current: Arc<Current>,
    /// Refreshed keys the sink has not acknowledged yet: never used, never dropped.
    pending: Option<KeysUpdate>,
    /// Number of finished refresh attempts; lets a waiter tell that the attempt it waited for
    /// failed.
    epoch: u64,
    /// The error of attempt `epoch`, if it failed.
    last_failure: Option<AuthError>,
    /// Set once the provider refused the grant.
    permanent: Option<AuthError>,
    /// No token request for this credential before then.
    paused: Option<Pause>,
    /// Refresh tokens this process rotated away from, newest last.
    spent: VecDeque<Secret>,
    /// A token request with the current refresh token was sent and its answer lost: the
    /// provider may already have rotated it.
    answer_lost: bool,
}

/// The credential in use and what is derived from it once per generation.
struct Current {
    credentials: Credentials,
    generation: u64,
    header: Option<HeaderValue>,
    expires_at: Option<SystemTime>,
    refresh_at: Option<SystemTime>,
}

impl Current {
    fn new(
        credentials: Credentials,
        generation: u64,
        strategy: &Strategy,
        min_refresh_interval: Duration,
    ) -> Self {
        let token = credentials.token();
        let header = token
            .and_then(|t| t.access_token())
            .and_then(|t| bearer_header(t).ok());
        // A token that arrives already expired (`expires_in: 0`) is used for the minimum
        // refresh interval instead of causing a token request on every call.
        let expires_at = token.and_then(|t| t.expires_at()).map(|at| {
            match token.and_then(|t| t.obtained_at()) {
                Some(obtained) => at.max(obtained + min_refresh_interval),
                None => at,
            }
        });
        let refresh_at = match strategy.proactive {
            Proactive::BeforeExpiry { skew } => expires_at
                .map(|at| at - early_margin(skew, token.and_then(|t| t.obtained_at()), at)),
            _ => None,
        };
        Self {
            credentials,
            generation,
            header,
            expires_at,
            refresh_at,
        }
    }

    /// Whether this token arrived (in this process) with less than `interval` to live.
    fn arrived_expiring(&self, interval: Duration) -> bool {
        let token = self.credentials.token();
        match (
            token.and_then(|t| t.obtained_at()),
            token.and_then(|t| t.expires_at()),
        ) {
            (Some(obtained), Some(expires)) => expires < obtained + interval,
            _ => false,
        }
    }

    fn is_valid_at(&self, now: SystemTime) -> bool {
        self.header.is_some() && self.expires_at.is_none_or(|at| now < at)
    }

    fn authorization(&self) -> Option<Authorization> {
        Some(Authorization {
            header: self.header.clone()?,
            generation: self.generation,
        })
    }
}

/// How long before `expires_at` a `BeforeExpiry` refresh is due: the skew plus up to 10 %
/// jitter, but at most half the token's lifetime, so a token living less than the skew is not
/// refreshed on every call.
fn early_margin(
    skew: Duration,
    obtained_at: Option<SystemTime>,
    expires_at: SystemTime,
) -> Duration {
    let jitter = skew.mul_f64(rand::rng().random_range(0.0..0.1));
    let margin = skew + jitter;
    match obtained_at.and_then(|o| expires_at.duration_since(o).ok()) {
        Some(lifetime) => margin.min(lifetime / 2),
        None => margin,
    }
}

fn bearer_header(token: &Secret) -> Result<HeaderValue, AuthError> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
        AuthError::MalformedTokenResponse {
            reason: "the access token has characters not allowed in an HTTP header".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds a [`TokenManager`].
pub struct TokenManagerBuilder {
    credentials: Credentials,
    endpoint: TokenEndpoint,
    sink: Arc<dyn KeysSink>,
    strategy: Strategy,
    clock: Arc<dyn Clock>,
    generation: u64,
    sink_timeout: Duration,
    min_refresh_interval: Duration,
    max_pause_wait: Duration,
    store: Option<StoreBinding>,
}

impl TokenManagerBuilder {
    /// Sets the refresh strategy (default: `BeforeExpiry { skew: 60 s }` with retry on 401).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the clock (tests use `ManualClock`, feature `testing`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the generation of the initial credentials (default 0), e.g. as last persisted.
    pub fn generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// Sets how long the sink may take to persist one update (default 60 s).
    pub fn sink_timeout(mut self, timeout: Duration) -> Self {
        self.sink_timeout = timeout;
        self
    }

    /// Sets the minimum refresh interval (default 1 s): a token that arrives already expired
    /// (or expiring sooner) is used that long, and no token request is sent meanwhile.
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Sets how long a caller that needs a token request waits while token requests are
    /// paused (`Retry-After`, minimum refresh interval) before it gets
    /// [`AuthError::RefreshPaused`] (default 5 s; zero never waits).
    pub fn max_wait_when_paused(mut self, wait: Duration) -> Self {
        self.max_pause_wait = wait;
        self
    }

    /// Shares the credential with other processes through `store`, as `account`: every
    /// refresh then takes the store's lease, and rotations (and a component's keys) are
    /// committed to the store, whose outbox publishes the `updateKeys`, instead of going to the
    /// keys sink. Set the initial [`generation`](Self::generation) to the stored one. See
    /// [`super::store`].
    pub fn store(
        mut self,
        store: Arc<dyn super::CredentialStore>,
        account: super::AccountId,
        holder: super::HolderId,
    ) -> Self {
        // Long enough to outlast one holder's whole lease (and take it over), bounded.
        let wait_bound = store.lease_duration() * 2 + Duration::from_secs(5);
        self.store = Some(StoreBinding {
            store,
            account,
            holder,
            wait_bound,
        });
        self
    }

    /// Builds the manager.
    pub fn build(self) -> TokenManager {
        let current = Current::new(
            self.credentials,
            self.generation,
            &self.strategy,
            self.min_refresh_interval,
        );
        TokenManager {
            inner: Arc::new(Inner {
                state: RwLock::new(State {
                    current: Arc::new(current),
                    pending: None,
                    epoch: 0,
                    last_failure: None,
                    permanent: None,
                    paused: None,
                    spent: VecDeque::new(),
                    answer_lost: false,
                }),
                gate: Arc::new(tokio::sync::Mutex::new(())),
                finished: tokio::sync::watch::Sender::new(0),
                endpoint: self.endpoint,
                strategy: self.strategy,
                sink: self.sink,
                clock: self.clock,
                counters: Counters::default(),
                stale_retry_interval: Duration::from_secs(5),
                sink_timeout: self.sink_timeout,
                min_refresh_interval: self.min_refresh_interval,
                max_pause_wait: self.max_pause_wait,
                store: self.store,
            }),
        }
    }
}

impl TokenManager {
    /// Starts building a manager for `credentials`, refreshed at `endpoint`, whose rotations
    /// are persisted through `sink`.
    pub fn builder(
        credentials: Credentials,
        endpoint: TokenEndpoint,
        sink: impl KeysSink,
    ) -> TokenManagerBuilder {
        TokenManagerBuilder {
            credentials,
            endpoint,
            sink: Arc::new(sink),
            strategy: Strategy::default(),
            clock: Arc::new(SystemClock),
            generation: 0,
            sink_timeout: Duration::from_secs(60),
            min_refresh_interval: Duration::from_secs(1),
            max_pause_wait: Duration::from_secs(5),
            store: None,
        }
    }

    /// The `Authorization` header for the next request, refreshing first if the strategy says
    /// so.
    pub async fn authorization(&self) -> Result<Authorization, AuthError> {
        let now = self.inner.clock.now();
        let (current, reason, epoch) = {
            let state = self.inner.read();
            if let Some(err) = &state.permanent {
                return Err(err.clone());
            }
            let reason = self.inner.refresh_reason(&state, now);
            (state.current.clone(), reason, state.epoch)
        };
        let current = match reason {
            None => current,
            Some(reason) => self.refresh(reason, current.generation, epoch).await?,
        };
        current
            .authorization()
            .ok_or_else(|| AuthError::MalformedTokenResponse {
                reason: "the refreshed credentials hold no usable access token".into(),
            })
    }

    /// The current access token, refreshing first if the strategy says so (for protocols that
    /// do not use an HTTP `Authorization` header).
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        self.authorization().await?;
        let state = self.inner.read();
        state
            .current
            .credentials
            .token()
            .and_then(|t| t.access_token())
            .cloned()
            .ok_or(AuthError::NoRefreshToken)
    }

    /// Called when the API rejected the token of generation `rejected`: refreshes unless another
    /// caller already did, and returns the authorization to retry with.
    pub async fn refresh_after_rejection(
        &self,
        rejected: u64,
        status: u16,
    ) -> Result<Authorization, AuthError> {
        let (current, epoch) = {
            let state = self.inner.read();
            if let Some(err) = &state.permanent {
                return Err(err.clone());
            }
            (state.current.clone(), state.epoch)
        };
        let current = if current.generation != rejected && current.header.is_some() {
            self.inner.counters.coalesced();
            current
        } else {
            self.refresh(RefreshReason::Rejected(status), rejected, epoch)
                .await?
        };
        current
            .authorization()
            .ok_or_else(|| AuthError::MalformedTokenResponse {
                reason: "the refreshed credentials hold no usable access token".into(),
            })
    }

    /// Refreshes now, whatever the strategy (single-flight like every other refresh).
    pub async fn force_refresh(&self) -> Result<Authorization, AuthError> {
        let (generation, epoch) = {
            let state = self.inner.read();
            (state.current.generation, state.epoch)
        };
        let current = self
            .refresh(RefreshReason::Forced, generation, epoch)
            .await?;
        current
            .authorization()
            .ok_or_else(|| AuthError::MalformedTokenResponse {
                reason: "the refreshed credentials hold no usable access token".into(),
            })
    }

    /// The credentials in use (the last persisted generation).
    pub fn credentials(&self) -> Credentials {
        self.inner.read().current.credentials.clone()
    }

    /// A string field of the current token set (e.g. Salesforce's `instance_url`), without
    /// cloning the credentials.
    pub fn token_extra_str(&self, field: &str) -> Option<String> {
        let state = self.inner.read();
        state
            .current
            .credentials
            .token()
            .and_then(|t| t.extra(field))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    /// The generation of the credentials in use.
    pub fn generation(&self) -> u64 {
        self.inner.read().current.generation
    }

    /// Replaces the credentials after the user re-authorized (keys the platform already
    /// stored). Clears a re-authorization failure and drops any unpersisted refresh; bumps the
    /// generation. Keys a component emits go through [`apply_keys`](Self::apply_keys)
    /// instead, which never drops a rotated token.
    pub async fn replace_credentials(&self, credentials: Credentials) {
        let gate = self.inner.gate.lock().await;
        let mut state = self.inner.write();
        let generation = state.current.generation + 1;
        state.current = Arc::new(Current::new(
            credentials,
            generation,
            &self.inner.strategy,
            self.inner.min_refresh_interval,
        ));
        state.pending = None;
        state.permanent = None;
        state.last_failure = None;
        state.paused = None;
        state.answer_lost = false;
        state.epoch += 1;
        drop(state);
        drop(gate);
        self.inner.wake_waiters();
    }

    /// Applies keys a component emitted itself (an `updateKeys` event) through the refresh
    /// gate: they are laid over the newest keys (a component's partial keys keep everything
    /// else, the rotated refresh token included), get the next generation and are persisted
    /// before anything uses them. Returns that generation.
    ///
    /// Keys holding a refresh token this process already rotated away from are refused with
    /// [`AuthError::SpentRefreshToken`] and change nothing. If the sink fails, the merged keys
    /// stay pending (never used, never dropped) and are persisted before the next use.
    pub async fn apply_keys(&self, keys: Credentials) -> Result<u64, AuthError> {
        let gate = self.inner.gate.clone().lock_owned().await;
        let inner = self.inner.clone();
        // In a task of its own, like a refresh, so a cancelled caller cannot abandon it
        // half-way.
        let applied = tokio::spawn(async move {
            let outcome = inner.apply_component_keys(keys).await;
            drop(gate);
            inner.wake_waiters();
            outcome
        })
        .await;
        applied.unwrap_or_else(|e| Err(self.inner.task_failed(e)))
    }

    /// Persists keys that are still pending (a refresh whose sink failed), e.g. before the
    /// process exits. Waits for a refresh in flight first (one started by a caller that was
    /// cancelled since still rotates the token, and its keys must be persisted too). Returns
    /// the generation persisted, or `None` when nothing was pending.
    pub async fn flush(&self) -> Result<Option<u64>, AuthError> {
        let gate = self.inner.gate.clone().lock_owned().await;
        let inner = self.inner.clone();
        let flushed = tokio::spawn(async move {
            let outcome = inner.flush_pending().await;
            drop(gate);
            inner.wake_waiters();
            outcome
        })
        .await;
        flushed.unwrap_or_else(|e| Err(self.inner.task_failed(e)))
    }

    /// The generation of keys refreshed but not persisted yet, if any.
    pub fn pending_generation(&self) -> Option<u64> {
        self.inner.read().pending.as_ref().map(|p| p.generation)
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy
    }

    /// The token endpoint.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.inner.endpoint
    }

    /// The counters so far.
    pub fn metrics(&self) -> AuthMetrics {
        self.inner.counters.snapshot()
    }

    /// Whether the credential is usable: [`Active`](CredentialState::Active) until the
    /// provider refuses it for good, then [`NeedsReauth`](CredentialState::NeedsReauth) or
    /// [`RotationLost`](CredentialState::RotationLost) until new keys are set.
    pub fn credential_state(&self) -> CredentialState {
        match self.inner.read().permanent.as_ref().map(AuthError::kind) {
            None => CredentialState::Active,
            Some(FailureKind::RotationLost) => CredentialState::RotationLost,
            Some(_) => CredentialState::NeedsReauth,
        }
    }

    async fn refresh(
        &self,
        reason: RefreshReason,
        seen_generation: u64,
        seen_epoch: u64,
    ) -> Result<Arc<Current>, AuthError> {
        // Subscribed before looking, so a refresh finishing in between is not missed.
        let mut finished = self.inner.finished.subscribe();
        let waiting_since = Instant::now();
        loop {
            if let Some(outcome) = self
                .inner
                .outcome_since(reason, seen_generation, seen_epoch)
            {
                return outcome;
            }
            match self.inner.check_pause(reason, waiting_since.elapsed()) {
                PauseCheck::Clear => {}
                PauseCheck::ServeCurrent(current) => {
                    self.inner.counters.stale_served();
                    return Ok(current);
                }
                PauseCheck::Wait(wait) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                PauseCheck::Refuse(err) => return Err(err),
            }
            match self.inner.gate.clone().try_lock_owned() {
                Ok(gate) => {
                    // The leader refreshes in a task of its own, so that a cancelled caller
                    // cannot abandon a refresh between the token response and its persistence.
                    let inner = self.inner.clone();
                    let led = tokio::spawn(async move {
                        let outcome = inner
                            .lead_refresh(reason, seen_generation, seen_epoch)
                            .await;
                        drop(gate);
                        inner.wake_waiters();
                        outcome
                    })
                    .await;
                    return led.unwrap_or_else(|e| Err(self.inner.task_failed(e)));
                }
                Err(_) => {
                    // Another caller is refreshing (or replacing the credentials): wait for it
                    // to finish, then look again.
                    let _ = finished.changed().await;
                }
            }
        }
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn refresh_reason(&self, state: &State, now: SystemTime) -> Option<RefreshReason> {
        let current = &state.current;
        let valid = current.is_valid_at(now);
        // While token requests are paused, a still-valid token is simply used.
        let serve_current = valid && state.paused.is_some_and(|p| now < p.until);
        if state.pending.is_some() {
            return (!serve_current).then_some(RefreshReason::PendingPersist);
        }
        if current.header.is_none() {
            return Some(RefreshReason::Initial);
        }
        match self.strategy.proactive {
            Proactive::PerCall => (!serve_current).then_some(RefreshReason::PerCall),
            Proactive::BeforeExpiry { .. } => (current.refresh_at.is_some_and(|at| now >= at)
                && !serve_current)
                .then_some(RefreshReason::Expiry),
            // Even when waiting for a 401, a token known to have expired is not worth sending.
            Proactive::Never => (!valid).then_some(RefreshReason::Expiry),
        }
    }

    /// Whether a caller about to send a token request for `reason` may, after having waited
    /// `waited` already.
    fn check_pause(&self, reason: RefreshReason, waited: Duration) -> PauseCheck {
        let now = self.clock.now();
        let state = self.read();
        // Persisting pending keys sends no token request.
        if state.pending.is_some() {
            return PauseCheck::Clear;
        }
        let Some(pause) = state.paused.filter(|p| now < p.until) else {
            return PauseCheck::Clear;
        };
        let remaining = pause.until.duration_since(now).unwrap_or_default();
        if matches!(reason, RefreshReason::Expiry | RefreshReason::PerCall)
            && state.current.is_valid_at(now)
        {
            return PauseCheck::ServeCurrent(state.current.clone());
        }
        if waited + remaining <= self.max_pause_wait {
            PauseCheck::Wait(remaining)
        } else {
            PauseCheck::Refuse(AuthError::RefreshPaused {
                retry_in: remaining,
                cause: pause.cause,
            })
        }
    }

    /// Wakes every caller waiting for the gate. Called after the gate is released: a caller
    /// that looked at the state between an attempt's end and the release found nothing new
    /// and the gate still taken, and would otherwise wait for the next attempt.
    fn wake_waiters(&self) {
        let epoch = self.read().epoch;
        self.finished.send_replace(epoch);
    }

    /// Records that a refresh task died (a panic outside the sink): the attempt counts as
    /// failed, so its waiters are released instead of stranded.
    fn task_failed(&self, err: tokio::task::JoinError) -> AuthError {
        let error = AuthError::Config(format!("the refresh task failed: {err}"));
        self.counters.failed(error.kind());
        let mut state = self.write();
        state.epoch += 1;
        state.last_failure = Some(error.clone());
        self.finished.send_replace(state.epoch);
        error
    }

    /// What a caller that saw `seen_generation` at `seen_epoch` gets without refreshing: the
    /// newer credentials, or the failure of the refresh it would have waited for.
    fn outcome_since(
        &self,
        reason: RefreshReason,
        seen_generation: u64,
        seen_epoch: u64,
    ) -> Option<Result<Arc<Current>, AuthError>> {
        let state = self.read();
        if let Some(err) = &state.permanent {
            return Some(Err(err.clone()));
        }
        if state.pending.is_none() && state.current.generation != seen_generation {
            self.counters.coalesced();
            return Some(Ok(state.current.clone()));
        }
        if state.epoch != seen_epoch
            && let Some(err) = &state.last_failure
        {
            self.counters.coalesced();
            if reason == RefreshReason::Expiry
                && err.is_transient()
                && state.current.is_valid_at(self.clock.now())
            {
                self.counters.stale_served();
                return Some(Ok(state.current.clone()));
            }
            return Some(Err(err.clone()));
        }
        None
    }

    /// Runs one refresh; the caller holds the gate.
    async fn lead_refresh(
        &self,
        reason: RefreshReason,
        seen_generation: u64,
        seen_epoch: u64,
    ) -> Result<Arc<Current>, AuthError> {
        // Between the caller's look and taking the gate, a refresh may have finished.
        if let Some(outcome) = self.outcome_since(reason, seen_generation, seen_epoch) {
            return outcome;
        }
        let (current, pending) = {
            let state = self.read();
            (state.current.clone(), state.pending.clone())
        };
        let started = Instant::now();
        let (outcome, token_requests) = match (&self.store, pending) {
            (Some(store), pending) => {
                self.refresh_through_store(store, &current, pending, reason)
                    .await
            }
            (None, Some(update)) => (self.persist(update).await, 0),
            (None, None) => self.rotate(&current, reason).await,
        };
        self.finish(reason, &current, outcome, started, token_requests)
    }

    /// Records the outcome of a refresh attempt: wakes the waiters, sets or lifts the
    /// credential-wide pause, logs, counts.
    fn finish(
        &self,
        reason: RefreshReason,
        current: &Arc<Current>,
        outcome: Result<Arc<Current>, AuthError>,
        started: Instant,
        token_requests: u32,
    ) -> Result<Arc<Current>, AuthError> {
        let duration_ms = started.elapsed().as_millis() as u64;
        // Measured when the attempt ended: a refresh that retried for longer than the pause
        // must still leave one.
        let now = self.clock.now();
        let mut state = self.write();
        state.epoch += 1;
        self.finished.send_replace(state.epoch);
        match outcome {
            Ok(fresh) => {
                self.counters.attempt_ended(reason, None);
                state.last_failure = None;
                state.paused = fresh
                    .arrived_expiring(self.min_refresh_interval)
                    .then(|| Pause {
                        until: now + self.min_refresh_interval,
                        cause: PauseCause::MinRefreshInterval,
                    });
                drop(state);
                tracing::info!(
                    target: "deckhand_core::auth",
                    %reason,
                    generation = fresh.generation,
                    duration_ms,
                    token_requests,
                    outcome = "refreshed",
                    "access token refreshed"
                );
                Ok(fresh)
            }
            Err(err) => {
                self.counters.failed(err.kind());
                self.counters.attempt_ended(reason, Some(err.kind()));
                state.last_failure = Some(err.clone());
                if err.is_reauth_required() {
                    state.permanent = Some(err.clone());
                }
                let serve_stale = reason == RefreshReason::Expiry
                    && err.is_transient()
                    && current.is_valid_at(now);
                state.paused = match retry_after(&err) {
                    Some(wait) => Some(Pause {
                        until: now + wait,
                        cause: PauseCause::RetryAfter,
                    }),
                    None if serve_stale => Some(Pause {
                        until: now + self.stale_retry_interval,
                        cause: PauseCause::AfterFailure,
                    }),
                    None => None,
                };
                drop(state);
                let what = if serve_stale {
                    "early token refresh failed; the current token is still valid and stays in use"
                } else {
                    "token refresh failed"
                };
                tracing::warn!(
                    target: "deckhand_core::auth",
                    %reason,
                    generation = current.generation,
                    duration_ms,
                    token_requests,
                    outcome = %err.kind(),
                    error = %err,
                    "{what}"
                );
                if serve_stale {
                    self.counters.stale_served();
                    return Ok(current.clone());
                }
                Err(err)
            }
        }
    }

    /// The refresh path, in one place: one grant at the token endpoint with the current
    /// refresh token, the answer merged over the current keys, the merged keys kept pending
    /// (never dropped) and persisted before use. A shared credential store hooks in here.
    async fn rotate(
        &self,
        current: &Current,
        reason: RefreshReason,
    ) -> (Result<Arc<Current>, AuthError>, u32) {
        let old = current.credentials.token();
        let refresh_token = old.and_then(|t| t.refresh_token());
        let counters = &self.counters;
        let issued = self
            .endpoint
            .request(refresh_token, self.clock.as_ref(), &|| {
                counters.token_request()
            })
            .await;
        let (token, attempts, unusable) = match issued {
            Ok(Issued {
                token,
                attempts,
                unusable,
            }) => (token, attempts, unusable),
            Err(Failed {
                error,
                attempts,
                response_lost,
            }) => {
                let lost = {
                    let mut state = self.write();
                    state.answer_lost |= response_lost;
                    state.answer_lost
                };
                let error = match error {
                    // The refresh token was refused after an answer went missing: the
                    // provider rotated it, and its successor is gone.
                    AuthError::ReauthRequired { status, code, .. }
                        if lost && self.endpoint.grant_kind() == Grant::RefreshToken =>
                    {
                        AuthError::RotationLost {
                            generation: current.generation,
                            status,
                            code,
                        }
                    }
                    other => other,
                };
                return (Err(self.scrubbed(error, current)), attempts);
            }
        };
        let (token, unusable) = match (unusable, token.access_token().map(bearer_header)) {
            (None, Some(Err(AuthError::MalformedTokenResponse { reason }))) => {
                (token.without_access_token(), Some(reason))
            }
            (unusable, _) => (token, unusable),
        };
        let merged = match old {
            Some(old) => old.merged_with(token),
            None => token,
        };
        // An unusable answer still replaced the access token: the old one is not kept as if
        // it were the new one.
        let merged = if unusable.is_some() {
            merged.without_access_token()
        } else {
            merged
        };
        let update = KeysUpdate {
            credentials: current.credentials.with_token(merged.clone()),
            generation: current.generation + 1,
            reason,
        };
        // In memory before the sink is even asked: whatever happens next, the rotated refresh
        // token is not lost.
        {
            let mut state = self.write();
            state.answer_lost = false;
            if let Some(old_refresh) = refresh_token
                && merged.refresh_token().map(Secret::expose) != Some(old_refresh.expose())
            {
                if state.spent.len() >= SPENT_REMEMBERED {
                    state.spent.pop_front();
                }
                state.spent.push_back(old_refresh.clone());
            }
            state.pending = Some(update.clone());
        }
        let persisted = self.persist(update).await;
        let outcome = match unusable {
            None => persisted,
            Some(reason) => persisted.and(Err(AuthError::MalformedTokenResponse { reason })),
        };
        (outcome, attempts)
    }

    /// Persists the pending keys, if any; the caller holds the gate.
    async fn flush_pending(&self) -> Result<Option<u64>, AuthError> {
        let (current, pending) = {
            let state = self.read();
            (state.current.clone(), state.pending.clone())
        };
        let Some(update) = pending else {
            return Ok(None);
        };
        let started = Instant::now();
        let outcome = match &self.store {
            Some(store) => {
                let reason = RefreshReason::PendingPersist;
                (self
                    .refresh_through_store(store, &current, Some(update), reason)
                    .await)
                    .0
            }
            None => self.persist(update).await,
        };
        self.finish(RefreshReason::PendingPersist, &current, outcome, started, 0)
            .map(|fresh| Some(fresh.generation))
    }

    /// Applies a component's keys; the caller holds the gate.
    async fn apply_component_keys(&self, keys: Credentials) -> Result<u64, AuthError> {
        let (current, base, base_generation) = {
            let state = self.read();
            let (base, generation) = match &state.pending {
                Some(p) => (p.credentials.clone(), p.generation),
                None => (state.current.credentials.clone(), state.current.generation),
            };
            if let Some(refresh) = keys.token().and_then(|t| t.refresh_token())
                && state.spent.iter().any(|s| s.expose() == refresh.expose())
            {
                return Err(AuthError::SpentRefreshToken { generation });
            }
            (state.current.clone(), base, generation)
        };
        let update = KeysUpdate {
            credentials: base.overlaid_with(&keys),
            generation: base_generation + 1,
            reason: RefreshReason::Component,
        };
        let generation = update.generation;
        self.write().pending = Some(update.clone());
        let outcome = match &self.store {
            // Committed with the same compare-and-set as a refresh: keys built on a generation
            // another worker has moved past are refused, not laid over its rotation.
            Some(store) => match self
                .refresh_through_store(store, &current, Some(update), RefreshReason::Component)
                .await
                .0
            {
                Ok(fresh) if fresh.generation == generation => Ok(fresh),
                Ok(fresh) => Err(AuthError::SpentRefreshToken {
                    generation: fresh.generation,
                }),
                Err(e) => Err(e),
            },
            None => self.persist(update).await,
        };
        let mut state = self.write();
        state.epoch += 1;
        self.finished.send_replace(state.epoch);
        drop(state);
        self.counters.attempt_ended(
            RefreshReason::Component,
            outcome.as_ref().err().map(AuthError::kind),
        );
        match outcome {
            Ok(_) => {
                tracing::info!(
                    target: "deckhand_core::auth",
                    generation,
                    "keys emitted by the component persisted"
                );
                Ok(generation)
            }
            Err(err) => {
                self.counters.failed(err.kind());
                tracing::warn!(
                    target: "deckhand_core::auth",
                    generation,
                    previous_generation = current.generation,
                    error = %err,
                    "keys emitted by the component not persisted yet; kept for the next attempt"
                );
                Err(err)
            }
        }
    }

    /// `err` with the credential's secrets removed from any provider text.
    fn scrubbed(&self, err: AuthError, current: &Current) -> AuthError {
        let token = current.credentials.token();
        let secrets: Vec<&str> = [
            token.and_then(|t| t.access_token()),
            token.and_then(|t| t.refresh_token()),
            token.and_then(|t| t.id_token()),
            self.endpoint.client_secret_value(),
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect();
        err.scrubbed(&secrets)
    }

    /// The refresh when the credential lives in a store: the store's lease, re-read and fenced
    /// commit replace the token request and the sink (the store's outbox publishes the update).
    /// `pending` keys (whose commit failed earlier) are committed first.
    async fn refresh_through_store(
        &self,
        store: &StoreBinding,
        current: &Current,
        pending: Option<KeysUpdate>,
        reason: RefreshReason,
    ) -> (Result<Arc<Current>, AuthError>, u32) {
        let (outcome, token_requests) = match pending {
            Some(update) => (store.commit_unpersisted(update).await, 0),
            None => {
                let clock = self.clock.as_ref();
                store
                    .refresh(
                        &self.endpoint,
                        clock,
                        &self.counters,
                        current.generation,
                        reason,
                    )
                    .await
            }
        };
        let (credentials, generation) = match outcome {
            Ok(StoreRefresh::Adopted(stored)) => (stored.credentials, stored.generation),
            Ok(StoreRefresh::Committed(update)) => {
                self.counters.refreshed();
                (update.credentials, update.generation)
            }
            Ok(StoreRefresh::Unpersisted { update, error }) => {
                // Never used, never dropped: the next caller commits it first.
                self.write().pending = Some(update);
                return (Err(error), token_requests);
            }
            Err(error) => return (Err(self.scrubbed(error, current)), token_requests),
        };
        let fresh = Arc::new(Current::new(
            credentials,
            generation,
            &self.strategy,
            self.min_refresh_interval,
        ));
        let mut state = self.write();
        // The refresh token this process held is spent now (a component may not put it back).
        if let Some(old) = current.credentials.token().and_then(|t| t.refresh_token())
            && fresh
                .credentials
                .token()
                .and_then(|t| t.refresh_token())
                .map(Secret::expose)
                != Some(old.expose())
        {
            if state.spent.len() >= SPENT_REMEMBERED {
                state.spent.pop_front();
            }
            state.spent.push_back(old.clone());
        }
        state.current = fresh.clone();
        state.pending = None;
        (Ok(fresh), token_requests)
    }

    async fn persist(&self, update: KeysUpdate) -> Result<Arc<Current>, AuthError> {
        let generation = update.generation;
        // A panicking sink is a failed sink: the keys stay pending and every waiter is told.
        let attempt = AssertUnwindSafe(self.sink.persist(&update)).catch_unwind();
        let failure = match tokio::time::timeout(self.sink_timeout, attempt).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(_panic)) => Some(SinkError::Panicked),
            Err(_) => Some(SinkError::TimedOut(self.sink_timeout)),
        };
        if let Some(error) = failure {
            return Err(AuthError::KeysNotPersisted {
                generation,
                reason: error.to_string(),
            });
        }
        let fresh = Arc::new(Current::new(
            update.credentials,
            generation,
            &self.strategy,
            self.min_refresh_interval,
        ));
        let mut state = self.write();
        state.current = fresh.clone();
        // Keys pending since (a component's update during this persist) stay pending.
        if state
            .pending
            .as_ref()
            .is_some_and(|p| p.generation <= generation)
        {
            state.pending = None;
        }
        self.counters.refreshed();
        Ok(fresh)
    }
}

/// The `Retry-After` of a token endpoint failure, if it had one.
fn retry_after(err: &AuthError) -> Option<Duration> {
    match err {
        AuthError::TokenEndpointUnavailable {
            last: TransientFailure::Status { retry_after, .. },
            ..
        } => *retry_after,
        _ => None,
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.read();
        f.debug_struct("TokenManager")
            .field("generation", &state.current.generation)
            .field("credentials", &state.current.credentials)
            .field("strategy", &self.inner.strategy)
            .field("endpoint", &self.inner.endpoint)
            .field("pending", &state.pending.as_ref().map(|p| p.generation))
            .field("paused", &state.paused)
            .field("permanent_failure", &state.permanent)
            .finish()
    }
}
