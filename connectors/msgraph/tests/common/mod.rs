//! Helpers shared by the integration tests: credentials, a session, running one message.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::sync::Arc;
use std::time::Duration;

use deckhand::auth::{KeysSink, MemorySink};
use deckhand::connector::{
    CollectingEmitter, ErrorPayload, Event, Message, Outcome, Session, StepConfig,
};
use deckhand::credentials::Credentials;
use deckhand::retry::{Backoff, Policy};
use deckhand_msgraph::MsGraph;
use mockito::{Matcher, Mock, ServerGuard};
use serde_json::{Map, Value, json};

/// The tenant of the mockito tests.
pub const TENANT: &str = "contoso";
/// The access token the mocked token endpoint issues.
pub const ACCESS_TOKEN: &str = "at-1";

/// Throttling waits of a few milliseconds, whatever `Retry-After` says.
pub fn fast_throttling() -> Policy {
    Policy::new(Backoff::exponential(Duration::from_millis(5)).with_cap(Duration::from_millis(20)))
        .with_max_attempts(4)
}

/// The connector with fast throttling retries.
pub fn connector() -> MsGraph {
    MsGraph::default().with_throttling(fast_throttling())
}

/// App-only keys with both endpoints at `url` (a mock server or the emulator).
pub fn app_keys(url: &str, tenant: &str, client_id: &str, client_secret: &str) -> Value {
    json!({
        "authMode": "app",
        "tenantId": tenant,
        "clientId": client_id,
        "clientSecret": client_secret,
        "authorityUrl": url,
        "graphUrl": url,
    })
}

/// Delegated keys holding `refresh_token`, with both endpoints at `url`.
pub fn delegated_keys(
    url: &str,
    tenant: &str,
    client_id: &str,
    client_secret: &str,
    refresh_token: &str,
) -> Value {
    json!({
        "authMode": "delegated",
        "tenantId": tenant,
        "clientId": client_id,
        "clientSecret": client_secret,
        "authorityUrl": url,
        "graphUrl": url,
        "oauth": {"refresh_token": refresh_token},
    })
}

/// A session of `connector` with credential `keys`, step `fields` and `snapshot`.
pub fn session_with(
    connector: MsGraph,
    keys: Value,
    fields: Value,
    snapshot: Value,
    sink: Arc<dyn KeysSink>,
) -> Session<MsGraph> {
    let step = StepConfig {
        fields: fields.as_object().cloned().unwrap_or_else(Map::new),
        credentials: Some(Credentials::with_token_field(keys, "oauth").expect("keys")),
        snapshot,
    };
    Session::new(Arc::new(connector), step, sink).expect("session")
}

/// A session of [`connector`] with app-only keys for the mock server at `url`.
pub fn app_session(url: &str, fields: Value, snapshot: Value) -> Session<MsGraph> {
    session_with(
        connector(),
        app_keys(url, TENANT, "app-id", "app-secret"),
        fields,
        snapshot,
        Arc::new(MemorySink::new()),
    )
}

/// The mocked client-credentials token endpoint, expected to be called once.
pub async fn mock_app_token(server: &mut ServerGuard) -> Mock {
    let scope = format!("{}/.default", server.url());
    server
        .mock("POST", format!("/{TENANT}/oauth2/v2.0/token").as_str())
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()),
            Matcher::UrlEncoded("scope".into(), scope),
            Matcher::UrlEncoded("client_id".into(), "app-id".into()),
            Matcher::UrlEncoded("client_secret".into(), "app-secret".into()),
        ]))
        .with_header("content-type", "application/json")
        .with_body(
            json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ACCESS_TOKEN})
                .to_string(),
        )
        .expect(1)
        .create_async()
        .await
}

/// Runs `function` on a message with `body`; returns the outcome and the events.
pub async fn run(session: &Session<MsGraph>, function: &str, body: Value) -> (Outcome, Vec<Event>) {
    let events = CollectingEmitter::new();
    let outcome = session
        .process(function, Message::new(body), Arc::new(events.clone()))
        .await;
    (outcome, events.events())
}

/// The bodies of the data events.
pub fn data(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Data(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

/// The error events.
pub fn errors(events: &[Event]) -> Vec<ErrorPayload> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The snapshot events.
pub fn snapshots(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Snapshot(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The `Authorization` header every Graph request must carry.
pub fn bearer() -> String {
    format!("Bearer {ACCESS_TOKEN}")
}
