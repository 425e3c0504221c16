use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::{Secret, jwt};

/// The key under which Deckhand stores the absolute expiry (seconds since the Unix epoch).
///
/// `expires_in` is relative to the moment the token response was received, which is lost once
/// keys are stored, so the absolute instant is written beside it.
pub const EXPIRES_AT_KEY: &str = "expires_at";
/// Where Deckhand stores when the token set was obtained (seconds since the Unix epoch), so a
/// process that loads stored keys knows the token's lifetime (and refreshes it early by the
/// same margin as the process that obtained it).
pub const OBTAINED_AT_KEY: &str = "obtained_at";

const ACCESS_TOKEN: &str = "access_token";
const REFRESH_TOKEN: &str = "refresh_token";
const ID_TOKEN: &str = "id_token";
const TOKEN_TYPE: &str = "token_type";
const SCOPE: &str = "scope";
const EXPIRES_IN: &str = "expires_in";
/// The fields [`TokenSet`] holds typed; never written from the provider's extras.
const TYPED_KEYS: [&str; 6] = [
    ACCESS_TOKEN,
    REFRESH_TOKEN,
    ID_TOKEN,
    TOKEN_TYPE,
    SCOPE,
    EXPIRES_AT_KEY,
];

/// Where the expiry of a [`TokenSet`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpirySource {
    /// `expires_in` of the token response (a number or a numeric string).
    ExpiresIn,
    /// The `exp` claim of the access token, which is a JWT.
    JwtExp,
    /// The absolute `expires_at` Deckhand stored with the keys.
    Stored,
    /// No expiry is known: only a rejected request (401) tells that the token expired.
    Unknown,
}

/// A typed OAuth2 token set: the standard fields of a token response, plus every other field
/// the provider sent (Salesforce's `instance_url`, Graph's `ext_expires_in`, …) kept verbatim.
///
/// Secrets are [`Secret`]s, so `Debug` shows which tokens are present but never their values.
#[derive(Clone, PartialEq)]
pub struct TokenSet {
    access_token: Option<Secret>,
    refresh_token: Option<Secret>,
    id_token: Option<Secret>,
    token_type: Option<String>,
    scope: Option<String>,
    expires_at: Option<SystemTime>,
    expiry_source: ExpirySource,
    obtained_at: Option<SystemTime>,
    extra: Map<String, Value>,
}

/// Why a token endpoint response was not accepted as a token set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedToken(pub(crate) String);

