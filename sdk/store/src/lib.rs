//! The PostgreSQL [`CredentialStore`]: one row per account shared by every worker, so a fleet
//! refreshes each credential once per expiry and no rotation is lost to a crash.
//!
//! This crate is the PostgreSQL implementation of `deckhand-core`'s
//! [`CredentialStore`] and nothing more: the trait, the
//! lease protocol's client side and token refresh live in `deckhand-core`; the runtime attaches
//! this store when `DECKHAND_STORE_URL` is set.
//!
//! * Keys are encrypted at rest with AES-256-GCM ([`KeyRing`], key from
//!   [`STORE_KEYS_ENV`], with a key id so keys can be rotated).
//! * The lease (holder, epoch, expiry) lives in the row and is judged by the database's clock;
//!   taking it also records the intent, in one statement.
//! * A rotation is committed with a compare-and-set on the generation, in one transaction with
//!   a row of the `keys_outbox` table, which [`PgCredentialStore::relay_outbox`] publishes (with
//!   publisher confirms, through the caller's publisher) and then deletes.
//! * Every change is announced with `NOTIFY`; waiters also poll, since notifications sent while
//!   the listener was disconnected are lost.
//! * Connections are taken from a pool for one statement or transaction at a time; none is held
//!   while the token endpoint is called.
//!
//! The schema is created by embedded migrations ([`sqlx::migrate!`]) in the schema given in
//! [`StoreOptions::schema`] (default `deckhand`).
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use deckhand_core::auth::{AccountId, CredentialStore, HolderId, MemorySink, TokenEndpoint, TokenManager};
//! use deckhand_core::credentials::Credentials;
//! use deckhand_store::{KeyRing, PgCredentialStore, StoreOptions};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgCredentialStore::connect(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     KeyRing::from_env()?,
//!     StoreOptions::default(),
//! )
//! .await?;
//! let account = AccountId::new("5559edd38968ec0736000003")?;
//! let seeded = Credentials::from_keys(json!({"oauth": {"refresh_token": "1//0g..."}}))?;
//! // The first worker seeds the row; every later one gets what is stored.
//! let stored = store.seed(&account, &seeded, 0).await?;
//! let endpoint = TokenEndpoint::new("https://login.example.com/oauth2/token", "client-id")?;
//! let manager = TokenManager::builder(stored.credentials, endpoint, MemorySink::new())
//!     .generation(stored.generation)
//!     .store(Arc::new(store), account, HolderId::for_this_process())
//!     .build();
//! let _authorization = manager.authorization().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, unnameable_types)]

mod crypto;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use crypto::{KeyRing, STORE_KEYS_ENV, Sealed};

use deckhand_core::auth::store::{
    AbandonedIntent, Acquire, Commit, CredentialState, CredentialStore, Lease, Release, StoreError,
    StoredCredential,
};
use deckhand_core::auth::{AccountId, HolderId, KeysUpdate, RefreshReason};
use deckhand_core::credentials::Credentials;

/// The environment variable with the credential store's URL (`postgres://…`); when set, the
/// runtime keeps its credential in the store.
pub const STORE_URL_ENV: &str = "DECKHAND_STORE_URL";

/// Settings of a [`PgCredentialStore`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The PostgreSQL schema holding the tables (created if missing). Default `deckhand`.
    pub schema: String,
    /// How long a lease lasts. Default 15 s; the token request gets 60 % of it.
    pub lease: Duration,
    /// Pool size (plus one connection for notifications). Default 4.
    pub max_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            schema: "deckhand".into(),
            lease: Duration::from_secs(15),
            max_connections: 4,
        }
    }
}

