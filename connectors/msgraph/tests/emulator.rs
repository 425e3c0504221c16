//! End to end against the Graph emulator, in-process, over the local transport: token requests
//! per token lifetime (not per message), strict single-use rotating refresh tokens persisted to
//! a credentials file, 401 recovery, and the functions on real-looking data.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use deckhand::auth::MemorySink;
use deckhand::connector::{Session, StepConfig, Verification};
use deckhand::credentials::CredentialsFile;
use deckhand::transport::{FileKeysSink, JsonLines, run_local};
use deckhand_emulator::{Emulator, EmulatorConfig, ExpiresInFormat, NewMessage, RefreshRotation};
use deckhand_msgraph::MsGraph;
use serde_json::{Value, json};

const COMPONENT_JSON: &str = include_str!("../component.json");
/// Short enough to span several expiries in a few seconds. The JWT `exp` is rounded down to
/// whole seconds, so a 2 s token is known to live 1–2 s, and is refreshed after half of that.
const LIFETIME: Duration = Duration::from_secs(2);
/// Sleeping this long between batches lets every token expire.
const PAST_EXPIRY: Duration = Duration::from_millis(2300);
const BATCHES: u64 = 3;
const MESSAGES_PER_BATCH: usize = 4;
/// 5 seeded users, 2 per page.
const PAGES_PER_MESSAGE: u64 = 3;

async fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator")
}

fn emulator_app_keys(emulator: &Emulator) -> Value {
    let client = emulator.client();
    app_keys(
        emulator.base_url(),
        &emulator.config().tenant_id,
        &client.id,
        &client.secret,
    )
}

fn emulator_delegated_keys(emulator: &Emulator, refresh_token: &str) -> Value {
    let client = emulator.client();
    delegated_keys(
        emulator.base_url(),
        &emulator.config().tenant_id,
        &client.id,
        &client.secret,
        refresh_token,
    )
}

/// JSON lines written to memory.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Output {
    fn events(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }
}

/// Runs `MESSAGES_PER_BATCH` listUsers messages through the local transport.
async fn list_users_batch(session: &Session<MsGraph>, lines: &JsonLines) {
    let input = "{\"pageSize\": 2}\n".repeat(MESSAGES_PER_BATCH);
    let stats = run_local(session, "listUsers", input.as_bytes(), lines.clone())
        .await
        .expect("local run");
    assert_eq!((stats.processed, stats.failed), (MESSAGES_PER_BATCH, 0));
}

