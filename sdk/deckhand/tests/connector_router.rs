//! The typed router: handlers registered by name, typed configuration read once per step,
//! clear errors for bad configuration, bodies, snapshots and unknown names, the fallback, and
//! the cross-check of the router's names against component.json.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use deckhand::auth::MemorySink;
use deckhand::component::ComponentDescriptor;
use deckhand::connector::router::cross_check;
use deckhand::connector::*;
use deckhand::credentials::Credentials;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// How many times a [`Counted`] configuration was deserialised, per test (each test uses its
/// own `tag`, so tests running in parallel do not count each other's).
static PARSES: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

/// A step configuration that counts its deserialisations.
#[derive(Debug)]
struct Counted {
    tag: usize,
    greeting: String,
    api_key: Option<String>,
    limit: u32,
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            tag: usize,
            greeting: String,
            api_key: Option<String>,
            #[serde(default, deserialize_with = "field::optional")]
            limit: Option<field::Lenient<u32>>,
        }
        let raw = Raw::deserialize(d)?;
        PARSES[raw.tag].fetch_add(1, Ordering::SeqCst);
        Ok(Counted {
            tag: raw.tag,
            greeting: raw.greeting,
            api_key: raw.api_key,
            limit: raw.limit.map_or(10, |l| l.0),
        })
    }
}

#[derive(Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[derive(Deserialize)]
struct Position {
    #[serde(default)]
    seen: u64,
}

struct Shop;

async fn greet(
    config: Config<Counted>,
    message: Message,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let body = json!({
        "said": config.greeting,
        "limit": config.limit,
        "apiKey": config.api_key,
        "got": message.body,
        "tag": config.tag,
    });
    ctx.emit_data(Message::new(body)).await?;
    Ok(())
}

async fn order(Body(order): Body<Order>, ctx: Context) -> Result<(), ConnectorError> {
    let body = json!({"item": order.item, "quantity": order.quantity});
    ctx.emit_data(Message::new(body)).await?;
    Ok(())
}

async fn poll(Snapshot(at): Snapshot<Position>, ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_data(Message::new(json!({"seen": at.seen})))
        .await?;
    ctx.emit_snapshot(json!({"seen": at.seen + 1})).await?;
    Ok(())
}

async fn rotate(ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_update_keys(json!({"apiKey": "KEY-2"})).await?;
    Ok(())
}

