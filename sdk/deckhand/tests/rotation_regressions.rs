//! Regression tests for issue 9: every path that lost a rotated refresh token inside one
//! process. Each test failed on the code before the fix (see the commit messages).

mod auth_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auth_support::*;
use deckhand::auth::{
    AuthError, CallbackSink, Grant, KeysUpdate, MemorySink, RetryPolicy, SinkError, Strategy,
    TokenEndpoint, TokenManager,
};
use deckhand::connector::*;
use deckhand::credentials::Credentials;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fast_endpoint(url: &str, attempts: u32) -> TokenEndpoint {
    TokenEndpoint::new(url, CLIENT_ID)
        .unwrap()
        .client_secret(CLIENT_SECRET)
        .grant(Grant::RefreshToken)
        .retry_policy(RetryPolicy {
            max_attempts: attempts,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
        })
}

// ---- 1. `"refresh_token": null` ---------------------------------------------------------------

#[tokio::test]
async fn a_null_or_mistyped_refresh_token_in_a_response_keeps_the_stored_one() {
    for bad in [json!(null), json!(42), json!({"nested": "r9"}), json!("  ")] {
        let mut server = mockito::Server::new_async().await;
        let body = json!({"access_token": "a1", "token_type": "Bearer", "refresh_token": bad});
        let _t = refresh_mock(&mut server, "r0", body.to_string()).await;
        let sink = MemorySink::new();
        let manager = manager(
            &server,
            refresh_keys(None, "r0"),
            Strategy::default(),
            sink.clone(),
        );
        manager.authorization().await.unwrap();
        let keys = sink.last().expect("persisted").keys();
        assert_eq!(keys["oauth"]["refresh_token"], "r0", "response {body}");
        // What the next process reads back still has it.
        let reread = Credentials::from_keys(keys).unwrap();
        assert_eq!(
            reread.token().unwrap().refresh_token().unwrap().expose(),
            "r0"
        );
    }
}

// ---- 2. a component's own updateKeys --------------------------------------------------------

struct Rotating {
    token_url: String,
    api: String,
}

#[async_trait]
impl Connector for Rotating {
    fn router(&self) -> Router<Self> {
        Router::new()
            .action("call_then_emit_stale", call_then_emit_stale)
            .action("emit_field", emit_field)
    }

