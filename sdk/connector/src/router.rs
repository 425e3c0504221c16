//! The typed router: a connector's triggers and actions as plain `async fn` handlers,
//! registered by name once, in the manner of axum.
//!
//! A handler's arguments say what it needs, and the session extracts them for each message
//! ([`FromCall`]): the step's configuration as the connector's own `serde` type
//! ([`Config`], deserialised once per step), the [`Message`] or its typed [`Body`], a typed
//! [`Snapshot`], the connector itself (`Arc<C>`), and the [`Context`]. A connector adds its own
//! extractors (an API client built from the configuration, say) by implementing [`FromCall`].
//!
//! The names are written once, in the router; `<connector binary> validate` checks them
//! against component.json, and a message for a name the router does not know gets an
//! `UnknownFunction` error event. Connectors whose functions are
//! only known at run time register a [`fallback`](Router::fallback) handler, which gets every
//! other name (read it from [`Context::function`]) and the untyped [`Input`].
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use deckhand_core::auth::MemorySink;
//! use deckhand_connector::*;
//! use deckhand_core::credentials::Credentials;
//! use serde::Deserialize;
//! use serde_json::json;
//!
//! struct Greeter;
//!
//! /// The step's configuration of `greet`.
//! #[derive(Deserialize)]
//! struct Greeting {
//!     greeting: String,
//! }
//!
//! async fn greet(config: Config<Greeting>, message: Message, ctx: Context)
//!     -> Result<(), ConnectorError> {
//!     let said = format!("{}, {}", config.greeting, message.body["name"]);
//!     ctx.emit_data(Message::new(json!({"said": said}))).await?;
//!     Ok(())
//! }
//!
//! #[async_trait::async_trait]
//! impl Connector for Greeter {
//!     fn router(&self) -> Router<Self> {
//!         Router::new().action("greet", greet)
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
//!     fields: json!({"greeting": "hello"}).as_object().unwrap().clone(),
//!     ..StepConfig::default()
//! };
//! let session = Session::new(Arc::new(Greeter), step, Arc::new(MemorySink::new()))?;
//! let events = CollectingEmitter::new();
//! session.process("greet", Message::new(json!({"name": "Ada"})), Arc::new(events.clone())).await;
//! let Event::Data(out) = &events.events()[0] else { panic!() };
//! assert_eq!(out.body["said"], r#"hello, "Ada""#);
//!
//! // A name the router does not know is an error event, not a silent no-op.
//! let events = CollectingEmitter::new();
//! let outcome = session.process("greed", Message::new(json!({})), Arc::new(events.clone())).await;
//! assert_eq!(outcome.errors, 1);
//! # Ok(()) }
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{ConnectorError, Context, ErrorKind, Function, FunctionKind, Input, Message};
use deckhand_component::ComponentDescriptor;

/// The future a handler returns, boxed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), ConnectorError>> + Send>>;

type ErasedHandler<C> = Arc<dyn Fn(Call<C>) -> HandlerFuture + Send + Sync>;

/// A connector's triggers and actions, each with its handler. See the [module docs](self).
pub struct Router<C> {
    routes: Vec<(Function, ErasedHandler<C>)>,
    fallback: Option<ErasedHandler<C>>,
}

impl<C: Send + Sync + 'static> Default for Router<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Send + Sync + 'static> Router<C> {
    /// A router without functions.
    pub fn new() -> Self {
        Self {
            routes: Vec::new(),
            fallback: None,
        }
    }

