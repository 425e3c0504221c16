//! The keys of one credential: the fields a `component.json` declares under
//! `credentials.fields`, plus a typed OAuth2 [`TokenSet`].
//!
//! elastic.io stores a credential as a JSON object ("keys") and merges it into every step's
//! configuration. An OAuth field (`viewClass: OAuthFieldView`) holds the whole token response
//! under the field's name, e.g. `{"prodEnv": "login", "oauth": {"access_token": …}}`.
//! [`Credentials`] keeps the other fields verbatim and reads the token set into typed form.
//!
//! Nothing here prints a secret: [`Secret`], [`TokenSet`] and [`Credentials`] redact values
//! in `Debug` and `Display`. Serializing does expose them, because keys must be persisted.
//!
//! ```
//! use deckhand_core::credentials::Credentials;
//! use serde_json::json;
//!
//! let creds = Credentials::from_keys(json!({
//!     "prodEnv": "login",
//!     "oauth": {"access_token": "00D...", "refresh_token": "5Aep...", "instance_url": "https://na1.example"}
//! }))?;
//! assert_eq!(creds.token_field(), Some("oauth"));
//! let token = creds.token().expect("a token set");
//! assert_eq!(token.refresh_token().unwrap().expose(), "5Aep...");
//! assert_eq!(token.extra("instance_url").unwrap(), "https://na1.example");
//! // Debug output names fields, never values.
//! assert!(!format!("{creds:?}").contains("5Aep"));
//! # Ok::<(), deckhand_core::credentials::CredentialsError>(())
//! ```

mod file;
mod jwt;
mod secret;
mod token;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

pub use file::{CredentialsFile, CredentialsFileError};
pub use secret::Secret;
pub use token::{EXPIRES_AT_KEY, ExpirySource, MalformedToken, TokenSet};

/// The field name used for a token set when the keys hold none yet (e.g. a client-credentials
/// credential before its first token) and no other name was given.
pub const DEFAULT_TOKEN_FIELD: &str = "oauth";

/// Why keys could not be read as credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The keys are not a JSON object.
    #[error("credential keys must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// The named token field exists but is not an object.
    #[error("credential field `{field}` should hold an OAuth2 token object, found {found}")]
    TokenFieldNotAnObject {
        /// The field name.
        field: String,
        /// The JSON type found instead.
        found: &'static str,
    },
}

/// Where the token set lives in the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenLocation {
    /// Under a field, e.g. `oauth` (the elastic.io layout).
    Field(String),
    /// Flat at the top level of the keys (some components emitted bare token responses).
    TopLevel,
}

/// The keys of one credential. See the [module docs](self).
#[derive(Clone, PartialEq)]
pub struct Credentials {
    fields: Map<String, Value>,
    location: TokenLocation,
    token: Option<TokenSet>,
}

impl Credentials {
    /// Reads keys, finding the token set by itself: the first field whose value is an object
    /// with an `access_token` or `refresh_token`; else top-level `access_token`/`refresh_token`;
    /// else no token yet (it will be stored under [`DEFAULT_TOKEN_FIELD`]).
    pub fn from_keys(keys: Value) -> Result<Self, CredentialsError> {
        let fields = into_object(keys)?;
        let field = fields
            .iter()
            .find(|(_, v)| is_token_object(v))
            .map(|(k, _)| k.clone());
        match field {
            Some(name) => Self::with_token_field(Value::Object(fields), &name),
            None if is_token_map(&fields) => {
                let token = TokenSet::from_stored(fields);
                Ok(Self {
                    fields: Map::new(),
                    location: TokenLocation::TopLevel,
                    token: Some(token),
                })
            }
            None => Ok(Self {
                fields,
                location: TokenLocation::Field(DEFAULT_TOKEN_FIELD.to_owned()),
                token: None,
            }),
        }
    }

