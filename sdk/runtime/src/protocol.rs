//! The Sailor wire format: message envelope, AMQP headers and properties of every outgoing
//! event (reference §3.4–3.6, §4.3–4.5). Pure functions and types — no broker needed.
//!
//! The reference behaviour is sailor-nodejs 2.7 (`lib/sailor.js`, `lib/amqp.js`):
//!
//! * Every input message gets one set of *base headers* (`OutgoingContext`'s base headers):
//!   incoming `x-eio-meta-*` headers (names lower-cased), `reply_to`, the
//!   `ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS` values, `parentMessageId` (the incoming
//!   `messageId`), `threadId` (incoming `threadId`, else `x-eio-meta-trace-id`, else a new
//!   uuid), a new `messageId`, `execId`, `taskId` (= flow id), `workspaceId`, `containerId`,
//!   `userId`, `stepId`, `compId`, `function` and `start` (ms since the epoch).
//! * Each event clones them and adds its own: `end` and `protocolVersion` on data, `end` on
//!   errors, `snapshotEvent` on snapshots, `x-eio-error-response: true` on error replies,
//!   `reboundReason`/`reboundIteration` on rebounds; the publisher adds `retry: n` on the
//!   n-th publish retry.
//! * Header value types follow amqplib: strings are long strings, booleans booleans, and
//!   integers the smallest signed type that holds them (`js_number`), so `protocolVersion`
//!   travels as an 8-bit and `start`/`end` as a 64-bit integer.
//! * Properties: `contentType: application/json`, `contentEncoding: utf8`, deliveryMode 1
//!   (2 with `ELASTICIO_AMQP_PERSISTENT_MESSAGES`), published `mandatory`.
//!
//! Deviations from Node (each also documented where it happens):
//!
//! * A data message without an `id` gets a fresh uuid as its `messageId` header; Node reuses the
//!   per-input uuid, so two id-less messages emitted for one input would share a `messageId`
//!   and look like duplicates to a deduplicating receiver.
//! * `updateKeys` is published over AMQP ([`Outgoing::UpdateKeys`], Deckhand addition) instead
//!   of Sailor's `PUT /v1/accounts/{id}`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Map, Value};

pub use deckhand_connector::{ErrorInfo, HttpReply, Message};

use crate::config::{InputFormat, RuntimeConfig};
use crate::crypto::{CryptoError, MessageCipher, ProtocolVersion};

/// AMQP header names used by the protocol.
pub mod header {
    /// Id of this message (uuid).
    pub const MESSAGE_ID: &str = "messageId";
    /// `messageId` of the message this one was produced from.
    pub const PARENT_MESSAGE_ID: &str = "parentMessageId";
    /// Id shared by every message of one flow execution thread.
    pub const THREAD_ID: &str = "threadId";
    /// `ELASTICIO_EXEC_ID`.
    pub const EXEC_ID: &str = "execId";
    /// `ELASTICIO_FLOW_ID`.
    pub const TASK_ID: &str = "taskId";
    /// `ELASTICIO_WORKSPACE_ID`.
    pub const WORKSPACE_ID: &str = "workspaceId";
    /// `ELASTICIO_CONTAINER_ID`.
    pub const CONTAINER_ID: &str = "containerId";
    /// `ELASTICIO_USER_ID`.
    pub const USER_ID: &str = "userId";
    /// `ELASTICIO_STEP_ID`.
    pub const STEP_ID: &str = "stepId";
    /// `ELASTICIO_COMP_ID`.
    pub const COMP_ID: &str = "compId";
    /// `ELASTICIO_FUNCTION`.
    pub const FUNCTION: &str = "function";
    /// Processing start, ms since the epoch (number).
    pub const START: &str = "start";
    /// Event time, ms since the epoch (number).
    pub const END: &str = "end";
    /// 1 = base64 body, 2 = raw body (number).
    pub const PROTOCOL_VERSION: &str = "protocolVersion";
    /// `snapshot` or `updateSnapshot`.
    pub const SNAPSHOT_EVENT: &str = "snapshotEvent";
    /// Publish retry number (number, only on retries).
    pub const RETRY: &str = "retry";
    /// Id of one publish, the same on each of its attempts (Deckhand addition, string): with
    /// `retry` it marks a message that may be a second copy, published again after the
    /// broker's confirm of an earlier attempt was lost (see `deckhand_runtime::dedup`).
    pub const PUBLISH_ID: &str = "publishId";
    /// Routing key of the request-reply queue.
    pub const REPLY_TO: &str = "reply_to";
    /// `true` (boolean) on an error sent to `reply_to`.
    pub const ERROR_RESPONSE: &str = "x-eio-error-response";
    /// Prefix of headers propagated through the flow.
    pub const META_PREFIX: &str = "x-eio-meta-";
    /// Fallback thread id.
    pub const META_TRACE_ID: &str = "x-eio-meta-trace-id";
    /// Why the message was rebounded.
    pub const REBOUND_REASON: &str = "reboundReason";
    /// How many times the message was rebounded (number).
    pub const REBOUND_ITERATION: &str = "reboundIteration";
    /// Message-header (not AMQP-header) routing override on emitted data.
    pub const ROUTING_KEY_OVERRIDE: &str = "x-eio-routing-key";
    /// Lightweight-message object id.
    pub const OBJECT_STORAGE_ID: &str = "x-ipaas-object-storage-id";
    /// Account whose keys an `updateKeys` event carries (Deckhand addition).
    pub const ACCOUNT_ID: &str = "accountId";
    /// Token generation of an `updateKeys` event (Deckhand addition, number).
    pub const GENERATION: &str = "generation";
    /// Lineage of an `updateKeys` event (Deckhand addition): the fingerprint of the refresh
    /// token the new keys replaced (first 16 bytes of its SHA-256, hex; never the token).
    pub const PARENT_FINGERPRINT: &str = "parentFingerprint";
    /// Lineage of an `updateKeys` event (Deckhand addition): the fingerprint of the refresh
    /// token in the new keys.
    pub const REFRESH_FINGERPRINT: &str = "refreshFingerprint";
    /// The worker that published an `updateKeys` event (Deckhand addition, `host:pid:random`).
    pub const WORKER: &str = "worker";
    /// Set by quorum queues: how many times the message was returned to the queue.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
}

/// Content type of every publish.
pub const CONTENT_TYPE: &str = "application/json";
/// Content encoding of every publish.
pub(crate) const CONTENT_ENCODING: &str = "utf8";
/// Most of the input an error event carries: a longer `errorInput` is replaced by an
/// encrypted marker with the input's beginning (see [`OutgoingContext::publications`]).
pub(crate) const ERROR_INPUT_LIMIT: usize = 64 * 1024;
/// Message of the error that replaces a rebound over the limit.
pub(crate) const REBOUND_LIMIT_EXCEEDED: &str = "Rebound limit exceeded";

/// A message as JSON, without `passthrough` (what passthrough stores).
fn without_passthrough(message: &Message) -> Value {
    let mut copy = message.clone();
    copy.passthrough = None;
    serde_json::to_value(copy).unwrap_or(Value::Null)
}

/// An event a component emits while processing one input message.
// Built and consumed once per event; boxing the message would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A data message to the next step.
    Data(Message),
    /// An error; the input will be rejected.
    Error(ErrorInfo),
    /// Redeliver the input later (exponential delay), e.g. when a dependency is busy.
    Rebound {
        /// Why, sent as `reboundReason`.
        reason: String,
    },
    /// Replace the step's snapshot.
    Snapshot(Value),
    /// Shallow-merge into the step's snapshot (Node only).
    UpdateSnapshot(Map<String, Value>),
    /// New credential keys to persist (Deckhand addition: over AMQP, see module docs).
    UpdateKeys {
        /// The complete keys object (e.g. `{"oauth": {...}}`).
        keys: Value,
        /// Monotonic token generation, so the consumer can discard stale updates.
        generation: u64,
    },
    /// Reply to the request-reply caller (`reply_to`).
    HttpReply(HttpReply),
}

/// What a [`Publication`] is, for throttling and logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicationKind {
    /// Data to the next step.
    Data,
    /// Error envelope to the error routing key.
    Error,
    /// Error sent to `reply_to`.
    ErrorReply,
    /// Rebounded input.
    Rebound,
    /// Snapshot or snapshot update.
    Snapshot,
    /// Credential keys update.
    UpdateKeys,
    /// HTTP reply to `reply_to`.
    HttpReply,
}

/// One AMQP publish, fully prepared: what the transport sends, byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// What this is.
    pub kind: PublicationKind,
    /// Exchange (`ELASTICIO_PUBLISH_MESSAGES_TO`).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Message body.
    pub body: Vec<u8>,
    // lapin's types are public only with the `testing` feature (tests drive the transport
    // with raw AMQP properties), so they stay out of the API a connector sees.
    /// AMQP headers (the transport adds `retry` on retries).
    #[cfg(feature = "testing")]
    pub headers: FieldTable,
    #[cfg(not(feature = "testing"))]
    pub(crate) headers: FieldTable,
    /// AMQP properties other than headers.
    #[cfg(feature = "testing")]
    pub properties: BasicProperties,
    #[cfg(not(feature = "testing"))]
    pub(crate) properties: BasicProperties,
    /// Publish with the `mandatory` flag.
    pub mandatory: bool,
}

impl Publication {
    /// The properties to publish with for attempt `retry` (0 = first attempt) of the publish
    /// `publish_id`: the headers, `publishId` (the same on every attempt, replacing one copied
    /// from an input), plus `retry: n` from the first retry on, as Node does.
    pub(crate) fn amqp_properties(&self, retry: u32, publish_id: &str) -> BasicProperties {
        let mut headers = self.headers.clone();
        headers.insert(header::PUBLISH_ID.into(), js_string(publish_id));
        if retry > 0 {
            headers.insert(header::RETRY.into(), js_number(i64::from(retry)));
        }
        self.properties.clone().with_headers(headers)
    }

