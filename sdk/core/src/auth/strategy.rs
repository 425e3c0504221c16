use std::time::Duration;

/// When to refresh the access token before a request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proactive {
    /// Refresh before every request (the elastic.io Outlook pattern). Concurrent requests still
    /// share one refresh.
    PerCall,
    /// Refresh when the token expires within `skew` (plus a little jitter, so a fleet of
    /// workers does not refresh in lockstep). The skew is capped at half the token's lifetime,
    /// so a short-lived token is not refreshed on every call.
    BeforeExpiry {
        /// How long before the expiry to refresh.
        skew: Duration,
    },
    /// Never refresh ahead: only when there is no token yet, or on a rejection.
    Never,
}

/// What to do when the API rejects the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnRejection {
    /// Also treat 403 as "token expired" (some APIs answer 403 to a stale token).
    pub include_403: bool,
}

impl OnRejection {
    pub(crate) fn matches(&self, status: http::StatusCode) -> bool {
        status == http::StatusCode::UNAUTHORIZED
            || (self.include_403 && status == http::StatusCode::FORBIDDEN)
    }
}

/// How a credential's access token is kept fresh.
///
/// All strategies go through the same single-flight refresh gate of the
/// [`TokenManager`](super::TokenManager). The default is
/// `BeforeExpiry { skew: 60 s }` combined with a single retry on 401.
///
/// ```
/// use std::time::Duration;
/// use deckhand_core::auth::Strategy;
///
/// let salesforce = Strategy::on_401();                 // no expires_in: wait for the 401
/// let outlook = Strategy::per_call();                  // refresh before every request
/// let graph = Strategy::before_expiry(Duration::from_secs(120)).with_on_401();
/// assert_eq!(Strategy::default(), Strategy::before_expiry(Duration::from_secs(60)).with_on_401());
/// # let _ = (salesforce, outlook, graph);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// When to refresh ahead of a request.
    pub proactive: Proactive,
    /// Whether to refresh and retry once when the API rejects the token.
    pub on_rejection: Option<OnRejection>,
}

/// The default `BeforeExpiry` skew.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);

impl Strategy {
    /// Refresh before every request. No retry on 401 (the token is always fresh).
    pub const fn per_call() -> Self {
        Self {
            proactive: Proactive::PerCall,
            on_rejection: None,
        }
    }

    /// Refresh only when the API answers 401, then retry the request once.
    pub const fn on_401() -> Self {
        Self {
            proactive: Proactive::Never,
            on_rejection: Some(OnRejection { include_403: false }),
        }
    }

    /// Refresh when the token expires within `skew`.
    pub const fn before_expiry(skew: Duration) -> Self {
        Self {
            proactive: Proactive::BeforeExpiry { skew },
            on_rejection: None,
        }
    }

    /// This strategy, plus refresh-and-retry-once on 401.
    pub const fn with_on_401(mut self) -> Self {
        self.on_rejection = Some(OnRejection { include_403: false });
        self
    }

    /// This strategy, plus refresh-and-retry-once on 401 or 403.
    pub const fn with_on_401_or_403(mut self) -> Self {
        self.on_rejection = Some(OnRejection { include_403: true });
        self
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Self::before_expiry(DEFAULT_SKEW).with_on_401()
    }
}
