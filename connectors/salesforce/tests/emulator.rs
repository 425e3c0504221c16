//! End to end against the Salesforce emulator, in-process over the local transport: opaque
//! access tokens (expiry only shows up as 401 `INVALID_SESSION_ID`), strict single-use refresh
//! tokens whose reuse revokes the grant, and exact counters.
//!
//! What must hold however many messages run: no `invalid_grant`, one token request per
//! expiry (plus the first token), every rotation persisted before use, and the credentials
//! file ending with the one refresh token that still works.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deckhand::connector::{CollectingEmitter, Event, Message, Session, StepConfig, Verification};
use deckhand::credentials::{Credentials, CredentialsFile};
use deckhand::transport::{FileKeysSink, JsonLines, run_local};
use deckhand_emulator::{Counters, Emulator, EmulatorConfig, RefreshRotation};
use deckhand_salesforce::{OAuthApp, Salesforce};
use serde_json::{Map, Value, json};

/// What `run_local` writes, kept in memory.
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
    /// Every event line so far, parsed.
    fn events(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }
}

/// One step wired like `run --local`: a credentials file holding only a refresh token of a
/// new grant, rotations written back to it, events as JSON lines.
struct Step {
    emulator: Emulator,
    session: Arc<Session<Salesforce>>,
    file: CredentialsFile,
    output: Output,
    lines: JsonLines,
    seeded_refresh_token: String,
    _dir: tempfile::TempDir,
}

async fn step(config: EmulatorConfig, fields: Value) -> Step {
    let emulator = Emulator::start(config).await.expect("the emulator starts");
    let app = emulator.client().clone();
    let seeded_refresh_token = emulator.issue_refresh_token(&app.id);
    let dir = tempfile::tempdir().unwrap();
    let file = CredentialsFile::new(dir.path().join("credentials.json"));
    let keys = json!({
        "prodEnv": "login",
        "loginUrl": emulator.base_url(),
        "oauth": {"refresh_token": seeded_refresh_token},
    });
    file.store(&Credentials::from_keys(keys).unwrap()).unwrap();

    let output = Output::default();
    let lines = JsonLines::new(output.clone());
    let step = StepConfig {
        fields: fields.as_object().cloned().unwrap_or_default(),
        credentials: Some(file.load().unwrap()),
        snapshot: json!({}),
    };
    let sink = FileKeysSink::new(file.clone(), Some(lines.clone()));
    let connector = Salesforce::new(OAuthApp::new(&app.id, &app.secret));
    let session = Session::new(Arc::new(connector), step, Arc::new(sink)).unwrap();
    Step {
        emulator,
        session: Arc::new(session),
        file,
        output,
        lines,
        seeded_refresh_token,
        _dir: dir,
    }
}

impl Step {
    /// Runs `function` over `messages` through the local transport.
    async fn run_local(&self, function: &str, messages: &[Value]) {
        let input: String = messages.iter().map(|m| format!("{m}\n")).collect();
        let stats = run_local(
            &self.session,
            function,
            input.as_bytes(),
            self.lines.clone(),
        )
        .await
        .unwrap();
        assert_eq!(stats.processed, messages.len());
        assert_eq!(stats.failed, 0, "{:#?}", self.output.named("error"));
    }

    /// The refresh token in the credentials file.
    fn stored_refresh_token(&self) -> String {
        self.file
            .load()
            .unwrap()
            .token()
            .unwrap()
            .refresh_token()
            .unwrap()
            .expose()
            .to_owned()
    }

    /// Whether the emulator accepts `refresh_token` (spending it).
    async fn refresh_token_works(&self, refresh_token: &str) -> bool {
        let app = self.emulator.client();
        reqwest::Client::new()
            .post(self.emulator.salesforce_token_url())
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", app.id.as_str()),
                ("client_secret", app.secret.as_str()),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    }

    fn assert_no_grant_was_refused(&self, counters: &Counters) {
        assert_eq!(counters.invalid_grant, 0, "{counters:#?}");
        assert_eq!(counters.family_revocations, 0, "{counters:#?}");
        assert_eq!(counters.invalid_client, 0, "{counters:#?}");
    }
}

fn strict(config: EmulatorConfig) -> EmulatorConfig {
    EmulatorConfig {
        salesforce_refresh_rotation: RefreshRotation::Strict,
        ..config
    }
}

