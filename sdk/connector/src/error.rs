use std::fmt;

use deckhand_core::auth::AuthError;

/// A failure of a connector's function; the runtime turns it into an `error` event and rejects
/// the input message.
///
/// `name` and `message` become the elastic.io error payload's `name` and `message`; the chain
/// of sources becomes its `stack`. Messages must not contain secrets.
#[derive(Debug)]
pub struct ConnectorError {
    name: String,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    /// An error named `Error` with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self::named("Error", message)
    }

    /// An error with an explicit `name` (e.g. `ReauthRequired`, `InvalidInput`).
    pub fn named(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The error's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The messages of the source chain, one per line (the payload's `stack`).
    pub fn stack(&self) -> String {
        let mut stack = format!("{}: {}", self.name, self.message);
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
        write!(f, "{}: {}", self.name, self.message)
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
        let name = if err.is_reauth_required() {
            "ReauthRequired"
        } else {
            "AuthError"
        };
        let message = err.to_string();
        // Kept as the source, so a connector can downcast and tell the kinds apart.
        Self::named(name, message).with_source(err)
    }
}

impl From<reqwest_middleware::Error> for ConnectorError {
    fn from(err: reqwest_middleware::Error) -> Self {
        match err {
            reqwest_middleware::Error::Middleware(e) => match e.downcast::<AuthError>() {
                Ok(auth) => auth.into(),
                Err(other) => Self::named("HttpError", other.to_string()),
            },
            reqwest_middleware::Error::Reqwest(e) => e.into(),
        }
    }
}

impl From<reqwest::Error> for ConnectorError {
    fn from(err: reqwest::Error) -> Self {
        // Without the URL: query strings can carry secrets.
        let err = err.without_url();
        Self::named("HttpError", err.to_string())
    }
}

impl From<serde_json::Error> for ConnectorError {
    fn from(err: serde_json::Error) -> Self {
        Self::named("JsonError", err.to_string())
    }
}
