use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ConnectorError, ErrorKind, Message};

/// What a function emits while processing one message.
///
/// Serialized (for the local transport and `exec`) as one JSON object per event:
/// `{"event": "data", "data": {…}}`. An `updateKeys` event carries the generation and the
/// names of the keys, never their values: those go to the keys sink (platform or credentials
/// file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "camelCase")]
pub enum Event {
    /// A message for the next step.
    Data(Box<Message>),
    /// A failure; the input message will be rejected.
    Error(ErrorPayload),
    /// The step's new snapshot (its position, for polling triggers).
    Snapshot(Value),
    /// Process this input again later (exponential delay, bounded count).
    Rebound {
        /// Why.
        reason: String,
    },
    /// The credential's keys changed and were persisted.
    UpdateKeys(KeysNotice),
    /// The reply to a request-reply webhook.
    HttpReply(HttpReply),
    /// Processing of the input message finished.
    End,
}

impl Event {
    /// The event's name on the wire (`data`, `error`, `snapshot`, `rebound`, `updateKeys`,
    /// `httpReply`, `end`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Data(_) => "data",
            Self::Error(_) => "error",
            Self::Snapshot(_) => "snapshot",
            Self::Rebound { .. } => "rebound",
            Self::UpdateKeys(_) => "updateKeys",
            Self::HttpReply(_) => "httpReply",
            Self::End => "end",
        }
    }
}

/// An error as Sailor serializes it: `{name, message, stack}` in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Error class, `Error` by default.
    pub name: String,
    /// Human-readable message.
    pub message: String,
    /// Stack trace or cause chain; `Not Available` when there is none (as Node's formatError).
    pub stack: String,
}

impl ErrorInfo {
    /// An `Error` with the given message and a one-line "stack".
    pub fn new(message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            name: "Error".to_owned(),
            stack: format!("Error: {message}"),
            message,
        }
    }

    /// From a Rust error: the message is its `Display`, the stack its `source()` chain.
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let message = error.to_string();
        let mut stack = format!("Error: {message}");
        let mut source = error.source();
        while let Some(cause) = source {
            stack.push_str(&format!("\n    caused by: {cause}"));
            source = cause.source();
        }
        Self {
            name: "Error".to_owned(),
            message,
            stack,
        }
    }
}

/// The elastic.io error payload: `{name, message, stack}` (the connector-side name of
/// [`ErrorInfo`]).
pub use self::ErrorInfo as ErrorPayload;

impl From<&ConnectorError> for ErrorPayload {
    fn from(err: &ConnectorError) -> Self {
        Self {
            name: err.name().to_owned(),
            message: err.message().to_owned(),
            stack: err.stack(),
        }
    }
}

/// That a credential's keys were rotated and persisted, without the secrets themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysNotice {
    /// The credential generation after the rotation.
    pub generation: u64,
    /// Why the keys changed (`expiry`, `rejected_401`, `per_call`, `component`…).
    pub reason: String,
    /// The names of the top-level keys that were persisted.
    pub keys: Vec<String>,
}

/// The reply to a request-reply webhook: `{statusCode, body, headers}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpReply {
    /// HTTP status.
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    /// Response body (any JSON, usually a string or object).
    pub body: Value,
    /// Response headers.
    #[serde(default)]
    pub headers: Map<String, Value>,
}

/// An event could not be handed to the transport.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("could not emit `{event}`: {reason}")]
pub struct EmitError {
    /// The event's name.
    pub event: &'static str,
    /// Why.
    pub reason: String,
}

/// Where the events of one message go: the AMQP publisher, the local transport's output, a test.
///
/// [`emit`](Emitter::emit) returns once the transport has accepted the event (for AMQP: the
/// broker confirmed the publish), which gives connectors backpressure.
#[async_trait]
pub trait Emitter: Send + Sync {
    /// Hands `event` to the transport.
    async fn emit(&self, event: Event) -> Result<(), EmitError>;
}

/// Collects events in memory, for tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Debug, Default)]
pub struct CollectingEmitter {
    events: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
}

#[cfg(any(test, feature = "testing"))]
impl CollectingEmitter {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Emitter for CollectingEmitter {
    async fn emit(&self, event: Event) -> Result<(), EmitError> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }
}

// Here rather than in error.rs: events build on errors, not the other way round.
impl From<EmitError> for ConnectorError {
    fn from(err: EmitError) -> Self {
        Self::new(ErrorKind::EmitError, err.to_string())
    }
}