    testing_pub! {
    /// A header of this publication.
    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers.inner().get(name)
    }
    }
}

/// Why an event could not be turned into publications or an input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The encrypted outgoing body is larger than `ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT`.
    /// Same wording as Node.
    #[error("Outgoing message size {size} exceeds limit of {limit}.")]
    TooLarge {
        /// Encrypted body size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `httpReply` without a `reply_to` header on the input. Same wording as Node.
    #[error("Component emitted 'httpReply' event but 'reply_to' was not found in AMQP headers")]
    NoReplyTo,
    /// `updateKeys` on a step whose configuration has no `_account`.
    #[error("Component emitted 'updateKeys' but the step configuration has no `_account`")]
    NoAccount,
    /// A routing key (from `reply_to` or `x-eio-routing-key`) AMQP cannot carry.
    #[error("invalid routing key: {0}")]
    InvalidRoutingKey(String),
    /// The input could not be decrypted.
    #[error("input message could not be decrypted: {0}")]
    Decrypt(#[from] CryptoError),
    /// The decrypted input is not a message envelope.
    #[error("input message is not a valid message envelope: {0}")]
    InvalidMessage(String),
}

/// Flags from the step definition that shape outgoing messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepFlags {
    /// `is_passthrough` of the step definition.
    pub is_passthrough: bool,
    /// `config._account` of the step definition (needed by `updateKeys`).
    pub account_id: Option<String>,
}

/// A received AMQP message before decryption: the raw body and the original properties
/// (rebounds republish both unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Original properties, headers included (public with the `testing` feature only).
    #[cfg(feature = "testing")]
    pub properties: BasicProperties,
    #[cfg(not(feature = "testing"))]
    pub(crate) properties: BasicProperties,
    /// Raw body as received.
    pub body: Vec<u8>,
}

impl Incoming {
    testing_pub! {
    /// Wraps a received message.
    fn new(properties: BasicProperties, body: Vec<u8>) -> Self {
        Self { properties, body }
    }
    }

    testing_pub! {
    /// The AMQP headers (empty if none).
    fn headers(&self) -> &FieldTable {
        static EMPTY: std::sync::OnceLock<FieldTable> = std::sync::OnceLock::new();
        self.properties
            .headers()
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(FieldTable::default))
    }
    }

    /// The `messageId` header, the deduplication key.
    pub fn message_id(&self) -> Option<String> {
        header_string(self.headers(), header::MESSAGE_ID).filter(|s| !s.is_empty())
    }

    /// The `publishId` header (Deckhand publishers set it; see [`header::PUBLISH_ID`]).
    pub fn publish_id(&self) -> Option<String> {
        header_string(self.headers(), header::PUBLISH_ID).filter(|s| !s.is_empty())
    }

    /// Whether this is a Deckhand publisher's retry (`publishId` and `retry` ≥ 1): an earlier
    /// attempt of the same publish may have reached the queue too, its confirm lost.
    pub fn is_republished(&self) -> bool {
        header_number(self.headers(), header::RETRY).is_some_and(|n| n >= 1.0)
            && self.publish_id().is_some()
    }

    /// The `reply_to` header.
    pub fn reply_to(&self) -> Option<String> {
        header_string(self.headers(), header::REPLY_TO).filter(|s| !s.is_empty())
    }

    /// The body encoding, from the `protocolVersion` header as Node reads it:
    /// `Number(h || 1) < 2` is version 1, anything at least 2 is raw (version 2).
    /// A value that is not a number is read as version 1.
    pub fn protocol_version(&self) -> ProtocolVersion {
        match self.headers().inner().get(header::PROTOCOL_VERSION) {
            Some(v) => match amqp_number(v)
                .or_else(|| amqp_str(v).and_then(|s| s.trim().parse::<f64>().ok()))
            {
                Some(n) if n >= 2.0 => ProtocolVersion::V2,
                _ => ProtocolVersion::V1,
            },
            None => ProtocolVersion::V1,
        }
    }

    /// Decrypts and parses the input as Sailor does, injecting `reply_to` into the message
    /// headers. With [`InputFormat::Error`] the body is the error envelope and the result is
    /// `{body: {error, errorInput}, headers: <AMQP headers>}`.
    pub fn decode(
        &self,
        cipher: &MessageCipher,
        format: InputFormat,
    ) -> Result<Message, ProtocolError> {
        let mut message = match format {
            InputFormat::Default => {
                let plain = cipher.decrypt(&self.body, self.protocol_version())?;
                serde_json::from_slice::<Message>(&plain).map_err(|e| envelope_error(&plain, e))?
            }
            InputFormat::Error => self.decode_error_envelope(cipher)?,
        };
        if let Some(reply_to) = self.reply_to() {
            message
                .headers
                .insert(header::REPLY_TO.to_owned(), Value::String(reply_to));
        }
        Ok(message)
    }

    fn decode_error_envelope(&self, cipher: &MessageCipher) -> Result<Message, ProtocolError> {
        let mut envelope: Map<String, Value> = serde_json::from_slice(&self.body)
            .map_err(|e| ProtocolError::InvalidMessage(format!("error envelope: {e}")))?;
        // Both fields are base64 whatever the protocol version (reference §4.3).
        for field in ["error", "errorInput"] {
            if let Some(Value::String(b64)) = envelope.get(field) {
                let plain: Value = cipher.decrypt_json(b64.as_bytes(), ProtocolVersion::V1)?;
                envelope.insert(field.to_owned(), plain);
            }
        }
        let headers = match field_table_to_json(self.headers()) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Ok(Message {
            id: None,
            body: Value::Object(envelope),
            attachments: Map::new(),
            headers,
            metadata: Map::new(),
            passthrough: None,
            extra: Map::new(),
        })
    }
}

/// A fresh message or publish id: a random (version 4) uuid from the thread's generator, which
/// unlike `Uuid::new_v4` costs no system call.
pub(crate) fn fresh_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Why a decrypted input is not a message envelope, read again only on this error path: not
/// JSON at all, JSON but not an object, or an object whose fields have the wrong shape.
fn envelope_error(plain: &[u8], error: serde_json::Error) -> ProtocolError {
    match serde_json::from_slice::<serde::de::IgnoredAny>(plain) {
        Err(not_json) => CryptoError::InvalidJson(not_json.to_string()).into(),
        Ok(_) if plain.trim_ascii_start().first() != Some(&b'{') => {
            ProtocolError::InvalidMessage("the decrypted JSON is not an object".into())
        }
        Ok(_) => ProtocolError::InvalidMessage(error.to_string()),
    }
}

/// Milliseconds since the Unix epoch, the unit of `start`/`end`.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

testing_pub! {
/// Encodes an integer the way amqplib encodes a JavaScript integer: the smallest signed type
/// that holds it (`b` 8-bit, `s` 16-bit, `I` 32-bit, `l` 64-bit).
fn js_number(n: i64) -> AMQPValue {
    if let Ok(v) = i8::try_from(n) {
        AMQPValue::ShortShortInt(v)
    } else if let Ok(v) = i16::try_from(n) {
        AMQPValue::ShortInt(v)
    } else if let Ok(v) = i32::try_from(n) {
        AMQPValue::LongInt(v)
    } else {
        AMQPValue::LongLongInt(n)
    }
}
}

testing_pub! {
/// A string header value (AMQP long string, as amqplib sends strings).
fn js_string(s: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.into()))
}
}

testing_pub! {
/// A header as a string, if it is a (long or short) string.
fn header_string(table: &FieldTable, name: &str) -> Option<String> {
    table.inner().get(name).and_then(amqp_str)
}
}

testing_pub! {
/// A header as a number, if it is any numeric AMQP type.
fn header_number(table: &FieldTable, name: &str) -> Option<f64> {
    table.inner().get(name).and_then(amqp_number)
}
}

fn amqp_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn amqp_number(v: &AMQPValue) -> Option<f64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => f64::from(n),
        AMQPValue::ShortShortUInt(n) => f64::from(n),
        AMQPValue::ShortInt(n) => f64::from(n),
        AMQPValue::ShortUInt(n) => f64::from(n),
        AMQPValue::LongInt(n) => f64::from(n),
        AMQPValue::LongUInt(n) => f64::from(n),
        AMQPValue::LongLongInt(n) => n as f64,
        AMQPValue::Float(n) => f64::from(n),
        AMQPValue::Double(n) => n,
        AMQPValue::Timestamp(n) => n as f64,
        _ => return None,
    })
}

/// JavaScript truthiness of a header value, which decides whether Node copies it.
fn truthy(v: &AMQPValue) -> bool {
    match v {
        AMQPValue::Void => false,
        AMQPValue::Boolean(b) => *b,
        AMQPValue::LongString(s) => !s.is_empty(),
        AMQPValue::ShortString(s) => !s.as_str().is_empty(),
        other => amqp_number(other).is_none_or(|n| n != 0.0 && !n.is_nan()),
    }
}

/// An AMQP value as the JSON amqplib would decode it to.
pub(crate) fn amqp_value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            Value::String(amqp_str(v).unwrap_or_default())
        }
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(amqp_value_to_json).collect())
        }
        AMQPValue::FieldTable(t) => field_table_to_json(t),
        AMQPValue::ByteArray(b) => {
            Value::Array(b.as_slice().iter().map(|x| Value::from(*x)).collect())
        }
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::Void => Value::Null,
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        other => amqp_number(other)
            .and_then(|n| {
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    Some(Value::from(n as i64))
                } else {
                    serde_json::Number::from_f64(n).map(Value::Number)
                }
            })
            .unwrap_or(Value::Null),
    }
}

