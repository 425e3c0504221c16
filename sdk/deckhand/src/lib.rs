//! Deckhand: an SDK and runtime for elastic.io-style integration connectors. This is the crate
//! a connector depends on.
//!
//! It is a facade over the crates that do the work, plus the command line every connector
//! binary gets from [`main`]:
//!
//! * [`credentials`], [`auth`] (crate `deckhand-core`) — the keys of one credential and its
//!   OAuth2 token set; token refresh under every strategy behind one single-flight gate, and
//!   the authenticated HTTP client; [`retry`], the backoff and `Retry-After` every retry loop
//!   uses.
//! * [`component`] (`deckhand-component`) — the `component.json` model, schemas and validator.
//! * [`connector`] (`deckhand-connector`) — the `Connector` trait, its execution context and
//!   events; [`transport`], the broker-less transport (JSON lines and a credentials file).
//! * [`runtime`] (`deckhand-runtime`) — the elastic.io wire protocol over RabbitMQ.
//! * [`store`] (`deckhand-store`) — the PostgreSQL credential store a fleet shares.
//! * [`cli`] — [`main`]: `validate`, `verify`, `exec`, `component` and `run` for a connector.
//!
//! Depend on a lower crate directly to take less: `deckhand-core` alone gives a
//! `TokenManager` without lapin, jsonschema, clap or sqlx.
//!
//! Test utilities (`auth::ManualClock`, `auth::MemorySink::fail_next`,
//! `connector::CollectingEmitter`, raw AMQP access in `runtime`) are behind the `testing`
//! feature; enable it in `[dev-dependencies]`:
//! `deckhand = { version = "…", features = ["testing"] }`.

#![warn(missing_docs, unnameable_types)]

pub mod cli;

pub use deckhand_component as component;
pub use deckhand_connector as connector;
pub use deckhand_connector::transport;
pub use deckhand_core::{auth, credentials, retry};
pub use deckhand_runtime as runtime;
pub use deckhand_store as store;

pub use cli::main;
