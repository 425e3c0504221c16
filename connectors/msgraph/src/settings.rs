//! What a credential says: the authentication mode, the tenant, the OAuth2 app, and the
//! endpoints (public cloud by default; national clouds and the emulator by configuration).

use deckhand::connector::{ConnectorError, ErrorKind};
use deckhand::credentials::Secret;
use serde_json::{Map, Value};
use url::{Host, Url};

/// The Microsoft identity platform of the public cloud.
pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";
/// Microsoft Graph in the public cloud.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// The application (client) id used when a credential has no `clientId`.
pub const CLIENT_ID_ENV: &str = "MSGRAPH_CLIENT_ID";
/// The client secret used when a credential has no `clientId`.
pub const CLIENT_SECRET_ENV: &str = "MSGRAPH_CLIENT_SECRET";

/// Whose permissions the connector uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// App-only: the application's own permissions, through the client credentials grant.
    App,
    /// Delegated: a signed-in user's permissions, through the user's (rotating) refresh token.
    Delegated,
}

/// The non-secret settings of a credential, read from its keys (the credential fields, or a
/// step configuration, which holds them too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `authMode`.
    pub mode: AuthMode,
    /// `tenantId`.
    pub tenant_id: String,
    /// `authorityUrl`, default [`DEFAULT_AUTHORITY_URL`].
    pub authority_url: Url,
    /// `graphUrl`, default [`DEFAULT_GRAPH_URL`]: the only origin that gets the access token.
    pub graph_url: Url,
}

impl Settings {
    /// Reads and checks the settings; errors name the field and say what is wrong.
    pub fn from_keys(keys: &Map<String, Value>) -> Result<Self, ConnectorError> {
        let mode = match text(keys, "authMode") {
            Some("app") => AuthMode::App,
            Some("delegated") => AuthMode::Delegated,
            Some(other) => {
                return Err(invalid(format!(
                    "`authMode` must be `app` or `delegated`, not `{other}`"
                )));
            }
            None => return Err(invalid("`authMode` is required (`app` or `delegated`)")),
        };
        let tenant_id = text(keys, "tenantId")
            .ok_or_else(|| invalid("`tenantId` is required"))?
            .to_owned();
        if tenant_id.contains(['/', '?', '#']) {
            return Err(invalid(
                "`tenantId` must be a tenant id or domain name, not a URL",
            ));
        }
        let authority_url = endpoint(keys, "authorityUrl", DEFAULT_AUTHORITY_URL)?;
        let graph_url = endpoint(keys, "graphUrl", DEFAULT_GRAPH_URL)?;
        if graph_url.path() != "/" || graph_url.query().is_some() {
            return Err(invalid(format!(
                "`graphUrl` must be an origin such as {DEFAULT_GRAPH_URL}, without a path"
            )));
        }
        Ok(Self {
            mode,
            tenant_id,
            authority_url,
            graph_url,
        })
    }

    /// `{authorityUrl}/{tenantId}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        let mut url = self.authority_url.clone();
        // An http(s) URL (checked when read) always has path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend([self.tenant_id.as_str(), "oauth2", "v2.0", "token"]);
        }
        url.to_string()
    }

    /// The `scope` of token requests: every permission the app was granted on this Graph
    /// (`{graphUrl}/.default`, which also works in national clouds), plus `offline_access`
    /// for delegated tokens so that the refresh token keeps coming.
    pub fn scopes(&self) -> Vec<String> {
        let default = format!("{}/.default", self.graph_origin());
        match self.mode {
            AuthMode::App => vec![default],
            AuthMode::Delegated => vec![default, "offline_access".to_owned()],
        }
    }

    /// `graphUrl` without the trailing slash, e.g. `https://graph.microsoft.com`.
    pub fn graph_origin(&self) -> String {
        self.graph_url.as_str().trim_end_matches('/').to_owned()
    }

    /// The API root, `{graphUrl}/v1.0`.
    pub fn api_base(&self) -> Url {
        let mut url = self.graph_url.clone();
        url.set_path("/v1.0");
        url
    }
}

/// The OAuth2 application (client) a credential authenticates as.
#[derive(Clone, Debug)]
pub(crate) struct AppClient {
    /// The application (client) id.
    pub(crate) id: String,
    /// The client secret (redacted in `Debug`).
    pub(crate) secret: Secret,
}

impl AppClient {
    /// The client from [`CLIENT_ID_ENV`] and [`CLIENT_SECRET_ENV`], if both are set.
    pub(crate) fn from_env() -> Option<Self> {
        let id = std::env::var(CLIENT_ID_ENV)
            .ok()
            .filter(|s| !s.is_empty())?;
        let secret = std::env::var(CLIENT_SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())?;
        Some(Self {
            id,
            secret: secret.into(),
        })
    }

