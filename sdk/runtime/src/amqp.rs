//! RabbitMQ transport on lapin: separate read and write connections, a confirm-channel
//! publisher with retries, and a self-healing consumer (reference §4.4–4.6).
//!
//! * **Connections**: like Node, one connection for consuming (`<hostname>-read`) and one for
//!   publishing (`<hostname>-write`), named through the `connection_name` client property.
//!   Opening a connection makes `1 + ELASTICIO_AMQP_RECONNECT_ATTEMPTS` rounds, pausing
//!   `ELASTICIO_AMQP_RECONNECT_TIMEOUT` between them; [`Transport::connect`] fails with a clear
//!   error if the broker cannot be reached at startup.
//! * **Several broker nodes** (`ELASTICIO_AMQP_URI` plus `ELASTICIO_AMQP_URIS`, a RabbitMQ
//!   cluster): a round tries every node once, starting with the one after the node last
//!   connected to, so when a node goes down both connections move to the next live one. With
//!   quorum queues (replicated; the platform's choice) nothing is lost when a node stops: the
//!   broker redelivers what was unacknowledged and [`crate::dedup::Deduplicator`]
//!   keeps what was already processed from running again.
//! * **Quorum queues' delivery limit** (`x-delivery-limit`): the broker counts every return of
//!   a message — on a connection loss, for each message in flight or buffered by the client —
//!   in its `x-delivery-count` header ([`Delivery::delivery_count`]), and drops or
//!   dead-letters a message once the count reaches the limit. Deckhand never returns a message
//!   on purpose (no `nack` with requeue: a failure is a reject to the dead-letter route), so
//!   the count only grows through connection losses and crashes; the worker logs it for each
//!   redelivery. Operators should set the limit well above the connection losses a message may
//!   live through, and give the queue a dead-letter exchange so nothing is dropped. Rebounds
//!   are republished without the header, so they start from a count of zero.
//! * **Publishing** ([`Publisher`]): a confirm channel; every publish waits for its broker
//!   confirm. A nack, a closed channel/connection or a confirm timeout is retried after
//!   `min(RETRY_DELAY·2^n, MAX_RETRY_DELAY)` with header `retry: n`, up to
//!   `ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS` attempts; the channel (and if needed the
//!   connection) is reopened between attempts. Deviation: Node fails at once when the channel
//!   is closed (`IllegalOperationError`); Deckhand reconnects and retries, which is what its
//!   retry budget is for. Throttles (`*_RATE_LIMIT` per `RATE_INTERVAL`) apply per kind.
//!   When a channel dies after the broker took a message but before its confirm arrived, the
//!   retry puts a second copy in the queue: no publisher can tell the two cases apart, so this
//!   is at-least-once. Every attempt of one publish carries the same `publishId` header, so a
//!   consuming Deckhand step recognises the copy ([`crate::dedup`]) and does not run
//!   it twice.
//! * **Consuming** ([`Consumer`]): `basic.qos(prefetch)` then `basic.consume`. When the channel
//!   or connection dies (broker restart, forced close, network loss) the consumer reconnects
//!   and re-subscribes by itself, forever, with capped exponential backoff; unacknowledged
//!   messages are redelivered by the broker. [`Delivery::ack`]/[`Delivery::reject`] on a
//!   delivery whose channel died report [`SettleError::ChannelClosed`] instead of panicking.
//!   Pair it with [`crate::dedup::Deduplicator`] so a redelivered message that was
//!   already processed is settled without running twice.
//! * **Counters** ([`TransportStats`], [`Transport::stats`]): reconnects per connection and
//!   publish retries and failures, counted always (relaxed atomics on paths that are slow
//!   anyway); [`Consumer::readiness`] tells whether the consumer is subscribed on a live
//!   channel. The worker's metrics endpoint reads both ([`crate::metrics`]).
//! * The runtime never declares exchanges, queues or bindings: the platform does.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use deckhand_core::retry::{Backoff, Policy};

use crate::config::{AmqpUri, PublishRetry, RateLimits, RuntimeConfig};
use crate::protocol::header::DELIVERY_COUNT;
use crate::protocol::{Incoming, Publication, PublicationKind, header_number};

