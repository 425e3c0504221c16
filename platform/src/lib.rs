//! The platform side of Deckhand, for people who run their workers themselves: a service that
//! persists every `updateKeys` with **fencing**, serves workers their step (config merged with
//! the account's latest keys), and shows operators what state each account is in.
//!
//! It works on the credential store's PostgreSQL schema ([`deckhand_store`]): the same
//! `accounts` rows, the same AES-256-GCM key ring (`DECKHAND_STORE_KEYS`), the same lineage
//! (generation plus refresh-token fingerprints). Store-backed workers and this service can
//! share one database.
//!
//! * [`persister`]: consumes the update-keys queue, decrypts each message with its step's
//!   message-crypto settings, applies it through [`Platform::apply_update`], acks after the
//!   commit; malformed messages go to a dead-letter queue with the reason.
//! * [`api`]: `GET /v1/tasks/{flow}/steps/{step}` and `PUT /v1/accounts/{id}` as the official
//!   runtimes call them (HTTP Basic), plus creating accounts and steps, the status page
//!   (`/status`, `/status.json`) and `/metrics`.
//!
//! Not for: running connectors (that is the worker, [`deckhand_runtime`]), or refreshing
//! tokens (workers do; the platform never calls a token endpoint).
//!
//! # Fencing
//! Every update names the refresh token it replaced (its *parent fingerprint*, a truncated
//! hash). With `F` the fingerprint of the stored keys and `f` the one of the update:
//!
//! | update                                   | outcome                                        |
//! |------------------------------------------|------------------------------------------------|
//! | the same keys                            | duplicate: no-op                               |
//! | `f == F`, other keys (no rotation)       | applied (a new access token), unless the       |
//! |                                          | update names another parent: then stale        |
//! | `f` already held or replaced earlier     | stale: dropped, counted                        |
//! | parent `== F`                            | applied, generation + 1                        |
//! | parent is an earlier fingerprint         | fork: dropped, the account marked, alert       |
//! | parent unknown / no lineage (Node's PUT) | applied last-write-wins, counted as unfenced   |
//!
//! # Example
//! ```no_run
//! use deckhand_store::KeyRing;
//! use deckhand_platform::{KeysUpdateIn, Outcome, Platform};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let platform = Platform::connect(
//!     "postgres://postgres@127.0.0.1:5432/test",
//!     KeyRing::from_env()?,
//!     "deckhand",
//!     None,
//! )
//! .await?;
//! platform
//!     .create_account("sf-1", json!({"oauth": {"refresh_token": "rt-0"}}))
//!     .await?;
//! // What a worker that refreshed rt-0 sends: the new keys and the fingerprint of rt-0.
//! let parent = deckhand_platform::keys_fingerprint(&json!({"oauth": {"refresh_token": "rt-0"}}))?;
//! let update = KeysUpdateIn {
//!     keys: json!({"oauth": {"refresh_token": "rt-1"}}),
//!     parent_fingerprint: parent,
//!     worker: "host:42:0badf00d".into(),
//!     worker_generation: Some(1),
//! };
//! assert_eq!(
//!     platform.apply_update("sf-1", &update).await?,
//!     Outcome::Applied { generation: 1, fenced: true }
//! );
//! // The same message again (a redelivery) changes nothing.
//! assert_eq!(platform.apply_update("sf-1", &update).await?, Outcome::Duplicate { generation: 1 });
//! # Ok(()) }
//! ```

pub mod api;
pub mod persister;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deckhand_core::auth::store::StoreError;
use deckhand_core::auth::{AccountId, CredentialStore};
use deckhand_core::credentials::Credentials;
use deckhand_runtime::crypto::MessageCipher;
use deckhand_store::{KeyRing, PgCredentialStore, Sealed, StoreOptions, refresh_token_fingerprint};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// What can go wrong in the platform. Messages name what is wrong, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The account does not exist.
    #[error("account `{0}` does not exist")]
    UnknownAccount(String),
    /// The step does not exist.
    #[error("step `{flow}/{step}` does not exist")]
    UnknownStep {
        /// Flow (task) id.
        flow: String,
        /// Step id.
        step: String,
    },
    /// Something already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The request or message is not what it should be.
    #[error("{0}")]
    Invalid(String),
    /// The database failed (retry later).
    #[error("database: {0}")]
    Database(String),
    /// The credential store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PlatformError {
    fn from(e: sqlx::Error) -> Self {
        // sqlx errors name the statement and the server, never bound values.
        Self::Database(e.to_string())
    }
}

