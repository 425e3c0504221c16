use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

use deckhand_core::auth::AuthError;

/// What kind of failure a [`ConnectorError`] is. Its [`name`](Self::name) is the elastic.io
/// error event's `name`, which flows and operators match on: the names are an interface and
/// never change.
///
/// The variants are the SDK's and connectors' common failures; a provider's own error codes
/// (Graph's `ErrorAccessDenied`, Salesforce's `REQUIRED_FIELD_MISSING`) travel as
/// [`Provider`](Self::Provider), unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A failure without a more precise kind (`Error`).
    Other,
    /// The step's configuration is missing or wrong (`InvalidConfiguration`).
    InvalidConfiguration,
    /// The input message is missing or wrong (`InvalidInput`).
    InvalidInput,
    /// The credential is incomplete or unusable as it is (`InvalidCredentials`).
    InvalidCredentials,
    /// The provider answered something unusable (`InvalidResponse`).
    InvalidResponse,
    /// The step's snapshot cannot be read (`InvalidSnapshot`).
    InvalidSnapshot,
    /// The component has no function of that name (`UnknownFunction`).
    UnknownFunction,
    /// The connector does not offer this (`NotSupported`).
    NotSupported,
    /// What the input names does not exist (`NotFound`).
    NotFound,
    /// The HTTP request failed or was answered with an error (`HttpError`).
    HttpError,
    /// JSON could not be read or written (`JsonError`).
    JsonError,
    /// An event could not be handed to the transport (`EmitError`).
    EmitError,
    /// The credential must be authorized again by a person (`ReauthRequired`).
    ReauthRequired,
    /// Getting a token failed otherwise (`AuthError`).
    AuthError,
    /// The function panicked (`Panic`).
    Panic,
    /// A provider's own error code, sent as it is.
    Provider(String),
}

impl ErrorKind {
    /// Every kind but [`Provider`](Self::Provider).
    pub const ALL: [ErrorKind; 15] = [
        Self::Other,
        Self::InvalidConfiguration,
        Self::InvalidInput,
        Self::InvalidCredentials,
        Self::InvalidResponse,
        Self::InvalidSnapshot,
        Self::UnknownFunction,
        Self::NotSupported,
        Self::NotFound,
        Self::HttpError,
        Self::JsonError,
        Self::EmitError,
        Self::ReauthRequired,
        Self::AuthError,
        Self::Panic,
    ];

    /// The name on the wire (the error event's `name`).
    pub fn name(&self) -> &str {
        match self {
            Self::Other => "Error",
            Self::InvalidConfiguration => "InvalidConfiguration",
            Self::InvalidInput => "InvalidInput",
            Self::InvalidCredentials => "InvalidCredentials",
            Self::InvalidResponse => "InvalidResponse",
            Self::InvalidSnapshot => "InvalidSnapshot",
            Self::UnknownFunction => "UnknownFunction",
            Self::NotSupported => "NotSupported",
            Self::NotFound => "NotFound",
            Self::HttpError => "HttpError",
            Self::JsonError => "JsonError",
            Self::EmitError => "EmitError",
            Self::ReauthRequired => "ReauthRequired",
            Self::AuthError => "AuthError",
            Self::Panic => "Panic",
            Self::Provider(code) => code,
        }
    }

