//! The token endpoints: `POST /{tenant}/oauth2/v2.0/token` (Microsoft identity platform) and
//! `POST /services/oauth2/token` (Salesforce).

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::config::{AccessTokenFormat, ExpiresInFormat, OAuthClient};
use crate::counters::bump;
use crate::faults::TokenFault;
use crate::jwt;
use crate::respond::{Params, json_response, oauth_error, with_retry_after};
use crate::salesforce::{ORG_ID, identity_url};
use crate::state::{AppState, Shared, lock};
use crate::tokens::{Api, Family, random_string};

/// Which token endpoint is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Microsoft,
    Salesforce,
}

/// An OAuth2 error answer (RFC 6749 §5.2).
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Add `WWW-Authenticate: Basic` (client tried HTTP Basic and failed).
    basic_challenge: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn into_response(self, shared: &Shared) -> Response {
        match self.error {
            "invalid_grant" => bump(&shared.counters.invalid_grant),
            "invalid_client" => bump(&shared.counters.invalid_client),
            _ => {}
        }
        let mut response = oauth_error(self.status, self.error, &self.description);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"deckhand-emulator\""),
            );
        }
        response
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn microsoft_token(
    State(shared): State<AppState>,
    Params(tenant): Params<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token_request(&shared, Provider::Microsoft, &tenant, &headers, &body).await
}

/// `POST /services/oauth2/token`.
pub(crate) async fn salesforce_token(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    token_request(&shared, Provider::Salesforce, ORG_ID, &headers, &body).await
}

async fn token_request(
    shared: &Shared,
    provider: Provider,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let counters = &shared.counters;
    bump(&counters.token_requests);
    let form = parse_form(headers, body);
    match form
        .as_ref()
        .ok()
        .and_then(|f| f.get("grant_type"))
        .map(String::as_str)
    {
        Some("client_credentials") => bump(&counters.client_credentials_requests),
        Some("refresh_token") => bump(&counters.refresh_token_requests),
        _ => bump(&counters.other_grant_requests),
    }

    let (fault, latency) = {
        let mut faults = lock(&shared.faults);
        (faults.token.pop_front(), faults.token_latency)
    };
    let mut stall = None;
    let mut drop_response = false;
    match fault {
        Some(TokenFault::Latency(delay)) => {
            bump(&counters.faults_served);
            tokio::time::sleep(delay).await;
        }
        Some(TokenFault::Stall(delay)) => {
            bump(&counters.faults_served);
            stall = Some(delay);
        }
        Some(TokenFault::DropResponseAfterRotation) => {
            bump(&counters.faults_served);
            drop_response = true;
        }
        Some(fault) => {
            bump(&counters.faults_served);
            return fault_response(shared, fault);
        }
        None => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = answer_token_request(shared, provider, tenant, headers, form);
    if drop_response {
        // Whatever the grant's outcome, the client never sees it.
        return reset_connection();
    }
    if let Some(delay) = stall {
        tokio::time::sleep(delay).await;
    }
    response
}

fn answer_token_request(
    shared: &Shared,
    provider: Provider,
    tenant: &str,
    headers: &HeaderMap,
    form: Result<HashMap<String, String>, OAuthError>,
) -> Response {
    let result = form.and_then(|form| {
        let client = authenticate_client(shared, headers, &form)?;
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                client_credentials(shared, provider, tenant, client, &form)
            }
            Some("refresh_token") => refresh_token(shared, provider, tenant, client, &form),
            Some(other) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("The emulator does not support grant_type '{other}'."),
            )),
            None => Err(OAuthError::invalid_request(
                "The request body must contain the parameter 'grant_type'.",
            )),
        }
    });
    match result {
        Ok(body) => {
            let mut response = json_response(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(shared),
    }
}

fn fault_response(shared: &Shared, fault: TokenFault) -> Response {
    let (status, error, retry_after) = match fault {
        TokenFault::InvalidGrant => {
            return OAuthError::invalid_grant("Injected fault: the grant is invalid.")
                .into_response(shared);
        }
        TokenFault::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            retry_after_secs,
        ),
        TokenFault::ServiceUnavailable { retry_after_secs } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            retry_after_secs,
        ),
        TokenFault::InternalServerError | TokenFault::Latency(_) | TokenFault::Stall(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
        }
        TokenFault::DropResponseAfterRotation => return reset_connection(),
    };
    with_retry_after(oauth_error(status, error, "Injected fault."), retry_after)
}

/// A response whose body fails before its first byte: the server aborts the connection, so
/// the client gets no usable answer (as when a proxy or the network drops it).
fn reset_connection() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected fault: response dropped",
        ))
    });
    let mut response = Response::new(axum::body::Body::from_stream(failing));
    *response.status_mut() = StatusCode::OK;
    response
}

