//! State shared between the [`Emulator`](crate::Emulator) handle and the request handlers.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::config::EmulatorConfig;
use crate::counters::AtomicCounters;
use crate::faults::FaultQueues;
use crate::graph::GraphStore;
use crate::salesforce::SalesforceStore;
use crate::tokens::TokenStore;

/// Everything the handlers share. Locks are never held across an `.await`.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub(crate) base_url: String,
    /// HS256 key for access-token JWTs (random per emulator).
    pub(crate) jwt_key: Vec<u8>,
    pub(crate) tokens: Mutex<TokenStore>,
    pub(crate) faults: Mutex<FaultQueues>,
    pub(crate) counters: AtomicCounters,
    pub(crate) salesforce: Mutex<SalesforceStore>,
    pub(crate) graph: Mutex<GraphStore>,
}

/// Axum state type.
pub(crate) type AppState = Arc<Shared>;

/// Locks a mutex, ignoring poisoning (the protected data stays consistent because no handler
/// panics while holding a lock, and a test must never hang on a poisoned emulator).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
