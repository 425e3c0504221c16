//! The AMQP worker: a connector's `run` command.
//!
//! Start-up: settings from the environment ([`RuntimeConfig`]), the step (function, config,
//! snapshot) from the platform API or `DECKHAND_STEP_FILE`, AMQP connections, the `init` hook.
//! Then every delivery of `ELASTICIO_LISTEN_MESSAGES_ON` (up to the prefetch count at once) is
//! decrypted, run through the connector's [`Session`], and each event published with a broker
//! confirm; the delivery is acked after all of them were confirmed, or rejected (no requeue)
//! when an error was emitted. A message that cannot be decrypted or parsed produces an error
//! event with the reason and is rejected; the worker keeps going.
//!
//! Rotated credentials are published as `updateKeys` (encrypted like data, persistent, routing
//! key `ELASTICIO_UPDATE_KEYS_ROUTING_KEY`, headers `accountId`, `stepId`, `generation`) and
//! confirmed **before** the new token is used; the worker's in-memory credentials are replaced,
//! so the next message uses them. `DECKHAND_UPDATE_KEYS=api` switches to the official
//! behaviour, `PUT {API_URI}/v1/accounts/{id}` with `{"keys": …}`; `both` does both.
//!
//! SIGTERM/SIGINT stop consuming, wait for in-flight messages (at most
//! `DECKHAND_SHUTDOWN_TIMEOUT_SECS`, default 30), persist rotated keys still pending because
//! the sink failed earlier (within what is left of that timeout, at least 1 s), close the
//! connections and exit 0. If the pending keys cannot be persisted, the worker logs an error
//! naming the credential (`_account`) and the generation, never a token, and exits 1.
//! [`run_worker`] listens for them from before start-up: a signal while the step is loaded,
//! the broker connected or `init` run ends start-up, and the worker exits 0 without consuming.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapin::BasicProperties;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::amqp::{Publisher, Settlement, Transport, TransportOptions};
use super::config::{LaunchConfig, RuntimeConfig, StepSource, UpdateKeysMode};
use super::dedup::{Admission, Deduplicator, Ticket};
use super::metrics::{Observer, WorkerMetrics};
use super::protocol::{
    ErrorInfo, Incoming, Message, Outgoing, OutgoingContext, PublicationKind, StepFlags,
    startup_error_publication,
};
use deckhand_component::ComponentDescriptor;
use deckhand_connector::{Connector, EmitError, Emitter, ErrorKind, Event, Session, StepConfig};
use deckhand_core::auth::{KeysSink, KeysUpdate, SinkError};
use deckhand_core::credentials::Credentials;
use deckhand_core::retry::Failure;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the command ran and found a failure (invalid descriptor, not verified, error
/// event).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: usage or I/O error.
pub const EXIT_USAGE: u8 = 2;

/// The step definition, as `GET /v1/tasks/{flow}/steps/{step}` returns it (or the step file).
///
/// `Debug` names the configuration fields and flow variables but shows no values: the
/// configuration holds the credential's keys.
#[derive(Clone, Default, serde::Deserialize)]
pub struct StepData {
    /// The function (the `ELASTICIO_FUNCTION` variable wins when both are set).
    #[serde(default)]
    pub function: Option<String>,
    /// Field values merged with the credential's keys and `_account`.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The step's snapshot.
    #[serde(default)]
    pub snapshot: Value,
    /// Whether outgoing messages carry passthrough.
    #[serde(default)]
    pub is_passthrough: bool,
    /// Flow variables.
    #[serde(default)]
    pub variables: Value,
}

impl std::fmt::Debug for StepData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepData")
            .field("function", &self.function)
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .field("snapshot", &self.snapshot)
            .field("is_passthrough", &self.is_passthrough)
            .field(
                "variables",
                &self
                    .variables
                    .as_object()
                    .map(|o| o.keys().collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .finish()
    }
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The step could not be loaded.
    #[error("loading the step: {0}")]
    Step(#[from] StepError),
    /// `DECKHAND_UPDATE_KEYS` asks for the platform API, which this step cannot reach.
    #[error(
        "DECKHAND_UPDATE_KEYS={mode} needs ELASTICIO_API_URI and an `_account` in the step config"
    )]
    UpdateKeysNeedsApi {
        /// The configured mode (`api` or `both`).
        mode: UpdateKeysMode,
    },
    /// The step's credentials are not valid keys.
    #[error("the step's credentials: {0}")]
    Credentials(#[from] deckhand_core::credentials::CredentialsError),
    /// AMQP could not be reached.
    #[error("{0}")]
    Transport(#[from] super::amqp::TransportError),
    /// The connector could not be set up.
    #[error("{0}")]
    Connector(#[from] deckhand_connector::ConnectorError),
    /// `DECKHAND_STORE_URL` is set but the step names no account.
    #[error("the credential store: DECKHAND_STORE_URL needs an `_account` in the step config")]
    StoreNeedsAccount,
    /// The credential store (`DECKHAND_STORE_URL`) could not be used.
    #[error("the credential store: {0}")]
    Store(#[from] deckhand_core::auth::store::StoreError),
    /// The metrics endpoint (`DECKHAND_METRICS_ADDR`) could not be served.
    #[error("{0}")]
    Metrics(#[from] super::metrics::ServeError),
}

/// Why the step definition could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The step file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The step file is not a step definition.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The step file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// The platform API did not give the step.
    #[error(transparent)]
    Api(#[from] PlatformApiError),
}

/// A platform API request that failed, after Sailor's retries where they apply. Never
/// carries the URL's credentials nor the API key.
#[derive(Debug, thiserror::Error)]
pub enum PlatformApiError {
    /// The HTTP client could not be built.
    #[error("the platform API client: {0}")]
    Client(reqwest::Error),
    /// The API answered with a status that is not a success.
    #[error("{request}: HTTP {status}")]
    Status {
        /// Method and URL, e.g. `GET https://api.example/v1/tasks/…`.
        request: String,
        /// The answer's status.
        status: reqwest::StatusCode,
    },
    /// The request failed (connection, timeout) or its answer could not be read.
    #[error("{request}: {source}")]
    Request {
        /// Method and URL.
        request: String,
        /// The failure, without the URL.
        source: reqwest::Error,
    },
}

/// Loads the step from the platform API (with Sailor's retries) or the step file.
pub(crate) async fn load_step(
    source: &StepSource,
    cfg: &RuntimeConfig,
) -> Result<StepData, StepError> {
    match source {
        StepSource::File(path) => {
            let text = tokio::fs::read(path)
                .await
                .map_err(|source| StepError::Read {
                    path: path.clone(),
                    source,
                })?;
            serde_json::from_slice(&text).map_err(|source| StepError::Parse {
                path: path.clone(),
                source,
            })
        }
        StepSource::Api { uri, username, key } => {
            let url = format!(
                "{}/v1/tasks/{}/steps/{}",
                uri.as_str().trim_end_matches('/'),
                cfg.identity.flow_id,
                cfg.identity.step_id
            );
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(PlatformApiError::Client)?;
            let request = format!("GET {url}");
            let response = platform_request(cfg.api_retry, &request, || {
                client
                    .get(&url)
                    .basic_auth(username, Some(key.expose()))
                    .header("Connection", "Keep-Alive")
            })
            .await?;
            let step = response
                .json()
                .await
                .map_err(|e| PlatformApiError::Request {
                    request,
                    source: e.without_url(),
                })?;
            Ok(step)
        }
    }
}

/// Sends a platform API request with Sailor's retries: a failed request or a 5xx answer is
/// sent again after the configured pause; a success is returned, any other answer is an error.
async fn platform_request(
    retry: super::config::ApiRetry,
    what: &str,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, PlatformApiError> {
    deckhand_core::retry::run(&retry.policy(), |_| async {
        match request().send().await {
            Ok(resp) if resp.status().is_success() => Ok(resp),
            Ok(resp) => {
                let error = PlatformApiError::Status {
                    request: what.to_owned(),
                    status: resp.status(),
                };
                Err(if resp.status().is_server_error() {
                    Failure::transient(error)
                } else {
                    Failure::permanent(error)
                })
            }
            Err(e) => Err(Failure::transient(PlatformApiError::Request {
                request: what.to_owned(),
                source: e.without_url(),
            })),
        }
    })
    .await
}

/// Splits a step's merged config into fields and the credential (with its token under the
/// descriptor's OAuth field).
pub(crate) fn step_config(
    step: &StepData,
    descriptor: &ComponentDescriptor,
) -> Result<StepConfig, StartError> {
    let fields = descriptor.credential_fields();
    let mut config =
        StepConfig::from_merged_config(step.config.clone(), &fields, step.snapshot.clone())?;
    if let (Some(field), Some(creds)) = (descriptor.oauth_field(), &config.credentials) {
        config.credentials = Some(Credentials::with_token_field(creds.to_keys(), field)?);
    }
    if config.snapshot.is_null() {
        config.snapshot = Value::Object(Map::new());
    }
    Ok(config)
}

/// The lineage of one `updateKeys` event, so the platform can fence it: the fingerprint of the
/// refresh token the keys replaced and of the one they hold (see
/// [`refresh_token_fingerprint`](deckhand_store::refresh_token_fingerprint); never a token), and
/// the worker that published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// Fingerprint of the refresh token the new keys replaced.
    pub parent_fingerprint: Option<String>,
    /// Fingerprint of the refresh token in the new keys.
    pub refresh_fingerprint: Option<String>,
    /// Who published it (`host:pid:random`).
    pub worker: String,
}

/// Remembers the fingerprint of the last keys a sink persisted (at first: the step's keys), so
/// each update names the stored keys it descends from. Updates pass the refresh gate one at a
/// time, so the remembered parent is the one the platform holds.
struct LineageTracker {
    last: std::sync::Mutex<Option<String>>,
    worker: String,
}

impl LineageTracker {
    fn new() -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            worker: deckhand_core::auth::HolderId::for_this_process().to_string(),
        }
    }

    fn start_from(&self, credentials: Option<&Credentials>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            credentials.and_then(deckhand_store::refresh_token_fingerprint);
    }

    fn lineage_of(&self, update: &KeysUpdate) -> Lineage {
        Lineage {
            parent_fingerprint: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            refresh_fingerprint: deckhand_store::refresh_token_fingerprint(&update.credentials),
            worker: self.worker.clone(),
        }
    }

    fn persisted(&self, lineage: &Lineage) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = lineage.refresh_fingerprint.clone();
    }
}

/// Publishes rotated keys as an `updateKeys` message and waits for the broker's confirm.
///
/// Each message carries its [`Lineage`] in the headers `parentFingerprint`,
/// `refreshFingerprint` and `worker`; consumers that do not know them ignore them.
pub struct AmqpKeysSink {
    cfg: Arc<RuntimeConfig>,
    publisher: Publisher,
    flags: StepFlags,
    lineage: LineageTracker,
}

impl AmqpKeysSink {
    /// A sink publishing through `publisher` for the step described by `cfg` and `flags`.
    pub fn new(cfg: Arc<RuntimeConfig>, publisher: Publisher, flags: StepFlags) -> Self {
        Self {
            cfg,
            publisher,
            flags,
            lineage: LineageTracker::new(),
        }
    }

    /// The keys the platform holds before the first update (the step's keys): the first
    /// update names them as its parent.
    pub fn starting_from(self, credentials: Option<&Credentials>) -> Self {
        self.lineage.start_from(credentials);
        self
    }

    /// Publishes `update` with the given lineage and waits for the confirm.
    pub async fn publish(&self, update: &KeysUpdate, lineage: &Lineage) -> Result<(), SinkError> {
        use super::protocol::{header, js_string};
        // Not tied to one input message: a refresh serves every message in flight.
        let ctx = OutgoingContext::new(
            self.cfg.clone(),
            Incoming::new(BasicProperties::default(), Vec::new()),
            &Message::new(Value::Object(Map::new())),
            self.flags.clone(),
        );
        let mut publications = ctx
            .publications(Outgoing::UpdateKeys {
                keys: update.keys(),
                generation: update.generation,
            })
            .map_err(|e| SinkError::Publish(e.to_string()))?;
        for publication in &mut publications {
            let headers = &mut publication.headers;
            for (name, value) in [
                (header::PARENT_FINGERPRINT, &lineage.parent_fingerprint),
                (header::REFRESH_FINGERPRINT, &lineage.refresh_fingerprint),
            ] {
                if let Some(value) = value {
                    headers.insert(name.into(), js_string(value.clone()));
                }
            }
            headers.insert(header::WORKER.into(), js_string(lineage.worker.clone()));
            self.publisher
                .publish(publication)
                .await
                .map_err(|e| SinkError::Publish(e.to_string()))?;
        }
        tracing::info!(
            generation = update.generation,
            reason = %update.reason,
            "updateKeys published and confirmed"
        );
        Ok(())
    }
}

#[async_trait]
impl KeysSink for AmqpKeysSink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        let lineage = self.lineage.lineage_of(update);
        self.publish(update, &lineage).await?;
        self.lineage.persisted(&lineage);
        Ok(())
    }
}

