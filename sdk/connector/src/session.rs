use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{Map, Value};
use tracing::Instrument;

use super::context::ContextParts;
use super::keys::SessionKeys;
use super::router::{Call, Router, StepInputs};
use super::{
    AuthSetup, Connector, ConnectorError, Context, Emitter, ErrorKind, ErrorPayload, Message,
    Verification, VerifyContext,
};
use deckhand_core::auth::{
    AccountId, CredentialStore, HolderId, KeysSink, TokenManager, api_http_client,
};
use deckhand_core::credentials::Credentials;

/// What a step runs with: its configuration fields, its credential and its snapshot.
#[derive(Clone, Debug, Default)]
pub struct StepConfig {
    /// Field values of the step (without the credential's keys).
    pub fields: Map<String, Value>,
    /// The step's credential, if the component has one.
    pub credentials: Option<Credentials>,
    /// The step's snapshot.
    pub snapshot: Value,
}

impl StepConfig {
    /// Splits an elastic.io step `config` (field values merged with credential keys) into fields
    /// and credentials, using the names the component declares under `credentials.fields`.
    pub fn from_merged_config(
        config: Map<String, Value>,
        credential_fields: &[String],
        snapshot: Value,
    ) -> Result<Self, deckhand_core::credentials::CredentialsError> {
        let (keys, fields): (Map<String, Value>, Map<String, Value>) = config
            .into_iter()
            .partition(|(k, _)| credential_fields.iter().any(|f| f == k));
        let credentials = if credential_fields.is_empty() {
            None
        } else {
            Some(Credentials::from_keys(Value::Object(keys))?)
        };
        Ok(Self {
            fields,
            credentials,
            snapshot,
        })
    }
}

/// A step credential kept in a [`CredentialStore`] shared with other workers: the session's
/// token manager refreshes only through the store (see [`deckhand_core::auth::store`]).
#[derive(Clone)]
pub struct SharedCredential {
    /// The store.
    pub store: Arc<dyn CredentialStore>,
    /// The account the credential is stored as.
    pub account: AccountId,
    /// The stored generation of the step's credentials.
    pub generation: u64,
}

/// How processing one message ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Error events emitted (the input is rejected when there is any).
    pub errors: usize,
    /// Rebound events emitted.
    pub rebounds: usize,
}

/// One step of one connector, living as long as the worker: its credential (and token
/// manager, shared by every message), its snapshot, and the HTTP client.
///
/// Transports (AMQP, local, `exec`) create one session and call [`process`](Self::process) for
/// every message, each with the emitter of that message.
pub struct Session<C: Connector> {
    connector: Arc<C>,
    router: Router<C>,
    step: Arc<StepInputs>,
    state: Arc<SessionKeys>,
    http: ClientWithMiddleware,
}

impl<C: Connector> Session<C> {
    /// A session for `connector` with `step`; every key rotation goes to `sink` before use.
    pub fn new(
        connector: Arc<C>,
        step: StepConfig,
        sink: Arc<dyn KeysSink>,
    ) -> Result<Self, ConnectorError> {
        Self::with_shared_credential(connector, step, sink, None)
    }

