//! Runtime settings from `ELASTICIO_*` environment variables (reference §4.1).
//!
//! Names and defaults are those of the official Node runtime (sailor-nodejs `lib/settings.js`),
//! so a Deckhand worker drops into a container the platform prepared for Sailor. Parsing is
//! stricter than Node's where Node's parsing is a bug; each deviation is documented on the
//! field it concerns and summarised here:
//!
//! * **Numbers**: Node uses `parseInt(v) || default`, which turns an explicit `0` into the
//!   default and accepts garbage such as `"12abc"` (as 12) or `"1e3"` (as 1). Deckhand parses
//!   the whole trimmed value as a decimal integer; garbage is an error, and `0` means zero
//!   where zero is meaningful (rebound limit, delays, reconnect attempts) and is an error or
//!   "disabled" where it is not (documented per field). An empty value means "unset" (as in
//!   Node).
//! * **Booleans**: Node treats unset as the default, `""` and `"false"` as false and *anything
//!   else* (even `"0"` or `"no"`) as true. Deckhand accepts `true/false`, `1/0`, `yes/no`,
//!   `on/off` (case-insensitive), treats an empty value as unset, and rejects anything else.
//! * **Enumerations** (`PROTOCOL_VERSION`, `INPUT_FORMAT`): unknown values are errors instead of
//!   being silently treated as the default.
//! * **Platform API**: `ELASTICIO_API_URI/USERNAME/KEY` are optional. Without `API_URI` the
//!   step definition comes from the local file named by [`STEP_FILE_VAR`]
//!   (`DECKHAND_STEP_FILE`), see [`StepSource`].
//! * **Errors**: every problem is reported at once ([`ConfigError`]), not just the first.
//!   Values that are accepted but adjusted are listed in [`RuntimeConfig::notices`], which the
//!   worker logs as warnings at start-up.
//!
//! Deliberate differences from Node's *defaults* (each a reliability fix):
//!
//! * `ELASTICIO_AMQP_PERSISTENT_MESSAGES` defaults to **true**: outputs survive a broker restart.
//!   Node's default (false) loses outputs whose inputs were already acked. Set it to `false`
//!   explicitly for transient outputs; the worker then warns at start-up.
//! * `ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY` defaults to **5 s** (Node: 5 min), and larger
//!   values are held to [`PublishRetry::MAX_DELAY_CEILING`] (30 s): a publish nacked by a full
//!   queue is retried within seconds of the queue having room.
//!
//! Additions:
//!
//! * `ELASTICIO_AMQP_URIS`: more broker nodes to fail over to, see [`AmqpSettings::uris`].
//!
//! Secrets (crypto password and IV, API key, AMQP URI password, object-storage token) never
//! appear in `Debug` output or in error messages.
//!
//! # Every variable the runtime reads
//!
//! This module is the only place the runtime reads its environment: each variable below is
//! read, validated and reported here (a bad value is a [`ConfigError`], never a silent
//! default). `ELASTICIO_` is written `E_`; "ms" values are whole milliseconds.
//!
//! | variable | default | what |
//! |---|---|---|
//! | `E_FLOW_ID`, `E_EXEC_ID`, `E_STEP_ID`, `E_CONTAINER_ID`, `E_WORKSPACE_ID`, `E_USER_ID`, `E_COMP_ID`, `E_FUNCTION` | required | the step's identity ([`StepIdentity`]) |
//! | `E_API_URI`, `E_API_USERNAME`, `E_API_KEY` | unset | the platform API the step definition comes from; username and key required with the URI ([`StepSource::Api`]) |
//! | `DECKHAND_STEP_FILE` | unset | the step definition as a local file when `E_API_URI` is unset ([`STEP_FILE_VAR`]) |
//! | `E_API_REQUEST_RETRY_ATTEMPTS`, `E_API_REQUEST_RETRY_DELAY` | 3, 100 ms | platform API retries ([`ApiRetry`]) |
//! | `E_AMQP_URI` | required | the broker ([`AmqpUri`]) |
//! | `E_AMQP_URIS` | unset | more broker nodes to fail over to ([`AmqpSettings::uris`]) |
//! | `E_LISTEN_MESSAGES_ON`, `E_PUBLISH_MESSAGES_TO`, `E_DATA_ROUTING_KEY`, `E_ERROR_ROUTING_KEY`, `E_REBOUND_ROUTING_KEY`, `E_SNAPSHOT_ROUTING_KEY` | required | queue, exchange and routing keys (at most 255 bytes) |
//! | `E_UPDATE_KEYS_ROUTING_KEY` | derived from the data key | routing key of `updateKeys` events |
//! | `E_RABBITMQ_PREFETCH_SAILOR` | 1 | messages processed at once (at least 1) |
//! | `E_AMQP_PUBLISH_RETRY_DELAY`, `E_AMQP_PUBLISH_MAX_RETRY_DELAY`, `E_AMQP_PUBLISH_RETRY_ATTEMPTS` | 100 ms, 5 s (held to 30 s), unbounded | retries of a nacked publish ([`PublishRetry`]) |
//! | `E_AMQP_PERSISTENT_MESSAGES` | true | persistent outputs |
//! | `E_AMQP_RECONNECT_ATTEMPTS`, `E_AMQP_RECONNECT_TIMEOUT` | 3, 100 ms | connection attempts |
//! | `E_PROCESS_AMQP_DRAIN`, `E_WAIT_MESSAGES_TIMEOUT` | true, 50 ms | draining on shutdown |
//! | `E_MESSAGE_CRYPTO_PASSWORD`, `E_MESSAGE_CRYPTO_IV` | required | message cipher (IV exactly 16 bytes) |
//! | `E_PROTOCOL_VERSION` | 1 | encoding of outgoing data (1 or 2) |
//! | `E_INPUT_FORMAT` | `default` | `default` or `error` |
//! | `E_REBOUND_INITIAL_EXPIRATION`, `E_REBOUND_LIMIT` | 15000 ms, 20 | rebounds ([`ReboundSettings`]) |
//! | `E_DATA_RATE_LIMIT`, `E_ERROR_RATE_LIMIT`, `E_SNAPSHOT_RATE_LIMIT`, `E_RATE_INTERVAL` | 10, 2, 2, 100 ms | outgoing throttles ([`RateLimits`]) |
//! | `E_OUTGOING_MESSAGE_SIZE_LIMIT` | 10485760 | largest outgoing body in bytes (at least 1) |
//! | `E_NO_ERROR_REPLIES`, `E_NO_SELF_PASSTRHOUGH` | false | reply and passthrough switches |
//! | `E_EMIT_LIGHTWEIGHT_MESSAGE`, `E_OBJECT_STORAGE_URI`, `E_OBJECT_STORAGE_TOKEN`, `E_OBJECT_STORAGE_SIZE_THRESHOLD` | false, unset, unset, 1048576 | object-storage offload ([`ObjectStorageSettings`]) |
//! | `E_STARTUP_REQUIRED`, `E_HOOK_SHUTDOWN` | false | run the `startup` hook; be a shutdown-hook container ([`LaunchConfig`]) |
//! | `E_COMPONENT_PATH` | empty | the component's path |
//! | `E_ADDITIONAL_VARS_FOR_HEADERS` | unset | variables copied into every message's headers ([`AdditionalHeaders`]) |
//! | `E_API_USERNAME`, `E_COMP_NAME`, `E_CONTRACT_ID`, `E_EXEC_TYPE`, `E_EXECUTION_RESULT_ID`, `E_FLOW_VERSION`, `E_TASK_USER_EMAIL`, `E_TENANT_ID`, `LOG_LEVEL` | unset, `info` | log context ([`LogContext`]) |
//! | `DECKHAND_STORE_URL`, `DECKHAND_STORE_KEYS`, `DECKHAND_STORE_SCHEMA`, `DECKHAND_STORE_LEASE_MS` | unset, required with the URL, `deckhand`, 15000 | the shared credential store ([`CredentialStoreSettings`]) |
//! | `DECKHAND_UPDATE_KEYS` | `amqp` | where rotated keys go: `amqp`, `api` or `both` ([`UpdateKeysMode`]) |
//! | `DECKHAND_SHUTDOWN_TIMEOUT_SECS` | 30 | how long a stopping worker waits for messages in flight |
//! | `DECKHAND_METRICS_ADDR` | unset (off) | `host:port` of the worker's `/metrics`, `/healthz` and `/readyz` ([`METRICS_ADDR_VAR`], [`crate::metrics`]) |
//!
//! `HOSTNAME` names the AMQP connection when `/proc/sys/kernel/hostname` and `/etc/hostname`
//! cannot be read (never an error).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri};

use crate::crypto::{CryptoError, MessageCipher, ProtocolVersion};
use deckhand_core::credentials::Secret;
use deckhand_core::retry::{Backoff, Policy};

/// Prefix of every Sailor environment variable.
pub const PREFIX: &str = "ELASTICIO_";

/// Environment variable naming the local step-definition file used when `ELASTICIO_API_URI`
/// is not set (Deckhand addition).
pub const STEP_FILE_VAR: &str = "DECKHAND_STEP_FILE";

/// Where the worker persists rotated keys: `amqp` (default), `api` or `both` (Deckhand
/// addition), see [`UpdateKeysMode`].
pub const UPDATE_KEYS_VAR: &str = "DECKHAND_UPDATE_KEYS";

/// Seconds the worker waits for messages in flight after a stop signal (Deckhand addition).
pub const SHUTDOWN_TIMEOUT_VAR: &str = "DECKHAND_SHUTDOWN_TIMEOUT_SECS";

/// The `host:port` (an IP address and a port, e.g. `127.0.0.1:9464` or `0.0.0.0:9464`) the
/// worker serves `/metrics`, `/healthz` and `/readyz` on (Deckhand addition); unset, the worker
/// serves nothing and counts nothing. See [`crate::metrics`].
pub const METRICS_ADDR_VAR: &str = "DECKHAND_METRICS_ADDR";

/// Longest exchange, queue or routing key AMQP can carry (a `shortstr`).
const MAX_SHORT_STRING: usize = 255;