    /// Reads keys whose token set is (or will be) under `field`, as declared by the component's
    /// OAuth field.
    pub fn with_token_field(keys: Value, field: &str) -> Result<Self, CredentialsError> {
        let mut fields = into_object(keys)?;
        let token = match fields.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(TokenSet::from_stored(map)),
            Some(other) => {
                return Err(CredentialsError::TokenFieldNotAnObject {
                    field: field.to_owned(),
                    found: token::json_kind(&other),
                });
            }
        };
        Ok(Self {
            fields,
            location: TokenLocation::Field(field.to_owned()),
            token,
        })
    }

    /// Credentials without keys.
    pub fn empty() -> Self {
        Self {
            fields: Map::new(),
            location: TokenLocation::Field(DEFAULT_TOKEN_FIELD.to_owned()),
            token: None,
        }
    }

    /// The token set, if the keys hold one.
    pub fn token(&self) -> Option<&TokenSet> {
        self.token.as_ref()
    }

    /// The field holding the token set, or `None` when it is flat at the top level.
    pub fn token_field(&self) -> Option<&str> {
        match &self.location {
            TokenLocation::Field(name) => Some(name),
            TokenLocation::TopLevel => None,
        }
    }

    /// A non-token field of the keys (`prodEnv`, `tenantId`, `client_secret`…).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A non-token field as a string, if it is one.
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// All non-token fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// These credentials with `token` as their token set.
    pub fn with_token(&self, token: TokenSet) -> Self {
        Self {
            fields: self.fields.clone(),
            location: self.location.clone(),
            token: Some(token),
        }
    }

    /// These keys with keys a component emitted laid over them: the component's fields win
    /// one by one, inside the token set too; what it left out is kept.
    pub fn overlaid_with(&self, component: &Credentials) -> Self {
        let mut fields = self.fields.clone();
        fields.extend(component.fields.clone());
        let token = match (&self.token, &component.token) {
            (Some(ours), Some(theirs)) => Some(ours.overlaid_with(theirs)),
            (ours, theirs) => theirs.clone().or_else(|| ours.clone()),
        };
        Self {
            fields,
            location: self.location.clone(),
            token,
        }
    }

    /// The complete keys as the platform stores them. Exposes secrets: persistence only.
    pub fn to_keys(&self) -> Value {
        let mut keys = self.fields.clone();
        match (&self.location, &self.token) {
            (_, None) => {}
            (TokenLocation::Field(name), Some(token)) => {
                keys.insert(name.clone(), Value::Object(token.to_keys()));
            }
            (TokenLocation::TopLevel, Some(token)) => keys.extend(token.to_keys()),
        }
        Value::Object(keys)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Any field may be a secret (client_secret, password, api key): names only.
        f.debug_struct("Credentials")
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("token_field", &self.token_field())
            .field("token", &self.token)
            .finish()
    }
}

impl Serialize for Credentials {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_keys().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let keys = Value::deserialize(deserializer)?;
        Self::from_keys(keys).map_err(serde::de::Error::custom)
    }
}

fn into_object(keys: Value) -> Result<Map<String, Value>, CredentialsError> {
    match keys {
        Value::Object(map) => Ok(map),
        other => Err(CredentialsError::NotAnObject {
            found: token::json_kind(&other),
        }),
    }
}

fn is_token_map(map: &Map<String, Value>) -> bool {
    map.contains_key("access_token") || map.contains_key("refresh_token")
}

fn is_token_object(value: &Value) -> bool {
    value.as_object().is_some_and(is_token_map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_token_field() {
        let c = Credentials::from_keys(json!({"prodEnv":"test","oauth":{"refresh_token":"r"}}))
            .unwrap();
        assert_eq!(c.token_field(), Some("oauth"));
        assert_eq!(c.field_str("prodEnv"), Some("test"));
        assert!(c.field("oauth").is_none());
        assert_eq!(
            c.to_keys(),
            json!({"prodEnv":"test","oauth":{"refresh_token":"r"}})
        );
    }

    #[test]
    fn flat_keys_round_trip() {
        let keys = json!({"access_token":"a","refresh_token":"r","resource":"x"});
        let c = Credentials::from_keys(keys.clone()).unwrap();
        assert_eq!(c.token_field(), None);
        assert_eq!(c.to_keys(), keys);
    }

    #[test]
    fn no_token_yet_uses_default_field() {
        let c = Credentials::from_keys(json!({"tenantId":"t","clientSecret":"s"})).unwrap();
        assert!(c.token().is_none());
        assert_eq!(c.token_field(), Some(DEFAULT_TOKEN_FIELD));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = Credentials::from_keys(json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "credential keys must be a JSON object, found array"
        );
        let err = Credentials::with_token_field(json!({"oauth":"tok"}), "oauth").unwrap_err();
        assert_eq!(
            err.to_string(),
            "credential field `oauth` should hold an OAuth2 token object, found string"
        );
    }

    #[test]
    fn debug_shows_no_values() {
        let c = Credentials::from_keys(json!({
            "clientSecret":"TOPSECRET","oauth":{"access_token":"TOPSECRET2","refresh_token":"TOPSECRET3"}
        }))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("TOPSECRET"), "{dbg}");
        assert!(dbg.contains("clientSecret"), "{dbg}");
    }
}