    /// The kind a wire name stands for: one of [`ALL`](Self::ALL), or else
    /// [`Provider`](Self::Provider).
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .unwrap_or_else(|| Self::Provider(name.to_owned()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure of a connector's function; the runtime turns it into an `error` event and rejects
/// the input message.
///
/// The [`kind`](Self::kind)'s name and the message become the elastic.io error payload's `name`
/// and `message`; the chain of sources becomes its `stack`. Messages must not contain secrets.
/// An HTTP failure carries its [`status`](Self::status) and the server's
/// [`retry_after`](Self::retry_after), so callers decide without parsing messages.
///
/// ```
/// use std::time::Duration;
/// use deckhand_connector::{ConnectorError, ErrorKind};
/// use reqwest::StatusCode;
///
/// let err = ConnectorError::new(ErrorKind::Provider("REQUEST_LIMIT_EXCEEDED".into()), "slow down")
///     .with_status(StatusCode::TOO_MANY_REQUESTS)
///     .with_retry_after(Duration::from_secs(30));
/// assert_eq!(err.name(), "REQUEST_LIMIT_EXCEEDED");
/// assert!(err.is_throttled());
/// assert_eq!(err.stack(), "REQUEST_LIMIT_EXCEEDED: slow down\n    status: HTTP 429 Too Many Requests (Retry-After: 30 s)");
/// ```
#[derive(Debug)]
pub struct ConnectorError {
    kind: ErrorKind,
    message: String,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            source: None,
        }
    }

    /// An error of kind [`Other`](ErrorKind::Other) (named `Error`) with `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Records the HTTP status the provider answered with.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Records the provider's `Retry-After`.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The same error with another message (kind, status, retry-after and source kept).
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The error's name on the wire (its kind's name).
    pub fn name(&self) -> &str {
        self.kind.name()
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status of the answer that failed, if the failure was one.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The provider's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the provider asked to come back later: HTTP 429 or 503.
    pub fn is_throttled(&self) -> bool {
        matches!(
            self.status,
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        )
    }

    /// The token failure behind this error, if it is one.
    pub fn auth_error(&self) -> Option<&AuthError> {
        self.source.as_deref()?.downcast_ref()
    }

    /// The payload's `stack`: the error, its HTTP status, then the messages of the source
    /// chain, one per line.
    pub fn stack(&self) -> String {
        let mut stack = format!("{}: {}", self.name(), self.message);
        if let Some(status) = self.status {
            stack.push_str(&format!("\n    status: HTTP {status}"));
            if let Some(wait) = self.retry_after {
                stack.push_str(&format!(" (Retry-After: {} s)", wait.as_secs()));
            }
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(err) = source {
            stack.push_str("\n    caused by: ");
            stack.push_str(&err.to_string());
            source = err.source();
        }
        stack
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.message)
    }
}

impl std::error::Error for ConnectorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<AuthError> for ConnectorError {
    fn from(err: AuthError) -> Self {
        let kind = if err.is_reauth_required() {
            ErrorKind::ReauthRequired
        } else {
            ErrorKind::AuthError
        };
        let message = err.to_string();
        // Kept as the source: `auth_error()` tells the kinds apart.
        Self::new(kind, message).with_source(err)
    }
}

impl From<reqwest_middleware::Error> for ConnectorError {
    fn from(err: reqwest_middleware::Error) -> Self {
        match err {
            reqwest_middleware::Error::Middleware(e) => match e.downcast::<AuthError>() {
                Ok(auth) => auth.into(),
                Err(other) => Self::new(ErrorKind::HttpError, other.to_string()),
            },
            reqwest_middleware::Error::Reqwest(e) => e.into(),
        }
    }
}

impl From<reqwest::Error> for ConnectorError {
    fn from(err: reqwest::Error) -> Self {
        // Without the URL: query strings can carry secrets.
        let err = err.without_url();
        let status = err.status();
        let error = Self::new(ErrorKind::HttpError, err.to_string());
        match status {
            Some(status) => error.with_status(status),
            None => error,
        }
    }
}

impl From<serde_json::Error> for ConnectorError {
    fn from(err: serde_json::Error) -> Self {
        Self::new(ErrorKind::JsonError, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the elastic.io error events' `name`: flows and operators match on them.
    #[test]
    fn wire_names_never_change() {
        let names: Vec<&str> = ErrorKind::ALL.iter().map(ErrorKind::name).collect();
        assert_eq!(
            names,
            [
                "Error",
                "InvalidConfiguration",
                "InvalidInput",
                "InvalidCredentials",
                "InvalidResponse",
                "InvalidSnapshot",
                "UnknownFunction",
                "NotSupported",
                "NotFound",
                "HttpError",
                "JsonError",
                "EmitError",
                "ReauthRequired",
                "AuthError",
                "Panic",
            ]
        );
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.name()), kind);
        }
        let provider = ErrorKind::Provider("REQUIRED_FIELD_MISSING".into());
        assert_eq!(provider.name(), "REQUIRED_FIELD_MISSING");
        assert_eq!(ErrorKind::from_name("REQUIRED_FIELD_MISSING"), provider);

        // What the error event carries.
        let err = ConnectorError::new(ErrorKind::InvalidConfiguration, "`sobject` is required");
        let payload = crate::ErrorPayload::from(&err);
        assert_eq!(payload.name, "InvalidConfiguration");
        assert_eq!(payload.message, "`sobject` is required");
        assert_eq!(
            err.to_string(),
            "InvalidConfiguration: `sobject` is required"
        );
        assert_eq!(ConnectorError::other("x").name(), "Error");
        let json: serde_json::Error = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(ConnectorError::from(json).name(), "JsonError");
        let auth = ConnectorError::from(AuthError::NoRefreshToken);
        assert_eq!(auth.name(), "ReauthRequired");
        assert!(auth.auth_error().is_some());
    }

    #[test]
    fn status_and_retry_after_are_typed_and_in_the_stack() {
        let err = ConnectorError::new(ErrorKind::HttpError, "down")
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after(Duration::from_secs(7))
            .with_source(std::io::Error::other("connection reset"));
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.is_throttled());
        assert_eq!(
            err.stack(),
            "HttpError: down\n    status: HTTP 503 Service Unavailable (Retry-After: 7 s)\n    \
             caused by: connection reset"
        );
        let plain = ConnectorError::new(ErrorKind::NotFound, "gone");
        assert!(!plain.is_throttled());
        assert_eq!(plain.status(), None);
        assert_eq!(plain.stack(), "NotFound: gone");
        let renamed = err.with_message("still down");
        assert_eq!(renamed.message(), "still down");
        assert!(renamed.is_throttled());
    }
}
