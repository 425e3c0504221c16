use std::time::Duration;

/// Why a token could not be obtained or a request could not be authenticated.
///
/// Errors are `Clone`: one failed refresh is reported to every caller that waited for it.
/// Messages never contain a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint refused the grant (`invalid_grant`, `invalid_client`, any 400/401/403
    /// answer): the user must re-authorize. Permanent: Deckhand does not retry and answers
    /// every later request with this error until the credentials are replaced.
    #[error(
        "re-authorization required: the token endpoint answered HTTP {status} `{code}`{}",
        description.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    ReauthRequired {
        /// The HTTP status of the token endpoint's answer.
        status: u16,
        /// The OAuth2 `error` code (`invalid_grant`…), or `http_<status>` when the body had none.
        code: String,
        /// The provider's `error_description`, if any.
        description: Option<String>,
    },
    /// A token response may have been lost after the provider processed the grant (the
    /// request was sent, no answer arrived), and the one retry with the same refresh token was
    /// refused: the provider rotated the refresh token and its successor never reached
    /// Deckhand. The user must re-authorize; unlike a plain [`ReauthRequired`](Self::ReauthRequired)
    /// this says the credential was fine until the answer was lost (check the network path to
    /// the token endpoint). Permanent, like `ReauthRequired`.
    #[error(
        "the rotated refresh token is lost: the token endpoint's answer to the refresh of \
         generation {generation} never arrived, and the retry with the same refresh token was \
         refused (HTTP {status} `{code}`); re-authorization required"
    )]
    RotationLost {
        /// The generation whose refresh token was spent by the lost request.
        generation: u64,
        /// The HTTP status of the refusal.
        status: u16,
        /// The OAuth2 `error` code of the refusal.
        code: String,
    },
    /// No token request may be sent for this credential yet (the token endpoint asked to wait
    /// with `Retry-After`, or the minimum refresh interval has not passed), and waiting would
    /// take longer than the manager's bound. Transient: try again after `retry_in`.
    #[error(
        "no token request for this credential for another {} s ({cause}); try again later",
        retry_in.as_secs_f64().ceil() as u64
    )]
    RefreshPaused {
        /// How long until token requests are allowed again.
        retry_in: Duration,
        /// Why token requests are paused.
        cause: PauseCause,
    },
    /// Keys a component emitted (`updateKeys`) would put back a refresh token this process
    /// has already spent (rotated away from); they were refused, never applied or persisted.
    #[error(
        "the emitted keys hold a refresh token that was already spent (the credential is at \
         generation {generation} with a newer one); emit keys built from the current \
         credentials instead of an older copy of the configuration"
    )]
    SpentRefreshToken {
        /// The credential's generation when the keys were refused.
        generation: u64,
    },
    /// The token endpoint failed transiently (429, 5xx, network) on every attempt.
    #[error("token endpoint unavailable after {attempts} attempt(s); last failure: {last}")]
    TokenEndpointUnavailable {
        /// How many token requests were sent.
        attempts: u32,
        /// The last failure.
        last: TransientFailure,
    },
    /// The token endpoint answered with a status Deckhand cannot interpret as a grant outcome
    /// (e.g. 404: the token URL is wrong).
    #[error("token endpoint answered unexpected HTTP status {status}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
    },
    /// The token endpoint answered 200 with a body that is not a usable token response.
    #[error("malformed token response: {reason}")]
    MalformedTokenResponse {
        /// What was wrong (never the body itself, which may hold tokens).
        reason: String,
    },
    /// A refresh was needed but the credentials hold no refresh token.
    #[error(
        "cannot refresh: the credentials have no refresh token (the refresh_token grant needs one)"
    )]
    NoRefreshToken,
    /// The refreshed keys could not be persisted by the keys sink. They stay in memory and
    /// the next request retries persisting them before the new token is used.
    #[error("refreshed keys (generation {generation}) were not persisted: {reason}")]
    KeysNotPersisted {
        /// The generation of the refreshed keys.
        generation: u64,
        /// The sink's error.
        reason: String,
    },
    /// The API rejected the request again after a token refresh; Deckhand retries once only.
    #[error("the API answered HTTP {status} again after the token was refreshed")]
    RejectedAfterRefresh {
        /// The HTTP status of the second answer.
        status: u16,
    },
    /// The API rejected the token, but the request body is a stream that cannot be sent twice.
    #[error(
        "the API answered HTTP {status} and the request cannot be retried because its body is a \
         stream that cannot be replayed; the token was refreshed, so sending the request again \
         will use the new token"
    )]
    NotReplayable {
        /// The HTTP status of the answer.
        status: u16,
    },
    /// The token endpoint or grant is misconfigured.
    #[error("invalid OAuth2 configuration: {0}")]
    Config(String),
}

