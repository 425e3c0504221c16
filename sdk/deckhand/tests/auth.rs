//! The token manager and bearer middleware against a mockito token endpoint and API.

mod auth_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth_support::*;
use deckhand::auth::{
    AuthError, CallbackSink, ClientAuth, Grant, MemorySink, SinkError, Strategy, TokenManager,
};
use deckhand::credentials::{Credentials, ExpirySource};
use serde_json::json;

fn auth_error(err: reqwest_middleware::Error) -> AuthError {
    match err {
        reqwest_middleware::Error::Middleware(e) => e
            .downcast::<AuthError>()
            .expect("the middleware error is an AuthError"),
        other => panic!("expected an AuthError, got {other}"),
    }
}

#[tokio::test]
async fn per_call_refreshes_before_every_request() {
    let mut server = mockito::Server::new_async().await;
    let t1 = refresh_mock(&mut server, "r0", token_body("a1", Some("r1"), None)).await;
    let t2 = refresh_mock(&mut server, "r1", token_body("a2", Some("r2"), None)).await;
    let api1 = api_mock(&mut server, "a1", 200).await;
    let api2 = api_mock(&mut server, "a2", 200).await;
    let sink = MemorySink::new();
    let manager = manager(
        &server,
        refresh_keys(Some("a0"), "r0"),
        Strategy::per_call(),
        sink.clone(),
    );
    let client = manager.http_client(&server.url()).unwrap();

    for _ in 0..2 {
        let resp = client
            .get(format!("{}/api/data", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    t1.assert_async().await;
    t2.assert_async().await;
    api1.assert_async().await;
    api2.assert_async().await;
    // Each rotation was persisted with the new refresh token.
    let updates = sink.updates();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1].generation, 2);
    assert_eq!(updates[1].keys()["oauth"]["refresh_token"], "r2");
    assert_eq!(manager.metrics().refreshes, 2);
}

#[tokio::test]
async fn on_401_refreshes_and_retries_once() {
    let mut server = mockito::Server::new_async().await;
    let token = refresh_mock(&mut server, "r0", token_body("fresh", None, None)).await;
    let stale = api_mock(&mut server, "stale", 401).await;
    let fresh = api_mock(&mut server, "fresh", 200).await;
    let sink = MemorySink::new();
    let manager = manager(
        &server,
        refresh_keys(Some("stale"), "r0"),
        Strategy::on_401(),
        sink.clone(),
    );
    let client = manager.http_client(&server.url()).unwrap();

    let resp = client
        .get(format!("{}/api/data", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    token.assert_async().await;
    stale.assert_async().await;
    fresh.assert_async().await;
    let update = sink.last().expect("the refresh was persisted");
    assert_eq!(update.generation, 1);
    assert_eq!(update.reason.to_string(), "rejected_401");
    // Salesforce sends no refresh_token on refresh: the old one is kept.
    assert_eq!(update.keys()["oauth"]["refresh_token"], "r0");
    assert_eq!(update.keys()["prodEnv"], "login");
}

#[tokio::test]
async fn a_second_401_after_refresh_is_an_error_not_a_loop() {
    let mut server = mockito::Server::new_async().await;
    let token = refresh_mock(&mut server, "r0", token_body("still-bad", None, None))
        .await
        .expect(1);
    let first = api_mock(&mut server, "bad", 401).await.expect(1);
    let second = api_mock(&mut server, "still-bad", 401).await.expect(1);
    let manager = manager(
        &server,
        refresh_keys(Some("bad"), "r0"),
        Strategy::on_401(),
        MemorySink::new(),
    );
    let client = manager.http_client(&server.url()).unwrap();

    let err = client
        .get(format!("{}/api/data", server.url()))
        .send()
        .await
        .expect_err("a second 401 is an error");
    assert_eq!(
        auth_error(err),
        AuthError::RejectedAfterRefresh { status: 401 }
    );
    token.assert_async().await;
    first.assert_async().await;
    second.assert_async().await;
}

#[tokio::test]
async fn optional_403_is_treated_like_401() {
    let mut server = mockito::Server::new_async().await;
    let token = refresh_mock(&mut server, "r0", token_body("fresh", None, None)).await;
    let _stale = api_mock(&mut server, "stale", 403).await;
    let fresh = api_mock(&mut server, "fresh", 200).await;
    let manager = manager(
        &server,
        refresh_keys(Some("stale"), "r0"),
        Strategy::on_401().with_on_401_or_403(),
        MemorySink::new(),
    );
    let client = manager.http_client(&server.url()).unwrap();
    let resp = client
        .get(format!("{}/api/data", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    token.assert_async().await;
    fresh.assert_async().await;

    // Without the option a 403 is just a response.
    let mut server = mockito::Server::new_async().await;
    let _stale = api_mock(&mut server, "stale", 403).await;
    let manager = manager_for(
        &server,
        refresh_keys(Some("stale"), "r0"),
        Strategy::on_401(),
    );
    let client = manager.http_client(&server.url()).unwrap();
    let resp = client
        .get(format!("{}/api/data", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(manager.metrics().token_requests, 0);
}

fn manager_for(
    server: &mockito::ServerGuard,
    creds: Credentials,
    strategy: Strategy,
) -> TokenManager {
    manager(server, creds, strategy, MemorySink::new())
}

#[tokio::test]
async fn before_expiry_refreshes_within_the_skew_only() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let t1 = refresh_mock(
        &mut server,
        "r0",
        token_body("a1", Some("r1"), Some(json!(3600))),
    )
    .await;
    let t2 = refresh_mock(
        &mut server,
        "r1",
        token_body("a2", Some("r2"), Some(json!(3600))),
    )
    .await;
    let _a1 = api_mock(&mut server, "a1", 200).await;
    let _a2 = api_mock(&mut server, "a2", 200).await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .strategy(Strategy::before_expiry(Duration::from_secs(60)))
    .clock(clock.clone())
    .build();

    // No access token yet: the first request fetches one.
    assert_eq!(manager.authorization().await.unwrap().generation(), 1);
    t1.assert_async().await;
    // 59 minutes later the token still has 60 s left, more than the skew plus jitter (≤ 66 s)?
    // No: at 3600-70 s it is outside the skew; at 3600-50 s it is inside.
    clock.advance(Duration::from_secs(3600 - 70));
    assert_eq!(manager.authorization().await.unwrap().generation(), 1);
    assert_eq!(manager.metrics().token_requests, 1);
    clock.advance(Duration::from_secs(20));
    assert_eq!(manager.authorization().await.unwrap().generation(), 2);
    t2.assert_async().await;
    let token = manager.credentials().token().cloned().unwrap();
    assert_eq!(token.expiry_source(), ExpirySource::ExpiresIn);
}

#[tokio::test]
async fn skew_is_capped_for_short_lived_tokens() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let _t1 = refresh_mock(
        &mut server,
        "r0",
        token_body("a1", Some("r1"), Some(json!(30))),
    )
    .await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .strategy(Strategy::before_expiry(Duration::from_secs(60)))
    .clock(clock.clone())
    .build();
    manager.authorization().await.unwrap();
    // A 30 s token with a 60 s skew would be refreshed on every call; it is kept for 15 s.
    clock.advance(Duration::from_secs(10));
    manager.authorization().await.unwrap();
    assert_eq!(manager.metrics().token_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_across_an_expiry_cause_one_token_request() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let token = refresh_mock(
        &mut server,
        "r1",
        token_body("a2", Some("r2"), Some(json!(3600))),
    )
    .await
    .expect(1);
    let api = api_mock(&mut server, "a2", 200).await.expect(1000);
    let expiring = deckhand::credentials::Credentials::from_keys(json!({"oauth": {
        "access_token": "a1", "refresh_token": "r1",
        "expires_at": clock_secs(&clock) + 30,
    }}))
    .unwrap();
    let sink = MemorySink::new();
    let manager = TokenManager::builder(
        expiring,
        endpoint(&server, Grant::RefreshToken),
        sink.clone(),
    )
    .clock(clock.clone())
    .build();
    let client = manager.http_client(&server.url()).unwrap();
    let url = format!("{}/api/data", server.url());

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.map(|r| r.status())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    token.assert_async().await;
    api.assert_async().await;
    let metrics = manager.metrics();
    assert_eq!(metrics.token_requests, 1);
    assert_eq!(metrics.refreshes, 1);
    assert_eq!(sink.updates().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_401s_on_the_same_token_refresh_once() {
    // A slow token endpoint on its own server, so that all 50 requests are rejected before the
    // refresh completes.
    let mut idp = mockito::Server::new_async().await;
    let token = idp
        .mock("POST", "/oauth2/token")
        .with_header("content-type", "application/json")
        .with_body_from_request(|_| {
            std::thread::sleep(Duration::from_millis(1000));
            token_body("fresh", Some("r1"), None).into_bytes()
        })
        .expect(1)
        .create_async()
        .await;
    let mut api = mockito::Server::new_async().await;
    let stale = api_mock(&mut api, "stale", 401).await.expect(50);
    let fresh = api_mock(&mut api, "fresh", 200).await.expect(50);
    let sink = MemorySink::new();
    let manager = manager(
        &idp,
        refresh_keys(Some("stale"), "r0"),
        Strategy::on_401(),
        sink.clone(),
    );
    let client = manager.http_client(&api.url()).unwrap();
    let url = format!("{}/api/data", api.url());

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.map(|r| r.status())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    token.assert_async().await;
    stale.assert_async().await;
    fresh.assert_async().await;
    assert_eq!(sink.updates().len(), 1);
    assert!(
        manager.metrics().coalesced_waiters >= 49,
        "{:?}",
        manager.metrics()
    );
}

#[tokio::test]
async fn invalid_grant_is_reauth_required_and_never_retried() {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/oauth2/token")
        .with_status(400)
        .with_header("content-type", "application/json")
        .with_body(
            r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        )
        .expect(1)
        .create_async()
        .await;
    let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
    let expected = AuthError::ReauthRequired {
        status: 400,
        code: "invalid_grant".into(),
        description: Some("expired access/refresh token".into()),
    };
    assert_eq!(manager.authorization().await.unwrap_err(), expected);
    // Later callers get the same answer without another token request.
    assert_eq!(manager.authorization().await.unwrap_err(), expected);
    token.assert_async().await;
    assert!(expected.is_reauth_required());
    assert_eq!(
        expected.to_string(),
        "re-authorization required: the token endpoint answered HTTP 400 `invalid_grant`: expired access/refresh token"
    );
    assert_eq!(manager.metrics().failures_reauth, 1);

    // Re-authorizing (new keys) lifts the failure.
    let _ok = refresh_mock(&mut server, "new-r", token_body("a1", None, None)).await;
    manager
        .replace_credentials(refresh_keys(None, "new-r"))
        .await;
    assert!(manager.authorization().await.is_ok());
}

#[tokio::test]
async fn unparseable_401_from_the_token_endpoint_is_reauth_required() {
    let mut server = mockito::Server::new_async().await;
    let _token = server
        .mock("POST", "/oauth2/token")
        .with_status(401)
        .with_body("Unauthorized")
        .create_async()
        .await;
    let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
    let err = manager.authorization().await.unwrap_err();
    assert_eq!(
        err,
        AuthError::ReauthRequired {
            status: 401,
            code: "http_401".into(),
            description: None
        }
    );
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let mut server = mockito::Server::new_async().await;
    let unavailable = server
        .mock("POST", "/oauth2/token")
        .with_status(503)
        .expect(1)
        .create_async()
        .await;
    let throttled = server
        .mock("POST", "/oauth2/token")
        .with_status(429)
        .with_header("retry-after", "1")
        .expect(1)
        .create_async()
        .await;
    let ok = refresh_mock(&mut server, "r0", token_body("a1", None, None))
        .await
        .expect(1);
    let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
    let started = std::time::Instant::now();
    manager
        .authorization()
        .await
        .expect("success after two transient failures");
    // Retry-After: 1 was honoured.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    unavailable.assert_async().await;
    throttled.assert_async().await;
    ok.assert_async().await;
    assert_eq!(manager.metrics().token_requests, 3);
}

#[tokio::test]
async fn transient_failures_give_up_after_the_attempt_budget() {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/oauth2/token")
        .with_status(502)
        .expect(3)
        .create_async()
        .await;
    let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
    let err = manager.authorization().await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        err.to_string(),
        "token endpoint unavailable after 3 attempt(s); last failure: HTTP 502"
    );
    token.assert_async().await;
}

#[tokio::test]
async fn malformed_token_responses_name_the_problem() {
    let cases = [
        (
            "not json at all",
            "text/html",
            "HTTP 200 with a body that is not JSON (content-type text/html)",
        ),
        (
            r#"{"token_type":"Bearer"}"#,
            "application/json",
            "the response has no `access_token`",
        ),
        (
            r#"{"access_token":"   "}"#,
            "application/json",
            "`access_token` is blank",
        ),
        (
            r#"{"access_token":42}"#,
            "application/json",
            "`access_token` is a number, not a string",
        ),
    ];
    for (body, content_type, reason) in cases {
        let mut server = mockito::Server::new_async().await;
        let _m = server
            .mock("POST", "/oauth2/token")
            .with_header("content-type", content_type)
            .with_body(body)
            .create_async()
            .await;
        let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
        assert_eq!(
            manager.authorization().await.unwrap_err(),
            AuthError::MalformedTokenResponse {
                reason: reason.into()
            },
            "body {body}"
        );
    }
}

#[tokio::test]
async fn string_expires_in_and_text_plain_json_are_accepted() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let _m = server
        .mock("POST", "/oauth2/token")
        .with_header("content-type", "text/plain; charset=utf-8")
        .with_body(r#"{"access_token":"a1","token_type":"bearer","expires_in":"3599","ext_expires_in":"3599"}"#)
        .create_async()
        .await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .clock(clock.clone())
    .build();
    manager.authorization().await.unwrap();
    let token = manager.credentials().token().cloned().unwrap();
    assert_eq!(token.expiry_source(), ExpirySource::ExpiresIn);
    assert_eq!(
        token.expires_at(),
        Some(deckhand::auth::Clock::now(&*clock) + Duration::from_secs(3599))
    );
    assert_eq!(token.extra("ext_expires_in"), Some(&json!("3599")));
}

#[tokio::test]
async fn jwt_exp_is_the_expiry_when_expires_in_is_missing() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let now = deckhand::auth::Clock::now(&*clock);
    let jwt = jwt_expiring_at(now + Duration::from_secs(600));
    let _m = refresh_mock(&mut server, "r0", token_body(&jwt, None, None)).await;
    let manager = TokenManager::builder(
        refresh_keys(None, "r0"),
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .clock(clock.clone())
    .build();
    manager.authorization().await.unwrap();
    let token = manager.credentials().token().cloned().unwrap();
    assert_eq!(token.expiry_source(), ExpirySource::JwtExp);
    assert_eq!(token.expires_at(), Some(now + Duration::from_secs(600)));
    // The JWT expiry drives BeforeExpiry: 9 minutes later (within 60 s skew + jitter) it refreshes.
    let _m2 = refresh_mock(&mut server, "r0", token_body("a2", None, None)).await;
    clock.advance(Duration::from_secs(545));
    assert_eq!(manager.authorization().await.unwrap().generation(), 2);
}

#[tokio::test]
async fn client_credentials_with_scope_and_basic_auth() {
    use base64::Engine;
    let mut server = mockito::Server::new_async().await;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let token = server
        .mock("POST", "/oauth2/token")
        .match_header("authorization", format!("Basic {basic}").as_str())
        .match_body(mockito::Matcher::AllOf(vec![
            mockito::Matcher::UrlEncoded("grant_type".into(), "client_credentials".into()),
            mockito::Matcher::UrlEncoded(
                "scope".into(),
                "https://graph.microsoft.com/.default".into(),
            ),
        ]))
        .with_header("content-type", "application/json")
        .with_body(token_body("app-token", None, Some(json!(3599))))
        .expect(1)
        .create_async()
        .await;
    let endpoint = endpoint(&server, Grant::ClientCredentials)
        .client_auth(ClientAuth::Basic)
        .scope("https://graph.microsoft.com/.default");
    let keys = Credentials::from_keys(json!({"tenantId": "t1", "clientId": CLIENT_ID})).unwrap();
    let sink = MemorySink::new();
    let manager = TokenManager::builder(keys, endpoint, sink.clone()).build();
    manager.authorization().await.unwrap();
    token.assert_async().await;
    let keys = sink.last().unwrap().keys();
    assert_eq!(keys["tenantId"], "t1");
    assert_eq!(keys["oauth"]["access_token"], "app-token");
    assert!(keys["oauth"]["expires_at"].is_u64());
}

#[tokio::test]
async fn client_secret_in_the_body() {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/oauth2/token")
        .match_header("authorization", mockito::Matcher::Missing)
        .match_body(mockito::Matcher::AllOf(vec![
            mockito::Matcher::UrlEncoded("client_id".into(), CLIENT_ID.into()),
            mockito::Matcher::UrlEncoded("client_secret".into(), CLIENT_SECRET.into()),
            mockito::Matcher::UrlEncoded("refresh_token".into(), "r0".into()),
        ]))
        .with_header("content-type", "application/json")
        .with_body(token_body("a1", None, None))
        .expect(1)
        .create_async()
        .await;
    let manager = manager_for(&server, refresh_keys(None, "r0"), Strategy::default());
    manager.authorization().await.unwrap();
    token.assert_async().await;
}

/// The order of what happened, shared between the keys sink and the API mock.
type Log = Arc<Mutex<Vec<String>>>;

#[tokio::test]
async fn update_keys_is_acknowledged_before_the_new_token_is_sent() {
    let mut server = mockito::Server::new_async().await;
    let log: Log = Arc::default();
    let _t = refresh_mock(
        &mut server,
        "r0",
        token_body("a1", Some("r1"), Some(json!(3600))),
    )
    .await;
    let api_log = log.clone();
    let _api = server
        .mock("GET", "/api/data")
        .with_body_from_request(move |req| {
            let auth = req.header("authorization")[0].to_str().unwrap().to_owned();
            api_log.lock().unwrap().push(format!("api {auth}"));
            b"{}".to_vec()
        })
        .create_async()
        .await;
    let sink_log = log.clone();
    let sink = CallbackSink::new(move |update| {
        let log = sink_log.clone();
        async move {
            // A slow platform: the acknowledgement takes a while.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let keys = update.keys();
            log.lock().unwrap().push(format!(
                "persisted generation {} {}",
                update.generation, keys["oauth"]["access_token"]
            ));
            Ok(())
        }
    });
    let manager = manager(&server, refresh_keys(None, "r0"), Strategy::default(), sink);
    let client = manager.http_client(&server.url()).unwrap();
    client
        .get(format!("{}/api/data", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            r#"persisted generation 1 "a1""#.to_owned(),
            "api Bearer a1".to_owned()
        ]
    );
}

#[tokio::test]
async fn a_sink_failure_fails_the_request_and_keeps_the_keys() {
    let mut server = mockito::Server::new_async().await;
    let token = refresh_mock(&mut server, "r0", token_body("a1", Some("r1"), None))
        .await
        .expect(1);
    let api = api_mock(&mut server, "a1", 200).await.expect(1);
    let sink = MemorySink::new();
    sink.fail_next(1);
    let manager = manager(
        &server,
        refresh_keys(None, "r0"),
        Strategy::default(),
        sink.clone(),
    );
    let client = manager.http_client(&server.url()).unwrap();
    let url = format!("{}/api/data", server.url());

    let err = auth_error(client.get(&url).send().await.unwrap_err());
    assert_eq!(
        err,
        AuthError::KeysNotPersisted {
            generation: 1,
            reason: "memory sink told to fail".into()
        }
    );
    // The rotated token was not used and is not lost: the next request persists it first,
    // without another token request (r0 is spent).
    assert_eq!(manager.generation(), 0);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    token.assert_async().await;
    api.assert_async().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].keys()["oauth"]["refresh_token"], "r1");
    assert_eq!(manager.metrics().failures_sink, 1);
}

#[tokio::test]
async fn before_expiry_keeps_serving_a_valid_token_while_the_idp_is_down() {
    let mut server = mockito::Server::new_async().await;
    let clock = manual_clock();
    let down = server
        .mock("POST", "/oauth2/token")
        .with_status(503)
        .expect(3)
        .create_async()
        .await;
    let _api = api_mock(&mut server, "a1", 200).await;
    let keys = Credentials::from_keys(json!({"oauth": {
        "access_token": "a1", "refresh_token": "r1", "expires_at": clock_secs(&clock) + 30
    }}))
    .unwrap();
    let manager = TokenManager::builder(
        keys,
        endpoint(&server, Grant::RefreshToken),
        MemorySink::new(),
    )
    .clock(clock.clone())
    .build();
    let client = manager.http_client(&server.url()).unwrap();
    let url = format!("{}/api/data", server.url());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    // The next requests within the retry interval do not hammer the token endpoint.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    down.assert_async().await;
    let metrics = manager.metrics();
    assert_eq!(metrics.token_requests, 3);
    assert_eq!(metrics.stale_served, 1);
    assert_eq!(metrics.failures_transient, 1);

    // Once the token has expired, the failure reaches the caller.
    clock.advance(Duration::from_secs(31));
    let err = auth_error(client.get(&url).send().await.unwrap_err());
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn a_streamed_body_is_not_replayed_after_a_401() {
    let mut server = mockito::Server::new_async().await;
    let token = refresh_mock(&mut server, "r0", token_body("fresh", None, None))
        .await
        .expect(1);
    let post = server
        .mock("POST", "/api/upload")
        .with_status(401)
        .expect(1)
        .create_async()
        .await;
    let manager = manager_for(
        &server,
        refresh_keys(Some("stale"), "r0"),
        Strategy::on_401(),
    );
    let client = manager.http_client(&server.url()).unwrap();
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(b"chunk".to_vec())]);
    let err = client
        .post(format!("{}/api/upload", server.url()))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap_err();
    let err = auth_error(err);
    assert_eq!(err, AuthError::NotReplayable { status: 401 });
    assert!(err.to_string().contains("cannot be replayed"));
    // The token was refreshed anyway, so the caller's next attempt works.
    token.assert_async().await;
    post.assert_async().await;
    assert_eq!(manager.generation(), 1);
}

#[tokio::test]
async fn the_token_goes_to_the_api_origin_only() {
    let mut api = mockito::Server::new_async().await;
    let mut elsewhere = mockito::Server::new_async().await;
    let _t = refresh_mock(&mut api, "r0", token_body("a1", None, None)).await;
    let authed = api_mock(&mut api, "a1", 200).await.expect(1);
    let foreign = elsewhere
        .mock("GET", "/api/data")
        .match_header("authorization", mockito::Matcher::Missing)
        .expect(1)
        .create_async()
        .await;
    let manager = manager_for(&api, refresh_keys(None, "r0"), Strategy::default());
    let client = manager.http_client(&api.url()).unwrap();
    client
        .get(format!("{}/api/data", api.url()))
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/api/data", elsewhere.url()))
        .send()
        .await
        .unwrap();
    authed.assert_async().await;
    foreign.assert_async().await;
}

#[tokio::test]
async fn a_cross_origin_redirect_is_not_followed_with_the_token() {
    let mut api = mockito::Server::new_async().await;
    let mut evil = mockito::Server::new_async().await;
    let _t = refresh_mock(&mut api, "r0", token_body("a1", None, None)).await;
    let _redirect = api
        .mock("GET", "/api/data")
        .with_status(302)
        .with_header("location", &format!("{}/steal", evil.url()))
        .create_async()
        .await;
    let steal = evil.mock("GET", "/steal").expect(0).create_async().await;
    let manager = manager_for(&api, refresh_keys(None, "r0"), Strategy::default());
    let client = manager.http_client(&api.url()).unwrap();
    let resp = client
        .get(format!("{}/api/data", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    steal.assert_async().await;
}

#[tokio::test]
async fn no_refresh_token_is_a_clear_error() {
    let server = mockito::Server::new_async().await;
    let keys = Credentials::from_keys(json!({"oauth": {"access_token": "x"}})).unwrap();
    let manager = manager_for(&server, keys, Strategy::per_call());
    let err = manager.authorization().await.unwrap_err();
    assert_eq!(err, AuthError::NoRefreshToken);
    assert!(err.is_reauth_required());
    assert_eq!(manager.metrics().token_requests, 0);
}

#[test]
fn sink_error_keeps_its_message() {
    assert_eq!(SinkError::other("broker down").to_string(), "broker down");
    assert_eq!(
        SinkError::Publish("no confirm".into()).to_string(),
        "publishing updateKeys: no confirm"
    );
}
