use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, TokenUrl,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use url::Url;

use crate::credentials::{Secret, TokenSet};
use crate::retry;

use super::{AuthError, TransientFailure};

/// How the client authenticates to the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (Salesforce, Microsoft).
    #[default]
    RequestBody,
    /// HTTP Basic, as RFC 6749 §2.3.1 prefers (elastic.io's `client_auth: "basic"`).
    Basic,
}

/// The grant used to obtain a new access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `client_credentials`: app-only tokens (Graph with scope
    /// `https://graph.microsoft.com/.default`). No refresh token is involved.
    ClientCredentials,
    /// `refresh_token`: user-delegated tokens; the refresh token may rotate on every use.
    RefreshToken,
}

/// Bounded exponential backoff for transient token endpoint failures (429, 5xx, network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one (±20 % jitter).
    pub initial_backoff: Duration,
    /// Upper bound of any delay, `Retry-After` included.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The policy as run: doubling from `initial_backoff` with ±20 % jitter, capped at
    /// `max_backoff`; a `Retry-After` beyond the cap ends the attempts (the manager then holds
    /// every caller of the credential until it has passed).
    fn policy(&self) -> retry::Policy {
        retry::Policy::new(
            retry::Backoff::exponential(self.initial_backoff)
                .with_cap(self.max_backoff)
                .with_jitter_percent(20),
        )
        .with_max_attempts(self.max_attempts)
        .with_long_retry_after(retry::LongRetryAfter::GiveUp)
    }
}

/// A token endpoint and the client registered with it, speaking OAuth2 through the `oauth2`
/// crate.
///
/// ```
/// use deckhand_core::auth::{ClientAuth, Grant, TokenEndpoint};
///
/// let graph = TokenEndpoint::new("https://login.microsoftonline.com/TENANT/oauth2/v2.0/token", "client-id")?
///     .client_secret("client-secret")
///     .grant(Grant::ClientCredentials)
///     .scope("https://graph.microsoft.com/.default");
/// let salesforce = TokenEndpoint::new("https://login.salesforce.com/services/oauth2/token", "id")?
///     .client_secret("secret")
///     .client_auth(ClientAuth::RequestBody)
///     .grant(Grant::RefreshToken);
/// # let _ = (graph, salesforce);
/// # Ok::<(), deckhand_core::auth::AuthError>(())
/// ```
#[derive(Clone)]
pub struct TokenEndpoint {
    token_url: Url,
    client_id: String,
    client_secret: Option<Secret>,
    client_auth: ClientAuth,
    grant: Grant,
    scopes: Vec<String>,
    extra_params: Vec<(String, String)>,
    retry: RetryPolicy,
    http: reqwest::Client,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_auth", &self.client_auth)
            .field("grant", &self.grant)
            .field("scopes", &self.scopes)
            .field("retry", &self.retry)
            .finish()
    }
}

/// The outcome of one grant request that produced a token.
pub(crate) struct Issued {
    pub token: TokenSet,
    pub attempts: u32,
    /// Set when the response's access token is unusable: `token` then holds only what must
    /// not be lost (the rotated refresh token and the provider's other fields).
    pub unusable: Option<String>,
}

/// A failed grant, with the number of HTTP requests it took.
pub(crate) struct Failed {
    pub error: AuthError,
    pub attempts: u32,
    /// A request of this grant was sent and its answer lost: the provider may have processed
    /// it (and rotated the refresh token).
    pub response_lost: bool,
}

