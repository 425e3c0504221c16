//! Both connectors run by the AMQP worker on the real RabbitMQ, against the provider
//! emulator, across several token expiries with single-use rotating refresh tokens: every
//! message processed, zero `invalid_grant`, every rotation published as a confirmed
//! `updateKeys` before use, and one token request per token lifetime, not per message.

use std::sync::Arc;
use std::time::Duration;

use deckhand::connector::Connector;
use deckhand::runtime::amqp::TransportOptions;
use deckhand::runtime::config::RuntimeConfig;
use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::protocol::{header_number, js_string};
use deckhand::runtime::worker::Worker;
use deckhand_emulator::{Emulator, EmulatorConfig, RefreshRotation};
use deckhand_tests::broker::{Topology, amqp_uri};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const PASSWORD: &str = "testCryptoPassword";
const IV: &str = "iv=any16_symbols";
const LIFETIME: Duration = Duration::from_secs(2);
const BATCHES: usize = 3;
const PER_BATCH: usize = 3;

struct Step {
    topo: Topology,
    cipher: MessageCipher,
    input_key: String,
    data: String,
    errors: String,
    keys: String,
    _dir: tempfile::TempDir,
    cfg: RuntimeConfig,
}

impl Step {
    async fn new(function: &str, config: Value) -> Self {
        let mut topo = Topology::new().await;
        let id = topo.id.clone();
        let rk = move |kind: &str| format!("{id}.step_1.{kind}");
        let (input_key, data_key, error_key, keys_key) =
            (rk("input"), rk("message"), rk("error"), rk("update_keys"));
        topo.step_queue("step_1", input_key.clone()).await;
        let data = topo.queue("data", data_key.clone()).await;
        let errors = topo.queue("errors", error_key.clone()).await;
        let keys = topo.queue("keys", keys_key.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let step_file = dir.path().join("step.json");
        std::fs::write(
            &step_file,
            json!({"config": config, "snapshot": {}}).to_string(),
        )
        .unwrap();
        let vars: Vec<(String, String)> = [
            ("ELASTICIO_FLOW_ID", format!("flow-{}", topo.id)),
            ("ELASTICIO_EXEC_ID", "exec-1".into()),
            ("ELASTICIO_STEP_ID", "step_1".into()),
            ("ELASTICIO_CONTAINER_ID", "container-1".into()),
            ("ELASTICIO_WORKSPACE_ID", "workspace-1".into()),
            ("ELASTICIO_USER_ID", "user-1".into()),
            ("ELASTICIO_COMP_ID", "comp-1".into()),
            ("ELASTICIO_FUNCTION", function.into()),
            ("ELASTICIO_AMQP_URI", amqp_uri()),
            ("ELASTICIO_LISTEN_MESSAGES_ON", topo.name("step_1-in")),
            ("ELASTICIO_PUBLISH_MESSAGES_TO", topo.exchange.clone()),
            ("ELASTICIO_DATA_ROUTING_KEY", data_key),
            ("ELASTICIO_ERROR_ROUTING_KEY", error_key),
            ("ELASTICIO_REBOUND_ROUTING_KEY", rk("rebound")),
            ("ELASTICIO_SNAPSHOT_ROUTING_KEY", rk("snapshot")),
            ("ELASTICIO_UPDATE_KEYS_ROUTING_KEY", keys_key),
            ("ELASTICIO_MESSAGE_CRYPTO_IV", IV.into()),
            ("ELASTICIO_MESSAGE_CRYPTO_PASSWORD", PASSWORD.into()),
            ("ELASTICIO_DATA_RATE_LIMIT", "0".into()),
            (
                "DECKHAND_STEP_FILE",
                step_file.to_string_lossy().into_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let cfg = RuntimeConfig::from_vars(vars).expect("worker settings");
        Self {
            topo,
            cipher: MessageCipher::new(PASSWORD, IV).unwrap(),
            input_key,
            data,
            errors,
            keys,
            _dir: dir,
            cfg,
        }
    }

    async fn send(&self, id: &str, body: Value) {
        let plain = json!({"id": id, "body": body}).to_string();
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), js_string(id));
        self.topo
            .publish(
                &self.input_key,
                &self.cipher.encrypt(plain.as_bytes(), ProtocolVersion::V1),
                BasicProperties::default().with_headers(headers),
            )
            .await;
    }

    /// Waits until `queue` holds `n` messages.
    async fn wait_for(&self, queue: &str, n: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.topo.ready(queue).await;
            if ready >= n {
                return;
            }
            let errors = self.topo.ready(&self.errors).await;
            assert!(errors == 0, "the worker published {errors} error(s)");
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue}: {ready} of {n} messages"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every updateKeys message: (generation header, decrypted keys).
    async fn update_keys(&self) -> Vec<(f64, Value)> {
        let mut out = Vec::new();
        while let Some(got) = self.topo.try_get(&self.keys).await {
            let headers = got
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let plain = self
                .cipher
                .decrypt(&got.delivery.data, ProtocolVersion::V1)
                .unwrap();
            let keys: Value = serde_json::from_slice(&plain).unwrap();
            out.push((
                header_number(&headers, "generation").unwrap(),
                keys["keys"].clone(),
            ));
        }
        out
    }

    /// Runs `BATCHES` batches of `PER_BATCH` messages, each batch after the token expired.
    async fn run<C: Connector>(
        &self,
        connector: C,
        descriptor: &str,
        body: Value,
        outputs_per_message: u32,
    ) {
        let mut options = TransportOptions::from_config(&self.cfg);
        options.connection_name = format!("deckhand-test-{}", self.topo.id);
        let worker = Worker::start_with(
            Arc::new(connector),
            Arc::new(self.cfg.clone()),
            &serde_json::from_str(descriptor).unwrap(),
            options,
        )
        .await
        .expect("the worker starts");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        for batch in 0..BATCHES {
            if batch > 0 {
                tokio::time::sleep(LIFETIME + Duration::from_millis(300)).await;
            }
            for i in 0..PER_BATCH {
                self.send(&format!("b{batch}-m{i}"), body.clone()).await;
            }
            let expected = ((batch + 1) * PER_BATCH) as u32 * outputs_per_message;
            self.wait_for(&self.data, expected).await;
        }
        stop.send(()).unwrap();
        assert_eq!(worker.await.unwrap(), 0);
    }
}

fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        token_lifetime: LIFETIME,
        salesforce_refresh_rotation: RefreshRotation::Strict,
        graph_refresh_rotation: RefreshRotation::Strict,
        ..EmulatorConfig::default()
    }
}

