//! The session that runs a connector's functions, whatever the transport.

use std::sync::Arc;

use async_trait::async_trait;
use deckhand::auth::MemorySink;
use deckhand::connector::*;
use deckhand::credentials::Credentials;
use serde_json::{Value, json};

struct Probe;

#[async_trait]
impl Connector for Probe {
    fn router(&self) -> Router<Self> {
        Router::new()
            .action("config", echo_config)
            .action("panics", panics)
            .action("fails", fails)
            .action("rotate", rotate)
            .trigger("poll", poll)
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::NotVerified {
            reason: "no".into(),
        })
    }
}

/// Emits the step configuration as it reached the handler.
async fn echo_config(input: Input, ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_data(Message::new(input.config)).await?;
    Ok(())
}

async fn panics() -> Result<(), ConnectorError> {
    panic!("boom")
}

async fn fails() -> Result<(), ConnectorError> {
    Err(
        ConnectorError::new(ErrorKind::Provider("Upstream".into()), "the API is down")
            .with_source(std::io::Error::other("connection reset")),
    )
}

/// Emits the configuration's keys with `apiKey` rotated and `field` dropped.
async fn rotate(input: Input, ctx: Context) -> Result<(), ConnectorError> {
    let mut keys = input.config;
    keys["apiKey"] = json!("KEY-2");
    keys.as_object_mut().unwrap().remove("field");
    ctx.emit_update_keys(keys).await?;
    Ok(())
}

/// Counts its calls in the snapshot.
async fn poll(input: Input, ctx: Context) -> Result<(), ConnectorError> {
    let n = input.snapshot.get("n").and_then(Value::as_u64).unwrap_or(0);
    ctx.emit_snapshot(json!({"n": n + 1})).await?;
    Ok(())
}

fn session(sink: MemorySink) -> Session<Probe> {
    let step = StepConfig::from_merged_config(
        json!({"field": "f", "apiKey": "KEY-1", "_account": "acc-1"})
            .as_object()
            .unwrap()
            .clone(),
        &["apiKey".to_owned()],
        json!({}),
    )
    .unwrap();
    Session::new(Arc::new(Probe), step, Arc::new(sink)).unwrap()
}

async fn run(session: &Session<Probe>, function: &str) -> (Outcome, Vec<Event>) {
    let events = CollectingEmitter::new();
    let outcome = session
        .process(function, Message::new(json!({})), Arc::new(events.clone()))
        .await;
    (outcome, events.events())
}

#[tokio::test]
async fn config_is_fields_merged_with_credential_keys() {
    let session = session(MemorySink::new());
    let (outcome, events) = run(&session, "config").await;
    assert_eq!(outcome, Outcome::default());
    let Event::Data(message) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        message.body,
        json!({"field": "f", "_account": "acc-1", "apiKey": "KEY-1"})
    );
    assert_eq!(
        session.credentials().unwrap().field_str("apiKey"),
        Some("KEY-1")
    );
}

#[tokio::test]
async fn a_panic_or_an_error_becomes_an_error_event_then_end() {
    let session = session(MemorySink::new());
    let (outcome, events) = run(&session, "panics").await;
    assert_eq!(outcome.errors, 1);
    let Event::Error(err) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(err.name, "Panic");
    assert!(err.message.contains("boom"));
    assert_eq!(events[1], Event::End);

    let (outcome, events) = run(&session, "fails").await;
    assert_eq!(outcome.errors, 1);
    assert_eq!(
        events[0],
        Event::Error(ErrorPayload {
            name: "Upstream".into(),
            message: "the API is down".into(),
            stack: "Upstream: the API is down\n    caused by: connection reset".into(),
        })
    );
}

#[tokio::test]
async fn unknown_functions_are_reported_not_run() {
    let session = session(MemorySink::new());
    let (outcome, events) = run(&session, "nope").await;
    assert_eq!(outcome.errors, 1);
    let Event::Error(err) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        err.message,
        "this component has no trigger or action named `nope`"
    );
}

#[tokio::test]
async fn emitted_keys_are_persisted_then_used_by_the_next_message() {
    let sink = MemorySink::new();
    let session = session(sink.clone());
    let (outcome, _) = run(&session, "rotate").await;
    assert_eq!(outcome.errors, 0);
    let update = sink.last().expect("persisted");
    assert_eq!(update.generation, 1);
    assert_eq!(update.keys()["apiKey"], "KEY-2");
    let (_, events) = run(&session, "config").await;
    let Event::Data(message) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(message.body["apiKey"], "KEY-2");
}

#[tokio::test]
async fn a_failing_sink_fails_the_update_and_keeps_the_old_keys() {
    let sink = MemorySink::new();
    sink.fail_next(1);
    let session = session(sink);
    let (outcome, events) = run(&session, "rotate").await;
    assert_eq!(outcome.errors, 1, "{events:?}");
    assert_eq!(
        session.credentials().unwrap().field_str("apiKey"),
        Some("KEY-1")
    );
}

#[tokio::test]
async fn the_snapshot_carries_over_between_messages() {
    let session = session(MemorySink::new());
    run(&session, "poll").await;
    let (_, events) = run(&session, "poll").await;
    assert_eq!(events[0], Event::Snapshot(json!({"n": 2})));
    assert_eq!(session.snapshot(), json!({"n": 2}));
}

#[tokio::test]
async fn verification_serializes_like_elastic_io() {
    let session = session(MemorySink::new());
    let v = session.verify().await.unwrap();
    assert_eq!(
        serde_json::to_value(&v).unwrap(),
        json!({"verified": false, "reason": "no"})
    );
    assert_eq!(
        serde_json::to_value(Verification::Verified).unwrap(),
        json!({"verified": true})
    );
}

#[test]
fn events_serialize_as_tagged_json_lines() {
    let line = serde_json::to_value(Event::Rebound {
        reason: "later".into(),
    })
    .unwrap();
    assert_eq!(
        line,
        json!({"event": "rebound", "data": {"reason": "later"}})
    );
    assert_eq!(
        serde_json::to_value(Event::End).unwrap(),
        json!({"event": "end"})
    );
}
