//! What the mockito tests share: a session whose credential points at a mockito server (as
//! token host and as `instance_url`), and helpers to run a function and read its events.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::sync::Arc;

use deckhand::auth::MemorySink;
use deckhand::connector::{CollectingEmitter, Event, Message, Outcome, Session, StepConfig};
use deckhand::credentials::Credentials;
use deckhand_salesforce::{OAuthApp, Salesforce};
use serde_json::{Map, Value, json};

pub const CLIENT_ID: &str = "sf-test-client";
pub const CLIENT_SECRET: &str = "SF-TEST-SECRET";
pub const DATA: &str = "/services/data/v60.0";

/// The connector with the test app.
pub fn connector() -> Salesforce {
    Salesforce::new(OAuthApp::new(CLIENT_ID, CLIENT_SECRET))
}

/// Credential keys whose access token `AT-1` and refresh token `RT-1` belong to `server`.
pub fn keys(server: &mockito::ServerGuard) -> Value {
    json!({
        "prodEnv": "login",
        "loginUrl": server.url(),
        "oauth": {
            "access_token": "AT-1",
            "refresh_token": "RT-1",
            "instance_url": server.url(),
            "token_type": "Bearer",
        },
    })
}

/// A session of the connector with `fields` as the step configuration.
pub fn step_session(
    server: &mockito::ServerGuard,
    fields: Value,
    snapshot: Value,
) -> (Session<Salesforce>, MemorySink) {
    step_session_with_keys(keys(server), fields, snapshot)
}

/// A session with explicit credential keys.
pub fn step_session_with_keys(
    keys: Value,
    fields: Value,
    snapshot: Value,
) -> (Session<Salesforce>, MemorySink) {
    let sink = MemorySink::new();
    let step = StepConfig {
        fields: match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        credentials: Some(Credentials::from_keys(keys).expect("credential keys")),
        snapshot,
    };
    let session = Session::new(Arc::new(connector()), step, Arc::new(sink.clone()))
        .expect("the session starts");
    (session, sink)
}

/// Runs `function` on a message with `body`.
pub async fn run(
    session: &Session<Salesforce>,
    function: &str,
    body: Value,
) -> (Outcome, Vec<Event>) {
    let events = CollectingEmitter::new();
    let outcome = session
        .process(function, Message::new(body), Arc::new(events.clone()))
        .await;
    (outcome, events.events())
}

/// The event names, in order.
pub fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::name).collect()
}

/// The bodies of the data events, in order.
pub fn data(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Data(message) => Some(message.body.clone()),
            _ => None,
        })
        .collect()
}

/// The single error event's `(name, message)`.
pub fn error(events: &[Event]) -> (String, String) {
    let errors: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            Event::Error(e) => Some((e.name.clone(), e.message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{events:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// The snapshot events, in order.
pub fn snapshots(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Snapshot(snapshot) => Some(snapshot.clone()),
            _ => None,
        })
        .collect()
}

/// A record as Salesforce returns it.
pub fn record(object: &str, id: &str, fields: Value) -> Value {
    let mut record = json!({
        "attributes": {"type": object, "url": format!("{DATA}/sobjects/{object}/{id}")},
        "Id": id,
    });
    if let (Some(out), Value::Object(fields)) = (record.as_object_mut(), fields) {
        out.extend(fields);
    }
    record
}