    /// The credential's own `clientId` and `clientSecret`, or else `fallback` (the
    /// environment's). The pair always comes from one place, never a mix of both.
    pub(crate) fn resolve(
        keys: &Map<String, Value>,
        fallback: Option<&AppClient>,
    ) -> Result<Self, ConnectorError> {
        match (text(keys, "clientId"), text(keys, "clientSecret")) {
            (Some(id), Some(secret)) => Ok(Self {
                id: id.to_owned(),
                secret: secret.into(),
            }),
            (Some(_), None) => Err(invalid(
                "`clientSecret` is required when the credential has a `clientId`",
            )),
            (None, Some(_)) => Err(invalid(
                "`clientId` is required when the credential has a `clientSecret`",
            )),
            (None, None) => fallback.cloned().ok_or_else(|| {
                invalid(format!(
                    "`clientId` and `clientSecret` are required (or set {CLIENT_ID_ENV} and \
                     {CLIENT_SECRET_ENV} for the component)"
                ))
            }),
        }
    }
}

/// A string key; absent, null and blank all mean `None`.
fn text<'a>(keys: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    keys.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// An endpoint URL: https, or http to a loopback address (the emulator, a local proxy).
fn endpoint(keys: &Map<String, Value>, name: &str, default: &str) -> Result<Url, ConnectorError> {
    let raw = text(keys, name).unwrap_or(default);
    let url = Url::parse(raw).map_err(|e| invalid(format!("`{name}` `{raw}`: {e}")))?;
    let loopback = match url.host() {
        Some(Host::Domain(domain)) => domain == "localhost",
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(invalid(format!(
            "`{name}` must be an https URL (plain http only to a loopback address), not `{raw}`"
        ))),
    }
}

fn invalid(message: impl Into<String>) -> ConnectorError {
    ConnectorError::new(ErrorKind::InvalidCredentials, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn public_cloud_by_default() {
        let s =
            Settings::from_keys(&keys(json!({"authMode": "app", "tenantId": "contoso"}))).unwrap();
        assert_eq!(
            s.token_url(),
            "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
        );
        assert_eq!(s.scopes(), ["https://graph.microsoft.com/.default"]);
        assert_eq!(s.api_base().as_str(), "https://graph.microsoft.com/v1.0");
    }

    #[test]
    fn national_cloud_endpoints() {
        let s = Settings::from_keys(&keys(json!({
            "authMode": "delegated", "tenantId": "contoso",
            "authorityUrl": "https://login.microsoftonline.us/",
            "graphUrl": "https://graph.microsoft.us",
        })))
        .unwrap();
        assert_eq!(
            s.token_url(),
            "https://login.microsoftonline.us/contoso/oauth2/v2.0/token"
        );
        assert_eq!(
            s.scopes(),
            ["https://graph.microsoft.us/.default", "offline_access"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v: Value| Settings::from_keys(&keys(v)).unwrap_err().to_string();
        assert!(err(json!({"tenantId": "t"})).contains("`authMode` is required"));
        assert!(err(json!({"authMode": "user", "tenantId": "t"})).contains("`app` or `delegated`"));
        assert!(err(json!({"authMode": "app"})).contains("`tenantId` is required"));
        assert!(
            err(json!({"authMode": "app", "tenantId": "t", "graphUrl": "http://graph.example"}))
                .contains("https")
        );
        assert!(
            err(json!({"authMode": "app", "tenantId": "t", "graphUrl": "https://g.example/v1.0"}))
                .contains("without a path")
        );
        let ok = json!({"authMode": "app", "tenantId": "t", "graphUrl": "http://127.0.0.1:8080"});
        assert!(Settings::from_keys(&keys(ok)).is_ok());
    }

    #[test]
    fn the_client_comes_from_one_place() {
        let env = AppClient {
            id: "env-id".into(),
            secret: "env-secret".into(),
        };
        let own = AppClient::resolve(
            &keys(json!({"clientId": "a", "clientSecret": "s"})),
            Some(&env),
        )
        .unwrap();
        assert_eq!((own.id.as_str(), own.secret.expose()), ("a", "s"));
        let fallback = AppClient::resolve(&keys(json!({"clientId": ""})), Some(&env)).unwrap();
        assert_eq!(fallback.id, "env-id");
        let mixed = AppClient::resolve(&keys(json!({"clientId": "a"})), Some(&env)).unwrap_err();
        assert!(mixed.to_string().contains("`clientSecret` is required"));
        let none = AppClient::resolve(&keys(json!({})), None).unwrap_err();
        assert!(none.to_string().contains(CLIENT_ID_ENV));
    }
}