/// `frame_max` asked of the broker unless the URI sets one.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// How long each step of a shutdown (cancel, channel close, connection close) may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// How the transport connects, publishes and consumes.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Broker nodes, tried in this order (see the module docs). Never empty.
    pub uris: Vec<AmqpUri>,
    /// Connection name prefix; `-read` / `-write` is appended (Node uses the hostname).
    pub connection_name: String,
    /// `basic.qos` prefetch of consumers.
    pub prefetch: u16,
    /// Extra connection attempts after a failed one (`ELASTICIO_AMQP_RECONNECT_ATTEMPTS`).
    pub connect_attempts: u32,
    /// Pause between connection attempts and first consumer re-subscribe delay
    /// (`ELASTICIO_AMQP_RECONNECT_TIMEOUT`).
    pub connect_retry_delay: Duration,
    /// Timeout of one connection attempt (TCP + AMQP handshake).
    pub connect_timeout: Duration,
    /// Cap of the consumer's re-subscribe backoff.
    pub reconnect_max_delay: Duration,
    /// Publish retry policy.
    pub publish_retry: PublishRetry,
    /// How long to wait for a broker confirm before treating the attempt as failed.
    pub confirm_timeout: Duration,
    /// Outgoing throttles, `None` for none.
    pub rate_limits: Option<RateLimits>,
}

impl TransportOptions {
    /// Defaults for one broker node: Node's reconnect/retry defaults, prefetch 1, no throttles.
    pub fn new(uri: AmqpUri) -> Self {
        Self::with_nodes(vec![uri])
    }

    /// Defaults for several broker nodes, tried in order. Panics if `uris` is empty.
    pub fn with_nodes(uris: Vec<AmqpUri>) -> Self {
        assert!(!uris.is_empty(), "at least one broker URI is needed");
        Self {
            uris,
            connection_name: crate::config::hostname(),
            prefetch: 1,
            connect_attempts: 3,
            connect_retry_delay: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(30),
            publish_retry: PublishRetry::default(),
            confirm_timeout: Duration::from_secs(60),
            rate_limits: None,
        }
    }

    /// The options a worker uses, from its configuration.
    pub fn from_config(cfg: &RuntimeConfig) -> Self {
        Self {
            prefetch: cfg.amqp.prefetch,
            connect_attempts: cfg.amqp.reconnect_attempts,
            connect_retry_delay: cfg.amqp.reconnect_timeout,
            publish_retry: cfg.amqp.publish_retry,
            rate_limits: Some(cfg.rate_limits),
            ..Self::with_nodes(cfg.amqp.uris.clone())
        }
    }
}

/// A connection, consume or subscribe failure. Never contains the broker password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached or refused the connection.
    #[error("RabbitMQ not reachable at {uri} ({connection}) after {attempts} attempt(s): {reason}")]
    Connect {
        /// Broker URI, password redacted.
        uri: String,
        /// `read` or `write`.
        connection: String,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        reason: String,
    },
    /// A channel could not be opened or configured.
    #[error("AMQP channel error: {0}")]
    Channel(String),
    /// `basic.consume` failed, e.g. the queue does not exist.
    #[error("cannot consume from queue `{queue}`: {reason}")]
    Subscribe {
        /// The queue.
        queue: String,
        /// Broker error.
        reason: String,
    },
}

/// A publish that could not be confirmed within the retry budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "failed to publish to exchange `{exchange}` with routing key `{routing_key}` after {attempts} attempt(s): {last_error}"
)]
pub struct PublishError {
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's failure.
    pub last_error: String,
}

/// Why an ack or reject did not reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// The delivery's channel or connection is gone; the broker will redeliver the message.
    #[error("channel closed before the delivery was settled; the broker will redeliver it")]
    ChannelClosed,
    /// The delivery was already acked or rejected.
    #[error("delivery already settled")]
    AlreadySettled,
    /// The broker or client reported an error while settling.
    #[error("settling the delivery failed: {0}")]
    Amqp(String),
}

/// The broker's answer to a confirmed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Publish attempts it took (1 = first try).
    pub attempts: u32,
    /// `Some((reply_code, reply_text))` if a mandatory publish was unroutable and returned
    /// (no queue bound for the routing key). The broker still acked it; Node ignores this too.
    pub returned: Option<(u16, String)>,
}

/// What a [`Transport`] went through since it connected: reconnects and publish retries.
/// Counted whether or not metrics are served; reading is cheap.
#[derive(Debug, Default)]
pub struct TransportStats {
    reconnects_read: AtomicU64,
    reconnects_write: AtomicU64,
    publish_retries: AtomicU64,
    publish_failures: AtomicU64,
}

impl TransportStats {
    /// Connections reopened after the consuming (`read`) connection was lost.
    pub fn reconnects_read(&self) -> u64 {
        self.reconnects_read.load(Ordering::Relaxed)
    }

    /// Connections reopened after the publishing (`write`) connection was lost.
    pub fn reconnects_write(&self) -> u64 {
        self.reconnects_write.load(Ordering::Relaxed)
    }

    /// Publish attempts that failed and were retried (nack, closed channel, confirm timeout).
    pub fn publish_retries(&self) -> u64 {
        self.publish_retries.load(Ordering::Relaxed)
    }

    /// Publishes that failed after every attempt.
    pub fn publish_failures(&self) -> u64 {
        self.publish_failures.load(Ordering::Relaxed)
    }

