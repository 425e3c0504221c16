//! The axum router: which path goes to which handler.

use axum::Router;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};

use crate::guard::{graph_guard, salesforce_guard};
use crate::respond::json_response;
use crate::state::AppState;
use crate::{graph, oauth, salesforce};

pub(crate) fn router(state: AppState) -> Router {
    let token = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(oauth::microsoft_token))
        .route("/services/oauth2/token", post(oauth::salesforce_token));

    let data = "/services/data/{version}";
    let salesforce = Router::new()
        .route("/services/data", get(salesforce::versions))
        .route("/services/data/", get(salesforce::versions))
        .route(data, get(salesforce::resources))
        .route(&format!("{data}/query"), get(salesforce::query))
        .route(&format!("{data}/query/"), get(salesforce::query))
        .route(&format!("{data}/queryAll"), get(salesforce::query))
        .route(&format!("{data}/queryAll/"), get(salesforce::query))
        .route(
            &format!("{data}/query/{{locator}}"),
            get(salesforce::query_more),
        )
        .route(
            &format!("{data}/queryAll/{{locator}}"),
            get(salesforce::query_more),
        )
        .route(
            &format!("{data}/sobjects/{{object}}"),
            post(salesforce::create),
        )
        .route(
            &format!("{data}/sobjects/{{object}}/{{id}}"),
            get(salesforce::get_by_id).patch(salesforce::update_by_id),
        )
        .route(
            &format!("{data}/sobjects/{{object}}/{{field}}/{{value}}"),
            get(salesforce::get_by_field).patch(salesforce::upsert),
        )
        .route("/services/oauth2/userinfo", get(salesforce::userinfo))
        .route("/id/{org}/{user}", get(salesforce::identity))
        .route_layer(from_fn_with_state(state.clone(), salesforce_guard));

    let graph = Router::new()
        .route("/v1.0/users", get(graph::list_users))
        .route("/v1.0/users/{id}", get(graph::get_user))
        .route("/v1.0/users/{id}/sendMail", post(graph::send_mail))
        .route("/v1.0/users/{id}/messages", get(graph::user_messages))
        .route(
            "/v1.0/users/{id}/mailFolders/{folder}/messages",
            get(graph::user_folder_messages),
        )
        .route("/v1.0/me", get(graph::me))
        .route("/v1.0/me/sendMail", post(graph::me_send_mail))
        .route("/v1.0/me/messages", get(graph::me_messages))
        .route(
            "/v1.0/me/mailFolders/{folder}/messages",
            get(graph::me_folder_messages),
        )
        .route_layer(from_fn_with_state(state.clone(), graph_guard));

    token
        .merge(salesforce)
        .merge(graph)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        serde_json::json!({
            "error": "not_found",
            "error_description": "The emulator has no such endpoint.",
        }),
    )
}