/// Parses an `application/x-www-form-urlencoded` body. Duplicate parameters are rejected
/// (RFC 6749 §3.2).
fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(OAuthError::invalid_request(
            "The token request must be sent as application/x-www-form-urlencoded.",
        ));
    }
    let mut form = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if form.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "The parameter '{key}' is included more than once."
            )));
        }
    }
    Ok(form)
}

/// Client authentication: HTTP Basic (`client_id:client_secret`, form-encoded as RFC 6749
/// §2.3.1 says) or `client_id` + `client_secret` in the body.
fn authenticate_client<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<&'a OAuthClient, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => parse_basic(value).map_err(|description| OAuthError {
            basic_challenge: true,
            ..OAuthError::invalid_client(description)
        })?,
        None => None,
    };
    let (id, secret, via_basic) = match basic {
        Some((id, secret)) => {
            if form.get("client_id").is_some_and(|body_id| *body_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body does not match the Basic authorization header.",
                ));
            }
            (id, secret, true)
        }
        None => {
            let id = form.get("client_id").ok_or_else(|| {
                OAuthError::invalid_request(
                    "The request body must contain the parameter 'client_id' \
                     (or use HTTP Basic authentication).",
                )
            })?;
            let secret = form.get("client_secret").ok_or_else(|| {
                OAuthError::invalid_client("The request body must contain 'client_secret'.")
            })?;
            (id.clone(), secret.clone(), false)
        }
    };
    shared
        .config
        .clients
        .iter()
        .find(|client| client.id == id && client.secret == secret)
        .ok_or_else(|| OAuthError {
            basic_challenge: via_basic,
            ..OAuthError::invalid_client("Invalid client id or client secret.")
        })
}

/// Parses `Authorization: Basic ...`. `Ok(None)` for other schemes.
fn parse_basic(value: &HeaderValue) -> Result<Option<(String, String)>, &'static str> {
    let Ok(value) = value.to_str() else {
        return Err("The Authorization header is not valid ASCII.");
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "The Basic authorization header is not valid base64.")?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| "The Basic authorization header is not valid UTF-8.")?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or("The Basic authorization header must be 'client_id:client_secret'.")?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

/// Decodes `application/x-www-form-urlencoded` text (`%XX` and `+`); invalid escapes are
/// kept literally.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match escaped {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client_credentials(
    shared: &Shared,
    provider: Provider,
    tenant: &str,
    client: &OAuthClient,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let scope = form.get("scope").cloned().unwrap_or_default();
    if provider == Provider::Microsoft {
        if scope.trim().is_empty() {
            return Err(OAuthError::invalid_request(
                "The request body must contain the parameter 'scope' \
                 (e.g. https://graph.microsoft.com/.default).",
            ));
        }
        if !scope.split_whitespace().all(|s| s.ends_with("/.default")) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "Client credential flows must have a scope value with /.default suffixed \
                 to the resource identifier.",
            ));
        }
    }
    let family_id = lock(&shared.tokens).new_family(Family {
        client_id: client.id.clone(),
        subject: client.id.clone(),
        scope: scope.clone(),
        delegated: false,
        revoked: false,
    });
    let grant = Grant {
        tenant,
        family_id: &family_id,
        client_id: &client.id,
        subject: &client.id,
        scope: &scope,
        delegated: false,
        refresh_token: None,
    };
    Ok(issue(shared, provider, &grant))
}

fn refresh_token(
    shared: &Shared,
    provider: Provider,
    tenant: &str,
    client: &OAuthClient,
    form: &HashMap<String, String>,
) -> Result<Value, OAuthError> {
    let token = form
        .get("refresh_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            OAuthError::invalid_request(
                "The request body must contain the parameter 'refresh_token'.",
            )
        })?;
    let rotation = match provider {
        Provider::Microsoft => shared.config.graph_refresh_rotation,
        Provider::Salesforce => shared.config.salesforce_refresh_rotation,
    };
    let redeemed = lock(&shared.tokens).redeem_refresh(token, &client.id, rotation);
    let redeemed = redeemed.map_err(|failed| {
        if failed.revoked_family {
            bump(&shared.counters.family_revocations);
        }
        OAuthError::invalid_grant(failed.description)
    })?;
    let scope = form
        .get("scope")
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(&redeemed.family.scope);
    let grant = Grant {
        tenant,
        family_id: &redeemed.family_id,
        client_id: &client.id,
        subject: &redeemed.family.subject,
        scope,
        delegated: redeemed.family.delegated,
        refresh_token: redeemed.refresh_token.as_deref(),
    };
    let body = issue(shared, provider, &grant);
    bump(&shared.counters.successful_refreshes);
    Ok(body)
}

