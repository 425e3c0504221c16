//! A thin Microsoft Graph client over the step's authenticated HTTP client: Graph errors mapped
//! to connector errors, and `@odata.nextLink` paging.
//!
//! Authentication and throttling are not done here: `Context::http()` already adds the access
//! token (only for the Graph origin), refreshes it before it expires or once after a 401, and
//! retries requests Graph throttles.

use std::fmt;
use std::time::Duration;

use deckhand::connector::{ConnectorError, ErrorKind};
use deckhand::retry::retry_after;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response, StatusCode};
use reqwest_middleware::ClientWithMiddleware;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// The longest a Graph request may take. The SDK's API client sets no timeout, and a stalled
/// connection would otherwise hold the message forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Microsoft Graph for one function call.
pub(crate) struct Graph {
    http: ClientWithMiddleware,
    base: Url,
}

impl Graph {
    /// Graph at `base` (`{graphUrl}/v1.0`) through `http`.
    pub(crate) fn new(http: ClientWithMiddleware, base: Url) -> Self {
        Self { http, base }
    }

    /// The URL of a resource, each segment percent-encoded: `url(&["users", "a#EXT#@b"])`.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // The base is an http(s) URL, which always has path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET url` → the JSON body.
    pub(crate) async fn get(&self, url: Url) -> Result<Value, ConnectorError> {
        let response = self.get_response(&url).await?;
        Ok(success(response, &Method::GET, &url).await?.json().await?)
    }

    /// `GET url` → the JSON body, or `None` when Graph answers 404.
    pub(crate) async fn find(&self, url: Url) -> Result<Option<Value>, ConnectorError> {
        let response = self.get_response(&url).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = success(response, &Method::GET, &url).await?;
        Ok(Some(response.json().await?))
    }

    /// `GET url` → the response, whatever its status.
    pub(crate) async fn get_response(&self, url: &Url) -> Result<Response, ConnectorError> {
        self.send(Method::GET, url, None).await
    }

    /// `POST url` with a JSON body, expecting a success without content (e.g. 202).
    pub(crate) async fn post(&self, url: Url, body: &Value) -> Result<(), ConnectorError> {
        let response = self.send(Method::POST, &url, Some(body)).await?;
        success(response, &Method::POST, &url).await?;
        Ok(())
    }

    /// The pages of a collection, starting at `url` and following `@odata.nextLink`.
    pub(crate) fn pages(&self, url: Url) -> Pages<'_> {
        Pages {
            graph: self,
            next: Some(url.into()),
        }
    }

    /// Sends a request. `http` retries it while Graph answers 429 or 503 (see
    /// `MsGraph::throttle_retry`) and returns the last response, whatever its status.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Response, ConnectorError> {
        let mut request = self
            .http
            .request(method, url.clone())
            .timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(request.send().await?)
    }
}

/// The pages of a Graph collection; see [`Graph::pages`].
pub(crate) struct Pages<'a> {
    graph: &'a Graph,
    /// The URL of the next page: the first one, then each page's `@odata.nextLink`.
    next: Option<String>,
}

impl Pages<'_> {
    /// The items of the next page, or `None` after the last one.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<Value>>, ConnectorError> {
        let Some(link) = self.next.take() else {
            return Ok(None);
        };
        let mut page = self.graph.get(self.same_origin(&link)?).await?;
        self.next = page
            .get("@odata.nextLink")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match page.get_mut("value").map(Value::take) {
            Some(Value::Array(items)) => Ok(Some(items)),
            _ => Err(ConnectorError::new(
                ErrorKind::InvalidResponse,
                "Microsoft Graph answered a collection request without a `value` array",
            )),
        }
    }

    /// A next link, which must stay on the Graph origin (the only one that gets the token).
    fn same_origin(&self, link: &str) -> Result<Url, ConnectorError> {
        let url = Url::parse(link).map_err(|e| {
            ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!("invalid @odata.nextLink: {e}"),
            )
        })?;
        if url.origin() != self.graph.base.origin() {
            return Err(ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!(
                    "@odata.nextLink points to {}, outside Microsoft Graph; not following it",
                    url.origin().ascii_serialization()
                ),
            ));
        }
        Ok(url)
    }
}

/// `response` if its status is a success, else its Graph error as a [`ConnectorError`].
pub(crate) async fn success(
    response: Response,
    method: &Method,
    url: &Url,
) -> Result<Response, ConnectorError> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(error_of(response, method, url).await)
    }
}

/// The body of a Graph error: `{"error": {"code", "message", "innerError": {"request-id"}}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError")]
    inner_error: Option<Value>,
}

/// A Graph error answer as a [`ConnectorError`] named after Graph's error code (e.g.
/// `ErrorAccessDenied`, `TooManyRequests`), with the HTTP status and request id as its cause.
pub(crate) async fn error_of(response: Response, method: &Method, url: &Url) -> ConnectorError {
    let status = response.status();
    let wait = response.headers().get(RETRY_AFTER).and_then(retry_after);
    let header_request_id = response
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.unwrap_or_default();
    let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
    let request_id = parsed
        .as_ref()
        .and_then(|b| b.error.inner_error.as_ref())
        .and_then(|inner| inner.get("request-id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(header_request_id);
    let cause = HttpFailure {
        status,
        method: method.clone(),
        path: url.path().to_owned(),
        request_id,
    };
    let error = match parsed {
        Some(ErrorBody { error }) => {
            ConnectorError::new(ErrorKind::Provider(error.code), error.message)
        }
        None => ConnectorError::new(
            ErrorKind::HttpError,
            format!("Microsoft Graph answered HTTP {status}"),
        ),
    };
    let error = error.with_status(status).with_source(cause);
    match wait {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// The cause of a Graph error, for the error's stack: status, request and Graph's request id
/// (what Microsoft support asks for). Never the query string, which may quote user data.
#[derive(Debug)]
struct HttpFailure {
    status: StatusCode,
    method: Method,
    path: String,
    request_id: Option<String>,
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {} to {} {}", self.status, self.method, self.path)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpFailure {}
