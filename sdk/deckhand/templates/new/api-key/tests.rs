//! `getItem` against a mockito server standing in for the API.

use std::sync::Arc;

use deckhand::auth::MemorySink;
use deckhand::component::ComponentDescriptor;
use deckhand::connector::router::cross_check;
use deckhand::connector::{
    CollectingEmitter, Connector, Event, Message, Outcome, Session, StepConfig,
};
use deckhand::credentials::Credentials;
use mockito::ServerGuard;
use serde_json::{Value, json};

use super::App;

/// The credential's keys, with the API on `server`.
fn keys(server: &ServerGuard) -> Value {
    json!({"apiBase": server.url(), "apiKey": "key-1"})
}

/// Runs `getItem` on one message; returns the outcome and the events.
async fn get_item(keys: Value, body: Value) -> (Outcome, Vec<Event>) {
    let step = StepConfig {
        credentials: Some(Credentials::from_keys(keys).expect("keys")),
        ..StepConfig::default()
    };
    let sink = Arc::new(MemorySink::new());
    let session = Session::new(Arc::new(App), step, sink).expect("session");
    let events = CollectingEmitter::new();
    let outcome = session
        .process("getItem", Message::new(body), Arc::new(events.clone()))
        .await;
    (outcome, events.events())
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
async fn get_item_sends_the_key_and_emits_the_item() {
    let mut server = mockito::Server::new_async().await;
    let item = json!({"id": "a/1", "name": "First"});
    let api = server
        .mock("GET", "/items/a%2F1")
        .match_header("x-api-key", "key-1")
        .with_header("content-type", "application/json")
        .with_body(item.to_string())
        .expect(1)
        .create_async()
        .await;

    let (outcome, events) = get_item(keys(&server), json!({"id": "a/1"})).await;

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
    api.assert_async().await;
}

#[tokio::test]
async fn a_missing_item_is_a_not_found_error() {
    let mut server = mockito::Server::new_async().await;
    // A mock lives as long as its handle.
    let _missing = server
        .mock("GET", "/items/nope")
        .with_status(404)
        .create_async()
        .await;

    let (outcome, events) = get_item(keys(&server), json!({"id": "nope"})).await;

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
    let api = server
        .mock("GET", mockito::Matcher::Any)
        .expect(0)
        .create_async()
        .await;

    let (outcome, events) = get_item(keys(&server), json!({"name": "no id"})).await;

    assert_eq!(outcome.errors, 1, "{events:?}");
    api.assert_async().await;
}
