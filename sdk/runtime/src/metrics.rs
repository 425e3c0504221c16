//! Metrics and health endpoints of the AMQP worker, for Prometheus and an orchestrator.
//!
//! Off unless `DECKHAND_METRICS_ADDR` names an address (e.g. `127.0.0.1:9464`, see
//! [`METRICS_ADDR_VAR`](crate::config::METRICS_ADDR_VAR)); then, from the start of the worker
//! (before the step is loaded and the broker connected), it serves over HTTP:
//!
//! * `GET /metrics`: the metrics below in the OpenMetrics text format (Prometheus scrapes it);
//! * `GET /healthz`: `200 ok` while the process runs (liveness);
//! * `GET /readyz`: `200 ready` only while the worker is connected to the broker and consuming
//!   its queue; `503 not ready` while it starts, connects, reconnects, re-subscribes or drains
//!   on shutdown (readiness).
//!
//! Every metric carries the labels `step` (`ELASTICIO_STEP_ID`) and `function`
//! (`ELASTICIO_FUNCTION`). None carries a secret: no token, key, password, URI or message
//! content is ever a label or a value. The credential metrics appear once the step has a
//! credential that refreshes tokens (OAuth2).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `deckhand_messages_received_total` | counter | | deliveries taken off the queue, redeliveries included |
//! | `deckhand_messages_deduplicated_total` | counter | | redeliveries of a message already processed or in flight, settled without running again |
//! | `deckhand_messages_emitted_total` | counter | `kind` (`data`, `error`, `error_reply`, `rebound`, `snapshot`, `http_reply`) | events published and confirmed by the broker |
//! | `deckhand_messages_failed_total` | counter | | input messages rejected: an error was emitted, the input could not be decrypted, or a publish failed after its retries |
//! | `deckhand_messages_rebounded_total` | counter | | rebounds published (the input comes back later) |
//! | `deckhand_message_processing_seconds` | histogram | | time from the start of processing to the last confirm |
//! | `deckhand_messages_in_flight` | gauge | | messages being processed now (at most the prefetch) |
//! | `deckhand_token_refreshes_total` | counter | `reason` (`initial`, `per_call`, `expiry`, `rejected`, `pending_persist`, `forced`, `component`), `outcome` (`refreshed` or a failure kind: `reauth_required`, `rotation_lost`, `transient`, `paused`, `spent_refresh_token`, `config`, `malformed`, `sink`, `rejected`) | refresh attempts this worker led (and keys its component emitted), by why and how they ended |
//! | `deckhand_token_requests_total` | counter | | HTTP requests to the token endpoint, retries included |
//! | `deckhand_token_coalesced_waiters_total` | counter | | callers that needed a refresh and shared another caller's |
//! | `deckhand_token_stale_served_total` | counter | | times a still-valid token stayed in use because its early refresh failed transiently |
//! | `deckhand_update_keys_persisted_total` | counter | | rotated keys persisted (`updateKeys` confirmed, or put to the platform API); with a credential store (`DECKHAND_STORE_URL`) rotations are committed to the store and relayed by its outbox instead, and are counted by `deckhand_token_refreshes_total` |
//! | `deckhand_update_keys_failed_total` | counter | | attempts to persist rotated keys that failed (the keys stay pending and are retried) |
//! | `deckhand_update_keys_pending` | gauge | | 1 while rotated keys wait to be persisted (they are not used until then) |
//! | `deckhand_credential_state` | gauge | `state` (`active`, `needs_reauth`, `rotation_lost`) | 1 for the credential's state, 0 for the others |
//! | `deckhand_amqp_reconnects_total` | counter | `connection` (`read`, `write`) | broker connections reopened after being lost |
//! | `deckhand_amqp_publish_retries_total` | counter | | publish attempts that failed (nack, closed channel, confirm timeout) and were retried |
//! | `deckhand_amqp_publish_failures_total` | counter | | publishes that failed after every attempt |
//! | `deckhand_ready` | gauge | | 1 when `/readyz` answers 200 |
//!
//! Example alerts (Prometheus rules):
//!
//! ```yaml
//! - alert: DeckhandCredentialNeedsReauth      # a person must authorize the account again
//!   expr: deckhand_credential_state{state!="active"} == 1
//! - alert: DeckhandWorkerNotReady             # not consuming for 5 minutes
//!   expr: deckhand_ready == 0
//!   for: 5m
//! - alert: DeckhandRotatedKeysNotPersisted    # a rotated refresh token lives only in memory
//!   expr: deckhand_update_keys_pending == 1
//!   for: 10m
//! - alert: DeckhandMessagesFailing
//!   expr: rate(deckhand_messages_failed_total[5m]) > 0.1 * rate(deckhand_messages_received_total[5m])
//! ```
//!
//! Cost: with metrics off the worker keeps no metric at all (one `None` check per message and
//! event). With metrics on, the per-message work is a few relaxed atomic increments and one
//! histogram observation on handles resolved at start-up: no label is built per message. The
//! credential and broker figures are counted anyway by `deckhand-core` ([`TokenManager`]'s
//! [`AuthMetrics`]) and the transport ([`TransportStats`]), and read only when scraped.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::amqp::{Readiness, Settlement, TransportStats};
use crate::config::RuntimeConfig;
use crate::protocol::PublicationKind;
use deckhand_core::auth::store::CredentialState;
#[cfg(doc)]
use deckhand_core::auth::{AuthMetrics, TokenManager};
use deckhand_core::auth::{KeysSink, KeysUpdate, SinkError};

