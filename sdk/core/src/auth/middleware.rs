use std::sync::Arc;

use async_trait::async_trait;
use http::Extensions;
use http::header::AUTHORIZATION;
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use url::Url;

use super::{AuthError, TokenManager};

/// A `reqwest-middleware` middleware that authenticates requests with a [`TokenManager`].
///
/// For a request to an allowed origin it adds `Authorization: Bearer …` (refreshing first when
/// the strategy says so); when the strategy has [`OnRejection`](super::OnRejection) and the API
/// answers 401 (or 403), it refreshes through the manager's single-flight gate and sends the
/// request **once** more. A second rejection is returned as [`AuthError::RejectedAfterRefresh`]
/// (as `reqwest_middleware::Error::Middleware`; downcast to read it).
///
/// The token is never attached to requests for other origins, nor to the token endpoint.
/// Put it after retry middlewares in the chain so that every retry gets a fresh token.
///
/// ```no_run
/// # use deckhand_core::auth::{BearerAuth, TokenManager};
/// # fn build(manager: TokenManager) -> Result<(), deckhand_core::auth::AuthError> {
/// let client = reqwest_middleware::ClientBuilder::new(deckhand_core::auth::api_http_client()?)
///     .with(BearerAuth::new(manager).allow_origin("https://graph.microsoft.com")?)
///     .build();
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BearerAuth {
    manager: TokenManager,
    origins: Arc<Vec<OriginKey>>,
    origin_field: Option<String>,
    token_endpoint: OriginKey,
    token_path: String,
}

/// An origin compared without allocating (this runs on every request).
#[derive(Clone, Debug, PartialEq, Eq)]
struct OriginKey {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl OriginKey {
    fn of(url: &Url) -> Self {
        Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default(),
        }
    }

    fn matches(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == self.port
    }
}

impl BearerAuth {
    /// A middleware for `manager` that, until origins are allowed, authenticates nothing.
    pub fn new(manager: TokenManager) -> Self {
        let token_url = manager.endpoint().token_url();
        let token_endpoint = OriginKey::of(token_url);
        let token_path = normalized_path(token_url.path());
        Self {
            manager,
            origins: Arc::new(Vec::new()),
            origin_field: None,
            token_endpoint,
            token_path,
        }
    }

    /// Authenticates requests to the origin (scheme, host, port) of `url`.
    pub fn allow_origin(mut self, url: &str) -> Result<Self, AuthError> {
        let url =
            Url::parse(url).map_err(|e| AuthError::Config(format!("API URL `{url}`: {e}")))?;
        Arc::make_mut(&mut self.origins).push(OriginKey::of(&url));
        Ok(self)
    }

    /// Also authenticates requests to the origin named by a token field, read for every request
    /// (Salesforce's `instance_url`, which a refresh may change).
    pub fn allow_origin_from_token_field(mut self, field: impl Into<String>) -> Self {
        self.origin_field = Some(field.into());
        self
    }

    /// Whether `path` reads as the token endpoint's path to a lenient server.
    fn is_token_path(&self, path: &str) -> bool {
        // Normalizing never makes an ASCII path longer (escapes, dropped segments and case
        // folding only shrink it), so a shorter path cannot match: most API paths skip the
        // allocation this runs on every request.
        if self.token_path.is_ascii() && path.len() < self.token_path.len() {
            return false;
        }
        normalized_path(path) == self.token_path
    }

    fn applies_to(&self, url: &Url) -> bool {
        if self.token_endpoint.matches(url) && self.is_token_path(url.path()) {
            return false;
        }
        if self.origins.iter().any(|o| o.matches(url)) {
            return true;
        }
        let Some(field) = &self.origin_field else {
            return false;
        };
        self.manager
            .token_extra_str(field)
            .and_then(|s| Url::parse(&s).ok())
            .is_some_and(|origin| OriginKey::of(&origin).matches(url))
    }
}

