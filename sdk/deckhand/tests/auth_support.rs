// Shared helpers for the auth tests (included with `mod auth_support;`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deckhand::auth::{
    Grant, KeysSink, ManualClock, RetryPolicy, Strategy, TokenEndpoint, TokenManager,
};
use deckhand::credentials::Credentials;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "deckhand-client";
pub const CLIENT_SECRET: &str = "client-secret-XYZ";

pub fn endpoint(server: &mockito::ServerGuard, grant: Grant) -> TokenEndpoint {
    TokenEndpoint::new(&format!("{}/oauth2/token", server.url()), CLIENT_ID)
        .expect("valid token URL")
        .client_secret(CLIENT_SECRET)
        .grant(grant)
        .retry_policy(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
        })
}

pub fn refresh_keys(access: Option<&str>, refresh: &str) -> Credentials {
    let mut oauth = json!({ "refresh_token": refresh });
    if let Some(access) = access {
        oauth["access_token"] = json!(access);
    }
    Credentials::from_keys(json!({ "prodEnv": "login", "oauth": oauth })).expect("valid keys")
}

pub fn manager(
    server: &mockito::ServerGuard,
    credentials: Credentials,
    strategy: Strategy,
    sink: impl KeysSink,
) -> TokenManager {
    TokenManager::builder(credentials, endpoint(server, Grant::RefreshToken), sink)
        .strategy(strategy)
        .build()
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

/// The manual clock's time in whole seconds since the Unix epoch.
pub fn clock_secs(clock: &ManualClock) -> u64 {
    use deckhand::auth::Clock;
    clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn token_body(access: &str, refresh: Option<&str>, expires_in: Option<Value>) -> String {
    let mut body = json!({ "access_token": access, "token_type": "Bearer" });
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    if let Some(e) = expires_in {
        body["expires_in"] = e;
    }
    body.to_string()
}

/// A token endpoint mock answering the refresh_token grant for `refresh` with `body`.
pub async fn refresh_mock(
    server: &mut mockito::ServerGuard,
    refresh: &str,
    body: String,
) -> mockito::Mock {
    server
        .mock("POST", "/oauth2/token")
        .match_body(mockito::Matcher::AllOf(vec![
            mockito::Matcher::UrlEncoded("grant_type".into(), "refresh_token".into()),
            mockito::Matcher::UrlEncoded("refresh_token".into(), refresh.into()),
        ]))
        .with_header("content-type", "application/json")
        .with_body(body)
        .create_async()
        .await
}

/// An API mock answering `status` to requests carrying `Bearer <access>`.
pub async fn api_mock(
    server: &mut mockito::ServerGuard,
    access: &str,
    status: usize,
) -> mockito::Mock {
    server
        .mock("GET", "/api/data")
        .match_header("authorization", format!("Bearer {access}").as_str())
        .with_status(status)
        .with_body(r#"{"ok":true}"#)
        .create_async()
        .await
}

pub fn jwt_expiring_at(at: SystemTime) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    format!(
        "{}.{}.signature",
        engine.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        engine.encode(json!({"sub":"app","exp":exp}).to_string())
    )
}