fn stored_refresh_token(path: &Path) -> String {
    let keys = CredentialsFile::new(path).load().unwrap().to_keys();
    keys["oauth"]["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_requests_one_token_per_lifetime_using_the_jwt_exp() {
    // No expires_in: the SDK reads the expiry from the JWT's exp claim.
    let emulator = emulator(EmulatorConfig {
        token_lifetime: LIFETIME,
        expires_in_format: ExpiresInFormat::Omitted,
        ..EmulatorConfig::default()
    })
    .await;
    let session = session_with(
        connector(),
        emulator_app_keys(&emulator),
        json!({}),
        json!({}),
        Arc::new(MemorySink::new()),
    );
    let output = Output::default();
    let lines = JsonLines::new(output.clone());

    for batch in 0..BATCHES {
        if batch > 0 {
            tokio::time::sleep(PAST_EXPIRY).await;
        }
        list_users_batch(&session, &lines).await;
    }

    let counters = emulator.counters();
    // The first token, then one per expiry crossed: not one per message or per request.
    assert_eq!(
        counters.client_credentials_requests, BATCHES,
        "{counters:?}"
    );
    assert_eq!(counters.token_requests, BATCHES, "{counters:?}");
    assert_eq!(counters.unauthorized, 0, "{counters:?}");
    let messages = BATCHES * MESSAGES_PER_BATCH as u64;
    assert_eq!(counters.resource_requests, messages * PAGES_PER_MESSAGE);
    assert_eq!(output.count("data") as u64, messages * 5);
    assert_eq!(output.count("error"), 0);
    assert_eq!(
        session.token_manager().unwrap().metrics().refreshes,
        BATCHES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_rotations_are_single_flight_and_persisted_to_the_credentials_file() {
    // Strict single-use refresh tokens: replaying one would answer invalid_grant and revoke the
    // whole family. expires_in comes as a string, as from Azure AD v1-style endpoints.
    let emulator = emulator(EmulatorConfig {
        token_lifetime: LIFETIME,
        expires_in_format: ExpiresInFormat::String,
        graph_refresh_rotation: RefreshRotation::Strict,
        ..EmulatorConfig::default()
    })
    .await;
    let first_refresh_token = emulator.issue_refresh_token(&emulator.client().id);
    let family = emulator.family_of(&first_refresh_token).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    std::fs::write(
        &path,
        emulator_delegated_keys(&emulator, &first_refresh_token).to_string(),
    )
    .unwrap();

    let output = Output::default();
    let lines = JsonLines::new(output.clone());
    let sink = FileKeysSink::new(CredentialsFile::new(&path), Some(lines.clone()));
    let step = StepConfig {
        credentials: Some(deckhand::cli::load_credentials(&path, COMPONENT_JSON).unwrap()),
        ..StepConfig::default()
    };
    let session = Session::new(Arc::new(connector()), step, Arc::new(sink)).unwrap();

    let mut seen = vec![first_refresh_token];
    for batch in 0..BATCHES {
        if batch > 0 {
            tokio::time::sleep(PAST_EXPIRY).await;
        }
        list_users_batch(&session, &lines).await;
        // The file always holds the newest refresh token, of the same (unrevoked) family.
        let stored = stored_refresh_token(&path);
        assert!(!seen.contains(&stored), "batch {batch}: not rotated");
        assert_eq!(
            emulator.family_of(&stored).as_deref(),
            Some(family.as_str())
        );
        seen.push(stored);
    }

    let counters = emulator.counters();
    assert_eq!(counters.invalid_grant, 0, "{counters:?}");
    assert_eq!(counters.family_revocations, 0, "{counters:?}");
    assert_eq!(counters.refresh_token_requests, BATCHES, "{counters:?}");
    assert_eq!(counters.successful_refreshes, BATCHES, "{counters:?}");
    assert_eq!(counters.unauthorized, 0, "{counters:?}");
    assert_eq!(emulator.is_family_revoked(&family), Some(false));
    // Every rotation shows up in the event stream, in order, without secrets.
    let notices: Vec<Value> = output
        .events()
        .into_iter()
        .filter(|e| e["event"] == "updateKeys")
        .collect();
    assert_eq!(notices.len() as u64, BATCHES);
    assert_eq!(notices.last().unwrap()["data"]["generation"], BATCHES);
    assert!(
        !output
            .events()
            .iter()
            .any(|e| e.to_string().contains(seen.last().unwrap()))
    );

    // A restart picks up the newest refresh token from the file, and it works.
    drop(session);
    let step = StepConfig {
        credentials: Some(deckhand::cli::load_credentials(&path, COMPONENT_JSON).unwrap()),
        ..StepConfig::default()
    };
    let sink = FileKeysSink::new(CredentialsFile::new(&path), None);
    let restarted = Session::new(Arc::new(connector()), step, Arc::new(sink)).unwrap();
    restarted
        .token_manager()
        .unwrap()
        .force_refresh()
        .await
        .unwrap();
    let counters = emulator.counters();
    assert_eq!(
        (counters.invalid_grant, counters.successful_refreshes),
        (0, BATCHES + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_share_one_refresh_per_expiry() {
    let emulator = emulator(EmulatorConfig {
        token_lifetime: LIFETIME,
        ..EmulatorConfig::default()
    })
    .await;
    let refresh_token = emulator.issue_refresh_token(&emulator.client().id);
    let sink = MemorySink::new();
    let session = Arc::new(session_with(
        connector(),
        emulator_delegated_keys(&emulator, &refresh_token),
        json!({}),
        json!({}),
        Arc::new(sink.clone()),
    ));
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(PAST_EXPIRY).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let session = session.clone();
            tasks.spawn(async move {
                run(
                    &session,
                    "getUser",
                    json!({"userId": "user3@deckhand.test"}),
                )
                .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            let (outcome, events) = result.unwrap();
            assert_eq!(outcome.errors, 0, "{events:?}");
        }
    }
    let counters = emulator.counters();
    assert_eq!(
        (
            counters.refresh_token_requests,
            counters.invalid_grant,
            counters.family_revocations
        ),
        (2, 0, 0),
        "{counters:?}"
    );
    assert_eq!(sink.updates().len(), 2);
}

#[tokio::test]
async fn a_token_rejected_early_is_refreshed_once_and_the_request_retried() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let session = session_with(
        connector(),
        emulator_app_keys(&emulator),
        json!({}),
        json!({}),
        Arc::new(MemorySink::new()),
    );
    let (_, events) = run(
        &session,
        "getUser",
        json!({"userId": "user1@deckhand.test"}),
    )
    .await;
    assert_eq!(data(&events).len(), 1);
    // The token still looks valid to the client, but Graph now refuses it (as with CAE).
    emulator.expire_access_tokens();
    let (outcome, events) = run(
        &session,
        "getUser",
        json!({"userId": "user1@deckhand.test"}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events)[0]["userPrincipalName"], "user1@deckhand.test");
    let counters = emulator.counters();
    assert_eq!((counters.token_requests, counters.unauthorized), (2, 1));
}

#[tokio::test]
async fn read_mail_polls_the_emulated_mailbox() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let session = session_with(
        connector(),
        emulator_app_keys(&emulator),
        json!({"mailbox": "user1@deckhand.test"}),
        json!({}),
        Arc::new(MemorySink::new()),
    );
    let (outcome, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    let seeded = data(&events);
    assert_eq!(seeded.len(), emulator.config().seed_messages_per_user);
    let newest = seeded.last().unwrap()["receivedDateTime"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(session.snapshot()["lastReceivedDateTime"], newest.as_str());

    // Two more messages with exactly the newest timestamp, one later.
    let newest_at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            chrono::DateTime::parse_from_rfc3339(&newest)
                .unwrap()
                .timestamp() as u64,
        );
    for subject in ["same second 1", "same second 2"] {
        let mut message = NewMessage::new(subject, "late@example.test");
        message.received_at = Some(newest_at);
        emulator
            .add_message("user1@deckhand.test", message)
            .unwrap();
    }
    emulator
        .add_message(
            "user1@deckhand.test",
            NewMessage::new("now", "now@example.test"),
        )
        .unwrap();
    let (_, events) = run(&session, "readMail", json!({})).await;
    let subjects: Vec<_> = data(&events).iter().map(|m| m["subject"].clone()).collect();
    assert_eq!(subjects, ["same second 1", "same second 2", "now"]);

    let (_, events) = run(&session, "readMail", json!({})).await;
    assert!(data(&events).is_empty(), "{events:?}");
}

#[tokio::test]
async fn send_mail_reaches_the_emulated_mailbox() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let session = session_with(
        connector(),
        emulator_app_keys(&emulator),
        json!({}),
        json!({}),
        Arc::new(MemorySink::new()),
    );
    let (outcome, events) = run(
        &session,
        "sendMail",
        json!({"from": "user1@deckhand.test", "to": "user2@deckhand.test", "subject": "Hi", "body": "Hello"}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    let sent = emulator.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].subject(), Some("Hi"));
    assert_eq!(sent[0].to_addresses(), ["user2@deckhand.test"]);
    assert!(sent[0].save_to_sent_items);
}

#[tokio::test]
async fn verify_credentials() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let verify = |keys: Value| {
        let session = session_with(
            connector(),
            keys,
            json!({}),
            json!({}),
            Arc::new(MemorySink::new()),
        );
        async move { session.verify().await }
    };

    assert_eq!(
        verify(emulator_app_keys(&emulator)).await.unwrap(),
        Verification::Verified
    );

    let mut wrong = emulator_app_keys(&emulator);
    wrong["clientSecret"] = json!("wrong");
    let Verification::NotVerified { reason } = verify(wrong).await.unwrap() else {
        panic!("a wrong secret must not verify")
    };
    assert!(reason.contains("invalid_client"), "{reason}");

    let refresh_token = emulator.issue_refresh_token(&emulator.client().id);
    let delegated = emulator_delegated_keys(&emulator, &refresh_token);
    assert_eq!(
        verify(delegated.clone()).await.unwrap(),
        Verification::Verified
    );
    // The same refresh token again: spent, and (strict rotation) the family is revoked.
    let Verification::NotVerified { reason } = verify(delegated).await.unwrap() else {
        panic!("a spent refresh token must not verify")
    };
    assert!(reason.contains("invalid_grant"), "{reason}");
}

#[test]
fn delegated_credentials_without_a_refresh_token_are_refused_up_front() {
    let keys = delegated_keys("https://login.example", "t", "id", "secret", "");
    let step = StepConfig {
        credentials: Some(
            deckhand::credentials::Credentials::with_token_field(keys, "oauth").unwrap(),
        ),
        ..StepConfig::default()
    };
    let err = Session::new(Arc::new(connector()), step, Arc::new(MemorySink::new())).unwrap_err();
    assert_eq!(err.name(), "InvalidCredentials");
    assert!(err.message().contains("refresh token"), "{err}");
}