/// One invalid or missing setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The environment variable concerned, e.g. `ELASTICIO_FLOW_ID`.
    pub var: String,
    /// Why it is unacceptable. Never contains a secret value.
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.reason)
    }
}

/// Every problem found in the environment, so an operator fixes them all in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order the variables were checked.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// `true` if a problem concerns `var`.
    pub fn mentions(&self, var: &str) -> bool {
        self.problems.iter().any(|p| p.var == var)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid runtime configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// The AMQP broker URI. `Debug`/`Display` show it with the password replaced by `***`.
#[derive(Clone)]
pub struct AmqpUri {
    raw: Secret,
    parsed: AMQPUri,
}

impl AmqpUri {
    /// Parses an `amqp://user:pass@host:port/vhost` URI. The error never contains the password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let parsed = AMQPUri::from_str(raw).map_err(|e| {
            // amq-protocol-uri echoes the whole input in some errors.
            let mut reason = e.replace(raw, &redact_uri(raw));
            if let Some(password) = password_of(raw) {
                reason = reason.replace(&password, "***");
            }
            format!("is not a valid AMQP URI ({reason})")
        })?;
        Ok(Self {
            raw: Secret::new(raw),
            parsed,
        })
    }

    /// The full URI including the password — for connecting only.
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }

    /// The parsed URI (contains the password: never log it).
    pub(crate) fn parsed(&self) -> &AMQPUri {
        &self.parsed
    }

    /// The URI with the password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        redact_uri(self.raw.expose())
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUri({})", self.redacted())
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn password_of(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    url.password().filter(|p| !p.is_empty()).map(str::to_owned)
}

fn redact_uri(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() && url.set_password(Some("***")).is_err() {
                return "[redacted]".to_owned();
            }
            url.to_string()
        }
        // Unparseable: we cannot tell where a password would be, so show nothing.
        Err(_) => "[redacted]".to_owned(),
    }
}

/// Where the step definition (`config`, `snapshot`, `is_passthrough`, `variables`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepSource {
    /// `GET {uri}/v1/tasks/{FLOW_ID}/steps/{STEP_ID}` with Basic auth, as Sailor does.
    Api {
        /// `ELASTICIO_API_URI`.
        uri: url::Url,
        /// `ELASTICIO_API_USERNAME`.
        username: String,
        /// `ELASTICIO_API_KEY`.
        key: Secret,
    },
    /// A local JSON file with the step definition (Deckhand addition, `DECKHAND_STEP_FILE`),
    /// used when `ELASTICIO_API_URI` is not set.
    File(std::path::PathBuf),
}

/// The step's identity on the platform; every outgoing message carries it in its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepIdentity {
    /// `ELASTICIO_FLOW_ID` (sent as header `taskId`).
    pub flow_id: String,
    /// `ELASTICIO_EXEC_ID`.
    pub exec_id: String,
    /// `ELASTICIO_STEP_ID`.
    pub step_id: String,
    /// `ELASTICIO_CONTAINER_ID`.
    pub container_id: String,
    /// `ELASTICIO_WORKSPACE_ID`.
    pub workspace_id: String,
    /// `ELASTICIO_USER_ID`.
    pub user_id: String,
    /// `ELASTICIO_COMP_ID`.
    pub comp_id: String,
    /// `ELASTICIO_FUNCTION`: the trigger or action to run.
    pub function: String,
}

/// Retry policy for a publish: try up to `attempts` times in total, sleeping
/// `min(delay·2^n, max_delay)` after the n-th failure (n from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRetry {
    /// `ELASTICIO_AMQP_PUBLISH_RETRY_DELAY` (default 100 ms).
    pub delay: Duration,
    /// `ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY` (default 5 s, at most
    /// [`MAX_DELAY_CEILING`](Self::MAX_DELAY_CEILING); Node: 5 min without a ceiling).
    pub max_delay: Duration,
    /// `ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS`: total publish attempts; `None` = unlimited
    /// (Node's default `Infinity`; the value `Infinity` is accepted). `0` is rejected, since
    /// at least one attempt is always made.
    pub attempts: Option<u32>,
}

impl PublishRetry {
    /// The longest pause between publish retries: a larger
    /// `ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY` is held to this, so a worker never idles for
    /// long after a full queue has room again.
    pub const MAX_DELAY_CEILING: Duration = Duration::from_secs(30);

    /// Default of `ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY`.
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

    /// The policy as run: doubling from `delay`, capped at `max_delay`, `attempts` in all.
    pub fn policy(&self) -> Policy {
        let policy = Policy::new(Backoff::exponential(self.delay).with_cap(self.max_delay));
        match self.attempts {
            Some(max) => policy.with_max_attempts(max),
            None => policy,
        }
    }

    /// The sleep after failed attempt `n` (0-based): `min(delay·2^n, max_delay)`.
    pub fn delay_after(&self, n: u32) -> Duration {
        self.policy().backoff.delay(n)
    }

    /// `true` if another attempt is allowed after `failed` failed attempts.
    pub fn may_retry(&self, failed: u32) -> bool {
        self.policy().pause(failed, Duration::ZERO, None).is_some()
    }
}

impl Default for PublishRetry {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(100),
            max_delay: Self::DEFAULT_MAX_DELAY,
            attempts: None,
        }
    }
}

/// Everything about the broker: where to consume, where to publish, reliability knobs.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// The broker nodes, in the order they are tried: `ELASTICIO_AMQP_URI` (the platform's
    /// single URI) first, then those of `ELASTICIO_AMQP_URIS` (Deckhand addition: a list
    /// separated by commas or whitespace, duplicates ignored; a comma inside a password must be
    /// written `%2C`). Either variable may be used alone; at least one is required. When the
    /// node a connection uses goes down, the next one is tried (see
    /// [`amqp`](crate::amqp)). Never empty.
    pub uris: Vec<AmqpUri>,
    /// `ELASTICIO_LISTEN_MESSAGES_ON`: the queue to consume.
    pub listen_messages_on: String,
    /// `ELASTICIO_PUBLISH_MESSAGES_TO`: the exchange for every publish.
    pub publish_messages_to: String,
    /// `ELASTICIO_DATA_ROUTING_KEY`.
    pub data_routing_key: String,
    /// `ELASTICIO_ERROR_ROUTING_KEY`.
    pub error_routing_key: String,
    /// `ELASTICIO_REBOUND_ROUTING_KEY`.
    pub rebound_routing_key: String,
    /// `ELASTICIO_SNAPSHOT_ROUTING_KEY`.
    pub snapshot_routing_key: String,
    /// `ELASTICIO_UPDATE_KEYS_ROUTING_KEY` (Deckhand addition). Default: the data routing key
    /// with a trailing `.message` replaced by `.update_keys`, or with `.update_keys` appended
    /// when it does not end in `.message`.
    pub update_keys_routing_key: String,
    /// `ELASTICIO_RABBITMQ_PREFETCH_SAILOR` (default 1): `basic.qos` prefetch, i.e. how many
    /// messages are processed concurrently. `0` is rejected: to AMQP it means "unlimited",
    /// which Sailor never intends (Node would silently use 1).
    pub prefetch: u16,
    /// Publish retry policy (`ELASTICIO_AMQP_PUBLISH_RETRY_*`).
    pub publish_retry: PublishRetry,
    /// `ELASTICIO_AMQP_PERSISTENT_MESSAGES` (default **true**, Node: false): deliveryMode 2,
    /// so outputs survive a broker restart; `false` publishes them transient (deliveryMode 1)
    /// and the worker warns at start-up.
    pub persistent_messages: bool,
    /// `ELASTICIO_AMQP_RECONNECT_ATTEMPTS` (default 3): extra connection attempts after the
    /// first one fails; `0` means a single attempt.
    pub reconnect_attempts: u32,
    /// `ELASTICIO_AMQP_RECONNECT_TIMEOUT` (default 100 ms): pause between connection attempts.
    pub reconnect_timeout: Duration,
    /// `ELASTICIO_PROCESS_AMQP_DRAIN` (default true). Read for compatibility; lapin applies
    /// backpressure itself, so there is no separate drain step.
    pub process_amqp_drain: bool,
    /// `ELASTICIO_WAIT_MESSAGES_TIMEOUT` (default 50 ms). A leftover of Node's polling consumer;
    /// read for compatibility, unused.
    pub wait_messages_timeout: Duration,
}

/// Rebound (delayed redelivery) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReboundSettings {
    /// `ELASTICIO_REBOUND_INITIAL_EXPIRATION` (default 15000 ms): expiration of the first
    /// rebound; rebound n waits `2^(n-1)` times this. `0` is accepted.
    pub initial_expiration: Duration,
    /// `ELASTICIO_REBOUND_LIMIT` (default 20): rebounds allowed before the message becomes an
    /// error. `0` is accepted (no rebounds; Node would use 20).
    pub limit: u32,
}

/// Outgoing throttles: at most `n` publishes of a kind per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `ELASTICIO_DATA_RATE_LIMIT` (default 10).
    pub data: u32,
    /// `ELASTICIO_ERROR_RATE_LIMIT` (default 2).
    pub error: u32,
    /// `ELASTICIO_SNAPSHOT_RATE_LIMIT` (default 2).
    pub snapshot: u32,
    /// `ELASTICIO_RATE_INTERVAL` (default 100 ms).
    ///
    /// A limit of `0` or an interval of `0` disables that throttle (Node would use the default).
    pub interval: Duration,
}

/// `ELASTICIO_INPUT_FORMAT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InputFormat {
    /// `default`: the input is an encrypted message.
    #[default]
    Default,
    /// `error`: the step is an error handler; the input is the error envelope.
    Error,
}

/// Lightweight-message offload to the object store ("Maester").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorageSettings {
    /// `ELASTICIO_EMIT_LIGHTWEIGHT_MESSAGE` (default false).
    pub emit_lightweight_message: bool,
    /// `ELASTICIO_OBJECT_STORAGE_URI`.
    pub uri: Option<String>,
    /// `ELASTICIO_OBJECT_STORAGE_TOKEN`.
    pub token: Option<Secret>,
    /// `ELASTICIO_OBJECT_STORAGE_SIZE_THRESHOLD` (default 1048576 bytes).
    pub size_threshold: usize,
}