#[async_trait]
impl Connector for Shop {
    fn router(&self) -> Router<Self> {
        Router::new()
            .action("greet", greet)
            .action("order", order)
            .action("rotate", rotate)
            .trigger("poll", poll)
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

fn session(fields: Value, snapshot: Value) -> Session<Shop> {
    let step = StepConfig {
        fields: fields.as_object().cloned().unwrap(),
        credentials: Some(Credentials::from_keys(json!({"apiKey": "KEY-1"})).unwrap()),
        snapshot,
    };
    Session::new(Arc::new(Shop), step, Arc::new(MemorySink::new())).unwrap()
}

async fn run(session: &Session<Shop>, function: &str, body: Value) -> (Outcome, Vec<Event>) {
    let events = CollectingEmitter::new();
    let outcome = session
        .process(function, Message::new(body), Arc::new(events.clone()))
        .await;
    (outcome, events.events())
}

fn data(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Data(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

fn error(events: &[Event]) -> &ErrorPayload {
    events
        .iter()
        .find_map(|e| match e {
            Event::Error(err) => Some(err),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error event in {events:?}"))
}

#[tokio::test]
async fn the_typed_configuration_is_read_once_per_step_and_again_after_a_key_change() {
    let session = session(
        json!({"tag": 0, "greeting": "hi", "limit": "25"}),
        json!({}),
    );
    for n in 0..5 {
        let (outcome, events) = run(&session, "greet", json!({"n": n})).await;
        assert_eq!(outcome.errors, 0, "{events:?}");
        assert_eq!(
            data(&events),
            [json!({"said": "hi", "limit": 25, "apiKey": "KEY-1", "got": {"n": n}, "tag": 0})]
        );
    }
    assert_eq!(
        PARSES[0].load(Ordering::SeqCst),
        1,
        "five messages, one parse"
    );

    // The credential's fields are part of the configuration: a key change reads it again.
    let (outcome, _) = run(&session, "rotate", json!({})).await;
    assert_eq!(outcome.errors, 0);
    let (_, events) = run(&session, "greet", json!({"n": 5})).await;
    assert_eq!(data(&events)[0]["apiKey"], "KEY-2");
    run(&session, "greet", json!({"n": 6})).await;
    assert_eq!(PARSES[0].load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_bad_configuration_is_an_error_naming_the_field_on_every_message() {
    for (fields, expected) in [
        (
            json!({"tag": 1, "greeting": "hi", "limit": "ten"}),
            "configuration field `limit`: `ten` is not valid here (invalid digit found in string)",
        ),
        (
            json!({"tag": 1, "greeting": 5}),
            "configuration field `greeting`: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"tag": 1}),
            "configuration field `greeting` is required",
        ),
    ] {
        let session = session(fields.clone(), json!({}));
        for _ in 0..2 {
            let (outcome, events) = run(&session, "greet", json!({})).await;
            assert_eq!(outcome.errors, 1, "{fields}");
            assert!(data(&events).is_empty(), "the handler must not run");
            let err = error(&events);
            assert_eq!(err.name, "InvalidConfiguration", "{fields}");
            assert_eq!(err.message, expected, "{fields}");
            assert_eq!(events.last(), Some(&Event::End));
        }
    }
    // A configuration that does not parse is not parsed again for every message either.
    assert!(PARSES[1].load(Ordering::SeqCst) <= 1);
}

#[tokio::test]
async fn tokens_are_not_part_of_the_typed_configuration() {
    let step = StepConfig {
        fields: json!({"tag": 2, "greeting": "hi"})
            .as_object()
            .cloned()
            .unwrap(),
        credentials: Some(
            Credentials::from_keys(json!({
                "apiKey": "KEY-1",
                "oauth": {"access_token": "AT-SECRET", "refresh_token": "RT-SECRET"},
            }))
            .unwrap(),
        ),
        snapshot: Value::Null,
    };
    let session = Session::new(Arc::new(Shop), step, Arc::new(MemorySink::new())).unwrap();
    let (outcome, events) = run(&session, "greet", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events)[0]["apiKey"], "KEY-1");
}

#[tokio::test]
async fn typed_bodies_and_snapshots_name_the_field_that_does_not_fit() {
    let session = session(json!({}), Value::Null);
    let (_, events) = run(&session, "order", json!({"item": "tea", "quantity": 2})).await;
    assert_eq!(data(&events), [json!({"item": "tea", "quantity": 2})]);
    let (_, events) = run(&session, "order", json!({"item": "tea", "quantity": -1})).await;
    let err = error(&events);
    assert_eq!(err.name, "InvalidInput");
    assert!(
        err.message.starts_with("message body field `quantity`: "),
        "{err:?}"
    );
    let (_, events) = run(&session, "order", json!({"quantity": 1})).await;
    assert_eq!(
        error(&events).message,
        "message body field `item` is required"
    );

    // No snapshot yet reads as `{}`; the next message sees what the last one emitted.
    let (_, events) = run(&session, "poll", json!({})).await;
    assert_eq!(data(&events), [json!({"seen": 0})]);
    let (_, events) = run(&session, "poll", json!({})).await;
    assert_eq!(data(&events), [json!({"seen": 1})]);

    let session = self::session(json!({}), json!({"seen": "yesterday"}));
    let (outcome, events) = run(&session, "poll", json!({})).await;
    assert_eq!(outcome.errors, 1);
    let err = error(&events);
    assert_eq!(err.name, "InvalidSnapshot");
    assert!(
        err.message.starts_with("snapshot field `seen`: "),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unknown_name_is_an_error_event_then_end() {
    let session = session(json!({}), json!({}));
    let (outcome, events) = run(&session, "gret", json!({})).await;
    assert_eq!(outcome.errors, 1);
    let err = error(&events);
    assert_eq!(err.name, "UnknownFunction");
    assert_eq!(
        err.message,
        "this component has no trigger or action named `gret`"
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], Event::End);
}

/// A connector whose functions are only known at run time.
struct Dynamic;

async fn any_function(input: Input, ctx: Context) -> Result<(), ConnectorError> {
    let body = json!({"function": ctx.function(), "got": input.message.body});
    ctx.emit_data(Message::new(body)).await?;
    Ok(())
}

async fn fixed(ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_data(Message::new(json!({"fixed": true}))).await?;
    Ok(())
}

#[async_trait]
impl Connector for Dynamic {
    fn router(&self) -> Router<Self> {
        Router::new().action("fixed", fixed).fallback(any_function)
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

#[tokio::test]
async fn the_fallback_gets_every_name_not_registered() {
    let session = Session::new(
        Arc::new(Dynamic),
        StepConfig::default(),
        Arc::new(MemorySink::new()),
    )
    .unwrap();
    let events = CollectingEmitter::new();
    session
        .process(
            "table_orders",
            Message::new(json!({"n": 1})),
            Arc::new(events.clone()),
        )
        .await;
    assert_eq!(
        data(&events.events()),
        [json!({"function": "table_orders", "got": {"n": 1}})]
    );
    let events = CollectingEmitter::new();
    session
        .process("fixed", Message::new(json!({})), Arc::new(events.clone()))
        .await;
    assert_eq!(data(&events.events()), [json!({"fixed": true})]);
}

/// A component.json with these functions (and the title every descriptor needs).
fn descriptor(mut functions: serde_json::Value) -> ComponentDescriptor {
    functions["title"] = json!("Shop");
    serde_json::from_value(functions).expect("a valid descriptor")
}

#[test]
fn validate_cross_checks_the_routers_names_with_component_json() {
    let router = Shop.router();
    let matching = descriptor(json!({
        "actions": {"greet": {}, "order": {}, "rotate": {}},
        "triggers": {"poll": {}},
    }));
    assert!(cross_check(&router, &matching).is_empty());

    let drifted = descriptor(json!({
        "actions": {"greet": {}, "order": {}, "poll": {}, "refund": {}},
        "triggers": {},
    }));
    assert_eq!(
        cross_check(&router, &drifted),
        [
            "/actions/poll: declared under `actions` but the connector registers it as a trigger",
            "/actions/refund: declared in component.json but the connector has no handler for it",
            "/actions: the connector handles action `rotate` that component.json does not declare",
        ]
    );

    // With a fallback, every declared function is handled; registered ones must still be
    // declared.
    let router = Dynamic.router();
    assert!(
        cross_check(
            &router,
            &descriptor(json!({"actions": {"fixed": {}, "anything": {}}}))
        )
        .is_empty()
    );
    assert_eq!(
        cross_check(&router, &descriptor(json!({"actions": {"anything": {}}}))),
        ["/actions: the connector handles action `fixed` that component.json does not declare"]
    );
}

#[test]
#[should_panic(expected = "the router already has a handler for `greet`")]
fn a_name_registered_twice_is_refused() {
    let _ = Router::<Shop>::new()
        .action("greet", greet)
        .trigger("greet", poll);
}

/// A handler reading the body after taking the message: a mistake in the code, reported as
/// such on the message rather than silently reading an empty body.
async fn body_after_message(_: Message, _: Body<Value>, _: Context) -> Result<(), ConnectorError> {
    Ok(())
}

#[tokio::test]
async fn an_argument_reading_a_message_already_taken_is_a_clear_error() {
    struct Misordered;
    #[async_trait]
    impl Connector for Misordered {
        fn router(&self) -> Router<Self> {
            Router::new().action("f", body_after_message)
        }
        async fn verify_credentials(
            &self,
            _: &Credentials,
            _: &VerifyContext,
        ) -> Result<Verification, ConnectorError> {
            Ok(Verification::Verified)
        }
    }
    let session = Session::new(
        Arc::new(Misordered),
        StepConfig::default(),
        Arc::new(MemorySink::new()),
    )
    .unwrap();
    let events = CollectingEmitter::new();
    session
        .process("f", Message::new(json!({})), Arc::new(events.clone()))
        .await;
    let events = events.events();
    let err = error(&events);
    assert_eq!(err.name, "Error");
    assert!(err.message.contains("put `Body` before"), "{err:?}");
}
