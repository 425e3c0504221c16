//! The elastic.io wire protocol over RabbitMQ ("Sailor"), and the worker that speaks it.
//!
//! This crate turns a [`Connector`](deckhand_connector::Connector) into a platform worker. It
//! is the only Deckhand crate that depends on lapin. It does not define the connector API
//! (`deckhand-connector`), refresh tokens (`deckhand-core`) or parse a command line (the
//! `deckhand` crate's `deckhand::main` calls [`run_worker`]).
//!
//! A connector binary becomes a platform worker: it reads its settings from `ELASTICIO_*`
//! variables, consumes its step's queue, decrypts each message, runs the component, and
//! turns what the component emits into publishes on the flow's exchange. Every step of a flow
//! may be written in another language (Node, Java), so the bytes on the wire must match the
//! official Node runtime exactly:
//!
//! * **Messages** are JSON envelopes `{id, body, attachments, headers, metadata, passthrough?}`
//!   encrypted with AES-256-CBC (key = SHA-256 of the password, a static 16-byte IV);
//!   protocol version 1 sends the ciphertext as base64 text, version 2 raw
//!   ([`crypto`], [`protocol::Message`]).
//! * **Routing**: everything is published to one exchange (`ELASTICIO_PUBLISH_MESSAGES_TO`):
//!   data to the data routing key (or a message's `x-eio-routing-key`), errors to the error
//!   key as a plain-JSON envelope `{error, errorInput}` of base64 ciphertexts (and to
//!   `reply_to` for request-reply flows), rebounds — the input republished with an
//!   exponentially growing `expiration` — to the rebound key, snapshots as plain JSON to the
//!   snapshot key, HTTP replies to the caller's `reply_to` key ([`protocol::OutgoingContext`]).
//! * **Headers** carry the step's identity and the message lineage (`messageId`,
//!   `parentMessageId`, `threadId`, `start`/`end`, …), typed as amqplib types them.
//! * **Acknowledgement**: the input is acked only after every publish of its processing was
//!   confirmed by the broker, and rejected without requeue if an error was emitted; the
//!   broker redelivers only what was in flight on a connection that died, and
//!   [`dedup::Deduplicator`] keeps such redeliveries from running twice ([`amqp`]).
//!
//! Modules: [`config`] (environment), [`crypto`], [`protocol`] (pure: envelope, headers,
//! every outgoing event), [`amqp`] (lapin transport), [`dedup`], [`metrics`] (Prometheus
//! metrics and health endpoints, off unless `DECKHAND_METRICS_ADDR` is set).
//!
//! The shape of a worker loop (the connector executor plugs in where the component runs):
//!
//! ```no_run
//! use std::sync::Arc;
//! use deckhand_runtime::amqp::{Settlement, Transport, TransportOptions};
//! use deckhand_runtime::config::RuntimeConfig;
//! use deckhand_runtime::dedup::{Admission, Deduplicator};
//! use deckhand_runtime::protocol::{ErrorInfo, Message, Outgoing, OutgoingContext, StepFlags};
//!
//! # async fn worker() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = Arc::new(RuntimeConfig::from_env()?);
//! let transport = Transport::connect(TransportOptions::from_config(&cfg)).await?;
//! let publisher = transport.publisher();
//! let dedup = Deduplicator::default();
//! let mut consumer = transport.consume(&cfg.amqp.listen_messages_on).await?;
//! while let Some(delivery) = consumer.next().await {
//!     let Admission::Process(ticket) = dedup.admit(delivery).await else { continue };
//!     let incoming = ticket.delivery().incoming.clone();
//!     let Ok(input) = incoming.decode(&cfg.cipher, cfg.input_format) else {
//!         dedup.finish(ticket, Settlement::Reject).await.ok(); // undecryptable: reject
//!         continue;
//!     };
//!     let ctx = OutgoingContext::new(cfg.clone(), incoming, &input, StepFlags::default());
//!     // Run the component; here it just echoes its input body.
//!     let events = vec![Outgoing::Data(Message::new(input.body))];
//!     let mut outcome = Settlement::Ack;
//!     for event in events {
//!         let publications = match ctx.publications(event) {
//!             Ok(p) => p,
//!             // E.g. too large: becomes an error event, as in Sailor.
//!             Err(e) => ctx.publications(Outgoing::Error(ErrorInfo::from_error(&e)))?,
//!         };
//!         for p in &publications {
//!             if p.kind == deckhand_runtime::protocol::PublicationKind::Error {
//!                 outcome = Settlement::Reject;
//!             }
//!             publisher.publish(p).await?;
//!         }
//!     }
//!     if let Err(e) = dedup.finish(ticket, outcome).await {
//!         tracing::warn!(error = %e, "could not settle; the broker will redeliver");
//!     }
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs, unnameable_types)]

/// Declares a function public with the `testing` feature and crate-private without it: the
/// integration tests and benchmarks speak raw AMQP (lapin's types), a connector never does.
macro_rules! testing_pub {
    ($(#[$meta:meta])* fn $($item:tt)*) => {
        #[cfg(feature = "testing")]
        $(#[$meta])*
        pub fn $($item)*
        #[cfg(not(feature = "testing"))]
        $(#[$meta])*
        #[allow(dead_code)]
        pub(crate) fn $($item)*
    };
}

pub mod amqp;
pub mod config;
pub mod crypto;
pub mod dedup;
pub mod metrics;
pub mod protocol;
pub mod worker;

pub use config::{LaunchConfig, RuntimeConfig};
pub use crypto::{MessageCipher, ProtocolVersion};
pub use protocol::{Message, Outgoing, OutgoingContext, Publication};
pub use worker::run_worker;