/// How an update was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The update is the account's keys now.
    Applied {
        /// The account's generation after it.
        generation: u64,
        /// Whether it descended from the stored keys (false: last-write-wins).
        fenced: bool,
    },
    /// Already stored: nothing changed.
    Duplicate {
        /// The account's generation.
        generation: u64,
    },
    /// Older than what is stored: dropped.
    Stale {
        /// The account's generation.
        generation: u64,
    },
    /// A second child of a refresh token that already has one: dropped, the account marked.
    Fork {
        /// The account's generation (the first child's line).
        generation: u64,
    },
}

impl Outcome {
    /// `applied`, `duplicate`, `stale` or `fork`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Duplicate { .. } => "duplicate",
            Self::Stale { .. } => "stale",
            Self::Fork { .. } => "fork",
        }
    }

    /// The account's generation after the update was handled.
    pub fn generation(&self) -> u64 {
        match self {
            Self::Applied { generation, .. }
            | Self::Duplicate { generation }
            | Self::Stale { generation }
            | Self::Fork { generation } => *generation,
        }
    }
}

/// One update of an account's keys, from the persister or the accounts API.
#[derive(Clone)]
pub struct KeysUpdateIn {
    /// The complete keys.
    pub keys: Value,
    /// The fingerprint of the refresh token these keys replaced, if the sender knows it.
    pub parent_fingerprint: Option<String>,
    /// Who sent it (a worker id, or `api:<user>`).
    pub worker: String,
    /// The sender's generation number (informational: a restarted worker counts afresh).
    pub worker_generation: Option<u64>,
}

impl std::fmt::Debug for KeysUpdateIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysUpdateIn")
            .field("keys", &"[redacted]")
            .field("parent_fingerprint", &self.parent_fingerprint)
            .field("worker", &self.worker)
            .field("worker_generation", &self.worker_generation)
            .finish()
    }
}

/// Process-wide counters (the per-account ones live in the database).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Updates applied (fenced or not).
    pub applied: AtomicU64,
    /// Of those, applied last-write-wins (no lineage or unknown parent).
    pub unfenced: AtomicU64,
    /// Duplicates (no-ops).
    pub duplicates: AtomicU64,
    /// Stale updates dropped.
    pub stale: AtomicU64,
    /// Forks detected.
    pub forks: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Attempts that failed on a database outage (the message is held and retried).
    pub retried: AtomicU64,
}

impl Metrics {
    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Applied { fenced, .. } => {
                if !fenced {
                    self.unfenced.fetch_add(1, Ordering::Relaxed);
                }
                &self.applied
            }
            Outcome::Duplicate { .. } => &self.duplicates,
            Outcome::Stale { .. } => &self.stale,
            Outcome::Fork { .. } => &self.forks,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `(name, value)` pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("updates_applied", get(&self.applied)),
            ("updates_unfenced", get(&self.unfenced)),
            ("updates_duplicate", get(&self.duplicates)),
            ("updates_stale", get(&self.stale)),
            ("forks_detected", get(&self.forks)),
            ("messages_dead_lettered", get(&self.dead_lettered)),
            ("database_retries", get(&self.retried)),
        ]
    }
}

/// A step as the platform stores it.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// The function (action or trigger) the step runs.
    #[serde(default)]
    pub function: Option<String>,
    /// The component id.
    #[serde(default)]
    pub comp_id: Option<String>,
    /// The account whose keys are merged into the config (and sent as `_account`).
    #[serde(default)]
    pub account_id: Option<String>,
    /// Field values (no secrets: keys belong in the account).
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The step's snapshot.
    #[serde(default)]
    pub snapshot: Option<Value>,
    /// Whether outgoing messages carry passthrough.
    #[serde(default)]
    pub is_passthrough: bool,
    /// Flow variables.
    #[serde(default)]
    pub variables: Option<Value>,
    /// The step's message-crypto settings; `None`: the service's defaults.
    #[serde(default)]
    pub crypto: Option<CryptoSettings>,
}

/// A step's message-crypto settings (what `ELASTICIO_MESSAGE_CRYPTO_PASSWORD`/`_IV` hold).
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoSettings {
    /// The password.
    pub password: String,
    /// The 16-character IV.
    pub iv: String,
}

impl std::fmt::Debug for CryptoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptoSettings { [redacted] }")
    }
}

