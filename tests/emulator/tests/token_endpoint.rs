//! Token endpoint behaviour: grants, client authentication, response shapes, rotation.

mod common;

use std::time::Duration;

use common::*;
use deckhand_emulator::{
    AccessTokenFormat, EmulatorConfig, ExpiresInFormat, RefreshRotation, peek_claims,
};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn client_credentials_issues_a_jwt_whose_exp_matches_the_lifetime() {
    let emulator = start(EmulatorConfig {
        token_lifetime: Duration::from_secs(5),
        ..EmulatorConfig::default()
    })
    .await;
    let before = now_secs();
    let reply = graph_app_token(&emulator).await;
    let after = now_secs();

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 5);
    assert_eq!(reply.body["ext_expires_in"], 5);
    assert_eq!(reply.body["scope"], "https://graph.microsoft.com/.default");
    assert!(reply.body.get("refresh_token").is_none());

    let claims = peek_claims(reply.str("access_token")).expect("a JWT");
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert!((before..=after).contains(&iat));
    assert!((5..=6).contains(&(exp - iat)), "exp - iat = {}", exp - iat);
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["sub"], emulator.client().id.as_str());
    assert_eq!(claims["tid"], "deckhand-test-tenant");
    assert!(claims["jti"].is_string());
    assert!(
        claims["fid"]
            .as_str()
            .is_some_and(|f| f.starts_with("fam-"))
    );
}

#[tokio::test]
async fn client_credentials_requires_a_default_scope() {
    let emulator = start(EmulatorConfig::default()).await;
    let url = emulator.microsoft_token_url();
    let missing = token(&emulator, &url, &[("grant_type", "client_credentials")]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.body["error"], "invalid_request");
    assert!(missing.str("error_description").contains("scope"));

    let wrong = token(
        &emulator,
        &url,
        &[("grant_type", "client_credentials"), ("scope", "User.Read")],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.body["error"], "invalid_scope");
}

#[tokio::test]
async fn basic_and_body_client_authentication_both_work() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = emulator.client().clone();
    let url = emulator.microsoft_token_url();
    let scope = "https://graph.microsoft.com/.default";

    let basic = graph_app_token(&emulator).await;
    assert_eq!(basic.status, StatusCode::OK, "{}", basic.body);

    let body = post_form(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_id", &client.id),
            ("client_secret", &client.secret),
        ],
    )
    .await;
    assert_eq!(body.status, StatusCode::OK, "{}", body.body);

    // Same on the Salesforce endpoint.
    let rt = emulator.issue_refresh_token(&client.id);
    let sf = post_form(
        &emulator.salesforce_token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", &client.id),
            ("client_secret", &client.secret),
        ],
    )
    .await;
    assert_eq!(sf.status, StatusCode::OK, "{}", sf.body);
}

#[tokio::test]
async fn wrong_or_missing_client_credentials_are_invalid_client() {
    let emulator = start(EmulatorConfig::default()).await;
    let client = emulator.client().clone();
    let url = emulator.microsoft_token_url();
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "https://graph.microsoft.com/.default"),
    ];

    let response = http()
        .post(&url)
        .basic_auth(&client.id, Some("wrong"))
        .form(&form)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");

    let wrong_body = post_form(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("client_id", "someone-else"),
            ("client_secret", &client.secret),
        ],
    )
    .await;
    assert_eq!(wrong_body.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_body.body["error"], "invalid_client");

    let no_secret = post_form(
        &url,
        &[("grant_type", "refresh_token"), ("client_id", &client.id)],
    )
    .await;
    assert_eq!(no_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_secret.body["error"], "invalid_client");

    let sf = post_form(
        &emulator.salesforce_token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &client.id),
            ("client_secret", "nope"),
        ],
    )
    .await;
    assert_eq!(sf.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sf.body["error"], "invalid_client");
    assert_eq!(emulator.counters().invalid_client, 4);
}

