//! Fault injection, recovery, lifecycle and exact counters.

mod common;

use std::sync::Arc;

use common::*;
use deckhand_emulator::{Counters, Emulator, EmulatorConfig, ResourceFault, TokenFault};
use reqwest::StatusCode;

#[tokio::test]
async fn resource_429_with_retry_after_then_503_then_recovery() {
    let emulator = start(EmulatorConfig::default()).await;
    let graph = graph_app_token(&emulator)
        .await
        .str("access_token")
        .to_owned();
    let salesforce = salesforce_token(&emulator).await;

    emulator.fail_next_resource_requests(
        2,
        ResourceFault::TooManyRequests {
            retry_after_secs: Some(7),
        },
    );
    emulator.fail_next_resource_requests(
        1,
        ResourceFault::ServiceUnavailable {
            retry_after_secs: None,
        },
    );

    let first = get(&emulator, "/v1.0/users", &graph).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers["retry-after"], "7");
    assert_eq!(first.body["error"]["code"], "TooManyRequests");

    let second = get(&emulator, "/services/data/", &salesforce).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers["retry-after"], "7");
    assert_eq!(second.body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");

    let third = get(&emulator, "/v1.0/users", &graph).await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!third.headers.contains_key("retry-after"));

    // Queue drained: normal service again.
    assert_eq!(
        get(&emulator, "/v1.0/users", &graph).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&emulator, "/services/data/", &salesforce).await.status,
        StatusCode::OK
    );

    let counters = emulator.counters();
    assert_eq!(counters.resource_requests, 5);
    assert_eq!(counters.faults_served, 3);
    assert_eq!(counters.unauthorized, 0);
}

#[tokio::test]
async fn injected_401_and_500_and_clear() {
    let emulator = start(EmulatorConfig::default()).await;
    let salesforce = salesforce_token(&emulator).await;
    emulator.fail_next_resource_requests(1, ResourceFault::Unauthorized);
    emulator.fail_next_resource_requests(1, ResourceFault::InternalServerError);

    let unauthorized = get(&emulator, "/services/data/", &salesforce).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.body[0]["errorCode"], "INVALID_SESSION_ID");
    let failed = get(&emulator, "/services/data/", &salesforce).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);

    emulator.fail_next_resource_requests(10, ResourceFault::InternalServerError);
    emulator.fail_next_token_requests(10, TokenFault::InternalServerError);
    emulator.clear_faults();
    assert_eq!(
        get(&emulator, "/services/data/", &salesforce).await.status,
        StatusCode::OK
    );
    assert_eq!(graph_app_token(&emulator).await.status, StatusCode::OK);
    assert_eq!(emulator.counters().unauthorized, 1);
}

#[tokio::test]
async fn token_endpoint_faults_then_recovery() {
    let emulator = start(EmulatorConfig::default()).await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let url = emulator.microsoft_token_url();

    emulator.fail_next_token_requests(
        1,
        TokenFault::TooManyRequests {
            retry_after_secs: Some(3),
        },
    );
    emulator.fail_next_token_requests(
        1,
        TokenFault::ServiceUnavailable {
            retry_after_secs: Some(1),
        },
    );
    emulator.fail_next_token_requests(1, TokenFault::InternalServerError);
    emulator.fail_next_token_requests(1, TokenFault::InvalidGrant);

    let throttled = refresh(&emulator, &url, &rt).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers["retry-after"], "3");
    assert_eq!(throttled.body["error"], "temporarily_unavailable");

    let unavailable = refresh(&emulator, &url, &rt).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.headers["retry-after"], "1");

    let broken = refresh(&emulator, &url, &rt).await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(broken.body["error"], "server_error");

    let invalid = refresh(&emulator, &url, &rt).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.body["error"], "invalid_grant");

    // Injected faults did not consume the refresh token.
    let ok = refresh(&emulator, &url, &rt).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    assert_eq!(
        emulator.counters(),
        Counters {
            token_requests: 5,
            refresh_token_requests: 5,
            successful_refreshes: 1,
            access_tokens_issued: 1,
            invalid_grant: 1,
            faults_served: 4,
            ..Counters::default()
        }
    );
}