/// The platform: the store's schema plus what the service keeps beside it.
#[derive(Clone)]
pub struct Platform {
    store: PgCredentialStore,
    keys: KeyRing,
    default_cipher: Option<MessageCipher>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of an API key, as `api_users` stores it.
fn api_key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The lineage fingerprint of the refresh token in `keys` (the same function workers use).
pub fn keys_fingerprint(keys: &Value) -> Result<Option<String>, PlatformError> {
    let credentials = Credentials::from_keys(keys.clone())
        .map_err(|e| PlatformError::Invalid(format!("keys: {e}")))?;
    Ok(refresh_token_fingerprint(&credentials))
}

/// Flow and step ids: 1 to 200 printable characters (what the database can hold as text).
fn check_step_ids(flow: &str, step: &str) -> Result<(), PlatformError> {
    for (what, id) in [("flow id", flow), ("step id", step)] {
        if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            return Err(PlatformError::Invalid(format!(
                "{what}: use 1 to 200 printable characters"
            )));
        }
    }
    Ok(())
}

fn step_crypto_id(flow: &str, step: &str) -> Result<AccountId, PlatformError> {
    // Sealed like keys, bound to the step (a row copied to another step does not decrypt).
    Ok(AccountId::new(format!("step-crypto:{flow}/{step}"))?)
}

impl Platform {
    /// Connects to the store's schema (running its migrations) with `keys`; `default_cipher`
    /// decrypts updates of steps without crypto settings of their own.
    pub async fn connect(
        url: &str,
        keys: KeyRing,
        schema: &str,
        default_cipher: Option<MessageCipher>,
    ) -> Result<Self, PlatformError> {
        let store = PgCredentialStore::connect(
            url,
            keys.clone(),
            StoreOptions {
                schema: schema.to_owned(),
                max_connections: 8,
                ..StoreOptions::default()
            },
        )
        .await?;
        Ok(Self {
            store,
            keys,
            default_cipher,
            metrics: Arc::default(),
        })
    }

    /// The credential store underneath.
    pub fn store(&self) -> &PgCredentialStore {
        &self.store
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The process-wide counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Creates an account with `keys` (generation 0). Fails if it exists.
    pub async fn create_account(&self, id: &str, keys: Value) -> Result<u64, PlatformError> {
        let account = AccountId::new(id)?;
        if !keys.is_object() {
            return Err(PlatformError::Invalid("keys: must be a JSON object".into()));
        }
        let credentials = Credentials::from_keys(keys)
            .map_err(|e| PlatformError::Invalid(format!("keys: {e}")))?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        if exists {
            return Err(PlatformError::Exists(format!("account `{id}`")));
        }
        let stored = self.store.seed(&account, &credentials, 0).await?;
        tracing::info!(account = %account, "account created");
        Ok(stored.generation)
    }

    /// Replaces an account's keys after the user authorized again (the store's
    /// [`reauthorize`](PgCredentialStore::reauthorize): next generation, state `active`, lease
    /// and intent cleared) and clears a fork mark. Returns the new generation.
    pub async fn reauthorize(&self, id: &str, keys: Value) -> Result<u64, PlatformError> {
        let account = AccountId::new(id)?;
        if !keys.is_object() {
            return Err(PlatformError::Invalid("keys: must be a JSON object".into()));
        }
        let credentials = Credentials::from_keys(keys)
            .map_err(|e| PlatformError::Invalid(format!("keys: {e}")))?;
        if self.store.load(&account).await?.is_none() {
            return Err(PlatformError::UnknownAccount(id.into()));
        }
        let stored = self.store.reauthorize(&account, &credentials).await?;
        sqlx::query(
            "UPDATE accounts SET fork_detected_at = NULL, fork_detail = NULL,
                 rotated_by = 'reauthorize', rotated_at = clock_timestamp()
             WHERE account_id = $1",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        tracing::info!(account = %account, generation = stored.generation, "account re-authorized");
        Ok(stored.generation)
    }

    /// Creates or replaces a step; returns whether it was created.
    pub async fn put_step(
        &self,
        flow: &str,
        step: &str,
        def: StepDefinition,
    ) -> Result<bool, PlatformError> {
        check_step_ids(flow, step)?;
        if let Some(account) = &def.account_id {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1)")
                    .bind(account)
                    .fetch_one(self.pool())
                    .await?;
            if !exists {
                return Err(PlatformError::UnknownAccount(account.clone()));
            }
        }
        let sealed = match &def.crypto {
            Some(crypto) => {
                MessageCipher::new(&crypto.password, &crypto.iv)
                    .map_err(|e| PlatformError::Invalid(format!("crypto: {e}")))?;
                let plain = serde_json::to_vec(crypto)
                    .map_err(|e| PlatformError::Invalid(format!("crypto: {e}")))?;
                Some(self.keys.seal(&step_crypto_id(flow, step)?, 0, &plain)?)
            }
            None => None,
        };
        let created: bool = sqlx::query_scalar(
            "INSERT INTO steps (flow_id, step_id, function, comp_id, account_id, config, snapshot,
                 is_passthrough, variables, crypto_key_id, crypto_nonce, crypto_ciphertext)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (flow_id, step_id) DO UPDATE SET
                 function = EXCLUDED.function, comp_id = EXCLUDED.comp_id,
                 account_id = EXCLUDED.account_id, config = EXCLUDED.config,
                 snapshot = EXCLUDED.snapshot, is_passthrough = EXCLUDED.is_passthrough,
                 variables = EXCLUDED.variables, crypto_key_id = EXCLUDED.crypto_key_id,
                 crypto_nonce = EXCLUDED.crypto_nonce,
                 crypto_ciphertext = EXCLUDED.crypto_ciphertext, updated_at = now()
             RETURNING (xmax = 0)",
        )
        .bind(flow)
        .bind(step)
        .bind(&def.function)
        .bind(&def.comp_id)
        .bind(&def.account_id)
        .bind(Value::Object(def.config))
        .bind(def.snapshot.unwrap_or_else(|| Value::Object(Map::new())))
        .bind(def.is_passthrough)
        .bind(def.variables.unwrap_or_else(|| Value::Object(Map::new())))
        .bind(sealed.as_ref().map(|s| s.key_id.clone()))
        .bind(sealed.as_ref().map(|s| s.nonce.clone()))
        .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
        .fetch_one(self.pool())
        .await?;
        tracing::info!(flow, step, created, "step saved");
        Ok(created)
    }

