//! The AMQP worker end to end against the real RabbitMQ: a test connector run by
//! `deckhand::runtime::worker::Worker`, inputs published as an upstream Sailor step would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deckhand::auth::{Grant, Strategy, TokenEndpoint};
use deckhand::connector::*;
use deckhand::credentials::Credentials;
use deckhand::runtime::amqp::TransportOptions;
use deckhand::runtime::config::RuntimeConfig;
use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::worker::Worker;
use deckhand_tests::broker::*;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio::sync::{Barrier, oneshot};

const DESCRIPTOR: &str = r#"{
  "title": "Runtime probe",
  "credentials": {"fields": {
    "apiBase": {"label": "API", "viewClass": "TextFieldView"},
    "tokenUrl": {"label": "Token URL", "viewClass": "TextFieldView"},
    "oauth": {"label": "Auth", "viewClass": "OAuthFieldView"}
  }},
  "actions": {
    "echo": {"title": "Echo", "metadata": {}},
    "fail": {"title": "Fail", "metadata": {}},
    "later": {"title": "Rebound", "metadata": {}},
    "gather": {"title": "Wait for 3 in flight", "metadata": {}},
    "authed": {"title": "Call the API", "metadata": {}}
  }
}"#;

struct Probe {
    barrier: Arc<Barrier>,
}