impl AuthError {
    /// `true` for failures that may succeed if tried again later (the token endpoint was
    /// unavailable, or persisting keys failed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::TokenEndpointUnavailable { .. }
                | Self::KeysNotPersisted { .. }
                | Self::RefreshPaused { .. }
        )
    }

    /// `true` when the user has to re-authorize the credential.
    pub fn is_reauth_required(&self) -> bool {
        matches!(
            self,
            Self::ReauthRequired { .. } | Self::NoRefreshToken | Self::RotationLost { .. }
        )
    }

    /// The failure kind, for metrics and logs.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::ReauthRequired { .. } | Self::NoRefreshToken => FailureKind::ReauthRequired,
            Self::RotationLost { .. } => FailureKind::RotationLost,
            Self::TokenEndpointUnavailable { .. } => FailureKind::Transient,
            Self::RefreshPaused { .. } => FailureKind::Paused,
            Self::SpentRefreshToken { .. } => FailureKind::SpentRefreshToken,
            Self::UnexpectedStatus { .. } | Self::Config(_) => FailureKind::Config,
            Self::MalformedTokenResponse { .. } => FailureKind::Malformed,
            Self::KeysNotPersisted { .. } => FailureKind::Sink,
            Self::RejectedAfterRefresh { .. } | Self::NotReplayable { .. } => FailureKind::Rejected,
        }
    }
}

/// The kind of an [`AuthError`], as metrics count it and logs label it
/// ([`as_str`](Self::as_str)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The provider refused the grant, or there is no refresh token: a person must authorize
    /// the credential again.
    ReauthRequired,
    /// A rotated refresh token was lost after the provider issued it.
    RotationLost,
    /// The token endpoint failed on every attempt.
    Transient,
    /// Token requests are paused (`Retry-After`, minimum refresh interval).
    Paused,
    /// The refresh token was already used by someone else.
    SpentRefreshToken,
    /// Configuration, or a status the token endpoint should never answer.
    Config,
    /// The token response could not be read.
    Malformed,
    /// The keys sink failed to persist rotated keys.
    Sink,
    /// The API refused the fresh token, or the request could not be sent again.
    Rejected,
}

impl FailureKind {
    /// The label in logs: `reauth_required`, `rotation_lost`, `transient`, `paused`,
    /// `spent_refresh_token`, `config`, `malformed`, `sink`, `rejected`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ReauthRequired => "reauth_required",
            Self::RotationLost => "rotation_lost",
            Self::Transient => "transient",
            Self::Paused => "paused",
            Self::SpentRefreshToken => "spent_refresh_token",
            Self::Config => "config",
            Self::Malformed => "malformed",
            Self::Sink => "sink",
            Self::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest provider text (`error`, `error_description`) kept in an error, in characters.
const MAX_PROVIDER_TEXT: usize = 200;

impl AuthError {
    /// This error with the provider's text made safe to show: every occurrence of one of
    /// `secrets` (the credential's access and refresh tokens, the client secret) replaced by
    /// `[redacted]`, then cut to a bounded length. A provider that quotes the token it refused
    /// does not leak it into logs.
    pub(crate) fn scrubbed(self, secrets: &[&str]) -> Self {
        let clean = |text: String| provider_text(&text, secrets);
        match self {
            Self::ReauthRequired {
                status,
                code,
                description,
            } => Self::ReauthRequired {
                status,
                code: clean(code),
                description: description.map(clean),
            },
            Self::RotationLost {
                generation,
                status,
                code,
            } => Self::RotationLost {
                generation,
                status,
                code: clean(code),
            },
            other => other,
        }
    }
}

/// `text` with each secret replaced by `[redacted]` and cut to [`MAX_PROVIDER_TEXT`]
/// characters.
pub(crate) fn provider_text(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    match text.char_indices().nth(MAX_PROVIDER_TEXT) {
        Some((cut, _)) => format!("{}… (truncated)", &text[..cut]),
        None => text,
    }
}

/// Why token requests for a credential are paused (see [`AuthError::RefreshPaused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseCause {
    /// The token endpoint answered 429/503 with `Retry-After`.
    #[error("the token endpoint asked to retry later")]
    RetryAfter,
    /// The last token arrived already expired; the minimum refresh interval applies.
    #[error("the last token arrived already expired; minimum refresh interval")]
    MinRefreshInterval,
    /// An early refresh failed moments ago while the current token is still valid.
    #[error("a refresh failed moments ago")]
    AfterFailure,
}

/// One transient failure of the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransientFailure {
    /// An HTTP status worth retrying (408, 429, 5xx).
    #[error("HTTP {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        /// The status.
        status: u16,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The request could not be sent (no connection).
    #[error("network error: {0}")]
    Network(String),
    /// The request was sent but no answer arrived (timeout, connection reset): the provider
    /// may have processed the grant.
    #[error("no answer to a sent request: {0}")]
    ResponseLost(String),
}
