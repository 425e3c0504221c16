//! The AMQP worker on a three-node RabbitMQ cluster of its own (see
//! `deckhand_tests::cluster`): quorum queues with a delivery limit, and the node the worker is
//! connected to stopped mid-load. Nothing may be lost and nothing run twice.
//!
//! Fails (never skips) if `rabbitmq-server` is not installed. Takes about a minute, most of it
//! starting and clustering the nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deckhand::connector::*;
use deckhand::credentials::Credentials;
use deckhand::runtime::amqp::TransportOptions;
use deckhand::runtime::config::RuntimeConfig;
use deckhand::runtime::crypto::{MessageCipher, ProtocolVersion};
use deckhand::runtime::worker::Worker;
use deckhand_tests::broker::{long_string, ready};
use deckhand_tests::cluster::Cluster;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

const MESSAGES: u64 = 1500;
const EXCHANGE: &str = "cluster-test";
const DELIVERY_LIMIT: i64 = 10;

struct Echo;

#[async_trait]
impl Connector for Echo {
    fn router(&self) -> Router<Self> {
        Router::new().action("echo", echo)
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

async fn echo(message: Message, ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_data(Message::new(message.body)).await?;
    Ok(())
}

async fn connect(uri: &str) -> (Connection, Channel) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect to a cluster node");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// A durable quorum queue bound to `routing_key`, with extra arguments.
async fn quorum_queue(
    channel: &Channel,
    name: &str,
    routing_key: &str,
    extra: &[(&str, AMQPValue)],
) {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    for (k, v) in extra {
        args.insert((*k).into(), v.clone());
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare quorum queue");
    channel
        .queue_bind(
            name.into(),
            EXCHANGE.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_fails_over_to_the_next_node_with_quorum_queues_losing_nothing() {
    let started = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .expect("cluster starts");
    eprintln!("cluster of 3 up in {:.1}s", started.elapsed().as_secs_f64());

    // Topology declared on node 1, so the queues' leaders are there and the stop moves them.
    {
        let (conn, channel) = connect(&cluster.uri(0)).await;
        channel
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        quorum_queue(
            &channel,
            "in",
            "input",
            &[
                ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                ("x-dead-letter-exchange", long_string(EXCHANGE)),
                ("x-dead-letter-routing-key", long_string("dead")),
            ],
        )
        .await;
        quorum_queue(&channel, "out", "step.message", &[]).await;
        quorum_queue(&channel, "errors", "step.error", &[]).await;
        quorum_queue(&channel, "dead", "dead", &[]).await;
        conn.close(200, "OK".into()).await.expect("close");
    }
    // Publishing and counting through node 3, which stays up.
    let (_admin, admin) = connect(&cluster.uri(2)).await;
    admin
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let cipher = MessageCipher::new("testCryptoPassword", "iv=any16_symbols").unwrap();
    let mut confirms = Vec::new();
    for i in 0..MESSAGES {
        let id = format!("m-{i}");
        let body = cipher.encrypt(
            json!({"id": id, "body": {"i": i}, "headers": {}})
                .to_string()
                .as_bytes(),
            ProtocolVersion::V1,
        );
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), long_string(&id));
        confirms.push(
            admin
                .basic_publish(
                    EXCHANGE.into(),
                    "input".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        confirm.await.expect("input confirmed");
    }

    // The worker knows all three nodes; it connects to the first.
    let dir = tempfile::tempdir().unwrap();
    let step_file = dir.path().join("step.json");
    std::fs::write(&step_file, r#"{"config": {}, "snapshot": {}}"#).unwrap();
    let uris = format!("{} {} {}", cluster.uri(0), cluster.uri(1), cluster.uri(2));
    let vars: Vec<(String, String)> = [
        ("ELASTICIO_FLOW_ID", "flow"),
        ("ELASTICIO_EXEC_ID", "exec"),
        ("ELASTICIO_STEP_ID", "step_1"),
        ("ELASTICIO_CONTAINER_ID", "container"),
        ("ELASTICIO_WORKSPACE_ID", "workspace"),
        ("ELASTICIO_USER_ID", "user"),
        ("ELASTICIO_COMP_ID", "comp"),
        ("ELASTICIO_FUNCTION", "echo"),
        ("ELASTICIO_AMQP_URIS", &uris),
        ("ELASTICIO_LISTEN_MESSAGES_ON", "in"),
        ("ELASTICIO_PUBLISH_MESSAGES_TO", EXCHANGE),
        ("ELASTICIO_DATA_ROUTING_KEY", "step.message"),
        ("ELASTICIO_ERROR_ROUTING_KEY", "step.error"),
        ("ELASTICIO_REBOUND_ROUTING_KEY", "step.rebound"),
        ("ELASTICIO_SNAPSHOT_ROUTING_KEY", "step.snapshot"),
        ("ELASTICIO_MESSAGE_CRYPTO_IV", "iv=any16_symbols"),
        ("ELASTICIO_MESSAGE_CRYPTO_PASSWORD", "testCryptoPassword"),
        ("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "10"),
        ("ELASTICIO_DATA_RATE_LIMIT", "0"),
        ("ELASTICIO_AMQP_RECONNECT_TIMEOUT", "200"),
        ("DECKHAND_STEP_FILE", &step_file.to_string_lossy()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = Arc::new(RuntimeConfig::from_vars(vars).expect("config"));
    assert_eq!(cfg.amqp.uris.len(), 3);
    let mut options = TransportOptions::from_config(&cfg);
    let name = format!("deckhand-cluster-{}", std::process::id());
    options.connection_name = name.clone();
    let worker = Worker::start_with(
        Arc::new(Echo),
        cfg,
        &serde_json::from_str(r#"{"title": "Echo"}"#).unwrap(),
        options,
    )
    .await
    .expect("worker starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));

    // Mid-load, stop the node the worker is connected to.
    let deadline = Instant::now() + Duration::from_secs(60);
    while u64::from(ready(&admin, "out").await) < MESSAGES / 4 {
        assert!(Instant::now() < deadline, "the worker did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_first: Vec<String> = cluster.connection_names(0);
    assert!(
        on_first.contains(&format!("{name}-read")) && on_first.contains(&format!("{name}-write")),
        "the worker is not connected to node 1: {on_first:?}"
    );
    let before = ready(&admin, "out").await;
    let stop_started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_node(0);
        cluster
    })
    .await
    .unwrap();
    let mut failover = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ready(&admin, "out").await;
        if failover.is_none() && out > before {
            failover = Some(stop_started.elapsed());
        }
        if u64::from(out) >= MESSAGES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {out} of {MESSAGES} outputs a minute after the node stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved: Vec<String> = [1, 2]
        .into_iter()
        .flat_map(|i| cluster.connection_names(i))
        .collect();
    assert!(
        moved.contains(&format!("{name}-read")),
        "the worker did not reconnect to another node: {moved:?}"
    );
    // Let late duplicates, if any, arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    while let Some(got) = admin
        .basic_get("out".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let plain = cipher
            .decrypt(&got.delivery.data, ProtocolVersion::V1)
            .expect("output decrypts");
        let message: Value = serde_json::from_slice(&plain).unwrap();
        *seen
            .entry(message["body"]["i"].as_u64().expect("echoed body"))
            .or_default() += 1;
    }
    let lost = MESSAGES - seen.len() as u64;
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "cluster failover: lost={lost} duplicates={duplicates} failover_s={:.2} total_s={:.1}",
        failover.unwrap_or_default().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "messages lost");
    assert_eq!(duplicates, 0, "messages run twice");
    assert_eq!(ready(&admin, "in").await, 0, "inputs left");
    assert_eq!(ready(&admin, "dead").await, 0, "inputs dead-lettered");
    assert_eq!(ready(&admin, "errors").await, 0, "error events");

    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap(), 0);
    drop(admin);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
