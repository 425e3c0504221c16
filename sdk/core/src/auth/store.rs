//! A credential shared by several processes: the [`CredentialStore`] behind the
//! [`TokenManager`](super::TokenManager)'s gate.
//!
//! One process is kept safe by its gate. Several processes holding the same refresh token (the
//! replicas of a step, a restarted worker) are kept safe by a store they all use:
//!
//! 1. the in-process gate first, so one caller per process goes on;
//! 2. then a **lease** on the account in the store, taken by one statement only if it is free
//!    or expired, recording an **intent** (the generation about to be spent, and by whom);
//! 3. after taking it, the stored generation is compared with the one this process holds: if
//!    another process already rotated, its keys are adopted and the provider is not called;
//! 4. otherwise the token endpoint is called (with a deadline shorter than the lease) and the
//!    new keys are committed with a **compare-and-set on the generation spent**, together with
//!    an outbox row for the `updateKeys` event; only after the commit is the new token used.
//!    A holder whose compare-and-set fails adopts the stored keys instead;
//! 5. a lease left with an intent (its holder died or lost the answer mid-refresh) is taken
//!    over: the taker retries once with the intent's refresh token (providers with a reuse
//!    grace window accept it); if the provider refuses, the account becomes `rotation_lost`
//!    and every caller gets [`AuthError::RotationLost`]: never a refresh loop.
//!
//! Processes waiting for another one's lease wake on the store's notifications and also poll;
//! after a bounded wait they get a transient error. Nobody refreshes without the lease.
//!
//! `deckhand_store::PgCredentialStore` (crate `deckhand-store`) is the PostgreSQL
//! implementation. Attach a store with
//! [`TokenManagerBuilder::store`](super::TokenManagerBuilder::store).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use crate::credentials::Credentials;
use crate::retry;

use super::endpoint::{Failed, Issued};
use super::metrics::Counters;
use super::{AuthError, Clock, KeysUpdate, RefreshReason, TokenEndpoint, TransientFailure};

/// The id of a credential (an elastic.io account id) in a [`CredentialStore`].
///
/// Non-empty, at most 200 characters, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Checks and wraps an account id.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        is_printable_id(&id)
            .then_some(Self(id))
            .ok_or(StoreError::InvalidAccountId)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.0)
    }
}

fn is_printable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && !id.chars().any(char::is_control)
}

/// Who holds (or held) a lease: one per process and store, e.g. `host:pid:random`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HolderId(String);

impl HolderId {
    /// A holder id unique to this process: `host:pid:8 random hex digits`.
    pub fn for_this_process() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let random: u32 = rand::random();
        Self(format!("{host}:{}:{random:08x}", std::process::id()))
    }

    /// A holder id chosen by the caller (at most 200 characters).
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        is_printable_id(&id)
            .then_some(Self(id))
            .ok_or(StoreError::InvalidHolderId)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderId({})", self.0)
    }
}

/// The state of a stored credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialState {
    /// In use; refreshed through the lease.
    Active,
    /// The provider refused the grant: a person has to authorize again.
    NeedsReauth,
    /// A holder died (or lost the answer) after spending the refresh token, and the provider
    /// refused the retry with it: the rotated token is lost, a person has to authorize again.
    RotationLost,
}

impl CredentialState {
    /// The name stored in the database (`active`, `needs_reauth`, `rotation_lost`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauth => "needs_reauth",
            Self::RotationLost => "rotation_lost",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "needs_reauth" => Some(Self::NeedsReauth),
            "rotation_lost" => Some(Self::RotationLost),
            _ => None,
        }
    }
}

/// A credential as stored: decrypted keys, generation, state.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// The keys (decrypted).
    pub credentials: Credentials,
    /// The generation: grows by one with every committed rotation.
    pub generation: u64,
    /// The state.
    pub state: CredentialState,
    /// Why the state is not `active` (no secrets), and which holder caused it.
    pub state_detail: Option<String>,
}

