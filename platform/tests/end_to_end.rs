//! End to end on the real RabbitMQ and PostgreSQL against the provider emulator (single-use
//! refresh tokens, 2 s token lifetime): the `deckhand-platform` binary runs as a process; the
//! Salesforce and the Microsoft Graph connectors each run as an AMQP worker whose step comes
//! from the platform's API and whose rotations the platform's persister stores.
//!
//! Mid-stream the persister is killed with SIGKILL (rotations wait in the queue, nothing is
//! lost, nothing applied twice) and the worker is killed and restarted (it continues with the
//! rotated keys it loads from the platform): zero `invalid_grant`, and the account ends with
//! the emulator's live refresh token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use deckhand_emulator::{Emulator, EmulatorConfig, RefreshRotation};
use deckhand_runtime::amqp::TransportOptions;
use deckhand_runtime::config::RuntimeConfig;
use deckhand_runtime::crypto::ProtocolVersion;
use deckhand_runtime::protocol::js_string;
use deckhand_runtime::worker::Worker;
use deckhand_tests::broker::{Topology, amqp_uri};
use deckhand_tests::postgres::TestSchema;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const LIFETIME: Duration = Duration::from_secs(2);

/// The `deckhand-platform serve` process.
struct Service {
    child: tokio::process::Child,
    base: String,
}

