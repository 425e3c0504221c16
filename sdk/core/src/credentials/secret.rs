use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (access token, refresh token, client secret, password).
///
/// `Debug` and `Display` print `[redacted]`, so a secret can sit inside any struct that derives
/// `Debug` and be logged through `tracing` without leaking. Reading the value is explicit:
/// [`Secret::expose`].
///
/// `Serialize` writes the real value, because secrets have to reach the platform (in an
/// `updateKeys` event) and the credentials file. Never serialize a secret into a log line.
///
/// ```
/// use deckhand_core::credentials::Secret;
///
/// let token = Secret::new("eyJhbGciOi...");
/// assert_eq!(format!("{token:?}"), "Secret([redacted])");
/// assert_eq!(token.to_string(), "[redacted]");
/// assert_eq!(token.expose(), "eyJhbGciOi...");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Every call site that needs the real value says so by calling this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `true` when the secret is empty or only whitespace (a provider bug we must not accept
    /// as a usable token).
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}
