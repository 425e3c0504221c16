//! `ThrottleRetry`: requests an API answers 429 or 503 are sent again, within the policy.

use std::time::Duration;

use deckhand_core::retry::{Backoff, LongRetryAfter, Policy, ThrottleRetry};
use mockito::Matcher;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::json;

fn client(policy: Policy) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(ThrottleRetry::new(policy))
        .build()
}

fn fast(attempts: u32) -> Policy {
    Policy::new(Backoff::fixed(Duration::from_millis(5)).with_cap(Duration::from_millis(50)))
        .with_max_attempts(attempts)
}

#[tokio::test]
async fn a_throttled_request_is_sent_again_with_its_body_until_it_succeeds() {
    let mut server = mockito::Server::new_async().await;
    // mockito answers with the older mock until it has had its expected hits.
    let throttled = server
        .mock("POST", "/send")
        .match_body(Matcher::Json(json!({"n": 1})))
        .with_status(429)
        .with_header("retry-after", "0")
        .expect(2)
        .create_async()
        .await;
    let accepted = server
        .mock("POST", "/send")
        .match_body(Matcher::Json(json!({"n": 1})))
        .with_status(202)
        .expect(1)
        .create_async()
        .await;
    let response = client(fast(4))
        .post(format!("{}/send", server.url()))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    throttled.assert_async().await;
    accepted.assert_async().await;
}

#[tokio::test]
async fn the_last_answer_stands_when_the_policy_says_stop() {
    let mut server = mockito::Server::new_async().await;
    let unavailable = server
        .mock("GET", "/busy")
        .with_status(503)
        .expect(3)
        .create_async()
        .await;
    let response = client(fast(3))
        .get(format!("{}/busy", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "three attempts, then the 503 is the caller's"
    );
    unavailable.assert_async().await;
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_not_waited_for_when_the_policy_gives_up() {
    let mut server = mockito::Server::new_async().await;
    let throttled = server
        .mock("GET", "/slow")
        .with_status(429)
        .with_header("retry-after", "3600")
        .expect(1)
        .create_async()
        .await;
    let policy = fast(5).with_long_retry_after(LongRetryAfter::GiveUp);
    let response = client(policy)
        .get(format!("{}/slow", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    throttled.assert_async().await;
}

#[tokio::test]
async fn other_failures_are_not_retried() {
    let mut server = mockito::Server::new_async().await;
    let failing = server
        .mock("GET", "/broken")
        .with_status(500)
        .expect(1)
        .create_async()
        .await;
    let response = client(fast(5))
        .get(format!("{}/broken", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    failing.assert_async().await;
}