async fn start_service(schema: &TestSchema, topo: &Topology, port: u16, queue: &str) -> Service {
    let log = std::fs::File::create(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../target/platform-e2e-{port}.log")),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deckhand-platform"))
        .env("DECKHAND_STORE_URL", &schema.url)
        .env("DECKHAND_STORE_KEYS", &schema.keys_spec)
        .env("DECKHAND_PLATFORM_SCHEMA", &schema.schema)
        .env("ELASTICIO_AMQP_URI", amqp_uri())
        .env("ELASTICIO_MESSAGE_CRYPTO_PASSWORD", PASSWORD)
        .env("ELASTICIO_MESSAGE_CRYPTO_IV", IV)
        .env("RUST_LOG", "info")
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--queue",
            queue,
        ])
        .arg("--bind")
        .arg(format!(
            "{}={}",
            topo.exchange,
            topo.rk("step_1", "update_keys")
        ))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("deckhand-platform starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("the platform's API", Duration::from_secs(30), || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_for_queue(topo, queue).await;
    Service { child, base }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One connector's part in the scenario.
struct Scenario<C> {
    account: &'static str,
    function: &'static str,
    descriptor: &'static str,
    /// The account's keys (credential fields and the token) and the step's other fields.
    account_keys: Value,
    step_config: Value,
    body: Value,
    outputs_per_message: u32,
    connector: Arc<dyn Fn() -> C + Send + Sync>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_worker_and_persister_killed_mid_stream_lose_no_rotation() {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: LIFETIME,
        salesforce_refresh_rotation: RefreshRotation::Strict,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let client = emulator.client().clone();
    run(
        &emulator,
        Scenario {
            account: "acc-sf",
            function: "query",
            descriptor: include_str!("../../connectors/salesforce/component.json"),
            account_keys: json!({"oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)}}),
            step_config: json!({"prodEnv": "login", "loginUrl": emulator.base_url()}),
            body: json!({"query": "SELECT Id, Name FROM Account LIMIT 2"}),
            outputs_per_message: 2,
            connector: Arc::new(move || {
                deckhand_salesforce::Salesforce::new(deckhand_salesforce::OAuthApp::new(
                    client.id.clone(),
                    client.secret.clone(),
                ))
            }),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_worker_and_persister_killed_mid_stream_lose_no_rotation() {
    let emulator = Emulator::start(EmulatorConfig {
        token_lifetime: LIFETIME,
        graph_refresh_rotation: RefreshRotation::Strict,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let client = emulator.client().clone();
    run(
        &emulator,
        Scenario {
            account: "acc-graph",
            function: "listUsers",
            descriptor: include_str!("../../connectors/msgraph/component.json"),
            // The app's secret is a credential: it lives in the (encrypted) account.
            account_keys: json!({
                "tenantId": emulator.config().tenant_id,
                "clientId": client.id,
                "clientSecret": client.secret,
                "oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)},
            }),
            step_config: json!({
                "authMode": "delegated",
                "authorityUrl": emulator.base_url(),
                "graphUrl": emulator.base_url(),
            }),
            body: json!({"pageSize": 2}),
            outputs_per_message: emulator.graph_users().len() as u32,
            connector: Arc::new(deckhand_msgraph::MsGraph::default),
        },
    )
    .await;
}

async fn run<C: deckhand_connector::Connector>(emulator: &Emulator, scenario: Scenario<C>) {
    let Scenario {
        account,
        function,
        descriptor,
        account_keys,
        step_config,
        body,
        outputs_per_message,
        connector,
    } = scenario;
    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    let mut topo = Topology::new().await;
    let flow = format!("flow-{}", topo.id);
    let input_key = topo.rk("step_1", "input");
    topo.step_queue("step_1", input_key.clone()).await;
    let data = topo.queue("data", topo.rk("step_1", "message")).await;
    let errors = topo.queue("errors", topo.rk("step_1", "error")).await;
    // A copy of every updateKeys message, to replay at the end.
    let tap = topo
        .queue("keys-tap", topo.rk("step_1", "update_keys"))
        .await;

    // The account and the step live on the platform; the worker gets them from its API.
    platform
        .create_account(account, account_keys)
        .await
        .unwrap();
    step(&platform, &flow, "step_1", account, step_config).await;
    let api_key = platform.create_api_user("task-user").await.unwrap();
    let queue = topo.name("platform-keys");
    let port = free_port();
    let mut service = start_service(&schema, &topo, port, &queue).await;

    let cfg = Arc::new(
        RuntimeConfig::from_vars(topo.env(&[
            ("ELASTICIO_FLOW_ID", &flow),
            ("ELASTICIO_FUNCTION", function),
            ("ELASTICIO_LISTEN_MESSAGES_ON", &topo.name("step_1-in")),
            (
                "ELASTICIO_UPDATE_KEYS_ROUTING_KEY",
                &topo.rk("step_1", "update_keys"),
            ),
            ("ELASTICIO_DATA_RATE_LIMIT", "0"),
            ("ELASTICIO_API_URI", &service.base),
            ("ELASTICIO_API_USERNAME", "task-user"),
            ("ELASTICIO_API_KEY", &api_key),
            ("DECKHAND_STEP_FILE", ""),
        ]))
        .expect("worker settings"),
    );
    let connection_name = format!("deckhand-test-{}", topo.id);
    let start_worker = || {
        let cfg = cfg.clone();
        let connection_name = connection_name.clone();
        let connector = connector.clone();
        async move {
            let mut options = TransportOptions::from_config(&cfg);
            options.connection_name = connection_name;
            let worker = Worker::start_with(
                Arc::new(connector()),
                cfg,
                &serde_json::from_str(descriptor).unwrap(),
                options,
            )
            .await
            .expect("the worker starts with the step from the platform");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(worker.run_until(async move {
                let _ = stopped.await;
            }));
            (task, stop)
        }
    };
    let cipher = cipher();
    let mut sent = 0u32;
    let mut send_batch = async |topo: &Topology| {
        for _ in 0..3 {
            sent += 1;
            let id = format!("m{sent}");
            let plain = json!({"id": id, "body": body});
            let mut headers = FieldTable::default();
            headers.insert("messageId".into(), js_string(id));
            topo.publish(
                &input_key,
                &cipher.encrypt(plain.to_string().as_bytes(), ProtocolVersion::V1),
                BasicProperties::default().with_headers(headers),
            )
            .await;
        }
        sent
    };
    let wait_data = async |topo: &Topology, messages: u32| {
        eventually(
            &format!("{messages} messages processed"),
            Duration::from_secs(30),
            || async {
                assert_eq!(
                    topo.ready(&errors).await,
                    0,
                    "the worker published an error"
                );
                topo.ready(&data).await >= messages * outputs_per_message
            },
        )
        .await;
    };
    let generation = async || stored_refresh_token(&platform, account).await.0;

    // A loaded machine may stretch a batch over a token lifetime (two rotations in it), so
    // the checks compare with the emulator's count of refreshes, not with fixed numbers.
    let rotations = || emulator.counters().refresh_token_requests;
    let all_persisted = |after: u64| {
        let generation = &generation;
        async move {
            let g = generation().await;
            g > after && g == rotations()
        }
    };
    let wait = Duration::from_secs(30);

    // Lifetime 1: the first token.
    let (worker, _stop_1) = start_worker().await;
    let n = send_batch(&topo).await;
    wait_data(&topo, n).await;
    eventually("rotation 1 persisted", wait, || all_persisted(0)).await;

    // Lifetime 2: the persister is SIGKILLed while the worker rotates; the update waits in
    // the queue and the restarted service applies it.
    tokio::time::sleep(LIFETIME + Duration::from_millis(300)).await;
    let before = generation().await;
    service.child.start_kill().unwrap();
    service.child.wait().await.unwrap();
    let n = send_batch(&topo).await;
    wait_data(&topo, n).await;
    assert!(rotations() > before, "the worker rotated meanwhile");
    assert_eq!(
        generation().await,
        before,
        "nothing applied while the persister is down"
    );
    let mut service = start_service(&schema, &topo, port, &queue).await;
    eventually("the rotation persisted after the restart", wait, || {
        all_persisted(before)
    })
    .await;

    // Lifetime 3: once its rotation is persisted, the worker is killed mid-stream (no
    // shutdown; its connections are cut) and a new one starts from the platform's keys.
    tokio::time::sleep(LIFETIME + Duration::from_millis(300)).await;
    let before = generation().await;
    let n = send_batch(&topo).await;
    eventually("rotation 3 persisted", wait, || all_persisted(before)).await;
    // Aborted, not stopped: no shutdown runs; dropping it cuts its connections, and the
    // broker redelivers what it had not acked.
    worker.abort();
    let _ = worker.await;
    let (worker, stop_2) = start_worker().await;
    wait_data(&topo, n).await;

    // Lifetime 4, with the restarted worker.
    tokio::time::sleep(LIFETIME + Duration::from_millis(300)).await;
    let before = generation().await;
    let n = send_batch(&topo).await;
    wait_data(&topo, n).await;
    eventually("rotation 4 persisted", wait, || all_persisted(before)).await;
    stop_2.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), 0);

    let counters = emulator.counters();
    assert_eq!(counters.invalid_grant, 0, "{counters:?}");
    assert_eq!(counters.family_revocations, 0, "{counters:?}");
    let rotated = counters.refresh_token_requests;
    assert!(
        rotated >= 4,
        "one refresh per lifetime at least: {counters:?}"
    );
    let (generation, refresh_token) = stored_refresh_token(&platform, account).await;
    assert_eq!(generation, rotated);
    assert!(
        emulator.is_refresh_token_live(&refresh_token),
        "the account holds the emulator's live refresh token"
    );
    let status: Value = reqwest::Client::new()
        .get(format!("{}/status.json", service.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acc = &status["accounts"][0];
    assert_eq!(acc["state"], "active", "{status}");
    // Every rotation applied once, each descending from the one before.
    assert_eq!(
        (
            acc["updates_applied"].as_u64(),
            acc["updates_unfenced"].as_u64()
        ),
        (Some(rotated), Some(0)),
        "{status}"
    );
    assert_eq!(acc["forks"], 0);

    // Replayed (newest first, so also reordered), duplicated, and a forged fork: a message
    // claiming rotation 1's keys as its parent, with keys nobody rotated to.
    let mut published = Vec::new();
    while let Some(got) = topo.try_get(&tap).await {
        published.push((got.delivery.properties.clone(), got.delivery.data.clone()));
    }
    assert_eq!(
        published.len() as u64,
        rotated,
        "one updateKeys per rotation"
    );
    let rk = topo.rk("step_1", "update_keys");
    for (properties, body) in published.iter().rev() {
        topo.publish(&rk, body, properties.clone()).await;
    }
    let (properties, _) = &published[1];
    let forged = cipher.encrypt(
        json!({"keys": {"oauth": {"refresh_token": "forged-rt", "access_token": "forged-at"}}})
            .to_string()
            .as_bytes(),
        ProtocolVersion::V1,
    );
    topo.publish(&rk, &forged, properties.clone()).await;
    let http = reqwest::Client::new();
    let status_json = async || -> Value {
        http.get(format!("{}/status.json", service.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    eventually("the replays and the fork handled", wait, || async {
        let status = status_json().await;
        status["accounts"][0]["forks"] == 1
            && status["accounts"][0]["updates_stale"].as_u64().unwrap_or(0)
                + status["accounts"][0]["updates_duplicate"]
                    .as_u64()
                    .unwrap_or(0)
                >= rotated
    })
    .await;
    let status = status_json().await;
    let acc = &status["accounts"][0];
    assert_eq!(
        (
            acc["updates_duplicate"].as_u64(),
            acc["updates_stale"].as_u64()
        ),
        (Some(1), Some(rotated - 1)),
        "{status}"
    );
    assert_eq!(acc["state"], "fork", "{status}");
    assert_eq!(
        stored_refresh_token(&platform, account).await,
        (rotated, refresh_token.clone()),
        "never moved backwards, the fork not applied"
    );
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::write(
        target.join(format!("platform-e2e-status-{account}.json")),
        status.to_string(),
    );
    if let Ok(page) = http.get(format!("{}/status", service.base)).send().await
        && let Ok(html) = page.text().await
    {
        let _ = std::fs::write(
            target.join(format!("platform-e2e-status-{account}.html")),
            html,
        );
    }
    eprintln!("status after the end-to-end run: {status}");

    service.child.start_kill().unwrap();
    let _ = service.child.wait().await;
    for q in [queue.clone(), format!("{queue}.dead")] {
        let _ = topo
            .channel
            .queue_delete(q.into(), Default::default())
            .await;
    }
    topo.cleanup().await;
    schema.cleanup().await;
}