impl TokenSet {
    /// Parses the JSON body of a token endpoint response received at `received_at`.
    ///
    /// `access_token` must be a non-blank string. `expires_in` may be a number or a numeric
    /// string; without it, the JWT `exp` claim of the access token is used; else the expiry is
    /// unknown. A blank `refresh_token` counts as absent.
    pub fn from_response(
        body: Map<String, Value>,
        received_at: SystemTime,
    ) -> Result<Self, MalformedToken> {
        match body.get(ACCESS_TOKEN) {
            None | Some(Value::Null) => {
                return Err(MalformedToken("the response has no `access_token`".into()));
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(MalformedToken("`access_token` is blank".into()));
            }
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(MalformedToken(format!(
                    "`access_token` is a {}, not a string",
                    json_kind(other)
                )));
            }
        }
        let mut token = Self::from_map(body);
        token.obtained_at = Some(received_at);
        let expires_in = token.extra.get(EXPIRES_IN).and_then(seconds_of);
        match expires_in {
            Some(seconds) => {
                token.expires_at = received_at.checked_add(Duration::from_secs_f64(seconds));
                token.expiry_source = ExpirySource::ExpiresIn;
            }
            None => token.set_expiry_from_jwt(),
        }
        Ok(token)
    }

    /// Reads a token set as stored in credential keys (e.g. the `oauth` field elastic.io fills
    /// from the token response). The access token may be missing (only a refresh token seeded).
    ///
    /// The expiry is Deckhand's absolute `expires_at` if present, else the JWT `exp`; a stored
    /// `expires_in` alone is ignored, because the moment it was relative to is unknown.
    pub fn from_stored(keys: Map<String, Value>) -> Self {
        let mut token = Self::from_map(keys);
        let stored = token.extra.get(EXPIRES_AT_KEY).and_then(seconds_of);
        match stored.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs_f64(s))) {
            Some(at) => {
                token.expires_at = Some(at);
                token.expiry_source = ExpirySource::Stored;
            }
            None => token.set_expiry_from_jwt(),
        }
        token.extra.remove(EXPIRES_AT_KEY);
        if let Some(Some(at)) = token
            .extra
            .remove(OBTAINED_AT_KEY)
            .as_ref()
            .and_then(seconds_of)
            .map(|s| UNIX_EPOCH.checked_add(Duration::from_secs_f64(s)))
        {
            token.obtained_at = Some(at);
        }
        token
    }

    fn from_map(mut map: Map<String, Value>) -> Self {
        // Every typed field leaves the map whatever its JSON type: a `null` or a number left
        // among the extras would be written back over the typed value by `to_keys`.
        let mut take_string = |key: &str| match map.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let access_token = take_string(ACCESS_TOKEN).map(Secret::from);
        let refresh_token = take_string(REFRESH_TOKEN)
            .map(Secret::from)
            .filter(|s| !s.is_blank());
        let id_token = take_string(ID_TOKEN).map(Secret::from);
        let token_type = take_string(TOKEN_TYPE);
        let scope = take_string(SCOPE);
        Self {
            access_token,
            refresh_token,
            id_token,
            token_type,
            scope,
            expires_at: None,
            expiry_source: ExpirySource::Unknown,
            obtained_at: None,
            extra: map,
        }
    }

    /// What can be kept of a token response whose access token is unusable (missing, blank,
    /// not a string, not sendable in a header): its refresh token, if it has one, and its
    /// other fields, without any access token. A rotating provider has already spent the old
    /// refresh token, so this one must be persisted even though the response is refused.
    pub(crate) fn salvage_refresh_token(body: Map<String, Value>) -> Option<Self> {
        let mut token = Self::from_map(body);
        token.refresh_token.as_ref()?;
        token.access_token = None;
        token.extra.remove(EXPIRES_IN);
        Some(token)
    }

    /// This token set without its access token (it was found unusable).
    pub(crate) fn without_access_token(mut self) -> Self {
        self.access_token = None;
        self.expires_at = None;
        self.expiry_source = ExpirySource::Unknown;
        self
    }

    /// These keys overlaid with keys a component emitted itself: the component's fields win
    /// one by one; the expiry follows the access token it belongs to.
    pub(crate) fn overlaid_with(&self, component: &TokenSet) -> TokenSet {
        let mut extra = self.extra.clone();
        extra.extend(component.extra.clone());
        let new_access = component.access_token.is_some()
            && component.access_token.as_ref().map(Secret::expose)
                != self.access_token.as_ref().map(Secret::expose);
        let timing = if new_access { component } else { self };
        TokenSet {
            access_token: component
                .access_token
                .clone()
                .or_else(|| self.access_token.clone()),
            refresh_token: component
                .refresh_token
                .clone()
                .or_else(|| self.refresh_token.clone()),
            id_token: component.id_token.clone().or_else(|| self.id_token.clone()),
            token_type: component
                .token_type
                .clone()
                .or_else(|| self.token_type.clone()),
            scope: component.scope.clone().or_else(|| self.scope.clone()),
            expires_at: timing.expires_at,
            expiry_source: timing.expiry_source,
            obtained_at: timing.obtained_at,
            extra,
        }
    }

    fn set_expiry_from_jwt(&mut self) {
        self.expires_at = self
            .access_token
            .as_ref()
            .and_then(|t| jwt::expiry(t.expose()));
        self.expiry_source = if self.expires_at.is_some() {
            ExpirySource::JwtExp
        } else {
            ExpirySource::Unknown
        };
    }

    /// The token set after a refresh: these keys merged with the whole new response, which
    /// wins field by field. A response without `refresh_token` keeps the old one; the expiry
    /// comes from the new response only.
    pub fn merged_with(&self, response: TokenSet) -> TokenSet {
        let mut extra = self.extra.clone();
        // A relative expiry from the old response would be misread next to the new tokens.
        extra.remove(EXPIRES_IN);
        extra.extend(response.extra);
        TokenSet {
            access_token: response.access_token.or_else(|| self.access_token.clone()),
            refresh_token: response
                .refresh_token
                .or_else(|| self.refresh_token.clone()),
            id_token: response.id_token.or_else(|| self.id_token.clone()),
            token_type: response.token_type.or_else(|| self.token_type.clone()),
            scope: response.scope.or_else(|| self.scope.clone()),
            expires_at: response.expires_at,
            expiry_source: response.expiry_source,
            obtained_at: response.obtained_at,
            extra,
        }
    }

    /// The access token, if one was issued.
    pub fn access_token(&self) -> Option<&Secret> {
        self.access_token.as_ref()
    }

    /// The refresh token, if any.
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The OpenID Connect ID token, if any.
    pub fn id_token(&self) -> Option<&Secret> {
        self.id_token.as_ref()
    }

    /// `token_type` as sent by the provider (usually `Bearer`).
    pub fn token_type(&self) -> Option<&str> {
        self.token_type.as_deref()
    }

    /// The granted scopes, space separated, as sent by the provider.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The absolute instant the access token expires, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Where [`expires_at`](Self::expires_at) came from.
    pub fn expiry_source(&self) -> ExpirySource {
        self.expiry_source
    }

    /// When the token response was received, if this set came from one in this process.
    pub fn obtained_at(&self) -> Option<SystemTime> {
        self.obtained_at
    }

    /// A provider-specific field kept verbatim (`instance_url`, `ext_expires_in`, `issued_at`…).
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.get(key)
    }

    /// All provider-specific fields.
    pub fn extras(&self) -> &Map<String, Value> {
        &self.extra
    }

    /// The token set as stored keys: the standard fields, the provider's fields verbatim, and
    /// `expires_at` (seconds since the Unix epoch) when the expiry is known.
    ///
    /// This exposes the secrets: it is meant for persistence, never for logs.
    pub fn to_keys(&self) -> Map<String, Value> {
        let mut map = Map::new();
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                map.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        };
        put(ACCESS_TOKEN, self.access_token.as_ref().map(Secret::expose));
        put(
            REFRESH_TOKEN,
            self.refresh_token.as_ref().map(Secret::expose),
        );
        put(ID_TOKEN, self.id_token.as_ref().map(Secret::expose));
        put(TOKEN_TYPE, self.token_type.as_deref());
        put(SCOPE, self.scope.as_deref());
        // A provider field never shadows a typed one (a `"refresh_token": null` among the
        // extras would wipe the stored refresh token).
        for (key, value) in &self.extra {
            if !TYPED_KEYS.contains(&key.as_str()) {
                map.insert(key.clone(), value.clone());
            }
        }
        if let Some(secs) = self
            .expires_at
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        {
            map.insert(EXPIRES_AT_KEY.to_owned(), Value::from(secs.as_secs()));
            if let Some(obtained) = self
                .obtained_at
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            {
                map.insert(OBTAINED_AT_KEY.to_owned(), Value::from(obtained.as_secs()));
            }
        }
        map
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .field("expiry_source", &self.expiry_source)
            // Provider extras can hold further secrets (a `signature`, a second token):
            // names only.
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A non-negative number of seconds from a JSON number or a numeric string.
fn seconds_of(value: &Value) -> Option<f64> {
    let seconds = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (0.0..1e12).contains(&seconds).then_some(seconds)
}

pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test input is an object"),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn expires_in_number_and_string() {
        let t =
            TokenSet::from_response(map(json!({"access_token":"a","expires_in":3600})), at(1000))
                .unwrap();
        assert_eq!(t.expires_at(), Some(at(4600)));
        assert_eq!(t.expiry_source(), ExpirySource::ExpiresIn);
        let t = TokenSet::from_response(
            map(json!({"access_token":"a","expires_in":" 3599 "})),
            at(0),
        )
        .unwrap();
        assert_eq!(t.expires_at(), Some(at(3599)));
    }

    #[test]
    fn rejects_missing_blank_or_non_string_access_token() {
        let err = TokenSet::from_response(map(json!({"token_type":"Bearer"})), at(0)).unwrap_err();
        assert!(err.0.contains("no `access_token`"), "{err}");
        let err = TokenSet::from_response(map(json!({"access_token":"  "})), at(0)).unwrap_err();
        assert!(err.0.contains("blank"), "{err}");
        let err = TokenSet::from_response(map(json!({"access_token":7})), at(0)).unwrap_err();
        assert!(err.0.contains("number"), "{err}");
    }

    #[test]
    fn unknown_expiry_without_expires_in_or_jwt() {
        let t = TokenSet::from_response(
            map(json!({"access_token":"00D!opaque","instance_url":"https://x"})),
            at(0),
        )
        .unwrap();
        assert_eq!(t.expires_at(), None);
        assert_eq!(t.expiry_source(), ExpirySource::Unknown);
        assert_eq!(t.extra("instance_url"), Some(&json!("https://x")));
    }

    #[test]
    fn merge_keeps_old_refresh_token_and_takes_new_fields() {
        let old = TokenSet::from_stored(map(json!({
            "access_token":"old","refresh_token":"r1","instance_url":"https://a","expires_in":10,
            "custom":"kept"
        })));
        let new = TokenSet::from_response(
            map(json!({"access_token":"new","instance_url":"https://b"})),
            at(5),
        )
        .unwrap();
        let merged = old.merged_with(new);
        assert_eq!(merged.access_token().unwrap().expose(), "new");
        assert_eq!(merged.refresh_token().unwrap().expose(), "r1");
        assert_eq!(merged.extra("instance_url"), Some(&json!("https://b")));
        assert_eq!(merged.extra("custom"), Some(&json!("kept")));
        assert_eq!(merged.extra("expires_in"), None);
    }

    #[test]
    fn stored_round_trip_keeps_absolute_expiry() {
        let t = TokenSet::from_response(
            map(json!({"access_token":"a","refresh_token":"r","expires_in":60,"ext_expires_in":"60"})),
            at(100),
        )
        .unwrap();
        let keys = t.to_keys();
        assert_eq!(keys["expires_at"], json!(160));
        let back = TokenSet::from_stored(keys);
        assert_eq!(back.expires_at(), Some(at(160)));
        assert_eq!(back.expiry_source(), ExpirySource::Stored);
        assert_eq!(back.extra("ext_expires_in"), Some(&json!("60")));
    }

    #[test]
    fn typed_fields_of_an_unexpected_json_type_never_reach_the_stored_keys() {
        let old = TokenSet::from_stored(map(json!({"access_token":"a0","refresh_token":"r0"})));
        let new = TokenSet::from_response(
            map(json!({"access_token":"a1","refresh_token":null,"scope":7,"id_token":false})),
            at(5),
        )
        .unwrap();
        let keys = old.merged_with(new).to_keys();
        assert_eq!(keys["refresh_token"], json!("r0"));
        assert_eq!(keys["access_token"], json!("a1"));
        assert!(
            !keys.contains_key("scope") && !keys.contains_key("id_token"),
            "{keys:?}"
        );
    }

    #[test]
    fn debug_redacts() {
        let t = TokenSet::from_response(
            map(json!({"access_token":"SECRET-A","refresh_token":"SECRET-R","signature":"SECRET-S"})),
            at(0),
        )
        .unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("signature"), "{dbg}");
    }
}

#[cfg(test)]
mod stored_lifetime_tests {
    use super::*;

    #[test]
    fn stored_keys_keep_when_the_token_was_obtained() {
        let received = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = serde_json::json!({"access_token": "a", "expires_in": 120});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let token = TokenSet::from_response(body, received).unwrap();
        let reloaded = TokenSet::from_stored(token.to_keys());
        assert_eq!(reloaded.obtained_at(), Some(received));
        assert_eq!(
            reloaded.expires_at(),
            Some(received + Duration::from_secs(120))
        );
        assert!(!reloaded.extras().contains_key(OBTAINED_AT_KEY));
    }
}
