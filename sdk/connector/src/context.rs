use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reqwest_middleware::ClientWithMiddleware;
use serde_json::Value;

use super::{EmitError, Emitter, ErrorPayload, Event, HttpReply, Message};
use deckhand_core::auth::TokenManager;

/// What a function gets besides its input: emitting events, the authenticated HTTP client of
/// its credential, and a tracing span carrying the message's ids.
///
/// Every `emit_*` returns once the transport has accepted the event (for AMQP: the broker
/// confirmed the publish).
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

/// Persists keys a component emitted itself (behind [`Context::emit_update_keys`]); the
/// session implements it.
#[async_trait]
pub(crate) trait KeysUpdater: Send + Sync {
    async fn update_keys(&self, keys: Value) -> Result<(), EmitError>;
}

struct ContextInner {
    function: String,
    message_id: Option<String>,
    emitter: Arc<dyn Emitter>,
    span: tracing::Span,
    http: ClientWithMiddleware,
    token_manager: Option<TokenManager>,
    snapshot: Arc<Mutex<Value>>,
    errors: AtomicUsize,
    rebounds: AtomicUsize,
    keys: Arc<dyn KeysUpdater>,
}

pub(crate) struct ContextParts {
    pub function: String,
    pub message_id: Option<String>,
    pub emitter: Arc<dyn Emitter>,
    pub span: tracing::Span,
    pub http: ClientWithMiddleware,
    pub token_manager: Option<TokenManager>,
    pub snapshot: Arc<Mutex<Value>>,
    pub keys: Arc<dyn KeysUpdater>,
}

impl Context {
    pub(crate) fn new(parts: ContextParts) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                function: parts.function,
                message_id: parts.message_id,
                emitter: parts.emitter,
                span: parts.span,
                http: parts.http,
                token_manager: parts.token_manager,
                snapshot: parts.snapshot,
                errors: AtomicUsize::new(0),
                rebounds: AtomicUsize::new(0),
                keys: parts.keys,
            }),
        }
    }

    /// The trigger or action being run.
    pub fn function(&self) -> &str {
        &self.inner.function
    }

    /// The id of the message being processed.
    pub fn message_id(&self) -> Option<&str> {
        self.inner.message_id.as_deref()
    }

    /// The span of this message (function, message id); enter it or use `Instrument` to tie
    /// your own events to the message.
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// The HTTP client for this step's API: authenticated with the step's credential when the
    /// connector declared an [`AuthSetup`](super::AuthSetup), else a plain client.
    pub fn http(&self) -> &ClientWithMiddleware {
        &self.inner.http
    }

    /// The token manager of this step's credential, if it has OAuth2 tokens.
    pub fn token_manager(&self) -> Option<&TokenManager> {
        self.inner.token_manager.as_ref()
    }

    /// Emits a message for the next step.
    pub async fn emit_data(&self, message: Message) -> Result<(), EmitError> {
        self.inner
            .emitter
            .emit(Event::Data(Box::new(message)))
            .await
    }

    /// Emits an error; the input message will be rejected. (Returning `Err` from the function
    /// does the same.)
    pub async fn emit_error(&self, error: ErrorPayload) -> Result<(), EmitError> {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        self.inner.emitter.emit(Event::Error(error)).await
    }

    /// Replaces the step's snapshot; later messages see the new one.
    pub async fn emit_snapshot(&self, snapshot: Value) -> Result<(), EmitError> {
        self.inner
            .emitter
            .emit(Event::Snapshot(snapshot.clone()))
            .await?;
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = snapshot;
        Ok(())
    }

    /// Asks for the input message to be processed again later.
    pub async fn emit_rebound(&self, reason: impl Into<String>) -> Result<(), EmitError> {
        self.inner.rebounds.fetch_add(1, Ordering::Relaxed);
        self.inner
            .emitter
            .emit(Event::Rebound {
                reason: reason.into(),
            })
            .await
    }

    /// Replaces the credential's keys (for credentials the component rotates itself, e.g. an
    /// API key). They are persisted before the call returns and used for the next requests.
    /// OAuth2 token refreshes do not need this: the token manager persists them.
    pub async fn emit_update_keys(&self, keys: Value) -> Result<(), EmitError> {
        self.inner.keys.update_keys(keys).await
    }

    /// Replies to a request-reply webhook.
    pub async fn emit_http_reply(&self, reply: HttpReply) -> Result<(), EmitError> {
        self.inner.emitter.emit(Event::HttpReply(reply)).await
    }

    pub(crate) fn error_count(&self) -> usize {
        self.inner.errors.load(Ordering::Relaxed)
    }

    pub(crate) fn rebound_count(&self) -> usize {
        self.inner.rebounds.load(Ordering::Relaxed)
    }

    pub(crate) async fn emit_end(&self) -> Result<(), EmitError> {
        self.inner.emitter.emit(Event::End).await
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("function", &self.inner.function)
            .field("message_id", &self.inner.message_id)
            .finish()
    }
}