#[async_trait]
impl Middleware for BearerAuth {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.applies_to(req.url()) {
            tracing::debug!(
                target: "deckhand_core::auth",
                origin = %req.url().origin().ascii_serialization(),
                "request to an origin outside the API's: sent without the access token"
            );
            return next.run(req, extensions).await;
        }
        let auth = self
            .manager
            .authorization()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let on_rejection = self.manager.strategy().on_rejection;
        let replay = on_rejection.and_then(|_| req.try_clone());
        let generation = auth.generation();
        req.headers_mut().insert(AUTHORIZATION, auth.into_header());
        let response = next.clone().run(req, extensions).await?;
        let status = response.status();
        if !on_rejection.is_some_and(|r| r.matches(status)) {
            return Ok(response);
        }
        tracing::debug!(
            target: "deckhand_core::auth",
            status = status.as_u16(),
            generation,
            "API rejected the access token; refreshing"
        );
        let fresh = self
            .manager
            .refresh_after_rejection(generation, status.as_u16())
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let Some(mut replay) = replay else {
            return Err(reqwest_middleware::Error::middleware(
                AuthError::NotReplayable {
                    status: status.as_u16(),
                },
            ));
        };
        replay
            .headers_mut()
            .insert(AUTHORIZATION, fresh.into_header());
        let response = next.run(replay, extensions).await?;
        let status = response.status();
        if on_rejection.is_some_and(|r| r.matches(status)) {
            return Err(reqwest_middleware::Error::middleware(
                AuthError::RejectedAfterRefresh {
                    status: status.as_u16(),
                },
            ));
        }
        Ok(response)
    }
}

/// A path as lenient servers read it, so that no spelling of the token endpoint's path gets
/// the bearer: percent-escapes decoded, case folded, `;` parameters, empty and `.` segments
/// dropped, `..` applied, no trailing slash.
fn normalized_path(path: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let decoded = percent_decode(raw).to_lowercase();
        let segment = decoded.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other.to_owned()),
        }
    }
    format!("/{}", segments.join("/"))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A reqwest client for API calls: follows at most 10 redirects, and only within one origin
/// on the same scheme. A cross-origin redirect is returned to the caller as the 3xx response,
/// so the token cannot follow it anywhere (reqwest alone would keep it across a
/// scheme downgrade on the same host).
///
/// Connecting times out after 30 s and a response that stalls for 5 minutes without a byte is
/// abandoned, so a dead peer cannot hold a message forever; set a per-request
/// `timeout` for tighter bounds.
pub fn api_http_client() -> Result<reqwest::Client, AuthError> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(300))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .last()
                .is_some_and(|prev| prev.origin() == attempt.url().origin());
            if attempt.previous().len() >= 10 || !same_origin {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| AuthError::Config(format!("HTTP client: {e}")))
}

impl TokenManager {
    /// An authenticated client for the API at `api_base` (its origin gets the token; nothing
    /// else does). Compose your own chain with [`BearerAuth`] and [`api_http_client`] instead if
    /// you need other middlewares.
    pub fn http_client(&self, api_base: &str) -> Result<ClientWithMiddleware, AuthError> {
        Ok(ClientBuilder::new(api_http_client()?)
            .with(BearerAuth::new(self.clone()).allow_origin(api_base)?)
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::normalized_path;

    #[test]
    fn token_path_spellings_normalize_alike() {
        let token = normalized_path("/oauth2/token");
        for spelling in [
            "/oauth2/token/",
            "/oauth2//token",
            "/OAUTH2/token",
            "/oauth2/%74oken",
            "/oauth2/%2e/token",
            "/oauth2/x/../token",
            "/oauth2/token;jsessionid=1",
        ] {
            assert_eq!(normalized_path(spelling), token, "{spelling}");
        }
        assert_ne!(normalized_path("/oauth2/tokens"), token);
        assert_ne!(normalized_path("/api/oauth2/token"), token);
    }
}
