//! Response builders for the error shapes of each emulated provider.

use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::time::{graph_datetime, now_utc};

/// `{"error": ..., "error_description": ...}` with `Cache-Control: no-store` (RFC 6749 §5.2).
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Salesforce REST error: `[{"message": ..., "errorCode": ...}]`.
pub(crate) fn salesforce_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!([{ "message": message, "errorCode": code }])),
    )
        .into_response()
}

/// Microsoft Graph error: `{"error": {"code": ..., "message": ..., "innerError": {...}}}`.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": { "date": graph_datetime(now_utc()) },
            }
        })),
    )
        .into_response()
}

/// A JSON body with the given status.
pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Adds `Retry-After: <secs>` when `secs` is given.
pub(crate) fn with_retry_after(mut response: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Parses a query string (`a=1&b=2`, percent/`+` decoded). Later duplicates win.
pub(crate) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|raw| {
        url::form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

/// The value of query parameter `name` (last occurrence).
pub(crate) fn query_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Path parameters, like axum's `Path`, but a rejection (e.g. invalid percent-encoding)
/// answers JSON in the shape of the API the path belongs to instead of plain text.
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(rejection) => {
                let message = rejection.body_text();
                let path = parts.uri.path();
                let status = StatusCode::BAD_REQUEST;
                Err(if path.starts_with("/v1.0/") {
                    graph_error(status, "BadRequest", &message)
                } else if path.starts_with("/services/data") || path.starts_with("/id/") {
                    salesforce_error(status, "MALFORMED_URL", &message)
                } else {
                    oauth_error(status, "invalid_request", &message)
                })
            }
        }
    }
}