/// HTTP header of `PUT /v1/accounts/{id}` with [`Lineage::parent_fingerprint`].
pub const LINEAGE_HTTP_PARENT: &str = "x-deckhand-parent-fingerprint";
/// HTTP header of `PUT /v1/accounts/{id}` with [`Lineage::refresh_fingerprint`].
pub const LINEAGE_HTTP_REFRESH: &str = "x-deckhand-refresh-fingerprint";
/// HTTP header of `PUT /v1/accounts/{id}` with [`Lineage::worker`].
pub const LINEAGE_HTTP_WORKER: &str = "x-deckhand-worker";
/// HTTP header of `PUT /v1/accounts/{id}` with the worker's generation of the keys.
pub const LINEAGE_HTTP_GENERATION: &str = "x-deckhand-generation";

/// The official runtime's way: `PUT {API_URI}/v1/accounts/{id}` with `{"keys": …}`.
pub struct ApiKeysSink {
    url: String,
    username: String,
    key: deckhand_core::credentials::Secret,
    http: reqwest::Client,
    retry: super::config::ApiRetry,
    lineage: LineageTracker,
}

impl ApiKeysSink {
    /// A sink for the account `account_id` on the platform API of `source`, if it is one.
    pub fn new(
        source: &StepSource,
        account_id: &str,
        retry: super::config::ApiRetry,
    ) -> Option<Self> {
        let StepSource::Api { uri, username, key } = source else {
            return None;
        };
        Some(Self {
            url: format!(
                "{}/v1/accounts/{account_id}",
                uri.as_str().trim_end_matches('/')
            ),
            username: username.clone(),
            key: key.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .ok()?,
            retry,
            lineage: LineageTracker::new(),
        })
    }