    /// Registers the action `name` (as in component.json).
    ///
    /// # Panics
    /// When `name` is already registered: two handlers for one name is a mistake in the code,
    /// found by the first test that builds the router (as axum does for overlapping routes).
    pub fn action<H, Args>(self, name: &'static str, handler: H) -> Self
    where
        H: Handler<C, Args>,
    {
        self.route(Function::action(name), handler)
    }

    /// Registers the trigger `name` (as in component.json).
    ///
    /// # Panics
    /// When `name` is already registered (see [`action`](Self::action)).
    pub fn trigger<H, Args>(self, name: &'static str, handler: H) -> Self
    where
        H: Handler<C, Args>,
    {
        self.route(Function::trigger(name), handler)
    }

    /// Registers the handler of every name not registered otherwise: the escape hatch for
    /// connectors whose functions are only known at run time. It reads the name from
    /// [`Context::function`]; `validate` counts every function component.json declares as
    /// handled.
    pub fn fallback<H, Args>(mut self, handler: H) -> Self
    where
        H: Handler<C, Args>,
    {
        self.fallback = Some(Arc::new(move |call| handler.call(call)));
        self
    }

    fn route<H, Args>(mut self, function: Function, handler: H) -> Self
    where
        H: Handler<C, Args>,
    {
        assert!(
            self.find(function.name).is_none(),
            "the router already has a handler for `{}`",
            function.name
        );
        self.routes
            .push((function, Arc::new(move |call| handler.call(call))));
        self
    }
}

impl<C> Router<C> {
    /// The triggers and actions registered by name (without the fallback).
    pub fn functions(&self) -> impl Iterator<Item = Function> + '_ {
        self.routes.iter().map(|(f, _)| *f)
    }

    /// Whether a fallback handler takes the names not registered.
    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }

    fn find(&self, name: &str) -> Option<&ErasedHandler<C>> {
        self.routes
            .iter()
            .find(|(f, _)| f.name == name)
            .map(|(_, h)| h)
    }

    /// The handler of `name`, or the error a message for it gets.
    pub(crate) fn handler(&self, name: &str) -> Result<&ErasedHandler<C>, ConnectorError> {
        if let Some(handler) = self.find(name).or(self.fallback.as_ref()) {
            return Ok(handler);
        }
        Err(ConnectorError::new(
            ErrorKind::UnknownFunction,
            format!("this component has no trigger or action named `{name}`"),
        ))
    }
}

impl<C> std::fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "functions",
                &self.routes.iter().map(|(f, _)| f.name).collect::<Vec<_>>(),
            )
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

/// A function the router can call: an `async fn` (or closure) whose arguments all implement
/// [`FromCall`] and which returns `Result<(), ConnectorError>`. Implemented for up to six
/// arguments; `Args` is the tuple of their types (inferred).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler of connector `{C}`",
    note = "a handler is an `async fn` returning `Result<(), ConnectorError>`, with at most six \
            arguments that all implement `FromCall<{C}>` (`Config<T>`, `Body<T>`, \
            `Snapshot<T>`, `Message`, `Input`, `Context`, `Arc<{C}>`, or your own), and a \
            `Send` future (hold nothing that is not `Send` across an `.await`)"
)]
pub trait Handler<C, Args>: Clone + Send + Sync + 'static {
    /// Extracts the arguments from `call` and runs the function.
    fn call(&self, call: Call<C>) -> HandlerFuture;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        impl<C, F, Fut, $($arg,)*> Handler<C, ($($arg,)*)> for F
        where
            C: Send + Sync + 'static,
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<(), ConnectorError>> + Send + 'static,
            $($arg: FromCall<C>,)*
        {
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn call(&self, mut call: Call<C>) -> HandlerFuture {
                let handler = self.clone();
                Box::pin(async move {
                    $(let $arg = $arg::from_call(&mut call).await?;)*
                    handler($($arg),*).await
                })
            }
        }
    };
}

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);

/// One message on its way to a handler: what [`FromCall`] extractors read.
pub struct Call<C> {
    pub(crate) connector: Arc<C>,
    pub(crate) ctx: Context,
    pub(crate) message: Option<Message>,
    pub(crate) step: Arc<StepInputs>,
}

impl<C> Call<C> {
    /// The connector.
    pub fn connector(&self) -> &Arc<C> {
        &self.connector
    }

    /// The context of this message.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The message, unless an earlier argument (a [`Message`] or an [`Input`]) took it.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// The step's configuration as `T`, deserialised once per step (see [`Config`]).
    pub fn config<T>(&self) -> Result<Arc<T>, ConnectorError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.step.config::<T>()
    }

    fn take_message(&mut self, by: &str) -> Result<Message, ConnectorError> {
        self.message.take().ok_or_else(|| self.message_gone(by))
    }

    fn message_gone(&self, by: &str) -> ConnectorError {
        ConnectorError::new(
            ErrorKind::Other,
            format!(
                "the handler of `{}` reads the message after an earlier argument (`Message` or \
                 `Input`) took it: put {by} before that argument",
                self.ctx.function()
            ),
        )
    }
}

