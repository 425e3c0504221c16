//! The credential of a session as the router's extractors and the context's `updateKeys` see it:
//! behind a token manager, or static keys. Its own module so the session (which owns it) and the
//! router (which reads it) both depend on it instead of on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use super::EmitError;
use super::context::KeysUpdater;
use deckhand_core::auth::{KeysSink, KeysUpdate, RefreshReason, TokenManager};
use deckhand_core::credentials::Credentials;

/// The credential as the session knows it: behind a token manager, or static keys.
pub(crate) struct SessionKeys {
    pub(crate) manager: Option<TokenManager>,
    pub(crate) static_credentials: Mutex<Option<Credentials>>,
    pub(crate) sink: Arc<dyn KeysSink>,
    pub(crate) generation: tokio::sync::Mutex<u64>,
    /// Bumped whenever static keys change (typed configurations are read again then).
    pub(crate) static_version: AtomicU64,
}

impl SessionKeys {
    /// Changes whenever the keys may have: the token manager's generation, or the count of
    /// static key updates.
    pub(crate) fn version(&self) -> u64 {
        match &self.manager {
            Some(m) => m.generation(),
            None => self.static_version.load(Ordering::Acquire),
        }
    }

    pub(crate) fn credentials(&self) -> Option<Credentials> {
        match &self.manager {
            Some(m) => Some(m.credentials()),
            None => self
                .static_credentials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[async_trait]
impl KeysUpdater for SessionKeys {
    async fn update_keys(&self, keys: Value) -> Result<(), EmitError> {
        let failed = |reason: String| EmitError {
            event: "updateKeys",
            reason,
        };
        let token_field = self
            .credentials()
            .and_then(|c| c.token_field().map(str::to_owned));
        let credentials = match &token_field {
            Some(field) => Credentials::with_token_field(keys, field),
            None => Credentials::from_keys(keys),
        }
        .map_err(|e| failed(e.to_string()))?;
        match &self.manager {
            // Through the refresh gate: merged over the newest keys, next generation,
            // persisted before use, a spent refresh token refused.
            Some(m) => m
                .apply_keys(credentials)
                .await
                .map(drop)
                .map_err(|e| failed(e.to_string())),
            None => {
                // One update at a time, so two updates never share a generation.
                let mut generation = self.generation.lock().await;
                let current = self.credentials();
                let merged = match &current {
                    Some(current) => current.overlaid_with(&credentials),
                    None => credentials,
                };
                let update = KeysUpdate {
                    credentials: merged.clone(),
                    generation: *generation + 1,
                    reason: RefreshReason::Component,
                };
                // Persisted before anything uses the new keys.
                self.sink
                    .persist(&update)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                *self
                    .static_credentials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(merged);
                *generation = update.generation;
                self.static_version.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }
}