#[tokio::test]
async fn counters_are_exact_and_resettable() {
    let emulator = start(EmulatorConfig::default()).await;
    let ms = emulator.microsoft_token_url();
    let sf = emulator.salesforce_token_url();

    // 2 client-credentials grants (1 ok, 1 invalid_scope), 3 refreshes (2 ok, 1 reuse),
    // 1 unknown grant type, 1 wrong secret.
    graph_app_token(&emulator).await;
    token(
        &emulator,
        &ms,
        &[("grant_type", "client_credentials"), ("scope", "x")],
    )
    .await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let first = refresh(&emulator, &sf, &rt).await;
    refresh(&emulator, &sf, first.str("refresh_token")).await;
    refresh(&emulator, &sf, &rt).await; // reuse → invalid_grant + family revocation
    token(&emulator, &ms, &[("grant_type", "authorization_code")]).await;
    post_form(
        &ms,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "deckhand-test-client"),
            ("client_secret", "wrong"),
        ],
    )
    .await;

    // 3 resource requests: one OK, one with a revoked token, one without a token.
    let app = graph_app_token(&emulator)
        .await
        .str("access_token")
        .to_owned();
    get(&emulator, "/v1.0/users", &app).await;
    get(&emulator, "/services/data/", first.str("access_token")).await;
    get(&emulator, "/v1.0/users", "").await;

    assert_eq!(
        emulator.counters(),
        Counters {
            token_requests: 8,
            client_credentials_requests: 4,
            refresh_token_requests: 3,
            other_grant_requests: 1,
            successful_refreshes: 2,
            access_tokens_issued: 4,
            invalid_grant: 1,
            invalid_client: 1,
            family_revocations: 1,
            resource_requests: 3,
            unauthorized: 2,
            faults_served: 0,
        }
    );
    emulator.reset_counters();
    assert_eq!(emulator.counters(), Counters::default());
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_trip_reuse_detection() {
    // What a client without single-flight does: two refreshes racing on one refresh token.
    let emulator = Arc::new(start(EmulatorConfig::default()).await);
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let url = emulator.microsoft_token_url();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (emulator, rt, url) = (emulator.clone(), rt.clone(), url.clone());
            tokio::spawn(async move { refresh(&emulator, &url, &rt).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_REQUEST]);
    let counters = emulator.counters();
    assert_eq!(counters.family_revocations, 1);
    assert_eq!(counters.successful_refreshes, 1);
}

#[tokio::test]
async fn binds_loopback_and_stops_on_shutdown_and_drop() {
    let emulator = start(EmulatorConfig::default()).await;
    assert!(emulator.local_addr().ip().is_loopback());
    assert!(emulator.base_url().starts_with("http://127.0.0.1:"));
    let url = emulator.microsoft_token_url();
    emulator.shutdown().await;
    assert!(http().post(&url).send().await.is_err());

    let emulator = start(EmulatorConfig::default()).await;
    let url = emulator.microsoft_token_url();
    drop(emulator);
    tokio::task::yield_now().await;
    assert!(http().post(&url).send().await.is_err());
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let config = EmulatorConfig {
        salesforce_page_size: 0,
        ..EmulatorConfig::default()
    };
    assert!(Emulator::start(config).await.is_err());
    let config = EmulatorConfig {
        clients: Vec::new(),
        ..EmulatorConfig::default()
    };
    assert!(Emulator::start(config).await.is_err());
}

#[tokio::test]
async fn drop_response_after_rotation_spends_the_refresh_token_and_answers_nothing() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = emulator.client().clone();
    let rt = emulator.issue_refresh_token(&client.id);
    assert!(emulator.is_refresh_token_live(&rt));
    emulator.fail_next_token_requests(1, TokenFault::DropResponseAfterRotation);

    // The client gets no answer it can use: an error, either before or while reading the body.
    let lost = async {
        let response = http()
            .post(emulator.microsoft_token_url())
            .basic_auth(&client.id, Some(&client.secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ])
            .send()
            .await?;
        response.bytes().await
    }
    .await;
    assert!(lost.is_err(), "the response was not dropped: {lost:?}");

    // But the grant was processed: the presented refresh token is spent ...
    assert!(!emulator.is_refresh_token_live(&rt));
    let counters = emulator.counters();
    assert_eq!(counters.successful_refreshes, 1);
    assert_eq!(counters.faults_served, 1);
    // ... so the retry with the same token is reuse: invalid_grant, family revoked.
    let replay = refresh(&emulator, &emulator.microsoft_token_url(), &rt).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.body["error"], "invalid_grant");
    assert_eq!(emulator.counters().family_revocations, 1);
}