    fn auth(&self, _: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        Ok(Some(
            AuthSetup::new(fast_endpoint(&self.token_url, 1))
                .strategy(Strategy::on_401())
                .api_origin(self.api.clone()),
        ))
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

/// A call that rotates r0 → r1, then an `updateKeys` from the function's own (stale) copy
/// of the configuration.
async fn call_then_emit_stale(
    connector: Arc<Rotating>,
    input: Input,
    ctx: Context,
) -> Result<(), ConnectorError> {
    // The call rotates r0 → r1 (the stale token is rejected with 401) ...
    let status = ctx
        .http()
        .get(format!("{}/api/data", connector.api))
        .send()
        .await
        .map_err(|e| ConnectorError::other(e.to_string()))?
        .status();
    assert_eq!(status, 200);
    // ... then the function emits keys from its copy of the config, holding r0.
    let mut keys = input.config;
    keys["note"] = json!("from the component");
    ctx.emit_update_keys(keys).await?;
    Ok(())
}

async fn emit_field(ctx: Context) -> Result<(), ConnectorError> {
    ctx.emit_update_keys(json!({"prodEnv": "test"})).await?;
    Ok(())
}

async fn rotating_session(
    server: &mut mockito::ServerGuard,
    sink: Arc<dyn deckhand::auth::KeysSink>,
) -> Session<Rotating> {
    let _ = refresh_mock(server, "r0", token_body("a1", Some("r1"), None))
        .await
        .expect(1);
    let _ = api_mock(server, "a0", 401).await;
    let _ = api_mock(server, "a1", 200).await;
    let step = StepConfig::from_merged_config(
        json!({"field": "f", "prodEnv": "login", "oauth": {"access_token": "a0", "refresh_token": "r0"}})
            .as_object()
            .unwrap()
            .clone(),
        &["prodEnv".to_owned(), "oauth".to_owned()],
        json!({}),
    )
    .unwrap();
    let connector = Rotating {
        token_url: format!("{}/oauth2/token", server.url()),
        api: server.url(),
    };
    Session::new(Arc::new(connector), step, sink).unwrap()
}

fn refresh_token_of(update: &KeysUpdate) -> String {
    update.keys()["oauth"]["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn assert_generations_strictly_increase(updates: &[KeysUpdate]) {
    for pair in updates.windows(2) {
        assert!(
            pair[0].generation < pair[1].generation,
            "generations {} then {}",
            pair[0].generation,
            pair[1].generation
        );
    }
}

#[tokio::test]
async fn a_component_cannot_put_back_a_spent_refresh_token() {
    let mut server = mockito::Server::new_async().await;
    let sink = MemorySink::new();
    let session = rotating_session(&mut server, Arc::new(sink.clone())).await;
    let events = CollectingEmitter::new();
    let outcome = session
        .process(
            "call_then_emit_stale",
            Message::new(json!({})),
            Arc::new(events.clone()),
        )
        .await;
    // The stale keys are refused with an error that says why.
    assert_eq!(outcome.errors, 1, "{:?}", events.events());
    let Event::Error(err) = &events.events()[0] else {
        panic!("{:?}", events.events())
    };
    assert!(err.message.contains("already spent"), "{}", err.message);
    let updates = sink.updates();
    assert_generations_strictly_increase(&updates);
    assert!(updates.iter().all(|u| refresh_token_of(u) == "r1"));
    let manager = session.token_manager().unwrap();
    assert_eq!(
        manager
            .credentials()
            .token()
            .unwrap()
            .refresh_token()
            .unwrap()
            .expose(),
        "r1"
    );
}

#[tokio::test]
async fn with_a_sink_failure_first_the_rotated_token_is_still_persisted() {
    let mut server = mockito::Server::new_async().await;
    let sink = MemorySink::new();
    sink.fail_next(1);
    let session = rotating_session(&mut server, Arc::new(sink.clone())).await;
    let events = CollectingEmitter::new();
    session
        .process(
            "call_then_emit_stale",
            Message::new(json!({})),
            Arc::new(events.clone()),
        )
        .await;
    // A later, legitimate component update carries r1 with it.
    session
        .process(
            "emit_field",
            Message::new(json!({})),
            Arc::new(CollectingEmitter::new()),
        )
        .await;
    let updates = sink.updates();
    assert!(!updates.is_empty());
    assert_generations_strictly_increase(&updates);
    let last = updates.last().unwrap();
    assert_eq!(refresh_token_of(last), "r1");
    assert_eq!(last.keys()["prodEnv"], "test");
    assert!(updates.iter().all(|u| refresh_token_of(u) != "r0"));
}

#[tokio::test]
async fn a_component_update_is_merged_over_the_current_keys_with_the_next_generation() {
    let mut server = mockito::Server::new_async().await;
    let sink = MemorySink::new();
    let session = rotating_session(&mut server, Arc::new(sink.clone())).await;
    // Rotate first (the function's emit is refused, the rotation is persisted as generation 1).
    session
        .process(
            "call_then_emit_stale",
            Message::new(json!({})),
            Arc::new(CollectingEmitter::new()),
        )
        .await;
    let (outcome, events) = {
        let events = CollectingEmitter::new();
        let outcome = session
            .process(
                "emit_field",
                Message::new(json!({})),
                Arc::new(events.clone()),
            )
            .await;
        (outcome, events.events())
    };
    assert_eq!(outcome.errors, 0, "{events:?}");
    let last = sink.last().unwrap();
    assert_eq!(last.generation, 2);
    assert_eq!(last.keys()["prodEnv"], "test");
    assert_eq!(refresh_token_of(&last), "r1");
    assert_eq!(last.keys()["oauth"]["access_token"], "a1");
}

// ---- 4. a panic in the sink -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_fails_every_waiter_promptly_and_is_counted() {
    let mut server = mockito::Server::new_async().await;
    let _token = server
        .mock("POST", "/oauth2/token")
        .with_header("content-type", "application/json")
        .with_body_from_request(|_| {
            std::thread::sleep(Duration::from_millis(300));
            token_body("a1", Some("r1"), None).into_bytes()
        })
        .expect(1)
        .create_async()
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let sink = {
        let calls = calls.clone();
        CallbackSink::new(move |_update| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    panic!("the sink blew up");
                }
                Ok::<(), SinkError>(())
            }
        })
    };
    let manager = manager(&server, refresh_keys(None, "r0"), Strategy::default(), sink);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), manager.authorization()).await
        }));
    }
    for task in tasks {
        let outcome = task.await.unwrap().expect("no waiter is stranded");
        assert!(outcome.is_err());
    }
    assert_eq!(
        manager.metrics().failures_sink,
        1,
        "{:?}",
        manager.metrics()
    );
    // The rotated keys were kept: the next caller persists them, no second token request.
    let auth = manager.authorization().await.unwrap();
    assert_eq!(auth.generation(), 1);
    assert_eq!(manager.metrics().token_requests, 1);
}

