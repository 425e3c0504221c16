//! Request counters for tests and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the emulator's counters (see [`Emulator::counters`](crate::Emulator::counters)).
///
/// Every request is counted, including those answered by an injected fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests to either token endpoint.
    pub token_requests: u64,
    /// Token requests with `grant_type=client_credentials`.
    pub client_credentials_requests: u64,
    /// Token requests with `grant_type=refresh_token`.
    pub refresh_token_requests: u64,
    /// Token requests with any other or no `grant_type`.
    pub other_grant_requests: u64,
    /// Refresh-token grants that succeeded (an access token was issued).
    pub successful_refreshes: u64,
    /// Access tokens issued (client credentials + refreshes).
    pub access_tokens_issued: u64,
    /// `invalid_grant` answers, injected ones included.
    pub invalid_grant: u64,
    /// `invalid_client` answers (wrong or missing client credentials).
    pub invalid_client: u64,
    /// Token families revoked: by refresh-token reuse or by
    /// [`Emulator::revoke_family`](crate::Emulator::revoke_family).
    pub family_revocations: u64,
    /// Requests to resource endpoints (Salesforce data, userinfo, Graph).
    pub resource_requests: u64,
    /// 401 answers from resource endpoints (invalid, expired or revoked token, or injected).
    pub unauthorized: u64,
    /// Requests answered by an injected fault (token and resource endpoints).
    pub faults_served: u64,
}

macro_rules! atomic_counters {
    ($($field:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct AtomicCounters {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl AtomicCounters {
            pub(crate) fn snapshot(&self) -> Counters {
                Counters { $($field: self.$field.load(Ordering::Relaxed),)* }
            }

            pub(crate) fn reset(&self) {
                $(self.$field.store(0, Ordering::Relaxed);)*
            }
        }
    };
}

atomic_counters!(
    token_requests,
    client_credentials_requests,
    refresh_token_requests,
    other_grant_requests,
    successful_refreshes,
    access_tokens_issued,
    invalid_grant,
    invalid_client,
    family_revocations,
    resource_requests,
    unauthorized,
    faults_served,
);

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