/// Buckets of the processing-time histogram, in seconds: 5 ms to 1 min.
const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The event kinds of `deckhand_messages_emitted_total`, in [`kind_index`] order (`updateKeys`
/// go through the keys sink and are counted there).
const EMITTED_KINDS: [&str; 6] = [
    "data",
    "error",
    "error_reply",
    "rebound",
    "snapshot",
    "http_reply",
];

fn kind_index(kind: PublicationKind) -> Option<usize> {
    match kind {
        PublicationKind::Data => Some(0),
        PublicationKind::Error => Some(1),
        PublicationKind::ErrorReply => Some(2),
        PublicationKind::Rebound => Some(3),
        PublicationKind::Snapshot => Some(4),
        PublicationKind::HttpReply => Some(5),
        PublicationKind::UpdateKeys => None,
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr} (DECKHAND_METRICS_ADDR): {source}")]
pub struct ServeError {
    /// The configured address.
    pub addr: SocketAddr,
    /// Why binding failed (e.g. the port is taken).
    pub source: std::io::Error,
}

/// The per-message metrics, resolved once: the worker's hot path only increments them.
pub(crate) struct WorkerMetrics {
    received: Counter,
    deduplicated: Counter,
    emitted: [Counter; EMITTED_KINDS.len()],
    failed: Counter,
    rebounded: Counter,
    duration: Histogram,
    in_flight: Gauge,
    keys_persisted: Counter,
    keys_failed: Counter,
}

impl WorkerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let emitted_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        let emitted =
            EMITTED_KINDS.map(|kind| emitted_family.get_or_create_owned(&[("kind", kind)]));
        let metrics = Self {
            received: Counter::default(),
            deduplicated: Counter::default(),
            emitted,
            failed: Counter::default(),
            rebounded: Counter::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            in_flight: Gauge::default(),
            keys_persisted: Counter::default(),
            keys_failed: Counter::default(),
        };
        for (name, help, counter) in [
            (
                "messages_received",
                "Deliveries taken off the queue, redeliveries included",
                &metrics.received,
            ),
            (
                "messages_deduplicated",
                "Redeliveries of a message already processed or in flight, not run again",
                &metrics.deduplicated,
            ),
            (
                "messages_failed",
                "Input messages rejected (error emitted, undecryptable, or publish failed)",
                &metrics.failed,
            ),
            (
                "messages_rebounded",
                "Rebounds published",
                &metrics.rebounded,
            ),
            (
                "update_keys_persisted",
                "Rotated keys persisted",
                &metrics.keys_persisted,
            ),
            (
                "update_keys_failed",
                "Attempts to persist rotated keys that failed",
                &metrics.keys_failed,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "messages_emitted",
            "Events published and confirmed by the broker, by kind",
            emitted_family,
        );
        registry.register(
            "message_processing_seconds",
            "Time from the start of processing a message to its last confirm",
            metrics.duration.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages being processed now",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// A delivery came off the queue.
    pub(crate) fn received(&self) {
        self.received.inc();
    }

    /// A redelivery was not run again.
    pub(crate) fn deduplicated(&self) {
        self.deduplicated.inc();
    }

    /// An event of `kind` was published and confirmed.
    pub(crate) fn emitted(&self, kind: PublicationKind) {
        if let Some(i) = kind_index(kind) {
            self.emitted[i].inc();
        }
        if kind == PublicationKind::Rebound {
            self.rebounded.inc();
        }
    }

    /// Processing of one message starts; the guard counts it in flight until dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Processing {
        self.in_flight.inc();
        Processing {
            metrics: self.clone(),
            started: Instant::now(),
        }
    }
}

/// One message in flight ([`WorkerMetrics::start`]).
pub(crate) struct Processing {
    metrics: Arc<WorkerMetrics>,
    started: Instant,
}

impl Processing {
    /// Processing ended with `outcome`.
    pub(crate) fn finish(self, outcome: Settlement) {
        self.metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        if outcome == Settlement::Reject {
            self.metrics.failed.inc();
        }
    }
}

impl Drop for Processing {
    fn drop(&mut self) {
        // Also when the task is aborted at the end of a shutdown.
        self.metrics.in_flight.dec();
    }
}

/// What the credential looks like now, read at scrape time.
struct AuthView {
    metrics: deckhand_core::auth::AuthMetrics,
    state: CredentialState,
    pending: bool,
}

type AuthSource = Box<dyn Fn() -> Option<AuthView> + Send + Sync>;

/// Sources known only later in start-up, read at scrape time.
#[derive(Default)]
struct Late {
    transport: OnceLock<Arc<TransportStats>>,
    auth: OnceLock<AuthSource>,
    readiness: OnceLock<Readiness>,
}

impl Late {
    fn is_ready(&self) -> bool {
        self.readiness.get().is_some_and(Readiness::is_ready)
    }
}

impl std::fmt::Debug for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Late").finish_non_exhaustive()
    }
}

