//! The connector API: the [`Connector`] trait, the [`Router`] of its functions, its execution
//! [`Context`] and [`Event`]s, the [`Message`] it processes, and the [`Session`] that runs it —
//! the same for every transport (AMQP runtime, local transport, `exec`).
//!
//! This crate is what the runtime builds on and what the `deckhand` facade re-exports as
//! `deckhand::connector`; it also holds the broker-less [`transport`] (JSON lines and a
//! credentials file). It does not speak AMQP or the elastic.io wire protocol (that is
//! `deckhand-runtime`), parse a command line (the `deckhand` crate), or refresh tokens itself
//! (`deckhand-core`'s `TokenManager`, which a session drives).
//!
//! A connector registers its triggers and actions as `async fn` handlers in a [`Router`]
//! ([`Connector::router`]; see the [`router`] module for what a handler can take), says how
//! its credential gets tokens ([`Connector::auth`]), and verifies credentials. Handlers emit
//! events through the [`Context`]; returning `Err` emits an `error` event.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use deckhand_core::auth::MemorySink;
//! use deckhand_connector::*;
//! use deckhand_core::credentials::Credentials;
//! use serde_json::json;
//!
//! struct Echo;
//!
//! #[derive(serde::Deserialize)]
//! struct EchoConfig {
//!     greeting: String,
//! }
//!
//! async fn echo(config: Config<EchoConfig>, message: Message, ctx: Context)
//!     -> Result<(), ConnectorError> {
//!     ctx.emit_data(Message::new(json!({"said": config.greeting, "got": message.body})))
//!         .await?;
//!     Ok(())
//! }
//!
//! #[async_trait]
//! impl Connector for Echo {
//!     fn router(&self) -> Router<Self> {
//!         Router::new().action("echo", echo)
//!     }
//!     async fn verify_credentials(&self, _: &Credentials, _: &VerifyContext)
//!         -> Result<Verification, ConnectorError> {
//!         Ok(Verification::Verified)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ConnectorError> {
//! let step = StepConfig {
//!     fields: json!({"greeting": "hi"}).as_object().unwrap().clone(),
//!     ..StepConfig::default()
//! };
//! let session = Session::new(Arc::new(Echo), step, Arc::new(MemorySink::new()))?;
//! let events = CollectingEmitter::new();
//! let outcome = session.process("echo", Message::new(json!({"n": 1})), Arc::new(events.clone())).await;
//! assert_eq!(outcome.errors, 0);
//! assert_eq!(events.events()[0].name(), "data");
//! assert_eq!(events.events()[1], Event::End);
//! # Ok(()) }
//! ```

#![warn(missing_docs, unnameable_types)]

mod context;
mod error;
mod event;
pub mod field;
mod keys;
mod message;
pub mod router;
mod session;
pub mod transport;

use async_trait::async_trait;
use reqwest_middleware::ClientWithMiddleware;
use serde::Serialize;
use serde_json::Value;

use deckhand_core::auth::{Strategy, TokenEndpoint, TokenManager};
use deckhand_core::credentials::Credentials;

pub use context::Context;
pub use deckhand_component::FunctionKind;
pub use error::{ConnectorError, ErrorKind};
#[cfg(any(test, feature = "testing"))]
pub use event::CollectingEmitter;
pub use event::{EmitError, Emitter, ErrorInfo, ErrorPayload, Event, HttpReply, KeysNotice};
pub use message::{Message, message_from_json};
pub use router::{Body, Call, Config, FromCall, Handler, HandlerFuture, Router, Snapshot};
pub use session::{Outcome, Session, SharedCredential, StepConfig};

/// A trigger or action a connector handles, by its component.json name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Trigger or action.
    pub kind: FunctionKind,
    /// The name, as in component.json.
    pub name: &'static str,
}

impl Function {
    /// A trigger.
    pub const fn trigger(name: &'static str) -> Self {
        Self {
            kind: FunctionKind::Trigger,
            name,
        }
    }

    /// An action.
    pub const fn action(name: &'static str) -> Self {
        Self {
            kind: FunctionKind::Action,
            name,
        }
    }
}

/// The untyped input of a function: what a [`fallback`](Router::fallback) handler (or any
/// handler taking an `Input` argument) gets, for functions only known at run time.
///
/// `Debug` shows the names of the configuration fields, never their values: the configuration
/// holds the credential's keys.
#[derive(Clone)]
pub struct Input {
    /// The incoming message.
    pub message: Message,
    /// The step configuration: field values merged with the credential's current keys.
    pub config: Value,
    /// The step's snapshot (a polling trigger's position).
    pub snapshot: Value,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("message", &self.message)
            .field("config", &field_names(&self.config))
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// The field names of a JSON object (for `Debug` output that must not show values).
pub(crate) fn field_names(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

impl Input {
    /// A configuration field as a string; a clear error names the field when it is missing.
    pub fn config_str(&self, field: &str) -> Result<&str, ConnectorError> {
        match self.config.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!("configuration field `{field}` must be a string"),
            )),
            None => Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!("configuration field `{field}` is required"),
            )),
        }
    }

    /// An optional configuration field as a string (absent, null and empty mean `None`).
    pub fn config_opt_str(&self, field: &str) -> Option<&str> {
        self.config
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// A checkbox configuration field: `true`, `"true"` or `"on"` (elastic.io's
    /// `CheckBoxView` sends either) mean `true`; absent or anything else means `false`.
    pub fn config_bool(&self, field: &str) -> bool {
        match self.config.get(field) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.as_str(), "true" | "on"),
            _ => false,
        }
    }

    /// A body field as a string; a clear error names the field when it is missing.
    pub fn body_str(&self, field: &str) -> Result<&str, ConnectorError> {
        self.message
            .body
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::InvalidInput,
                    format!("message body field `{field}` is required and must be a string"),
                )
            })
    }
}