    /// As [`AmqpKeysSink::starting_from`].
    pub fn starting_from(self, credentials: Option<&Credentials>) -> Self {
        self.lineage.start_from(credentials);
        self
    }
}

#[async_trait]
impl KeysSink for ApiKeysSink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        let body = serde_json::json!({ "keys": update.keys() });
        let lineage = self.lineage.lineage_of(update);
        let generation = update.generation.to_string();
        platform_request(self.retry, &format!("PUT {}", self.url), || {
            // The lineage rides in headers the official platform ignores (see `Lineage`).
            let mut request = self
                .http
                .put(&self.url)
                .basic_auth(&self.username, Some(self.key.expose()))
                .header(LINEAGE_HTTP_WORKER, &lineage.worker)
                .header(LINEAGE_HTTP_GENERATION, &generation);
            for (name, value) in [
                (LINEAGE_HTTP_PARENT, &lineage.parent_fingerprint),
                (LINEAGE_HTTP_REFRESH, &lineage.refresh_fingerprint),
            ] {
                if let Some(value) = value {
                    request = request.header(name, value);
                }
            }
            request.json(&body)
        })
        .await
        .map(drop)
        .map_err(|e| SinkError::Api(e.to_string()))?;
        self.lineage.persisted(&lineage);
        Ok(())
    }
}