/// A header table as a JSON object.
pub(crate) fn field_table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), amqp_value_to_json(v)))
            .collect(),
    )
}

/// A JSON value as an AMQP header value, typed as amqplib would.
#[cfg(test)]
fn json_to_amqp_value(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => js_number(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => js_string(s.clone()),
        Value::Array(a) => AMQPValue::FieldArray(lapin::types::FieldArray::from(
            a.iter().map(json_to_amqp_value).collect::<Vec<_>>(),
        )),
        Value::Object(o) => {
            let mut t = FieldTable::default();
            for (k, v) in o {
                if let Ok(key) = ShortString::try_new(k.clone()) {
                    t.insert(key, json_to_amqp_value(v));
                }
            }
            AMQPValue::FieldTable(t)
        }
    }
}

fn short(s: &str) -> Result<ShortString, ProtocolError> {
    ShortString::try_new(s).map_err(|_| {
        ProtocolError::InvalidRoutingKey(format!("{} bytes; AMQP allows at most 255", s.len()))
    })
}

fn set(table: &mut FieldTable, name: &str, value: AMQPValue) {
    table.insert(ShortString::from(name), value);
}

/// Properties of every publish except rebounds.
fn default_properties(cfg: &RuntimeConfig) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_content_encoding(CONTENT_ENCODING.into())
        .with_delivery_mode(delivery_mode(cfg.amqp.persistent_messages))
}

fn delivery_mode(persistent: bool) -> u8 {
    if persistent { 2 } else { 1 }
}