/// An intent left behind by a holder that did not finish: it had started spending the
/// refresh token of `generation` and neither committed nor released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbandonedIntent {
    /// The generation whose refresh token was being spent.
    pub generation: u64,
    /// The holder that recorded the intent.
    pub holder: String,
    /// When it recorded it (database clock).
    pub at: SystemTime,
}

/// A held lease: the fencing epoch and the holder. Pass it back to
/// [`commit`](CredentialStore::commit) and [`release`](CredentialStore::release).
#[derive(Clone, Debug)]
pub struct Lease {
    /// The account.
    pub account: AccountId,
    /// The holder.
    pub holder: HolderId,
    /// Grows by one with every lease taken on the account; a stale holder's release is ignored.
    pub epoch: u64,
    /// How long the lease was granted for (measured by the database).
    pub duration: Duration,
    /// When it was taken, on this process's monotonic clock.
    pub taken_at: Instant,
}

/// What [`CredentialStore::try_acquire`] found.
#[derive(Debug)]
pub enum Acquire {
    /// The lease is ours; `stored` is the row as it was when we took it (the re-read).
    Leased {
        /// The lease.
        lease: Lease,
        /// The stored credential at that moment.
        stored: StoredCredential,
        /// Set when the lease was taken over from a holder that left an intent.
        abandoned: Option<AbandonedIntent>,
    },
    /// Another holder's lease has not expired yet.
    Busy,
    /// The account is not `active` (nobody may refresh it).
    Inactive(StoredCredential),
}

/// What [`CredentialStore::commit`] did.
#[derive(Debug)]
pub enum Commit {
    /// The new keys are stored (and their outbox row written).
    Committed,
    /// The generation spent was no longer the stored one (or the account is no longer active):
    /// here is what is stored instead.
    Superseded(Box<StoredCredential>),
}

/// How a lease is given back without a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// The refresh token was not spent (or the provider answered it was not): clear the intent.
    NotSpent,
    /// The token request may have reached the provider (no answer, or too late): keep the
    /// intent, so whoever takes the lease next recovers.
    MaybeSpent,
    /// The provider refused the grant: the account needs re-authorization.
    NeedsReauth {
        /// What the provider said (no secrets).
        reason: String,
    },
    /// A refresh token left by an abandoned intent was refused: the rotation is lost.
    RotationLost {
        /// What happened (no secrets).
        reason: String,
    },
}

/// Why the store could not do what was asked. Messages never contain secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The account id is empty, too long or has control characters.
    #[error("invalid account id: it must be 1 to 200 characters without control characters")]
    InvalidAccountId,
    /// The holder id is empty, too long or has control characters.
    #[error("invalid holder id: it must be 1 to 200 characters without control characters")]
    InvalidHolderId,
    /// The account is not in the store.
    #[error("account `{0}` is not in the credential store")]
    UnknownAccount(String),
    /// The store's database failed or could not be reached.
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
    /// The stored keys cannot be decrypted (unknown key id, wrong key, tampered row).
    #[error("stored keys of account `{account}` cannot be decrypted: {reason}")]
    Decrypt {
        /// The account.
        account: String,
        /// Why (never key material).
        reason: String,
    },
    /// The store is misconfigured (bad URL, key, schema).
    #[error("credential store configuration: {0}")]
    Config(String),
    /// A row holds something the store does not understand.
    #[error("credential store row of account `{account}` is corrupt: {reason}")]
    Corrupt {
        /// The account.
        account: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where a credential shared by several processes lives: keys (encrypted at rest), the
/// generation, a lease with an intent, and a state. See the [module docs](self).
///
/// Every method is one short round trip to the store; none is held open across the call to
/// the token endpoint.
#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// The stored credential, if the account is known.
    async fn load(&self, account: &AccountId) -> Result<Option<StoredCredential>, StoreError>;

    /// Stores `credentials` as generation `generation` if the account is not stored yet;
    /// returns what is stored either way (an existing row wins).
    async fn seed(
        &self,
        account: &AccountId,
        credentials: &Credentials,
        generation: u64,
    ) -> Result<StoredCredential, StoreError>;

    /// Takes the lease for `holder` if it is free or expired, and records the intent to spend
    /// the stored generation, in one statement.
    async fn try_acquire(
        &self,
        account: &AccountId,
        holder: &HolderId,
    ) -> Result<Acquire, StoreError>;

    /// Stores `update` if the stored generation is still `update.generation - 1` and the
    /// account is active, with an outbox row for the `updateKeys` event, in one transaction;
    /// clears the lease and the intent if they are still `lease`'s. A holder whose lease
    /// expired meanwhile still commits if the compare-and-set holds.
    async fn commit(&self, lease: &Lease, update: &KeysUpdate) -> Result<Commit, StoreError>;

    /// Gives the lease back without a commit (only if it is still `lease`).
    async fn release(&self, lease: &Lease, how: Release) -> Result<(), StoreError>;

    /// A mark of the changes announced so far for `account`; pass it to
    /// [`wait_for_change`](Self::wait_for_change) so a change announced in between is not
    /// missed. Take it before looking at the store.
    fn change_mark(&self, account: &AccountId) -> u64;

    /// Returns once a change of the account was announced after `since` (a
    /// [`change_mark`](Self::change_mark)), or after `timeout`.
    async fn wait_for_change(&self, account: &AccountId, since: u64, timeout: Duration);

    /// How long a lease lasts.
    fn lease_duration(&self) -> Duration;
}

