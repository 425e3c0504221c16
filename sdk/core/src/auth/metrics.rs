use std::sync::atomic::{AtomicU64, Ordering};

use super::{FailureKind, RefreshReason};

/// Outcomes of a refresh attempt as metric labels: `refreshed`, then every [`FailureKind`].
const OUTCOMES: [&str; 10] = [
    "refreshed",
    "reauth_required",
    "rotation_lost",
    "transient",
    "paused",
    "spent_refresh_token",
    "config",
    "malformed",
    "sink",
    "rejected",
];

const REASONS: usize = RefreshReason::LABELS.len();

fn outcome_index(outcome: Option<FailureKind>) -> usize {
    match outcome {
        None => 0,
        Some(FailureKind::ReauthRequired) => 1,
        Some(FailureKind::RotationLost) => 2,
        Some(FailureKind::Transient) => 3,
        Some(FailureKind::Paused) => 4,
        Some(FailureKind::SpentRefreshToken) => 5,
        Some(FailureKind::Config) => 6,
        Some(FailureKind::Malformed) => 7,
        Some(FailureKind::Sink) => 8,
        Some(FailureKind::Rejected) => 9,
    }
}

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
    attempts: [[AtomicU64; OUTCOMES.len()]; REASONS],
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
    /// Refresh attempts this process led (and keys a component emitted), by reason and
    /// outcome.
    pub attempts: RefreshAttempts,
}

/// Refresh attempts by [`RefreshReason`] and outcome (`refreshed` or a [`FailureKind`]), for
/// a metric labelled with both. Counts attempts that ended: a caller that reused another's
/// refresh is a [coalesced waiter](AuthMetrics::coalesced_waiters), not an attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshAttempts([[u64; OUTCOMES.len()]; REASONS]);

impl RefreshAttempts {
    /// Attempts for `reason` that ended with `outcome` (`None`: refreshed).
    pub fn get(&self, reason: RefreshReason, outcome: Option<FailureKind>) -> u64 {
        self.0[reason.index()][outcome_index(outcome)]
    }

    /// Every `(reason label, outcome label, count)`, zeros included, so a metric has every
    /// series from the start. Reason labels are [`RefreshReason::label`]s; outcome labels are
    /// `refreshed` or a [`FailureKind::as_str`].
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        RefreshReason::LABELS
            .iter()
            .zip(&self.0)
            .flat_map(|(reason, row)| {
                OUTCOMES
                    .iter()
                    .zip(row)
                    .map(move |(outcome, n)| (*reason, *outcome, *n))
            })
    }
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

    /// A refresh attempt for `reason` ended: refreshed (`None`) or failed with the kind.
    pub(crate) fn attempt_ended(&self, reason: RefreshReason, outcome: Option<FailureKind>) {
        self.attempts[reason.index()][outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
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
            attempts: RefreshAttempts(self.attempts.each_ref().map(|row| row.each_ref().map(get))),
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
        // Every outcome label is a failure kind's label (or `refreshed`).
        for (i, label) in OUTCOMES.iter().enumerate().skip(1) {
            let kind = [
                FailureKind::ReauthRequired,
                FailureKind::RotationLost,
                FailureKind::Transient,
                FailureKind::Paused,
                FailureKind::SpentRefreshToken,
                FailureKind::Config,
                FailureKind::Malformed,
                FailureKind::Sink,
                FailureKind::Rejected,
            ][i - 1];
            assert_eq!((outcome_index(Some(kind)), kind.as_str()), (i, *label));
        }
        // The labels logs carry.
        assert_eq!(FailureKind::ReauthRequired.to_string(), "reauth_required");
        assert_eq!(
            FailureKind::SpentRefreshToken.as_str(),
            "spent_refresh_token"
        );
    }

    #[test]
    fn attempts_are_counted_by_reason_and_outcome() {
        let counters = Counters::default();
        counters.attempt_ended(RefreshReason::Rejected(401), None);
        counters.attempt_ended(RefreshReason::Rejected(403), None);
        counters.attempt_ended(RefreshReason::Expiry, Some(FailureKind::Transient));
        let attempts = counters.snapshot().attempts;
        assert_eq!(attempts.get(RefreshReason::Rejected(500), None), 2);
        assert_eq!(
            attempts.get(RefreshReason::Expiry, Some(FailureKind::Transient)),
            1
        );
        assert_eq!(attempts.get(RefreshReason::Expiry, None), 0);
        let all: Vec<_> = attempts.iter().collect();
        assert_eq!(all.len(), RefreshReason::LABELS.len() * OUTCOMES.len());
        assert!(all.contains(&("rejected", "refreshed", 2)));
        assert!(all.contains(&("expiry", "transient", 1)));
        assert_eq!(all.iter().map(|(_, _, n)| n).sum::<u64>(), 3);
    }
}