/// Platform API retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRetry {
    /// `ELASTICIO_API_REQUEST_RETRY_ATTEMPTS` (default 3). `0` is accepted (no retry).
    pub attempts: u32,
    /// `ELASTICIO_API_REQUEST_RETRY_DELAY` (default 100 ms).
    pub delay: Duration,
}

impl ApiRetry {
    /// The policy as run: `1 + attempts` attempts, `delay` apart (Sailor's fixed delay).
    pub fn policy(&self) -> Policy {
        Policy::new(Backoff::fixed(self.delay)).with_max_attempts(self.attempts.saturating_add(1))
    }
}

/// Extra values copied into every outgoing message's headers
/// (`ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS`): `(headerName, value)` with the header name
/// camel-cased from the variable name without its `ELASTICIO_` prefix, like Node's
/// `_.camelCase`. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdditionalHeaders(pub Vec<(String, String)>);

impl fmt::Debug for AdditionalHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// Context fields the platform expects on every log line (reference §7 "Logging").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContext {
    /// `ELASTICIO_API_USERNAME` (a user name, not a secret).
    pub api_username: Option<String>,
    /// `ELASTICIO_COMP_NAME`.
    pub comp_name: Option<String>,
    /// `ELASTICIO_CONTRACT_ID`.
    pub contract_id: Option<String>,
    /// `ELASTICIO_EXEC_TYPE`.
    pub exec_type: Option<String>,
    /// `ELASTICIO_EXECUTION_RESULT_ID`.
    pub execution_result_id: Option<String>,
    /// `ELASTICIO_FLOW_VERSION`.
    pub flow_version: Option<String>,
    /// `ELASTICIO_TASK_USER_EMAIL`.
    pub task_user_email: Option<String>,
    /// `ELASTICIO_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `LOG_LEVEL` (no prefix; default `info`).
    pub level: String,
}

/// Where a worker persists rotated keys (`DECKHAND_UPDATE_KEYS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateKeysMode {
    /// `amqp` (default): an `updateKeys` event on the flow's exchange, with publisher confirms.
    #[default]
    Amqp,
    /// `api`: a PUT to the platform's accounts API, as the official Node runtime does (needs
    /// `ELASTICIO_API_URI` and an `_account` in the step configuration).
    Api,
    /// `both`: the event and the PUT.
    Both,
}

impl fmt::Display for UpdateKeysMode {
    /// The value of `DECKHAND_UPDATE_KEYS` that selects this mode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Amqp => "amqp",
            Self::Api => "api",
            Self::Both => "both",
        })
    }
}

/// Settings of a message-processing worker container.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Who this step is.
    pub identity: StepIdentity,
    /// Where the step definition comes from.
    pub step_source: StepSource,
    /// Broker settings.
    pub amqp: AmqpSettings,
    /// The message cipher built from `ELASTICIO_MESSAGE_CRYPTO_PASSWORD` and
    /// `ELASTICIO_MESSAGE_CRYPTO_IV` (both required; the IV must be exactly 16 bytes).
    pub cipher: MessageCipher,
    /// `ELASTICIO_PROTOCOL_VERSION` (default 1): encoding of outgoing data messages.
    pub protocol_version: ProtocolVersion,
    /// `ELASTICIO_INPUT_FORMAT` (default `default`).
    pub input_format: InputFormat,
    /// Rebound settings.
    pub rebound: ReboundSettings,
    /// Outgoing throttles.
    pub rate_limits: RateLimits,
    /// `ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT` (default 10485760 bytes): largest encrypted
    /// outgoing data/httpReply body. `0` is rejected.
    pub outgoing_message_size_limit: usize,
    /// `ELASTICIO_NO_ERROR_REPLIES` (default false): do not send errors to `reply_to`.
    pub no_error_replies: bool,
    /// `ELASTICIO_NO_SELF_PASSTRHOUGH` (sic, default false): passthrough stores the *incoming*
    /// message under the incoming `stepId` instead of the outgoing one under our own.
    pub no_self_passthrough: bool,
    /// Object-storage offload settings.
    pub object_storage: ObjectStorageSettings,
    /// `ELASTICIO_STARTUP_REQUIRED` (default false): run the `startup` hook.
    pub startup_required: bool,
    /// Platform API retries.
    pub api_retry: ApiRetry,
    /// `ELASTICIO_COMPONENT_PATH` (default empty).
    pub component_path: String,
    /// `ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS`.
    pub additional_headers: AdditionalHeaders,
    /// Log context.
    pub log: LogContext,
    /// Settings that were accepted but adjusted or are risky; logged as warnings at start-up.
    pub notices: Vec<ConfigProblem>,
    /// The shared credential store (`DECKHAND_STORE_URL` set), or `None` for today's
    /// behaviour (keys from the step, rotations as `updateKeys`).
    pub credential_store: Option<CredentialStoreSettings>,
    /// `DECKHAND_UPDATE_KEYS` (default `amqp`): where rotated keys are persisted.
    pub update_keys: UpdateKeysMode,
    /// `DECKHAND_SHUTDOWN_TIMEOUT_SECS` (default 30): how long a stopping worker waits for
    /// messages in flight before leaving them to the broker to redeliver. `0` does not wait.
    pub shutdown_timeout: Duration,
    /// `DECKHAND_METRICS_ADDR` (default unset): where the worker serves its metrics and health
    /// endpoints; `None` turns them (and the counting) off.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Where a worker keeps its credential when several workers share it (Deckhand addition):
/// `DECKHAND_STORE_URL` (`postgres://…`), `DECKHAND_STORE_KEYS` (required with it; see
/// [`deckhand_store::STORE_KEYS_ENV`]), `DECKHAND_STORE_SCHEMA` (default `deckhand`),
/// `DECKHAND_STORE_LEASE_MS` (default 15000, at least 500).
#[derive(Debug, Clone)]
pub struct CredentialStoreSettings {
    /// The PostgreSQL URL (may hold a password).
    pub url: Secret,
    /// The encryption keys.
    pub keys: deckhand_store::KeyRing,
    /// The schema.
    pub schema: String,
    /// The lease.
    pub lease: Duration,
}

impl CredentialStoreSettings {
    /// The store's options.
    pub fn options(&self) -> deckhand_store::StoreOptions {
        deckhand_store::StoreOptions {
            schema: self.schema.clone(),
            lease: self.lease,
            ..deckhand_store::StoreOptions::default()
        }
    }
}

/// Settings of a shutdown-hook container (`ELASTICIO_HOOK_SHUTDOWN` set): no AMQP, no crypto.
#[derive(Debug, Clone)]
pub struct ShutdownHookConfig {
    /// Who this step is.
    pub identity: StepIdentity,
    /// Where the step definition comes from.
    pub step_source: StepSource,
    /// Platform API retries.
    pub api_retry: ApiRetry,
    /// `ELASTICIO_COMPONENT_PATH`.
    pub component_path: String,
    /// Log context.
    pub log: LogContext,
}

/// What kind of container this is, decided by `ELASTICIO_HOOK_SHUTDOWN` as in Sailor, where
/// the AMQP and crypto variables are required only when it is not set.
#[derive(Debug, Clone)]
pub enum LaunchConfig {
    /// Consume and process messages.
    Worker(Box<RuntimeConfig>),
    /// Run the component's `shutdown` hook and exit.
    ShutdownHook(Box<ShutdownHookConfig>),
}

impl LaunchConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(env_vars()?)
    }

    /// Reads the given variables (tests, embedding).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut r = Reader::new(vars);
        let hook_shutdown = r.bool_or("HOOK_SHUTDOWN", false);
        if hook_shutdown {
            let identity = r.identity();
            let step_source = r.step_source();
            let api_retry = r.api_retry();
            let component_path = r.optional("COMPONENT_PATH").unwrap_or_default();
            let log = r.log_context();
            r.finish()?;
            Ok(Self::ShutdownHook(Box::new(ShutdownHookConfig {
                identity,
                step_source,
                api_retry,
                component_path,
                log,
            })))
        } else {
            RuntimeConfig::read(r).map(|c| Self::Worker(Box::new(c)))
        }
    }
}