/// What an access token is being issued for.
struct Grant<'a> {
    tenant: &'a str,
    family_id: &'a str,
    client_id: &'a str,
    subject: &'a str,
    scope: &'a str,
    delegated: bool,
    /// Refresh token to include in the response.
    refresh_token: Option<&'a str>,
}

/// Mints and registers an access token and builds the provider's token response.
fn issue(shared: &Shared, provider: Provider, grant: &Grant<'_>) -> Value {
    let lifetime = shared.config.token_lifetime;
    let issued_at = SystemTime::now();
    let expires_at = Instant::now() + lifetime;
    let iat = crate::time::unix_secs(issued_at);
    let exp = crate::time::unix_secs(issued_at + lifetime);
    let base = &shared.base_url;

    let (api, issuer, audience) = match provider {
        Provider::Microsoft => (
            Api::Graph,
            format!("{base}/{}/v2.0", grant.tenant),
            audience_of(grant.scope),
        ),
        Provider::Salesforce => (Api::Salesforce, base.clone(), base.clone()),
    };
    let jti = random_string(22);
    let mut claims = json!({
        "iss": issuer,
        "sub": grant.subject,
        "aud": audience,
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "jti": jti,
        "tid": grant.tenant,
        "fid": grant.family_id,
        "azp": grant.client_id,
        "appid": grant.client_id,
    });
    if grant.delegated {
        claims["scp"] = json!(grant.scope);
    }
    let access_token = match (provider, shared.config.salesforce_access_token_format) {
        (Provider::Salesforce, AccessTokenFormat::Opaque) => {
            format!("{ORG_ID}!AQ{}", random_string(96))
        }
        _ => jwt::sign(&claims, &shared.jwt_key),
    };
    lock(&shared.tokens).register_access(access_token.clone(), grant.family_id, api, expires_at);
    bump(&shared.counters.access_tokens_issued);

    let mut body = Map::new();
    match provider {
        Provider::Microsoft => {
            body.insert("token_type".into(), json!("Bearer"));
            let secs = lifetime.as_secs();
            match shared.config.expires_in_format {
                ExpiresInFormat::Number => {
                    body.insert("expires_in".into(), json!(secs));
                    body.insert("ext_expires_in".into(), json!(secs));
                }
                ExpiresInFormat::String => {
                    body.insert("expires_in".into(), json!(secs.to_string()));
                    body.insert("ext_expires_in".into(), json!(secs.to_string()));
                }
                ExpiresInFormat::Omitted => {}
            }
            body.insert("scope".into(), json!(grant.scope));
            body.insert("access_token".into(), json!(access_token));
            if let Some(refresh_token) = grant.refresh_token {
                body.insert("refresh_token".into(), json!(refresh_token));
            }
        }
        Provider::Salesforce => {
            let id = identity_url(base);
            let issued_at = crate::time::unix_millis(issued_at).to_string();
            let signature = STANDARD.encode(jwt::hmac_sha256(
                client_secret(shared, grant.client_id).as_bytes(),
                format!("{id}{issued_at}").as_bytes(),
            ));
            body.insert("access_token".into(), json!(access_token));
            if let Some(refresh_token) = grant.refresh_token {
                body.insert("refresh_token".into(), json!(refresh_token));
            }
            body.insert("signature".into(), json!(signature));
            body.insert("scope".into(), json!("api refresh_token"));
            body.insert("instance_url".into(), json!(base));
            body.insert("id".into(), json!(id));
            body.insert("token_type".into(), json!("Bearer"));
            body.insert("issued_at".into(), json!(issued_at));
        }
    }
    Value::Object(body)
}

fn client_secret<'a>(shared: &'a Shared, client_id: &str) -> &'a str {
    shared
        .config
        .clients
        .iter()
        .find(|c| c.id == client_id)
        .map_or("", |c| c.secret.as_str())
}

/// `aud` for a Microsoft token: the resource of the first `https://resource/scope` item,
/// Graph otherwise.
fn audience_of(scope: &str) -> String {
    scope
        .split_whitespace()
        .filter(|item| item.contains("://"))
        .find_map(|item| {
            item.rsplit_once('/')
                .map(|(resource, _)| resource.to_owned())
        })
        .unwrap_or_else(|| "https://graph.microsoft.com".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%zz%4"), "a b:c%zz%4");
    }

    #[test]
    fn audience_from_scope() {
        assert_eq!(
            audience_of("https://graph.microsoft.com/.default"),
            "https://graph.microsoft.com"
        );
        assert_eq!(audience_of("api://deckhand/.default"), "api://deckhand");
        assert_eq!(audience_of("User.Read"), "https://graph.microsoft.com");
    }
}