    fn reconnected(&self, role: &str) {
        let counter = if role == "read" {
            &self.reconnects_read
        } else {
            &self.reconnects_write
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One broker node of a [`ConnSlot`].
struct Node {
    uri: AMQPUri,
    redacted: String,
}

/// The live connection of a slot and the node it goes to.
struct Current {
    conn: Option<Arc<Connection>>,
    node: usize,
    /// A connection was lost and none opened since: the next one counts as a reconnect.
    lost: bool,
}

/// One of the two connections, reopened on demand — on the next node when there are several.
struct ConnSlot {
    nodes: Vec<Node>,
    role: &'static str,
    name: String,
    retry_delay: Duration,
    connect_timeout: Duration,
    current: Mutex<Current>,
    stats: Arc<TransportStats>,
}

impl ConnSlot {
    fn new(opts: &TransportOptions, role: &'static str, stats: Arc<TransportStats>) -> Self {
        let nodes = opts
            .uris
            .iter()
            .map(|u| {
                let mut uri = u.parsed().clone();
                // lapin keeps 32 frames of `frame_max` per direction and connection, fully
                // resident; with RabbitMQ's 128 KiB default that is 16 MiB for a worker's two
                // connections. Node's amqplib asks for 4 KiB; 16 KiB keeps large messages
                // cheap. A `frame_max` in the URI wins.
                if uri.query.frame_max.is_none() {
                    uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
                }
                Node {
                    uri,
                    redacted: u.redacted(),
                }
            })
            .collect();
        Self {
            nodes,
            role,
            name: format!("{}-{role}", opts.connection_name),
            retry_delay: opts.connect_retry_delay,
            connect_timeout: opts.connect_timeout,
            current: Mutex::new(Current {
                conn: None,
                node: 0,
                lost: false,
            }),
            stats,
        }
    }

    /// The live connection, or a new one after up to `1 + attempts` rounds over the nodes
    /// (a lost connection's node is tried last). The lock makes concurrent callers share one
    /// reconnect.
    async fn get(&self, extra_attempts: u32) -> Result<Arc<Connection>, TransportError> {
        let mut current = self.current.lock().await;
        let mut start = current.node;
        if let Some(conn) = current.conn.as_ref() {
            if conn.status().connected() {
                return Ok(conn.clone());
            }
            current.lost = true;
            warn!(connection = %self.name, node = %self.nodes[current.node].redacted, "AMQP connection lost, reconnecting");
            start = current.node + 1;
        }
        current.conn = None;
        let mut last = String::new();
        let mut rounds = Policy::new(Backoff::fixed(self.retry_delay))
            .with_max_attempts(extra_attempts.saturating_add(1))
            .attempts();
        loop {
            let attempt = rounds.failures();
            for offset in 0..self.nodes.len() {
                let index = (start + offset) % self.nodes.len();
                let node = &self.nodes[index];
                let props =
                    ConnectionProperties::default().with_connection_name(self.name.clone().into());
                match tokio::time::timeout(
                    self.connect_timeout,
                    Connection::connect_uri(node.uri.clone(), props),
                )
                .await
                {
                    Ok(Ok(conn)) => {
                        info!(connection = %self.name, uri = %node.redacted, "AMQP connected");
                        let conn = Arc::new(conn);
                        current.conn = Some(conn.clone());
                        current.node = index;
                        if std::mem::take(&mut current.lost) {
                            self.stats.reconnected(self.role);
                        }
                        return Ok(conn);
                    }
                    Ok(Err(e)) => last = format!("{}: {e}", node.redacted),
                    Err(_) => {
                        last = format!(
                            "{}: timed out after {:?}",
                            node.redacted, self.connect_timeout
                        )
                    }
                }
                warn!(connection = %self.name, attempt, error = %last, "AMQP connection attempt failed");
            }
            let Some(pause) = rounds.next_delay(None) else {
                break;
            };
            tokio::time::sleep(pause).await;
            debug!(connection = %self.name, attempt = rounds.failures(), "AMQP reconnecting");
        }
        Err(TransportError::Connect {
            uri: self
                .nodes
                .iter()
                .map(|n| n.redacted.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            connection: self.role.to_owned(),
            attempts: extra_attempts + 1,
            reason: last,
        })
    }

    /// The URI (password redacted) of the node the live connection goes to, if any.
    async fn connected_node(&self) -> Option<String> {
        let current = self.current.lock().await;
        current
            .conn
            .as_ref()
            .filter(|c| c.status().connected())
            .map(|_| self.nodes[current.node].redacted.clone())
    }

    async fn close(&self) {
        if let Some(conn) = self.current.lock().await.conn.take()
            && conn.status().connected()
            && tokio::time::timeout(SHUTDOWN_STEP, conn.close(200, "OK".into()))
                .await
                .is_err()
        {
            warn!(connection = %self.name, "the broker did not confirm closing the connection in time");
        }
    }
}

/// The read and write connections of a worker.
#[derive(Clone)]
pub struct Transport {
    opts: Arc<TransportOptions>,
    read: Arc<ConnSlot>,
    publisher: Publisher,
    stats: Arc<TransportStats>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("uris", &self.opts.uris)
            .field("connection_name", &self.opts.connection_name)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Opens both connections and the publish channel; fails if the broker is unreachable
    /// after the configured attempts.
    pub async fn connect(opts: TransportOptions) -> Result<Self, TransportError> {
        let opts = Arc::new(opts);
        let stats = Arc::new(TransportStats::default());
        let read = Arc::new(ConnSlot::new(&opts, "read", stats.clone()));
        let write = Arc::new(ConnSlot::new(&opts, "write", stats.clone()));
        read.get(opts.connect_attempts).await?;
        let publisher = Publisher::new(write, &opts);
        publisher.inner.channel().await.map_err(|e| match e {
            AttemptError::Connect(e) => e,
            other => TransportError::Channel(other.to_string()),
        })?;
        Ok(Self {
            opts,
            read,
            publisher,
            stats,
        })
    }

    /// Reconnects and publish retries so far.
    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    /// The broker node (URI, password redacted) the consuming connection is on, if connected.
    pub async fn consuming_node(&self) -> Option<String> {
        self.read.connected_node().await
    }

    /// The publisher (cheap to clone, safe to share between tasks).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Starts consuming `queue` with the configured prefetch. The first subscription must
    /// succeed (a missing queue is an error here); later ones are retried forever.
    pub async fn consume(&self, queue: &str) -> Result<Consumer, TransportError> {
        let mut consumer = Consumer {
            slot: self.read.clone(),
            queue: queue.to_owned(),
            prefetch: self.opts.prefetch,
            extra_attempts: self.opts.connect_attempts,
            resubscribe: Backoff::exponential(self.opts.connect_retry_delay)
                .with_cap(self.opts.reconnect_max_delay),
            subscription: None,
            live: Arc::default(),
            generation: 0,
            stop: StopHandle::default(),
            finished: false,
            cancelled: false,
        };
        consumer.subscribe().await?;
        Ok(consumer)
    }

    /// Closes both connections. In-flight deliveries can no longer be settled afterwards.
    pub async fn close(&self) {
        self.read.close().await;
        // The publishing channel first: left to its handle's drop, its close would race the
        // connection's (lapin then logs a spurious connection error).
        let channel = self.publisher.inner.channel.lock().await.take();
        if let Some((_, channel)) = channel
            && channel.status().connected()
            && tokio::time::timeout(SHUTDOWN_STEP, channel.close(200, "OK".into()))
                .await
                .is_err()
        {
            warn!("closing the publishing channel was not confirmed in time");
        }
        self.publisher.inner.slot.close().await;
    }
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Connect(TransportError),
    #[error("channel: {0}")]
    Channel(String),
    #[error("publish: {0}")]
    Publish(String),
    #[error("broker nacked the message")]
    Nack,
    #[error("no broker confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("{0}")]
    Invalid(String),
}

/// At most `limit` publishes per `interval` (p-throttle semantics).
struct Throttle {
    limit: usize,
    interval: Duration,
    starts: Mutex<VecDeque<Instant>>,
}

impl Throttle {
    fn new(limit: u32, interval: Duration) -> Option<Self> {
        (limit > 0 && !interval.is_zero()).then(|| Self {
            limit: limit as usize,
            interval,
            starts: Mutex::new(VecDeque::new()),
        })
    }

    async fn acquire(&self) {
        // Holding the lock while sleeping queues waiters fairly (tokio's Mutex is FIFO).
        let mut starts = self.starts.lock().await;
        let now = Instant::now();
        while starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.interval)
        {
            starts.pop_front();
        }
        if starts.len() >= self.limit
            && let Some(oldest) = starts.pop_front()
        {
            tokio::time::sleep_until(oldest + self.interval).await;
        }
        starts.push_back(Instant::now());
    }
}

struct PublisherInner {
    slot: Arc<ConnSlot>,
    connect_attempts: u32,
    channel: Mutex<Option<(u64, Channel)>>,
    channel_generation: AtomicU64,
    retry: PublishRetry,
    confirm_timeout: Duration,
    data: Option<Throttle>,
    error: Option<Throttle>,
    snapshot: Option<Throttle>,
}

/// Publishes [`Publication`]s on a confirm channel of the write connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connection", &self.inner.slot.name)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    fn new(slot: Arc<ConnSlot>, opts: &TransportOptions) -> Self {
        let throttle = |pick: fn(&RateLimits) -> u32| {
            opts.rate_limits
                .as_ref()
                .and_then(|r| Throttle::new(pick(r), r.interval))
        };
        Self {
            inner: Arc::new(PublisherInner {
                slot,
                connect_attempts: opts.connect_attempts,
                channel: Mutex::new(None),
                channel_generation: AtomicU64::new(0),
                retry: opts.publish_retry,
                confirm_timeout: opts.confirm_timeout,
                data: throttle(|r| r.data),
                error: throttle(|r| r.error),
                snapshot: throttle(|r| r.snapshot),
            }),
        }
    }

    /// Publishes and waits for the broker's confirm, retrying as configured. Resolves once
    /// the broker has taken responsibility for the message.
    pub async fn publish(&self, publication: &Publication) -> Result<Confirmed, PublishError> {
        let inner = &self.inner;
        let throttle = match publication.kind {
            PublicationKind::Data => inner.data.as_ref(),
            PublicationKind::Error => inner.error.as_ref(),
            PublicationKind::Snapshot => inner.snapshot.as_ref(),
            _ => None,
        };
        if let Some(throttle) = throttle {
            throttle.acquire().await;
        }
        // One id for every attempt: a consumer recognises a retry whose earlier attempt also
        // arrived (its confirm lost with the channel) as the same message.
        let publish_id = crate::protocol::fresh_id();
        let mut schedule = inner.retry.policy().attempts();
        loop {
            let failures = schedule.failures();
            match inner.attempt(publication, failures, &publish_id).await {
                Ok(returned) => {
                    if let Some((code, text)) = &returned {
                        warn!(
                            exchange = %publication.exchange,
                            routing_key = %publication.routing_key,
                            code, text = %text,
                            "published message was unroutable and returned by the broker"
                        );
                    }
                    return Ok(Confirmed {
                        attempts: failures + 1,
                        returned,
                    });
                }
                Err(e) => {
                    let fatal = matches!(e, AttemptError::Invalid(_));
                    let next = if fatal {
                        schedule.failed_without_pause();
                        None
                    } else {
                        schedule.next_delay(None)
                    };
                    let Some(delay) = next else {
                        inner
                            .slot
                            .stats
                            .publish_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(PublishError {
                            exchange: publication.exchange.clone(),
                            routing_key: publication.routing_key.clone(),
                            attempts: schedule.failures(),
                            last_error: e.to_string(),
                        });
                    };
                    warn!(
                        exchange = %publication.exchange,
                        routing_key = %publication.routing_key,
                        attempt = schedule.failures(), error = %e, ?delay,
                        "publish failed, retrying"
                    );
                    inner
                        .slot
                        .stats
                        .publish_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

impl PublisherInner {
    /// The current confirm channel, opening one (and the connection) if needed.
    async fn channel(&self) -> Result<(u64, Channel), AttemptError> {
        let mut current = self.channel.lock().await;
        if let Some((generation, channel)) = current.as_ref()
            && channel.status().connected()
        {
            return Ok((*generation, channel.clone()));
        }
        *current = None;
        let conn = self
            .slot
            .get(self.connect_attempts)
            .await
            .map_err(AttemptError::Connect)?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| AttemptError::Channel(e.to_string()))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| AttemptError::Channel(e.to_string()))?;
        let generation = self.channel_generation.fetch_add(1, Ordering::Relaxed) + 1;
        *current = Some((generation, channel.clone()));
        Ok((generation, channel))
    }

    /// Drops the channel of `generation` so the next attempt opens a fresh one; a channel that
    /// still looks alive (confirm timeout) is closed so late confirms cannot confuse it.
    async fn discard(&self, generation: u64) {
        let mut current = self.channel.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation)
            && let Some((_, channel)) = current.take()
            && channel.status().connected()
        {
            tokio::spawn(async move {
                let _ = channel
                    .close(200, "discarded after publish failure".into())
                    .await;
            });
        }
    }

    async fn attempt(
        &self,
        p: &Publication,
        retry: u32,
        publish_id: &str,
    ) -> Result<Option<(u16, String)>, AttemptError> {
        let exchange = ShortString::try_new(p.exchange.clone())
            .map_err(|e| AttemptError::Invalid(format!("exchange name: {e}")))?;
        let routing_key = ShortString::try_new(p.routing_key.clone())
            .map_err(|e| AttemptError::Invalid(format!("routing key: {e}")))?;
        let (generation, channel) = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory: p.mandatory,
            immediate: false,
        };
        let result = async {
            let confirm = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    options,
                    &p.body,
                    p.amqp_properties(retry, publish_id),
                )
                .await
                .map_err(|e| AttemptError::Publish(e.to_string()))?;
            match tokio::time::timeout(self.confirm_timeout, confirm).await {
                Err(_) => Err(AttemptError::ConfirmTimeout(self.confirm_timeout)),
                Ok(Err(e)) => Err(AttemptError::Publish(e.to_string())),
                Ok(Ok(Confirmation::Nack(_))) => Err(AttemptError::Nack),
                Ok(Ok(Confirmation::Ack(returned))) => {
                    Ok(returned.map(|r| (r.reply_code, r.reply_text.as_str().to_owned())))
                }
                // The channel is in confirm mode, so this means something reset it.
                Ok(Ok(Confirmation::NotRequested)) => Err(AttemptError::Channel(
                    "publisher confirms are not enabled on the channel".into(),
                )),
            }
        }
        .await;
        if matches!(
            result,
            Err(AttemptError::Publish(_)
                | AttemptError::ConfirmTimeout(_)
                | AttemptError::Channel(_))
        ) {
            self.discard(generation).await;
        }
        result
    }
}

/// Stops a [`Consumer`] from another task: its `next()` then cancels the subscription and
/// returns `None`. Deliveries already received can still be settled.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    stopped: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl StopHandle {
    /// Requests the stop.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    async fn stopped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Whether a [`Consumer`] is subscribed on a live channel and not stopping, readable from
/// another task ([`Consumer::readiness`]): what a worker's `/readyz` answers. The default
/// (no consumer yet) is not ready.
#[derive(Clone, Default)]
pub struct Readiness {
    channel: Arc<std::sync::Mutex<Option<Channel>>>,
    stop: StopHandle,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Readiness {
    /// `true` while subscribed on a channel whose connection is up and no stop was requested;
    /// `false` while (re)connecting, re-subscribing, draining or stopped.
    pub fn is_ready(&self) -> bool {
        !self.stop.is_stopped()
            && self
                .lock()
                .as_ref()
                .is_some_and(|channel| channel.status().connected())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    generation: u64,
}

/// Deliveries from one queue, surviving connection loss.
///
/// ```no_run
/// # async fn run(transport: deckhand_runtime::amqp::Transport) -> Result<(), Box<dyn std::error::Error>> {
/// let mut consumer = transport.consume("my-queue").await?;
/// while let Some(delivery) = consumer.next().await {
///     // ... process ...
///     if let Err(e) = delivery.ack().await {
///         tracing::warn!(error = %e, "ack failed; the broker will redeliver");
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    slot: Arc<ConnSlot>,
    queue: String,
    prefetch: u16,
    extra_attempts: u32,
    /// Pauses between failed re-subscribes: uncounted, they go on until a stop.
    resubscribe: Backoff,
    subscription: Option<Subscription>,
    /// The live subscription's channel, for [`Readiness`].
    live: Arc<std::sync::Mutex<Option<Channel>>>,
    generation: u64,
    stop: StopHandle,
    finished: bool,
    /// `basic.cancel` was sent on the current subscription.
    cancelled: bool,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("subscription", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next delivery. Waits through reconnects; returns `None` only after a stop
    /// ([`stop_handle`](Self::stop_handle)).
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut failures = 0u32;
        loop {
            if self.finished {
                return None;
            }
            if self.stop.is_stopped() {
                self.cancel().await;
                return None;
            }
            if self.subscription.is_none() {
                let stop = self.stop.clone();
                let outcome = tokio::select! {
                    _ = stop.stopped() => continue,
                    r = self.subscribe() => r,
                };
                if let Err(e) = outcome {
                    let delay = self.resubscribe.delay(failures);
                    failures = failures.saturating_add(1);
                    warn!(queue = %self.queue, error = %e, ?delay, "re-subscribe failed, will retry");
                    tokio::select! {
                        _ = stop.stopped() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                failures = 0;
            }
            let stop = self.stop.clone();
            let Some(sub) = self.subscription.as_mut() else {
                continue;
            };
            // Messages lapin buffered before the channel died can no longer be settled and
            // will be redelivered: processing them would only produce duplicates.
            if !sub.channel.status().connected() {
                warn!(queue = %self.queue, "consumer channel closed; reconnecting");
                self.subscription = None;
                continue;
            }
            let item = tokio::select! {
                _ = stop.stopped() => continue,
                item = sub.consumer.next() => item,
            };
            match item {
                Some(Ok(d)) if d.acker.poisoned() => {
                    debug!(queue = %self.queue, "dropping a delivery of a closed channel; the broker redelivers it");
                }
                Some(Ok(d)) => {
                    return Some(Delivery::from_lapin(d, sub.channel.clone(), sub.generation));
                }
                Some(Err(e)) => {
                    warn!(queue = %self.queue, error = %e, "consumer channel failed; reconnecting");
                    self.subscription = None;
                }
                None => {
                    warn!(queue = %self.queue, "consumer cancelled by the broker or channel closed; re-subscribing");
                    self.subscription = None;
                }
            }
        }
    }

    /// A handle that stops this consumer from elsewhere (e.g. a SIGTERM handler).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Whether this consumer is consuming, readable from another task.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            channel: self.live.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Cancels the subscription (`basic.cancel`); later `next()` calls return `None`.
    /// The channel stays open while deliveries are alive, so they can still be settled.
    pub async fn cancel(&mut self) {
        self.finish(false).await;
    }

    /// Cancels the subscription and closes its channel, for a shutdown after every delivery
    /// was settled (closing it explicitly keeps the connection's close from racing the
    /// channel's).
    pub async fn close(&mut self) {
        self.finish(true).await;
    }

    async fn finish(&mut self, close_channel: bool) {
        self.finished = true;
        self.set_live(None);
        // The subscription (and its channel) is kept after a cancel: deliveries still being
        // processed hold the channel, and a channel closed implicitly by the drop of its last
        // handle races the connection's close (lapin then logs a connection ERROR on every
        // graceful stop). `close` closes it explicitly once everything is settled.
        if let Some(sub) = self.subscription.as_ref()
            && sub.channel.status().connected()
        {
            if !self.cancelled {
                self.cancelled = true;
                let tag = sub.consumer.tag();
                // Bounded: a shutdown must end even if the broker stops answering.
                let cancel = sub.channel.basic_cancel(tag, BasicCancelOptions::default());
                match tokio::time::timeout(SHUTDOWN_STEP, cancel).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "basic.cancel failed"),
                    Err(_) => warn!("basic.cancel was not confirmed in time"),
                }
            }
            if close_channel {
                match tokio::time::timeout(SHUTDOWN_STEP, sub.channel.close(200, "OK".into())).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "closing the consumer channel failed"),
                    Err(_) => warn!("closing the consumer channel was not confirmed in time"),
                }
            }
        }
        if close_channel {
            self.subscription = None;
        }
    }

