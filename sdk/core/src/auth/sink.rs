use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::credentials::{Credentials, CredentialsFile};

use super::RefreshReason;

/// A rotated token set on its way to the platform: the complete merged keys of the credential
/// and its generation (which grows by one with every successful refresh, so a store can refuse
/// a stale write).
#[derive(Clone, Debug)]
pub struct KeysUpdate {
    /// The complete keys after the refresh (old keys merged with the token response).
    pub credentials: Credentials,
    /// The credential's generation after the refresh.
    pub generation: u64,
    /// What caused the refresh.
    pub reason: RefreshReason,
}

impl KeysUpdate {
    /// The keys as the platform stores them (exposes secrets; for persistence only).
    pub fn keys(&self) -> serde_json::Value {
        self.credentials.to_keys()
    }
}

/// Why a [`KeysSink`] could not persist an update. Messages never contain secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Writing the keys locally failed (the credentials file, the `updateKeys` line).
    #[error("{0}")]
    Storage(String),
    /// The `updateKeys` message could not be published or was not confirmed.
    #[error("publishing updateKeys: {0}")]
    Publish(String),
    /// The platform API did not store the keys.
    #[error("{0}")]
    Api(String),
    /// The sink panicked.
    #[error("the keys sink panicked")]
    Panicked,
    /// The sink did not answer in time.
    #[error("the keys sink did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// Any other failure of a sink (a callback's own).
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    /// A sink error with `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Self::Other(message.into())
    }

    /// A sink error from any error's message.
    pub fn from_error(err: &dyn std::error::Error) -> Self {
        Self::Other(err.to_string())
    }
}

/// Where rotated keys go so they outlive the process: an AMQP `updateKeys` publish with
/// publisher confirms (runtime), the credentials file (local transport), a callback.
///
/// [`persist`](KeysSink::persist) returns only once the update is durable. The
/// [`TokenManager`](super::TokenManager) does not use a refreshed access token until it has.
#[async_trait]
pub trait KeysSink: Send + Sync + 'static {
    /// Persists `update`, returning once it is durable.
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError>;
}

#[async_trait]
impl<T: KeysSink + ?Sized> KeysSink for Arc<T> {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        (**self).persist(update).await
    }
}

/// Keeps every update in memory. For tests, and for grants with nothing worth persisting
/// (client credentials).
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemorySinkState>>,
}

#[derive(Debug, Default)]
struct MemorySinkState {
    updates: Vec<KeysUpdate>,
    failures_left: usize,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every update persisted so far, oldest first.
    pub fn updates(&self) -> Vec<KeysUpdate> {
        self.lock().updates.clone()
    }

    /// The newest persisted update.
    pub fn last(&self) -> Option<KeysUpdate> {
        self.lock().updates.last().cloned()
    }

    /// Makes the next `n` calls to `persist` fail (to test what happens when the platform
    /// cannot be reached). Feature `testing`.
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_next(&self, n: usize) {
        self.lock().failures_left = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemorySinkState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl KeysSink for MemorySink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        let mut state = self.lock();
        if state.failures_left > 0 {
            state.failures_left -= 1;
            return Err(SinkError::other("memory sink told to fail"));
        }
        state.updates.push(update.clone());
        Ok(())
    }
}

type BoxedPersist =
    dyn Fn(KeysUpdate) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>> + Send + Sync;

/// A sink that calls an async function.
///
/// ```
/// use deckhand_core::auth::{CallbackSink, SinkError};
///
/// let sink = CallbackSink::new(|update| async move {
///     println!("generation {} persisted", update.generation);
///     Ok::<(), SinkError>(())
/// });
/// # let _ = sink;
/// ```
pub struct CallbackSink {
    callback: Box<BoxedPersist>,
}

impl CallbackSink {
    /// A sink calling `callback` for every update.
    pub fn new<F, Fut>(callback: F) -> Self
    where
        F: Fn(KeysUpdate) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), SinkError>> + Send + 'static,
    {
        Self {
            callback: Box::new(move |update| Box::pin(callback(update))),
        }
    }
}

impl fmt::Debug for CallbackSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallbackSink")
    }
}

#[async_trait]
impl KeysSink for CallbackSink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        (self.callback)(update.clone()).await
    }
}

// The credentials file is a sink; the impl lives here because `auth` builds on `credentials`,
// not the other way round.
#[async_trait]
impl KeysSink for CredentialsFile {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        let file = self.clone();
        let credentials = update.credentials.clone();
        tokio::task::spawn_blocking(move || file.store(&credentials))
            .await
            .map_err(|e| SinkError::Storage(format!("writing the credentials file: {e}")))?
            .map_err(|e| SinkError::Storage(e.to_string()))
    }
}