/// Counters of one [`PgCredentialStore`] handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Leases taken.
    pub leases_taken: u64,
    /// Leases taken over from a holder that left an intent.
    pub takeovers: u64,
    /// Rotations committed.
    pub commits: u64,
    /// Commits whose compare-and-set failed (the holder adopted the stored keys).
    pub commits_superseded: u64,
    /// Accounts this handle marked `rotation_lost`.
    pub rotations_lost: u64,
    /// Accounts this handle marked `needs_reauth`.
    pub marked_needs_reauth: u64,
    /// Outbox rows published and deleted.
    pub outbox_published: u64,
}

#[derive(Default)]
struct Counters {
    leases_taken: AtomicU64,
    takeovers: AtomicU64,
    commits: AtomicU64,
    commits_superseded: AtomicU64,
    rotations_lost: AtomicU64,
    marked_needs_reauth: AtomicU64,
    outbox_published: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A rotation waiting in the outbox to be published as `updateKeys`.
#[derive(Debug)]
pub struct OutboxEntry {
    /// The account.
    pub account: AccountId,
    /// The update: complete keys and generation.
    pub update: KeysUpdate,
    /// Fingerprint of the refresh token these keys replaced (lineage for fencing).
    pub parent_fingerprint: Option<String>,
    /// Fingerprint of the refresh token in these keys.
    pub refresh_fingerprint: Option<String>,
    /// The worker that committed the rotation.
    pub holder: String,
}

/// The PostgreSQL credential store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgCredentialStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    pool: PgPool,
    keys: KeyRing,
    lease: Duration,
    channel: String,
    changes: broadcast::Sender<String>,
    /// Notifications received so far, per account (see `change_mark`).
    seen: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl std::fmt::Debug for PgCredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCredentialStore")
            .field("channel", &self.inner.channel)
            .field("lease", &self.inner.lease)
            .field("keys", &self.inner.keys)
            .finish()
    }
}

fn db_error(e: sqlx::Error) -> StoreError {
    // sqlx errors name the server and the failing statement, never bound values.
    StoreError::Unavailable(e.to_string())
}

/// The lineage fingerprint of a refresh token: the first 16 bytes of its SHA-256, in hex.
/// Never reversible to the token; enough to tell two tokens apart.
pub fn refresh_token_fingerprint(credentials: &Credentials) -> Option<String> {
    let token = credentials.token()?.refresh_token()?;
    let digest = Sha256::digest(token.expose().as_bytes());
    Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit())
}