    /// As [`new`](Self::new); with `shared`, the credential's refreshes go through the store
    /// (whose outbox publishes the `updateKeys`) instead of `sink`.
    pub fn with_shared_credential(
        connector: Arc<C>,
        step: StepConfig,
        sink: Arc<dyn KeysSink>,
        shared: Option<SharedCredential>,
    ) -> Result<Self, ConnectorError> {
        let setup = match &step.credentials {
            Some(credentials) => connector.auth(credentials)?,
            None => None,
        };
        let base = api_http_client()?;
        let (manager, http) = match (setup, step.credentials.clone()) {
            (Some(setup), Some(credentials)) => {
                let AuthSetup {
                    endpoint,
                    strategy,
                    api_origins,
                    origin_token_field,
                } = setup;
                let mut builder =
                    TokenManager::builder(credentials, endpoint, sink.clone()).strategy(strategy);
                if let Some(shared) = shared {
                    builder = builder.generation(shared.generation).store(
                        shared.store,
                        shared.account,
                        HolderId::for_this_process(),
                    );
                }
                let manager = builder.build();
                let mut auth = deckhand_core::auth::BearerAuth::new(manager.clone());
                for origin in &api_origins {
                    auth = auth.allow_origin(origin)?;
                }
                if let Some(field) = origin_token_field {
                    auth = auth.allow_origin_from_token_field(field);
                }
                (
                    Some(manager),
                    http_stack(base, &*connector).with(auth).build(),
                )
            }
            _ => (None, http_stack(base, &*connector).build()),
        };
        let state = Arc::new(SessionKeys {
            static_credentials: Mutex::new(if manager.is_some() {
                None
            } else {
                step.credentials
            }),
            manager,
            sink,
            generation: tokio::sync::Mutex::new(0),
            static_version: AtomicU64::new(0),
        });
        Ok(Self {
            router: connector.router(),
            connector,
            step: Arc::new(StepInputs::new(step.fields, state.clone(), step.snapshot)),
            state,
            http,
        })
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// The token manager of the step's credential, if it has OAuth2 tokens.
    pub fn token_manager(&self) -> Option<&TokenManager> {
        self.state.manager.as_ref()
    }

    /// Persists rotated keys still pending because the sink failed (call before exiting).
    /// Returns the generation persisted, or `None` when nothing was pending.
    pub async fn flush_keys(&self) -> Result<Option<u64>, deckhand_core::auth::AuthError> {
        match &self.state.manager {
            Some(manager) => manager.flush().await,
            None => Ok(None),
        }
    }

    /// Persists pending rotated keys before the process exits, within `budget`. Returns
    /// `false`, after an error log naming `credential` and the generation (never a token),
    /// when they could not be persisted: they are lost with the process, and the caller should
    /// exit with a failure status.
    pub async fn flush_keys_before_exit(
        &self,
        credential: &str,
        budget: std::time::Duration,
    ) -> bool {
        let Some(generation) = self.token_manager().and_then(|m| m.pending_generation()) else {
            return true;
        };
        let reason = match tokio::time::timeout(budget, self.flush_keys()).await {
            Ok(Ok(_)) => {
                tracing::info!(
                    credential,
                    generation,
                    "pending rotated keys persisted before exit"
                );
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("not persisted within {budget:?}"),
        };
        tracing::error!(
            credential,
            generation,
            error = %reason,
            "rotated keys could not be persisted before exit; they are lost with this process \
             and the credential may need re-authorization"
        );
        false
    }

    /// The current credential (after every rotation so far).
    pub fn credentials(&self) -> Option<Credentials> {
        self.state.credentials()
    }

    /// The configuration a function sees: the step's fields merged with the current keys of its
    /// credential, as elastic.io merges them.
    pub fn config(&self) -> Value {
        self.step.merged_config()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Value {
        self.step.snapshot()
    }

    /// The router of the connector's functions, built once for the session.
    pub fn router(&self) -> &Router<C> {
        &self.router
    }

    /// Verifies the step's credential.
    pub async fn verify(&self) -> Result<Verification, ConnectorError> {
        let credentials = self.credentials().unwrap_or_else(Credentials::empty);
        let ctx = VerifyContext {
            http: self.http.clone(),
            token_manager: self.state.manager.clone(),
        };
        self.connector.verify_credentials(&credentials, &ctx).await
    }

    /// Runs `function` on `message`, sending its events to `emitter`, then `end`.
    ///
    /// A handler that returns `Err` or panics, an argument that cannot be extracted (a
    /// configuration that does not deserialise), and a function the router does not know all
    /// produce an `error` event; the worker keeps going.
    pub async fn process(
        &self,
        function: &str,
        message: Message,
        emitter: Arc<dyn Emitter>,
    ) -> Outcome {
        let span = tracing::info_span!(
            "message",
            function,
            message_id = message.id.as_deref().unwrap_or(""),
        );
        self.process_in(span.clone(), function, message, emitter)
            .instrument(span)
            .await
    }

    /// As [`process`](Self::process), for a transport that runs it inside its own span for the
    /// message, `span`: one span per message, entered once per poll rather than twice.
    pub async fn process_in(
        &self,
        span: tracing::Span,
        function: &str,
        message: Message,
        emitter: Arc<dyn Emitter>,
    ) -> Outcome {
        let ctx = Context::new(ContextParts {
            function: function.to_owned(),
            message_id: message.id.clone(),
            emitter,
            span: span.clone(),
            http: self.http.clone(),
            token_manager: self.state.manager.clone(),
            snapshot: self.step.snapshot.clone(),
            keys: self.state.clone(),
        });
        let result = match self.router.handler(function) {
            Ok(handler) => {
                let run = handler(Call {
                    connector: self.connector.clone(),
                    ctx: ctx.clone(),
                    message: Some(message),
                    step: self.step.clone(),
                });
                match AssertUnwindSafe(run).catch_unwind().await {
                    Ok(result) => result,
                    Err(panic) => Err(ConnectorError::new(
                        ErrorKind::Panic,
                        format!("the function panicked: {}", panic_message(&panic)),
                    )),
                }
            }
            Err(unknown) => Err(unknown),
        };
        if let Err(err) = result {
            span.in_scope(|| tracing::warn!(error = %err, "function failed"));
            if let Err(emit) = ctx.emit_error(ErrorPayload::from(&err)).await {
                span.in_scope(|| tracing::error!(error = %emit, "could not emit the error event"));
            }
        }
        if let Err(emit) = ctx.emit_end().await {
            span.in_scope(|| tracing::error!(error = %emit, "could not emit the end event"));
        }
        Outcome {
            errors: ctx.error_count(),
            rebounds: ctx.rebound_count(),
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

impl<C: Connector> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("fields", &self.step.fields.keys().collect::<Vec<_>>())
            .field("router", &self.router)
            .field("credentials", &self.credentials())
            .finish()
    }
}

/// The client every request of [`Context::http`](crate::Context::http) goes through: the connector's throttling
/// retries first, so that each retry passes the authentication added after them.
fn http_stack<C: Connector>(
    base: reqwest::Client,
    connector: &C,
) -> reqwest_middleware::ClientBuilder {
    let builder = reqwest_middleware::ClientBuilder::new(base);
    match connector.throttle_retry() {
        Some(throttle) => builder.with(throttle),
        None => builder,
    }
}
