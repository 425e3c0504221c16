//! Middleware in front of every resource endpoint: counts the request, serves injected
//! faults, and validates the Bearer token.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::counters::bump;
use crate::faults::ResourceFault;
use crate::jwt;
use crate::respond::{graph_error, salesforce_error, with_retry_after};
use crate::state::{AppState, Shared, lock};
use crate::tokens::{AccessDenied, Api};

/// The authenticated caller, inserted into request extensions for the handlers.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Graph user id for delegated tokens, the client id for app-only tokens.
    pub(crate) subject: String,
    /// Whether the token was issued for a user (refresh-token grant) rather than an app.
    pub(crate) delegated: bool,
}

/// Guard for `/services/...` (Salesforce error shapes).
pub(crate) async fn salesforce_guard(
    State(shared): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    guard(&shared, Api::Salesforce, request, next).await
}

/// Guard for `/v1.0/...` (Graph error shapes).
pub(crate) async fn graph_guard(
    State(shared): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    guard(&shared, Api::Graph, request, next).await
}

async fn guard(shared: &Shared, api: Api, mut request: Request, next: Next) -> Response {
    bump(&shared.counters.resource_requests);

    let fault = lock(&shared.faults).resource.pop_front();
    if let Some(fault) = fault {
        bump(&shared.counters.faults_served);
        if fault == ResourceFault::Unauthorized {
            bump(&shared.counters.unauthorized);
        }
        return fault_response(api, fault);
    }

    match authenticate(shared, request.headers(), api) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied) => {
            bump(&shared.counters.unauthorized);
            unauthorized(api, denied.description())
        }
    }
}

/// Validates `Authorization: Bearer <token>` for `api`.
fn authenticate(shared: &Shared, headers: &HeaderMap, api: Api) -> Result<Caller, AccessDenied> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AccessDenied::Unknown)?;
    // JWTs must carry a valid signature; opaque (Salesforce-style) tokens are looked up as is.
    if token.matches('.').count() == 2 && jwt::verify(token, &shared.jwt_key).is_none() {
        return Err(AccessDenied::Unknown);
    }
    let tokens = lock(&shared.tokens);
    let (_, family) = tokens.check_access(token, api)?;
    Ok(Caller {
        subject: family.subject.clone(),
        delegated: family.delegated,
    })
}

/// The provider's 401 answer.
pub(crate) fn unauthorized(api: Api, message: &str) -> Response {
    match api {
        Api::Salesforce => salesforce_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        ),
        Api::Graph => {
            let mut response = graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"\", error=\"invalid_token\""),
            );
            response
        }
    }
}

fn fault_response(api: Api, fault: ResourceFault) -> Response {
    const INJECTED: &str = "Injected fault.";
    let (status, retry_after) = match fault {
        ResourceFault::Unauthorized => return unauthorized(api, INJECTED),
        ResourceFault::TooManyRequests { retry_after_secs } => {
            (StatusCode::TOO_MANY_REQUESTS, retry_after_secs)
        }
        ResourceFault::ServiceUnavailable { retry_after_secs } => {
            (StatusCode::SERVICE_UNAVAILABLE, retry_after_secs)
        }
        ResourceFault::InternalServerError => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let code = match (api, status) {
        (Api::Salesforce, StatusCode::TOO_MANY_REQUESTS) => "REQUEST_LIMIT_EXCEEDED",
        (Api::Salesforce, StatusCode::SERVICE_UNAVAILABLE) => "SERVER_UNAVAILABLE",
        (Api::Salesforce, _) => "UNKNOWN_EXCEPTION",
        (Api::Graph, StatusCode::TOO_MANY_REQUESTS) => "TooManyRequests",
        (Api::Graph, StatusCode::SERVICE_UNAVAILABLE) => "ServiceNotAvailable",
        (Api::Graph, _) => "generalException",
    };
    let response = match api {
        Api::Salesforce => salesforce_error(status, code, INJECTED),
        Api::Graph => graph_error(status, code, INJECTED),
    };
    with_retry_after(response, retry_after)
}
