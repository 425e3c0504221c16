//! Deckhand: an SDK and runtime for elastic.io-style integration connectors.
//!
//! * [`credentials`] — the keys of one credential and its OAuth2 token set, with secrets redacted.
//! * [`auth`] — token refresh under every strategy behind one single-flight gate, and the
//!   authenticated HTTP client.
//! * [`retry`] — bounded exponential backoff with jitter, and `Retry-After`, for every retry loop.
//! * [`component`] — the `component.json` schema and validator.
//! * [`connector`] — the `Connector` trait, its execution context and events.
//! * [`runtime`] — the elastic.io wire protocol over RabbitMQ.
//! * [`transport`] — the broker-less transport: JSON lines and a credentials file.

#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod component;
pub mod connector;
pub mod credentials;
pub mod retry;
pub mod runtime;
pub mod store;
pub mod transport;

pub use cli::main;
