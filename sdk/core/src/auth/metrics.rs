use std::sync::atomic::{AtomicU64, Ordering};

use super::FailureKind;

/// Counters of one [`TokenManager`](super::TokenManager), readable at any time.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    token_requests: AtomicU64,
    refreshes: AtomicU64,
    coalesced: AtomicU64,
    stale_served: AtomicU64,
    failures_reauth: AtomicU64,
    failures_transient: AtomicU64,
    failures_malformed: AtomicU64,
    failures_sink: AtomicU64,
    failures_other: AtomicU64,
}

/// A snapshot of a [`TokenManager`](super::TokenManager)'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthMetrics {
    /// HTTP requests sent to the token endpoint (retries included).
    pub token_requests: u64,
    /// Successful refreshes (each one produced a new generation).
    pub refreshes: u64,
    /// Callers that needed a refresh and reused another caller's instead of starting one.
    pub coalesced_waiters: u64,
    /// Times a still-valid token was served because its early refresh failed transiently.
    pub stale_served: u64,
    /// Refreshes refused by the provider (re-authorization required).
    pub failures_reauth: u64,
    /// Refreshes that failed transiently on every attempt.
    pub failures_transient: u64,
    /// Refreshes answered with a malformed token response.
    pub failures_malformed: u64,
    /// Refreshed keys the keys sink failed to persist.
    pub failures_sink: u64,
    /// Other failures (configuration, unexpected status).
    pub failures_other: u64,
}

impl Counters {
    pub(crate) fn token_request(&self) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refreshed(&self) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn coalesced(&self) {
        self.coalesced.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stale_served(&self) {
        self.stale_served.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, kind: FailureKind) {
        let counter = match kind {
            FailureKind::ReauthRequired => &self.failures_reauth,
            FailureKind::Transient => &self.failures_transient,
            FailureKind::Malformed => &self.failures_malformed,
            FailureKind::Sink => &self.failures_sink,
            FailureKind::RotationLost
            | FailureKind::Paused
            | FailureKind::SpentRefreshToken
            | FailureKind::Config
            | FailureKind::Rejected => &self.failures_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AuthMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuthMetrics {
            token_requests: get(&self.token_requests),
            refreshes: get(&self.refreshes),
            coalesced_waiters: get(&self.coalesced),
            stale_served: get(&self.stale_served),
            failures_reauth: get(&self.failures_reauth),
            failures_transient: get(&self.failures_transient),
            failures_malformed: get(&self.failures_malformed),
            failures_sink: get(&self.failures_sink),
            failures_other: get(&self.failures_other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_kind_has_its_counter() {
        let counters = Counters::default();
        for kind in [
            FailureKind::ReauthRequired,
            FailureKind::Transient,
            FailureKind::Transient,
            FailureKind::Malformed,
            FailureKind::Sink,
            FailureKind::RotationLost,
            FailureKind::Paused,
            FailureKind::SpentRefreshToken,
            FailureKind::Config,
            FailureKind::Rejected,
        ] {
            counters.failed(kind);
        }
        let m = counters.snapshot();
        assert_eq!(
            (
                m.failures_reauth,
                m.failures_transient,
                m.failures_malformed,
                m.failures_sink,
                m.failures_other
            ),
            (1, 2, 1, 1, 5)
        );
        // The labels logs carry.
        assert_eq!(FailureKind::ReauthRequired.to_string(), "reauth_required");
        assert_eq!(
            FailureKind::SpentRefreshToken.as_str(),
            "spent_refresh_token"
        );
    }
}