    /// Creates (or replaces the key of) an API user; returns the new key, shown only here.
    pub async fn create_api_user(&self, username: &str) -> Result<String, PlatformError> {
        if username.is_empty()
            || username.len() > 200
            || username.contains(':')
            || username.chars().any(char::is_control)
        {
            return Err(PlatformError::Invalid(
                "username: use 1 to 200 printable characters, no `:`".into(),
            ));
        }
        let bytes: [u8; 24] = rand::random();
        let key = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        sqlx::query(
            "INSERT INTO api_users (username, key_sha256) VALUES ($1, $2)
             ON CONFLICT (username) DO UPDATE SET key_sha256 = EXCLUDED.key_sha256",
        )
        .bind(username)
        .bind(api_key_digest(&key).to_vec())
        .execute(self.pool())
        .await?;
        tracing::info!(username, "API user saved");
        Ok(key)
    }

    /// Whether `username`/`key` is an API user. The key is compared in constant time, and an
    /// unknown user costs the same comparison.
    pub async fn authenticate(&self, username: &str, key: &str) -> Result<bool, PlatformError> {
        use subtle::ConstantTimeEq as _;
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key_sha256 FROM api_users WHERE username = $1")
                .bind(username)
                .fetch_optional(self.pool())
                .await?;
        let offered = api_key_digest(key);
        let (expected, known) = match stored {
            Some(digest) if digest.len() == 32 => (digest, true),
            _ => (vec![0u8; 32], false),
        };
        Ok(known & bool::from(offered.ct_eq(expected.as_slice())))
    }