/// Four batches of different actions, the tokens forced to expire between batches: three
/// expiries, so exactly four token requests (the first token and one per expiry) for twenty
/// messages and many more API calls.
#[tokio::test]
async fn a_run_spanning_several_expiries_refreshes_once_per_expiry() {
    let fields = json!({
        "sobject": "Account",
        "externalIdField": "External_Id__c",
        "lookupField": "External_Id__c",
    });
    let config = strict(EmulatorConfig {
        salesforce_page_size: 10,
        ..EmulatorConfig::default()
    });
    let step = step(config, fields).await;
    let numbered = |f: &dyn Fn(usize) -> Value| (1..=5).map(f).collect::<Vec<_>>();

    step.run_local(
        "create",
        &numbered(
            &|i| json!({"Name": format!("Deckhand {i}"), "External_Id__c": format!("DH-{i}")}),
        ),
    )
    .await;
    step.emulator.expire_access_tokens();
    step.run_local(
        "query",
        &numbered(&|_| json!({"query": "SELECT Id, Name FROM Account ORDER BY Name"})),
    )
    .await;
    step.emulator.expire_access_tokens();
    step.run_local(
        "upsert",
        &numbered(&|i| json!({"External_Id__c": format!("DH-{i}"), "Industry": "Shipping"})),
    )
    .await;
    step.emulator.expire_access_tokens();
    step.run_local(
        "lookup",
        &numbered(&|i| json!({"value": format!("DH-{i}")})),
    )
    .await;

    let counters = step.emulator.counters();
    step.assert_no_grant_was_refused(&counters);
    assert_eq!(counters.token_requests, 4, "{counters:#?}");
    assert_eq!(counters.successful_refreshes, 4, "{counters:#?}");
    assert_eq!(
        counters.unauthorized, 3,
        "one 401 per expiry: {counters:#?}"
    );
    // 5 creates + 5 queries × 3 pages (25 seeded + 5 created accounts, 10 per page) +
    // 5 upserts (+ 5 Id lookups after their 204) + 5 lookups + the 3 rejected requests.
    assert_eq!(
        counters.resource_requests,
        5 + 15 + 10 + 5 + 3,
        "{counters:#?}"
    );

    let data = step.output.named("data");
    assert_eq!(data.len(), 5 + 5 * 30 + 5 + 5);
    let looked_up = &data[data.len() - 5..];
    assert!(
        looked_up
            .iter()
            .all(|e| e["data"]["body"]["Industry"] == "Shipping"),
        "{looked_up:#?}"
    );

    // Every rotation was persisted, in order, and the file holds the newest refresh token:
    // the one in use, the only one the emulator still accepts.
    let generations: Vec<_> = step
        .output
        .named("updateKeys")
        .iter()
        .map(|e| e["data"]["generation"].clone())
        .collect();
    assert_eq!(generations, [json!(1), json!(2), json!(3), json!(4)]);
    assert_eq!(step.session.token_manager().unwrap().generation(), 4);
    let stored = step.stored_refresh_token();
    let in_use = step.session.credentials().unwrap();
    assert_eq!(
        stored,
        in_use.token().unwrap().refresh_token().unwrap().expose()
    );
    assert_ne!(stored, step.seeded_refresh_token);
    assert!(step.refresh_token_works(&stored).await);

    // Nothing secret reached the event stream.
    let printed = String::from_utf8(step.output.0.lock().unwrap().clone()).unwrap();
    assert!(!printed.contains(&stored) && !printed.contains(&step.seeded_refresh_token));
    assert!(!printed.contains(&step.emulator.client().secret));
}

/// Real expiry: access tokens live one second, batches are a little further apart. However
/// the timing falls, each expiry costs one 401 and one refresh, never a token request per
/// message, and no grant is refused.
#[tokio::test]
async fn short_lived_tokens_cost_one_refresh_per_expiry_not_per_message() {
    let config = strict(EmulatorConfig {
        token_lifetime: Duration::from_secs(1),
        ..EmulatorConfig::default()
    });
    let step = step(config, json!({"sobject": "Contact"})).await;
    let queries: Vec<Value> = (0..4)
        .map(|_| json!({"query": "SELECT Id, Email FROM Contact LIMIT 5"}))
        .collect();
    let batches = 3usize;
    for batch in 0..batches {
        if batch > 0 {
            tokio::time::sleep(Duration::from_millis(1300)).await;
        }
        step.run_local("query", &queries).await;
    }

    let counters = step.emulator.counters();
    step.assert_no_grant_was_refused(&counters);
    assert!(
        counters.unauthorized >= (batches - 1) as u64,
        "{counters:#?}"
    );
    assert_eq!(
        counters.token_requests,
        1 + counters.unauthorized,
        "the first token, then one per expiry: {counters:#?}"
    );
    assert!(counters.token_requests < (batches * queries.len()) as u64);
    assert_eq!(step.output.named("data").len(), batches * queries.len() * 5);
    assert_eq!(
        step.output.named("updateKeys").len() as u64,
        counters.token_requests
    );
    let stored = step.stored_refresh_token();
    assert!(step.refresh_token_works(&stored).await);
}