impl RuntimeConfig {
    /// Reads the process environment. Non-UTF-8 `ELASTICIO_*` values are reported as problems.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(env_vars()?)
    }

    /// Reads the given variables. Every `ELASTICIO_*` variable of reference §4.1 is read with
    /// Node's name and default; all problems are reported together.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::read(Reader::new(vars))
    }

    fn read(mut r: Reader) -> Result<Self, ConfigError> {
        let identity = r.identity();
        let step_source = r.step_source();

        let uris = r.broker_uris();
        let listen_messages_on = r.required_short("LISTEN_MESSAGES_ON");
        let publish_messages_to = r.required_short("PUBLISH_MESSAGES_TO");
        let data_routing_key = r.required_short("DATA_ROUTING_KEY");
        let error_routing_key = r.required_short("ERROR_ROUTING_KEY");
        let rebound_routing_key = r.required_short("REBOUND_ROUTING_KEY");
        let snapshot_routing_key = r.required_short("SNAPSHOT_ROUTING_KEY");
        let update_keys_routing_key = match r.optional_short("UPDATE_KEYS_ROUTING_KEY") {
            Some(key) => key,
            None => {
                let derived = derive_update_keys_routing_key(&data_routing_key);
                if derived.len() > MAX_SHORT_STRING {
                    r.problem(
                        "UPDATE_KEYS_ROUTING_KEY",
                        format!(
                            "is not set and the key derived from ELASTICIO_DATA_ROUTING_KEY is longer than {MAX_SHORT_STRING} bytes"
                        ),
                    );
                }
                derived
            }
        };

        let password = r.required("MESSAGE_CRYPTO_PASSWORD");
        let iv = r.required("MESSAGE_CRYPTO_IV");
        let cipher = match (&password, &iv) {
            (Some(password), Some(iv)) => match MessageCipher::new(password, iv) {
                Ok(c) => Some(c),
                Err(CryptoError::InvalidIvLength(n)) => {
                    r.problem(
                        "MESSAGE_CRYPTO_IV",
                        format!("must be exactly 16 bytes of UTF-8, got {n} bytes"),
                    );
                    None
                }
                Err(e) => {
                    r.problem("MESSAGE_CRYPTO_PASSWORD", e.to_string());
                    None
                }
            },
            _ => None,
        };

        let prefetch = r.number_or("RABBITMQ_PREFETCH_SAILOR", 1u16, 1);
        let publish_retry = PublishRetry {
            delay: r.millis_or("AMQP_PUBLISH_RETRY_DELAY", 100),
            max_delay: r.millis_or(
                "AMQP_PUBLISH_MAX_RETRY_DELAY",
                PublishRetry::DEFAULT_MAX_DELAY.as_millis() as u64,
            ),
            attempts: r.attempts("AMQP_PUBLISH_RETRY_ATTEMPTS"),
        };
        let mut notices = Vec::new();
        let mut publish_retry = publish_retry;
        if publish_retry.max_delay > PublishRetry::MAX_DELAY_CEILING {
            notices.push(ConfigProblem {
                var: format!("{PREFIX}AMQP_PUBLISH_MAX_RETRY_DELAY"),
                reason: format!(
                    "{} ms is held to {} ms, so a worker resumes soon after a full queue has room",
                    publish_retry.max_delay.as_millis(),
                    PublishRetry::MAX_DELAY_CEILING.as_millis()
                ),
            });
            publish_retry.max_delay = PublishRetry::MAX_DELAY_CEILING;
        }
        let persistent_messages = r.bool_or("AMQP_PERSISTENT_MESSAGES", true);
        if !persistent_messages {
            notices.push(ConfigProblem {
                var: format!("{PREFIX}AMQP_PERSISTENT_MESSAGES"),
                reason: "is false: outputs are transient and a broker restart loses those not yet consumed".into(),
            });
        }
        let reconnect_attempts = r.number_or("AMQP_RECONNECT_ATTEMPTS", 3u32, 0);
        let reconnect_timeout = r.millis_or("AMQP_RECONNECT_TIMEOUT", 100);
        let process_amqp_drain = r.bool_or("PROCESS_AMQP_DRAIN", true);
        let wait_messages_timeout = r.millis_or("WAIT_MESSAGES_TIMEOUT", 50);

        let protocol_version = match r.optional("PROTOCOL_VERSION") {
            None => ProtocolVersion::V1,
            Some(v) => match v
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(ProtocolVersion::from_number)
            {
                Some(pv) => pv,
                None => {
                    r.problem("PROTOCOL_VERSION", "must be 1 or 2");
                    ProtocolVersion::V1
                }
            },
        };
        let input_format = match r.optional("INPUT_FORMAT").as_deref().map(str::trim) {
            None | Some("default") => InputFormat::Default,
            Some("error") => InputFormat::Error,
            Some(_) => {
                r.problem("INPUT_FORMAT", "must be `default` or `error`");
                InputFormat::Default
            }
        };
        let rebound = ReboundSettings {
            initial_expiration: r.millis_or("REBOUND_INITIAL_EXPIRATION", 15_000),
            limit: r.number_or("REBOUND_LIMIT", 20u32, 0),
        };
        let rate_limits = RateLimits {
            data: r.number_or("DATA_RATE_LIMIT", 10u32, 0),
            error: r.number_or("ERROR_RATE_LIMIT", 2u32, 0),
            snapshot: r.number_or("SNAPSHOT_RATE_LIMIT", 2u32, 0),
            interval: r.millis_or("RATE_INTERVAL", 100),
        };
        let outgoing_message_size_limit =
            r.number_or("OUTGOING_MESSAGE_SIZE_LIMIT", 10_485_760usize, 1);
        let no_error_replies = r.bool_or("NO_ERROR_REPLIES", false);
        let no_self_passthrough = r.bool_or("NO_SELF_PASSTRHOUGH", false);
        let object_storage = ObjectStorageSettings {
            emit_lightweight_message: r.bool_or("EMIT_LIGHTWEIGHT_MESSAGE", false),
            uri: r.optional("OBJECT_STORAGE_URI"),
            token: r.optional("OBJECT_STORAGE_TOKEN").map(Secret::new),
            size_threshold: r.number_or("OBJECT_STORAGE_SIZE_THRESHOLD", 1_048_576usize, 0),
        };
        let startup_required = r.bool_or("STARTUP_REQUIRED", false);
        // Read so that a malformed value is reported even in a worker container.
        let _hook_shutdown = r.bool_or("HOOK_SHUTDOWN", false);
        let api_retry = r.api_retry();
        let component_path = r.optional("COMPONENT_PATH").unwrap_or_default();
        let additional_headers = r.additional_headers();
        let log = r.log_context();
        let credential_store = r.credential_store();
        let update_keys = r.update_keys_mode(&step_source);
        let shutdown_timeout = r.shutdown_timeout();
        let metrics_addr = r.metrics_addr();

        r.finish()?;
        // `finish` returned Ok, so every required value was present and valid; the
        // placeholders below are unreachable but keep this free of `unwrap`.
        let (false, Some(cipher)) = (uris.is_empty(), cipher) else {
            return Err(ConfigError {
                problems: vec![ConfigProblem {
                    var: format!("{PREFIX}AMQP_URI"),
                    reason: "internal error: missing value not reported".into(),
                }],
            });
        };
        Ok(Self {
            identity,
            step_source,
            amqp: AmqpSettings {
                uris,
                listen_messages_on,
                publish_messages_to,
                data_routing_key,
                error_routing_key,
                rebound_routing_key,
                snapshot_routing_key,
                update_keys_routing_key,
                prefetch,
                publish_retry,
                persistent_messages,
                reconnect_attempts,
                reconnect_timeout,
                process_amqp_drain,
                wait_messages_timeout,
            },
            cipher,
            protocol_version,
            input_format,
            rebound,
            rate_limits,
            outgoing_message_size_limit,
            no_error_replies,
            no_self_passthrough,
            object_storage,
            startup_required,
            api_retry,
            component_path,
            additional_headers,
            log,
            notices,
            credential_store,
            update_keys,
            shutdown_timeout,
            metrics_addr,
        })
    }

    /// The `(field, value)` pairs Sailor puts on every log line: the env var names themselves
    /// (`ELASTICIO_FLOW_ID`, …) plus `tag` = flow id (sailor-nodejs `lib/logging.js`).
    pub fn log_fields(&self) -> Vec<(&'static str, String)> {
        log_fields(&self.identity, &self.log)
    }
}

impl ShutdownHookConfig {
    /// Log context fields, as [`RuntimeConfig::log_fields`].
    pub fn log_fields(&self) -> Vec<(&'static str, String)> {
        log_fields(&self.identity, &self.log)
    }
}

fn log_fields(id: &StepIdentity, log: &LogContext) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("ELASTICIO_COMP_ID", id.comp_id.clone()),
        ("ELASTICIO_CONTAINER_ID", id.container_id.clone()),
        ("ELASTICIO_EXEC_ID", id.exec_id.clone()),
        ("ELASTICIO_FLOW_ID", id.flow_id.clone()),
        ("ELASTICIO_FUNCTION", id.function.clone()),
        ("ELASTICIO_STEP_ID", id.step_id.clone()),
        ("ELASTICIO_USER_ID", id.user_id.clone()),
        ("ELASTICIO_WORKSPACE_ID", id.workspace_id.clone()),
        ("tag", id.flow_id.clone()),
    ];
    let optional = [
        ("ELASTICIO_API_USERNAME", &log.api_username),
        ("ELASTICIO_COMP_NAME", &log.comp_name),
        ("ELASTICIO_CONTRACT_ID", &log.contract_id),
        ("ELASTICIO_EXEC_TYPE", &log.exec_type),
        ("ELASTICIO_EXECUTION_RESULT_ID", &log.execution_result_id),
        ("ELASTICIO_FLOW_VERSION", &log.flow_version),
        ("ELASTICIO_TASK_USER_EMAIL", &log.task_user_email),
        ("ELASTICIO_TENANT_ID", &log.tenant_id),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            fields.push((name, v.clone()));
        }
    }
    fields
}

/// The default update-keys routing key for a data routing key (see
/// [`AmqpSettings::update_keys_routing_key`]).
pub(crate) fn derive_update_keys_routing_key(data_routing_key: &str) -> String {
    match data_routing_key.strip_suffix(".message") {
        Some(stem) => format!("{stem}.update_keys"),
        None => format!("{data_routing_key}.update_keys"),
    }
}

/// Lodash-style `camelCase` for environment variable names: words split on non-alphanumerics
/// and lower→upper case changes; first word lower-case, the rest capitalised.
pub(crate) fn camel_case(name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        current.push(ch);
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = String::new();
    for (i, word) in words.iter().enumerate() {
        let lower = word.to_lowercase();
        if i == 0 {
            out.push_str(&lower);
        } else {
            let mut chars = lower.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        }
    }
    out
}

/// The host name, for connection names (Node: `os.hostname()`); `HOSTNAME` only when the
/// kernel's and `/etc/hostname` cannot be read.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "deckhand".to_owned())
}

fn env_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in std::env::vars_os() {
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => vars.push((k, v)),
            (Ok(k), Err(_)) if k.starts_with(PREFIX) || k.starts_with("DECKHAND_") => problems
                .push(ConfigProblem {
                    var: k,
                    reason: "is not valid UTF-8".into(),
                }),
            // Variables we do not read may hold anything.
            (Ok(_), Err(_)) | (Err(_), _) => {}
        }
    }
    if problems.is_empty() {
        Ok(vars)
    } else {
        Err(ConfigError { problems })
    }
}

/// Reads variables and collects every problem instead of stopping at the first.
struct Reader {
    vars: HashMap<String, String>,
    problems: Vec<ConfigProblem>,
}

/// Numbers Node reads with `parseInt`.
trait EnvNumber: Copy + FromStr + PartialOrd + fmt::Display {}
impl EnvNumber for u16 {}
impl EnvNumber for u32 {}
impl EnvNumber for u64 {}
impl EnvNumber for usize {}

