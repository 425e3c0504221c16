//! The credential store against the real PostgreSQL (127.0.0.1:5432, database `test`) and the
//! provider emulator: several processes, one refresh per expiry, lease takeover, crash
//! recovery, fenced commits, keys at rest, logs.
//!
//! Each test works in a schema of its own, dropped at the end. Without PostgreSQL the tests
//! fail with instructions.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deckhand::auth::store::{
    Acquire, Commit, CredentialState, Lease, Release, StoreError, StoredCredential,
};
use deckhand::auth::{
    AccountId, AuthError, CredentialStore, Grant, HolderId, KeysUpdate, MemorySink, RefreshReason,
    TokenEndpoint, TokenManager,
};
use deckhand::credentials::Credentials;
use deckhand::store::{KeyRing, PgCredentialStore, StoreOptions};
use deckhand_emulator::{Emulator, EmulatorConfig, RefreshRotation, TokenFault};
use deckhand_tests::postgres::TestSchema;
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_deckhand-store-worker");

async fn emulator(rotation: RefreshRotation, lifetime: Duration) -> Emulator {
    Emulator::start(EmulatorConfig {
        token_lifetime: lifetime,
        graph_refresh_rotation: rotation,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator")
}

fn endpoint(emulator: &Emulator) -> TokenEndpoint {
    TokenEndpoint::new(&emulator.microsoft_token_url(), &emulator.client().id)
        .unwrap()
        .client_secret(emulator.client().secret.as_str())
        .grant(Grant::RefreshToken)
}

/// Seeds `account` with a fresh grant of the emulator; returns the refresh token.
async fn seed(store: &PgCredentialStore, emulator: &Emulator, account: &AccountId) -> String {
    let refresh_token = emulator.issue_refresh_token(&emulator.client().id);
    let keys = json!({"oauth": {"refresh_token": refresh_token}, "tenant": "contoso"});
    store
        .seed(account, &Credentials::from_keys(keys).unwrap(), 0)
        .await
        .unwrap();
    refresh_token
}

fn manager(
    store: &PgCredentialStore,
    emulator: &Emulator,
    stored: StoredCredential,
) -> TokenManager {
    TokenManager::builder(stored.credentials, endpoint(emulator), MemorySink::new())
        .generation(stored.generation)
        .store(
            Arc::new(store.clone()),
            AccountId::new("acc-1").unwrap(),
            HolderId::for_this_process(),
        )
        .build()
}

fn worker(
    schema: &TestSchema,
    emulator: &Emulator,
    mode: &str,
    lease_ms: u64,
    duration_ms: u64,
) -> Child {
    Command::new(WORKER)
        .envs(schema.env())
        .env("DH_ACCOUNT", "acc-1")
        .env("DH_TOKEN_URL", emulator.microsoft_token_url())
        .env("DH_CLIENT_ID", &emulator.client().id)
        .env("DH_CLIENT_SECRET", &emulator.client().secret)
        .env("DH_LEASE_MS", lease_ms.to_string())
        .env("DH_MODE", mode)
        .env("DH_DURATION_MS", duration_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting deckhand-store-worker")
}

async fn output_of(child: Child) -> String {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn figure(output: &str, name: &str) -> u64 {
    output
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in worker output {output:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_a_store_send_one_token_request_per_expiry() {
    let schema = TestSchema::new().await;
    let store = schema.store(Duration::from_secs(5)).await;
    let emulator = emulator(RefreshRotation::Strict, Duration::from_secs(2)).await;
    let account = AccountId::new("acc-1").unwrap();
    seed(&store, &emulator, &account).await;

    let a = worker(&schema, &emulator, "calls", 5000, 5000);
    let b = worker(&schema, &emulator, "calls", 5000, 5000);
    let (a, b) = tokio::join!(output_of(a), output_of(b));

    let counters = emulator.counters();
    let stored = store.load(&account).await.unwrap().unwrap();
    assert_eq!(counters.invalid_grant, 0, "{counters:?}");
    assert_eq!(counters.family_revocations, 0, "{counters:?}");
    assert_eq!((figure(&a, "errors"), figure(&b, "errors")), (0, 0));
    // Every token request produced the next generation: none was spent twice or wasted, and
    // the two processes' requests add up to the generations.
    assert_eq!(counters.token_requests, counters.successful_refreshes);
    assert_eq!(stored.generation, counters.successful_refreshes);
    assert_eq!(
        figure(&a, "token_requests") + figure(&b, "token_requests"),
        counters.token_requests
    );
    // 2 s tokens refreshed at half their lifetime for 5 s: about five expiries, not ten.
    assert!(
        (3..=7).contains(&counters.token_requests),
        "token requests: {counters:?}"
    );
    assert_eq!(stored.state, CredentialState::Active);
    schema.cleanup().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_a_stale_holder_is_fenced_off() {
    let schema = TestSchema::new().await;
    let store = schema.store(Duration::from_millis(1500)).await;
    let emulator = emulator(RefreshRotation::Strict, Duration::from_secs(3600)).await;
    let account = AccountId::new("acc-1").unwrap();
    seed(&store, &emulator, &account).await;

    // A holder takes the lease and goes silent before calling the provider.
    let silent = HolderId::new("silent-holder").unwrap();
    let Acquire::Leased { lease: stale, .. } = store.try_acquire(&account, &silent).await.unwrap()
    else {
        panic!("the lease should be free");
    };
    assert!(matches!(
        store
            .try_acquire(&account, &HolderId::new("other").unwrap())
            .await
            .unwrap(),
        Acquire::Busy
    ));

    let manager = manager(
        &store,
        &emulator,
        store.load(&account).await.unwrap().unwrap(),
    );
    let started = Instant::now();
    let authorization = manager
        .force_refresh()
        .await
        .expect("refresh after takeover");
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "refreshed after {:?}, before the lease expired",
        started.elapsed()
    );
    assert_eq!(authorization.generation(), 1);
    let counters = emulator.counters();
    assert_eq!(
        (counters.successful_refreshes, counters.invalid_grant),
        (1, 0)
    );
    assert_eq!(store.metrics().takeovers, 1);

    // The silent holder wakes up: its release is ignored (fenced by the epoch) and its
    // compare-and-set on generation 0 fails.
    store
        .release(
            &stale,
            Release::NeedsReauth {
                reason: "stale".into(),
            },
        )
        .await
        .unwrap();
    let stored = store.load(&account).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.generation),
        (CredentialState::Active, 1)
    );
    let stale_update = KeysUpdate {
        credentials: Credentials::from_keys(json!({"oauth": {"refresh_token": "stale"}})).unwrap(),
        generation: 1,
        reason: RefreshReason::Forced,
    };
    match store.commit(&stale, &stale_update).await.unwrap() {
        Commit::Superseded(stored) => assert_eq!(stored.generation, 1),
        Commit::Committed => panic!("a stale compare-and-set succeeded"),
    }
    schema.cleanup().await;
}

/// A worker process takes the lease and spends the refresh token (the provider rotates it and
/// holds the answer back), and is killed before it can commit. This process then takes the
/// lease over.
async fn holder_killed_mid_refresh(
    rotation: RefreshRotation,
) -> (
    Result<u64, AuthError>,
    StoredCredential,
    Emulator,
    u32,
    TokenManager,
    TestSchema,
    PgCredentialStore,
) {
    let schema = TestSchema::new().await;
    let lease_ms = 2000;
    let store = schema.store(Duration::from_millis(lease_ms)).await;
    let emulator = emulator(rotation, Duration::from_secs(3600)).await;
    let account = AccountId::new("acc-1").unwrap();
    seed(&store, &emulator, &account).await;
    emulator.fail_next_token_requests(1, TokenFault::Stall(Duration::from_secs(30)));

    let mut child = worker(&schema, &emulator, "refresh", lease_ms, 0);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulator.counters().successful_refreshes == 0 {
        assert!(Instant::now() < deadline, "the worker never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let manager = manager(
        &store,
        &emulator,
        store.load(&account).await.unwrap().unwrap(),
    );
    let outcome = manager.force_refresh().await.map(|a| a.generation());
    let stored = store.load(&account).await.unwrap().unwrap();
    (outcome, stored, emulator, pid, manager, schema, store)
}

#[tokio::test]
async fn a_holder_killed_with_the_intent_set_is_recovered_under_a_grace_window() {
    let grace = RefreshRotation::Grace {
        window: Duration::from_secs(30),
    };
    let (outcome, stored, emulator, _, _, schema, store) = holder_killed_mid_refresh(grace).await;
    assert_eq!(
        outcome.expect("recovered with the intent's refresh token"),
        1
    );
    assert_eq!(
        (stored.state, stored.generation),
        (CredentialState::Active, 1)
    );
    let counters = emulator.counters();
    assert_eq!(
        (
            counters.successful_refreshes,
            counters.invalid_grant,
            counters.family_revocations
        ),
        (2, 0, 0)
    );
    assert_eq!(store.metrics().takeovers, 1);
    schema.cleanup().await;
}

#[tokio::test]
async fn a_holder_killed_with_the_intent_set_is_rotation_lost_under_strict_rotation() {
    let (outcome, stored, emulator, pid, manager, schema, store) =
        holder_killed_mid_refresh(RefreshRotation::Strict).await;
    match outcome {
        Err(AuthError::RotationLost { generation: 0, .. }) => {}
        other => panic!("expected RotationLost, got {other:?}"),
    }
    assert_eq!(stored.state, CredentialState::RotationLost);
    let detail = stored.state_detail.unwrap_or_default();
    assert!(
        detail.contains(&format!(":{pid}:")),
        "the dead holder is named: {detail}"
    );
    assert_eq!(store.metrics().rotations_lost, 1);

    // Never a refresh loop: neither this manager nor a new one sends another token request.
    let before = emulator.counters().token_requests;
    assert!(matches!(
        manager.authorization().await,
        Err(AuthError::RotationLost { .. })
    ));
    let fresh = self::manager(
        &store,
        &emulator,
        store
            .load(&AccountId::new("acc-1").unwrap())
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(matches!(
        fresh.force_refresh().await,
        Err(AuthError::RotationLost { .. })
    ));
    assert_eq!(emulator.counters().token_requests, before);
    schema.cleanup().await;
}

/// A store that lets a rival commit first, the moment this process commits.
struct RivalCommitsFirst {
    inner: PgCredentialStore,
    rival: Mutex<Option<KeysUpdate>>,
}

#[async_trait]
impl CredentialStore for RivalCommitsFirst {
    async fn load(&self, account: &AccountId) -> Result<Option<StoredCredential>, StoreError> {
        self.inner.load(account).await
    }
    async fn seed(
        &self,
        account: &AccountId,
        credentials: &Credentials,
        generation: u64,
    ) -> Result<StoredCredential, StoreError> {
        self.inner.seed(account, credentials, generation).await
    }
    async fn try_acquire(
        &self,
        account: &AccountId,
        holder: &HolderId,
    ) -> Result<Acquire, StoreError> {
        self.inner.try_acquire(account, holder).await
    }
    async fn commit(&self, lease: &Lease, update: &KeysUpdate) -> Result<Commit, StoreError> {
        let rival = self.rival.lock().unwrap().take();
        if let Some(rival) = rival {
            let rival_lease = Lease {
                holder: HolderId::new("rival").unwrap(),
                epoch: 0,
                ..lease.clone()
            };
            assert!(matches!(
                self.inner.commit(&rival_lease, &rival).await?,
                Commit::Committed
            ));
        }
        self.inner.commit(lease, update).await
    }
    async fn release(&self, lease: &Lease, how: Release) -> Result<(), StoreError> {
        self.inner.release(lease, how).await
    }
    fn change_mark(&self, account: &AccountId) -> u64 {
        self.inner.change_mark(account)
    }
    async fn wait_for_change(&self, account: &AccountId, since: u64, timeout: Duration) {
        self.inner.wait_for_change(account, since, timeout).await
    }
    fn lease_duration(&self) -> Duration {
        self.inner.lease_duration()
    }
}

#[tokio::test]
async fn the_loser_of_the_compare_and_set_adopts_the_winners_keys() {
    let schema = TestSchema::new().await;
    let store = schema.store(Duration::from_secs(5)).await;
    let emulator = emulator(RefreshRotation::Strict, Duration::from_secs(3600)).await;
    let account = AccountId::new("acc-1").unwrap();
    seed(&store, &emulator, &account).await;
    let winner_keys = json!({
        "oauth": {"access_token": "winner-at", "refresh_token": "winner-rt", "expires_in": 3600},
        "tenant": "contoso"
    });
    let race = RivalCommitsFirst {
        inner: store.clone(),
        rival: Mutex::new(Some(KeysUpdate {
            credentials: Credentials::from_keys(winner_keys.clone()).unwrap(),
            generation: 1,
            reason: RefreshReason::Expiry,
        })),
    };
    let stored = store.load(&account).await.unwrap().unwrap();
    let manager = TokenManager::builder(stored.credentials, endpoint(&emulator), MemorySink::new())
        .store(
            Arc::new(race),
            account.clone(),
            HolderId::for_this_process(),
        )
        .build();

    let authorization = manager.force_refresh().await.expect("adopted");
    assert_eq!(authorization.generation(), 1);
    assert_eq!(
        authorization.header().to_str().unwrap(),
        "Bearer winner-at",
        "the loser uses the winner's token, not its own"
    );
    let kept = manager.credentials();
    assert_eq!(
        kept.token().unwrap().refresh_token().unwrap().expose(),
        "winner-rt"
    );
    let stored = store.load(&account).await.unwrap().unwrap();
    assert_eq!(stored.generation, 1);
    assert_eq!(store.metrics().commits_superseded, 1);
    schema.cleanup().await;
}

#[tokio::test]
async fn keys_at_rest_are_unreadable_without_the_key() {
    let schema = TestSchema::new().await;
    let store = schema.store(Duration::from_secs(5)).await;
    let emulator = emulator(RefreshRotation::Strict, Duration::from_secs(3600)).await;
    let account = AccountId::new("acc-1").unwrap();
    let refresh_token = seed(&store, &emulator, &account).await;
    let manager = manager(
        &store,
        &emulator,
        store.load(&account).await.unwrap().unwrap(),
    );
    manager.force_refresh().await.unwrap();
    let current = manager.credentials();
    let token = current.token().unwrap();
    let secrets = [
        refresh_token.clone(),
        token.refresh_token().unwrap().expose().to_owned(),
        token.access_token().unwrap().expose().to_owned(),
    ];

    let dump: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::text FROM (SELECT * FROM \"{0}\".accounts) t
         UNION ALL SELECT row_to_json(o)::text FROM (SELECT * FROM \"{0}\".keys_outbox) o",
        schema.schema
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(dump.len(), 2, "one account row, one outbox row");
    let raw: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
        "SELECT keys_ciphertext FROM \"{}\".accounts",
        schema.schema
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    for secret in &secrets {
        for row in &dump {
            assert!(
                !row.contains(secret.as_str()),
                "a token is readable at rest: {row}"
            );
        }
        assert!(!raw[0].windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    assert!(dump[0].contains("\"key_id\":\"test-1\""));

    let wrong_key = PgCredentialStore::connect(
        &schema.url,
        KeyRing::new(vec![("test-1".into(), [9; 32])]).unwrap(),
        StoreOptions {
            schema: schema.schema.clone(),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let err = wrong_key.load(&account).await.unwrap_err();
    assert!(matches!(err, StoreError::Decrypt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        secrets.iter().all(|s| !message.contains(s.as_str())),
        "{message}"
    );
    let unknown_id = PgCredentialStore::connect(
        &schema.url,
        KeyRing::new(vec![("other".into(), [9; 32])]).unwrap(),
        StoreOptions {
            schema: schema.schema.clone(),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let err = unknown_id.load(&account).await.unwrap_err().to_string();
    assert!(err.contains("no key with id `test-1`"), "{err}");
    schema.cleanup().await;
}

/// Collects everything logged, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_secret_is_logged_at_trace_and_the_outbox_goes_out_in_order() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let schema = TestSchema::new().await;
    let store = schema.store(Duration::from_secs(5)).await;
    let emulator = emulator(RefreshRotation::Strict, Duration::from_secs(3600)).await;
    let account = AccountId::new("acc-1").unwrap();
    let mut secrets = vec![
        seed(&store, &emulator, &account).await,
        emulator.client().secret.clone(),
        schema.keys_spec.split_once('=').unwrap().1.to_owned(),
    ];
    let manager = manager(
        &store,
        &emulator,
        store.load(&account).await.unwrap().unwrap(),
    );
    for _ in 0..3 {
        manager.force_refresh().await.unwrap();
        let credentials = manager.credentials();
        let token = credentials.token().unwrap();
        secrets.push(token.refresh_token().unwrap().expose().to_owned());
        secrets.push(token.access_token().unwrap().expose().to_owned());
    }

    let published = Arc::new(Mutex::new(Vec::new()));
    let sink = published.clone();
    let relayed = store
        .relay_outbox(Some(&account), &move |entry| {
            sink.lock().unwrap().push(entry);
            Box::pin(async { Ok(()) })
        })
        .await
        .unwrap();
    assert_eq!(relayed, 3);
    let published = std::mem::take(&mut *published.lock().unwrap());
    let generations: Vec<u64> = published.iter().map(|e| e.update.generation).collect();
    assert_eq!(generations, [1, 2, 3]);
    for pair in published.windows(2) {
        assert_eq!(
            pair[1].parent_fingerprint, pair[0].refresh_fingerprint,
            "lineage"
        );
    }
    assert_eq!(
        published[2].update.credentials.to_keys(),
        manager.credentials().to_keys()
    );
    assert_eq!(
        store
            .relay_outbox(Some(&account), &|_| Box::pin(async { Ok(()) }))
            .await
            .unwrap(),
        0,
        "published rows are deleted"
    );

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("rotation committed"),
        "the capture works: {logs}"
    );
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret was logged");
    }
    schema.cleanup().await;
}