/// Many messages in flight when the token expires: they all get 401 with the same token, and
/// the SDK's single-flight gate turns that into one refresh. Two refreshes would spend the same
/// single-use refresh token twice, and the emulator would revoke the grant.
#[tokio::test]
async fn concurrent_messages_after_an_expiry_share_one_refresh() {
    let step = step(
        strict(EmulatorConfig::default()),
        json!({"sobject": "Account", "lookupField": "External_Id__c"}),
    )
    .await;
    let lookup = |i: usize| {
        let session = step.session.clone();
        async move {
            let events = CollectingEmitter::new();
            let message = Message::new(json!({"value": format!("EXT-A-{i:05}")}));
            let outcome = session
                .process("lookup", message, Arc::new(events.clone()))
                .await;
            (outcome, events.events())
        }
    };
    // The first token.
    let (outcome, _) = lookup(1).await;
    assert_eq!(outcome.errors, 0);

    step.emulator.expire_access_tokens();
    let results = futures_util::future::join_all((1..=12).map(lookup)).await;
    for (outcome, events) in &results {
        assert_eq!(outcome.errors, 0, "{events:#?}");
        assert!(matches!(events[0], Event::Data(_)), "{events:#?}");
    }

    let counters = step.emulator.counters();
    step.assert_no_grant_was_refused(&counters);
    // Several requests were rejected with the same expired token, yet one refresh followed.
    assert!(counters.unauthorized >= 2, "{counters:#?}");
    assert_eq!(counters.token_requests, 2, "{counters:#?}");
    assert!(step.refresh_token_works(&step.stored_refresh_token()).await);
}

/// The trigger against the emulator's SOQL: seven records, five of them sharing one
/// `LastModifiedDate`, three per poll. Every record is emitted exactly once, oldest first.
#[tokio::test]
async fn the_trigger_emits_each_record_once_across_polls_cut_inside_a_timestamp_group() {
    let fields = json!({
        "sobject": "Widget__c",
        "selectedFields": "Name",
        "maxRecords": 3,
        "startTime": "2024-06-01T00:00:00Z",
    });
    let step = step(strict(EmulatorConfig::default()), fields).await;
    let insert = |name: &str, at: &str| {
        let fields: Map<String, Value> =
            json!({"Name": name, "LastModifiedDate": at, "CreatedDate": at})
                .as_object()
                .cloned()
                .unwrap();
        step.emulator.insert_salesforce_record("Widget__c", fields)
    };
    insert("before the start", "2024-05-31T23:59:59.000+0000");
    let mut expected = Vec::new();
    for i in 1..=5 {
        expected.push(insert(
            &format!("batch {i}"),
            "2024-06-01T08:00:00.000+0000",
        ));
    }
    expected.push(insert("later", "2024-06-01T08:00:01.000+0000"));
    expected.push(insert("latest", "2024-06-02T00:00:00.000+0000"));

    let mut emitted = Vec::new();
    let mut per_poll = Vec::new();
    for _ in 0..10 {
        let events = CollectingEmitter::new();
        let outcome = step
            .session
            .process(
                "getUpdatedObjects",
                Message::new(json!({})),
                Arc::new(events.clone()),
            )
            .await;
        assert_eq!(outcome.errors, 0, "{:#?}", events.events());
        let ids: Vec<String> = events
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::Data(m) => m.body["Id"].as_str().map(str::to_owned),
                _ => None,
            })
            .collect();
        per_poll.push(ids.len());
        if ids.is_empty() {
            break;
        }
        emitted.extend(ids);
    }
    assert_eq!(per_poll, [3, 3, 1, 0]);
    let mut group = emitted[..5].to_vec();
    group.sort();
    let mut expected_group = expected[..5].to_vec();
    expected_group.sort();
    assert_eq!(
        group, expected_group,
        "the five records sharing a timestamp"
    );
    assert_eq!(emitted[5..], expected[5..], "then the later ones, in order");
    assert_eq!(
        step.session.snapshot(),
        json!({"lastModifiedDate": "2024-06-02T00:00:00.000+0000", "seenIds": [expected[6]]})
    );
}

#[tokio::test]
async fn verification_against_the_emulator_and_after_the_grant_is_revoked() {
    let step = step(strict(EmulatorConfig::default()), json!({})).await;
    assert_eq!(step.session.verify().await.unwrap(), Verification::Verified);

    // The user revoked the app's access: the token is rejected and so is the refresh token.
    step.emulator.revoke_family_of(&step.stored_refresh_token());
    let Verification::NotVerified { reason } = step.session.verify().await.unwrap() else {
        panic!("verified after revocation")
    };
    assert!(reason.starts_with("ReauthRequired"), "{reason}");
}
