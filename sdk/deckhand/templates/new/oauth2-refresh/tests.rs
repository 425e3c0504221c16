//! `getItem` against a mockito server standing in for the token endpoint and the API.

use std::sync::Arc;

use deckhand::auth::MemorySink;
use deckhand::component::ComponentDescriptor;
use deckhand::connector::router::cross_check;
use deckhand::connector::{
    CollectingEmitter, Connector, Event, Message, Outcome, Session, StepConfig,
};
use deckhand::credentials::Credentials;
use mockito::{Matcher, Mock, ServerGuard};
use serde_json::{Value, json};

use super::App;

/// Keys as the platform stores them after a sign-in, with both endpoints on `server`.
fn keys(server: &ServerGuard) -> Value {
    json!({
        "apiBase": server.url(),
        "tokenUrl": format!("{}/oauth2/token", server.url()),
        "clientId": "client-1",
        "clientSecret": "secret-1",
        "oauth": {"refresh_token": "rt-1"},
    })
}

/// The token endpoint: trades `rt-1` for access token `at-1` and rotates it to `rt-2`.
async fn mock_refresh(server: &mut ServerGuard) -> Mock {
    server
        .mock("POST", "/oauth2/token")
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("grant_type".into(), "refresh_token".into()),
            Matcher::UrlEncoded("refresh_token".into(), "rt-1".into()),
            Matcher::UrlEncoded("client_id".into(), "client-1".into()),
            Matcher::UrlEncoded("client_secret".into(), "secret-1".into()),
        ]))
        .with_header("content-type", "application/json")
        .with_body(
            json!({
                "access_token": "at-1",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": "rt-2",
            })
            .to_string(),
        )
        .expect(1)
        .create_async()
        .await
}

/// Runs `getItem` on one message; returns the outcome, the events and what was persisted.
async fn get_item(keys: Value, body: Value) -> (Outcome, Vec<Event>, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let step = StepConfig {
        credentials: Some(Credentials::with_token_field(keys, "oauth").expect("keys")),
        ..StepConfig::default()
    };
    let session = Session::new(Arc::new(App), step, sink.clone()).expect("session");
    let events = CollectingEmitter::new();
    let outcome = session
        .process("getItem", Message::new(body), Arc::new(events.clone()))
        .await;
    (outcome, events.events(), sink)
}

/// What `cargo run -- validate` checks besides the descriptor itself: every function that
/// component.json declares has a handler in the router, and every handler is declared.
#[test]
fn component_json_and_the_router_agree() {
    let descriptor = ComponentDescriptor::from_json(include_str!("../component.json"))
        .expect("component.json is a descriptor");
    let problems = cross_check(&App.router(), &descriptor);
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn get_item_refreshes_the_token_and_emits_the_item() {
    let mut server = mockito::Server::new_async().await;
    let token = mock_refresh(&mut server).await;
    let item = json!({"id": "a/1", "name": "First"});
    let api = server
        .mock("GET", "/items/a%2F1")
        .match_header("authorization", "Bearer at-1")
        .with_header("content-type", "application/json")
        .with_body(item.to_string())
        .expect(1)
        .create_async()
        .await;

    let (outcome, events, sink) = get_item(keys(&server), json!({"id": "a/1"})).await;

    assert_eq!(outcome.errors, 0, "{events:?}");
    let bodies: Vec<&Value> = events
        .iter()
        .filter_map(|e| match e {
            Event::Data(message) => Some(&message.body),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [&item]);
    assert_eq!(events.last(), Some(&Event::End));
    // The rotated refresh token was persisted (an `updateKeys` event on the platform).
    let persisted = sink.last().expect("the rotated keys were persisted").keys();
    assert_eq!(persisted["oauth"]["refresh_token"], "rt-2");
    token.assert_async().await;
    api.assert_async().await;
}

#[tokio::test]
async fn a_missing_item_is_a_not_found_error() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_refresh(&mut server).await;
    // A mock lives as long as its handle.
    let _missing = server
        .mock("GET", "/items/nope")
        .with_status(404)
        .create_async()
        .await;

    let (outcome, events, _) = get_item(keys(&server), json!({"id": "nope"})).await;

    assert_eq!(outcome.errors, 1);
    let Some(Event::Error(error)) = events.iter().find(|e| matches!(e, Event::Error(_))) else {
        panic!("no error event: {events:?}");
    };
    assert_eq!(error.name, "NotFound");
    assert!(error.message.contains("nope"), "{}", error.message);
}

#[tokio::test]
async fn a_message_without_an_id_is_rejected_before_any_request() {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/oauth2/token")
        .expect(0)
        .create_async()
        .await;

    let (outcome, events, _) = get_item(keys(&server), json!({"name": "no id"})).await;

    assert_eq!(outcome.errors, 1, "{events:?}");
    token.assert_async().await;
}