    fn set_live(&self, channel: Option<Channel>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = channel;
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    async fn subscribe(&mut self) -> Result<(), TransportError> {
        let conn = self.slot.get(self.extra_attempts).await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| TransportError::Channel(e.to_string()))?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| TransportError::Channel(e.to_string()))?;
        let queue =
            ShortString::try_new(self.queue.clone()).map_err(|e| TransportError::Subscribe {
                queue: self.queue.clone(),
                reason: e.to_string(),
            })?;
        let consumer = channel
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| TransportError::Subscribe {
                queue: self.queue.clone(),
                reason: e.to_string(),
            })?;
        self.generation += 1;
        self.cancelled = false;
        info!(queue = %self.queue, subscription = self.generation, prefetch = self.prefetch, "consuming");
        self.set_live(Some(channel.clone()));
        self.subscription = Some(Subscription {
            channel,
            consumer,
            generation: self.generation,
        });
        Ok(())
    }
}

/// How a processed delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Settlement {
    /// `basic.ack`: processed, all publishes confirmed, no error emitted.
    Ack,
    /// `basic.reject(requeue=false)`: an error was emitted or the input was unusable.
    Reject,
}

enum Settler {
    Lapin {
        acker: lapin::Acker,
        // Keeps the channel open until the delivery is settled or dropped.
        _channel: Channel,
    },
    #[cfg(test)]
    Recorder(test_support::Recorder),
}