/// A [`TokenManager`](super::TokenManager)'s link to its credential in a store.
#[derive(Clone)]
pub(crate) struct StoreBinding {
    pub(crate) store: Arc<dyn CredentialStore>,
    pub(crate) account: AccountId,
    pub(crate) holder: HolderId,
    /// How long a caller waits for another process's lease before a transient error.
    pub(crate) wait_bound: Duration,
}

/// How a refresh through the store ended.
pub(crate) enum StoreRefresh {
    /// Another process had rotated: its keys, not refreshed here.
    Adopted(StoredCredential),
    /// Refreshed here and committed.
    Committed(KeysUpdate),
    /// Refreshed here, but the store could not be reached to commit: the manager keeps the
    /// update in memory (never used, never dropped) and commits it on the next refresh.
    Unpersisted {
        /// The rotated keys.
        update: KeysUpdate,
        /// Why the commit failed.
        error: AuthError,
    },
}

/// How often a waiter looks at the store even without a notification.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

impl StoreBinding {
    /// Refreshes the credential this process holds at `generation` through the store: lease,
    /// re-read, token request, fenced commit. Returns the outcome and the token requests sent.
    pub(crate) async fn refresh(
        &self,
        endpoint: &TokenEndpoint,
        clock: &dyn Clock,
        counters: &Counters,
        generation: u64,
        reason: RefreshReason,
    ) -> (Result<StoreRefresh, AuthError>, u32) {
        let give_up = Instant::now() + self.wait_bound;
        loop {
            let mark = self.store.change_mark(&self.account);
            let acquired = match self.store.try_acquire(&self.account, &self.holder).await {
                Ok(acquired) => acquired,
                Err(e) => return (Err(store_unavailable(&e)), 0),
            };
            match acquired {
                Acquire::Inactive(stored) => return (Err(inactive_error(&stored)), 0),
                Acquire::Leased {
                    lease,
                    stored,
                    abandoned,
                } => {
                    if stored.generation != generation && abandoned.is_none() {
                        // Rotated by another process since we last looked: no token request.
                        let _ = self.store.release(&lease, Release::NotSpent).await;
                        counters.coalesced();
                        return (Ok(StoreRefresh::Adopted(stored)), 0);
                    }
                    return self
                        .lead(endpoint, clock, counters, lease, stored, abandoned, reason)
                        .await;
                }
                Acquire::Busy => {
                    // Someone else is refreshing: wait for their commit (a notification, or
                    // the next poll), then adopt their keys if they rotated.
                    let now = Instant::now();
                    if now >= give_up {
                        return (
                            Err(AuthError::TokenEndpointUnavailable {
                                attempts: 0,
                                last: TransientFailure::Network(format!(
                                    "another worker held the credential store lease of account \
                                     `{}` for more than {} s",
                                    self.account,
                                    self.wait_bound.as_secs()
                                )),
                            }),
                            0,
                        );
                    }
                    let wait = POLL_INTERVAL.min(give_up - now);
                    self.store.wait_for_change(&self.account, mark, wait).await;
                    match self.store.load(&self.account).await {
                        Ok(Some(stored)) if stored.generation != generation => {
                            if stored.state != CredentialState::Active {
                                return (Err(inactive_error(&stored)), 0);
                            }
                            counters.coalesced();
                            return (Ok(StoreRefresh::Adopted(stored)), 0);
                        }
                        Ok(_) => {}
                        Err(e) => return (Err(store_unavailable(&e)), 0),
                    }
                }
            }
        }
    }

