//! The updateKeys persister and its fencing, on the real PostgreSQL and RabbitMQ: updates
//! published by the worker's own sink are applied in lineage order; duplicates are no-ops,
//! replays are dropped and counted, a fork keeps the first update and marks the account, and
//! malformed messages land in the dead-letter queue with the reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use deckhand_core::auth::{KeysSink, KeysUpdate, RefreshReason};
use deckhand_platform::persister::{self, DEAD_REASON_HEADER};
use deckhand_platform::{KeysUpdateIn, Outcome};
use deckhand_runtime::amqp::{Transport, TransportOptions};
use deckhand_runtime::protocol::{StepFlags, js_string};
use deckhand_runtime::worker::AmqpKeysSink;
use deckhand_tests::broker::Topology;
use deckhand_tests::postgres::TestSchema;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde_json::json;

fn update(parent: Option<&str>, rt: &str) -> KeysUpdateIn {
    KeysUpdateIn {
        keys: keys(rt),
        parent_fingerprint: parent.map(fingerprint),
        worker: "test-worker".into(),
        worker_generation: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_applies_descendants_and_drops_duplicates_replays_and_forks() {
    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    platform.create_account("acc", keys("rt0")).await.unwrap();

    let applied = |generation| Outcome::Applied {
        generation,
        fenced: true,
    };
    let apply = |u: KeysUpdateIn| {
        let platform = platform.clone();
        async move { platform.apply_update("acc", &u).await.unwrap() }
    };
    assert_eq!(apply(update(Some("rt0"), "rt1")).await, applied(1));
    // The same update again (a redelivery): nothing changes.
    assert_eq!(
        apply(update(Some("rt0"), "rt1")).await,
        Outcome::Duplicate { generation: 1 }
    );
    assert_eq!(apply(update(Some("rt1"), "rt2")).await, applied(2));
    // Replays of older keys, with and without lineage: dropped, never moving backwards.
    assert_eq!(
        apply(update(Some("rt0"), "rt1")).await,
        Outcome::Stale { generation: 2 }
    );
    assert_eq!(
        apply(update(None, "rt0")).await,
        Outcome::Stale { generation: 2 }
    );
    // A second child of rt1 (another replica spent it too): the first child stays.
    assert_eq!(
        apply(update(Some("rt1"), "rt2-other")).await,
        Outcome::Fork { generation: 2 }
    );
    assert_eq!(
        stored_refresh_token(&platform, "acc").await,
        (2, "rt2".into())
    );
    // Without lineage (the official runtime's PUT): last-write-wins, counted.
    assert_eq!(
        apply(update(None, "rt3")).await,
        Outcome::Applied {
            generation: 3,
            fenced: false
        }
    );
    // Reordered: rt5 (child of rt4) arrives before rt4 (child of rt3). The newest wins, and
    // the late ancestor is recognised as old news.
    assert_eq!(
        apply(update(Some("rt4"), "rt5")).await,
        Outcome::Applied {
            generation: 4,
            fenced: false
        }
    );
    assert_eq!(
        apply(update(Some("rt3"), "rt4")).await,
        Outcome::Stale { generation: 4 }
    );
    assert_eq!(
        stored_refresh_token(&platform, "acc").await,
        (4, "rt5".into())
    );
    // A provider that does not rotate: the same refresh token with a new access token is
    // applied; the message that brought rt5, replayed afterwards, is stale.
    let mut same_rt = update(Some("rt5"), "rt5");
    same_rt.keys["oauth"]["access_token"] = json!("at-rt5-renewed");
    assert_eq!(apply(same_rt).await, applied(5));
    assert_eq!(
        apply(update(Some("rt4"), "rt5")).await,
        Outcome::Stale { generation: 5 }
    );

    let status = platform.status().await.unwrap();
    let acc = &status.accounts[0];
    assert_eq!(acc.state, "fork");
    assert!(acc.detail.as_deref().unwrap().contains("test-worker"));
    assert_eq!(
        (
            acc.updates_applied,
            acc.updates_unfenced,
            acc.updates_duplicate,
            acc.updates_stale,
            acc.forks
        ),
        (5, 2, 1, 4, 1)
    );
    assert_eq!(acc.generation, 5);
    // Nothing secret on the status.
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("rt5") && !text.contains("at-rt"), "{text}");

    // Bad input: clear errors.
    let err = platform
        .apply_update("missing", &update(None, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "account `missing` does not exist");
    schema.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_applies_the_workers_updates_from_rabbitmq_with_fencing() {
    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    let topo = Topology::new().await;
    let flow = format!("flow-{}", topo.id);
    platform
        .create_account("acc-amqp", keys("rt0"))
        .await
        .unwrap();
    step(
        &platform,
        &flow,
        "step_1",
        "acc-amqp",
        json!({"prodEnv": "login"}),
    )
    .await;
    let options = persister_options(&topo);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(persister::run(platform.clone(), options.clone(), async {
        let _ = stopped.await;
    }));

    // The worker's own sink: lineage headers as a worker sends them.
    let cfg = Arc::new(topo.config(&[(
        "ELASTICIO_UPDATE_KEYS_ROUTING_KEY",
        &topo.rk("step_1", "update_keys"),
    )]));
    let transport = Transport::connect(TransportOptions::from_config(&cfg))
        .await
        .unwrap();
    let flags = StepFlags {
        is_passthrough: false,
        account_id: Some("acc-amqp".into()),
    };
    let sink = |from: &str| {
        AmqpKeysSink::new(cfg.clone(), transport.publisher(), flags.clone())
            .starting_from(Some(&credentials(from)))
    };
    let rotation = |rt: &str, generation| KeysUpdate {
        credentials: credentials(rt),
        generation,
        reason: RefreshReason::Expiry,
    };
    // Wait until the persister declared and bound its queue.
    wait_for_queue(&topo, &options.queue).await;
    let worker = sink("rt0");
    for (g, rt) in ["rt1", "rt2", "rt3"].iter().enumerate() {
        worker.persist(&rotation(rt, g as u64 + 1)).await.unwrap();
    }
    // A replica that started from rt1 and spent it again (a fork), a replay of rt1, and
    // malformed messages.
    sink("rt1").persist(&rotation("rt2-fork", 2)).await.unwrap();
    sink("rt0").persist(&rotation("rt1", 1)).await.unwrap();
    let rk = topo.rk("step_1", "update_keys");
    let mut headers = FieldTable::default();
    headers.insert("accountId".into(), js_string("acc-amqp"));
    headers.insert("taskId".into(), js_string(flow.clone()));
    headers.insert("stepId".into(), js_string("step_1"));
    topo.publish(
        &rk,
        b"not encrypted",
        BasicProperties::default().with_headers(headers.clone()),
    )
    .await;
    let mut other = headers.clone();
    other.insert("accountId".into(), js_string("someone-else"));
    topo.publish(
        &rk,
        &cipher().encrypt(
            json!({"keys": keys("evil")}).to_string().as_bytes(),
            Default::default(),
        ),
        BasicProperties::default().with_headers(other),
    )
    .await;

    let mut nul = headers.clone();
    nul.insert("worker".into(), js_string("w\u{0}1"));
    topo.publish(
        &rk,
        &cipher().encrypt(
            json!({"keys": keys("rt8")}).to_string().as_bytes(),
            Default::default(),
        ),
        BasicProperties::default().with_headers(nul),
    )
    .await;
    let mut bad_lineage = headers.clone();
    bad_lineage.insert("parentFingerprint".into(), js_string("not-a-fingerprint"));
    topo.publish(
        &rk,
        &cipher().encrypt(
            json!({"keys": keys("rt9")}).to_string().as_bytes(),
            Default::default(),
        ),
        BasicProperties::default().with_headers(bad_lineage),
    )
    .await;

    let dead = options.dead_letter_queue();
    eventually("4 dead letters", Duration::from_secs(15), || async {
        deckhand_tests::broker::ready(&topo.channel, &dead).await >= 4
    })
    .await;
    eventually(
        "the fork and the replay",
        Duration::from_secs(15),
        || async {
            let s = platform.status().await.unwrap();
            s.accounts[0].forks == 1 && s.accounts[0].updates_stale == 1
        },
    )
    .await;
    assert_eq!(
        stored_refresh_token(&platform, "acc-amqp").await,
        (3, "rt3".into())
    );
    let status = platform.status().await.unwrap();
    let acc = &status.accounts[0];
    assert_eq!((acc.updates_applied, acc.updates_unfenced), (3, 0));
    assert_eq!(acc.state, "fork");
    assert!(
        acc.rotated_by.as_deref().unwrap().contains(':'),
        "the worker's id: {:?}",
        acc.rotated_by
    );
    let mut reasons = Vec::new();
    while let Some(got) = topo.try_get(&dead).await {
        let headers = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        reasons
            .push(deckhand_runtime::protocol::header_string(&headers, DEAD_REASON_HEADER).unwrap());
    }
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].starts_with("body: "), "{reasons:?}");
    assert_eq!(
        reasons[1],
        "header `parentFingerprint`: expected 32 hex digits"
    );
    assert_eq!(
        reasons[2],
        "header `worker`: use at most 200 printable characters"
    );
    assert_eq!(
        reasons[3],
        format!("step `{flow}/step_1` is not bound to account `someone-else`")
    );
    assert_eq!(stored_refresh_token(&platform, "acc-amqp").await.1, "rt3");

    stop.send(()).unwrap();
    running.await.unwrap();
    transport.close().await;
    delete_queues(&topo, &options).await;
    topo.cleanup().await;
    schema.cleanup().await;
}

/// A store-backed worker commits its rotation to the same row and relays it from the outbox
/// as `updateKeys` with the row's lineage: the persister recognises it as already applied (a
/// duplicate), and a rotation the platform applied first supersedes the store holder's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_backed_workers_and_the_persister_share_one_lineage() {
    use deckhand_core::auth::store::{Acquire, Commit};
    use deckhand_core::auth::{AccountId, CredentialStore, HolderId};
    use deckhand_store::OutboxEntry;

    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    let topo = Topology::new().await;
    let flow = format!("flow-{}", topo.id);
    platform
        .create_account("acc-store", keys("s0"))
        .await
        .unwrap();
    step(&platform, &flow, "step_1", "acc-store", json!({})).await;
    let options = persister_options(&topo);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(persister::run(platform.clone(), options.clone(), async {
        let _ = stopped.await;
    }));
    wait_for_queue(&topo, &options.queue).await;

    // A store-backed worker's rotation: committed under the lease, then relayed.
    let store = platform.store().clone();
    let account = AccountId::new("acc-store").unwrap();
    let holder = HolderId::new("store-worker:1").unwrap();
    let Acquire::Leased { lease, .. } = store.try_acquire(&account, &holder).await.unwrap() else {
        panic!("the lease is free")
    };
    let rotation = KeysUpdate {
        credentials: credentials("s1"),
        generation: 1,
        reason: RefreshReason::Expiry,
    };
    assert!(matches!(
        store.commit(&lease, &rotation).await.unwrap(),
        Commit::Committed
    ));
    let cfg = Arc::new(topo.config(&[(
        "ELASTICIO_UPDATE_KEYS_ROUTING_KEY",
        &topo.rk("step_1", "update_keys"),
    )]));
    let transport = Transport::connect(TransportOptions::from_config(&cfg))
        .await
        .unwrap();
    let sink = Arc::new(AmqpKeysSink::new(
        cfg.clone(),
        transport.publisher(),
        StepFlags {
            is_passthrough: false,
            account_id: Some("acc-store".into()),
        },
    ));
    let relay_sink = sink.clone();
    let publish = move |entry: OutboxEntry| {
        let sink = relay_sink.clone();
        Box::pin(async move {
            let lineage = deckhand_runtime::worker::Lineage {
                parent_fingerprint: entry.parent_fingerprint.clone(),
                refresh_fingerprint: entry.refresh_fingerprint.clone(),
                worker: entry.holder.clone(),
            };
            sink.publish(&entry.update, &lineage)
                .await
                .map_err(|e| e.to_string())
        }) as futures_util::future::BoxFuture<'static, Result<(), String>>
    };
    assert_eq!(
        store.relay_outbox(Some(&account), &publish).await.unwrap(),
        1
    );
    eventually(
        "the relayed update handled",
        Duration::from_secs(15),
        || async { platform.status().await.unwrap().accounts[0].updates_duplicate == 1 },
    )
    .await;
    let status = platform.status().await.unwrap();
    let acc = &status.accounts[0];
    assert_eq!((acc.generation, acc.updates_applied, acc.forks), (1, 0, 0));
    assert_eq!(acc.rotated_by.as_deref(), Some("store-worker:1"));

    // The next rotation of a plain worker (lineage from s1) is applied on the same row; the
    // store holder still spending s1 is superseded, not committed over it.
    let Acquire::Leased { lease, .. } = store.try_acquire(&account, &holder).await.unwrap() else {
        panic!("the lease is free")
    };
    let plain = AmqpKeysSink::new(
        cfg.clone(),
        transport.publisher(),
        StepFlags {
            is_passthrough: false,
            account_id: Some("acc-store".into()),
        },
    )
    .starting_from(Some(&credentials("s1")));
    plain
        .persist(&KeysUpdate {
            credentials: credentials("s2"),
            generation: 1,
            reason: RefreshReason::Expiry,
        })
        .await
        .unwrap();
    eventually(
        "the plain worker's update applied",
        Duration::from_secs(15),
        || async { stored_refresh_token(&platform, "acc-store").await.0 == 2 },
    )
    .await;
    let late = KeysUpdate {
        credentials: credentials("s2-store"),
        generation: 2,
        reason: RefreshReason::Expiry,
    };
    assert!(matches!(
        store.commit(&lease, &late).await.unwrap(),
        Commit::Superseded(_)
    ));
    assert_eq!(
        stored_refresh_token(&platform, "acc-store").await,
        (2, "s2".into())
    );

    stop.send(()).unwrap();
    running.await.unwrap();
    transport.close().await;
    delete_queues(&topo, &options).await;
    topo.cleanup().await;
    schema.cleanup().await;
}