// ---- 5. the pause after a failed early refresh ------------------------------------------------

#[tokio::test]
async fn a_slow_failing_early_refresh_pauses_from_when_it_ended() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let slow_clock = clock.clone();
    let failing = server
        .mock("POST", "/oauth2/token")
        .with_status(500)
        .with_body_from_request(move |_| {
            // Each attempt "takes" 3 s of the manager's clock.
            slow_clock.advance(Duration::from_secs(3));
            b"{}".to_vec()
        })
        .expect(3)
        .create_async()
        .await;
    let valid = Credentials::from_keys(json!({"oauth": {
        "access_token": "a0", "refresh_token": "r0",
        "expires_at": clock_secs(&clock) + 40,
    }}))
    .unwrap();
    let manager = TokenManager::builder(
        valid,
        fast_endpoint(&format!("{}/oauth2/token", server.url()), 3),
        MemorySink::new(),
    )
    .strategy(Strategy::before_expiry(Duration::from_secs(60)))
    .clock(clock.clone())
    .build();
    // The early refresh fails after 9 s of retries; the still-valid token is served ...
    assert_eq!(manager.authorization().await.unwrap().generation(), 0);
    // ... and the next call does not start another retry cycle at once.
    assert_eq!(manager.authorization().await.unwrap().generation(), 0);
    failing.assert_async().await;
}

// ---- 6. a token that arrives already expired --------------------------------------------------

#[tokio::test]
async fn an_already_expired_token_is_not_refreshed_on_every_call() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let token = refresh_mock(&mut server, "r0", token_body("a1", None, Some(json!(0)))).await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .clock(clock.clone())
    .build();
    for _ in 0..5 {
        manager.authorization().await.unwrap();
    }
    assert_eq!(manager.metrics().token_requests, 1);
    // After the minimum refresh interval (1 s by default) it is refreshed again.
    clock.advance(Duration::from_millis(1100));
    manager.authorization().await.unwrap();
    assert_eq!(manager.metrics().token_requests, 2);
    token.expect(2).assert_async().await;
}

// ---- 7. Retry-After holds every caller ------------------------------------------------------

#[tokio::test]
async fn retry_after_from_the_token_endpoint_holds_every_caller_of_the_credential() {
    let mut server = mockito::Server::new_async().await;
    let throttled = server
        .mock("POST", "/oauth2/token")
        .with_status(429)
        .with_header("retry-after", "30")
        .expect(1)
        .create_async()
        .await;
    let manager = manager(
        &server,
        refresh_keys(None, "r0"),
        Strategy::default(),
        MemorySink::new(),
    );
    let first = manager.authorization().await.unwrap_err();
    assert!(first.is_transient(), "{first}");
    let started = Instant::now();
    let second = manager.authorization().await.unwrap_err();
    assert!(second.is_transient(), "{second}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The error says how long to wait.
    assert!(second.to_string().contains("30 s"), "{second}");
    throttled.assert_async().await;
}

#[tokio::test]
async fn a_short_retry_after_makes_the_next_caller_wait_then_refresh() {
    let mut server = mockito::Server::new_async().await;
    let _unavailable = server
        .mock("POST", "/oauth2/token")
        .with_status(503)
        .with_header("retry-after", "1")
        .expect(1)
        .create_async()
        .await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        fast_endpoint(&format!("{}/oauth2/token", server.url()), 1),
        MemorySink::new(),
    )
    .build();
    assert!(manager.authorization().await.is_err());
    let _ok = refresh_mock(&mut server, "r0", token_body("a1", None, None)).await;
    let started = Instant::now();
    manager.authorization().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(manager.metrics().token_requests, 2);
}