    /// The step as `GET /v1/tasks/{flow}/steps/{step}` returns it: config merged with the
    /// account's latest keys and `_account`.
    pub async fn step_for_worker(&self, flow: &str, step: &str) -> Result<Value, PlatformError> {
        check_step_ids(flow, step)?;
        let row = sqlx::query(
            "SELECT function, comp_id, account_id, config, snapshot, is_passthrough, variables
             FROM steps WHERE flow_id = $1 AND step_id = $2",
        )
        .bind(flow)
        .bind(step)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| PlatformError::UnknownStep {
            flow: flow.into(),
            step: step.into(),
        })?;
        let mut config = match row.try_get::<Value, _>("config")? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let account: Option<String> = row.try_get("account_id")?;
        if let Some(account) = &account {
            let id = AccountId::new(account.as_str())?;
            let stored = self
                .store
                .load(&id)
                .await?
                .ok_or_else(|| PlatformError::UnknownAccount(account.clone()))?;
            if let Value::Object(keys) = stored.credentials.to_keys() {
                config.extend(keys);
            }
            config.insert("_account".into(), Value::String(account.clone()));
        }
        Ok(serde_json::json!({
            "id": step,
            "comp_id": row.try_get::<Option<String>, _>("comp_id")?,
            "function": row.try_get::<Option<String>, _>("function")?,
            "config": config,
            "snapshot": row.try_get::<Value, _>("snapshot")?,
            "is_passthrough": row.try_get::<bool, _>("is_passthrough")?,
            "variables": row.try_get::<Value, _>("variables")?,
        }))
    }

    /// The account a step is bound to and the cipher of its messages.
    pub async fn step_binding(
        &self,
        flow: &str,
        step: &str,
    ) -> Result<(Option<String>, Option<MessageCipher>), PlatformError> {
        check_step_ids(flow, step)?;
        let row = sqlx::query(
            "SELECT account_id, crypto_key_id, crypto_nonce, crypto_ciphertext
             FROM steps WHERE flow_id = $1 AND step_id = $2",
        )
        .bind(flow)
        .bind(step)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| PlatformError::UnknownStep {
            flow: flow.into(),
            step: step.into(),
        })?;
        let key_id: Option<String> = row.try_get("crypto_key_id")?;
        let cipher = match key_id {
            Some(key_id) => {
                let sealed = Sealed {
                    key_id,
                    nonce: row.try_get("crypto_nonce")?,
                    ciphertext: row.try_get("crypto_ciphertext")?,
                };
                let plain = self.keys.open(&step_crypto_id(flow, step)?, 0, &sealed)?;
                let settings: CryptoSettings = serde_json::from_slice(&plain).map_err(|_| {
                    PlatformError::Invalid(format!(
                        "step `{flow}/{step}`: stored crypto settings are unreadable"
                    ))
                })?;
                Some(
                    MessageCipher::new(&settings.password, &settings.iv)
                        .map_err(|e| PlatformError::Invalid(format!("crypto: {e}")))?,
                )
            }
            None => self.default_cipher.clone(),
        };
        Ok((row.try_get("account_id")?, cipher))
    }

    /// Applies one update of `account`'s keys with fencing (see the crate docs), in one
    /// transaction with the account row locked; counts the outcome on the account and here.
    pub async fn apply_update(
        &self,
        account: &str,
        update: &KeysUpdateIn,
    ) -> Result<Outcome, PlatformError> {
        let id = AccountId::new(account)?;
        if !update.keys.is_object() {
            return Err(PlatformError::Invalid("keys: must be a JSON object".into()));
        }
        let incoming = keys_fingerprint(&update.keys)?;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "SELECT generation, key_id, nonce, keys_ciphertext, refresh_fingerprint,
                    parent_fingerprint
             FROM accounts WHERE account_id = $1 FOR UPDATE",
        )
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| PlatformError::UnknownAccount(account.into()))?;
        let generation = row.try_get::<i64, _>("generation")? as u64;
        let stored_fp: Option<String> = row.try_get("refresh_fingerprint")?;
        let sealed = Sealed {
            key_id: row.try_get("key_id")?,
            nonce: row.try_get("nonce")?,
            ciphertext: row.try_get("keys_ciphertext")?,
        };
        let stored_keys: Value = serde_json::from_slice(&self.keys.open(&id, generation, &sealed)?)
            .map_err(|_| {
                PlatformError::Invalid(format!("account `{account}`: stored keys are not JSON"))
            })?;

        let decision = if stored_keys == update.keys {
            Decision::Duplicate
        } else if incoming.is_some() && incoming == stored_fp {
            // The stored refresh token with other keys: a provider that does not rotate
            // refresh tokens issued a new access token — unless the update names another
            // parent, i.e. it is the (older) message that brought this refresh token.
            match &update.parent_fingerprint {
                Some(parent) if Some(parent) != stored_fp.as_ref() => Decision::Stale,
                parent => Decision::Apply {
                    fenced: parent.is_some(),
                    parent: row.try_get("parent_fingerprint")?,
                },
            }
        } else if incoming.is_some() && self.in_lineage(&mut tx, account, &incoming).await? {
            Decision::Stale
        } else {
            match &update.parent_fingerprint {
                Some(parent) if Some(parent) == stored_fp.as_ref() => Decision::Apply {
                    fenced: true,
                    parent: stored_fp.clone(),
                },
                // The parent is an earlier refresh token: it already has a successor.
                Some(parent)
                    if self
                        .in_lineage(&mut tx, account, &Some(parent.clone()))
                        .await? =>
                {
                    Decision::Fork
                }
                // The parent was never seen: the update overtook its ancestor (or the
                // ancestor was never announced). The newest news wins.
                Some(parent) => Decision::Apply {
                    fenced: false,
                    parent: Some(parent.clone()),
                },
                None => Decision::Apply {
                    fenced: false,
                    parent: stored_fp.clone(),
                },
            }
        };

        let outcome = match decision {
            Decision::Duplicate => {
                bump_account(&mut tx, account, "updates_duplicate").await?;
                Outcome::Duplicate { generation }
            }
            Decision::Stale => {
                bump_account(&mut tx, account, "updates_stale").await?;
                tracing::warn!(account, worker = %update.worker, generation, "stale updateKeys dropped (older than the stored keys)");
                Outcome::Stale { generation }
            }
            Decision::Fork => {
                let detail = format!(
                    "worker {} sent keys descending from a refresh token that already has a \
                     different successor (generation {generation} kept); two replicas spent \
                     the same token",
                    update.worker
                );
                sqlx::query(
                    "UPDATE accounts SET forks = forks + 1, fork_detected_at = clock_timestamp(),
                         fork_detail = $2, updated_at = clock_timestamp()
                     WHERE account_id = $1",
                )
                .bind(account)
                .bind(&detail)
                .execute(&mut *tx)
                .await?;
                tracing::error!(account, worker = %update.worker, generation, alert = "fork", "FORK: two different updates from the same refresh token; keeping the first");
                Outcome::Fork { generation }
            }
            Decision::Apply { fenced, parent } => {
                let next = generation + 1;
                let plain = serde_json::to_vec(&update.keys)
                    .map_err(|e| PlatformError::Invalid(format!("keys: {e}")))?;
                let sealed = self.keys.seal(&id, next, &plain)?;
                sqlx::query(
                    "UPDATE accounts SET
                         generation = $2, key_id = $3, nonce = $4, keys_ciphertext = $5,
                         parent_fingerprint = $6, refresh_fingerprint = $7,
                         rotated_by = $8, rotated_at = clock_timestamp(),
                         state_changed_at = CASE WHEN state <> 'active' THEN clock_timestamp()
                                                 ELSE state_changed_at END,
                         state = 'active', state_detail = NULL,
                         updates_applied = updates_applied + 1,
                         updates_unfenced = updates_unfenced + $9,
                         updated_at = clock_timestamp()
                     WHERE account_id = $1",
                )
                .bind(account)
                .bind(next as i64)
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(&parent)
                .bind(&incoming)
                .bind(&update.worker)
                .bind(i64::from(!fenced))
                .execute(&mut *tx)
                .await?;
                // Store-backed workers wait on this channel (see `deckhand_store`).
                sqlx::query("SELECT pg_notify('deckhand_keys_' || current_schema(), $1)")
                    .bind(account)
                    .execute(&mut *tx)
                    .await?;
                if !fenced {
                    tracing::info!(account, worker = %update.worker, generation = next, "updateKeys applied last-write-wins (no known lineage)");
                } else {
                    tracing::info!(account, worker = %update.worker, generation = next, "updateKeys applied");
                }
                Outcome::Applied {
                    generation: next,
                    fenced,
                }
            }
        };
        tx.commit().await?;
        self.metrics.count(&outcome);
        Ok(outcome)
    }

    /// Whether `fingerprint` is one the account held or replaced before.
    async fn in_lineage(
        &self,
        tx: &mut sqlx::PgConnection,
        account: &str,
        fingerprint: &Option<String>,
    ) -> Result<bool, PlatformError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM account_lineage WHERE account_id = $1
                 AND (refresh_fingerprint = $2 OR parent_fingerprint = $2))",
        )
        .bind(account)
        .bind(fingerprint)
        .fetch_one(tx)
        .await?)
    }

    /// Every account with its state and counters (no secrets), for the status page.
    pub async fn status(&self) -> Result<status::Status, PlatformError> {
        status::load(self.pool(), &self.metrics).await
    }
}

enum Decision {
    Duplicate,
    Stale,
    Fork,
    Apply {
        fenced: bool,
        parent: Option<String>,
    },
}

async fn bump_account(
    tx: &mut sqlx::PgConnection,
    account: &str,
    column: &'static str,
) -> Result<(), PlatformError> {
    sqlx::query(&format!(
        "UPDATE accounts SET {column} = {column} + 1 WHERE account_id = $1"
    ))
    .bind(account)
    .execute(tx)
    .await?;
    Ok(())
}
