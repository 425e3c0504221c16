use std::fmt;

/// Why a refresh happened, as reported in logs, metrics and [`KeysUpdate`](super::KeysUpdate)s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    /// There was no usable access token yet.
    Initial,
    /// The `PerCall` strategy refreshes before every request.
    PerCall,
    /// The token expires within the skew (`BeforeExpiry`), or has expired.
    Expiry,
    /// The API rejected the token with this HTTP status.
    Rejected(u16),
    /// An earlier refresh's keys were not yet persisted; persisting them again.
    PendingPersist,
    /// Asked for explicitly.
    Forced,
    /// The component emitted new keys itself (an `updateKeys` event).
    Component,
}

impl RefreshReason {
    /// Every reason's [`label`](Self::label), in the order of the variants.
    pub const LABELS: [&'static str; 7] = [
        "initial",
        "per_call",
        "expiry",
        "rejected",
        "pending_persist",
        "forced",
        "component",
    ];

    /// The reason as a metric label: [`Display`](fmt::Display) without the HTTP status of
    /// [`Rejected`](Self::Rejected), so the labels are a fixed set.
    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// The position of the reason's label in [`LABELS`](Self::LABELS).
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Initial => 0,
            Self::PerCall => 1,
            Self::Expiry => 2,
            Self::Rejected(_) => 3,
            Self::PendingPersist => 4,
            Self::Forced => 5,
            Self::Component => 6,
        }
    }
}

impl fmt::Display for RefreshReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Initial => f.write_str("initial"),
            Self::PerCall => f.write_str("per_call"),
            Self::Expiry => f.write_str("expiry"),
            Self::Rejected(status) => write!(f, "rejected_{status}"),
            Self::PendingPersist => f.write_str("pending_persist"),
            Self::Forced => f.write_str("forced"),
            Self::Component => f.write_str("component"),
        }
    }
}