/// Reads the counters kept elsewhere (core's token manager, the transport) at scrape time.
#[derive(Debug)]
struct ScrapeCollector(Arc<Late>);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let late = &self.0;
        gauge(
            &mut encoder,
            "ready",
            "1 when connected to the broker and consuming.",
            i64::from(late.is_ready()),
        )?;
        if let Some(stats) = late.transport.get() {
            let mut family = encoder.encode_descriptor(
                "amqp_reconnects",
                "Broker connections reopened after being lost.",
                None,
                MetricType::Counter,
            )?;
            for (connection, n) in [
                ("read", stats.reconnects_read()),
                ("write", stats.reconnects_write()),
            ] {
                ConstCounter::new(n)
                    .encode(family.encode_family(&[("connection", connection)])?)?;
            }
            counter(
                &mut encoder,
                "amqp_publish_retries",
                "Publish attempts that failed and were retried.",
                stats.publish_retries(),
            )?;
            counter(
                &mut encoder,
                "amqp_publish_failures",
                "Publishes that failed after every attempt.",
                stats.publish_failures(),
            )?;
        }
        let Some(view) = late.auth.get().and_then(|source| source()) else {
            return Ok(());
        };
        let m = &view.metrics;
        let mut family = encoder.encode_descriptor(
            "token_refreshes",
            "Token refresh attempts by reason and outcome.",
            None,
            MetricType::Counter,
        )?;
        for (reason, outcome, n) in m.attempts.iter() {
            ConstCounter::new(n)
                .encode(family.encode_family(&[("reason", reason), ("outcome", outcome)])?)?;
        }
        counter(
            &mut encoder,
            "token_requests",
            "HTTP requests to the token endpoint, retries included.",
            m.token_requests,
        )?;
        counter(
            &mut encoder,
            "token_coalesced_waiters",
            "Callers that needed a refresh and shared another caller's.",
            m.coalesced_waiters,
        )?;
        counter(
            &mut encoder,
            "token_stale_served",
            "Times a still-valid token stayed in use after its early refresh failed.",
            m.stale_served,
        )?;
        gauge(
            &mut encoder,
            "update_keys_pending",
            "1 while rotated keys wait to be persisted.",
            i64::from(view.pending),
        )?;
        let mut family = encoder.encode_descriptor(
            "credential_state",
            "1 for the credential's state, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for state in [
            CredentialState::Active,
            CredentialState::NeedsReauth,
            CredentialState::RotationLost,
        ] {
            ConstGauge::new(i64::from(view.state == state))
                .encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        Ok(())
    }
}

