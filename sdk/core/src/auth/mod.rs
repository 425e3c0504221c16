//! Access-token refresh under every strategy behind one single-flight gate, and the
//! authenticated HTTP client.
//!
//! * [`TokenEndpoint`] — a token URL and client, and the grant (`client_credentials` or
//!   `refresh_token`), spoken through the `oauth2` crate with provider quirks tolerated
//!   (`expires_in` as a string, JSON sent as `text/plain`).
//! * [`Strategy`] — when to refresh: [`PerCall`](Proactive::PerCall), on 401
//!   ([`Strategy::on_401`]), or [`BeforeExpiry`](Proactive::BeforeExpiry) (the default, combined
//!   with on-401).
//! * [`TokenManager`] — one per credential: the single-flight gate, rotation, persistence through
//!   a [`KeysSink`] before use, error classification, counters.
//! * [`BearerAuth`] — the `reqwest-middleware` middleware; [`TokenManager::http_client`] builds a
//!   ready client. It never sends the bearer to the token endpoint, however its path is spelled.
//!
//! No rotated refresh token is lost inside one process: every rotation is kept in memory until
//! the sink acknowledged it (and flushed at shutdown with [`TokenManager::flush`]); a
//! component's own keys go through the same gate ([`TokenManager::apply_keys`]); an answer lost
//! after the provider rotated the token ends in [`AuthError::RotationLost`] after one retry;
//! `Retry-After` and the minimum refresh interval pause token requests for the whole credential
//! ([`AuthError::RefreshPaused`] when a caller cannot wait).
//!
//! # Example
//! A client-credentials token for an API, refreshed before it expires:
//! ```
//! use deckhand_core::auth::{Grant, MemorySink, Strategy, TokenEndpoint, TokenManager};
//! use deckhand_core::credentials::Credentials;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut idp = mockito::Server::new_async().await;
//! let token = idp.mock("POST", "/token")
//!     .match_body(mockito::Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()))
//!     .with_header("content-type", "application/json")
//!     .with_body(r#"{"access_token":"at-1","token_type":"Bearer","expires_in":"3599"}"#)
//!     .expect(1)
//!     .create_async().await;
//! let api = idp.mock("GET", "/v1/users")
//!     .match_header("authorization", "Bearer at-1")
//!     .with_body("[]")
//!     .expect(2)
//!     .create_async().await;
//!
//! let endpoint = TokenEndpoint::new(&format!("{}/token", idp.url()), "app")?
//!     .client_secret("s3cret")
//!     .grant(Grant::ClientCredentials)
//!     .scope("https://graph.microsoft.com/.default");
//! let sink = MemorySink::new();
//! let manager = TokenManager::builder(Credentials::from_keys(json!({}))?, endpoint, sink.clone())
//!     .strategy(Strategy::default())
//!     .build();
//! let client = manager.http_client(&idp.url())?;
//! for _ in 0..2 {
//!     let status = client.get(format!("{}/v1/users", idp.url())).send().await?.status();
//!     assert_eq!(status, 200);
//! }
//! token.assert_async().await; // one token request for both calls
//! api.assert_async().await;
//! assert_eq!(sink.last().unwrap().generation, 1); // the new token was persisted first
//! # Ok(()) }
//! ```

mod clock;
mod endpoint;
mod error;
mod manager;
mod metrics;
mod middleware;
mod reason;
mod sink;
pub mod store;
mod strategy;

#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use endpoint::{ClientAuth, Grant, RetryPolicy, TokenEndpoint};
pub use error::{AuthError, FailureKind, PauseCause, TransientFailure};
pub use manager::{Authorization, TokenManager, TokenManagerBuilder};
pub use metrics::{AuthMetrics, RefreshAttempts};
pub use middleware::{BearerAuth, api_http_client};
pub use reason::RefreshReason;
pub use sink::{CallbackSink, KeysSink, KeysUpdate, MemorySink, SinkError};
pub use store::{AccountId, CredentialStore, HolderId};
pub use strategy::{DEFAULT_SKEW, OnRejection, Proactive, Strategy};