impl PgCredentialStore {
    /// Connects to `url`, creates the schema if needed, runs the embedded migrations and
    /// starts listening for changes.
    pub async fn connect(
        url: &str,
        keys: KeyRing,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        if !valid_schema(&options.schema) {
            return Err(StoreError::Config(format!(
                "schema `{}`: use 1 to 63 lowercase letters, digits and underscores",
                options.schema
            )));
        }
        if options.lease < Duration::from_millis(500) {
            return Err(StoreError::Config(
                "the lease must be at least 500 ms".into(),
            ));
        }
        let base = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Config(format!("{STORE_URL_ENV}: not a PostgreSQL URL ({e})"))
        })?;
        // The schema must exist before connections that put it on their search path.
        let mut setup = sqlx::PgConnection::connect_with(&base)
            .await
            .map_err(db_error)?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", options.schema);
        if let Err(e) = sqlx::query(&create).execute(&mut setup).await {
            // Two processes creating it at once: one of them gets a unique violation.
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                    .bind(&options.schema)
                    .fetch_one(&mut setup)
                    .await
                    .map_err(db_error)?;
            if !exists {
                return Err(db_error(e));
            }
        }
        let _ = setup.close().await;
        let connect = base.options([("search_path", options.schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(db_error)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the schema: {e}")))?;
        let (changes, _) = broadcast::channel(1024);
        let channel = format!("deckhand_keys_{}", options.schema);
        let store = Self {
            inner: Arc::new(StoreInner {
                pool,
                keys,
                lease: options.lease,
                channel,
                changes,
                seen: Arc::default(),
                listener: std::sync::Mutex::new(None),
                counters: Counters::default(),
            }),
        };
        store.start_listener().await?;
        Ok(store)
    }

    /// Listens for the store's notifications in a task of its own; it reconnects by itself
    /// (notifications sent meanwhile are lost, which is why waiters also poll).
    async fn start_listener(&self) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.inner.pool)
            .await
            .map_err(db_error)?;
        listener
            .listen(&self.inner.channel)
            .await
            .map_err(db_error)?;
        let changes = self.inner.changes.clone();
        let seen = self.inner.seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        let account = notification.payload().to_owned();
                        *seen
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(account.clone())
                            .or_default() += 1;
                        let _ = changes.send(account);
                    }
                    Err(e) => {
                        tracing::debug!(target: "deckhand_store", error = %e, "notification listener lost its connection; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        *self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// The pool (for operators' queries and tests).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The counters of this handle.
    pub fn metrics(&self) -> StoreMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreMetrics {
            leases_taken: get(&c.leases_taken),
            takeovers: get(&c.takeovers),
            commits: get(&c.commits),
            commits_superseded: get(&c.commits_superseded),
            rotations_lost: get(&c.rotations_lost),
            marked_needs_reauth: get(&c.marked_needs_reauth),
            outbox_published: get(&c.outbox_published),
        }
    }

    /// Number of accounts in each state, e.g. `[("active", 98), ("rotation_lost", 2)]`.
    pub async fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows =
            sqlx::query("SELECT state, count(*) AS n FROM accounts GROUP BY state ORDER BY state")
                .fetch_all(&self.inner.pool)
                .await
                .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state").map_err(db_error)?;
                let n: i64 = r.try_get("n").map_err(db_error)?;
                Ok((state, n as u64))
            })
            .collect()
    }

    /// Replaces an account's keys after the user authorized again: the next generation,
    /// state `active`, lease and intent cleared (with an outbox row like any rotation).
    pub async fn reauthorize(
        &self,
        account: &AccountId,
        credentials: &Credentials,
    ) -> Result<StoredCredential, StoreError> {
        let mut tx = self.inner.pool.begin().await.map_err(db_error)?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM accounts WHERE account_id = $1 FOR UPDATE")
                .bind(account.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(generation) = generation else {
            return Err(StoreError::UnknownAccount(account.to_string()));
        };
        let next = generation as u64 + 1;
        let sealed = self.seal(account, next, credentials)?;
        sqlx::query(
            "UPDATE accounts SET generation = $2, key_id = $3, nonce = $4, keys_ciphertext = $5,
                 parent_fingerprint = refresh_fingerprint, refresh_fingerprint = $6,
                 state = 'active', state_detail = NULL, state_changed_at = clock_timestamp(),
                 lease_holder = NULL, lease_expires_at = NULL,
                 intent_generation = NULL, intent_holder = NULL, intent_at = NULL,
                 rotated_by = 'reauthorize', rotated_at = clock_timestamp(),
                 updated_at = clock_timestamp()
             WHERE account_id = $1",
        )
        .bind(account.as_str())
        .bind(next as i64)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(refresh_token_fingerprint(credentials))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        self.insert_outbox(
            &mut tx,
            account,
            next,
            &sealed,
            credentials,
            "reauthorize",
            "reauthorize",
        )
        .await?;
        self.notify(&mut tx, account).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(StoredCredential {
            credentials: credentials.clone(),
            generation: next,
            state: CredentialState::Active,
            state_detail: None,
        })
    }

    /// Publishes every outbox row of `account` (or of every account when `None`), oldest
    /// first, through `publish`, deleting each row once `publish` returned `Ok` (i.e. after the
    /// broker's confirm). One relay at a time per account set (an advisory lock), so rows go out
    /// in order; returns how many were published. A crash between the confirm and the delete
    /// publishes that row again (at least once; consumers fence on the generation).
    pub async fn relay_outbox(
        &self,
        account: Option<&AccountId>,
        publish: &(dyn Fn(OutboxEntry) -> BoxFuture<'static, Result<(), String>> + Send + Sync),
    ) -> Result<usize, StoreError> {
        let mut conn = self.inner.pool.acquire().await.map_err(db_error)?;
        let lock_key = format!(
            "deckhand-outbox:{}:{}",
            self.inner.channel,
            account.map(AccountId::as_str).unwrap_or("*")
        );
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&lock_key)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if !locked {
            return Ok(0);
        }
        let result = self.relay_locked(&mut conn, account, publish).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&lock_key)
            .execute(&mut *conn)
            .await;
        result
    }

    async fn relay_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        account: Option<&AccountId>,
        publish: &(dyn Fn(OutboxEntry) -> BoxFuture<'static, Result<(), String>> + Send + Sync),
    ) -> Result<usize, StoreError> {
        let mut published = 0;
        loop {
            let rows = sqlx::query(
                "SELECT id, account_id, generation, parent_fingerprint, refresh_fingerprint,
                        key_id, nonce, keys_ciphertext, reason, holder
                 FROM keys_outbox WHERE ($1::text IS NULL OR account_id = $1)
                 ORDER BY id LIMIT 100",
            )
            .bind(account.map(AccountId::as_str))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
            if rows.is_empty() {
                return Ok(published);
            }
            for row in rows {
                let id: i64 = row.try_get("id").map_err(db_error)?;
                let entry = self.outbox_entry(&row)?;
                let (account_id, generation) = (entry.account.clone(), entry.update.generation);
                publish(entry).await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "publishing updateKeys of account `{account_id}` generation {generation}: {e}"
                    ))
                })?;
                sqlx::query("DELETE FROM keys_outbox WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                bump(&self.inner.counters.outbox_published);
                published += 1;
            }
        }
    }

    /// Relays the outbox until `stop` completes: a pass on every notification of a commit and
    /// at least every `interval`; failures are logged and retried on the next pass.
    pub async fn run_relay(
        &self,
        account: Option<AccountId>,
        interval: Duration,
        publish: Arc<dyn Fn(OutboxEntry) -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut changes = self.inner.changes.subscribe();
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.relay_outbox(account.as_ref(), publish.as_ref()).await {
                tracing::warn!(target: "deckhand_store", error = %e, "outbox relay pass failed; retrying");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
                _ = changes.recv() => {}
            }
        }
    }

    fn outbox_entry(&self, row: &PgRow) -> Result<OutboxEntry, StoreError> {
        let account_id: String = row.try_get("account_id").map_err(db_error)?;
        let account = AccountId::new(account_id)?;
        let generation: i64 = row.try_get("generation").map_err(db_error)?;
        let sealed = Sealed {
            key_id: row.try_get("key_id").map_err(db_error)?,
            nonce: row.try_get("nonce").map_err(db_error)?,
            ciphertext: row.try_get("keys_ciphertext").map_err(db_error)?,
        };
        let credentials = self.open(&account, generation as u64, &sealed)?;
        let reason: String = row.try_get("reason").map_err(db_error)?;
        Ok(OutboxEntry {
            update: KeysUpdate {
                credentials,
                generation: generation as u64,
                reason: parse_reason(&reason),
            },
            account,
            parent_fingerprint: row.try_get("parent_fingerprint").map_err(db_error)?,
            refresh_fingerprint: row.try_get("refresh_fingerprint").map_err(db_error)?,
            holder: row.try_get("holder").map_err(db_error)?,
        })
    }

    fn seal(
        &self,
        account: &AccountId,
        generation: u64,
        credentials: &Credentials,
    ) -> Result<Sealed, StoreError> {
        let plaintext = serde_json::to_vec(&credentials.to_keys())
            .map_err(|e| StoreError::Config(format!("serializing keys: {e}")))?;
        self.inner.keys.seal(account, generation, &plaintext)
    }

    fn open(
        &self,
        account: &AccountId,
        generation: u64,
        sealed: &Sealed,
    ) -> Result<Credentials, StoreError> {
        let plaintext = self.inner.keys.open(account, generation, sealed)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            account: account.to_string(),
            reason,
        };
        let keys: serde_json::Value = serde_json::from_slice(&plaintext)
            .map_err(|_| corrupt("the decrypted keys are not JSON".into()))?;
        Credentials::from_keys(keys).map_err(|e| corrupt(e.to_string()))
    }

    fn stored_from_row(
        &self,
        account: &AccountId,
        row: &PgRow,
    ) -> Result<StoredCredential, StoreError> {
        let generation: i64 = row.try_get("generation").map_err(db_error)?;
        let state: String = row.try_get("state").map_err(db_error)?;
        let state = CredentialState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            account: account.to_string(),
            reason: format!("unknown state `{state}`"),
        })?;
        let sealed = Sealed {
            key_id: row.try_get("key_id").map_err(db_error)?,
            nonce: row.try_get("nonce").map_err(db_error)?,
            ciphertext: row.try_get("keys_ciphertext").map_err(db_error)?,
        };
        Ok(StoredCredential {
            credentials: self.open(account, generation as u64, &sealed)?,
            generation: generation as u64,
            state,
            state_detail: row.try_get("state_detail").map_err(db_error)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_outbox(
        &self,
        conn: &mut sqlx::PgConnection,
        account: &AccountId,
        generation: u64,
        sealed: &Sealed,
        credentials: &Credentials,
        reason: &str,
        holder: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO keys_outbox (account_id, generation, parent_fingerprint,
                 refresh_fingerprint, key_id, nonce, keys_ciphertext, reason, holder)
             SELECT $1, $2, parent_fingerprint, $3, $4, $5, $6, $7, $8
             FROM accounts WHERE account_id = $1",
        )
        .bind(account.as_str())
        .bind(generation as i64)
        .bind(refresh_token_fingerprint(credentials))
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(reason)
        .bind(holder)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn notify(
        &self,
        conn: &mut sqlx::PgConnection,
        account: &AccountId,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.inner.channel)
            .bind(account.as_str())
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

fn parse_reason(name: &str) -> RefreshReason {
    match name {
        "initial" => RefreshReason::Initial,
        "per_call" => RefreshReason::PerCall,
        "expiry" => RefreshReason::Expiry,
        "pending_persist" => RefreshReason::PendingPersist,
        "component" => RefreshReason::Component,
        other => other
            .strip_prefix("rejected_")
            .and_then(|s| s.parse().ok())
            .map_or(RefreshReason::Forced, RefreshReason::Rejected),
    }
}

const SELECT_ACCOUNT: &str =
    "SELECT generation, state, state_detail, key_id, nonce, keys_ciphertext
     FROM accounts WHERE account_id = $1";

#[async_trait]
impl CredentialStore for PgCredentialStore {
    async fn load(&self, account: &AccountId) -> Result<Option<StoredCredential>, StoreError> {
        let row = sqlx::query(SELECT_ACCOUNT)
            .bind(account.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| self.stored_from_row(account, &row))
            .transpose()
    }

    async fn seed(
        &self,
        account: &AccountId,
        credentials: &Credentials,
        generation: u64,
    ) -> Result<StoredCredential, StoreError> {
        let sealed = self.seal(account, generation, credentials)?;
        sqlx::query(
            "INSERT INTO accounts (account_id, generation, key_id, nonce, keys_ciphertext,
                 refresh_fingerprint)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(account.as_str())
        .bind(generation as i64)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(refresh_token_fingerprint(credentials))
        .execute(&self.inner.pool)
        .await
        .map_err(db_error)?;
        self.load(account)
            .await?
            .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))
    }

    async fn try_acquire(
        &self,
        account: &AccountId,
        holder: &HolderId,
    ) -> Result<Acquire, StoreError> {
        let row = sqlx::query(
            "WITH old AS (
                 SELECT account_id, generation AS old_generation, intent_generation AS old_intent,
                        intent_holder AS old_intent_holder, intent_at AS old_intent_at
                 FROM accounts WHERE account_id = $1 FOR UPDATE
             )
             UPDATE accounts a SET
                 lease_holder = $2,
                 lease_epoch = a.lease_epoch + 1,
                 lease_expires_at = clock_timestamp() + make_interval(secs => $3),
                 intent_generation = a.generation,
                 intent_holder = $2,
                 intent_at = clock_timestamp(),
                 updated_at = clock_timestamp()
             FROM old
             WHERE a.account_id = old.account_id
               AND a.state = 'active'
               AND (a.lease_holder IS NULL OR a.lease_expires_at <= clock_timestamp())
             RETURNING a.lease_epoch, a.generation, a.state, a.state_detail, a.key_id, a.nonce,
                       a.keys_ciphertext, old.old_intent, old.old_intent_holder,
                       (extract(epoch FROM old.old_intent_at) * 1000)::bigint AS old_intent_at_ms",
        )
        .bind(account.as_str())
        .bind(holder.as_str())
        .bind(self.inner.lease.as_secs_f64())
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            let stored = self
                .load(account)
                .await?
                .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))?;
            return Ok(if stored.state == CredentialState::Active {
                Acquire::Busy
            } else {
                Acquire::Inactive(stored)
            });
        };
        let taken_at = Instant::now();
        let stored = self.stored_from_row(account, &row)?;
        let epoch: i64 = row.try_get("lease_epoch").map_err(db_error)?;
        let old_intent: Option<i64> = row.try_get("old_intent").map_err(db_error)?;
        let abandoned = match old_intent {
            Some(generation) if generation as u64 == stored.generation => {
                let holder: Option<String> = row.try_get("old_intent_holder").map_err(db_error)?;
                let at_ms: Option<i64> = row.try_get("old_intent_at_ms").map_err(db_error)?;
                Some(AbandonedIntent {
                    generation: generation as u64,
                    holder: holder.unwrap_or_default(),
                    at: SystemTime::UNIX_EPOCH
                        + Duration::from_millis(at_ms.unwrap_or_default().max(0) as u64),
                })
            }
            _ => None,
        };
        bump(&self.inner.counters.leases_taken);
        if abandoned.is_some() {
            bump(&self.inner.counters.takeovers);
        }
        tracing::debug!(
            target: "deckhand_store",
            account = %account,
            holder = %holder,
            epoch,
            generation = stored.generation,
            takeover = abandoned.is_some(),
            "lease taken"
        );
        Ok(Acquire::Leased {
            lease: Lease {
                account: account.clone(),
                holder: holder.clone(),
                epoch: epoch as u64,
                duration: self.inner.lease,
                taken_at,
            },
            stored,
            abandoned,
        })
    }

    async fn commit(&self, lease: &Lease, update: &KeysUpdate) -> Result<Commit, StoreError> {
        let account = &lease.account;
        let Some(spent) = update.generation.checked_sub(1) else {
            return Err(StoreError::Config(
                "a committed update has generation 1 or more".into(),
            ));
        };
        let sealed = self.seal(account, update.generation, &update.credentials)?;
        let mut tx = self.inner.pool.begin().await.map_err(db_error)?;
        let updated = sqlx::query(
            "UPDATE accounts SET
                 generation = $3, key_id = $4, nonce = $5, keys_ciphertext = $6,
                 parent_fingerprint = refresh_fingerprint, refresh_fingerprint = $7,
                 rotated_by = $2, rotated_at = clock_timestamp(), updated_at = clock_timestamp(),
                 intent_generation = NULL, intent_holder = NULL, intent_at = NULL,
                 lease_expires_at = CASE WHEN lease_holder = $2 AND lease_epoch = $8
                                         THEN NULL ELSE lease_expires_at END,
                 lease_holder = CASE WHEN lease_holder = $2 AND lease_epoch = $8
                                     THEN NULL ELSE lease_holder END
             WHERE account_id = $1 AND generation = $9 AND state = 'active'",
        )
        .bind(account.as_str())
        .bind(lease.holder.as_str())
        .bind(update.generation as i64)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(refresh_token_fingerprint(&update.credentials))
        .bind(lease.epoch as i64)
        .bind(spent as i64)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if updated.rows_affected() == 0 {
            drop(tx);
            bump(&self.inner.counters.commits_superseded);
            let stored = self
                .load(account)
                .await?
                .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))?;
            return Ok(Commit::Superseded(Box::new(stored)));
        }
        self.insert_outbox(
            &mut tx,
            account,
            update.generation,
            &sealed,
            &update.credentials,
            &update.reason.to_string(),
            lease.holder.as_str(),
        )
        .await?;
        self.notify(&mut tx, account).await?;
        tx.commit().await.map_err(db_error)?;
        bump(&self.inner.counters.commits);
        tracing::debug!(
            target: "deckhand_store",
            account = %account,
            holder = %lease.holder,
            generation = update.generation,
            "rotation committed"
        );
        Ok(Commit::Committed)
    }

    async fn release(&self, lease: &Lease, how: Release) -> Result<(), StoreError> {
        let (state, detail, clear_intent) = match &how {
            Release::NotSpent => (None, None, true),
            Release::MaybeSpent => (None, None, false),
            Release::NeedsReauth { reason } => (Some("needs_reauth"), Some(reason.clone()), true),
            Release::RotationLost { reason } => (
                Some("rotation_lost"),
                Some(format!("{reason}; recorded by {}", lease.holder)),
                false,
            ),
        };
        let mut tx = self.inner.pool.begin().await.map_err(db_error)?;
        let released = sqlx::query(
            "UPDATE accounts SET
                 lease_holder = NULL, lease_expires_at = NULL,
                 intent_generation = CASE WHEN $4 THEN NULL ELSE intent_generation END,
                 intent_holder = CASE WHEN $4 THEN NULL ELSE intent_holder END,
                 intent_at = CASE WHEN $4 THEN NULL ELSE intent_at END,
                 state = coalesce($5, state),
                 state_detail = CASE WHEN $5 IS NULL THEN state_detail ELSE $6 END,
                 state_changed_at = CASE WHEN $5 IS NULL THEN state_changed_at
                                         ELSE clock_timestamp() END,
                 updated_at = clock_timestamp()
             WHERE account_id = $1 AND lease_holder = $2 AND lease_epoch = $3",
        )
        .bind(lease.account.as_str())
        .bind(lease.holder.as_str())
        .bind(lease.epoch as i64)
        .bind(clear_intent)
        .bind(state)
        .bind(detail)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if released.rows_affected() > 0 {
            self.notify(&mut tx, &lease.account).await?;
            match how {
                Release::RotationLost { .. } => bump(&self.inner.counters.rotations_lost),
                Release::NeedsReauth { .. } => bump(&self.inner.counters.marked_needs_reauth),
                _ => {}
            }
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    fn change_mark(&self, account: &AccountId) -> u64 {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account.as_str())
            .copied()
            .unwrap_or(0)
    }

    async fn wait_for_change(&self, account: &AccountId, since: u64, timeout: Duration) {
        // Subscribed before comparing marks, so nothing slips in between.
        let mut changes = self.inner.changes.subscribe();
        if self.change_mark(account) > since {
            return;
        }
        let _ = tokio::time::timeout(timeout, async {
            loop {
                match changes.recv().await {
                    Ok(changed) if changed == account.as_str() => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        // No listener any more: polling only.
                        std::future::pending::<()>().await
                    }
                }
            }
        })
        .await;
    }

    fn lease_duration(&self) -> Duration {
        self.inner.lease
    }
}
