//! # deckhand-emulator
//!
//! A local OAuth2 provider plus Salesforce-like and Microsoft Graph-like resource APIs, for
//! Deckhand's integration tests, benchmarks and offline quick start. It runs in-process on
//! `127.0.0.1` (a random port, never another address) and behaves the way real providers do
//! where it matters for token refresh:
//!
//! * **Microsoft identity platform** (`POST /{tenant}/oauth2/v2.0/token`): `client_credentials`
//!   and `refresh_token` grants, JWT access tokens, `expires_in` as a number, a string
//!   (AAD v1 style) or absent ([`ExpiresInFormat`]).
//! * **Salesforce** (`POST /services/oauth2/token`): `refresh_token` (and `client_credentials`)
//!   grants, responses with `instance_url`, `id`, `issued_at`, `signature` and **no
//!   `expires_in`**; expiry only shows up as 401 `INVALID_SESSION_ID`.
//! * **Refresh token rotation** ([`RefreshRotation`]): by default refresh tokens are single-use
//!   and replaying a used one answers `invalid_grant` **and revokes the whole token family**,
//!   exactly what catches clients that refresh twice concurrently instead of single-flight.
//! * **Fault injection** ([`ResourceFault`], [`TokenFault`]), forced expiry and revocation, and
//!   exact [`Counters`] to assert how many refreshes a client really did.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use deckhand_emulator::{Emulator, EmulatorConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::start(EmulatorConfig {
//!     token_lifetime: Duration::from_secs(5),
//!     ..EmulatorConfig::default()
//! })
//! .await?;
//! let client = emulator.client();
//! let http = reqwest::Client::new();
//!
//! // Seed a grant as if the user had completed the authorization-code flow, then refresh it.
//! let refresh_token = emulator.issue_refresh_token(&client.id);
//! let tokens: serde_json::Value = http
//!     .post(emulator.microsoft_token_url())
//!     .basic_auth(&client.id, Some(&client.secret))
//!     .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str())])
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(tokens["expires_in"], 5);
//!
//! // Call the Graph-like API with the access token.
//! let me: serde_json::Value = http
//!     .get(format!("{}/me", emulator.graph_url()))
//!     .bearer_auth(tokens["access_token"].as_str().unwrap_or_default())
//!     .send()
//!     .await?
//!     .json()
//!     .await?;
//! assert_eq!(me["userPrincipalName"], "user1@deckhand.test");
//!
//! // Refresh tokens are single-use: replaying the spent one answers `invalid_grant` and
//! // revokes the whole family, including the access token issued above.
//! let replay = http
//!     .post(emulator.microsoft_token_url())
//!     .basic_auth(&client.id, Some(&client.secret))
//!     .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str())])
//!     .send()
//!     .await?;
//! assert_eq!(replay.status(), 400);
//! let counters = emulator.counters();
//! assert_eq!((counters.successful_refreshes, counters.family_revocations), (1, 1));
//! emulator.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## Endpoints
//!
//! Token endpoints (form-encoded `POST`; client authentication with HTTP Basic or
//! `client_id`/`client_secret` in the body):
//!
//! | Path | Grants |
//! | --- | --- |
//! | `/{tenant}/oauth2/v2.0/token` | `client_credentials` (`scope` required, `…/.default`), `refresh_token` (optional `scope`) |
//! | `/services/oauth2/token` | `refresh_token`, `client_credentials` |
//!
//! Errors are RFC 6749 JSON: `invalid_request` (missing/duplicate parameters, wrong content
//! type), `invalid_client` (401), `invalid_grant`, `unsupported_grant_type`, `invalid_scope`.
//!
//! Salesforce-like resources (Bearer token from `/services/oauth2/token`; 401 body
//! `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`):
//!
//! | Method and path | |
//! | --- | --- |
//! | `GET /services/data/` | API versions (cheap credential check) |
//! | `GET /services/data/v{version}` | resources of a version |
//! | `GET /services/data/v{version}/query?q=SOQL` (also `query/`, `queryAll`) | query, paged by [`EmulatorConfig::salesforce_page_size`] or `Sforce-Query-Options: batchSize=N`; SOQL subset below |
//! | `GET /services/data/v{version}/query/{locator}` | next page (`nextRecordsUrl`) |
//! | `POST /services/data/v{version}/sobjects/{Object}` | create → 201 `{"id","success":true,"errors":[]}` |
//! | `GET /services/data/v{version}/sobjects/{Object}/{id}` | record or 404 `NOT_FOUND` |
//! | `PATCH /services/data/v{version}/sobjects/{Object}/{id}` | update → 204 |
//! | `GET /services/data/v{version}/sobjects/{Object}/{Field}/{value}` | lookup by external id (300 if several) |
//! | `PATCH /services/data/v{version}/sobjects/{Object}/{Field}/{value}` | upsert → 201 created / 204 updated |
//! | `GET /services/oauth2/userinfo`, `GET /id/{org}/{user}` | the integration user |
//!
//! SOQL subset: `SELECT f1, f2 FROM Object [WHERE f op literal [AND ...]] [ORDER BY f
//! [ASC|DESC]] [LIMIT n] [OFFSET n]` with `op` in `= != <> < <= > >=`; `OR`, functions,
//! relationship fields and date literals answer 400 `MALFORMED_QUERY`. Seeded objects:
//! `Account` and `Contact` (with `Id`, `Name`, `External_Id__c`, `CreatedDate`,
//! `LastModifiedDate`, `SystemModstamp`, ...); `POST` creates other objects on the fly.
//!
//! Graph-like resources (Bearer token from `/{tenant}/oauth2/v2.0/token`; 401 body
//! `{"error":{"code":"InvalidAuthenticationToken",...}}`):
//!
//! | Method and path | |
//! | --- | --- |
//! | `GET /v1.0/me` | signed-in user (delegated tokens only; app tokens get 400) |
//! | `GET /v1.0/users` | users, `$top`/`$select`/`$filter`/`$orderby`, `@odata.nextLink` paging |
//! | `GET /v1.0/users/{id-or-upn}` | one user or 404 `Request_ResourceNotFound` |
//! | `POST /v1.0/users/{id}/sendMail`, `POST /v1.0/me/sendMail` | 202; see [`Emulator::sent_mail`] |
//! | `GET /v1.0/users/{id}/messages`, `GET /v1.0/me/messages` (and `…/mailFolders/{folder}/messages`) | mailbox, newest first by default; `$filter=receivedDateTime gt <ISO>`, `$orderby`, `$top`, paging |
//!
//! Anything else answers 404 `{"error":"not_found"}`.