/// One received message with its settle handle.
pub struct Delivery {
    /// Properties and raw body.
    pub incoming: Incoming,
    /// The broker's redelivered flag: set when the message was delivered before (typically on
    /// a channel that has since died).
    pub redelivered: bool,
    /// Delivery tag on its channel.
    pub delivery_tag: u64,
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Which subscription (1, 2, … after reconnects) delivered it.
    pub subscription: u64,
    /// A quorum queue's `x-delivery-count` header: how many times the message was returned
    /// to the queue before (see the module docs on the delivery limit).
    pub delivery_count: Option<u64>,
    settler: Settler,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.delivery_tag)
            .field("message_id", &self.incoming.message_id())
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .field("subscription", &self.subscription)
            .field("body_len", &self.incoming.body.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    fn from_lapin(d: lapin::message::Delivery, channel: Channel, subscription: u64) -> Self {
        let incoming = Incoming::new(d.properties, d.data);
        let delivery_count = header_number(incoming.headers(), DELIVERY_COUNT)
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n as u64);
        Self {
            incoming,
            delivery_count,
            redelivered: d.redelivered,
            delivery_tag: d.delivery_tag,
            exchange: d.exchange.as_str().to_owned(),
            routing_key: d.routing_key.as_str().to_owned(),
            subscription,
            settler: Settler::Lapin {
                acker: d.acker,
                _channel: channel,
            },
        }
    }

    /// The `messageId` header.
    pub fn message_id(&self) -> Option<String> {
        self.incoming.message_id()
    }

    /// Acknowledges the delivery.
    pub async fn ack(&self) -> Result<(), SettleError> {
        self.settle(Settlement::Ack).await
    }

    /// Rejects the delivery without requeue (dead-lettered if the queue has a DLX).
    pub async fn reject(&self) -> Result<(), SettleError> {
        self.settle(Settlement::Reject).await
    }

    /// Acks or rejects.
    pub async fn settle(&self, outcome: Settlement) -> Result<(), SettleError> {
        match &self.settler {
            Settler::Lapin { acker, .. } => {
                let result = match outcome {
                    Settlement::Ack => acker.ack(BasicAckOptions::default()).await,
                    Settlement::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
                };
                match result {
                    Ok(true) => Ok(()),
                    Ok(false) if acker.poisoned() => Err(SettleError::ChannelClosed),
                    Ok(false) => Err(SettleError::AlreadySettled),
                    // The channel died while the ack was under way.
                    Err(_) if acker.poisoned() => Err(SettleError::ChannelClosed),
                    Err(e) => Err(SettleError::Amqp(e.to_string())),
                }
            }
            #[cfg(test)]
            Settler::Recorder(r) => r.settle(self.delivery_tag, outcome),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Records settlements; `dead` makes them fail like a closed channel.
    #[derive(Clone, Default)]
    pub(crate) struct Recorder {
        pub(crate) log: Arc<StdMutex<Vec<(u64, Settlement)>>>,
        pub(crate) dead: Arc<AtomicBool>,
        settled: Arc<AtomicBool>,
    }

    impl Recorder {
        pub(crate) fn settle(&self, tag: u64, outcome: Settlement) -> Result<(), SettleError> {
            if self.dead.load(Ordering::SeqCst) {
                return Err(SettleError::ChannelClosed);
            }
            if self.settled.swap(true, Ordering::SeqCst) {
                return Err(SettleError::AlreadySettled);
            }
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((tag, outcome));
            Ok(())
        }
    }

    /// A delivery with a recording settler.
    pub(crate) fn delivery(
        tag: u64,
        message_id: Option<&str>,
        redelivered: bool,
        log: &Arc<StdMutex<Vec<(u64, Settlement)>>>,
        dead: bool,
    ) -> Delivery {
        delivery_with_body(tag, message_id, b"body", redelivered, log, dead)
    }

    /// As [`delivery`], with the given body.
    pub(crate) fn delivery_with_body(
        tag: u64,
        message_id: Option<&str>,
        body: &[u8],
        redelivered: bool,
        log: &Arc<StdMutex<Vec<(u64, Settlement)>>>,
        dead: bool,
    ) -> Delivery {
        let mut headers = FieldTable::default();
        if let Some(id) = message_id {
            headers.insert("messageId".into(), crate::protocol::js_string(id));
        }
        delivery_with_headers(tag, headers, body, redelivered, log, dead)
    }

    /// As [`delivery`], with the given headers and body.
    pub(crate) fn delivery_with_headers(
        tag: u64,
        headers: FieldTable,
        body: &[u8],
        redelivered: bool,
        log: &Arc<StdMutex<Vec<(u64, Settlement)>>>,
        dead: bool,
    ) -> Delivery {
        Delivery {
            incoming: Incoming::new(
                lapin::BasicProperties::default().with_headers(headers),
                body.to_vec(),
            ),
            redelivered,
            delivery_tag: tag,
            exchange: String::new(),
            routing_key: String::new(),
            subscription: 1,
            delivery_count: None,
            settler: Settler::Recorder(Recorder {
                log: log.clone(),
                dead: Arc::new(AtomicBool::new(dead)),
                settled: Arc::new(AtomicBool::new(false)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttle_allows_limit_per_interval() {
        let throttle = Throttle::new(2, Duration::from_millis(80)).unwrap();
        let start = Instant::now();
        throttle.acquire().await;
        throttle.acquire().await;
        assert!(start.elapsed() < Duration::from_millis(60));
        throttle.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert!(Throttle::new(0, Duration::from_millis(80)).is_none());
        assert!(Throttle::new(5, Duration::ZERO).is_none());
    }

    #[test]
    fn options_debug_hides_the_password() {
        let uri = AmqpUri::parse("amqp://user:hunter2@rabbit:5672/%2f").unwrap();
        let opts = TransportOptions::new(uri);
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("amqp://user:***@rabbit:5672/%2f"), "{dbg}");
        assert_eq!(opts.connection_name, crate::config::hostname());
    }
}