    /// Holding the lease: spend the stored refresh token and commit, or give the lease back.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &self,
        endpoint: &TokenEndpoint,
        clock: &dyn Clock,
        counters: &Counters,
        lease: Lease,
        stored: StoredCredential,
        abandoned: Option<AbandonedIntent>,
        reason: RefreshReason,
    ) -> (Result<StoreRefresh, AuthError>, u32) {
        if let Some(intent) = &abandoned {
            tracing::warn!(
                target: "deckhand::store",
                account = %self.account,
                generation = intent.generation,
                dead_holder = %intent.holder,
                holder = %self.holder,
                "taking over a lease left with an intent: retrying once with its refresh token"
            );
        }
        // The token request must end well before the lease does, so no other process can take
        // the lease over while our request may still be spending the token.
        let deadline = lease.taken_at + lease.duration.mul_f64(0.6);
        let refresh_token = stored.credentials.token().and_then(|t| t.refresh_token());
        let sent = std::sync::atomic::AtomicU32::new(0);
        let on_attempt = || {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counters.token_request();
        };
        let issued = tokio::time::timeout_at(
            deadline.into(),
            endpoint.request(refresh_token, clock, &on_attempt),
        )
        .await;
        let attempts = sent.load(std::sync::atomic::Ordering::Relaxed);
        let token = match issued {
            Ok(Ok(Issued {
                token, unusable, ..
            })) => (token, unusable.is_some()),
            Ok(Err(Failed {
                error,
                response_lost,
                ..
            })) => {
                let how = match &error {
                    e if e.is_reauth_required() && abandoned.is_some() => Release::RotationLost {
                        reason: format!(
                            "the provider refused the refresh token of generation {} left by \
                             holder {} ({})",
                            stored.generation,
                            abandoned.as_ref().map_or("?", |a| a.holder.as_str()),
                            error.kind()
                        ),
                    },
                    e if e.is_reauth_required() => Release::NeedsReauth {
                        reason: format!(
                            "the provider refused the refresh token of generation {} ({})",
                            stored.generation,
                            e.kind()
                        ),
                    },
                    _ if response_lost || abandoned.is_some() => Release::MaybeSpent,
                    _ => Release::NotSpent,
                };
                let lost = matches!(how, Release::RotationLost { .. });
                if let Err(e) = self.store.release(&lease, how).await {
                    tracing::warn!(target: "deckhand::store", account = %self.account, error = %e, "releasing the lease failed; it will expire");
                }
                if let (true, AuthError::ReauthRequired { status, code, .. }) = (lost, &error) {
                    tracing::error!(
                        target: "deckhand::store",
                        account = %self.account,
                        generation = stored.generation,
                        "rotation lost: the refresh token of an interrupted refresh was refused; \
                         the account needs a new authorization"
                    );
                    return (
                        Err(AuthError::RotationLost {
                            generation: stored.generation,
                            status: *status,
                            code: code.clone(),
                        }),
                        attempts,
                    );
                }
                return (Err(error), attempts);
            }
            Err(_elapsed) => {
                let _ = self.store.release(&lease, Release::MaybeSpent).await;
                return (
                    Err(AuthError::TokenEndpointUnavailable {
                        attempts,
                        last: TransientFailure::Network(format!(
                            "no token response within {} ms (the lease's token deadline)",
                            lease.duration.mul_f64(0.6).as_millis()
                        )),
                    }),
                    attempts,
                );
            }
        };
        let (token, unusable) = token;
        let merged = match stored.credentials.token() {
            Some(old) => old.merged_with(token),
            None => token,
        };
        // An unusable access token does not make the rotated refresh token less real: commit
        // it, without any access token (the next caller refreshes again).
        let merged = if unusable {
            merged.without_access_token()
        } else {
            merged
        };
        let update = KeysUpdate {
            credentials: stored.credentials.with_token(merged),
            generation: stored.generation + 1,
            reason,
        };
        (self.commit_with_retry(&lease, update).await, attempts)
    }

    /// Commits keys refreshed earlier whose commit failed. There is no lease any more: the
    /// compare-and-set on the generation is the fence (epoch 0 is never a held lease, so no
    /// one else's lease is cleared).
    pub(crate) async fn commit_unpersisted(
        &self,
        update: KeysUpdate,
    ) -> Result<StoreRefresh, AuthError> {
        let lease = Lease {
            account: self.account.clone(),
            holder: self.holder.clone(),
            epoch: 0,
            duration: Duration::ZERO,
            taken_at: Instant::now(),
        };
        self.commit_with_retry(&lease, update).await
    }

    /// The rotated keys exist only in this process until committed: retry a failing database
    /// for a while (up to the wait bound) before handing them back unpersisted.
    async fn commit_with_retry(
        &self,
        lease: &Lease,
        update: KeysUpdate,
    ) -> Result<StoreRefresh, AuthError> {
        let mut schedule = retry::Policy::new(
            retry::Backoff::exponential(Duration::from_millis(100))
                .with_cap(Duration::from_secs(2)),
        )
        .with_max_elapsed(self.wait_bound)
        .attempts();
        let commit = loop {
            let error = match self.store.commit(lease, &update).await {
                Ok(commit) => break commit,
                Err(e) => e,
            };
            match schedule.next_delay(None) {
                Some(delay) => {
                    tracing::warn!(target: "deckhand::store", account = %self.account, generation = update.generation, error = %error, "committing rotated keys failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::error!(target: "deckhand::store", account = %self.account, generation = update.generation, error = %error, "rotated keys could not be committed to the credential store; kept in memory");
                    let error = AuthError::KeysNotPersisted {
                        generation: update.generation,
                        reason: error.to_string(),
                    };
                    return Ok(StoreRefresh::Unpersisted { update, error });
                }
            }
        };
        match commit {
            Commit::Committed => Ok(StoreRefresh::Committed(update)),
            Commit::Superseded(winner) => {
                let winner = *winner;
                tracing::warn!(
                    target: "deckhand::store",
                    account = %self.account,
                    spent = update.generation - 1,
                    stored = winner.generation,
                    "compare-and-set lost: adopting the stored keys"
                );
                if winner.state != CredentialState::Active {
                    return Err(inactive_error(&winner));
                }
                Ok(StoreRefresh::Adopted(winner))
            }
        }
    }
}

fn store_unavailable(e: &StoreError) -> AuthError {
    AuthError::TokenEndpointUnavailable {
        attempts: 0,
        last: TransientFailure::Network(e.to_string()),
    }
}

fn inactive_error(stored: &StoredCredential) -> AuthError {
    let detail = stored.state_detail.clone().unwrap_or_default();
    match stored.state {
        // Recorded by the worker that took over the interrupted refresh; the provider's
        // refusal was an `invalid_grant` (the detail, for operators, is in the store).
        CredentialState::RotationLost => AuthError::RotationLost {
            generation: stored.generation,
            status: 400,
            code: "invalid_grant".into(),
        },
        _ => AuthError::ReauthRequired {
            status: 400,
            code: "invalid_grant".into(),
            description: Some(format!(
                "the credential store marks this account as needing re-authorization{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            )),
        },
    }
}