#[async_trait]
impl Connector for Probe {
    fn router(&self) -> Router<Self> {
        Router::new()
            .action("echo", dispatch)
            .action("fail", dispatch)
            .action("later", dispatch)
            .action("gather", dispatch)
            .action("authed", dispatch)
    }

    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let (Some(token_url), Some(api)) = (
            credentials.field_str("tokenUrl"),
            credentials.field_str("apiBase"),
        ) else {
            return Ok(None);
        };
        let endpoint = TokenEndpoint::new(token_url, "probe-client")?
            .client_secret("probe-secret")
            .grant(Grant::RefreshToken);
        Ok(Some(
            AuthSetup::new(endpoint)
                .strategy(Strategy::on_401())
                .api_origin(api),
        ))
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

/// Every function of this test connector, dispatched on its name (the router's names).
async fn dispatch(connector: Arc<Probe>, input: Input, ctx: Context) -> Result<(), ConnectorError> {
    connector.process(ctx.function(), input, &ctx).await
}

impl Probe {
    async fn process(
        &self,
        function: &str,
        input: Input,
        ctx: &Context,
    ) -> Result<(), ConnectorError> {
        match function {
            "echo" => {
                let mut out = Message::new(input.message.body.clone());
                out.headers = input.message.headers.clone();
                ctx.emit_data(out).await?;
            }
            "fail" => {
                return Err(ConnectorError::new(
                    ErrorKind::Provider("Upstream".into()),
                    "the API said no",
                ));
            }
            "later" => ctx.emit_rebound("not ready yet").await?,
            "gather" => {
                // Completes only when 3 messages are processed at the same time.
                tokio::time::timeout(Duration::from_secs(10), self.barrier.wait())
                    .await
                    .map_err(|_| ConnectorError::other("fewer than 3 messages in flight"))?;
                ctx.emit_data(Message::new(input.message.body.clone()))
                    .await?;
            }
            "authed" => {
                let api = input.config_str("apiBase")?;
                let body: Value = ctx
                    .http()
                    .get(format!("{api}/data"))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                ctx.emit_data(Message::new(body)).await?;
            }
            _ => unreachable!(),
        }
        Ok(())
    }
}

struct Harness {
    topo: Topology,
    cfg: RuntimeConfig,
    cipher: MessageCipher,
    data: String,
    errors: String,
    rebounds: String,
    keys: String,
    dead: String,
    _dir: tempfile::TempDir,
}

fn rk(topo: &Topology, kind: &str) -> String {
    format!("{}.step_1.{kind}", topo.id)
}

impl Harness {
    async fn new(function: &str, step: Value, extra: &[(&str, &str)]) -> Self {
        let mut topo = Topology::new().await;
        let data = topo.queue("data", &rk(&topo, "message")).await;
        let errors = topo.queue("errors", &rk(&topo, "error")).await;
        let rebounds = topo.queue("rebounds", &rk(&topo, "rebound")).await;
        let keys = topo.queue("keys", &rk(&topo, "update_keys")).await;
        let dead = topo.queue("dead", "dead").await;
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), long_string(&topo.exchange));
        args.insert("x-dead-letter-routing-key".into(), long_string("dead"));
        topo.queue_with("in", &rk(&topo, "input"), args).await;
        let dir = tempfile::tempdir().unwrap();
        let step_file = dir.path().join("step.json");
        std::fs::write(&step_file, step.to_string()).unwrap();
        let mut vars: Vec<(&str, &str)> = vec![("ELASTICIO_FUNCTION", function)];
        let step_path = step_file.to_string_lossy().into_owned();
        vars.push(("DECKHAND_STEP_FILE", &step_path));
        vars.extend_from_slice(extra);
        let cfg = topo.config(&vars);
        let cipher = MessageCipher::new("testCryptoPassword", "iv=any16_symbols").unwrap();
        Self {
            topo,
            cfg,
            cipher,
            data,
            errors,
            rebounds,
            keys,
            dead,
            _dir: dir,
        }
    }

    async fn start(&self, barrier: usize) -> (oneshot::Sender<()>, tokio::task::JoinHandle<u8>) {
        let (_, stop, handle) = self.start_observed(barrier).await;
        (stop, handle)
    }

    /// As [`start`](Self::start), also returning where the worker serves its metrics (with
    /// `DECKHAND_METRICS_ADDR` among the harness's variables).
    async fn start_observed(
        &self,
        barrier: usize,
    ) -> (
        Option<std::net::SocketAddr>,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<u8>,
    ) {
        let mut options = TransportOptions::from_config(&self.cfg);
        options.connection_name = format!("deckhand-test-{}", self.topo.id);
        let worker = Worker::start_with(
            Arc::new(Probe {
                barrier: Arc::new(Barrier::new(barrier)),
            }),
            Arc::new(self.cfg.clone()),
            &serde_json::from_str(DESCRIPTOR).unwrap(),
            options,
        )
        .await
        .expect("worker starts");
        let metrics = worker.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        (metrics, stop, handle)
    }

    async fn send(&self, id: &str, body: Value, headers: &[(&str, AMQPValue)]) {
        let plain = json!({"id": id, "body": body, "headers": {}}).to_string();
        let mut table = FieldTable::default();
        table.insert("messageId".into(), long_string(id));
        for (k, v) in headers {
            table.insert((*k).into(), v.clone());
        }
        let ciphertext = self.cipher.encrypt(plain.as_bytes(), ProtocolVersion::V1);
        self.topo
            .publish(
                &rk(&self.topo, "input"),
                &ciphertext,
                BasicProperties::default().with_headers(table),
            )
            .await;
    }

    async fn send_raw(&self, id: &str, body: &[u8]) {
        let mut table = FieldTable::default();
        table.insert("messageId".into(), long_string(id));
        self.topo
            .publish(
                &rk(&self.topo, "input"),
                body,
                BasicProperties::default().with_headers(table),
            )
            .await;
    }

    async fn receive(&self, queue: &str) -> (Value, FieldTable, BasicProperties) {
        let got = self
            .topo
            .get(queue, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("nothing on {queue}"));
        let props = got.delivery.properties.clone();
        let headers = props.headers().clone().unwrap_or_default();
        let version = match headers.inner().get("protocolVersion") {
            Some(AMQPValue::ShortShortInt(2)) => ProtocolVersion::V2,
            _ => ProtocolVersion::V1,
        };
        let body = if queue == self.errors {
            serde_json::from_slice(&got.delivery.data).unwrap()
        } else {
            serde_json::from_slice(
                &self
                    .cipher
                    .decrypt(&got.delivery.data, version)
                    .expect("decrypts"),
            )
            .unwrap()
        };
        (body, headers, props)
    }

    async fn error_of(&self) -> Value {
        let (envelope, _, _) = self.receive(&self.errors).await;
        let plain = self
            .cipher
            .decrypt(
                envelope["error"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap();
        serde_json::from_slice(&plain).unwrap()
    }
}

fn header_str(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

fn step(extra: Value) -> Value {
    let mut config = json!({"_account": "account-1"});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    json!({"config": config, "snapshot": {}, "is_passthrough": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_is_published_with_the_sailor_headers_and_the_input_acked() {
    let h = Harness::new("echo", step(json!({})), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send(
        "in-1",
        json!({"hello": "world"}),
        &[
            ("threadId", long_string("thread-7")),
            ("x-eio-meta-trace", long_string("t-1")),
        ],
    )
    .await;
    let (body, headers, props) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"hello": "world"}));
    // The step's own message is in the passthrough under its step id.
    assert_eq!(
        body["passthrough"]["step_1"]["body"],
        json!({"hello": "world"})
    );
    assert_eq!(header_str(&headers, "parentMessageId"), "in-1");
    assert_eq!(header_str(&headers, "threadId"), "thread-7");
    assert_eq!(header_str(&headers, "x-eio-meta-trace"), "t-1");
    for (name, value) in [
        ("stepId", "step_1"),
        ("execId", "exec-1"),
        ("compId", "comp-1"),
        ("function", "echo"),
        ("userId", "user-1"),
        ("workspaceId", "workspace-1"),
        ("containerId", "container-1"),
    ] {
        assert_eq!(header_str(&headers, name), value, "{name}");
    }
    assert!(matches!(
        headers.inner().get("start"),
        Some(AMQPValue::LongLongInt(_))
    ));
    assert!(matches!(
        headers.inner().get("end"),
        Some(AMQPValue::LongLongInt(_))
    ));
    assert_eq!(
        headers.inner().get("protocolVersion"),
        Some(&AMQPValue::ShortShortInt(1))
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    // Acked: nothing left, nothing dead-lettered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.topo.ready(&h.topo.name("in")).await, 0);
    assert_eq!(h.topo.ready(&h.dead).await, 0);
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), 0);
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_published_as_an_envelope_and_the_input_rejected() {
    let h = Harness::new("fail", step(json!({})), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send("in-err", json!({"n": 1}), &[]).await;
    let error = h.error_of().await;
    assert_eq!(error["name"], "Upstream");
    assert_eq!(error["message"], "the API said no");
    // Rejected without requeue: dead-lettered, not redelivered.
    let dead = h
        .topo
        .get(&h.dead, Duration::from_secs(5))
        .await
        .expect("dead-lettered");
    assert_eq!(
        dead.delivery.data,
        h.cipher.encrypt(
            json!({"id":"in-err","body":{"n":1},"headers":{}})
                .to_string()
                .as_bytes(),
            ProtocolVersion::V1
        )
    );
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_republishes_the_input_with_an_expiration() {
    let h = Harness::new("later", step(json!({})), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send("in-r", json!({"n": 1}), &[]).await;
    let got = h
        .topo
        .get(&h.rebounds, Duration::from_secs(10))
        .await
        .expect("rebound");
    let props = got.delivery.properties.clone();
    let headers = props.headers().clone().unwrap();
    assert_eq!(header_str(&headers, "reboundReason"), "not ready yet");
    assert!(
        matches!(
            headers.inner().get("reboundIteration"),
            Some(AMQPValue::ShortShortInt(1))
        ),
        "{headers:?}"
    );
    assert_eq!(
        props.expiration().as_ref().map(|s| s.as_str()),
        Some("15000")
    );
    // A rebound is not an error: the input is acked.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.topo.ready(&h.dead).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_become_error_events_and_the_worker_goes_on() {
    let h = Harness::new("echo", step(json!({})), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send_raw("garbage", b"this is not base64 ciphertext!")
        .await;
    let not_json = h.cipher.encrypt(b"not json at all", ProtocolVersion::V1);
    h.send_raw("not-json", &not_json).await;
    let array = h.cipher.encrypt(b"[1,2,3]", ProtocolVersion::V1);
    h.send_raw("array", &array).await;
    h.send("good", json!({"ok": true}), &[]).await;
    for _ in 0..3 {
        let error = h.error_of().await;
        assert_eq!(error["name"], "InvalidMessage", "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("input message"),
            "{error}"
        );
    }
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"ok": true}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.topo.ready(&h.dead).await,
        3,
        "the three malformed inputs were rejected"
    );
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_function_is_an_error_event() {
    let h = Harness::new("noSuchThing", step(json!({})), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send("in-u", json!({}), &[]).await;
    let error = h.error_of().await;
    assert_eq!(error["name"], "UnknownFunction");
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_above_one_processes_messages_concurrently() {
    let h = Harness::new(
        "gather",
        step(json!({})),
        &[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "3")],
    )
    .await;
    let (stop, worker) = h.start(3).await;
    for i in 0..3 {
        h.send(&format!("g-{i}"), json!({"i": i}), &[]).await;
    }
    // With one message at a time the barrier of 3 would never open and each would fail.
    for _ in 0..3 {
        let (body, _, _) = h.receive(&h.data).await;
        assert!(body["body"]["i"].is_u64());
    }
    assert_eq!(h.topo.ready(&h.errors).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

/// Issue 13 (1): distinct messages that share a `messageId` (a Node step gives every id-less
/// output of one input the same id) are all run, even while in flight together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_messages_sharing_a_message_id_are_all_processed() {
    let h = Harness::new(
        "gather",
        step(json!({})),
        &[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "3")],
    )
    .await;
    let (stop, worker) = h.start(3).await;
    for i in 0..3 {
        h.send("shared-id", json!({"i": i}), &[]).await;
    }
    // The barrier opens only if all three run at once; a dropped one leaves it shut.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (body, _, _) = h.receive(&h.data).await;
        seen.insert(body["body"]["i"].as_u64().unwrap());
    }
    assert_eq!(seen, (0..3).collect());
    assert_eq!(h.topo.ready(&h.errors).await, 0);
    assert_eq!(h.topo.ready(&h.topo.name("in")).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

/// Chaos finding (issue 13): when the upstream worker's channel dies after the broker took an
/// output but before the confirm arrived, its retry (same `publishId`, `retry: 1`) is a second
/// copy in this step's queue. It is acked without running again; the same content under
/// another `publishId` (a distinct publish) still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_copy_runs_once_and_a_distinct_publish_of_the_same_content_runs() {
    let h = Harness::new(
        "echo",
        step(json!({})),
        &[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "1")],
    )
    .await;
    let (stop, worker) = h.start(1).await;
    let attempt = |publish_id: &str, retry: Option<i8>| {
        let mut headers = vec![("publishId", long_string(publish_id))];
        if let Some(n) = retry {
            headers.push(("retry", AMQPValue::ShortShortInt(n)));
        }
        headers
    };
    h.send("out-1", json!({"n": 1}), &attempt("p-1", None))
        .await;
    let (first, headers, _) = h.receive(&h.data).await;
    assert_eq!(first["body"], json!({"n": 1}));
    // The worker's own outputs carry a publishId.
    assert!(
        matches!(headers.inner().get("publishId"), Some(AMQPValue::LongString(s)) if s.as_bytes().len() == 36),
        "{headers:?}"
    );
    // The retry of that publish: a copy.
    h.send("out-1", json!({"n": 1}), &attempt("p-1", Some(1)))
        .await;
    // The same content published again (another publish, retried too): a message of its own.
    h.send("out-1", json!({"n": 1}), &attempt("p-2", Some(1)))
        .await;
    h.send("out-2", json!({"n": 2}), &attempt("p-3", None))
        .await;
    let (again, _, _) = h.receive(&h.data).await;
    assert_eq!(again["body"], json!({"n": 1}), "the distinct publish ran");
    let (last, _, _) = h.receive(&h.data).await;
    assert_eq!(last["body"], json!({"n": 2}));
    // Prefetch 1 and one queue: the copy was settled before the last message ran.
    assert_eq!(h.topo.ready(&h.data).await, 0, "the copy ran again");
    assert_eq!(
        h.topo.ready(&h.topo.name("in")).await,
        0,
        "every input acked"
    );
    assert_eq!(h.topo.ready(&h.errors).await, 0);
    assert_eq!(h.topo.ready(&h.dead).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

/// Issue 13 (4): an input too large to echo gives exactly one error event, which carries at
/// most 64 KiB of the input, marked as cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_input_gives_one_small_error_event() {
    let h = Harness::new(
        "echo",
        step(json!({})),
        &[("ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT", "100000")],
    )
    .await;
    let (stop, worker) = h.start(1).await;
    h.send("big", json!({"data": "y".repeat(400_000)}), &[])
        .await;
    let (envelope, _, _) = h.receive(&h.errors).await;
    let error_input = envelope["errorInput"].as_str().unwrap();
    assert!(error_input.len() <= 64 * 1024, "{}", error_input.len());
    assert_eq!(envelope["errorInputTruncated"], json!(true));
    let error: Value = serde_json::from_slice(
        &h.cipher
            .decrypt(
                envelope["error"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap(),
    )
    .unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("exceeds limit"),
        "{error}"
    );
    // The input is dead-lettered, and that was the only error event.
    h.topo
        .get(&h.dead, Duration::from_secs(5))
        .await
        .expect("input rejected");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.topo.ready(&h.errors).await, 0, "a second error event");
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

/// A token endpoint that rotates R1 into A2/R2 once, and an API that rejects A1 and serves
/// A2 twice.
async fn rotating_api() -> (
    mockito::ServerGuard,
    mockito::Mock,
    mockito::Mock,
    mockito::Mock,
) {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "R1".into(),
        ))
        .with_header("content-type", "application/json")
        .with_body(r#"{"access_token":"A2","refresh_token":"R2"}"#)
        .expect(1)
        .create_async()
        .await;
    let stale = server
        .mock("GET", "/data")
        .match_header("authorization", "Bearer A1")
        .with_status(401)
        .create_async()
        .await;
    let fresh = server
        .mock("GET", "/data")
        .match_header("authorization", "Bearer A2")
        .with_body(r#"{"from":"api"}"#)
        .expect(2)
        .create_async()
        .await;
    (server, token, fresh, stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_keys_is_published_encrypted_and_confirmed_and_the_next_message_uses_the_new_token()
{
    let (server, token, fresh, _stale) = rotating_api().await;
    let config = json!({
        "apiBase": server.url(), "tokenUrl": format!("{}/token", server.url()),
        "oauth": {"access_token": "A1", "refresh_token": "R1"}
    });
    let h = Harness::new("authed", step(config), &[]).await;
    let (stop, worker) = h.start(1).await;
    h.send("k-1", json!({}), &[]).await;
    let (keys, headers, props) = h.receive(&h.keys).await;
    assert_eq!(keys["keys"]["oauth"]["refresh_token"], "R2");
    assert_eq!(keys["keys"]["oauth"]["access_token"], "A2");
    assert_eq!(keys["keys"]["apiBase"], server.url());
    assert_eq!(header_str(&headers, "accountId"), "account-1");
    assert_eq!(header_str(&headers, "stepId"), "step_1");
    assert!(
        matches!(
            headers.inner().get("generation"),
            Some(AMQPValue::ShortShortInt(1))
        ),
        "{headers:?}"
    );
    assert_eq!(*props.delivery_mode(), Some(2), "updateKeys is persistent");
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"from": "api"}));
    // The next message uses the new token straight away: no second refresh.
    h.send("k-2", json!({}), &[]).await;
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"from": "api"}));
    token.assert_async().await;
    fresh.assert_async().await;
    assert_eq!(h.topo.ready(&h.keys).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_connection_close_mid_stream_loses_no_message() {
    let h = Harness::new(
        "echo",
        step(json!({})),
        &[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "2")],
    )
    .await;
    let (stop, worker) = h.start(1).await;
    for i in 0..10 {
        h.send(&format!("m-{i}"), json!({"i": i}), &[]).await;
    }
    let name = format!("deckhand-test-{}", h.topo.id);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        if i == 3 {
            force_close_connections(&format!("{name}-read"));
            force_close_connections(&format!("{name}-write"));
        }
        if i >= 10 && seen.len() == 20 {
            break;
        }
        if i == 10 {
            for j in 10..20 {
                h.send(&format!("m-{j}"), json!({"i": j}), &[]).await;
            }
        }
        while let Some(got) = h.topo.get(&h.data, Duration::from_millis(300)).await {
            let plain = h
                .cipher
                .decrypt(&got.delivery.data, ProtocolVersion::V1)
                .unwrap();
            let body: Value = serde_json::from_slice(&plain).unwrap();
            seen.insert(body["body"]["i"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, (0..20).collect(), "every message came out");
    assert_eq!(h.topo.ready(&h.topo.name("in")).await, 0);
    assert_eq!(h.topo.ready(&h.dead).await, 0);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

/// The echo example binary (built by `cargo test` beside the test binaries; built here if not).
fn echo_binary() -> std::path::PathBuf {
    static BINARY: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(build_echo_binary).clone()
}

fn build_echo_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join("echo");
    // Built (or found up to date) every time: `cargo test --test …` alone does not rebuild
    // examples, and a stale binary would test old code.
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "deckhand", "--example", "echo"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the echo example failed");
    }
    bin
}

/// The echo example running `passthrough` as a separate worker process on `h`'s topology,
/// its stderr (JSON log lines) collected as it comes so a full pipe never blocks it.
struct EchoProcess {
    child: tokio::process::Child,
    log: tokio::task::JoinHandle<std::io::Result<String>>,
}

impl EchoProcess {
    fn spawn(h: &Harness, prefetch: &str) -> Self {
        Self::spawn_with(h, prefetch, &[])
    }

    fn spawn_with(h: &Harness, prefetch: &str, extra: &[(&str, &str)]) -> Self {
        let step_file = h._dir.path().join("step.json");
        let step_path = step_file.to_string_lossy();
        let mut vars = vec![
            ("ELASTICIO_FUNCTION", "passthrough"),
            ("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", prefetch),
            ("DECKHAND_STEP_FILE", &step_path),
        ];
        vars.extend_from_slice(extra);
        let env = h.topo.env(&vars);
        let mut child = tokio::process::Command::new(echo_binary())
            .arg("run")
            .env_clear()
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("worker process starts");
        let mut stderr = child.stderr.take().expect("stderr");
        let log = tokio::spawn(async move {
            let mut log = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
                .await
                .map(|_| log)
        });
        Self { child, log }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit; returns the exit code and the log.
    async fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().expect("pid") as i32;
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits")
            .unwrap();
        (status.code(), self.log.await.unwrap().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_messages_in_flight_loses_none_and_exits_zero() {
    let h = Harness::new("passthrough", step(json!({"delayMs": "800"})), &[]).await;
    let worker = EchoProcess::spawn(&h, "4");
    for i in 0..4 {
        h.send(&format!("t-{i}"), json!({"i": i}), &[]).await;
    }
    // Wait until all four are delivered to the worker (none ready in the queue; the publishes
    // were confirmed, so the count is exact), then SIGTERM while they are still being
    // processed (each takes 800 ms).
    let input = h.topo.name("in");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.topo.ready(&input).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not consume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.topo.ready(&h.data).await,
        0,
        "still in flight when the signal is sent"
    );
    let (code, log) = worker.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        h.topo.ready(&h.data).await,
        4,
        "every in-flight message was finished and published"
    );
    assert_eq!(h.topo.ready(&input).await, 0, "and acked");
    assert_eq!(h.topo.ready(&h.dead).await, 0);
    h.topo.cleanup().await;
}

/// A SIGTERM that arrives while the worker is still starting (here: its broker accepts the TCP
/// connection but never answers the AMQP handshake) stops it cleanly: exit 0, a log line that
/// says why, nothing consumed. It used to find the default action (no handler yet) and kill the
/// process with an empty log, which is how the test above once failed in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_exits_zero() {
    let h = Harness::new("passthrough", step(json!({})), &[]).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    let worker = EchoProcess::spawn_with(&h, "1", &[("ELASTICIO_AMQP_URI", &uri)]);
    // Start-up is under way once the worker opens its first connection.
    let (held, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept())
        .await
        .expect("the worker connects")
        .unwrap();
    let (code, log) = worker.terminate().await;
    drop(held);
    assert_eq!(code, Some(0), "killed by the signal; log:\n{log}");
    assert!(log.contains("during start-up"), "{log}");
    assert!(!log.contains(r#""level":"ERROR""#), "{log}");
    h.topo.cleanup().await;
}

/// A log line written while a message is processed names the step's function and the
/// message's id: the worker's span and the message's span both appear in its span list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_of_a_message_carry_the_function_and_the_message_id() {
    let h = Harness::new("passthrough", step(json!({})), &[]).await;
    let worker = EchoProcess::spawn(&h, "2");
    h.send_raw("bad-input-7", b"this is not base64 ciphertext!")
        .await;
    h.topo
        .get(&h.errors, Duration::from_secs(20))
        .await
        .expect("the malformed input became an error event");
    let (code, log) = worker.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("input message rejected"))
        .unwrap_or_else(|| panic!("no rejection logged:\n{log}"));
    let line: Value = serde_json::from_str(line).expect("a JSON log line");
    let spans = line["spans"].as_array().expect("a span list");
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "sailor" && s["ELASTICIO_FUNCTION"] == "passthrough"),
        "{line}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "message" && s["messageId"] == "bad-input-7"),
        "{line}"
    );
    h.topo.cleanup().await;
}

/// Issue 13 (5): a graceful stop (SIGTERM) logs no ERROR, from Deckhand or from lapin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_logs_no_error() {
    let h = Harness::new("passthrough", step(json!({"delayMs": "50"})), &[]).await;
    let worker = EchoProcess::spawn(&h, "5");
    // Stopped under load: messages in flight and more buffered by the client.
    for i in 0..40 {
        h.send(&format!("q-{i}"), json!({"i": i}), &[]).await;
    }
    for _ in 0..3 {
        h.topo
            .get(&h.data, Duration::from_secs(20))
            .await
            .expect("processed");
    }
    let (code, log) = worker.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("worker stopped"), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on a graceful stop:\n{}",
        errors.join("\n")
    );
    h.topo.cleanup().await;
}

#[tokio::test]
async fn the_official_update_keys_mode_puts_the_keys_to_the_accounts_api() {
    use deckhand::auth::{KeysSink, KeysUpdate, RefreshReason};
    use deckhand::runtime::config::{ApiRetry, StepSource};
    use deckhand::runtime::worker::ApiKeysSink;

    let mut api = mockito::Server::new_async().await;
    let flaky = api
        .mock("PUT", "/v1/accounts/account-1")
        .with_status(503)
        .expect(1)
        .create_async()
        .await;
    let put = api
        .mock("PUT", "/v1/accounts/account-1")
        // Basic user:api-key
        .match_header("authorization", "Basic dXNlcjphcGkta2V5")
        .match_body(mockito::Matcher::Json(
            json!({"keys": {"oauth": {"refresh_token": "R2"}}}),
        ))
        .expect(1)
        .create_async()
        .await;
    let source = StepSource::Api {
        uri: url::Url::parse(&api.url()).unwrap(),
        username: "user".into(),
        key: deckhand::credentials::Secret::new("api-key"),
    };
    let retry = ApiRetry {
        attempts: 2,
        delay: Duration::from_millis(10),
    };
    let sink = ApiKeysSink::new(&source, "account-1", retry).expect("an API step source");
    let update = KeysUpdate {
        credentials: Credentials::from_keys(json!({"oauth": {"refresh_token": "R2"}})).unwrap(),
        generation: 1,
        reason: RefreshReason::Expiry,
    };
    sink.persist(&update)
        .await
        .expect("persisted after one retry");
    flaky.assert_async().await;
    put.assert_async().await;
    // A 4xx is not retried and fails the refresh with a clear error.
    let mut api = mockito::Server::new_async().await;
    let _denied = api
        .mock("PUT", "/v1/accounts/account-1")
        .with_status(403)
        .expect(1)
        .create_async()
        .await;
    let source = StepSource::Api {
        uri: url::Url::parse(&api.url()).unwrap(),
        username: "user".into(),
        key: deckhand::credentials::Secret::new("api-key"),
    };
    let sink = ApiKeysSink::new(&source, "account-1", retry).unwrap();
    let err = sink.persist(&update).await.unwrap_err();
    assert!(err.to_string().ends_with("HTTP 403 Forbidden"), "{err}");
    assert!(!err.to_string().contains("api-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_credential_store_a_restarted_worker_loads_the_rotated_keys_from_it() {
    use deckhand::auth::{AccountId, CredentialStore};
    let schema = deckhand_tests::postgres::TestSchema::new().await;
    let (server, token, fresh, _stale) = rotating_api().await;
    // The step file keeps the keys it was created with; only the store learns the rotation.
    let config = json!({
        "apiBase": server.url(), "tokenUrl": format!("{}/token", server.url()),
        "oauth": {"access_token": "A1", "refresh_token": "R1"}
    });
    let store_vars = [
        ("DECKHAND_STORE_URL", schema.url.as_str()),
        ("DECKHAND_STORE_KEYS", schema.keys_spec.as_str()),
        ("DECKHAND_STORE_SCHEMA", schema.schema.as_str()),
    ];
    let h = Harness::new("authed", step(config), &store_vars).await;

    let (stop, worker) = h.start(1).await;
    h.send("s-1", json!({}), &[]).await;
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"from": "api"}));
    // The rotation reaches the platform through the store's outbox, confirmed.
    let (keys, headers, _) = h.receive(&h.keys).await;
    assert_eq!(keys["keys"]["oauth"]["refresh_token"], "R2");
    assert_eq!(header_str(&headers, "accountId"), "account-1");
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), 0);

    // A new worker with the same (stale) step loads R2/A2 from the store: no refresh.
    let (stop, worker) = h.start(1).await;
    h.send("s-2", json!({}), &[]).await;
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"from": "api"}));
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), 0);
    token.assert_async().await;
    fresh.assert_async().await;

    let store = schema.store(Duration::from_secs(15)).await;
    let stored = store
        .load(&AccountId::new("account-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.generation, 1);
    let left: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".keys_outbox",
        schema.schema
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(left, 0, "the relay deleted what it published");
    assert_eq!(
        h.topo.ready(&h.keys).await,
        0,
        "one updateKeys per generation"
    );
    h.topo.cleanup().await;
    schema.cleanup().await;
}

/// `GET http://{addr}{path}`: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `/readyz` until it answers `want` (at most 20 s).
async fn wait_readyz(addr: std::net::SocketAddr, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http_get(addr, "/readyz").await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answers {status}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Label pairs of a sample.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// The value of the sample `name` whose labels include every one of `labels`, in an
/// OpenMetrics text scrape.
fn sample(scrape: &str, name: &str, labels: Labels) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{scrape}"))
}

/// Runs the rotating-token scenario on a worker serving metrics; returns the scrape taken
/// after two messages (the first refreshing the token) and the secrets the worker held.
async fn scrape_after_a_refresh() -> (String, Vec<String>) {
    let (server, token, fresh, _stale) = rotating_api().await;
    let config = json!({
        "apiBase": server.url(), "tokenUrl": format!("{}/token", server.url()),
        "oauth": {"access_token": "A1", "refresh_token": "R1"}
    });
    let h = Harness::new(
        "authed",
        step(config),
        &[("DECKHAND_METRICS_ADDR", "127.0.0.1:0")],
    )
    .await;
    let (addr, stop, worker) = h.start_observed(1).await;
    let addr = addr.expect("metrics are served when DECKHAND_METRICS_ADDR is set");
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    wait_readyz(addr, 200).await;
    for id in ["m-1", "m-2"] {
        h.send(id, json!({}), &[]).await;
        let (body, _, _) = h.receive(&h.data).await;
        assert_eq!(body["body"], json!({"from": "api"}));
    }
    h.receive(&h.keys).await;
    token.assert_async().await;
    fresh.assert_async().await;
    // The last confirm comes before the settlement and the metrics of the message's end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, scrape) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
    let secrets = ["A1", "A2", "R1", "R2", "probe-secret", "testCryptoPassword"]
        .map(str::to_owned)
        .to_vec();
    (scrape, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_messages_emits_refreshes_and_update_keys() {
    let (scrape, _) = scrape_after_a_refresh().await;
    // name, labels besides step and function, value
    let expected: &[(&str, Labels, f64)] = &[
        ("deckhand_messages_received_total", &[], 2.0),
        ("deckhand_messages_emitted_total", &[("kind", "data")], 2.0),
        ("deckhand_messages_emitted_total", &[("kind", "error")], 0.0),
        ("deckhand_messages_failed_total", &[], 0.0),
        ("deckhand_messages_in_flight", &[], 0.0),
        ("deckhand_message_processing_seconds_count", &[], 2.0),
        // The API's 401 on A1 made the worker refresh once, successfully.
        (
            "deckhand_token_refreshes_total",
            &[("reason", "rejected"), ("outcome", "refreshed")],
            1.0,
        ),
        ("deckhand_token_requests_total", &[], 1.0),
        ("deckhand_update_keys_persisted_total", &[], 1.0),
        ("deckhand_update_keys_failed_total", &[], 0.0),
        ("deckhand_update_keys_pending", &[], 0.0),
        ("deckhand_credential_state", &[("state", "active")], 1.0),
        (
            "deckhand_credential_state",
            &[("state", "needs_reauth")],
            0.0,
        ),
        ("deckhand_ready", &[], 1.0),
        (
            "deckhand_amqp_reconnects_total",
            &[("connection", "read")],
            0.0,
        ),
    ];
    for (name, extra, value) in expected {
        let mut labels = vec![("step", "step_1"), ("function", "authed")];
        labels.extend_from_slice(extra);
        assert_eq!(sample(&scrape, name, &labels), *value, "{name} {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_scrape_holds_no_secret() {
    let (scrape, secrets) = scrape_after_a_refresh().await;
    assert!(
        scrape.contains("deckhand_token_refreshes_total"),
        "{scrape}"
    );
    for secret in secrets {
        assert!(
            !scrape.contains(&secret),
            "`{secret}` in the scrape:\n{scrape}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_connection_is_closed_and_200_after_the_reconnect() {
    // The worker reaches the broker through a gate of this test: with the gate shut, the
    // connection closed below cannot come back, so the not-ready time is long enough to see.
    let gate = deckhand_tests::broker::Gate::open_to_broker().await;
    let uri = gate.amqp_uri();
    let h = Harness::new(
        "echo",
        step(json!({})),
        &[
            ("DECKHAND_METRICS_ADDR", "127.0.0.1:0"),
            ("ELASTICIO_AMQP_URI", &uri),
        ],
    )
    .await;
    let (addr, stop, worker) = h.start_observed(1).await;
    let addr = addr.expect("metrics served");
    wait_readyz(addr, 200).await;
    h.send("r-1", json!({"n": 1}), &[]).await;
    h.receive(&h.data).await;

    gate.shut();
    // Only this worker's consuming connection (named after this test's topology).
    force_close_connections(&format!("deckhand-test-{}-read", h.topo.id));
    wait_readyz(addr, 503).await;
    let (_, scrape) = http_get(addr, "/metrics").await;
    assert_eq!(
        sample(&scrape, "deckhand_ready", &[("step", "step_1")]),
        0.0,
        "{scrape}"
    );
    // Still not ready a moment later: it cannot reconnect while the gate is shut.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(http_get(addr, "/readyz").await.0, 503);

    gate.reopen();
    wait_readyz(addr, 200).await;
    let (_, scrape) = http_get(addr, "/metrics").await;
    assert_eq!(
        sample(
            &scrape,
            "deckhand_amqp_reconnects_total",
            &[("connection", "read")]
        ),
        1.0,
        "{scrape}"
    );
    // And it consumes again.
    h.send("r-2", json!({"n": 2}), &[]).await;
    let (body, _, _) = h.receive(&h.data).await;
    assert_eq!(body["body"], json!({"n": 2}));
    stop.send(()).unwrap();
    worker.await.unwrap();
    h.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_stopping_worker_drains() {
    // `gather` waits (up to 10 s) for a second message that never comes: one stays in flight.
    let h = Harness::new(
        "gather",
        step(json!({})),
        &[("DECKHAND_METRICS_ADDR", "127.0.0.1:0")],
    )
    .await;
    let (addr, stop, worker) = h.start_observed(2).await;
    let addr = addr.expect("metrics served");
    wait_readyz(addr, 200).await;
    h.send("d-1", json!({}), &[]).await;
    let labels = [("step", "step_1"), ("function", "gather")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sample(
        &http_get(addr, "/metrics").await.1,
        "deckhand_messages_in_flight",
        &labels,
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    wait_readyz(addr, 503).await;
    let (_, scrape) = http_get(addr, "/metrics").await;
    assert_eq!(
        sample(&scrape, "deckhand_messages_in_flight", &labels),
        1.0,
        "still draining"
    );
    assert_eq!(
        http_get(addr, "/healthz").await.0,
        200,
        "alive while draining"
    );
    worker.await.unwrap();
    h.topo.cleanup().await;
}