impl Reader {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            vars: vars.into_iter().collect(),
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, key: &str, reason: impl Into<String>) {
        let var = if key == STEP_FILE_VAR || key == "LOG_LEVEL" || key.starts_with("DECKHAND_") {
            key.to_owned()
        } else {
            format!("{PREFIX}{key}")
        };
        self.problems.push(ConfigProblem {
            var,
            reason: reason.into(),
        });
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    /// The raw value; an empty value counts as unset, as Node's `if (!envVars[name])`.
    fn optional(&self, key: &str) -> Option<String> {
        self.vars
            .get(&format!("{PREFIX}{key}"))
            .filter(|v| !v.is_empty())
            .cloned()
    }

    fn required(&mut self, key: &str) -> Option<String> {
        let value = self.optional(key);
        if value.is_none() {
            self.problem(key, "is missing");
        }
        value
    }

    fn required_string(&mut self, key: &str) -> String {
        self.required(key).unwrap_or_default()
    }

    /// A required exchange, queue or routing key, which AMQP limits to 255 bytes.
    fn required_short(&mut self, key: &str) -> String {
        let value = self.required_string(key);
        self.check_short(key, &value);
        value
    }

    fn optional_short(&mut self, key: &str) -> Option<String> {
        let value = self.optional(key)?;
        self.check_short(key, &value);
        Some(value)
    }

    fn check_short(&mut self, key: &str, value: &str) {
        if value.len() > MAX_SHORT_STRING {
            self.problem(
                key,
                format!(
                    "is {} bytes long; AMQP allows at most {MAX_SHORT_STRING}",
                    value.len()
                ),
            );
        }
    }

    fn number_or<T: EnvNumber>(&mut self, key: &str, default: T, min: T) -> T {
        let Some(raw) = self.optional(key) else {
            return default;
        };
        match raw.trim().parse::<T>() {
            Ok(n) if n >= min => n,
            Ok(_) => {
                self.problem(key, format!("must be at least {min}"));
                default
            }
            Err(_) => {
                self.problem(key, "must be a non-negative whole number");
                default
            }
        }
    }

    fn millis_or(&mut self, key: &str, default_ms: u64) -> Duration {
        let raw = self.optional(key);
        match raw {
            None => Duration::from_millis(default_ms),
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    self.problem(key, "must be a whole number of milliseconds");
                    Duration::from_millis(default_ms)
                }
            },
        }
    }

    fn attempts(&mut self, key: &str) -> Option<u32> {
        let raw = self.optional(key)?;
        let trimmed = raw.trim();
        if trimmed.eq_ignore_ascii_case("infinity") {
            return None;
        }
        match trimmed.parse::<u32>() {
            Ok(0) => {
                self.problem(key, "must be at least 1 (or `Infinity`)");
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(key, "must be a positive whole number or `Infinity`");
                None
            }
        }
    }

    fn bool_or(&mut self, key: &str, default: bool) -> bool {
        let Some(raw) = self.optional(key) else {
            return default;
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.problem(
                    key,
                    "must be true/false (also accepted: 1/0, yes/no, on/off)",
                );
                default
            }
        }
    }

    /// `ELASTICIO_AMQP_URI` then `ELASTICIO_AMQP_URIS`; empty after reporting a problem.
    fn broker_uris(&mut self) -> Vec<AmqpUri> {
        let single = self.optional("AMQP_URI");
        let list = self.optional("AMQP_URIS");
        if single.is_none() && list.as_deref().is_none_or(|l| l.trim().is_empty()) {
            self.problem(
                "AMQP_URI",
                "is missing (set it, or ELASTICIO_AMQP_URIS for a list of broker nodes)",
            );
            return Vec::new();
        }
        let mut uris: Vec<AmqpUri> = Vec::new();
        let mut failed = false;
        let entries = single.iter().map(|raw| ("AMQP_URI", 0, raw.trim())).chain(
            list.iter()
                .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
                .filter(|e| !e.is_empty())
                .enumerate()
                .map(|(i, raw)| ("AMQP_URIS", i + 1, raw)),
        );
        for (var, position, raw) in entries {
            let which = if var == "AMQP_URIS" {
                format!("entry {position} ")
            } else {
                String::new()
            };
            match AmqpUri::parse(raw) {
                Ok(uri) if uri.parsed().scheme == AMQPScheme::AMQPS => {
                    self.problem(
                        var,
                        format!(
                            "{which}uses amqps://, but this build of Deckhand has no TLS support"
                        ),
                    );
                    failed = true;
                }
                Ok(uri) => {
                    if !uris.iter().any(|u| u.expose() == uri.expose()) {
                        uris.push(uri);
                    }
                }
                Err(reason) => {
                    self.problem(var, format!("{which}{reason}"));
                    failed = true;
                }
            }
        }
        if failed { Vec::new() } else { uris }
    }

    fn identity(&mut self) -> StepIdentity {
        StepIdentity {
            flow_id: self.required_string("FLOW_ID"),
            exec_id: self.required_string("EXEC_ID"),
            step_id: self.required_string("STEP_ID"),
            container_id: self.required_string("CONTAINER_ID"),
            workspace_id: self.required_string("WORKSPACE_ID"),
            user_id: self.required_string("USER_ID"),
            comp_id: self.required_string("COMP_ID"),
            function: self.required_string("FUNCTION"),
        }
    }

    fn step_source(&mut self) -> StepSource {
        match self.optional("API_URI") {
            Some(raw) => {
                let uri = match url::Url::parse(raw.trim()) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(u),
                    _ => {
                        self.problem("API_URI", "must be an absolute http(s) URL");
                        None
                    }
                };
                let username = self.optional("API_USERNAME");
                if username.is_none() {
                    self.problem(
                        "API_USERNAME",
                        "is missing (required with ELASTICIO_API_URI)",
                    );
                }
                let key = self.optional("API_KEY");
                if key.is_none() {
                    self.problem("API_KEY", "is missing (required with ELASTICIO_API_URI)");
                }
                match uri {
                    Some(uri) => StepSource::Api {
                        uri,
                        username: username.unwrap_or_default(),
                        key: Secret::new(key.unwrap_or_default()),
                    },
                    None => StepSource::File(Default::default()),
                }
            }
            None => match self.vars.get(STEP_FILE_VAR).filter(|v| !v.is_empty()) {
                Some(path) => StepSource::File(path.into()),
                None => {
                    self.problem(
                        STEP_FILE_VAR,
                        "is missing: without ELASTICIO_API_URI the step definition is read from the file it names",
                    );
                    StepSource::File(Default::default())
                }
            },
        }
    }

    fn api_retry(&mut self) -> ApiRetry {
        ApiRetry {
            attempts: self.number_or("API_REQUEST_RETRY_ATTEMPTS", 3u32, 0),
            delay: self.millis_or("API_REQUEST_RETRY_DELAY", 100),
        }
    }

    fn additional_headers(&mut self) -> AdditionalHeaders {
        let Some(list) = self.optional("ADDITIONAL_VARS_FOR_HEADERS") else {
            return AdditionalHeaders::default();
        };
        let mut headers = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let key = name.strip_prefix(PREFIX).unwrap_or(name);
            let header = camel_case(key);
            // Node copies `envVars[name]`; an unset variable becomes `undefined`, which the
            // AMQP client drops from the header table.
            if let Some(value) = self.vars.get(name) {
                if header.is_empty() || header.len() > MAX_SHORT_STRING {
                    self.problem(
                        "ADDITIONAL_VARS_FOR_HEADERS",
                        format!("`{name}` does not give a usable header name"),
                    );
                    continue;
                }
                headers.push((header, value.clone()));
            }
        }
        AdditionalHeaders(headers)
    }

    /// A Deckhand variable (no prefix); empty counts as unset.
    fn deckhand(&self, var: &str) -> Option<String> {
        self.vars.get(var).filter(|v| !v.is_empty()).cloned()
    }

    fn update_keys_mode(&mut self, step_source: &StepSource) -> UpdateKeysMode {
        let mode = match self.deckhand(UPDATE_KEYS_VAR) {
            None => return UpdateKeysMode::Amqp,
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "amqp" => UpdateKeysMode::Amqp,
                "api" => UpdateKeysMode::Api,
                "both" => UpdateKeysMode::Both,
                _ => {
                    self.problem(UPDATE_KEYS_VAR, "must be `amqp`, `api` or `both`");
                    return UpdateKeysMode::Amqp;
                }
            },
        };
        if mode != UpdateKeysMode::Amqp && !matches!(step_source, StepSource::Api { .. }) {
            self.problem(
                UPDATE_KEYS_VAR,
                "`api` and `both` put the keys to the platform API: set ELASTICIO_API_URI",
            );
        }
        mode
    }

    fn shutdown_timeout(&mut self) -> Duration {
        const DEFAULT: Duration = Duration::from_secs(30);
        match self.deckhand(SHUTDOWN_TIMEOUT_VAR) {
            None => DEFAULT,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => {
                    self.problem(SHUTDOWN_TIMEOUT_VAR, "must be a whole number of seconds");
                    DEFAULT
                }
            },
        }
    }

    /// An IP address and port: a host name would need a resolver at start-up and could
    /// resolve to several addresses, and the endpoints are for a scraper next to the worker.
    fn metrics_addr(&mut self) -> Option<std::net::SocketAddr> {
        let raw = self.deckhand(METRICS_ADDR_VAR)?;
        match raw.trim().parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    METRICS_ADDR_VAR,
                    format!(
                        "must be an IP address and a port, e.g. `127.0.0.1:9464` or `0.0.0.0:9464`, got `{}`",
                        raw.trim()
                    ),
                );
                None
            }
        }
    }

    fn credential_store(&mut self) -> Option<CredentialStoreSettings> {
        use deckhand_store::{KeyRing, STORE_KEYS_ENV, STORE_URL_ENV};
        let get = |key: &str| self.vars.get(key).filter(|v| !v.is_empty()).cloned();
        let url = get(STORE_URL_ENV)?;
        let (keys, schema, lease) = (
            get(STORE_KEYS_ENV),
            get("DECKHAND_STORE_SCHEMA"),
            get("DECKHAND_STORE_LEASE_MS"),
        );
        let mut ok = true;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
            || url.parse::<sqlx::postgres::PgConnectOptions>().is_err()
        {
            // Never echo the URL: it may carry a password.
            self.problem(STORE_URL_ENV, "is not a postgres:// URL");
            ok = false;
        }
        let keys = match keys.map(|spec| KeyRing::parse(&spec)) {
            Some(Ok(ring)) => Some(ring),
            Some(Err(e)) => {
                self.problem(STORE_KEYS_ENV, e.to_string());
                None
            }
            None => {
                self.problem(
                    STORE_KEYS_ENV,
                    format!("is missing; {STORE_URL_ENV} needs it"),
                );
                None
            }
        };
        let schema = schema.unwrap_or_else(|| "deckhand".into());
        if schema.is_empty()
            || schema.len() > 63
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            self.problem(
                "DECKHAND_STORE_SCHEMA",
                "use 1 to 63 lowercase letters, digits and underscores",
            );
            ok = false;
        }
        let lease = match lease.map(|v| v.trim().parse::<u64>()) {
            None => Duration::from_secs(15),
            Some(Ok(ms)) if ms >= 500 => Duration::from_millis(ms),
            Some(_) => {
                self.problem(
                    "DECKHAND_STORE_LEASE_MS",
                    "must be a whole number of milliseconds, at least 500",
                );
                ok = false;
                Duration::ZERO
            }
        };
        Some(CredentialStoreSettings {
            url: Secret::new(url),
            keys: keys.filter(|_| ok)?,
            schema,
            lease,
        })
    }

    fn log_context(&mut self) -> LogContext {
        LogContext {
            api_username: self.optional("API_USERNAME"),
            comp_name: self.optional("COMP_NAME"),
            contract_id: self.optional("CONTRACT_ID"),
            exec_type: self.optional("EXEC_TYPE"),
            execution_result_id: self.optional("EXECUTION_RESULT_ID"),
            flow_version: self.optional("FLOW_VERSION"),
            task_user_email: self.optional("TASK_USER_EMAIL"),
            tenant_id: self.optional("TENANT_ID"),
            level: self
                .vars
                .get("LOG_LEVEL")
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| "info".to_owned()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PASSWORD: &str = "testCryptoPassword";
    pub(crate) const AMQP_PASSWORD: &str = "s3cr3t-amqp-pw";
    const API_KEY: &str = "api-key-0123456789";

    /// A complete, valid worker environment.
    pub(crate) fn base_env() -> Vec<(String, String)> {
        [
            ("ELASTICIO_FLOW_ID", "5559edd38968ec0736000003"),
            ("ELASTICIO_EXEC_ID", "some-exec-id"),
            ("ELASTICIO_STEP_ID", "step_1"),
            (
                "ELASTICIO_CONTAINER_ID",
                "dc1c8c3f-f9cb-49e1-a6b8-716af9e15948",
            ),
            ("ELASTICIO_WORKSPACE_ID", "5559edd38968ec073600683"),
            ("ELASTICIO_USER_ID", "5559edd38968ec0736000002"),
            ("ELASTICIO_COMP_ID", "5559edd38968ec0736000456"),
            ("ELASTICIO_FUNCTION", "list"),
            (
                "ELASTICIO_AMQP_URI",
                "amqp://guest:s3cr3t-amqp-pw@127.0.0.1:5672/%2f",
            ),
            (
                "ELASTICIO_LISTEN_MESSAGES_ON",
                "5559edd38968ec0736000003:step_1:1432205514864:messages",
            ),
            (
                "ELASTICIO_PUBLISH_MESSAGES_TO",
                "userexchange:5527f0ea43238e5d5f000001",
            ),
            (
                "ELASTICIO_DATA_ROUTING_KEY",
                "5559edd38968ec0736000003.step_1.1432205514864.message",
            ),
            (
                "ELASTICIO_ERROR_ROUTING_KEY",
                "5559edd38968ec0736000003.step_1.1432205514864.error",
            ),
            (
                "ELASTICIO_REBOUND_ROUTING_KEY",
                "5559edd38968ec0736000003.step_1.1432205514864.rebound",
            ),
            (
                "ELASTICIO_SNAPSHOT_ROUTING_KEY",
                "5559edd38968ec0736000003.step_1.1432205514864.snapshot",
            ),
            ("ELASTICIO_MESSAGE_CRYPTO_IV", "iv=any16_symbols"),
            ("ELASTICIO_MESSAGE_CRYPTO_PASSWORD", PASSWORD),
            ("ELASTICIO_API_URI", "https://api.example.invalid"),
            ("ELASTICIO_API_USERNAME", "task-user@example.invalid"),
            ("ELASTICIO_API_KEY", API_KEY),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    pub(crate) fn with(mut env: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v.to_owned()));
        env
    }

    fn without(mut env: Vec<(String, String)>, k: &str) -> Vec<(String, String)> {
        env.retain(|(key, _)| key != k);
        env
    }

    fn err(env: Vec<(String, String)>) -> ConfigError {
        RuntimeConfig::from_vars(env).expect_err("config must be rejected")
    }

    #[test]
    fn defaults_match_the_node_runtime() {
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        assert_eq!(c.identity.flow_id, "5559edd38968ec0736000003");
        assert_eq!(c.identity.function, "list");
        assert_eq!(c.amqp.prefetch, 1);
        assert_eq!(c.rebound.initial_expiration, Duration::from_millis(15_000));
        assert_eq!(c.rebound.limit, 20);
        assert_eq!(
            c.rate_limits,
            RateLimits {
                data: 10,
                error: 2,
                snapshot: 2,
                interval: Duration::from_millis(100)
            }
        );
        assert!(c.amqp.process_amqp_drain);
        assert_eq!(c.amqp.publish_retry, PublishRetry::default());
        assert_eq!(c.amqp.publish_retry.delay, Duration::from_millis(100));
        assert_eq!(c.amqp.publish_retry.max_delay, Duration::from_secs(5));
        assert_eq!(c.amqp.publish_retry.attempts, None);
        // Deliberately not Node's default (see the module docs).
        assert!(c.amqp.persistent_messages);
        assert_eq!(c.amqp.uris.len(), 1);
        assert!(c.notices.is_empty(), "{:?}", c.notices);
        assert_eq!(c.amqp.reconnect_attempts, 3);
        assert_eq!(c.amqp.reconnect_timeout, Duration::from_millis(100));
        assert_eq!(c.amqp.wait_messages_timeout, Duration::from_millis(50));
        assert_eq!(c.outgoing_message_size_limit, 10_485_760);
        assert_eq!(c.protocol_version, ProtocolVersion::V1);
        assert_eq!(c.input_format, InputFormat::Default);
        assert!(!c.no_error_replies);
        assert!(!c.no_self_passthrough);
        assert!(!c.object_storage.emit_lightweight_message);
        assert_eq!(c.object_storage.size_threshold, 1_048_576);
        assert!(!c.startup_required);
        assert_eq!(
            c.api_retry,
            ApiRetry {
                attempts: 3,
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(c.component_path, "");
        assert_eq!(c.log.level, "info");
        assert_eq!(
            c.amqp.update_keys_routing_key,
            "5559edd38968ec0736000003.step_1.1432205514864.update_keys"
        );
        assert!(matches!(c.step_source, StepSource::Api { .. }));
    }

    /// Issue 13 (3): outputs are persistent unless the platform explicitly asks for transient
    /// ones (a broker restart otherwise loses outputs whose inputs were already acked).
    #[test]
    fn outputs_are_persistent_unless_transient_is_asked_for() {
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        assert!(c.amqp.persistent_messages, "persistent by default");
        let c = RuntimeConfig::from_vars(with(
            base_env(),
            "ELASTICIO_AMQP_PERSISTENT_MESSAGES",
            "false",
        ))
        .unwrap();
        assert!(!c.amqp.persistent_messages, "transient when asked for");
        assert!(
            c.notices
                .iter()
                .any(|n| n.var == "ELASTICIO_AMQP_PERSISTENT_MESSAGES"),
            "a start-up warning: {:?}",
            c.notices
        );
    }

    /// Issue 13 (6): a nacked publish (full queue) backs off for seconds, not minutes.
    #[test]
    fn publish_backoff_is_capped_in_seconds() {
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        let retry = c.amqp.publish_retry;
        assert!(
            retry.max_delay <= Duration::from_secs(5),
            "default cap {:?}",
            retry.max_delay
        );
        assert!(retry.delay_after(30) <= Duration::from_secs(5));
        // Node's five minutes, set explicitly, is held to the ceiling.
        let c = RuntimeConfig::from_vars(with(
            base_env(),
            "ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY",
            "300000",
        ))
        .unwrap();
        assert_eq!(
            c.amqp.publish_retry.max_delay,
            PublishRetry::MAX_DELAY_CEILING
        );
        assert!(PublishRetry::MAX_DELAY_CEILING <= Duration::from_secs(60));
        assert!(
            c.notices
                .iter()
                .any(|n| n.var == "ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY"),
            "{:?}",
            c.notices
        );
    }

    #[test]
    fn every_missing_variable_is_reported_at_once() {
        let e = RuntimeConfig::from_vars(Vec::new()).unwrap_err();
        let expected = [
            "ELASTICIO_FLOW_ID",
            "ELASTICIO_EXEC_ID",
            "ELASTICIO_STEP_ID",
            "ELASTICIO_CONTAINER_ID",
            "ELASTICIO_WORKSPACE_ID",
            "ELASTICIO_USER_ID",
            "ELASTICIO_COMP_ID",
            "ELASTICIO_FUNCTION",
            "ELASTICIO_AMQP_URI",
            "ELASTICIO_LISTEN_MESSAGES_ON",
            "ELASTICIO_PUBLISH_MESSAGES_TO",
            "ELASTICIO_DATA_ROUTING_KEY",
            "ELASTICIO_ERROR_ROUTING_KEY",
            "ELASTICIO_REBOUND_ROUTING_KEY",
            "ELASTICIO_SNAPSHOT_ROUTING_KEY",
            "ELASTICIO_MESSAGE_CRYPTO_IV",
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD",
            STEP_FILE_VAR,
        ];
        for var in expected {
            assert!(e.mentions(var), "{var} not reported in:\n{e}");
        }
        assert_eq!(e.problems.len(), expected.len(), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("invalid runtime configuration (18 problems):"),
            "{text}"
        );
        assert!(text.contains("ELASTICIO_FLOW_ID: is missing"), "{text}");
    }

    #[test]
    fn empty_values_count_as_missing() {
        let e = err(with(base_env(), "ELASTICIO_STEP_ID", ""));
        assert_eq!(e.problems.len(), 1);
        assert!(e.mentions("ELASTICIO_STEP_ID"));
    }

    #[test]
    fn every_invalid_value_is_reported_with_its_reason() {
        let mut env = base_env();
        for (k, v) in [
            ("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "abc"),
            ("ELASTICIO_REBOUND_LIMIT", "-1"),
            ("ELASTICIO_REBOUND_INITIAL_EXPIRATION", "1e3"),
            ("ELASTICIO_PROTOCOL_VERSION", "3"),
            ("ELASTICIO_INPUT_FORMAT", "xml"),
            ("ELASTICIO_AMQP_PERSISTENT_MESSAGES", "maybe"),
            ("ELASTICIO_MESSAGE_CRYPTO_IV", "too-short"),
            ("ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS", "0"),
            ("ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT", "0"),
            ("ELASTICIO_DATA_RATE_LIMIT", "12abc"),
        ] {
            env = with(env, k, v);
        }
        let e = err(env);
        assert_eq!(e.problems.len(), 10, "{e}");
        let reason = |var: &str| {
            e.problems
                .iter()
                .find(|p| p.var == var)
                .map(|p| p.reason.clone())
                .unwrap_or_else(|| panic!("{var} not reported in {e}"))
        };
        assert_eq!(
            reason("ELASTICIO_RABBITMQ_PREFETCH_SAILOR"),
            "must be a non-negative whole number"
        );
        assert_eq!(reason("ELASTICIO_PROTOCOL_VERSION"), "must be 1 or 2");
        assert_eq!(
            reason("ELASTICIO_INPUT_FORMAT"),
            "must be `default` or `error`"
        );
        assert_eq!(
            reason("ELASTICIO_MESSAGE_CRYPTO_IV"),
            "must be exactly 16 bytes of UTF-8, got 9 bytes"
        );
        assert_eq!(
            reason("ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS"),
            "must be at least 1 (or `Infinity`)"
        );
        assert_eq!(
            reason("ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT"),
            "must be at least 1"
        );
        assert!(reason("ELASTICIO_AMQP_PERSISTENT_MESSAGES").starts_with("must be true/false"));
        assert_eq!(
            reason("ELASTICIO_REBOUND_INITIAL_EXPIRATION"),
            "must be a whole number of milliseconds"
        );
        let _ = reason("ELASTICIO_REBOUND_LIMIT");
        let _ = reason("ELASTICIO_DATA_RATE_LIMIT");
    }

    #[test]
    fn zero_means_zero_where_node_would_use_the_default() {
        let env = [
            ("ELASTICIO_REBOUND_LIMIT", "0"),
            ("ELASTICIO_REBOUND_INITIAL_EXPIRATION", "0"),
            ("ELASTICIO_AMQP_RECONNECT_ATTEMPTS", "0"),
            ("ELASTICIO_AMQP_PUBLISH_RETRY_DELAY", "0"),
            ("ELASTICIO_DATA_RATE_LIMIT", "0"),
            ("ELASTICIO_API_REQUEST_RETRY_ATTEMPTS", "0"),
        ]
        .into_iter()
        .fold(base_env(), |env, (k, v)| with(env, k, v));
        let c = RuntimeConfig::from_vars(env).unwrap();
        assert_eq!(c.rebound.limit, 0);
        assert_eq!(c.rebound.initial_expiration, Duration::ZERO);
        assert_eq!(c.amqp.reconnect_attempts, 0);
        assert_eq!(c.amqp.publish_retry.delay, Duration::ZERO);
        assert_eq!(c.rate_limits.data, 0);
        assert_eq!(c.api_retry.attempts, 0);
        // Prefetch 0 would mean "unlimited" to AMQP.
        assert!(
            err(with(base_env(), "ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "0"))
                .mentions("ELASTICIO_RABBITMQ_PREFETCH_SAILOR")
        );
    }

    #[test]
    fn numbers_and_attempts_parse() {
        let env = [
            ("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", " 8 "),
            ("ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS", "Infinity"),
            ("ELASTICIO_PROTOCOL_VERSION", "2"),
            ("ELASTICIO_INPUT_FORMAT", "error"),
        ]
        .into_iter()
        .fold(base_env(), |env, (k, v)| with(env, k, v));
        let c = RuntimeConfig::from_vars(env).unwrap();
        assert_eq!(c.amqp.prefetch, 8);
        assert_eq!(c.amqp.publish_retry.attempts, None);
        assert_eq!(c.protocol_version, ProtocolVersion::V2);
        assert_eq!(c.input_format, InputFormat::Error);
        let c = RuntimeConfig::from_vars(with(
            base_env(),
            "ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS",
            "5",
        ))
        .unwrap();
        assert_eq!(c.amqp.publish_retry.attempts, Some(5));
        // u16 range for prefetch.
        assert!(
            err(with(
                base_env(),
                "ELASTICIO_RABBITMQ_PREFETCH_SAILOR",
                "70000"
            ))
            .mentions("ELASTICIO_RABBITMQ_PREFETCH_SAILOR")
        );
    }

    #[test]
    fn booleans() {
        for (raw, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
        ] {
            let c = RuntimeConfig::from_vars(with(
                base_env(),
                "ELASTICIO_AMQP_PERSISTENT_MESSAGES",
                raw,
            ))
            .unwrap();
            assert_eq!(c.amqp.persistent_messages, expected, "{raw}");
        }
        // Empty = unset = default (Node: "" is false even where the default is true).
        let c =
            RuntimeConfig::from_vars(with(base_env(), "ELASTICIO_PROCESS_AMQP_DRAIN", "")).unwrap();
        assert!(c.amqp.process_amqp_drain);
        let c = RuntimeConfig::from_vars(with(base_env(), "ELASTICIO_NO_SELF_PASSTRHOUGH", "true"))
            .unwrap();
        assert!(c.no_self_passthrough);
    }

    #[test]
    fn credential_store_settings_are_validated_with_the_rest() {
        let key = "k1=BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        assert!(
            c.credential_store.is_none(),
            "without the URL, today's behaviour"
        );

        let env = with(
            with(
                base_env(),
                "DECKHAND_STORE_URL",
                "postgres://u:hunter2@127.0.0.1/test",
            ),
            "DECKHAND_STORE_KEYS",
            key,
        );
        let store = RuntimeConfig::from_vars(env)
            .unwrap()
            .credential_store
            .unwrap();
        assert_eq!(
            (store.schema.as_str(), store.lease),
            ("deckhand", Duration::from_secs(15))
        );
        assert_eq!(store.keys.current_key_id(), "k1");
        let debug = format!("{store:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("BwcHB"),
            "{debug}"
        );

        let bad = with(
            with(
                with(base_env(), "DECKHAND_STORE_URL", "mysql://u:hunter2@h/db"),
                "DECKHAND_STORE_LEASE_MS",
                "10",
            ),
            "DECKHAND_STORE_SCHEMA",
            "Bad-Schema",
        );
        let e = RuntimeConfig::from_vars(bad).unwrap_err();
        for var in [
            "DECKHAND_STORE_URL",
            "DECKHAND_STORE_KEYS",
            "DECKHAND_STORE_LEASE_MS",
            "DECKHAND_STORE_SCHEMA",
        ] {
            assert!(e.mentions(var), "{var} not reported in:\n{e}");
        }
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn worker_variables_with_bad_values_are_reported_not_defaulted() {
        // These two were read by the worker itself, where a typo silently meant the default.
        let bad = with(
            with(base_env(), "DECKHAND_UPDATE_KEYS", "apii"),
            "DECKHAND_SHUTDOWN_TIMEOUT_SECS",
            "30s",
        );
        let e = err(bad);
        for var in ["DECKHAND_UPDATE_KEYS", "DECKHAND_SHUTDOWN_TIMEOUT_SECS"] {
            assert!(e.mentions(var), "{var} not reported in:\n{e}");
        }
    }

    #[test]
    fn worker_variables_are_read_with_their_defaults() {
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        assert_eq!(
            (c.update_keys, c.shutdown_timeout),
            (UpdateKeysMode::Amqp, Duration::from_secs(30))
        );
        let env = with(
            with(base_env(), "DECKHAND_UPDATE_KEYS", " Both "),
            "DECKHAND_SHUTDOWN_TIMEOUT_SECS",
            "0",
        );
        let c = RuntimeConfig::from_vars(env).unwrap();
        assert_eq!(
            (c.update_keys, c.shutdown_timeout),
            (UpdateKeysMode::Both, Duration::ZERO)
        );
        // `api` without the platform API has nowhere to put the keys.
        let e = err(with(
            without(base_env(), "ELASTICIO_API_URI"),
            "DECKHAND_UPDATE_KEYS",
            "api",
        ));
        assert!(e.mentions("DECKHAND_UPDATE_KEYS"), "{e}");
    }

    #[test]
    fn metrics_address_is_off_by_default_and_validated() {
        let c = RuntimeConfig::from_vars(base_env()).unwrap();
        assert_eq!(c.metrics_addr, None, "metrics are off unless asked for");
        let c = RuntimeConfig::from_vars(with(base_env(), METRICS_ADDR_VAR, " 127.0.0.1:9464 "))
            .unwrap();
        assert_eq!(c.metrics_addr, Some(([127, 0, 0, 1], 9464).into()));
        let c = RuntimeConfig::from_vars(with(base_env(), METRICS_ADDR_VAR, "[::]:0")).unwrap();
        assert_eq!(c.metrics_addr.map(|a| a.is_ipv6()), Some(true));
        for bad in [
            "9464",
            "localhost:9464",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":9464",
        ] {
            let e = err(with(base_env(), METRICS_ADDR_VAR, bad));
            assert!(e.mentions(METRICS_ADDR_VAR), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "the value is named: {e}");
        }
    }

    #[test]
    fn publish_retry_backoff() {
        let r = PublishRetry {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            attempts: Some(3),
        };
        assert_eq!(r.delay_after(0), Duration::from_millis(100));
        assert_eq!(r.delay_after(1), Duration::from_millis(200));
        assert_eq!(r.delay_after(3), Duration::from_millis(800));
        assert_eq!(r.delay_after(4), Duration::from_millis(1000));
        assert_eq!(r.delay_after(200), Duration::from_millis(1000));
        assert!(r.may_retry(2));
        assert!(!r.may_retry(3));
        assert!(PublishRetry::default().may_retry(u32::MAX - 1));
    }

    #[test]
    fn update_keys_routing_key() {
        assert_eq!(
            derive_update_keys_routing_key("a.b.message"),
            "a.b.update_keys"
        );
        assert_eq!(
            derive_update_keys_routing_key("flow:step_1:1:message"),
            "flow:step_1:1:message.update_keys"
        );
        assert_eq!(
            derive_update_keys_routing_key("message"),
            "message.update_keys"
        );
        let c = RuntimeConfig::from_vars(with(
            base_env(),
            "ELASTICIO_UPDATE_KEYS_ROUTING_KEY",
            "custom.keys",
        ))
        .unwrap();
        assert_eq!(c.amqp.update_keys_routing_key, "custom.keys");
    }

    #[test]
    fn step_source() {
        let e = err(without(
            without(base_env(), "ELASTICIO_API_USERNAME"),
            "ELASTICIO_API_KEY",
        ));
        assert!(
            e.mentions("ELASTICIO_API_USERNAME") && e.mentions("ELASTICIO_API_KEY"),
            "{e}"
        );
        assert!(
            err(with(base_env(), "ELASTICIO_API_URI", "not a url")).mentions("ELASTICIO_API_URI")
        );

        let local = without(
            without(
                without(base_env(), "ELASTICIO_API_URI"),
                "ELASTICIO_API_USERNAME",
            ),
            "ELASTICIO_API_KEY",
        );
        let e = err(local.clone());
        assert_eq!(e.problems.len(), 1);
        assert!(e.mentions(STEP_FILE_VAR), "{e}");
        let c = RuntimeConfig::from_vars(with(local, STEP_FILE_VAR, "/etc/step.json")).unwrap();
        assert_eq!(c.step_source, StepSource::File("/etc/step.json".into()));
    }

    #[test]
    fn secrets_never_appear_in_debug_or_errors() {
        let env = with(
            base_env(),
            "ELASTICIO_OBJECT_STORAGE_TOKEN",
            "object-token-xyz",
        );
        let c = RuntimeConfig::from_vars(env).unwrap();
        let dbg = format!("{c:?}");
        for secret in [
            PASSWORD,
            AMQP_PASSWORD,
            API_KEY,
            "object-token-xyz",
            "iv=any16_symbols",
        ] {
            assert!(!dbg.contains(secret), "{secret} leaked in Debug: {dbg}");
        }
        assert!(dbg.contains("amqp://guest:***@127.0.0.1:5672/%2f"), "{dbg}");
        assert_eq!(
            c.amqp.uris[0].to_string(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            c.amqp.uris[0].expose(),
            "amqp://guest:s3cr3t-amqp-pw@127.0.0.1:5672/%2f"
        );

        // A malformed URI's error does not echo the password either.
        let e = err(with(
            base_env(),
            "ELASTICIO_AMQP_URI",
            "amqp://guest:s3cr3t-amqp-pw@127.0.0.1:notaport/%2f",
        ));
        assert!(e.mentions("ELASTICIO_AMQP_URI"));
        assert!(!e.to_string().contains(AMQP_PASSWORD), "{e}");
        assert!(!format!("{e:?}").contains(AMQP_PASSWORD), "{e:?}");
        let e = err(with(
            base_env(),
            "ELASTICIO_AMQP_URI",
            "http://u:s3cr3t-amqp-pw@h/",
        ));
        assert!(!e.to_string().contains(AMQP_PASSWORD), "{e}");
    }

    #[test]
    fn a_list_of_broker_nodes() {
        let env = with(
            base_env(),
            "ELASTICIO_AMQP_URIS",
            "amqp://guest:s3cr3t-amqp-pw@127.0.0.1:5672/%2f, amqp://guest:s3cr3t-amqp-pw@10.0.0.2:5672/%2f\n amqp://guest:s3cr3t-amqp-pw@10.0.0.3:5673/%2f",
        );
        let c = RuntimeConfig::from_vars(env.clone()).unwrap();
        let hosts: Vec<String> = c.amqp.uris.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            hosts,
            [
                "amqp://guest:***@127.0.0.1:5672/%2f",
                "amqp://guest:***@10.0.0.2:5672/%2f",
                "amqp://guest:***@10.0.0.3:5673/%2f"
            ],
            "ELASTICIO_AMQP_URI first, duplicates once"
        );
        // The list alone is enough.
        let c = RuntimeConfig::from_vars(without(env, "ELASTICIO_AMQP_URI")).unwrap();
        assert_eq!(c.amqp.uris.len(), 3);
        // A bad entry is named by its position, without its password.
        let e = err(with(
            base_env(),
            "ELASTICIO_AMQP_URIS",
            "amqp://u:s3cr3t-amqp-pw@h1:5672/%2f,amqp://u:s3cr3t-amqp-pw@h2:port/%2f",
        ));
        assert!(e.mentions("ELASTICIO_AMQP_URIS"), "{e}");
        assert!(
            e.to_string().contains("entry 2 is not a valid AMQP URI"),
            "{e}"
        );
        assert!(!e.to_string().contains(AMQP_PASSWORD), "{e}");
        let e = err(with(
            base_env(),
            "ELASTICIO_AMQP_URIS",
            "amqps://u:p@h1:5671/%2f",
        ));
        assert!(e.to_string().contains("entry 1 uses amqps://"), "{e}");
        // Neither variable: one problem naming both.
        let e = err(without(base_env(), "ELASTICIO_AMQP_URI"));
        assert_eq!(e.problems.len(), 1);
        assert!(e.to_string().contains("ELASTICIO_AMQP_URIS"), "{e}");
    }

    #[test]
    fn amqps_is_rejected_without_tls_support() {
        let e = err(with(
            base_env(),
            "ELASTICIO_AMQP_URI",
            "amqps://u:p@host:5671/%2f",
        ));
        assert!(e.to_string().contains("no TLS support"), "{e}");
    }

    #[test]
    fn additional_header_vars() {
        let env = [
            (
                "ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS",
                " ELASTICIO_FLOW_VERSION , CUSTOM_VAR,UNSET_VAR,",
            ),
            ("ELASTICIO_FLOW_VERSION", "7"),
            ("CUSTOM_VAR", "x"),
        ]
        .into_iter()
        .fold(base_env(), |env, (k, v)| with(env, k, v));
        let c = RuntimeConfig::from_vars(env).unwrap();
        assert_eq!(
            c.additional_headers.0,
            vec![
                ("flowVersion".to_owned(), "7".to_owned()),
                ("customVar".to_owned(), "x".to_owned())
            ]
        );
        assert_eq!(
            format!("{:?}", c.additional_headers),
            r#"["flowVersion", "customVar"]"#
        );
    }

    #[test]
    fn camel_case_like_lodash() {
        assert_eq!(camel_case("FLOW_VERSION"), "flowVersion");
        assert_eq!(camel_case("TENANT_ID"), "tenantId");
        assert_eq!(camel_case("myVar"), "myVar");
        assert_eq!(camel_case("some-var name"), "someVarName");
        assert_eq!(camel_case("X"), "x");
        assert_eq!(camel_case("__"), "");
    }

    #[test]
    fn launch_config_chooses_by_hook_shutdown() {
        let identity_only: Vec<_> = base_env()
            .into_iter()
            .filter(|(k, _)| {
                [
                    "ELASTICIO_FLOW_ID",
                    "ELASTICIO_EXEC_ID",
                    "ELASTICIO_STEP_ID",
                    "ELASTICIO_CONTAINER_ID",
                    "ELASTICIO_WORKSPACE_ID",
                    "ELASTICIO_USER_ID",
                    "ELASTICIO_COMP_ID",
                    "ELASTICIO_FUNCTION",
                ]
                .contains(&k.as_str())
            })
            .collect();
        let hook = with(
            with(identity_only.clone(), "ELASTICIO_HOOK_SHUTDOWN", "true"),
            STEP_FILE_VAR,
            "step.json",
        );
        assert!(matches!(
            LaunchConfig::from_vars(hook),
            Ok(LaunchConfig::ShutdownHook(_))
        ));
        let e =
            LaunchConfig::from_vars(with(identity_only, STEP_FILE_VAR, "step.json")).unwrap_err();
        assert!(e.mentions("ELASTICIO_AMQP_URI"), "{e}");
        assert!(matches!(
            LaunchConfig::from_vars(base_env()),
            Ok(LaunchConfig::Worker(_))
        ));
    }

    #[test]
    fn log_fields_use_sailor_names() {
        let env = with(base_env(), "ELASTICIO_TENANT_ID", "tenant-1");
        let c = RuntimeConfig::from_vars(env).unwrap();
        let fields = c.log_fields();
        assert!(fields.contains(&("ELASTICIO_FLOW_ID", "5559edd38968ec0736000003".into())));
        assert!(fields.contains(&("tag", "5559edd38968ec0736000003".into())));
        assert!(fields.contains(&("ELASTICIO_TENANT_ID", "tenant-1".into())));
        assert!(fields.contains(&("ELASTICIO_API_USERNAME", "task-user@example.invalid".into())));
        assert!(!fields.iter().any(|(k, _)| *k == "ELASTICIO_COMP_NAME"));
    }

    #[test]
    fn routing_keys_longer_than_amqp_allows_are_rejected() {
        let long = "k".repeat(256);
        let e = err(with(base_env(), "ELASTICIO_ERROR_ROUTING_KEY", &long));
        assert!(e.mentions("ELASTICIO_ERROR_ROUTING_KEY"), "{e}");
    }
}