/// Both sinks, AMQP first.
struct BothSinks(AmqpKeysSink, ApiKeysSink);

#[async_trait]
impl KeysSink for BothSinks {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        self.0.persist(update).await?;
        self.1.persist(update).await
    }
}

/// Publishes one input's events, each confirmed by the broker before `emit` returns.
struct AmqpEmitter {
    ctx: OutgoingContext,
    publisher: Publisher,
    errors_published: AtomicUsize,
    publish_failed: AtomicBool,
    metrics: Option<Arc<WorkerMetrics>>,
    /// Emit failures already published as error events (`EmitError` texts): when the
    /// component returns such an error, the failure is not reported a second time.
    reported_failures: std::sync::Mutex<Vec<String>>,
}

impl AmqpEmitter {
    fn new(
        ctx: OutgoingContext,
        publisher: Publisher,
        metrics: Option<Arc<WorkerMetrics>>,
    ) -> Self {
        Self {
            ctx,
            publisher,
            errors_published: AtomicUsize::new(0),
            publish_failed: AtomicBool::new(false),
            metrics,
            reported_failures: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn reported_failures(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.reported_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    async fn publish(&self, event: Outgoing) -> Result<(), String> {
        let (publications, failure) = match self.ctx.publications(event) {
            Ok(p) => (p, None),
            // As in Sailor, an event that cannot be published (too large, no reply_to) becomes
            // an error event; the component still learns that its emit failed.
            Err(protocol) => {
                let error = ErrorInfo::from_error(&protocol);
                let p = self
                    .ctx
                    .publications(Outgoing::Error(error))
                    .map_err(|e| e.to_string())?;
                (p, Some(protocol.to_string()))
            }
        };
        for publication in &publications {
            if let Err(e) = self.publisher.publish(publication).await {
                self.publish_failed.store(true, Ordering::SeqCst);
                return Err(e.to_string());
            }
            if let Some(metrics) = &self.metrics {
                metrics.emitted(publication.kind);
            }
            if publication.kind == PublicationKind::Error {
                self.errors_published.fetch_add(1, Ordering::SeqCst);
            }
        }
        match failure {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Emitter for AmqpEmitter {
    async fn emit(&self, event: Event) -> Result<(), EmitError> {
        let name = event.name();
        let outgoing = match event {
            Event::Data(message) => Outgoing::Data(*message),
            // The component passed on the error its failed emit returned, which was already
            // published as an error event: one failure, one error event.
            Event::Error(error)
                if error.name == ErrorKind::EmitError.name()
                    && self.reported_failures().contains(&error.message) =>
            {
                return Ok(());
            }
            Event::Error(error) => Outgoing::Error(error),
            Event::Snapshot(snapshot) => Outgoing::Snapshot(snapshot),
            Event::Rebound { reason } => Outgoing::Rebound { reason },
            Event::HttpReply(reply) => Outgoing::HttpReply(reply),
            // Keys go through the session's keys sink; the end is the settlement.
            Event::UpdateKeys(_) | Event::End => return Ok(()),
        };
        let protocol_failure = !matches!(outgoing, Outgoing::Error(_));
        self.publish(outgoing).await.map_err(|reason| {
            let error = EmitError {
                event: name,
                reason,
            };
            if protocol_failure && !self.publish_failed.load(Ordering::SeqCst) {
                self.reported_failures().push(error.to_string());
            }
            error
        })
    }
}

/// Runs a connector as an AMQP worker configured by the `ELASTICIO_*` environment; returns the
/// process exit status (0 after a graceful shutdown, 1 when start-up failed, 2 for invalid
/// settings).
pub async fn run_worker<C: Connector>(connector: Arc<C>, component_json: &str) -> u8 {
    let launch = match LaunchConfig::from_env() {
        Ok(launch) => launch,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let descriptor = match ComponentDescriptor::from_json(component_json) {
        Ok(descriptor) => descriptor,
        Err(e) => {
            eprintln!("error: the connector's component.json is not a valid descriptor: {e}");
            return EXIT_USAGE;
        }
    };
    match launch {
        LaunchConfig::ShutdownHook(cfg) => shutdown_hook(connector, &cfg).await,
        LaunchConfig::Worker(cfg) => {
            // Listening before start-up, which can take long (step API retries, broker
            // reconnects): a SIGTERM then (a scale-down, a redeploy) would otherwise find the
            // default action and kill the process with nothing logged.
            let mut stop = Box::pin(shutdown_signals());
            let cfg = Arc::new(*cfg);
            let root = root_span(&cfg);
            async move {
                let started = tokio::select! {
                    biased;
                    () = &mut stop => {
                        // Nothing consumed yet, so nothing to finish or lose.
                        tracing::info!("shutting down during start-up; no message was consumed");
                        return EXIT_OK;
                    }
                    started = Worker::start(connector, cfg, &descriptor) => started,
                };
                match started {
                    Ok(worker) => worker.run_until(stop).await,
                    Err(e) => {
                        tracing::error!(error = %e, "the worker could not start");
                        EXIT_FAILURE
                    }
                }
            }
            .instrument(root)
            .await
        }
    }
}

fn root_span(cfg: &RuntimeConfig) -> tracing::Span {
    let id = &cfg.identity;
    tracing::info_span!(
        "sailor",
        ELASTICIO_FLOW_ID = %id.flow_id,
        ELASTICIO_STEP_ID = %id.step_id,
        ELASTICIO_EXEC_ID = %id.exec_id,
        ELASTICIO_COMP_ID = %id.comp_id,
        ELASTICIO_FUNCTION = %id.function,
        ELASTICIO_CONTAINER_ID = %id.container_id,
        ELASTICIO_WORKSPACE_ID = %id.workspace_id,
        ELASTICIO_USER_ID = %id.user_id,
        tag = %id.flow_id,
    )
}

async fn shutdown_hook<C: Connector>(
    connector: Arc<C>,
    cfg: &super::config::ShutdownHookConfig,
) -> u8 {
    // Sailor runs `shutdown(cfg, startupState)` and ignores its errors (60 s limit).
    let step = match &cfg.step_source {
        StepSource::File(path) => tokio::fs::read(path)
            .await
            .ok()
            .and_then(|t| serde_json::from_slice::<StepData>(&t).ok())
            .unwrap_or_default(),
        StepSource::Api { .. } => StepData::default(),
    };
    let config = Value::Object(step.config);
    let state = Value::Object(Map::new());
    match tokio::time::timeout(Duration::from_secs(60), connector.shutdown(&config, &state)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the shutdown hook failed"),
        Err(_) => tracing::warn!("the shutdown hook did not finish within 60 s"),
    }
    EXIT_OK
}

/// A started worker: step loaded, connections open, `init` run.
pub struct Worker<C: Connector> {
    cfg: Arc<RuntimeConfig>,
    transport: Transport,
    session: Arc<Session<C>>,
    flags: StepFlags,
    /// The credential store's outbox relay, and how to stop it.
    relay: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    /// Metrics and health endpoints (`DECKHAND_METRICS_ADDR`), served until the worker stops.
    observer: Option<Observer>,
}

impl<C: Connector> Worker<C> {
    /// Loads the step, connects, builds the session and runs the `init` hook.
    pub async fn start(
        connector: Arc<C>,
        cfg: Arc<RuntimeConfig>,
        descriptor: &ComponentDescriptor,
    ) -> Result<Self, StartError> {
        let options = TransportOptions::from_config(&cfg);
        Self::start_with(connector, cfg, descriptor, options).await
    }

    /// As [`start`](Self::start), with explicit transport options (e.g. a connection name).
    pub async fn start_with(
        connector: Arc<C>,
        cfg: Arc<RuntimeConfig>,
        descriptor: &ComponentDescriptor,
        options: TransportOptions,
    ) -> Result<Self, StartError> {
        for notice in &cfg.notices {
            tracing::warn!(variable = %notice.var, "{}", notice.reason);
        }
        // Served from the start: `/healthz` answers and `/readyz` says "not ready" while the
        // step loads and the broker is reached.
        let observer = Observer::start(&cfg).await?;
        let step = load_step(&cfg.step_source, &cfg).await?;
        let flags = StepFlags {
            is_passthrough: step.is_passthrough,
            account_id: step
                .config
                .get("_account")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let step_config = step_config(&step, descriptor)?;
        let transport = Transport::connect(options).await?;
        if let Some(observer) = &observer {
            observer.attach_transport(transport.stats());
        }
        let amqp_sink = AmqpKeysSink::new(cfg.clone(), transport.publisher(), flags.clone())
            .starting_from(step_config.credentials.as_ref());
        let api_sink = flags.account_id.as_deref().and_then(|account| {
            ApiKeysSink::new(&cfg.step_source, account, cfg.api_retry)
                .map(|sink| sink.starting_from(step_config.credentials.as_ref()))
        });
        let sink: Arc<dyn KeysSink> = match (cfg.update_keys, api_sink) {
            (UpdateKeysMode::Amqp, _) => Arc::new(amqp_sink),
            (UpdateKeysMode::Api, Some(api)) => Arc::new(api),
            (UpdateKeysMode::Both, Some(api)) => Arc::new(BothSinks(amqp_sink, api)),
            (mode @ (UpdateKeysMode::Api | UpdateKeysMode::Both), None) => {
                return Err(StartError::UpdateKeysNeedsApi { mode });
            }
        };
        let sink = match &observer {
            Some(observer) => observer.counting(sink),
            None => sink,
        };
        let (step_config, shared, relay) = match &cfg.credential_store {
            Some(settings) => {
                let relay_sink =
                    AmqpKeysSink::new(cfg.clone(), transport.publisher(), flags.clone());
                attach_store(settings, &flags, step_config, relay_sink).await?
            }
            None => (step_config, None, None),
        };
        let session = Arc::new(Session::with_shared_credential(
            connector,
            step_config,
            sink,
            shared,
        )?);
        if let Some(observer) = &observer {
            observer.attach_session(session.clone());
        }
        let worker = Self {
            cfg,
            transport,
            session,
            flags,
            relay,
            observer,
        };
        if let Err(e) = worker
            .session
            .connector()
            .init(&worker.session.config())
            .await
        {
            worker.report_startup_error(&e).await;
            return Err(e.into());
        }
        if worker.cfg.startup_required
            && let Err(e) = worker
                .session
                .connector()
                .startup(&worker.session.config())
                .await
        {
            worker.report_startup_error(&e).await;
            return Err(e.into());
        }
        Ok(worker)
    }

    async fn report_startup_error(&self, error: &deckhand_connector::ConnectorError) {
        let publication = startup_error_publication(&self.cfg, &ErrorInfo::from(error));
        if let Err(e) = self.transport.publisher().publish(&publication).await {
            tracing::error!(error = %e, "could not publish the start-up error");
        }
    }

    /// The session (credentials, snapshot) of this worker.
    pub fn session(&self) -> &Session<C> {
        &self.session
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (with the port the system chose
    /// for a configured port 0), or `None` when `DECKHAND_METRICS_ADDR` is unset.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.observer.as_ref().map(Observer::addr)
    }

    /// Consumes until SIGTERM/SIGINT, then drains in-flight messages and closes.
    pub async fn run(self) -> u8 {
        // Registered before the first message is consumed, so no signal finds the default
        // handler (which would kill the process with messages in flight).
        let signals = shutdown_signals();
        self.run_until(signals).await
    }

    /// Consumes until `shutdown` completes, then drains in-flight messages and closes.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> u8 {
        let queue = self.cfg.amqp.listen_messages_on.clone();
        let mut consumer = match self.transport.consume(&queue).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume");
                return EXIT_FAILURE;
            }
        };
        let stop = consumer.stop_handle();
        let metrics = self.observer.as_ref().map(|observer| {
            observer.attach_readiness(consumer.readiness());
            observer.worker()
        });
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new messages; finishing those in flight");
            stop.stop();
        });
        let dedup = Arc::new(Deduplicator::default());
        let mut in_flight = JoinSet::new();
        let mut first = true;
        while let Some(delivery) = consumer.next().await {
            if first {
                first = false;
                tracing::info!("first message consumed");
            }
            if let Some(metrics) = &metrics {
                metrics.received();
            }
            match dedup.admit(delivery).await {
                Admission::Process(ticket) => {
                    let job = Job {
                        cfg: self.cfg.clone(),
                        session: self.session.clone(),
                        publisher: self.transport.publisher(),
                        flags: self.flags.clone(),
                        dedup: dedup.clone(),
                        metrics: metrics.clone(),
                    };
                    // A child of the worker's span (the function is on it), entered on
                    // every poll of the job: the only span a message's processing enters.
                    let span = tracing::info_span!(
                        "message",
                        messageId = ticket.delivery().incoming.message_id().unwrap_or_default(),
                    );
                    in_flight.spawn(job.run(ticket, span.clone()).instrument(span));
                }
                other => {
                    if let Some(metrics) = &metrics {
                        metrics.deduplicated();
                    }
                    tracing::debug!(admission = ?other, "duplicate delivery not run again")
                }
            }
            while in_flight.try_join_next().is_some() {}
        }
        let grace = self.cfg.shutdown_timeout;
        let shutdown_started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(grace, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "messages still in flight after the shutdown timeout; the broker will redeliver them"
            );
            in_flight.abort_all();
        }
        // Settled deliveries remembered for deduplication hold channel handles; dropping them
        // before the channels close keeps lapin from closing a channel twice.
        drop(in_flight);
        drop(dedup);
        // Rotated keys the sink could not persist live only in memory: persist them before the
        // connections close (within what is left of the shutdown timeout, at least 1 s).
        let flush_budget = grace
            .saturating_sub(shutdown_started.elapsed())
            .max(Duration::from_secs(1));
        let flushed = self.flush_keys(flush_budget).await;
        // Closed explicitly (unsettled deliveries go back to the queue): left to the drop of its
        // last handle, the channel's close would race the connection's, and lapin would log an
        // ERROR on every graceful stop.
        consumer.close().await;
        if let Some((relay, stop)) = self.relay {
            // One last pass publishes what the drained messages rotated.
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(10), relay)
                .await
                .is_err()
            {
                tracing::warn!(
                    "the credential store's outbox relay did not stop within 10 s; the next worker publishes what is left"
                );
            }
        }
        self.transport.close().await;
        tracing::info!("worker stopped");
        if flushed { EXIT_OK } else { EXIT_FAILURE }
    }

    /// Persists pending rotated keys; `false` when they could not be (see
    /// [`Session::flush_keys_before_exit`]).
    async fn flush_keys(&self, budget: Duration) -> bool {
        let credential = self
            .flags
            .account_id
            .as_deref()
            .unwrap_or("(step credential)");
        self.session
            .flush_keys_before_exit(credential, budget)
            .await
    }
}

type Relay = (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
);

/// Keeps the step's credential in the credential store: seeds it from the step the first time,
/// loads it from the store after that, and relays the store's outbox as `updateKeys` through
/// the worker's publisher (with confirms).
async fn attach_store(
    settings: &super::config::CredentialStoreSettings,
    flags: &StepFlags,
    mut step: StepConfig,
    relay_sink: AmqpKeysSink,
) -> Result<
    (
        StepConfig,
        Option<deckhand_connector::SharedCredential>,
        Option<Relay>,
    ),
    StartError,
> {
    use deckhand_core::auth::{AccountId, CredentialStore};
    use deckhand_store::{OutboxEntry, PgCredentialStore};

    let Some(credentials) = step.credentials.clone() else {
        return Ok((step, None, None));
    };
    let account = flags
        .account_id
        .as_deref()
        .ok_or(StartError::StoreNeedsAccount)?;
    let account = AccountId::new(account)?;
    let store = PgCredentialStore::connect(
        settings.url.expose(),
        settings.keys.clone(),
        settings.options(),
    )
    .await?;
    let stored = store.seed(&account, &credentials, 0).await?;
    tracing::info!(
        account = %account,
        generation = stored.generation,
        state = stored.state.as_str(),
        "credential loaded from the credential store"
    );
    step.credentials = Some(stored.credentials);
    let shared = deckhand_connector::SharedCredential {
        store: Arc::new(store.clone()),
        account: account.clone(),
        generation: stored.generation,
    };
    let sink = Arc::new(relay_sink);
    let publish: Arc<
        dyn Fn(OutboxEntry) -> futures_util::future::BoxFuture<'static, Result<(), String>>
            + Send
            + Sync,
    > = Arc::new(move |entry: OutboxEntry| {
        let sink = sink.clone();
        Box::pin(async move {
            let lineage = Lineage {
                parent_fingerprint: entry.parent_fingerprint.clone(),
                refresh_fingerprint: entry.refresh_fingerprint.clone(),
                worker: entry.holder.clone(),
            };
            sink.publish(&entry.update, &lineage)
                .await
                .map_err(|e| e.to_string())
        })
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        store
            .run_relay(
                Some(account.clone()),
                Duration::from_secs(1),
                publish.clone(),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        if let Err(e) = store.relay_outbox(Some(&account), publish.as_ref()).await {
            tracing::warn!(error = %e, "the last outbox relay pass failed; the next worker publishes what is left");
        }
    });
    Ok((step, Some(shared), Some((task, stop))))
}

fn shutdown_signals() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot listen for SIGTERM; only Ctrl-C stops the worker");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Processing of one delivery.
struct Job<C: Connector> {
    cfg: Arc<RuntimeConfig>,
    session: Arc<Session<C>>,
    publisher: Publisher,
    flags: StepFlags,
    dedup: Arc<Deduplicator>,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl<C: Connector> Job<C> {
    /// Runs inside `span`, the message's span (entered by the caller).
    async fn run(self, mut ticket: Ticket, span: tracing::Span) {
        let incoming = ticket.take_incoming();
        if ticket.delivery().redelivered {
            tracing::info!(
                delivery_count = ticket.delivery().delivery_count,
                "processing a redelivered message"
            );
        }
        let processing = self.metrics.as_ref().map(WorkerMetrics::start);
        let (outcome, confirmed) = self.process(incoming, span).await;
        if let Some(processing) = processing {
            processing.finish(outcome);
        }
        let settled = if confirmed {
            self.dedup.finish(ticket, outcome).await
        } else {
            self.dedup.finish_unconfirmed(ticket, outcome).await
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "could not settle the delivery; the broker will redeliver it");
        }
    }

    /// The outcome, and whether every publish of the processing was confirmed.
    async fn process(&self, incoming: Incoming, span: tracing::Span) -> (Settlement, bool) {
        let decoded = incoming.decode(&self.cfg.cipher, self.cfg.input_format);
        let (message, decode_error) = match decoded {
            Ok(message) => (message, None),
            Err(e) => (Message::new(Value::Object(Map::new())), Some(e)),
        };
        let emitter = Arc::new(AmqpEmitter::new(
            OutgoingContext::new(self.cfg.clone(), incoming, &message, self.flags.clone()),
            self.publisher.clone(),
            self.metrics.clone(),
        ));
        if let Some(e) = decode_error {
            tracing::warn!(error = %e, "input message rejected");
            let error = ErrorInfo {
                name: "InvalidMessage".into(),
                message: e.to_string(),
                stack: format!("InvalidMessage: {e}"),
            };
            if let Err(e) = emitter.publish(Outgoing::Error(error)).await {
                tracing::error!(error = %e, "could not publish the error event");
                return (Settlement::Reject, false);
            }
            return (Settlement::Reject, true);
        }
        let outcome = self
            .session
            .process_in(span, &self.cfg.identity.function, message, emitter.clone())
            .await;
        if emitter.publish_failed.load(Ordering::SeqCst) {
            tracing::error!("a publish failed after its retries; rejecting the input message");
            return (Settlement::Reject, false);
        }
        if outcome.errors > 0 || emitter.errors_published.load(Ordering::SeqCst) > 0 {
            (Settlement::Reject, true)
        } else {
            (Settlement::Ack, true)
        }
    }
}