fn assert_rotations(emulator: &Emulator, updates: &[(f64, Value)], field: &str) {
    let counters = emulator.counters();
    assert_eq!(counters.invalid_grant, 0, "{counters:?}");
    assert_eq!(counters.family_revocations, 0, "{counters:?}");
    // One token per lifetime spanned (the first token plus one per expiry), not per message.
    assert_eq!(
        counters.refresh_token_requests, BATCHES as u64,
        "{counters:?}"
    );
    let generations: Vec<f64> = updates.iter().map(|(g, _)| *g).collect();
    assert_eq!(
        generations,
        (1..=BATCHES).map(|g| g as f64).collect::<Vec<_>>()
    );
    // The last persisted refresh token is the live one: its family is intact.
    let newest = updates.last().unwrap().1[field]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let family = emulator
        .family_of(&newest)
        .expect("a refresh token the emulator issued");
    assert_eq!(emulator.is_family_revoked(&family), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_over_rabbitmq_across_token_expiries() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    let client = emulator.client().clone();
    let step = Step::new(
        "query",
        json!({
            "_account": "account-sf",
            "prodEnv": "login",
            "loginUrl": emulator.base_url(),
            "oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)},
        }),
    )
    .await;
    let connector = deckhand_salesforce::Salesforce::new(deckhand_salesforce::OAuthApp::new(
        client.id.clone(),
        client.secret.clone(),
    ));
    step.run(
        connector,
        include_str!("../../connectors/salesforce/component.json"),
        json!({"query": "SELECT Id, Name FROM Account LIMIT 2"}),
        2,
    )
    .await;
    let updates = step.update_keys().await;
    assert_rotations(&emulator, &updates, "oauth");
    assert_eq!(
        updates[0].1["prodEnv"], "login",
        "the complete keys are published"
    );
    step.topo.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_delegated_over_rabbitmq_across_token_expiries() {
    let emulator = Emulator::start(emulator_config()).await.unwrap();
    let client = emulator.client().clone();
    let step = Step::new(
        "listUsers",
        json!({
            "_account": "account-graph",
            "authMode": "delegated",
            "tenantId": emulator.config().tenant_id,
            "clientId": client.id,
            "clientSecret": client.secret,
            "authorityUrl": emulator.base_url(),
            "graphUrl": emulator.base_url(),
            "oauth": {"refresh_token": emulator.issue_refresh_token(&client.id)},
        }),
    )
    .await;
    let users = emulator.graph_users().len() as u32;
    step.run(
        deckhand_msgraph::MsGraph::default(),
        include_str!("../../connectors/msgraph/component.json"),
        json!({"pageSize": 2}),
        users,
    )
    .await;
    let updates = step.update_keys().await;
    assert_rotations(&emulator, &updates, "oauth");
    assert_eq!(updates[0].1["authMode"], "delegated");
    step.topo.cleanup().await;
}