// ---- 8. a response lost after the provider processed the grant -------------------------------

/// A token endpoint on a raw socket: answers each connection with the next scripted reply;
/// `None` reads the request and closes the connection without answering.
async fn scripted_token_endpoint(
    replies: Vec<Option<(u16, String)>>,
) -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let served = Arc::new(Mutex::new(0usize));
    let count = served.clone();
    tokio::spawn(async move {
        for reply in replies {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            read_request(&mut socket).await;
            *count.lock().unwrap() += 1;
            if let Some((status, body)) = reply {
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
            let _ = socket.shutdown().await;
        }
    });
    (url, served)
}

async fn read_request(socket: &mut tokio::net::TcpStream) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = socket.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_lost_token_response_then_invalid_grant_is_rotation_lost() {
    let invalid_grant = (400, r#"{"error":"invalid_grant"}"#.to_owned());
    let (url, served) = scripted_token_endpoint(vec![None, Some(invalid_grant)]).await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        fast_endpoint(&url, 4),
        MemorySink::new(),
    )
    .build();
    let err = manager.authorization().await.unwrap_err();
    assert_eq!(
        err,
        AuthError::RotationLost {
            generation: 0,
            status: 400,
            code: "invalid_grant".into()
        },
        "a lost rotation is not a plain re-auth"
    );
    assert!(err.to_string().contains("lost"), "{err}");
    assert!(err.is_reauth_required());
    // Permanent: later callers get it without another token request.
    assert_eq!(manager.authorization().await.unwrap_err(), err);
    // One retry with the same token, no loop.
    assert_eq!(*served.lock().unwrap(), 2);
    assert_eq!(manager.metrics().token_requests, 2);
}

#[tokio::test]
async fn a_lost_token_response_is_retried_once_with_the_same_token() {
    let ok = (200, token_body("a1", Some("r1"), None));
    let (url, served) = scripted_token_endpoint(vec![None, Some(ok)]).await;
    let sink = MemorySink::new();
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        fast_endpoint(&url, 4),
        sink.clone(),
    )
    .build();
    manager.authorization().await.unwrap();
    assert_eq!(*served.lock().unwrap(), 2);
    assert_eq!(sink.last().unwrap().keys()["oauth"]["refresh_token"], "r1");
}

#[tokio::test]
async fn a_new_refresh_token_with_an_unusable_access_token_is_still_persisted() {
    for body in [
        json!({"refresh_token": "r1", "token_type": "Bearer"}),
        json!({"access_token": "", "refresh_token": "r1"}),
        json!({"access_token": 7, "refresh_token": "r1"}),
        json!({"access_token": "bad\ntoken", "refresh_token": "r1"}),
    ] {
        let mut server = mockito::Server::new_async().await;
        let _t = refresh_mock(&mut server, "r0", body.to_string()).await;
        let sink = MemorySink::new();
        let manager = manager(
            &server,
            refresh_keys(Some("a0"), "r0"),
            Strategy::per_call(),
            sink.clone(),
        );
        let err = manager.authorization().await.unwrap_err();
        assert!(
            matches!(err, AuthError::MalformedTokenResponse { .. }),
            "{err:?}"
        );
        let last = sink
            .last()
            .unwrap_or_else(|| panic!("nothing persisted for {body}"));
        assert_eq!(last.keys()["oauth"]["refresh_token"], "r1", "{body}");
        // The old access token is not kept as if it were the new one.
        assert_ne!(last.keys()["oauth"]["access_token"], "a0", "{body}");
    }
}

// ---- 9. secrets in Debug and in provider text -------------------------------------------------

