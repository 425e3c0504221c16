//! The HTTP API: what the official runtimes call, plus what operators need.
//!
//! | route                                 | auth  | what                                             |
//! |---------------------------------------|-------|--------------------------------------------------|
//! | `GET /v1/tasks/{flow}/steps/{step}`   | Basic | the step, config merged with the latest keys     |
//! | `PUT /v1/accounts/{id}`               | Basic | `{"keys": …}` applied with fencing               |
//! | `POST /v1/accounts`                   | Basic | `{"id", "keys"}`: create an account              |
//! | `POST /v1/accounts/{id}/reauthorize`  | Basic | `{"keys"}` after the user authorized again       |
//! | `PUT /v1/tasks/{flow}/steps/{step}`   | Basic | create or replace a step                         |
//! | `GET /status`, `/status.json`         | none  | the status page (no secrets)                     |
//! | `GET /metrics`, `/healthz`            | none  | Prometheus counters, liveness                    |
//!
//! Lineage of `PUT /v1/accounts/{id}` comes from the `x-deckhand-*` headers a Deckhand worker
//! sends; the official Node runtime sends none, so its updates are applied last-write-wins
//! unless they are duplicates or replays of keys the account already held.
//!
//! Bodies are capped ([`ApiOptions::max_body`]); every bad request gets a 4xx with a JSON
//! `{"error": …}` naming what is wrong, never echoing a value from the body.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use deckhand_runtime::worker::{LINEAGE_HTTP_GENERATION, LINEAGE_HTTP_PARENT, LINEAGE_HTTP_WORKER};
use serde_json::{Value, json};

use crate::{KeysUpdateIn, Outcome, Platform, PlatformError, StepDefinition, status};

/// Settings of the API.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// The largest request body accepted, in bytes. Default 256 KiB.
    pub max_body: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_body: 256 * 1024,
        }
    }
}

/// The router of the API.
pub fn router(platform: Platform, options: ApiOptions) -> Router {
    Router::new()
        .route("/v1/tasks/{flow}/steps/{step}", get(get_step).put(put_step))
        .route("/v1/accounts", axum::routing::post(create_account))
        .route("/v1/accounts/{id}", axum::routing::put(put_account))
        .route(
            "/v1/accounts/{id}/reauthorize",
            axum::routing::post(reauthorize_account),
        )
        .route("/status", get(status_html))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(DefaultBodyLimit::max(options.max_body))
        .with_state(Arc::new(platform))
}

/// Serves the API on `listener` until `shutdown` completes (requests in flight finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    platform: Platform,
    options: ApiOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(platform, options))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error response: status and a message that names what is wrong (no secrets).
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        let status = match &e {
            PlatformError::UnknownAccount(_) | PlatformError::UnknownStep { .. } => {
                StatusCode::NOT_FOUND
            }
            PlatformError::Exists(_) => StatusCode::CONFLICT,
            PlatformError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PlatformError::Store(deckhand_core::auth::store::StoreError::InvalidAccountId) => {
                StatusCode::BAD_REQUEST
            }
            PlatformError::Database(_) | PlatformError::Store(_) => {
                tracing::error!(error = %e, "request failed");
                return Self(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; retry later".into(),
                );
            }
        };
        Self(status, e.to_string())
    }
}

type Shared = State<Arc<Platform>>;

/// The API user of a request, or 401.
async fn authenticate(platform: &Platform, headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |why: &str| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            format!("{why}; use HTTP Basic with the API username and key"),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("no credentials"))?
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(|| unauthorized("not HTTP Basic"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    let (user, key) = decoded
        .split_once(':')
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    if platform.authenticate(user, key).await? {
        Ok(user.to_owned())
    } else {
        tracing::warn!(username = user, "rejected API credentials");
        Err(unauthorized("wrong username or key"))
    }
}

/// Parses a JSON body; the error names the position and kind, never the text (it may hold
/// keys).
fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    if !json_type {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Data => "does not have the expected fields or types",
            serde_json::error::Category::Syntax => "is not valid JSON",
            serde_json::error::Category::Eof => "ends too early",
            serde_json::error::Category::Io => "could not be read",
        };
        // Unknown/missing field names come from our schema, not from the values.
        let field = e
            .to_string()
            .split('`')
            .nth(1)
            .filter(|_| {
                let text = e.to_string();
                text.starts_with("unknown field") || text.starts_with("missing field")
            })
            .map(|f| format!(" (field `{f}`)"))
            .unwrap_or_default();
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the body {kind}{field} at line {} column {}",
                e.line(),
                e.column()
            ),
        )
    })
}

async fn get_step(
    State(platform): Shared,
    Path((flow, step)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ApiError> {
    authenticate(&platform, &headers).await?;
    Ok(axum::Json(platform.step_for_worker(&flow, &step).await?))
}

async fn put_step(
    State(platform): Shared,
    Path((flow, step)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&platform, &headers).await?;
    let def: StepDefinition = parse_body(&headers, &body)?;
    let created = platform.put_step(&flow, &step, def).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({ "flow": flow, "step": step }))).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: String,
    keys: Value,
}

async fn create_account(
    State(platform): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&platform, &headers).await?;
    let new: NewAccount = parse_body(&headers, &body)?;
    let generation = platform.create_account(&new.id, new.keys).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": new.id, "generation": generation })),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct AccountUpdate {
    keys: Value,
}

async fn reauthorize_account(
    State(platform): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    authenticate(&platform, &headers).await?;
    let update: AccountUpdate = parse_body(&headers, &body)?;
    let generation = platform.reauthorize(&id, update.keys).await?;
    Ok(axum::Json(json!({ "id": id, "generation": generation })))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
}

async fn put_account(
    State(platform): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(&platform, &headers).await?;
    let update: AccountUpdate = parse_body(&headers, &body)?;
    if !update.keys.is_object() {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`keys` must be a JSON object".into(),
        ));
    }
    let parent = header_text(&headers, LINEAGE_HTTP_PARENT);
    if parent
        .as_deref()
        .is_some_and(|p| p.len() != 32 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{LINEAGE_HTTP_PARENT}: expected 32 hex digits"),
        ));
    }
    let update = KeysUpdateIn {
        keys: update.keys,
        parent_fingerprint: parent,
        worker: header_text(&headers, LINEAGE_HTTP_WORKER).unwrap_or_else(|| format!("api:{user}")),
        worker_generation: header_text(&headers, LINEAGE_HTTP_GENERATION)
            .and_then(|g| g.parse().ok()),
    };
    let outcome = platform.apply_update(&id, &update).await?;
    let body = json!({
        "id": id,
        "outcome": outcome.name(),
        "generation": outcome.generation(),
    });
    Ok(match outcome {
        // The caller's keys conflict with what is kept: say so.
        Outcome::Fork { .. } => (StatusCode::CONFLICT, axum::Json(json!({
            "error": format!("account `{id}`: these keys descend from a refresh token that already has a different successor; the first one is kept and the account is marked"),
            "outcome": "fork",
            "generation": outcome.generation(),
        })))
            .into_response(),
        _ => (StatusCode::OK, axum::Json(body)).into_response(),
    })
}

async fn status_html(State(platform): Shared) -> Result<Html<String>, ApiError> {
    Ok(Html(status::render_html(&platform.status().await?)))
}

async fn status_json(State(platform): Shared) -> Result<axum::Json<status::Status>, ApiError> {
    Ok(axum::Json(platform.status().await?))
}

async fn metrics(State(platform): Shared) -> Result<Response, ApiError> {
    let text = status::render_metrics(&platform.status().await?);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