#[tokio::test]
async fn malformed_requests_get_oauth_errors_not_panics() {
    let emulator = start(EmulatorConfig::default()).await;
    let url = emulator.microsoft_token_url();
    let http = http();

    // Not form-encoded.
    let json = http
        .post(&url)
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("request");
    assert_eq!(json.status(), StatusCode::BAD_REQUEST);
    let body: Value = json.json().await.expect("json");
    assert_eq!(body["error"], "invalid_request");

    // Garbage bytes, duplicate parameters, broken Basic header.
    for (body, auth) in [
        (&b"\xff\xfe%%%&&=="[..], None),
        (
            b"grant_type=client_credentials&grant_type=refresh_token",
            None,
        ),
        (
            b"grant_type=client_credentials",
            Some("Basic !!!not-base64"),
        ),
        (b"grant_type=client_credentials", Some("Basic bm9jb2xvbg==")), // "nocolon"
    ] {
        let mut request = http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("request");
        assert!(
            response.status() == StatusCode::BAD_REQUEST
                || response.status() == StatusCode::UNAUTHORIZED,
            "{}",
            response.status()
        );
        let body: Value = response.json().await.expect("json error body");
        assert!(body["error"].is_string());
        assert!(body["error_description"].is_string());
    }

    // Missing grant_type / refresh_token, unsupported grant.
    let missing_grant = token(&emulator, &url, &[]).await;
    assert_eq!(missing_grant.body["error"], "invalid_request");
    let missing_rt = token(&emulator, &url, &[("grant_type", "refresh_token")]).await;
    assert_eq!(missing_rt.body["error"], "invalid_request");
    assert!(
        missing_rt
            .str("error_description")
            .contains("refresh_token")
    );
    let unsupported = token(&emulator, &url, &[("grant_type", "password")]).await;
    assert_eq!(unsupported.body["error"], "unsupported_grant_type");

    // The emulator still works.
    assert_eq!(graph_app_token(&emulator).await.status, StatusCode::OK);
}

#[tokio::test]
async fn expires_in_as_string_switch() {
    let emulator = start(EmulatorConfig {
        expires_in_format: ExpiresInFormat::String,
        token_lifetime: Duration::from_secs(120),
        ..EmulatorConfig::default()
    })
    .await;
    let reply = graph_app_token(&emulator).await;
    assert_eq!(reply.body["expires_in"], "120");
    assert_eq!(reply.body["ext_expires_in"], "120");
}

#[tokio::test]
async fn expires_in_omitted_switch_leaves_only_the_jwt_exp() {
    let emulator = start(EmulatorConfig {
        expires_in_format: ExpiresInFormat::Omitted,
        ..EmulatorConfig::default()
    })
    .await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let reply = refresh(&emulator, &emulator.microsoft_token_url(), &rt).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.get("expires_in").is_none());
    assert!(reply.body.get("ext_expires_in").is_none());
    let claims = peek_claims(reply.str("access_token")).expect("jwt");
    assert!(claims["exp"].as_u64().expect("exp") > now_secs() + 3500);
}

#[tokio::test]
async fn salesforce_refresh_response_has_instance_url_and_no_expires_in() {
    let emulator = start(EmulatorConfig::default()).await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let reply = refresh(&emulator, &emulator.salesforce_token_url(), &rt).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let body = &reply.body;
    assert!(body.get("expires_in").is_none());
    assert_eq!(body["instance_url"], emulator.base_url());
    assert_eq!(body["token_type"], "Bearer");
    assert!(
        reply
            .str("id")
            .starts_with(&format!("{}/id/00D", emulator.base_url()))
    );
    let issued_at: u128 = reply.str("issued_at").parse().expect("ms epoch string");
    assert!(issued_at > 1_700_000_000_000);
    assert!(!reply.str("signature").is_empty());
    // Default: rotation on, opaque session id.
    let new_rt = reply.str("refresh_token");
    assert_ne!(new_rt, rt);
    assert!(peek_claims(reply.str("access_token")).is_none());
    assert!(reply.str("access_token").starts_with("00D"));

    // The identity URL works with the token.
    let id = get(&emulator, reply.str("id"), reply.str("access_token")).await;
    assert_eq!(id.status, StatusCode::OK);
    assert_eq!(id.body["user_id"], "005000000000001AAA");
}