#[test]
fn input_debug_shows_no_credential_values() {
    let input = Input {
        message: Message::new(json!({"n": 1})),
        config: json!({"field": "f", "oauth": {"access_token": "SECRET-A", "refresh_token": "SECRET-R"}, "apiKey": "SECRET-K"}),
        snapshot: json!({}),
    };
    let dbg = format!("{input:?}");
    assert!(!dbg.contains("SECRET"), "{dbg}");
    assert!(dbg.contains("oauth"), "{dbg}");
}

#[test]
fn step_data_debug_shows_no_credential_values() {
    let step: deckhand::runtime::worker::StepData = serde_json::from_value(json!({
        "function": "f",
        "config": {"oauth": {"refresh_token": "SECRET-R"}, "password": "SECRET-P"},
    }))
    .unwrap();
    let dbg = format!("{step:?}");
    assert!(!dbg.contains("SECRET"), "{dbg}");
    assert!(dbg.contains("password"), "{dbg}");
}

#[tokio::test]
async fn provider_text_in_errors_is_truncated_and_redacted() {
    let mut server = mockito::Server::new_async().await;
    let description = format!(
        "refresh token r0-SECRET-0123 is not valid for client {CLIENT_SECRET}; last access token a0-SECRET-4567 {}",
        "x".repeat(5000)
    );
    let _t = server
        .mock("POST", "/oauth2/token")
        .with_status(400)
        .with_header("content-type", "application/json")
        .with_body(json!({"error": "invalid_grant", "error_description": description}).to_string())
        .create_async()
        .await;
    let manager = manager(
        &server,
        refresh_keys(Some("a0-SECRET-4567"), "r0-SECRET-0123"),
        Strategy::per_call(),
        MemorySink::new(),
    );
    let err = manager.authorization().await.unwrap_err();
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains(CLIENT_SECRET), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(shown.len() < 1000, "{} chars", shown.len());
    }
}

// ---- 10. the token endpoint never gets the bearer ---------------------------------------------

#[tokio::test]
async fn no_spelling_of_the_token_path_gets_the_bearer() {
    let mut server = mockito::Server::new_async().await;
    let with_bearer = server
        .mock("GET", mockito::Matcher::Any)
        .match_header("authorization", mockito::Matcher::Any)
        .expect(0)
        .create_async()
        .await;
    let without = server
        .mock("GET", mockito::Matcher::Any)
        .match_header("authorization", mockito::Matcher::Missing)
        .expect(5)
        .create_async()
        .await;
    let manager = manager(
        &server,
        refresh_keys(Some("a0"), "r0"),
        Strategy::on_401(),
        MemorySink::new(),
    );
    let client = manager.http_client(&server.url()).unwrap();
    for path in [
        "/oauth2/token/",
        "/oauth2//token",
        "/OAUTH2/token",
        "/oauth2/%74oken",
        "/oauth2/./token",
    ] {
        client
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap();
    }
    with_bearer.assert_async().await;
    without.assert_async().await;
}

// ---- 3. pending keys at shutdown --------------------------------------------------------------

#[tokio::test]
async fn pending_keys_are_flushed_and_a_failed_flush_is_an_error() {
    let mut server = mockito::Server::new_async().await;
    let _t = refresh_mock(&mut server, "r0", token_body("a1", Some("r1"), None)).await;
    let sink = MemorySink::new();
    sink.fail_next(2);
    let manager = manager(
        &server,
        refresh_keys(None, "r0"),
        Strategy::default(),
        sink.clone(),
    );
    let err = manager.authorization().await.unwrap_err();
    assert!(
        matches!(err, AuthError::KeysNotPersisted { generation: 1, .. }),
        "{err:?}"
    );
    assert_eq!(manager.pending_generation(), Some(1));
    // The sink is still down at shutdown: the flush says so, the keys stay pending.
    let err = manager.flush().await.unwrap_err();
    assert!(
        matches!(err, AuthError::KeysNotPersisted { generation: 1, .. }),
        "{err:?}"
    );
    assert_eq!(manager.pending_generation(), Some(1));
    // Once it is back, the flush persists them; nothing else is left to flush.
    assert_eq!(manager.flush().await.unwrap(), Some(1));
    assert_eq!(refresh_token_of(&sink.last().unwrap()), "r1");
    assert_eq!(manager.flush().await.unwrap(), None);
    assert_eq!(manager.metrics().token_requests, 1);
}