/// `properties` without headers (the publication carries them separately).
fn without_headers(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.expiration() {
        out = out.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// The expiration of rebound number `iteration` (1-based): `2^(iteration-1)·initial` ms.
///
/// Like Node there is no cap (RabbitMQ accepts e.g. the 20th default rebound's 7864320000 ms);
/// the product saturates at `u64::MAX` where JavaScript would switch to exponent notation
/// (which the broker would refuse) — far beyond any real `REBOUND_LIMIT`.
pub(crate) fn rebound_expiration_ms(initial_ms: u64, iteration: u32) -> u64 {
    let expiration = deckhand_core::retry::Backoff::exponential(Duration::from_millis(initial_ms))
        .delay(iteration.saturating_sub(1));
    u64::try_from(expiration.as_millis()).unwrap_or(u64::MAX)
}

/// Everything needed to turn the events of one input message into publications.
///
/// Created once per input (it fixes `start`, the outgoing `messageId` and `threadId`), then
/// [`publications`](Self::publications) is called for every event.
#[derive(Debug, Clone)]
pub struct OutgoingContext {
    cfg: Arc<RuntimeConfig>,
    incoming: Incoming,
    /// The decoded input, kept only where outgoing messages carry it on (`is_passthrough`):
    /// a copy per message costs throughput, and the rare oversized-input error decodes
    /// `incoming` again instead.
    passthrough_input: Option<Message>,
    flags: StepFlags,
    start_ms: i64,
    /// The outgoing `messageId` of non-data events, made when the first one is published
    /// (data events carry their message's own id).
    message_id: OnceLock<String>,
    /// Fixed here: it may be a fresh id, and every event of the input carries the same one.
    thread_id: AMQPValue,
}

impl OutgoingContext {
    /// A context for `incoming` (decoded to `input`) starting now.
    pub fn new(
        cfg: Arc<RuntimeConfig>,
        incoming: Incoming,
        input: &Message,
        flags: StepFlags,
    ) -> Self {
        Self::with_start(cfg, incoming, input, flags, now_ms(), None)
    }

    /// As [`new`](Self::new) with a given start time and, if given, outgoing `messageId` of
    /// non-data events (tests).
    pub fn with_start(
        cfg: Arc<RuntimeConfig>,
        incoming: Incoming,
        input: &Message,
        flags: StepFlags,
        start_ms: i64,
        message_id: Option<String>,
    ) -> Self {
        Self {
            passthrough_input: flags.is_passthrough.then(|| input.clone()),
            thread_id: thread_id_of(incoming.headers()),
            cfg,
            incoming,
            flags,
            start_ms,
            message_id: message_id.map(OnceLock::from).unwrap_or_default(),
        }
    }

    /// The headers every non-data event starts from (reference §3.5).
    fn base_headers(&self) -> FieldTable {
        self.base_headers_with(self.event_message_id())
    }

    /// The headers an event with `messageId` = `message_id` starts from, built for each
    /// publication: a publication owns its headers, and building them costs no more than
    /// copying a prepared table (most inputs have a single event).
    fn base_headers_with(&self, message_id: &str) -> FieldTable {
        base_headers(
            &self.cfg,
            self.incoming.headers(),
            self.start_ms,
            message_id,
            &self.thread_id,
        )
    }

    fn event_message_id(&self) -> &str {
        self.message_id.get_or_init(fresh_id)
    }

    /// The input as received.
    pub fn incoming(&self) -> &Incoming {
        &self.incoming
    }

    /// The thread id (for logging).
    pub fn thread_id(&self) -> Option<String> {
        amqp_str(&self.thread_id)
    }

    /// The outgoing `messageId` shared by this input's non-data events.
    pub fn message_id(&self) -> Option<String> {
        Some(self.event_message_id().to_owned())
    }

    /// The incoming `messageId` (= outgoing `parentMessageId`).
    pub fn parent_message_id(&self) -> Option<String> {
        parent_id(self.incoming.headers()).and_then(amqp_str)
    }

    /// The publications for `event`, timestamped now.
    pub fn publications(&self, event: Outgoing) -> Result<Vec<Publication>, ProtocolError> {
        self.publications_at(event, now_ms())
    }

    /// The publications for `event` with `end` = `now_ms`.
    ///
    /// Errors: [`ProtocolError::TooLarge`] (data, httpReply, updateKeys), [`ProtocolError::NoReplyTo`]
    /// (httpReply), [`ProtocolError::NoAccount`] (updateKeys), [`ProtocolError::InvalidRoutingKey`].
    /// As in Node, the caller turns such an error into an `error` event.
    pub fn publications_at(
        &self,
        event: Outgoing,
        now_ms: i64,
    ) -> Result<Vec<Publication>, ProtocolError> {
        match event {
            Outgoing::Data(message) => self.data(message, now_ms).map(|p| vec![p]),
            Outgoing::Error(error) => self.error(&error, Some(now_ms)),
            Outgoing::Rebound { reason } => self.rebound(&reason, now_ms),
            Outgoing::Snapshot(snapshot) => Ok(vec![self.snapshot(&snapshot, "snapshot")]),
            Outgoing::UpdateSnapshot(update) => Ok(vec![
                self.snapshot(&Value::Object(update), "updateSnapshot"),
            ]),
            Outgoing::UpdateKeys { keys, generation } => {
                self.update_keys(keys, generation, now_ms).map(|p| vec![p])
            }
            Outgoing::HttpReply(reply) => self.http_reply(reply).map(|p| vec![p]),
        }
    }

    fn data(&self, mut message: Message, now_ms: i64) -> Result<Publication, ProtocolError> {
        let cfg = &self.cfg;
        // Deviation: a fresh id instead of the per-input one (see module docs).
        let mut headers = match message.id.as_deref() {
            Some(id) if !id.is_empty() => self.base_headers_with(id),
            _ => self.base_headers_with(&fresh_id()),
        };
        set(&mut headers, header::END, js_number(now_ms));

        if self.flags.is_passthrough {
            self.apply_passthrough(&mut message);
        }

        // The routing override lives in the *message* headers, any case, and is stripped.
        let mut routing_key = cfg.amqp.data_routing_key.clone();
        let override_keys: Vec<String> = message
            .headers
            .keys()
            .filter(|k| k.eq_ignore_ascii_case(header::ROUTING_KEY_OVERRIDE))
            .cloned()
            .collect();
        for key in override_keys {
            match message.headers.remove(&key) {
                Some(Value::String(rk)) if !rk.is_empty() => routing_key = rk,
                Some(Value::String(_)) | Some(Value::Null) | None => {}
                Some(other) => {
                    return Err(ProtocolError::InvalidRoutingKey(format!(
                        "{} must be a string, got {other}",
                        header::ROUTING_KEY_OVERRIDE
                    )));
                }
            }
        }
        short(&routing_key)?;

        let version = cfg.protocol_version;
        set(
            &mut headers,
            header::PROTOCOL_VERSION,
            js_number(i64::from(version.number())),
        );
        let body = cfg.cipher.encrypt_json(&message, version);
        self.check_size(&body)?;
        Ok(Publication {
            kind: PublicationKind::Data,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key,
            body,
            headers,
            properties: default_properties(cfg),
            mandatory: true,
        })
    }

    /// Node (`onData`): with `is_passthrough`, the outgoing passthrough is the incoming one
    /// plus either our own outgoing message under our step id, or — with
    /// `NO_SELF_PASSTRHOUGH` — the incoming message under the incoming `stepId` header.
    fn apply_passthrough(&self, message: &mut Message) {
        let Some(input) = &self.passthrough_input else {
            return;
        };
        let mut passthrough = input.passthrough.clone().unwrap_or_default();
        if self.cfg.no_self_passthrough {
            if let Some(step_id) =
                header_string(self.incoming.headers(), header::STEP_ID).filter(|s| !s.is_empty())
            {
                passthrough.insert(step_id, without_passthrough(input));
            }
        } else {
            message.passthrough = None;
            passthrough.insert(
                self.cfg.identity.step_id.clone(),
                without_passthrough(message),
            );
        }
        message.passthrough = Some(passthrough);
    }

    /// Error envelope to the error routing key, plus the bare encrypted error to `reply_to`
    /// unless `NO_ERROR_REPLIES`. `end` is set except for the rebound-limit error, where Node
    /// does not set it either.
    fn error(
        &self,
        error: &ErrorInfo,
        end: Option<i64>,
    ) -> Result<Vec<Publication>, ProtocolError> {
        let cfg = &self.cfg;
        let mut headers = self.base_headers();
        if let Some(end) = end {
            set(&mut headers, header::END, js_number(end));
        }
        let encrypted_error = cfg
            .cipher
            .encrypt_base64(&serde_json::to_vec(error).unwrap_or_default());
        let mut envelope = Map::new();
        envelope.insert("error".into(), Value::String(encrypted_error.clone()));
        if !self.incoming.body.is_empty() {
            if self.error_input_len() <= ERROR_INPUT_LIMIT {
                envelope.insert("errorInput".into(), Value::String(self.error_input()));
            } else {
                envelope.insert("errorInput".into(), Value::String(self.cut_error_input()));
                envelope.insert("errorInputTruncated".into(), Value::Bool(true));
            }
        }
        let mut publications = vec![Publication {
            kind: PublicationKind::Error,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key: cfg.amqp.error_routing_key.clone(),
            body: serde_json::to_vec(&envelope).unwrap_or_default(),
            headers: headers.clone(),
            properties: default_properties(cfg),
            mandatory: true,
        }];
        let reply_to = header_string(&headers, header::REPLY_TO).filter(|s| !s.is_empty());
        if !cfg.no_error_replies
            && let Some(reply_to) = reply_to
        {
            short(&reply_to)?;
            let mut reply_headers = headers;
            set(
                &mut reply_headers,
                header::ERROR_RESPONSE,
                AMQPValue::Boolean(true),
            );
            publications.push(Publication {
                kind: PublicationKind::ErrorReply,
                exchange: cfg.amqp.publish_messages_to.clone(),
                routing_key: reply_to,
                body: encrypted_error.into_bytes(),
                headers: reply_headers,
                properties: default_properties(cfg),
                mandatory: true,
            });
        }
        Ok(publications)
    }

    /// Length of [`error_input`](Self::error_input), without building it.
    fn error_input_len(&self) -> usize {
        match self.incoming.protocol_version() {
            ProtocolVersion::V1 => self.incoming.body.len(),
            ProtocolVersion::V2 => self.incoming.body.len().div_ceil(3) * 4,
        }
    }

    /// The `errorInput` of an input too large to carry whole (Deckhand deviation: Node copies
    /// any size, so a 20 MB input gave 20 MB error events): the base64 ciphertext, at most
    /// [`ERROR_INPUT_LIMIT`] bytes, of `{"errorInputTruncated": true, "originalBytes": <size of
    /// the received body>, "id": <message id>, "head": <the beginning of the decoded message as
    /// JSON text>}`. The envelope also gets `"errorInputTruncated": true`, readable without the
    /// key.
    fn cut_error_input(&self) -> String {
        let input = self
            .incoming
            .decode(&self.cfg.cipher, self.cfg.input_format)
            .unwrap_or_else(|_| Message::new(Value::Object(Map::new())));
        let text = serde_json::to_string(&input).unwrap_or_default();
        // base64 of the ciphertext within the limit; PKCS#7 adds up to 16 bytes.
        let budget = ERROR_INPUT_LIMIT / 4 * 3 - 16;
        let mut keep = text.len().min(budget);
        loop {
            let mut cut = keep;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let marker = serde_json::json!({
                "errorInputTruncated": true,
                "originalBytes": self.incoming.body.len(),
                "id": input.id,
                "head": &text[..cut],
            });
            let plain = serde_json::to_vec(&marker).unwrap_or_default();
            if plain.len() <= budget || cut == 0 {
                return self.cfg.cipher.encrypt_base64(&plain);
            }
            // Escaping makes the output grow at least as fast as the input: dropping the
            // overshoot (plus a margin) fits.
            keep = cut.saturating_sub(plain.len() - budget + 16);
        }
    }

    /// `errorInput` is always base64 ciphertext: a v1 body already is; a v2 body is the raw
    /// ciphertext, whose base64 is what Node's decrypt-then-re-encrypt yields (static IV).
    fn error_input(&self) -> String {
        match self.incoming.protocol_version() {
            ProtocolVersion::V1 => String::from_utf8_lossy(&self.incoming.body).into_owned(),
            ProtocolVersion::V2 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(&self.incoming.body)
            }
        }
    }

    /// Republishes the *original* body and properties to the rebound routing key with
    /// `end`, `reboundReason`, `reboundIteration` added to the original headers and an
    /// exponential `expiration` — or, past `REBOUND_LIMIT`, an error instead.
    fn rebound(&self, reason: &str, now_ms: i64) -> Result<Vec<Publication>, ProtocolError> {
        let cfg = &self.cfg;
        let original = self.incoming.headers();
        // Node: `if (h.reboundIteration && typeof h.reboundIteration === 'number')`.
        let previous = header_number(original, header::REBOUND_ITERATION)
            .filter(|n| *n != 0.0 && n.is_finite())
            .unwrap_or(0.0);
        let iteration = if previous >= 1.0 {
            (previous as u64).saturating_add(1).min(u64::from(u32::MAX)) as u32
        } else {
            1
        };
        if iteration > cfg.rebound.limit {
            return self.error(&ErrorInfo::new(REBOUND_LIMIT_EXCEEDED), None);
        }
        // Without the broker's count of this delivery's returns: the rebound is a new message.
        let mut headers = FieldTable::default();
        for (key, value) in original {
            if key.as_str() != header::DELIVERY_COUNT {
                headers.insert(key.clone(), value.clone());
            }
        }
        set(&mut headers, header::END, js_number(now_ms));
        set(&mut headers, header::REBOUND_REASON, js_string(reason));
        set(
            &mut headers,
            header::REBOUND_ITERATION,
            js_number(i64::from(iteration)),
        );
        let initial_ms =
            u64::try_from(cfg.rebound.initial_expiration.as_millis()).unwrap_or(u64::MAX);
        let expiration = rebound_expiration_ms(initial_ms, iteration);
        let properties = without_headers(&self.incoming.properties)
            .with_expiration(ShortString::from(expiration.to_string()))
            // Node sets `persistent` on every publish, which overrides the original mode.
            .with_delivery_mode(delivery_mode(cfg.amqp.persistent_messages));
        Ok(vec![Publication {
            kind: PublicationKind::Rebound,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key: cfg.amqp.rebound_routing_key.clone(),
            body: self.incoming.body.clone(),
            headers,
            properties,
            // The original properties carry no `mandatory` option.
            mandatory: false,
        }])
    }

    /// Snapshots are plain JSON, not encrypted, with `snapshotEvent`; no `end`.
    fn snapshot(&self, snapshot: &Value, event: &str) -> Publication {
        let cfg = &self.cfg;
        let mut headers = self.base_headers();
        set(&mut headers, header::SNAPSHOT_EVENT, js_string(event));
        Publication {
            kind: PublicationKind::Snapshot,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key: cfg.amqp.snapshot_routing_key.clone(),
            body: serde_json::to_vec(snapshot).unwrap_or_default(),
            headers,
            properties: default_properties(cfg),
            mandatory: true,
        }
    }

    /// `{keys}` encrypted like data, to the update-keys routing key, always persistent.
    fn update_keys(
        &self,
        keys: Value,
        generation: u64,
        now_ms: i64,
    ) -> Result<Publication, ProtocolError> {
        let cfg = &self.cfg;
        let account_id = self
            .flags
            .account_id
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or(ProtocolError::NoAccount)?;
        let mut headers = self.base_headers();
        set(&mut headers, header::END, js_number(now_ms));
        set(
            &mut headers,
            header::PROTOCOL_VERSION,
            js_number(i64::from(cfg.protocol_version.number())),
        );
        set(&mut headers, header::ACCOUNT_ID, js_string(account_id));
        set(
            &mut headers,
            header::GENERATION,
            js_number(i64::try_from(generation).unwrap_or(i64::MAX)),
        );
        let body = cfg
            .cipher
            .encrypt_json(&serde_json::json!({ "keys": keys }), cfg.protocol_version);
        self.check_size(&body)?;
        Ok(Publication {
            kind: PublicationKind::UpdateKeys,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key: cfg.amqp.update_keys_routing_key.clone(),
            body,
            headers,
            // Losing a rotated refresh token is unrecoverable, so these survive a broker restart.
            properties: default_properties(cfg).with_delivery_mode(2),
            mandatory: true,
        })
    }

    /// `{statusCode, body, headers}` encrypted as protocol v1 to the incoming `reply_to`,
    /// header `protocolVersion: 1`, no `end`.
    fn http_reply(&self, mut reply: HttpReply) -> Result<Publication, ProtocolError> {
        let cfg = &self.cfg;
        let mut headers = self.base_headers();
        let routing_key = header_string(&headers, header::REPLY_TO)
            .filter(|s| !s.is_empty())
            .ok_or(ProtocolError::NoReplyTo)?;
        short(&routing_key)?;
        reply
            .headers
            .retain(|k, _| !k.eq_ignore_ascii_case(header::ROUTING_KEY_OVERRIDE));
        set(&mut headers, header::PROTOCOL_VERSION, js_number(1));
        let body = cfg.cipher.encrypt_json(&reply, ProtocolVersion::V1);
        self.check_size(&body)?;
        Ok(Publication {
            kind: PublicationKind::HttpReply,
            exchange: cfg.amqp.publish_messages_to.clone(),
            routing_key,
            body,
            headers,
            properties: default_properties(cfg),
            mandatory: true,
        })
    }

    fn check_size(&self, body: &[u8]) -> Result<(), ProtocolError> {
        let limit = self.cfg.outgoing_message_size_limit;
        if body.len() > limit {
            Err(ProtocolError::TooLarge {
                size: body.len(),
                limit,
            })
        } else {
            Ok(())
        }
    }
}

/// The error publication for a failure outside message processing (startup or init hook),
/// as Node's `reportError`: step identity headers and a new `messageId`, no `errorInput`.
pub(crate) fn startup_error_publication(cfg: &RuntimeConfig, error: &ErrorInfo) -> Publication {
    let mut headers = FieldTable::default();
    for (name, value) in &cfg.additional_headers.0 {
        if let Ok(key) = ShortString::try_new(name.clone()) {
            headers.insert(key, js_string(value.clone()));
        }
    }
    identity_headers(cfg, &mut headers);
    set(&mut headers, header::MESSAGE_ID, js_string(fresh_id()));
    let mut envelope = Map::new();
    envelope.insert(
        "error".into(),
        Value::String(
            cfg.cipher
                .encrypt_base64(&serde_json::to_vec(error).unwrap_or_default()),
        ),
    );
    Publication {
        kind: PublicationKind::Error,
        exchange: cfg.amqp.publish_messages_to.clone(),
        routing_key: cfg.amqp.error_routing_key.clone(),
        body: serde_json::to_vec(&envelope).unwrap_or_default(),
        headers,
        properties: default_properties(cfg),
        mandatory: true,
    }
}

fn identity_headers(cfg: &RuntimeConfig, headers: &mut FieldTable) {
    let id = &cfg.identity;
    for (name, value) in [
        (header::EXEC_ID, &id.exec_id),
        (header::TASK_ID, &id.flow_id),
        (header::WORKSPACE_ID, &id.workspace_id),
        (header::CONTAINER_ID, &id.container_id),
        (header::USER_ID, &id.user_id),
        (header::STEP_ID, &id.step_id),
        (header::COMP_ID, &id.comp_id),
        (header::FUNCTION, &id.function),
    ] {
        set(headers, name, js_string(value.clone()));
    }
}

/// Node's `outgoingMessageHeaders` (reference §3.5), in Node's precedence order: incoming
/// meta headers and `reply_to`, then additional vars, then the fixed fields.
fn base_headers(
    cfg: &RuntimeConfig,
    incoming: &FieldTable,
    start_ms: i64,
    message_id: &str,
    thread_id: &AMQPValue,
) -> FieldTable {
    let mut headers = FieldTable::default();
    for (key, value) in incoming {
        if !is_meta_header(key) {
            continue;
        }
        if let Ok(name) = ShortString::try_new(key.as_str().to_lowercase()) {
            headers.insert(name, value.clone());
        }
    }
    if let Some(reply_to) = incoming.inner().get(header::REPLY_TO).filter(|v| truthy(v)) {
        set(&mut headers, header::REPLY_TO, reply_to.clone());
    }
    for (name, value) in &cfg.additional_headers.0 {
        if let Ok(key) = ShortString::try_new(name.clone()) {
            headers.insert(key, js_string(value.clone()));
        }
    }
    if let Some(parent) = parent_id(incoming) {
        set(&mut headers, header::PARENT_MESSAGE_ID, parent.clone());
    }
    set(&mut headers, header::THREAD_ID, thread_id.clone());
    set(&mut headers, header::MESSAGE_ID, js_string(message_id));
    identity_headers(cfg, &mut headers);
    set(&mut headers, header::START, js_number(start_ms));
    headers
}

/// The input's `messageId` when set: the outgoing `parentMessageId`.
fn parent_id(incoming: &FieldTable) -> Option<&AMQPValue> {
    incoming
        .inner()
        .get(header::MESSAGE_ID)
        .filter(|v| truthy(v))
}

/// `x-eio-meta-*` in any case. Checked before lowercasing: most headers are not meta headers,
/// and this runs for every header of every publication.
fn is_meta_header(key: &ShortString) -> bool {
    key.as_str()
        .as_bytes()
        .get(..header::META_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(header::META_PREFIX.as_bytes()))
}

/// The input's `threadId`, else its meta trace id, else a fresh id (Node's precedence).
fn thread_id_of(incoming: &FieldTable) -> AMQPValue {
    let trace_id = || {
        // The last one in key order, as the header the base headers keep.
        incoming
            .into_iter()
            .rev()
            .find(|(key, _)| {
                is_meta_header(key) && key.as_str().eq_ignore_ascii_case(header::META_TRACE_ID)
            })
            .map(|(_, value)| value)
    };
    incoming
        .inner()
        .get(header::THREAD_ID)
        .filter(|v| truthy(v))
        .or_else(|| trace_id().filter(|v| truthy(v)))
        .cloned()
        .unwrap_or_else(|| js_string(fresh_id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{base_env, with};
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn fresh_ids_are_distinct_version_4_uuids() {
        let a = Uuid::parse_str(&fresh_id()).unwrap();
        let b = Uuid::parse_str(&fresh_id()).unwrap();
        assert_eq!(a.get_version(), Some(uuid::Version::Random));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

    const START: i64 = 1_700_000_000_000;
    const END: i64 = 1_700_000_000_500;
    const OUT_ID: &str = "11111111-2222-4333-8444-555555555555";

    fn cfg_from(env: Vec<(String, String)>) -> Arc<RuntimeConfig> {
        Arc::new(RuntimeConfig::from_vars(env).unwrap())
    }

    fn cfg() -> Arc<RuntimeConfig> {
        cfg_from(base_env())
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn input_message() -> Message {
        serde_json::from_value(json!({
            "id": "in-msg-id",
            "body": {"n": 1},
            "passthrough": {"step_0": {"body": {"first": true}}}
        }))
        .unwrap()
    }

    fn incoming_with(
        cfg: &RuntimeConfig,
        headers: FieldTable,
        version: ProtocolVersion,
    ) -> Incoming {
        let body = cfg.cipher.encrypt_json(&input_message(), version);
        Incoming::new(
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(1)
                .with_headers(headers),
            body,
        )
    }

    fn default_headers() -> FieldTable {
        table(&[
            ("messageId", js_string("in-1")),
            ("parentMessageId", js_string("grandparent")),
            ("threadId", js_string("thread-1")),
            ("X-EIO-META-Trace-Id", js_string("trace-1")),
            ("x-eio-meta-custom", js_number(5)),
            ("reply_to", js_string("reply.queue.key")),
            ("stepId", js_string("step_0")),
            ("execId", js_string("previous-exec")),
            ("unrelated", js_string("dropped")),
        ])
    }

    fn ctx_with(cfg: Arc<RuntimeConfig>, headers: FieldTable, flags: StepFlags) -> OutgoingContext {
        let incoming = incoming_with(&cfg, headers, ProtocolVersion::V1);
        let input = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        OutgoingContext::with_start(cfg, incoming, &input, flags, START, Some(OUT_ID.into()))
    }

    fn ctx() -> OutgoingContext {
        ctx_with(cfg(), default_headers(), StepFlags::default())
    }

    fn keys(t: &FieldTable) -> Vec<&str> {
        t.inner().keys().map(|k| k.as_str()).collect()
    }

    fn s(v: &str) -> AMQPValue {
        js_string(v)
    }

    #[test]
    fn base_headers_are_exactly_nodes() {
        let c = ctx();
        let h = c.base_headers();
        let mut expected = vec![
            "compId",
            "containerId",
            "execId",
            "function",
            "messageId",
            "parentMessageId",
            "reply_to",
            "start",
            "stepId",
            "taskId",
            "threadId",
            "userId",
            "workspaceId",
            "x-eio-meta-custom",
            "x-eio-meta-trace-id",
        ];
        expected.sort_unstable();
        assert_eq!(keys(&h), expected);
        let get = |k: &str| h.inner().get(k).unwrap().clone();
        assert_eq!(get("messageId"), s(OUT_ID));
        assert_eq!(get("parentMessageId"), s("in-1"));
        assert_eq!(get("threadId"), s("thread-1"));
        assert_eq!(get("reply_to"), s("reply.queue.key"));
        assert_eq!(get("x-eio-meta-trace-id"), s("trace-1"));
        assert_eq!(get("x-eio-meta-custom"), AMQPValue::ShortShortInt(5));
        assert_eq!(get("execId"), s("some-exec-id"));
        assert_eq!(get("taskId"), s("5559edd38968ec0736000003"));
        assert_eq!(get("workspaceId"), s("5559edd38968ec073600683"));
        assert_eq!(
            get("containerId"),
            s("dc1c8c3f-f9cb-49e1-a6b8-716af9e15948")
        );
        assert_eq!(get("userId"), s("5559edd38968ec0736000002"));
        assert_eq!(get("stepId"), s("step_1"));
        assert_eq!(get("compId"), s("5559edd38968ec0736000456"));
        assert_eq!(get("function"), s("list"));
        assert_eq!(get("start"), AMQPValue::LongLongInt(START));
        assert_eq!(c.thread_id().as_deref(), Some("thread-1"));
        assert_eq!(c.message_id().as_deref(), Some(OUT_ID));
        assert_eq!(c.parent_message_id().as_deref(), Some("in-1"));
    }

    #[test]
    fn thread_id_falls_back_to_trace_id_then_a_new_uuid() {
        let c = ctx_with(
            cfg(),
            table(&[("x-eio-meta-trace-id", s("trace-9"))]),
            StepFlags::default(),
        );
        assert_eq!(c.thread_id().as_deref(), Some("trace-9"));
        assert!(!c.base_headers().contains_key("parentMessageId"));
        assert!(!c.base_headers().contains_key("reply_to"));

        let c = ctx_with(cfg(), FieldTable::default(), StepFlags::default());
        let thread = c.thread_id().unwrap();
        assert!(Uuid::parse_str(&thread).is_ok(), "{thread}");
    }

    #[test]
    fn additional_vars_are_added_but_cannot_override_fixed_fields() {
        let env = [
            (
                "ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS",
                "ELASTICIO_TENANT_ID,STEP_ID,REPLY_TO",
            ),
            ("ELASTICIO_TENANT_ID", "tenant-1"),
            ("STEP_ID", "not-mine"),
            ("REPLY_TO", "overridden"),
        ]
        .into_iter()
        .fold(base_env(), |env, (k, v)| with(env, k, v));
        let c = ctx_with(cfg_from(env), default_headers(), StepFlags::default());
        let table = c.base_headers();
        let h = table.inner();
        assert_eq!(h.get("tenantId"), Some(&s("tenant-1")));
        assert_eq!(h.get("stepId"), Some(&s("step_1")));
        // As in Node, additional vars are spread after the incoming headers.
        assert_eq!(h.get("replyTo"), Some(&s("overridden")));
        assert_eq!(h.get("reply_to"), Some(&s("reply.queue.key")));
    }

    #[test]
    fn data_publication() {
        let c = ctx();
        let mut msg = Message::new(json!({"hello": "world"}));
        msg.id = Some("out-msg-1".into());
        msg.headers
            .insert("X-EIO-Routing-Key".into(), json!("custom.route"));
        msg.headers.insert("keep".into(), json!("me"));
        let pubs = c.publications_at(Outgoing::Data(msg.clone()), END).unwrap();
        assert_eq!(pubs.len(), 1);
        let p = &pubs[0];
        assert_eq!(p.kind, PublicationKind::Data);
        assert_eq!(p.exchange, "userexchange:5527f0ea43238e5d5f000001");
        assert_eq!(p.routing_key, "custom.route");
        assert!(p.mandatory);
        assert_eq!(p.header("messageId"), Some(&s("out-msg-1")));
        assert_eq!(p.header("end"), Some(&AMQPValue::LongLongInt(END)));
        assert_eq!(
            p.header("protocolVersion"),
            Some(&AMQPValue::ShortShortInt(1))
        );
        assert_eq!(p.header("start"), Some(&AMQPValue::LongLongInt(START)));
        assert_eq!(p.header("parentMessageId"), Some(&s("in-1")));
        assert_eq!(
            p.properties.content_type().as_ref().map(|v| v.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.properties.content_encoding().as_ref().map(|v| v.as_str()),
            Some("utf8")
        );
        // Persistent by default (a deliberate difference from Node).
        assert_eq!(*p.properties.delivery_mode(), Some(2));
        assert_eq!(*p.properties.headers(), None);
        assert_eq!(*p.properties.expiration(), None);
        // v1: the body is base64 text.
        assert!(p.body.iter().all(|b| b.is_ascii_graphic()));
        let sent: Message = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V1)
            .unwrap();
        assert_eq!(sent.body, json!({"hello": "world"}));
        assert_eq!(sent.id.as_deref(), Some("out-msg-1"));
        assert!(!sent.headers.contains_key("X-EIO-Routing-Key"));
        assert_eq!(sent.headers.get("keep"), Some(&json!("me")));
        assert_eq!(sent.passthrough, None);

        // Without override: the data routing key; without id: a fresh uuid.
        let p = &c
            .publications_at(
                Outgoing::Data(Message {
                    id: None,
                    ..Message::new(json!({}))
                }),
                END,
            )
            .unwrap()[0];
        assert_eq!(
            p.routing_key,
            "5559edd38968ec0736000003.step_1.1432205514864.message"
        );
        let id = header_string(&p.headers, "messageId").unwrap();
        assert!(Uuid::parse_str(&id).is_ok());
        assert_ne!(id, OUT_ID);
    }

    #[test]
    fn data_in_protocol_v2_and_transient_mode() {
        let env = with(
            with(base_env(), "ELASTICIO_PROTOCOL_VERSION", "2"),
            "ELASTICIO_AMQP_PERSISTENT_MESSAGES",
            "false",
        );
        let c = ctx_with(cfg_from(env), default_headers(), StepFlags::default());
        let p = &c
            .publications_at(Outgoing::Data(Message::new(json!({"a": 1}))), END)
            .unwrap()[0];
        assert_eq!(
            p.header("protocolVersion"),
            Some(&AMQPValue::ShortShortInt(2))
        );
        assert_eq!(*p.properties.delivery_mode(), Some(1));
        let sent: Message = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V2)
            .unwrap();
        assert_eq!(sent.body, json!({"a": 1}));
    }

    #[test]
    fn passthrough_adds_own_step() {
        let flags = StepFlags {
            is_passthrough: true,
            account_id: None,
        };
        let c = ctx_with(cfg(), default_headers(), flags.clone());
        let mut msg = Message::new(json!({"out": 1}));
        msg.id = Some("o1".into());
        let p = &c.publications_at(Outgoing::Data(msg), END).unwrap()[0];
        let sent: Message = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V1)
            .unwrap();
        let pt = sent.passthrough.unwrap();
        assert_eq!(pt["step_0"], json!({"body": {"first": true}}));
        assert_eq!(pt["step_1"]["body"], json!({"out": 1}));
        assert_eq!(pt["step_1"]["id"], json!("o1"));
        assert!(pt["step_1"].get("passthrough").is_none());

        // NO_SELF_PASSTRHOUGH: the *incoming* message under the incoming stepId.
        let env = with(base_env(), "ELASTICIO_NO_SELF_PASSTRHOUGH", "true");
        let headers = with_step(default_headers(), "prev_step");
        let c = ctx_with(cfg_from(env), headers, flags);
        let p = &c
            .publications_at(Outgoing::Data(Message::new(json!({"out": 2}))), END)
            .unwrap()[0];
        let sent: Message = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V1)
            .unwrap();
        let pt = sent.passthrough.unwrap();
        assert_eq!(pt["prev_step"]["body"], json!({"n": 1}));
        assert_eq!(pt["prev_step"]["id"], json!("in-msg-id"));
        assert!(pt.get("step_1").is_none());
        assert!(pt.get("step_0").is_some());

        // Not a passthrough step: the component's passthrough is left alone.
        let c = ctx();
        let mut msg = Message::new(json!({}));
        msg.passthrough = Some(Map::new());
        let p = &c.publications_at(Outgoing::Data(msg), END).unwrap()[0];
        let sent: Message = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V1)
            .unwrap();
        assert_eq!(sent.passthrough, Some(Map::new()));
    }

    fn with_step(mut t: FieldTable, step: &str) -> FieldTable {
        t.insert("stepId".into(), s(step));
        t
    }

    #[test]
    fn error_envelope_and_reply() {
        let c = ctx();
        let error = ErrorInfo {
            name: "TypeError".into(),
            message: "boom".into(),
            stack: "TypeError: boom\n    at x".into(),
        };
        let pubs = c
            .publications_at(Outgoing::Error(error.clone()), END)
            .unwrap();
        assert_eq!(pubs.len(), 2);
        let p = &pubs[0];
        assert_eq!(p.kind, PublicationKind::Error);
        assert_eq!(
            p.routing_key,
            "5559edd38968ec0736000003.step_1.1432205514864.error"
        );
        assert_eq!(p.header("end"), Some(&AMQPValue::LongLongInt(END)));
        assert!(p.header("protocolVersion").is_none());
        assert!(p.header("x-eio-error-response").is_none());
        // The envelope itself is plain JSON.
        let envelope: Map<String, Value> = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(keys_of(&envelope), vec!["error", "errorInput"]);
        let err_b64 = envelope["error"].as_str().unwrap();
        let plain = c.cfg.cipher.decrypt_base64(err_b64).unwrap();
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            r#"{"name":"TypeError","message":"boom","stack":"TypeError: boom\n    at x"}"#
        );
        let input: Message = c
            .cfg
            .cipher
            .decrypt_json(
                envelope["errorInput"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap();
        assert_eq!(input, input_message());

        let reply = &pubs[1];
        assert_eq!(reply.kind, PublicationKind::ErrorReply);
        assert_eq!(reply.routing_key, "reply.queue.key");
        assert_eq!(reply.exchange, p.exchange);
        assert_eq!(reply.body, err_b64.as_bytes());
        assert_eq!(
            reply.header("x-eio-error-response"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(reply.header("end"), Some(&AMQPValue::LongLongInt(END)));

        // NO_ERROR_REPLIES suppresses the reply.
        let c = ctx_with(
            cfg_from(with(base_env(), "ELASTICIO_NO_ERROR_REPLIES", "true")),
            default_headers(),
            StepFlags::default(),
        );
        assert_eq!(
            c.publications_at(Outgoing::Error(error), END)
                .unwrap()
                .len(),
            1
        );
    }

    /// Issue 13 (4): a 20 MB input must not be copied whole into its error event.
    #[test]
    fn error_input_of_a_large_input_is_cut_and_marked() {
        let cfg = cfg();
        let big = "x".repeat(3 * 1024 * 1024);
        let message: Message =
            serde_json::from_value(json!({"id": "big-1", "body": {"data": big}})).unwrap();
        let body = cfg.cipher.encrypt_json(&message, ProtocolVersion::V1);
        let incoming = Incoming::new(
            BasicProperties::default().with_headers(default_headers()),
            body.clone(),
        );
        let input = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        let c = OutgoingContext::with_start(
            cfg.clone(),
            incoming,
            &input,
            StepFlags::default(),
            START,
            Some(OUT_ID.into()),
        );
        let pubs = c
            .publications_at(Outgoing::Error(ErrorInfo::new("too big")), END)
            .unwrap();
        let envelope: Map<String, Value> = serde_json::from_slice(&pubs[0].body).unwrap();
        let error_input = envelope["errorInput"].as_str().unwrap();
        assert!(
            error_input.len() <= ERROR_INPUT_LIMIT,
            "errorInput is {} bytes",
            error_input.len()
        );
        assert!(pubs[0].body.len() < ERROR_INPUT_LIMIT + 1024);
        assert_eq!(envelope["errorInputTruncated"], json!(true));
        let cut: Value = cfg
            .cipher
            .decrypt_json(error_input.as_bytes(), ProtocolVersion::V1)
            .unwrap();
        assert_eq!(cut["errorInputTruncated"], json!(true));
        assert_eq!(cut["originalBytes"], json!(body.len()));
        assert_eq!(cut["id"], json!("big-1"));
        let head = cut["head"].as_str().unwrap();
        assert!(
            head.starts_with(r#"{"id":"big-1","body":{"data":"xxx"#),
            "{head:.40}"
        );
        assert!(
            head.len() > 40 * 1024,
            "keeps most of the budget: {}",
            head.len()
        );
    }

    fn keys_of(m: &Map<String, Value>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    #[test]
    fn error_input_of_a_v2_message_is_base64() {
        let cfg = cfg();
        let headers = table(&[("protocolVersion", js_number(2)), ("messageId", s("m"))]);
        let incoming = incoming_with(&cfg, headers, ProtocolVersion::V2);
        assert_eq!(incoming.protocol_version(), ProtocolVersion::V2);
        let input = incoming.decode(&cfg.cipher, InputFormat::Default).unwrap();
        let c = OutgoingContext::with_start(
            cfg.clone(),
            incoming,
            &input,
            StepFlags::default(),
            START,
            Some(OUT_ID.into()),
        );
        let p = &c
            .publications_at(Outgoing::Error(ErrorInfo::new("x")), END)
            .unwrap()[0];
        let envelope: Map<String, Value> = serde_json::from_slice(&p.body).unwrap();
        let back: Message = cfg
            .cipher
            .decrypt_json(
                envelope["errorInput"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap();
        assert_eq!(back, input_message());
    }

    #[test]
    fn rebound_republishes_the_original_with_growing_expiration() {
        let cfg = cfg();
        let mut expirations = Vec::new();
        for previous in [None, Some(1), Some(2), Some(3)] {
            let mut headers = default_headers();
            if let Some(n) = previous {
                headers.insert("reboundIteration".into(), js_number(n));
            }
            let c = ctx_with(cfg.clone(), headers.clone(), StepFlags::default());
            let pubs = c
                .publications_at(
                    Outgoing::Rebound {
                        reason: "busy".into(),
                    },
                    END,
                )
                .unwrap();
            assert_eq!(pubs.len(), 1);
            let p = &pubs[0];
            assert_eq!(p.kind, PublicationKind::Rebound);
            assert_eq!(
                p.routing_key,
                "5559edd38968ec0736000003.step_1.1432205514864.rebound"
            );
            assert_eq!(p.body, c.incoming().body, "the original body, unchanged");
            assert!(!p.mandatory);
            let iteration = previous.unwrap_or(0) + 1;
            assert_eq!(p.header("reboundIteration"), Some(&js_number(iteration)));
            assert_eq!(p.header("reboundReason"), Some(&s("busy")));
            assert_eq!(p.header("end"), Some(&AMQPValue::LongLongInt(END)));
            // Original headers are kept as they were (no new messageId, no start).
            assert_eq!(p.header("messageId"), Some(&s("in-1")));
            assert_eq!(p.header("execId"), Some(&s("previous-exec")));
            assert_eq!(p.header("unrelated"), Some(&s("dropped")));
            assert!(p.header("start").is_none());
            assert_eq!(
                p.properties.content_type().as_ref().map(|v| v.as_str()),
                Some("application/json")
            );
            assert_eq!(*p.properties.headers(), None);
            expirations.push(
                p.properties
                    .expiration()
                    .as_ref()
                    .unwrap()
                    .as_str()
                    .to_owned(),
            );
        }
        assert_eq!(expirations, ["15000", "30000", "60000", "120000"]);
    }

    #[test]
    fn rebound_limit_exceeded_becomes_an_error() {
        let mut headers = default_headers();
        headers.insert("reboundIteration".into(), js_number(20));
        let c = ctx_with(cfg(), headers, StepFlags::default());
        let pubs = c
            .publications_at(
                Outgoing::Rebound {
                    reason: "busy".into(),
                },
                END,
            )
            .unwrap();
        assert_eq!(pubs[0].kind, PublicationKind::Error);
        assert_eq!(pubs[1].kind, PublicationKind::ErrorReply);
        assert!(
            pubs[0].header("end").is_none(),
            "Node sends this error without `end`"
        );
        let envelope: Map<String, Value> = serde_json::from_slice(&pubs[0].body).unwrap();
        let error: ErrorInfo = c
            .cfg
            .cipher
            .decrypt_json(
                envelope["error"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap();
        assert_eq!(error.message, "Rebound limit exceeded");
        assert_eq!(error.name, "Error");

        // Iteration 20 itself is still allowed with limit 20.
        let mut headers = default_headers();
        headers.insert("reboundIteration".into(), AMQPValue::LongInt(19));
        let c = ctx_with(cfg(), headers, StepFlags::default());
        let p = &c
            .publications_at(
                Outgoing::Rebound {
                    reason: "busy".into(),
                },
                END,
            )
            .unwrap()[0];
        assert_eq!(p.kind, PublicationKind::Rebound);
        assert_eq!(p.header("reboundIteration"), Some(&js_number(20)));
        assert_eq!(
            p.properties.expiration().as_ref().unwrap().as_str(),
            "7864320000"
        );

        // REBOUND_LIMIT=0: no rebound at all.
        let c = ctx_with(
            cfg_from(with(base_env(), "ELASTICIO_REBOUND_LIMIT", "0")),
            default_headers(),
            StepFlags::default(),
        );
        let pubs = c
            .publications_at(Outgoing::Rebound { reason: "x".into() }, END)
            .unwrap();
        assert_eq!(pubs[0].kind, PublicationKind::Error);
    }

    #[test]
    fn non_numeric_rebound_iteration_counts_as_first() {
        // Node: `typeof h.reboundIteration === 'number'`.
        let mut headers = default_headers();
        headers.insert("reboundIteration".into(), s("7"));
        let c = ctx_with(cfg(), headers, StepFlags::default());
        let p = &c
            .publications_at(Outgoing::Rebound { reason: "r".into() }, END)
            .unwrap()[0];
        assert_eq!(p.header("reboundIteration"), Some(&js_number(1)));
    }

    #[test]
    fn rebound_expiration_doubles_and_saturates() {
        assert_eq!(rebound_expiration_ms(15_000, 1), 15_000);
        assert_eq!(rebound_expiration_ms(15_000, 2), 30_000);
        assert_eq!(rebound_expiration_ms(15_000, 3), 60_000);
        assert_eq!(rebound_expiration_ms(15_000, 20), 7_864_320_000);
        assert_eq!(rebound_expiration_ms(15_000, 100), u64::MAX);
        assert_eq!(rebound_expiration_ms(0, 5), 0);
    }

    #[test]
    fn snapshots_are_plain_json() {
        let c = ctx();
        let p = &c
            .publications_at(Outgoing::Snapshot(json!({"cursor": "2024-01-01"})), END)
            .unwrap()[0];
        assert_eq!(p.kind, PublicationKind::Snapshot);
        assert_eq!(
            p.routing_key,
            "5559edd38968ec0736000003.step_1.1432205514864.snapshot"
        );
        assert_eq!(p.body, br#"{"cursor":"2024-01-01"}"#);
        assert_eq!(p.header("snapshotEvent"), Some(&s("snapshot")));
        assert!(p.header("end").is_none());
        assert!(p.header("protocolVersion").is_none());
        let mut update = Map::new();
        update.insert("page".into(), json!(2));
        let p = &c
            .publications_at(Outgoing::UpdateSnapshot(update), END)
            .unwrap()[0];
        assert_eq!(p.body, br#"{"page":2}"#);
        assert_eq!(p.header("snapshotEvent"), Some(&s("updateSnapshot")));
    }

    #[test]
    fn http_reply_goes_to_reply_to_in_v1() {
        let c = ctx_with(
            cfg_from(with(base_env(), "ELASTICIO_PROTOCOL_VERSION", "2")),
            default_headers(),
            StepFlags::default(),
        );
        let mut headers = Map::new();
        headers.insert("content-type".into(), json!("text/plain"));
        headers.insert("x-eio-routing-key".into(), json!("stripped"));
        let reply = HttpReply {
            status_code: 201,
            body: json!("created"),
            headers,
        };
        let p = &c.publications_at(Outgoing::HttpReply(reply), END).unwrap()[0];
        assert_eq!(p.kind, PublicationKind::HttpReply);
        assert_eq!(p.routing_key, "reply.queue.key");
        assert_eq!(
            p.header("protocolVersion"),
            Some(&AMQPValue::ShortShortInt(1))
        );
        assert!(p.header("end").is_none());
        let plain = c.cfg.cipher.decrypt(&p.body, ProtocolVersion::V1).unwrap();
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            r#"{"statusCode":201,"body":"created","headers":{"content-type":"text/plain"}}"#
        );

        let c = ctx_with(cfg(), FieldTable::default(), StepFlags::default());
        let e = c
            .publications_at(
                Outgoing::HttpReply(HttpReply {
                    status_code: 200,
                    body: json!({}),
                    headers: Map::new(),
                }),
                END,
            )
            .unwrap_err();
        assert_eq!(e, ProtocolError::NoReplyTo);
        assert_eq!(
            e.to_string(),
            "Component emitted 'httpReply' event but 'reply_to' was not found in AMQP headers"
        );
    }

    #[test]
    fn update_keys_publication() {
        let flags = StepFlags {
            is_passthrough: false,
            account_id: Some("acc-123".into()),
        };
        let c = ctx_with(cfg(), default_headers(), flags);
        let keys = json!({"oauth": {"access_token": "new", "refresh_token": "r2"}});
        let p = &c
            .publications_at(
                Outgoing::UpdateKeys {
                    keys: keys.clone(),
                    generation: 7,
                },
                END,
            )
            .unwrap()[0];
        assert_eq!(p.kind, PublicationKind::UpdateKeys);
        assert_eq!(p.exchange, "userexchange:5527f0ea43238e5d5f000001");
        assert_eq!(
            p.routing_key,
            "5559edd38968ec0736000003.step_1.1432205514864.update_keys"
        );
        assert_eq!(p.header("accountId"), Some(&s("acc-123")));
        assert_eq!(p.header("stepId"), Some(&s("step_1")));
        assert_eq!(p.header("generation"), Some(&AMQPValue::ShortShortInt(7)));
        assert_eq!(
            p.header("protocolVersion"),
            Some(&AMQPValue::ShortShortInt(1))
        );
        assert_eq!(p.header("end"), Some(&AMQPValue::LongLongInt(END)));
        assert_eq!(*p.properties.delivery_mode(), Some(2), "always persistent");
        let body: Value = c
            .cfg
            .cipher
            .decrypt_json(&p.body, ProtocolVersion::V1)
            .unwrap();
        assert_eq!(body, json!({ "keys": keys }));

        let e = ctx()
            .publications_at(
                Outgoing::UpdateKeys {
                    keys: json!({}),
                    generation: 1,
                },
                END,
            )
            .unwrap_err();
        assert_eq!(e, ProtocolError::NoAccount);
    }

    #[test]
    fn outgoing_size_limit() {
        let c = ctx_with(
            cfg_from(with(
                base_env(),
                "ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT",
                "200",
            )),
            default_headers(),
            StepFlags::default(),
        );
        let small = Message::new(json!("x"));
        assert!(c.publications_at(Outgoing::Data(small), END).is_ok());
        let big = Message::new(json!("x".repeat(500)));
        let size = c.cfg.cipher.encrypt_json(&big, ProtocolVersion::V1).len();
        let e = c.publications_at(Outgoing::Data(big), END).unwrap_err();
        assert_eq!(e, ProtocolError::TooLarge { size, limit: 200 });
        assert_eq!(
            e.to_string(),
            format!("Outgoing message size {size} exceeds limit of 200.")
        );
        // The limit is inclusive, like Node's `>` check.
        let exact = Message::new(json!("x"));
        let n = c.cfg.cipher.encrypt_json(&exact, ProtocolVersion::V1).len();
        let c = ctx_with(
            cfg_from(with(
                base_env(),
                "ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT",
                &n.to_string(),
            )),
            default_headers(),
            StepFlags::default(),
        );
        assert!(c.publications_at(Outgoing::Data(exact), END).is_ok());
    }

    #[test]
    fn retry_header_only_on_retries_and_one_publish_id_for_all_attempts() {
        let p = &ctx()
            .publications_at(Outgoing::Snapshot(json!({})), END)
            .unwrap()[0];
        let first = p.amqp_properties(0, "pub-1");
        let first_headers = first.headers().as_ref().unwrap();
        assert!(!first_headers.contains_key("retry"));
        assert_eq!(
            first_headers.inner().get("publishId"),
            Some(&js_string("pub-1"))
        );
        let mut expected = p.headers.clone();
        expected.insert("publishId".into(), js_string("pub-1"));
        assert_eq!(first_headers, &expected);
        let third = p.amqp_properties(3, "pub-1");
        let third_headers = third.headers().as_ref().unwrap();
        assert_eq!(
            third_headers.inner().get("retry"),
            Some(&AMQPValue::ShortShortInt(3))
        );
        assert_eq!(
            third_headers.inner().get("publishId"),
            Some(&js_string("pub-1"))
        );
        assert_eq!(third.content_type(), p.properties.content_type());
        // Received, the retry is recognisable as a possible second copy; the first attempt
        // and a message without a publishId (another runtime's retry) are not.
        let received = |props: BasicProperties| Incoming::new(props, p.body.clone());
        assert!(received(third.clone()).is_republished());
        assert!(!received(first).is_republished());
        let mut foreign = FieldTable::default();
        for (key, value) in third_headers {
            if key.as_str() != "publishId" {
                foreign.insert(key.clone(), value.clone());
            }
        }
        assert!(!received(third.clone().with_headers(foreign)).is_republished());
    }

    #[test]
    fn numbers_are_typed_like_amqplib() {
        assert_eq!(js_number(1), AMQPValue::ShortShortInt(1));
        assert_eq!(js_number(-128), AMQPValue::ShortShortInt(-128));
        assert_eq!(js_number(200), AMQPValue::ShortInt(200));
        assert_eq!(js_number(100_000), AMQPValue::LongInt(100_000));
        assert_eq!(js_number(START), AMQPValue::LongLongInt(START));
        assert_eq!(js_string("a"), AMQPValue::LongString("a".into()));
    }

    #[test]
    fn message_keeps_unknown_fields() {
        let raw = json!({
            "id": 42,
            "body": {"a": 1},
            "attachments": null,
            "headers": {"h": "v"},
            "method": "POST",
            "url": "https://in.example/hook",
            "query": {"q": "1"}
        });
        let m: Message = serde_json::from_value(raw).unwrap();
        assert_eq!(m.id.as_deref(), Some("42"));
        assert!(m.attachments.is_empty());
        assert_eq!(m.extra["method"], json!("POST"));
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["url"], json!("https://in.example/hook"));
        assert_eq!(back["query"], json!({"q": "1"}));
        assert!(back.get("passthrough").is_none());
        let minimal: Message = serde_json::from_value(json!({})).unwrap();
        assert_eq!(minimal.body, json!({}));
        assert_eq!(minimal.id, None);
    }

    #[test]
    fn decode_input() {
        let cfg = cfg();
        let incoming = incoming_with(&cfg, default_headers(), ProtocolVersion::V1);
        let m = incoming.decode(&cfg.cipher, InputFormat::Default).unwrap();
        assert_eq!(m.body, json!({"n": 1}));
        assert_eq!(m.headers["reply_to"], json!("reply.queue.key"));
        assert_eq!(incoming.message_id().as_deref(), Some("in-1"));

        // Header says v2 but the body is v1 → undecryptable, an error (never a panic).
        let mut wrong = incoming.clone();
        wrong.properties = wrong
            .properties
            .clone()
            .with_headers(table(&[("protocolVersion", s("2"))]));
        assert!(matches!(
            wrong.decode(&cfg.cipher, InputFormat::Default),
            Err(ProtocolError::Decrypt(_))
        ));
        let garbage = Incoming::new(BasicProperties::default(), b"%%%".to_vec());
        assert!(garbage.decode(&cfg.cipher, InputFormat::Default).is_err());
        let empty = Incoming::new(BasicProperties::default(), Vec::new());
        assert!(empty.decode(&cfg.cipher, InputFormat::Default).is_err());
        let array = Incoming::new(
            BasicProperties::default(),
            cfg.cipher.encrypt(b"[1,2]", ProtocolVersion::V1),
        );
        assert!(matches!(
            array.decode(&cfg.cipher, InputFormat::Default),
            Err(ProtocolError::InvalidMessage(_))
        ));
    }

    #[test]
    fn decode_error_format_input() {
        let cfg = cfg();
        // An error envelope as produced by a failing step.
        let producer = ctx();
        let p = &producer
            .publications_at(Outgoing::Error(ErrorInfo::new("bad")), END)
            .unwrap()[0];
        let incoming = Incoming::new(
            BasicProperties::default().with_headers(p.headers.clone()),
            p.body.clone(),
        );
        let m = incoming.decode(&cfg.cipher, InputFormat::Error).unwrap();
        assert_eq!(m.body["error"]["message"], json!("bad"));
        assert_eq!(m.body["errorInput"]["body"], json!({"n": 1}));
        assert_eq!(m.headers["stepId"], json!("step_1"));
        assert_eq!(m.headers["start"], json!(START));
        assert_eq!(m.headers["reply_to"], json!("reply.queue.key"));
    }

    #[test]
    fn startup_error() {
        let cfg = cfg();
        let p = startup_error_publication(&cfg, &ErrorInfo::new("init failed"));
        assert_eq!(p.routing_key, cfg.amqp.error_routing_key);
        let mut k = keys(&p.headers);
        k.sort_unstable();
        assert_eq!(
            k,
            [
                "compId",
                "containerId",
                "execId",
                "function",
                "messageId",
                "stepId",
                "taskId",
                "userId",
                "workspaceId"
            ]
        );
        let envelope: Map<String, Value> = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(keys_of(&envelope), ["error"]);
    }

    #[test]
    fn error_info_from_rust_errors() {
        let io = std::io::Error::other("disk on fire");
        let e = ErrorInfo::from_error(&io);
        assert_eq!(e.name, "Error");
        assert_eq!(e.message, "disk on fire");
        assert!(e.stack.starts_with("Error: disk on fire"));
        let json = serde_json::to_string(&ErrorInfo::new("m")).unwrap();
        assert_eq!(json, r#"{"name":"Error","message":"m","stack":"Error: m"}"#);
    }

    #[test]
    fn amqp_json_conversion() {
        let t = table(&[
            ("s", s("x")),
            ("n", js_number(300)),
            ("b", AMQPValue::Boolean(true)),
            ("v", AMQPValue::Void),
            ("d", AMQPValue::Double(1.5)),
        ]);
        assert_eq!(
            field_table_to_json(&t),
            json!({"s": "x", "n": 300, "b": true, "v": null, "d": 1.5})
        );
        assert_eq!(json_to_amqp_value(&json!(5)), AMQPValue::ShortShortInt(5));
        assert_eq!(json_to_amqp_value(&json!("a")), js_string("a"));
    }
}
