//! The updateKeys persister: consumes the queue the workers' update-keys routing key leads to
//! and applies every message with fencing ([`Platform::apply_update`]).
//!
//! * The queue (durable, quorum by default) and its bindings are declared by the persister;
//!   so is the dead-letter queue `<queue>.dead`.
//! * Each message: the step from the `taskId`/`stepId` headers (it must be known and bound to
//!   the `accountId` header), the body decrypted with the step's message-crypto settings
//!   (`protocolVersion` header), `{"keys": {…}}` inside, lineage from the `parentFingerprint`
//!   and `worker` headers.
//! * A message is acked only after the database commit. A malformed one is published to the
//!   dead-letter queue (with a confirm) with header `x-deckhand-dead-reason`, then acked. When
//!   the database is unavailable the message is held (unacked) and retried with backoff.
//! * Messages are handled one at a time in queue order, so one worker's updates are applied
//!   in the order it published them.
//! * The connection is re-established (with backoff) whenever it drops.

use std::sync::atomic::Ordering;
use std::time::Duration;

use deckhand_runtime::crypto::ProtocolVersion;
use deckhand_runtime::protocol::{header, header_number, header_string};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::{KeysUpdateIn, Platform, PlatformError};

/// The header naming why a message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "x-deckhand-dead-reason";

/// Settings of the persister.
#[derive(Clone, Debug)]
pub struct PersisterOptions {
    /// The broker (`amqp://…`).
    pub amqp_uri: String,
    /// The queue to consume (declared if missing).
    pub queue: String,
    /// `(exchange, routing key)` bindings of the queue: the exchange the workers publish to
    /// (`ELASTICIO_PUBLISH_MESSAGES_TO`) and their update-keys routing key(s). Exchanges are
    /// not declared (the platform's topology owns them).
    pub bindings: Vec<(String, String)>,
    /// Declare the queues as quorum queues (replicated). Default true.
    pub quorum: bool,
    /// Messages fetched ahead (they are still handled one at a time).
    pub prefetch: u16,
}