/// The outcome of verifying credentials. A failure to verify (network down, provider error)
/// is an `Err`, not a `NotVerified`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The credentials work.
    Verified,
    /// The credentials do not work, and why.
    NotVerified {
        /// A reason a person understands.
        reason: String,
    },
}

impl Serialize for Verification {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Verified => serde_json::json!({"verified": true}),
            Self::NotVerified { reason } => {
                serde_json::json!({"verified": false, "reason": reason})
            }
        }
        .serialize(serializer)
    }
}

/// What `verify_credentials` (and the metadata functions) get: the HTTP client of the
/// credential being verified.
#[derive(Clone, Debug)]
pub struct VerifyContext {
    http: ClientWithMiddleware,
    token_manager: Option<TokenManager>,
}

impl VerifyContext {
    /// The HTTP client, authenticated when the connector declared an [`AuthSetup`].
    pub fn http(&self) -> &ClientWithMiddleware {
        &self.http
    }

    /// The token manager of the credential, if it has OAuth2 tokens.
    pub fn token_manager(&self) -> Option<&TokenManager> {
        self.token_manager.as_ref()
    }
}

/// How a credential gets access tokens: its token endpoint, the strategy, and the API origins
/// the token may be sent to.
#[derive(Clone, Debug)]
pub struct AuthSetup {
    endpoint: TokenEndpoint,
    strategy: Strategy,
    api_origins: Vec<String>,
    origin_token_field: Option<String>,
}

impl AuthSetup {
    /// Tokens from `endpoint` with the default strategy, sent nowhere until an origin is added.
    pub fn new(endpoint: TokenEndpoint) -> Self {
        Self {
            endpoint,
            strategy: Strategy::default(),
            api_origins: Vec::new(),
            origin_token_field: None,
        }
    }

    /// Sets the refresh strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sends the token to the origin of `url` (e.g. `https://graph.microsoft.com`).
    pub fn api_origin(mut self, url: impl Into<String>) -> Self {
        self.api_origins.push(url.into());
        self
    }

    /// Sends the token to the origin named by a token field (Salesforce's `instance_url`).
    ///
    /// A credential seeded with only a refresh token has no such field until its first
    /// refresh: call `ctx.token_manager().authorization()` before building the first URL from
    /// it. A refresh that moves the origin applies from the next request on; the request being
    /// retried after a 401 keeps its URL.
    pub fn api_origin_from_token_field(mut self, field: impl Into<String>) -> Self {
        self.origin_token_field = Some(field.into());
        self
    }
}

/// An integration connector: triggers and actions over one credential.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The triggers and actions, each with its handler, by their component.json names. The
    /// session builds it once.
    fn router(&self) -> Router<Self>
    where
        Self: Sized;

    /// How `credentials` get access tokens, or `None` when they are used as they are (API
    /// keys, basic auth).
    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let _ = credentials;
        Ok(None)
    }

    /// How requests through [`Context::http`] that the API answers 429 or 503 are retried
    /// (after its `Retry-After`, within the policy), or `None` (the default) to send each
    /// request once and leave throttling to the caller.
    fn throttle_retry(&self) -> Option<deckhand_core::retry::ThrottleRetry> {
        None
    }

    /// Checks that `credentials` work, usually with one cheap authenticated call.
    async fn verify_credentials(
        &self,
        credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError>;

    /// Runs when a worker starts, before the first message.
    async fn init(&self, config: &Value) -> Result<(), ConnectorError> {
        let _ = config;
        Ok(())
    }

    /// Runs once when a flow starts (trigger steps only); the result is kept for `shutdown`.
    async fn startup(&self, config: &Value) -> Result<Value, ConnectorError> {
        let _ = config;
        Ok(Value::Object(Default::default()))
    }

    /// Runs once when a flow stops, with what `startup` returned.
    async fn shutdown(&self, config: &Value, startup_state: &Value) -> Result<(), ConnectorError> {
        let _ = (config, startup_state);
        Ok(())
    }

    /// The `{in, out}` metadata of a function declaring `dynamicMetadata`.
    async fn dynamic_metadata(
        &self,
        function: &str,
        config: &Value,
        ctx: &VerifyContext,
    ) -> Result<Value, ConnectorError> {
        let _ = (config, ctx);
        Err(ConnectorError::new(
            ErrorKind::NotSupported,
            format!("`{function}` has no dynamic metadata"),
        ))
    }

    /// The options of a select field whose `model` names a function: `{value: label}`.
    async fn select_model(
        &self,
        function: &str,
        model: &str,
        config: &Value,
        ctx: &VerifyContext,
    ) -> Result<Value, ConnectorError> {
        let _ = (config, ctx);
        Err(ConnectorError::new(
            ErrorKind::NotSupported,
            format!("`{function}` has no select model `{model}`"),
        ))
    }
}
