//! The step API over HTTP, on the real PostgreSQL: HTTP Basic, the step merged with the latest
//! keys, `PUT /v1/accounts/{id}` through the fencing (with and without a Deckhand worker's
//! lineage headers), creating accounts and steps, clear 4xx, the body cap, and no secret in
//! any response or log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use deckhand_core::auth::{KeysSink, KeysUpdate, RefreshReason};
use deckhand_platform::api::{ApiOptions, serve};
use deckhand_runtime::config::{ApiRetry, StepSource};
use deckhand_runtime::worker::ApiKeysSink;
use deckhand_tests::postgres::TestSchema;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Server {
    base: String,
    http: reqwest::Client,
    user: String,
    key: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path))
            .basic_auth(&self.user, Some(&self.key))
    }

    fn put(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .put(self.url(path))
            .basic_auth(&self.user, Some(&self.key))
            .json(body)
    }
}

async fn start(platform: deckhand_platform::Platform) -> Server {
    let key = platform.create_api_user("task-user").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        platform,
        ApiOptions { max_body: 8 * 1024 },
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        http: reqwest::Client::new(),
        user: "task-user".into(),
        key,
        _stop: stop,
    }
}

async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

// One thread: the server's tasks log through this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn step_api_serves_latest_keys_and_fences_account_updates() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    let server = start(platform.clone()).await;

    // Accounts and steps through the API.
    let (status, body) = status_and_json(
        server
            .http
            .post(server.url("/v1/accounts"))
            .basic_auth(&server.user, Some(&server.key))
            .json(&json!({"id": "acc-1", "keys": keys("rt0")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["generation"]), (201, &json!(0)), "{body}");
    let (status, body) = status_and_json(
        server
            .http
            .post(server.url("/v1/accounts"))
            .basic_auth(&server.user, Some(&server.key))
            .json(&json!({"id": "acc-1", "keys": keys("rt0")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "account `acc-1` already exists");
    let step_def = json!({"function": "query", "account_id": "acc-1", "config": {"loginUrl": "https://x.invalid"}});
    let (status, _) = status_and_json(
        server
            .put("/v1/tasks/flow-1/steps/step_1", &step_def)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = status_and_json(
        server
            .put(
                "/v1/tasks/flow-1/steps/step_2",
                &json!({"account_id": "nope"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("account `nope` does not exist"))
    );
    let (status, body) = status_and_json(
        server
            .put(
                "/v1/tasks/flow-1/steps/step_2",
                &json!({"acount_id": "acc-1"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("field `acount_id`"),
        "{body}"
    );

    // HTTP Basic.
    let path = "/v1/tasks/flow-1/steps/step_1";
    let no_auth = server.http.get(server.url(path)).send().await.unwrap();
    assert_eq!(no_auth.status().as_u16(), 401);
    let wrong = server
        .http
        .get(server.url(path))
        .basic_auth(&server.user, Some("not-the-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let unknown_user = server
        .http
        .get(server.url(path))
        .basic_auth("nobody", Some(&server.key))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_user.status().as_u16(), 401);
    let (status, step) = status_and_json(server.get(path).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(step["function"], "query");
    assert_eq!(step["config"]["_account"], "acc-1");
    assert_eq!(step["config"]["loginUrl"], "https://x.invalid");
    assert_eq!(step["config"]["oauth"]["refresh_token"], "rt0");
    let (status, body) = status_and_json(
        server
            .get("/v1/tasks/flow-1/steps/none")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("step `flow-1/none` does not exist"))
    );
    let (status, body) = status_and_json(
        server
            .get("/v1/tasks/flow-1/steps/a%00b")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("step id: use 1 to 200 printable characters"))
    );

    // The official runtime's PUT (no lineage): applied, then a duplicate, then a replay.
    let put = |rt: &str| server.put("/v1/accounts/acc-1", &json!({"keys": keys(rt)}));
    for (rt, outcome, generation) in [
        ("rt1", "applied", 1),
        ("rt1", "duplicate", 1),
        ("rt0", "stale", 1),
    ] {
        let (status, body) = status_and_json(put(rt).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["outcome"].as_str(), body["generation"].as_u64()),
            (Some(outcome), Some(generation)),
            "{rt}"
        );
    }
    // A Deckhand worker in the official mode sends its lineage: fenced.
    let source = StepSource::Api {
        uri: url::Url::parse(&server.base).unwrap(),
        username: server.user.clone(),
        key: deckhand_core::credentials::Secret::new(server.key.clone()),
    };
    let retry = ApiRetry {
        attempts: 0,
        delay: Duration::from_millis(10),
    };
    let sink = ApiKeysSink::new(&source, "acc-1", retry)
        .unwrap()
        .starting_from(Some(&credentials("rt1")));
    sink.persist(&KeysUpdate {
        credentials: credentials("rt2"),
        generation: 1,
        reason: RefreshReason::Expiry,
    })
    .await
    .unwrap();
    // A second replica that also spent rt1: the fork is refused with 409 and marked.
    let forked = ApiKeysSink::new(&source, "acc-1", retry)
        .unwrap()
        .starting_from(Some(&credentials("rt1")));
    let err = forked
        .persist(&KeysUpdate {
            credentials: credentials("rt2-other"),
            generation: 1,
            reason: RefreshReason::Expiry,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
    let (_, step) = status_and_json(server.get(path).send().await.unwrap()).await;
    assert_eq!(step["config"]["oauth"]["refresh_token"], "rt2");
    let (_, status) = status_and_json(
        server
            .http
            .get(server.url("/status.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let acc = &status["accounts"][0];
    assert_eq!(acc["state"], "fork");
    assert_eq!(acc["generation"], 2);
    assert_eq!(acc["updates_applied"], 2);
    assert_eq!(acc["updates_unfenced"], 1);
    assert!(acc["rotated_by"].as_str().unwrap().contains(':'), "{acc}");

    // The operator re-authorizes: new keys, next generation, the fork mark cleared.
    let (status, body) = status_and_json(
        server
            .http
            .post(server.url("/v1/accounts/acc-1/reauthorize"))
            .basic_auth(&server.user, Some(&server.key))
            .json(&json!({"keys": keys("rt-new")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["generation"].as_u64()),
        (200, Some(3)),
        "{body}"
    );
    let (_, status) = status_and_json(
        server
            .http
            .get(server.url("/status.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["accounts"][0]["state"], "active", "{status}");
    let (_, step) = status_and_json(server.get(path).send().await.unwrap()).await;
    assert_eq!(step["config"]["oauth"]["refresh_token"], "rt-new");

    // Bad requests: clear 4xx that never echo the body.
    let secret_body = "{\"keys\": {\"oauth\": {\"refresh_token\": \"SECRET-rt\"}} trailing";
    let (status, body) = status_and_json(
        server
            .http
            .put(server.url("/v1/accounts/acc-1"))
            .basic_auth(&server.user, Some(&server.key))
            .header("content-type", "application/json")
            .body(secret_body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is not valid JSON at line 1"),
        "{body}"
    );
    assert!(!body.to_string().contains("SECRET"));
    let (status, body) = status_and_json(
        server
            .put("/v1/accounts/acc-1", &json!({"keys": "SECRET-string"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    assert!(!body.to_string().contains("SECRET"), "{body}");
    let plain = server
        .http
        .put(server.url("/v1/accounts/acc-1"))
        .basic_auth(&server.user, Some(&server.key))
        .body("keys")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 415);
    let huge = json!({"keys": {"oauth": {"refresh_token": "x".repeat(16 * 1024)}}});
    let too_big = server
        .put("/v1/accounts/acc-1", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 413);
    let (status, body) = status_and_json(
        server
            .put("/v1/accounts/nope", &json!({"keys": keys("x")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("account `nope` does not exist"))
    );

    // Nothing secret in the logs: no token, no API key.
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("acc-1"), "the logs name the account: {logs}");
    for secret in [
        "rt0",
        "rt1",
        "rt2",
        "rt-new",
        "at-rt",
        "SECRET",
        server.key.as_str(),
    ] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
    schema.cleanup().await;
}
