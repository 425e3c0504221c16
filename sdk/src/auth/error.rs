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
    /// A refresh was interrupted after the provider may have rotated the refresh token (its
    /// holder died, or the answer was lost), and the provider refused the retry with the old
    /// one: the rotated token is lost and the user must re-authorize. Permanent, like
    /// [`ReauthRequired`](Self::ReauthRequired), but says what happened.
    #[error("rotation lost at generation {generation}: {detail}; re-authorization required")]
    RotationLost {
        /// The generation whose refresh token was being spent.
        generation: u64,
        /// What happened (no secrets).
        detail: String,
    },
}

impl AuthError {
    /// `true` for failures that may succeed if tried again later (the token endpoint was
    /// unavailable, or persisting keys failed).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::TokenEndpointUnavailable { .. } | Self::KeysNotPersisted { .. }
        )
    }

    /// `true` when the user has to re-authorize the credential.
    pub fn is_reauth_required(&self) -> bool {
        matches!(
            self,
            Self::ReauthRequired { .. } | Self::NoRefreshToken | Self::RotationLost { .. }
        )
    }

    /// The failure kind as a short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ReauthRequired { .. } | Self::NoRefreshToken => "reauth_required",
            Self::TokenEndpointUnavailable { .. } => "transient",
            Self::UnexpectedStatus { .. } | Self::Config(_) => "config",
            Self::MalformedTokenResponse { .. } => "malformed",
            Self::KeysNotPersisted { .. } => "sink",
            Self::RejectedAfterRefresh { .. } | Self::NotReplayable { .. } => "rejected",
            Self::RotationLost { .. } => "rotation_lost",
        }
    }
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
    /// The request did not get an answer (connect error, timeout, reset).
    #[error("network error: {0}")]
    Network(String),
}