/// A handler argument, extracted from the [`Call`] for each message.
///
/// Implement it for your own types to build what several handlers need (an API client from
/// the configuration and the [`Context`]'s HTTP client, say); an `Err` becomes the message's
/// error event and the handler does not run.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a handler of connector `{C}`",
    note = "take `Config<T>`, `Body<T>`, `Snapshot<T>`, `Message`, `Input`, `Context` or \
            `Arc<{C}>`, or implement `FromCall<{C}>` for `{Self}`"
)]
pub trait FromCall<C>: Sized + Send + 'static {
    /// Extracts the argument.
    fn from_call(call: &mut Call<C>) -> impl Future<Output = Result<Self, ConnectorError>> + Send;
}

impl<C: Send + Sync + 'static> FromCall<C> for Context {
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        Ok(call.ctx.clone())
    }
}

/// The connector itself (its settings: API version, retry limits…).
impl<C: Send + Sync + 'static> FromCall<C> for Arc<C> {
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        Ok(call.connector.clone())
    }
}

/// The incoming message (taken: a handler has one argument that takes the message).
impl<C: Send + Sync + 'static> FromCall<C> for Message {
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        call.take_message("`Message`")
    }
}

/// The untyped input of the trait-style API (message, configuration with the credential's
/// keys, snapshot), for fallback handlers and code that reads fields by name.
impl<C: Send + Sync + 'static> FromCall<C> for Input {
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        Ok(Input {
            message: call.take_message("`Input`")?,
            config: call.step.merged_config(),
            snapshot: call.step.snapshot(),
        })
    }
}

/// The step's configuration as the connector's own `serde` type, deserialised **once per
/// step** and shared by every message (and again only when the credential's keys change).
///
/// `T` is read from the step's fields merged with the credential's fields (not its tokens:
/// those rotate, ask [`Context::token_manager`]), as elastic.io merges them. When it does not
/// deserialise, every message of the step gets an `InvalidConfiguration` error naming the
/// field (`configuration field `maxRecords`: invalid type: …`), and the handler does not run.
///
/// [`crate::field`] has deserializers for what the platform's field views send
/// (checkboxes as `"on"`, numbers as strings, blank as absent).
pub struct Config<T>(pub Arc<T>);

impl<T> std::ops::Deref for Config<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<C, T> FromCall<C> for Config<T>
where
    C: Send + Sync + 'static,
    T: DeserializeOwned + Send + Sync + 'static,
{
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        call.config::<T>().map(Config)
    }
}

/// The message body as `T`, deserialised for each message; an `InvalidInput` error names the
/// field that does not fit.
pub struct Body<T>(pub T);

impl<C, T> FromCall<C> for Body<T>
where
    C: Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
{
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        let body = match &call.message {
            Some(message) => &message.body,
            None => return Err(call.message_gone("`Body`")),
        };
        deserialize(body, ErrorKind::InvalidInput, "message body").map(Body)
    }
}

/// The step's snapshot as `T`, read for each message (a handler's `emit_snapshot` moves it);
/// no snapshot yet (null) reads as `{}`. One that does not fit is an `InvalidSnapshot` error
/// naming the field: refusing it beats silently starting over.
pub struct Snapshot<T>(pub T);

impl<C, T> FromCall<C> for Snapshot<T>
where
    C: Send + Sync + 'static,
    T: DeserializeOwned + Send + 'static,
{
    async fn from_call(call: &mut Call<C>) -> Result<Self, ConnectorError> {
        let snapshot = match call.step.snapshot() {
            Value::Null => Value::Object(Map::new()),
            other => other,
        };
        deserialize(&snapshot, ErrorKind::InvalidSnapshot, "snapshot").map(Snapshot)
    }
}

/// Deserialises `value`, or an error called `name` saying which field of `what` is wrong.
fn deserialize<T: DeserializeOwned>(
    value: &Value,
    kind: ErrorKind,
    what: &str,
) -> Result<T, ConnectorError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        let message = match inner.strip_prefix("missing field ") {
            Some(field) if path == "." => format!("{what} field {field} is required"),
            Some(field) => format!("{what} field `{path}`.{field} is required"),
            None if path == "." => format!("{what}: {inner}"),
            // A connector's own check reads as a sentence: "field `x` must be …".
            None if inner.starts_with("must ") => format!("{what} field `{path}` {inner}"),
            None => format!("{what} field `{path}`: {inner}"),
        };
        ConnectorError::new(kind, message)
    })
}