/// While the database cannot apply an update, the persister holds the message and retries; it
/// is applied once the database is back, never dropped or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persister_holds_updates_through_a_database_outage() {
    use std::sync::atomic::Ordering;

    let schema = TestSchema::new().await;
    let platform = platform(&schema).await;
    let topo = Topology::new().await;
    let flow = format!("flow-{}", topo.id);
    platform
        .create_account("acc-outage", keys("o0"))
        .await
        .unwrap();
    step(&platform, &flow, "step_1", "acc-outage", json!({})).await;
    let options = persister_options(&topo);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(persister::run(platform.clone(), options.clone(), async {
        let _ = stopped.await;
    }));
    wait_for_queue(&topo, &options.queue).await;

    // The accounts table out of reach: every attempt fails as a database error.
    let pool = platform.store().pool();
    sqlx::query("ALTER TABLE accounts RENAME TO accounts_away")
        .execute(pool)
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("accountId".into(), js_string("acc-outage"));
    headers.insert("taskId".into(), js_string(flow.clone()));
    headers.insert("stepId".into(), js_string("step_1"));
    headers.insert("parentFingerprint".into(), js_string(fingerprint("o0")));
    topo.publish(
        &topo.rk("step_1", "update_keys"),
        &cipher().encrypt(
            json!({"keys": keys("o1")}).to_string().as_bytes(),
            Default::default(),
        ),
        BasicProperties::default().with_headers(headers),
    )
    .await;
    eventually("two failed attempts", Duration::from_secs(15), || async {
        platform.metrics().retried.load(Ordering::Relaxed) >= 2
    })
    .await;
    sqlx::query("ALTER TABLE accounts_away RENAME TO accounts")
        .execute(pool)
        .await
        .unwrap();
    eventually(
        "the held update applied",
        Duration::from_secs(20),
        || async { stored_refresh_token(&platform, "acc-outage").await.0 == 1 },
    )
    .await;
    assert_eq!(stored_refresh_token(&platform, "acc-outage").await.1, "o1");
    assert_eq!(
        deckhand_tests::broker::ready(&topo.channel, &options.dead_letter_queue()).await,
        0
    );

    stop.send(()).unwrap();
    running.await.unwrap();
    delete_queues(&topo, &options).await;
    topo.cleanup().await;
    schema.cleanup().await;
}
