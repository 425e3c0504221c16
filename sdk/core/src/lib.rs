//! Credentials and token refresh: the part of Deckhand that knows about OAuth2 and nothing
//! else.
//!
//! * [`credentials`] — the keys of one credential and its OAuth2 token set, with secrets
//!   redacted in `Debug`; a credentials file rewritten atomically.
//! * [`auth`] — the [`TokenManager`](auth::TokenManager): token refresh under every strategy
//!   behind one single-flight gate, the sinks rotated keys are persisted to before they are
//!   used, the [`CredentialStore`](auth::CredentialStore) trait a fleet shares tokens through,
//!   and the authenticated HTTP client.
//! * [`retry`] — bounded exponential backoff with jitter, and `Retry-After` in both forms: the
//!   one schedule every retry loop of Deckhand uses.
//!
//! This crate is what a program takes that only wants a correctly refreshed token. It knows
//! nothing of connectors, `component.json`, RabbitMQ or PostgreSQL: the connector API is
//! `deckhand-connector`, the wire protocol `deckhand-runtime`, the PostgreSQL store
//! `deckhand-store`, and connector authors depend on the `deckhand` facade.

#![warn(missing_docs, unnameable_types)]

pub mod auth;
pub mod credentials;
pub mod retry;