/// What the extractors of one step read: its fields, its credential, its snapshot, and the
/// typed configurations already parsed.
pub(crate) struct StepInputs {
    pub(crate) fields: Map<String, Value>,
    pub(crate) keys: Arc<super::keys::SessionKeys>,
    pub(crate) snapshot: Arc<Mutex<Value>>,
    configs: Mutex<HashMap<TypeId, ParsedConfig>>,
}

/// A typed configuration (or why it did not parse), with the keys version it was read from.
struct ParsedConfig {
    keys_version: u64,
    parsed: Result<Arc<dyn Any + Send + Sync>, (ErrorKind, String)>,
}

impl StepInputs {
    pub(crate) fn new(
        fields: Map<String, Value>,
        keys: Arc<super::keys::SessionKeys>,
        snapshot: Value,
    ) -> Self {
        Self {
            fields,
            keys,
            snapshot: Arc::new(Mutex::new(snapshot)),
            configs: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn snapshot(&self) -> Value {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The fields merged with the credential's complete keys, tokens included (the untyped
    /// [`Input::config`]).
    pub(crate) fn merged_config(&self) -> Value {
        let mut config = self.fields.clone();
        if let Some(Value::Object(keys)) = self.keys.credentials().map(|c| c.to_keys()) {
            config.extend(keys);
        }
        Value::Object(config)
    }

    fn config<T>(&self) -> Result<Arc<T>, ConnectorError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let version = self.keys.version();
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match configs.get(&TypeId::of::<T>()) {
            Some(entry) if entry.keys_version == version => entry,
            _ => {
                let mut source = self.fields.clone();
                if let Some(credentials) = self.keys.credentials() {
                    source.extend(credentials.fields().clone());
                }
                let parsed = deserialize::<T>(
                    &Value::Object(source),
                    ErrorKind::InvalidConfiguration,
                    "configuration",
                )
                .map(|t| Arc::new(t) as Arc<dyn Any + Send + Sync>)
                .map_err(|e| (e.kind().clone(), e.message().to_owned()));
                configs.insert(
                    TypeId::of::<T>(),
                    ParsedConfig {
                        keys_version: version,
                        parsed,
                    },
                );
                &configs[&TypeId::of::<T>()]
            }
        };
        match &entry.parsed {
            Ok(any) => Ok(any
                .clone()
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("stored under the TypeId of T"))),
            Err((kind, message)) => Err(ConnectorError::new(kind.clone(), message.clone())),
        }
    }
}

/// What `validate` reports when the router and component.json disagree (empty when they
/// match); `descriptor` is the parsed component.json.
///
/// Both directions are errors: a function component.json declares without a handler fails
/// every message sent to it, and a handler component.json does not declare can never be
/// called, which in practice means one of the two names has a typo. A function under the
/// other section than the router registers it is an error too. With a fallback, every
/// declared function counts as handled.
pub fn cross_check<C>(router: &Router<C>, descriptor: &ComponentDescriptor) -> Vec<String> {
    let mut problems = Vec::new();
    let declared_anywhere = |name: &str| {
        descriptor.triggers.contains_key(name) || descriptor.actions.contains_key(name)
    };
    for (section, kind, declared) in [
        ("triggers", FunctionKind::Trigger, &descriptor.triggers),
        ("actions", FunctionKind::Action, &descriptor.actions),
    ] {
        for name in declared.keys() {
            match router.functions().find(|f| f.name == name.as_str()) {
                None if router.has_fallback() => {}
                None => problems.push(format!(
                    "/{section}/{name}: declared in component.json but the connector has no handler for it"
                )),
                Some(f) if f.kind != kind => problems.push(format!(
                    "/{section}/{name}: declared under `{section}` but the connector registers it as {}",
                    if f.kind == FunctionKind::Trigger { "a trigger" } else { "an action" }
                )),
                Some(_) => {}
            }
        }
        for f in router.functions().filter(|f| f.kind == kind) {
            // Declared under the other section: reported above as such.
            if !declared_anywhere(f.name) {
                problems.push(format!(
                    "/{section}: the connector handles {} `{}` that component.json does not declare",
                    if kind == FunctionKind::Trigger { "trigger" } else { "action" },
                    f.name
                ));
            }
        }
    }
    problems
}