#![warn(missing_docs)]
#![allow(
    clippy::result_large_err,
    reason = "handlers bail out early with a ready-made `Response`; its size does not matter here"
)]

mod config;
mod counters;
mod faults;
mod filter;
mod graph;
mod guard;
mod jwt;
mod oauth;
mod respond;
mod salesforce;
mod server;
mod soql;
mod state;
mod time;
mod tokens;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    AccessTokenFormat, EmulatorConfig, ExpiresInFormat, OAuthClient, RefreshRotation,
};
pub use counters::Counters;
pub use faults::{ResourceFault, TokenFault};
pub use graph::{NewMessage, SentMail};
pub use jwt::peek_claims;

use counters::bump;
use state::{Shared, lock};
use tokens::Family;

/// Salesforce API version used by the URL helpers (any `vNN.N` is accepted by the server).
pub const SALESFORCE_API_VERSION: &str = "v60.0";

/// A running emulator. Stops when dropped or on [`Emulator::shutdown`].
///
/// All methods take `&self` and are safe to call from any thread while requests are served,
/// so a test can share the handle (e.g. in an `Arc`) and flip faults at runtime.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds `127.0.0.1:0` and serves in a background tokio task.
    ///
    /// Must be called within a tokio runtime. Fails if the configuration is invalid (no
    /// clients, a zero page size) or the socket cannot be bound.
    pub async fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        config
            .validate()
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut jwt_key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut jwt_key);
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            jwt_key,
            tokens: Mutex::default(),
            faults: Mutex::default(),
            counters: Default::default(),
            salesforce: Mutex::new(salesforce::SalesforceStore::seeded(
                config.seed_accounts,
                config.seed_contacts,
            )),
            graph: Mutex::new(graph::GraphStore::seeded(
                config.seed_users,
                config.seed_messages_per_user,
            )),
            config,
        });
        let app = server::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                // Either an explicit stop or the handle being dropped ends the server.
                let _ = stopped.await;
            };
            // Serving only fails on listener errors, which end the emulator either way.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(Emulator {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the server, waiting (up to 5 s) for in-flight requests to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    // ---- addresses ---------------------------------------------------------------------------

    /// `http://127.0.0.1:PORT` (no trailing slash). Also the Salesforce `instance_url`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration the emulator runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// The first configured client (`client_id` / `client_secret`).
    pub fn client(&self) -> &OAuthClient {
        // `start` rejects configurations without clients.
        &self.shared.config.clients[0]
    }

    /// `{base}/{tenant_id}/oauth2/v2.0/token` for the configured tenant.
    pub fn microsoft_token_url(&self) -> String {
        self.microsoft_token_url_for(&self.shared.config.tenant_id)
    }

    /// `{base}/{tenant}/oauth2/v2.0/token` for any tenant (echoed in the `tid` claim).
    pub fn microsoft_token_url_for(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base_url())
    }

    /// `{base}/v1.0` — the Graph-like API root.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.base_url())
    }

    /// `{base}/services/oauth2/token`.
    pub fn salesforce_token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.base_url())
    }

    /// `{base}/services/data/` — the versions list (cheap credential check).
    pub fn salesforce_versions_url(&self) -> String {
        format!("{}/services/data/", self.base_url())
    }

    /// `{base}/services/data/v60.0` — the REST API root for [`SALESFORCE_API_VERSION`].
    pub fn salesforce_data_url(&self) -> String {
        format!("{}/services/data/{SALESFORCE_API_VERSION}", self.base_url())
    }

    /// `{base}/services/oauth2/userinfo`.
    pub fn salesforce_userinfo_url(&self) -> String {
        format!("{}/services/oauth2/userinfo", self.base_url())
    }

    // ---- tokens ------------------------------------------------------------------------------

    /// Seeds a new grant for `client_id`, as if the first seeded Graph user had completed the
    /// authorization-code flow, and returns its refresh token. It works on both token
    /// endpoints; each call starts a new token family.
    pub fn issue_refresh_token(&self, client_id: &str) -> String {
        let user = lock(&self.shared.graph)
            .default_user_id()
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".to_owned());
        self.issue_family_refresh_token(client_id, &user)
    }

    /// Like [`Emulator::issue_refresh_token`] for a specific Graph user (id or UPN); `None` if
    /// no such user exists.
    pub fn issue_refresh_token_for_user(&self, client_id: &str, user: &str) -> Option<String> {
        let user = lock(&self.shared.graph)
            .user(user)
            .and_then(|u| u.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)?;
        Some(self.issue_family_refresh_token(client_id, &user))
    }

    fn issue_family_refresh_token(&self, client_id: &str, user_id: &str) -> String {
        let mut tokens = lock(&self.shared.tokens);
        let family = tokens.new_family(Family {
            client_id: client_id.to_owned(),
            subject: user_id.to_owned(),
            scope: self.shared.config.delegated_scope.clone(),
            delegated: true,
            revoked: false,
        });
        tokens.new_refresh_token(&family)
    }

    /// The family id (`fam-000001`, also the JWT `fid` claim) of a refresh or access token.
    pub fn family_of(&self, token: &str) -> Option<String> {
        lock(&self.shared.tokens).family_of(token)
    }

    /// Whether `refresh_token` would be accepted by the next `refresh_token` grant: issued by
    /// this emulator, not spent (strict rotation), its family not revoked. Tests use it to
    /// check that the refresh token a client persisted last is the live one.
    pub fn is_refresh_token_live(&self, refresh_token: &str) -> bool {
        lock(&self.shared.tokens).is_refresh_live(refresh_token)
    }

    /// Whether a family has been revoked (`None` if unknown).
    pub fn is_family_revoked(&self, family_id: &str) -> Option<bool> {
        lock(&self.shared.tokens)
            .family(family_id)
            .map(|family| family.revoked)
    }

    /// Revokes every refresh and access token of a family. Returns `false` if the family is
    /// unknown or already revoked. Counts as a family revocation.
    pub fn revoke_family(&self, family_id: &str) -> bool {
        let revoked = lock(&self.shared.tokens).revoke_family(family_id);
        if revoked {
            bump(&self.shared.counters.family_revocations);
        }
        revoked
    }

    /// Revokes the family of `token` (a refresh or access token).
    pub fn revoke_family_of(&self, token: &str) -> bool {
        self.family_of(token)
            .is_some_and(|family| self.revoke_family(&family))
    }

    /// Makes every access token issued so far expired (their JWT `exp` is unchanged, so
    /// clients still believe them valid until the API answers 401). Refresh tokens are
    /// unaffected; tokens issued afterwards get the normal lifetime.
    pub fn expire_access_tokens(&self) {
        lock(&self.shared.tokens).expire_all_access();
    }

    // ---- faults ------------------------------------------------------------------------------

    /// The next `n` resource requests (Salesforce data and Graph) answer `fault` instead of
    /// being served; faults are served before the Bearer token is checked. Faults queue up: calling this twice serves the first batch, then the
    /// second.
    pub fn fail_next_resource_requests(&self, n: usize, fault: ResourceFault) {
        lock(&self.shared.faults)
            .resource
            .extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` token requests (either token endpoint) answer `fault`. Faults are served
    /// before the request is validated (client authentication included) and never touch token
    /// state: an injected `InvalidGrant` does not consume the presented refresh token.
    pub fn fail_next_token_requests(&self, n: usize, fault: TokenFault) {
        lock(&self.shared.faults)
            .token
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Delays every token request by `latency` (zero turns it off), on top of queued faults.
    pub fn set_token_latency(&self, latency: Duration) {
        lock(&self.shared.faults).token_latency = latency;
    }

    /// Drops every pending injected fault.
    pub fn clear_faults(&self) {
        let mut faults = lock(&self.shared.faults);
        faults.resource.clear();
        faults.token.clear();
    }

    // ---- counters ----------------------------------------------------------------------------

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    /// Sets every counter back to zero.
    pub fn reset_counters(&self) {
        self.shared.counters.reset();
    }

    // ---- data --------------------------------------------------------------------------------

    /// Delivers a message into the mailbox of a Graph user (id or UPN), e.g. for
    /// polling-trigger tests. Returns the message id, or `None` if there is no such user.
    pub fn add_message(&self, user: &str, message: NewMessage) -> Option<String> {
        lock(&self.shared.graph).add_message(user, &message)
    }

    /// Mails accepted by `sendMail`, oldest first.
    pub fn sent_mail(&self) -> Vec<SentMail> {
        lock(&self.shared.graph).sent()
    }

    /// The Graph users (as returned by `GET /v1.0/users/{id}`).
    pub fn graph_users(&self) -> Vec<Value> {
        lock(&self.shared.graph).users()
    }

    /// Inserts a Salesforce record (any object name; the object is created if needed) and
    /// returns its id. Unlike the REST API this accepts `CreatedDate`/`LastModifiedDate`
    /// values, so tests can place records in time; absent ones are set to now.
    pub fn insert_salesforce_record(&self, object: &str, fields: Map<String, Value>) -> String {
        lock(&self.shared.salesforce).insert(object, fields)
    }

    /// All records of a Salesforce object (with `attributes`), in insertion order.
    pub fn salesforce_records(&self, object: &str) -> Vec<Value> {
        lock(&self.shared.salesforce).records(object, SALESFORCE_API_VERSION)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