/// Counts what the worker's keys sink persisted and failed to.
struct CountingSink {
    inner: Arc<dyn KeysSink>,
    metrics: Arc<WorkerMetrics>,
}

#[async_trait]
impl KeysSink for CountingSink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        let outcome = self.inner.persist(update).await;
        match outcome {
            Ok(()) => self.metrics.keys_persisted.inc(),
            Err(_) => self.metrics.keys_failed.inc(),
        };
        outcome
    }
}

/// The registry and what `/readyz` reads.
struct Exposition {
    registry: Registry,
    late: Arc<Late>,
}

/// The metrics of a running worker and the server that exposes them; dropping it stops the
/// server.
pub(crate) struct Observer {
    worker: Arc<WorkerMetrics>,
    late: Arc<Late>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Starts serving on `cfg.metrics_addr`, or `None` when metrics are off.
    pub(crate) async fn start(cfg: &RuntimeConfig) -> Result<Option<Self>, ServeError> {
        let Some(addr) = cfg.metrics_addr else {
            return Ok(None);
        };
        let labels = [
            ("step", cfg.identity.step_id.clone()),
            ("function", cfg.identity.function.clone()),
        ]
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)));
        let mut registry = Registry::with_prefix_and_labels("deckhand", labels.into_iter());
        let worker = Arc::new(WorkerMetrics::register(&mut registry));
        let late = Arc::new(Late::default());
        registry.register_collector(Box::new(ScrapeCollector(late.clone())));
        let exposition = Arc::new(Exposition {
            registry,
            late: late.clone(),
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServeError { addr, source })?;
        let app = Router::new()
            .route("/metrics", get(scrape))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(exposition);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
        Ok(Some(Self {
            worker,
            late,
            addr: bound,
            server,
        }))
    }

    /// The address served (the port the system chose when the configured one was 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The per-message metrics.
    pub(crate) fn worker(&self) -> Arc<WorkerMetrics> {
        self.worker.clone()
    }

    /// Exposes the transport's reconnects and publish retries.
    pub(crate) fn attach_transport(&self, stats: Arc<TransportStats>) {
        let _ = self.late.transport.set(stats);
    }

    /// `sink`, counting what it persists and fails to.
    pub(crate) fn counting(&self, sink: Arc<dyn KeysSink>) -> Arc<dyn KeysSink> {
        Arc::new(CountingSink {
            inner: sink,
            metrics: self.worker.clone(),
        })
    }

    /// Exposes the credential of `session` (its token manager's counters and state).
    pub(crate) fn attach_session<C: deckhand_connector::Connector>(
        &self,
        session: Arc<deckhand_connector::Session<C>>,
    ) {
        let source: AuthSource = Box::new(move || {
            session.token_manager().map(|manager| AuthView {
                metrics: manager.metrics(),
                state: manager.credential_state(),
                pending: manager.pending_generation().is_some(),
            })
        });
        let _ = self.late.auth.set(source);
    }

    /// `/readyz` follows `readiness` from now on.
    pub(crate) fn attach_readiness(&self, readiness: Readiness) {
        let _ = self.late.readiness.set(readiness);
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn scrape(State(exposition): State<Arc<Exposition>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &exposition.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics could not be encoded\n".to_owned(),
        ),
    }
}

async fn readyz(State(exposition): State<Arc<Exposition>>) -> (StatusCode, &'static str) {
    if exposition.late.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