impl PersisterOptions {
    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

fn redact(uri: &str) -> String {
    deckhand_runtime::config::AmqpUri::parse(uri)
        .map(|u| u.redacted())
        .unwrap_or_else(|_| "[unparseable AMQP URI]".into())
}

/// Runs the persister until `stop` completes, reconnecting when the broker goes away.
pub async fn run(
    platform: Platform,
    options: PersisterOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            result = session(&platform, &options) => match result {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(broker = %redact(&options.amqp_uri), error = %e, queue = %options.queue, "persister stopped; retrying");
                }
            },
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn declare(channel: &Channel, options: &PersisterOptions) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    if options.quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // The dead-letter queue first: once the main queue exists, so does its dead-letter queue.
    for queue in [options.dead_letter_queue(), options.queue.clone()] {
        channel
            .queue_declare(queue.into(), durable, args.clone())
            .await?;
    }
    for (exchange, routing_key) in &options.bindings {
        channel
            .queue_bind(
                options.queue.clone().into(),
                exchange.clone().into(),
                routing_key.clone().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// One connection's worth of consuming; returns when the connection or channel dies.
async fn session(platform: &Platform, options: &PersisterOptions) -> Result<(), String> {
    let conn = Connection::connect(
        &options.amqp_uri,
        ConnectionProperties::default().with_connection_name("deckhand-platform-persister".into()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    declare(&channel, options).await.map_err(|e| {
        format!("declaring and binding the queues (does every --bind exchange exist?): {e}")
    })?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(options.prefetch.max(1), BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            options.queue.clone().into(),
            "deckhand-platform".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(queue = %options.queue, "persister consuming");
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        handle(platform, options, &channel, delivery).await?;
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

async fn handle(
    platform: &Platform,
    options: &PersisterOptions,
    channel: &Channel,
    delivery: lapin::message::Delivery,
) -> Result<(), String> {
    // A database outage is waited out holding the message (unacked), never by returning it:
    // a returned message counts towards a quorum queue's delivery limit, past which the
    // broker would drop it, and it would overtake the updates behind it.
    let mut pause = Duration::from_millis(200);
    let dead = loop {
        match process(platform, &delivery).await {
            Ok(()) => break None,
            Err(Failure::Malformed(reason)) => break Some(reason),
            Err(Failure::Transient(reason)) => {
                tracing::warn!(reason = %reason, retry_in = ?pause, "updateKeys not applied yet; holding it and retrying");
                platform.metrics().retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    };
    if let Some(reason) = dead {
        {
            tracing::warn!(reason = %reason, "updateKeys message dead-lettered");
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                DEAD_REASON_HEADER.into(),
                AMQPValue::LongString(LongString::from(reason.as_str())),
            );
            let properties = delivery
                .properties
                .clone()
                .with_headers(headers)
                .with_delivery_mode(2);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    options.dead_letter_queue().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            if !confirm.is_ack() {
                return Err("the broker refused the dead-letter publish".into());
            }
            platform
                .metrics()
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

enum Failure {
    Malformed(String),
    Transient(String),
}

impl From<PlatformError> for Failure {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::Database(_)
            | PlatformError::Store(deckhand_core::auth::store::StoreError::Unavailable(_)) => {
                Self::Transient(e.to_string())
            }
            other => Self::Malformed(other.to_string()),
        }
    }
}

async fn process(platform: &Platform, delivery: &lapin::message::Delivery) -> Result<(), Failure> {
    let empty = FieldTable::default();
    let headers = delivery.properties.headers().as_ref().unwrap_or(&empty);
    let text = |name: &str| header_string(headers, name).filter(|v| !v.is_empty());
    let required = |name: &str| {
        text(name).ok_or_else(|| Failure::Malformed(format!("header `{name}` is missing")))
    };
    let account = required(header::ACCOUNT_ID)?;
    let flow = required(header::TASK_ID)?;
    let step = required(header::STEP_ID)?;
    // What the database would refuse must be refused here: a database error is waited out,
    // so a message that always causes one would hold up the queue.
    for name in [
        header::ACCOUNT_ID,
        header::TASK_ID,
        header::STEP_ID,
        header::WORKER,
    ] {
        if text(name).is_some_and(|v| v.len() > 200 || v.chars().any(char::is_control)) {
            return Err(Failure::Malformed(format!(
                "header `{name}`: use at most 200 printable characters"
            )));
        }
    }
    let (bound, cipher) = platform.step_binding(&flow, &step).await?;
    if bound.as_deref() != Some(account.as_str()) {
        return Err(Failure::Malformed(format!(
            "step `{flow}/{step}` is not bound to account `{account}`"
        )));
    }
    let cipher = cipher.ok_or_else(|| {
        Failure::Malformed(format!(
            "step `{flow}/{step}` has no message-crypto settings and the service has no default"
        ))
    })?;
    let version = match header_number(headers, header::PROTOCOL_VERSION) {
        None => ProtocolVersion::V1,
        Some(n) => ProtocolVersion::from_number(n as i64).ok_or_else(|| {
            Failure::Malformed(format!(
                "header `{}`: unknown version {n}",
                header::PROTOCOL_VERSION
            ))
        })?,
    };
    let body: Value = cipher
        .decrypt_json(&delivery.data, version)
        .map_err(|e| Failure::Malformed(format!("body: {e}")))?;
    let keys = match body {
        Value::Object(mut map) => map
            .remove("keys")
            .filter(Value::is_object)
            .ok_or_else(|| Failure::Malformed("body: no `keys` object".into()))?,
        _ => return Err(Failure::Malformed("body: not a JSON object".into())),
    };
    let parent = text(header::PARENT_FINGERPRINT);
    if parent
        .as_deref()
        .is_some_and(|p| p.len() != 32 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(Failure::Malformed(format!(
            "header `{}`: expected 32 hex digits",
            header::PARENT_FINGERPRINT
        )));
    }
    let update = KeysUpdateIn {
        keys,
        parent_fingerprint: parent,
        worker: text(header::WORKER).unwrap_or_else(|| format!("amqp:{flow}/{step}")),
        worker_generation: header_number(headers, header::GENERATION).map(|g| g as u64),
    };
    let outcome = platform.apply_update(&account, &update).await?;
    tracing::debug!(account = %account, outcome = outcome.name(), generation = outcome.generation(), "updateKeys handled");
    Ok(())
}
