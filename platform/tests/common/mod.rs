//! What the platform's tests share: a platform on a private schema, its API on a free port, a
//! persister on a private queue, and keys with refresh tokens.
#![allow(dead_code)]

use std::time::Duration;

use deckhand_core::auth::{AccountId, CredentialStore};
use deckhand_core::credentials::Credentials;
use deckhand_platform::persister::PersisterOptions;
use deckhand_platform::{CryptoSettings, Platform, StepDefinition};
use deckhand_runtime::crypto::MessageCipher;
use deckhand_tests::broker::{Topology, amqp_uri};
use deckhand_tests::postgres::TestSchema;
use serde_json::{Value, json};

pub const PASSWORD: &str = "testCryptoPassword";
pub const IV: &str = "iv=any16_symbols";

pub fn cipher() -> MessageCipher {
    MessageCipher::new(PASSWORD, IV).unwrap()
}

/// Keys holding refresh token `rt` (and an access token derived from it).
pub fn keys(rt: &str) -> Value {
    json!({"oauth": {"access_token": format!("at-{rt}"), "refresh_token": rt}, "prodEnv": "login"})
}

pub fn credentials(rt: &str) -> Credentials {
    Credentials::from_keys(keys(rt)).unwrap()
}

pub fn fingerprint(rt: &str) -> String {
    deckhand_store::refresh_token_fingerprint(&credentials(rt)).unwrap()
}

pub async fn platform(schema: &TestSchema) -> Platform {
    Platform::connect(&schema.url, schema.keys(), &schema.schema, Some(cipher()))
        .await
        .expect("the platform connects")
}

/// The refresh token stored for `account`.
pub async fn stored_refresh_token(platform: &Platform, account: &str) -> (u64, String) {
    let stored = platform
        .store()
        .load(&AccountId::new(account).unwrap())
        .await
        .unwrap()
        .expect("the account exists");
    let rt = stored.credentials.to_keys()["oauth"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (stored.generation, rt)
}

/// A step `flow/step` bound to `account`, with the test crypto settings.
pub async fn step(platform: &Platform, flow: &str, step: &str, account: &str, config: Value) {
    let Value::Object(config) = config else {
        panic!("config must be an object")
    };
    platform
        .put_step(
            flow,
            step,
            StepDefinition {
                function: Some("process".into()),
                account_id: Some(account.into()),
                config,
                crypto: Some(CryptoSettings {
                    password: PASSWORD.into(),
                    iv: IV.into(),
                }),
                ..StepDefinition::default()
            },
        )
        .await
        .expect("the step is saved");
}

/// Persister settings on a private queue bound to the topology's update-keys routing key.
pub fn persister_options(topo: &Topology) -> PersisterOptions {
    PersisterOptions {
        amqp_uri: amqp_uri(),
        queue: topo.name("platform-keys"),
        bindings: vec![(topo.exchange.clone(), topo.rk("step_1", "update_keys"))],
        quorum: true,
        prefetch: 8,
    }
}

/// Deletes the persister's queues.
pub async fn delete_queues(topo: &Topology, options: &PersisterOptions) {
    for q in [options.queue.clone(), options.dead_letter_queue()] {
        let _ = topo
            .channel
            .queue_delete(q.into(), Default::default())
            .await;
    }
}

/// Polls `check` every 50 ms until it is true or `timeout` passed.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the persister consumes `queue` (declared, bound, consumer attached). A failed
/// passive declare closes its channel, so each probe uses a channel of its own.
pub async fn wait_for_queue(topo: &Topology, queue: &str) {
    eventually(
        &format!("queue {queue}"),
        Duration::from_secs(30),
        || async {
            let Ok(channel) = topo.conn.create_channel().await else {
                return false;
            };
            let found = channel
                .queue_declare(
                    queue.to_owned().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .is_ok_and(|q| q.consumer_count() > 0);
            let _ = channel.close(200, "OK".into()).await;
            found
        },
    )
    .await;
}