#[tokio::test]
async fn salesforce_without_rotation_returns_no_refresh_token_and_jwt_when_asked() {
    let emulator = start(EmulatorConfig {
        salesforce_refresh_rotation: RefreshRotation::Off,
        salesforce_access_token_format: AccessTokenFormat::Jwt,
        ..EmulatorConfig::default()
    })
    .await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    for _ in 0..3 {
        let reply = refresh(&emulator, &emulator.salesforce_token_url(), &rt).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.body.get("refresh_token").is_none());
        let claims = peek_claims(reply.str("access_token")).expect("jwt");
        assert_eq!(claims["aud"], emulator.base_url());
    }
    assert_eq!(emulator.counters().successful_refreshes, 3);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let emulator = start(EmulatorConfig::default()).await;
    let url = emulator.microsoft_token_url();
    let rt1 = emulator.issue_refresh_token(&emulator.client().id);

    let first = refresh(&emulator, &url, &rt1).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let rt2 = first.str("refresh_token").to_owned();
    assert_ne!(rt1, rt2);
    let at1 = first.str("access_token").to_owned();
    assert!(peek_claims(&at1).expect("jwt")["scp"].is_string());

    let second = refresh(&emulator, &url, &rt2).await;
    assert_eq!(second.status, StatusCode::OK);
    let rt3 = second.str("refresh_token").to_owned();
    let at2 = second.str("access_token").to_owned();
    assert_eq!(
        get(&emulator, "/v1.0/me", &at2).await.status,
        StatusCode::OK
    );

    // Replaying rt1 (already used): invalid_grant, and the family is revoked.
    let family = emulator.family_of(&rt1).expect("known token");
    assert_eq!(emulator.family_of(&at2).as_deref(), Some(family.as_str()));
    let replay = refresh(&emulator, &url, &rt1).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(replay.body["error"], "invalid_grant");
    assert!(replay.str("error_description").contains("revoked"));
    assert_eq!(emulator.is_family_revoked(&family), Some(true));

    // The newest tokens of the family stop working too.
    let newest = refresh(&emulator, &url, &rt3).await;
    assert_eq!(newest.status, StatusCode::BAD_REQUEST);
    assert_eq!(newest.body["error"], "invalid_grant");
    for access_token in [&at1, &at2] {
        let me = get(&emulator, "/v1.0/me", access_token).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED);
        assert_eq!(me.body["error"]["code"], "InvalidAuthenticationToken");
    }

    // Other families are unaffected.
    let other = emulator.issue_refresh_token(&emulator.client().id);
    assert_eq!(
        refresh(&emulator, &url, &other).await.status,
        StatusCode::OK
    );

    let counters = emulator.counters();
    assert_eq!(counters.successful_refreshes, 3);
    assert_eq!(counters.invalid_grant, 2);
    assert_eq!(counters.family_revocations, 1);
}

#[tokio::test]
async fn salesforce_rotation_reuse_revokes_the_family() {
    let emulator = start(EmulatorConfig::default()).await;
    let url = emulator.salesforce_token_url();
    let rt1 = emulator.issue_refresh_token(&emulator.client().id);
    let first = refresh(&emulator, &url, &rt1).await;
    let access = first.str("access_token").to_owned();
    let rt2 = first.str("refresh_token").to_owned();
    assert_eq!(
        get(&emulator, "/services/data/", &access).await.status,
        StatusCode::OK
    );

    assert_eq!(
        refresh(&emulator, &url, &rt1).await.status,
        StatusCode::BAD_REQUEST
    );
    let denied = get(&emulator, "/services/data/", &access).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.body[0]["errorCode"], "INVALID_SESSION_ID");
    assert_eq!(
        refresh(&emulator, &url, &rt2).await.body["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn lenient_rotation_returns_new_tokens_but_keeps_old_ones_valid() {
    let emulator = start(EmulatorConfig {
        graph_refresh_rotation: RefreshRotation::Lenient,
        ..EmulatorConfig::default()
    })
    .await;
    let url = emulator.microsoft_token_url();
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let first = refresh(&emulator, &url, &rt).await;
    let again = refresh(&emulator, &url, &rt).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(first.str("refresh_token"), again.str("refresh_token"));
    assert_eq!(
        refresh(&emulator, &url, first.str("refresh_token"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(emulator.counters().family_revocations, 0);
}

#[tokio::test]
async fn unknown_or_foreign_refresh_tokens_are_invalid_grant() {
    let mut config = EmulatorConfig::default();
    config
        .clients
        .push(deckhand_emulator::OAuthClient::new("other", "other-secret"));
    let emulator = start(config).await;
    let url = emulator.microsoft_token_url();

    let unknown = refresh(&emulator, &url, "rt.does-not-exist").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["error"], "invalid_grant");

    let foreign = emulator.issue_refresh_token("other");
    let reply = refresh(&emulator, &url, &foreign).await;
    assert_eq!(reply.body["error"], "invalid_grant");
    assert!(reply.str("error_description").contains("different client"));

    // The rightful client can still use it (a foreign attempt does not consume it).
    let response = http()
        .post(&url)
        .basic_auth("other", Some("other-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &foreign)])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(emulator.counters().family_revocations, 0);
}

#[tokio::test]
async fn refresh_with_scope_echoes_it_and_tenant_lands_in_tid() {
    let emulator = start(EmulatorConfig::default()).await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let reply = token(
        &emulator,
        &emulator.microsoft_token_url_for("contoso.onmicrosoft.com"),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("scope", "User.Read offline_access"),
        ],
    )
    .await;
    assert_eq!(reply.body["scope"], "User.Read offline_access");
    let claims = peek_claims(reply.str("access_token")).expect("jwt");
    assert_eq!(claims["tid"], "contoso.onmicrosoft.com");
    assert_eq!(claims["scp"], "User.Read offline_access");
}