impl TokenEndpoint {
    /// A token endpoint at `token_url` for the client `client_id`, using the `refresh_token`
    /// grant and body client authentication until told otherwise.
    pub fn new(token_url: &str, client_id: impl Into<String>) -> Result<Self, AuthError> {
        let token_url = Url::parse(token_url)
            .map_err(|e| AuthError::Config(format!("token URL `{token_url}`: {e}")))?;
        let http = reqwest::Client::builder()
            // Redirects would re-send the client secret and refresh token somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AuthError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            token_url,
            client_id: client_id.into(),
            client_secret: None,
            client_auth: ClientAuth::default(),
            grant: Grant::RefreshToken,
            scopes: Vec::new(),
            extra_params: Vec::new(),
            retry: RetryPolicy::default(),
            http,
        })
    }

    /// Sets the client secret.
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// Sets how the client authenticates.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Sets the grant.
    pub fn grant(mut self, grant: Grant) -> Self {
        self.grant = grant;
        self
    }

    /// Adds a scope to every token request.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds a form parameter to every token request (e.g. Salesforce's `format=json`).
    pub fn extra_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_params.push((name.into(), value.into()));
        self
    }

    /// Sets the retry policy for transient failures.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Uses `client` for token requests. It should not follow redirects.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = client;
        self
    }

    /// The token URL.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The grant.
    pub fn grant_kind(&self) -> Grant {
        self.grant
    }

    /// The client secret, if any (to scrub it from provider text).
    pub(crate) fn client_secret_value(&self) -> Option<&Secret> {
        self.client_secret.as_ref()
    }

    /// Runs the grant, retrying transient failures. `refresh_token` is required for the
    /// refresh_token grant. `on_attempt` is called before each HTTP request.
    ///
    /// A `Retry-After` longer than the policy's `max_backoff` ends the attempts at once (the
    /// manager then holds every caller of the credential until it has passed). When a
    /// refresh_token request was sent and its answer lost, it is retried exactly once with the
    /// same refresh token (which succeeds with providers that have a reuse grace window); a
    /// second lost answer ends the attempts, so a lost rotation never turns into a loop.
    pub(crate) async fn request(
        &self,
        refresh_token: Option<&Secret>,
        clock: &dyn super::Clock,
        on_attempt: &(dyn Fn() + Send + Sync),
    ) -> Result<Issued, Failed> {
        if self.grant == Grant::RefreshToken && refresh_token.is_none() {
            return Err(Failed {
                error: AuthError::NoRefreshToken,
                attempts: 0,
                response_lost: false,
            });
        }
        let mut attempts = 0;
        let mut schedule = self.retry.policy().attempts();
        let mut lost_answers = 0;
        loop {
            attempts += 1;
            on_attempt();
            let error = match self.request_once(refresh_token).await {
                Ok(body) => {
                    return issued(body, clock.now(), attempts).map_err(|error| Failed {
                        error,
                        attempts,
                        response_lost: lost_answers > 0,
                    });
                }
                Err(Attempt::Permanent(error)) => {
                    return Err(Failed {
                        error,
                        attempts,
                        response_lost: lost_answers > 0,
                    });
                }
                Err(Attempt::Transient(failure)) => failure,
            };
            let give_up = |error, lost_answers: u32| Failed {
                error: AuthError::TokenEndpointUnavailable {
                    attempts,
                    last: error,
                },
                attempts,
                response_lost: lost_answers > 0,
            };
            let retry_after = match &error {
                TransientFailure::Status { retry_after, .. } => *retry_after,
                TransientFailure::Network(_) | TransientFailure::ResponseLost(_) => None,
            };
            if self.grant == Grant::RefreshToken
                && matches!(error, TransientFailure::ResponseLost(_))
            {
                lost_answers += 1;
                if lost_answers > 1 {
                    return Err(give_up(error, lost_answers));
                }
                schedule.failed_without_pause();
                tracing::warn!(
                    target: "deckhand_core::auth",
                    attempt = attempts,
                    failure = %error,
                    "the token endpoint's answer was lost; retrying once with the same refresh token"
                );
                continue;
            }
            let Some(delay) = schedule.next_delay(retry_after) else {
                return Err(give_up(error, lost_answers));
            };
            tracing::debug!(
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                failure = %error,
                "token endpoint failed transiently; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn request_once(
        &self,
        refresh_token: Option<&Secret>,
    ) -> Result<Map<String, Value>, Attempt> {
        let mut client = OAuth2Client::new(ClientId::new(self.client_id.clone()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            .set_auth_type(match self.client_auth {
                ClientAuth::RequestBody => AuthType::RequestBody,
                ClientAuth::Basic => AuthType::BasicAuth,
            });
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        // The oauth2 crate drops the HTTP status of error answers; keep it to classify them.
        let status = Arc::new(AtomicU16::new(0));
        let http = |request: HttpRequest| {
            let status = status.clone();
            let client = self.http.clone();
            async move { send(client, request, &status).await }
        };
        let scopes = self.scopes.iter().map(|s| Scope::new(s.clone()));
        let result = match self.grant {
            Grant::ClientCredentials => {
                let mut req = client.exchange_client_credentials().add_scopes(scopes);
                for (k, v) in &self.extra_params {
                    req = req.add_extra_param(k.clone(), v.clone());
                }
                req.request_async(&http).await
            }
            Grant::RefreshToken => {
                let token = refresh_token.ok_or(Attempt::Permanent(AuthError::NoRefreshToken))?;
                let token = RefreshToken::new(token.expose().to_owned());
                let mut req = client.exchange_refresh_token(&token).add_scopes(scopes);
                for (k, v) in &self.extra_params {
                    req = req.add_extra_param(k.clone(), v.clone());
                }
                req.request_async(&http).await
            }
        };
        let status = status.load(Ordering::Relaxed);
        match result {
            Ok(response) => Ok(response.body),
            Err(RequestTokenError::Request(e)) => Err(e),
            Err(RequestTokenError::ServerResponse(e)) => {
                Err(Attempt::Permanent(AuthError::ReauthRequired {
                    status,
                    code: e.error().as_ref().to_owned(),
                    description: e.error_description().cloned(),
                }))
            }
            // Deliberately not the error's text or the body: both can quote tokens.
            Err(RequestTokenError::Parse(e, _body)) if status == 200 => {
                Err(Attempt::Permanent(AuthError::MalformedTokenResponse {
                    reason: parse_reason(&e),
                }))
            }
            Err(RequestTokenError::Parse(..) | RequestTokenError::Other(_)) if status != 200 => {
                Err(Attempt::Permanent(AuthError::ReauthRequired {
                    status,
                    code: format!("http_{status}"),
                    description: None,
                }))
            }
            Err(RequestTokenError::Parse(..)) => {
                Err(Attempt::Permanent(AuthError::MalformedTokenResponse {
                    reason: "the body is not a token response".into(),
                }))
            }
            Err(RequestTokenError::Other(msg)) => {
                Err(Attempt::Permanent(AuthError::MalformedTokenResponse {
                    reason: msg,
                }))
            }
        }
    }
}

/// A token set from a 200 answer's body; when its access token is unusable, what must be kept
/// of it anyway (see [`Issued::unusable`]).
fn issued(
    body: Map<String, Value>,
    received_at: SystemTime,
    attempts: u32,
) -> Result<Issued, AuthError> {
    match TokenSet::from_response(body.clone(), received_at) {
        Ok(token) => Ok(Issued {
            token,
            attempts,
            unusable: None,
        }),
        Err(malformed) => match TokenSet::salvage_refresh_token(body) {
            Some(token) => Ok(Issued {
                token,
                attempts,
                unusable: Some(malformed.0),
            }),
            None => Err(AuthError::MalformedTokenResponse {
                reason: malformed.0,
            }),
        },
    }
}

/// Sends one token request, classifying the answer: 200 with JSON and the OAuth2 error statuses
/// (400/401/403) go back to the `oauth2` crate; the rest become [`Attempt`] errors.
async fn send(
    http: reqwest::Client,
    request: HttpRequest,
    status_out: &AtomicU16,
) -> Result<HttpResponse, Attempt> {
    let request = reqwest::Request::try_from(request)
        .map_err(|e| Attempt::Permanent(AuthError::Config(format!("token request: {e}"))))?;
    let response = http.execute(request).await.map_err(|e| {
        // Only a failed connection proves the request was not sent; any later failure may
        // have happened after the provider processed it.
        let reason = network_reason(&e);
        Attempt::Transient(if e.is_connect() {
            TransientFailure::Network(reason)
        } else {
            TransientFailure::ResponseLost(reason)
        })
    })?;
    let status = response.status();
    status_out.store(status.as_u16(), Ordering::Relaxed);
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(retry::retry_after);
    let content_type = response.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = response
        .bytes()
        .await
        .map_err(|e| Attempt::Transient(TransientFailure::ResponseLost(network_reason(&e))))?;
    match status.as_u16() {
        200 => {
            if serde_json::from_slice::<Value>(&body).is_err() {
                return Err(Attempt::Permanent(AuthError::MalformedTokenResponse {
                    reason: format!(
                        "HTTP 200 with a body that is not JSON (content-type {})",
                        content_type
                            .as_ref()
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("missing")
                    ),
                }));
            }
        }
        400 | 401 | 403 => {}
        408 | 425 | 429 | 500..=599 => {
            return Err(Attempt::Transient(TransientFailure::Status {
                status: status.as_u16(),
                retry_after,
            }));
        }
        other => {
            return Err(Attempt::Permanent(AuthError::UnexpectedStatus {
                status: other,
            }));
        }
    }
    let mut builder = http::Response::builder().status(status);
    // Providers that send JSON as text/plain are tolerated: the body was checked above.
    builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    builder
        .body(body.to_vec())
        .map_err(|e| Attempt::Permanent(AuthError::Config(format!("token response: {e}"))))
}

fn parse_reason(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    // Our own Deserialize writes messages naming the field, never its value.
    e.inner().to_string()
}

fn network_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // reqwest's Display carries the URL, which is not a secret (tokens travel in the body).
    format!("{kind}: {e}")
}

enum Attempt {
    Transient(TransientFailure),
    Permanent(AuthError),
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(t) => write!(f, "Transient({t})"),
            Self::Permanent(p) => write!(f, "Permanent({p})"),
        }
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Attempt {}

type OAuth2Client = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

/// A token response as providers really send it: every field kept, `expires_in` as a number or
/// a numeric string (the `oauth2` crate's standard response rejects the string form that Azure
/// AD v1 and others send).
struct ProviderTokenResponse {
    access_token: AccessToken,
    token_type: BasicTokenType,
    body: Map<String, Value>,
}

impl fmt::Debug for ProviderTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTokenResponse")
            .field("fields", &self.body.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<'de> Deserialize<'de> for ProviderTokenResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let body = Map::<String, Value>::deserialize(deserializer)
            .map_err(|_| D::Error::custom("the body is not a JSON object"))?;
        // Validation (missing, blank, wrong type) happens in TokenSet::from_response, which
        // still keeps a rotated refresh token from a response it refuses; here only what the
        // oauth2 crate's trait needs.
        let access_token = AccessToken::new(
            body.get("access_token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        );
        let token_type = match body.get("token_type").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("mac") => BasicTokenType::Mac,
            Some(t) if !t.eq_ignore_ascii_case("bearer") => BasicTokenType::Extension(t.to_owned()),
            _ => BasicTokenType::Bearer,
        };
        Ok(Self {
            access_token,
            token_type,
            body,
        })
    }
}

impl Serialize for ProviderTokenResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(serializer)
    }
}

impl oauth2::TokenResponse for ProviderTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        let v = self.body.get("expires_in")?;
        let secs = v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())?;
        Some(Duration::from_secs(secs))
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        None
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}
