//! Resource APIs: token validation, paging, SOQL, sObjects, Graph users and mail.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use deckhand_emulator::{EmulatorConfig, NewMessage};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn expired_access_tokens_get_each_providers_401_body() {
    let emulator = start(EmulatorConfig {
        token_lifetime: Duration::from_secs(2),
        ..EmulatorConfig::default()
    })
    .await;
    let graph = graph_user_token(&emulator).await;
    let salesforce = salesforce_token(&emulator).await;
    assert_eq!(
        get(&emulator, "/v1.0/me", &graph).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&emulator, "/services/data/", &salesforce).await.status,
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;

    let graph_reply = get(&emulator, "/v1.0/me", &graph).await;
    assert_eq!(graph_reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        graph_reply.body["error"]["code"],
        "InvalidAuthenticationToken"
    );
    assert!(
        graph_reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired"))
    );
    assert!(graph_reply.headers.contains_key("www-authenticate"));

    let sf_reply = get(&emulator, "/services/data/", &salesforce).await;
    assert_eq!(sf_reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        sf_reply.body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );

    assert_eq!(emulator.counters().unauthorized, 2);
}

#[tokio::test]
async fn missing_forged_and_cross_api_tokens_are_rejected() {
    let emulator = start(EmulatorConfig::default()).await;
    let graph = graph_user_token(&emulator).await;
    let salesforce = salesforce_token(&emulator).await;

    // No Authorization header at all.
    let response = http()
        .get(format!("{}/v1.0/users", emulator.base_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A JWT with a tampered payload.
    let mut parts: Vec<&str> = graph.split('.').collect();
    parts[1] = "eyJzdWIiOiJtYWxsb3J5In0";
    let forged = parts.join(".");
    assert_eq!(
        get(&emulator, "/v1.0/me", &forged).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Tokens only work on the API whose token endpoint issued them.
    assert_eq!(
        get(&emulator, "/v1.0/me", &salesforce).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&emulator, "/services/data/", &graph).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(emulator.counters().unauthorized, 4);
}

#[tokio::test]
async fn forced_expiry_and_family_revocation() {
    let emulator = start(EmulatorConfig::default()).await;
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let url = emulator.microsoft_token_url();
    let first = refresh(&emulator, &url, &rt).await;
    let access = first.str("access_token").to_owned();

    emulator.expire_access_tokens();
    assert_eq!(
        get(&emulator, "/v1.0/me", &access).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Refreshing still works and yields a fresh, valid token.
    let second = refresh(&emulator, &url, first.str("refresh_token")).await;
    let fresh = second.str("access_token").to_owned();
    assert_eq!(
        get(&emulator, "/v1.0/me", &fresh).await.status,
        StatusCode::OK
    );

    assert!(emulator.revoke_family_of(&fresh));
    assert!(!emulator.revoke_family_of(&fresh), "already revoked");
    assert_eq!(
        get(&emulator, "/v1.0/me", &fresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    let after = refresh(&emulator, &url, second.str("refresh_token")).await;
    assert_eq!(after.body["error"], "invalid_grant");
    assert_eq!(emulator.counters().family_revocations, 1);
}

/// Follows `nextRecordsUrl` until `done`, returning all records and the number of pages.
async fn soql_all(
    emulator: &deckhand_emulator::Emulator,
    token: &str,
    soql: &str,
) -> (Vec<Value>, usize) {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/query", emulator.salesforce_data_url()),
        &[("q", soql)],
    )
    .expect("url");
    let mut reply = get(emulator, url.as_str(), token).await;
    let mut records = Vec::new();
    let mut pages = 0;
    loop {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        pages += 1;
        let total = reply.body["totalSize"].as_u64().expect("totalSize");
        records.extend(reply.body["records"].as_array().expect("records").clone());
        if reply.body["done"] == true {
            assert_eq!(records.len() as u64, total);
            assert!(reply.body.get("nextRecordsUrl").is_none());
            return (records, pages);
        }
        let next = reply.str("nextRecordsUrl").to_owned();
        assert!(next.starts_with("/services/data/v60.0/query/01g"), "{next}");
        reply = get(emulator, &next, token).await;
    }
}

#[tokio::test]
async fn salesforce_query_pages_and_filters() {
    let emulator = start(EmulatorConfig {
        salesforce_page_size: 4,
        seed_accounts: 10,
        seed_contacts: 7,
        ..EmulatorConfig::default()
    })
    .await;
    let token = salesforce_token(&emulator).await;

    let (accounts, pages) = soql_all(&emulator, &token, "SELECT Id, Name FROM Account").await;
    assert_eq!((accounts.len(), pages), (10, 3));
    assert_eq!(accounts[0]["attributes"]["type"], "Account");
    assert!(
        accounts[0]["Id"]
            .as_str()
            .is_some_and(|id| id.starts_with("001"))
    );
    assert!(
        accounts[0].get("LastModifiedDate").is_none(),
        "only selected fields"
    );

    let (contacts, _) = soql_all(&emulator, &token, "select Name, Email from contact").await;
    assert_eq!(contacts.len(), 7);

    // Account i was modified at 2024-01-01T00:00Z + i hours: > 05:00 leaves 6..=10.
    let (recent, _) = soql_all(
        &emulator,
        &token,
        "SELECT Id, LastModifiedDate FROM Account WHERE LastModifiedDate > 2024-01-01T05:00:00Z \
         ORDER BY LastModifiedDate DESC",
    )
    .await;
    assert_eq!(recent.len(), 5);
    assert_eq!(
        recent[0]["LastModifiedDate"],
        "2024-01-01T10:00:00.000+0000"
    );
    assert_eq!(
        recent[4]["LastModifiedDate"],
        "2024-01-01T06:00:00.000+0000"
    );

    // A per-query batch size header overrides the configured page size.
    let response = http()
        .get(format!("{}/query", emulator.salesforce_data_url()))
        .query(&[("q", "SELECT Id FROM Account")])
        .bearer_auth(&token)
        .header("Sforce-Query-Options", "batchSize=2")
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["totalSize"], 10);
}

#[tokio::test]
async fn salesforce_query_errors() {
    let emulator = start(EmulatorConfig::default()).await;
    let token = salesforce_token(&emulator).await;
    let data = emulator.salesforce_data_url();

    let no_q = get(&emulator, &format!("{data}/query"), &token).await;
    assert_eq!(no_q.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_q.body[0]["errorCode"], "MALFORMED_QUERY");

    let url = reqwest::Url::parse_with_params(
        &format!("{data}/query"),
        &[("q", "SELECT Id FROM Account WHERE Name LIKE 'A%'")],
    )
    .expect("url");
    let unsupported = get(&emulator, url.as_str(), &token).await;
    assert_eq!(unsupported.body[0]["errorCode"], "MALFORMED_QUERY");

    let url =
        reqwest::Url::parse_with_params(&format!("{data}/query"), &[("q", "SELECT Id FROM Nope")])
            .expect("url");
    assert_eq!(
        get(&emulator, url.as_str(), &token).await.body[0]["errorCode"],
        "INVALID_TYPE"
    );

    let locator = get(&emulator, &format!("{data}/query/01gbogus-5"), &token).await;
    assert_eq!(locator.body[0]["errorCode"], "INVALID_QUERY_LOCATOR");

    let version = get(&emulator, "/services/data/60.0/query", &token).await;
    assert_eq!(version.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn salesforce_sobjects_create_lookup_upsert() {
    let emulator = start(EmulatorConfig::default()).await;
    let token = salesforce_token(&emulator).await;
    let sobjects = format!("{}/sobjects", emulator.salesforce_data_url());

    let created = send_json(
        &emulator,
        Method::POST,
        &format!("{sobjects}/Account"),
        &token,
        &json!({"Name": "Deckhand Inc", "External_Id__c": "DH-1"}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["success"], true);
    assert_eq!(created.body["errors"], json!([]));
    let id = created.str("id").to_owned();

    let by_id = get(&emulator, &format!("{sobjects}/Account/{id}"), &token).await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(by_id.body["Name"], "Deckhand Inc");
    assert!(by_id.body["LastModifiedDate"].is_string());

    let by_ext = get(
        &emulator,
        &format!("{sobjects}/Account/External_Id__c/DH-1"),
        &token,
    )
    .await;
    assert_eq!(by_ext.body["Id"], id.as_str());

    let missing = get(
        &emulator,
        &format!("{sobjects}/Account/001000000000999AAA"),
        &token,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body[0]["errorCode"], "NOT_FOUND");

    // Upsert: update the existing record (204), then insert a new one (201).
    let updated = send_json(
        &emulator,
        Method::PATCH,
        &format!("{sobjects}/Account/External_Id__c/DH-1"),
        &token,
        &json!({"Industry": "Shipping"}),
    )
    .await;
    assert_eq!(updated.status, StatusCode::NO_CONTENT);
    let inserted = send_json(
        &emulator,
        Method::PATCH,
        &format!("{sobjects}/Account/External_Id__c/DH-2"),
        &token,
        &json!({"Name": "Second"}),
    )
    .await;
    assert_eq!(inserted.status, StatusCode::CREATED);
    assert_eq!(inserted.body["created"], true);

    let records = emulator.salesforce_records("Account");
    let first = records
        .iter()
        .find(|r| r["Id"] == id.as_str())
        .expect("record");
    assert_eq!(first["Industry"], "Shipping");
    assert!(records.iter().any(|r| r["External_Id__c"] == "DH-2"));

    // Bad bodies are Salesforce errors, not panics.
    for body in [json!([1, 2]), json!({"Id": "x"})] {
        let bad = send_json(
            &emulator,
            Method::POST,
            &format!("{sobjects}/Account"),
            &token,
            &body,
        )
        .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.body[0]["errorCode"].is_string());
    }
    let garbage = http()
        .post(format!("{sobjects}/Account"))
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn salesforce_versions_and_userinfo() {
    let emulator = start(EmulatorConfig::default()).await;
    let token = salesforce_token(&emulator).await;
    let versions = get(&emulator, &emulator.salesforce_versions_url(), &token).await;
    assert!(
        versions
            .body
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["version"] == "60.0"))
    );
    let info = get(&emulator, &emulator.salesforce_userinfo_url(), &token).await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.body["organization_id"], "00D000000000001AAA");
}

/// Follows `@odata.nextLink` until absent.
async fn graph_all(
    emulator: &deckhand_emulator::Emulator,
    token: &str,
    url: &str,
) -> (Vec<Value>, usize) {
    let mut reply = get(emulator, url, token).await;
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        pages += 1;
        items.extend(reply.body["value"].as_array().expect("value").clone());
        match reply.body.get("@odata.nextLink").and_then(Value::as_str) {
            Some(next) => {
                assert!(
                    next.starts_with(emulator.base_url()),
                    "absolute nextLink: {next}"
                );
                let next = next.to_owned();
                reply = get(emulator, &next, token).await;
            }
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn graph_users_paging_and_lookup() {
    let emulator = start(EmulatorConfig {
        seed_users: 7,
        ..EmulatorConfig::default()
    })
    .await;
    let token = graph_app_token(&emulator)
        .await
        .str("access_token")
        .to_owned();

    let (users, pages) = graph_all(
        &emulator,
        &token,
        &format!("{}/users?$top=3", emulator.graph_url()),
    )
    .await;
    assert_eq!((users.len(), pages), (7, 3));

    let upn = users[2]["userPrincipalName"]
        .as_str()
        .expect("upn")
        .to_owned();
    let by_upn = get(&emulator, &format!("/v1.0/users/{upn}"), &token).await;
    assert_eq!(by_upn.body["id"], users[2]["id"]);
    let by_id = get(
        &emulator,
        &format!(
            "/v1.0/users/{}?$select=displayName",
            users[2]["id"].as_str().expect("id")
        ),
        &token,
    )
    .await;
    assert_eq!(by_id.body["displayName"], users[2]["displayName"]);
    assert!(by_id.body.get("mail").is_none());

    let missing = get(&emulator, "/v1.0/users/nobody@nowhere.test", &token).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"]["code"], "Request_ResourceNotFound");

    // /me needs a delegated token.
    let me = get(&emulator, "/v1.0/me", &token).await;
    assert_eq!(me.status, StatusCode::BAD_REQUEST);

    let bad_top = get(&emulator, "/v1.0/users?$top=0", &token).await;
    assert_eq!(bad_top.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_top.body["error"]["code"], "BadRequest");
}

#[tokio::test]
async fn graph_messages_filter_order_paging_and_runtime_messages() {
    let emulator = start(EmulatorConfig {
        seed_messages_per_user: 9,
        ..EmulatorConfig::default()
    })
    .await;
    let token = graph_user_token(&emulator).await;

    // Message j was received at 2024-01-01T00:00Z + j hours; gt 03:00 leaves 4..=9.
    let url = reqwest::Url::parse_with_params(
        &format!("{}/me/messages", emulator.graph_url()),
        &[
            ("$filter", "receivedDateTime gt 2024-01-01T03:00:00Z"),
            ("$orderby", "receivedDateTime"),
            ("$top", "4"),
        ],
    )
    .expect("url");
    let (messages, pages) = graph_all(&emulator, &token, url.as_str()).await;
    assert_eq!((messages.len(), pages), (6, 2));
    let times: Vec<&str> = messages
        .iter()
        .map(|m| m["receivedDateTime"].as_str().expect("receivedDateTime"))
        .collect();
    assert_eq!(times.first(), Some(&"2024-01-01T04:00:00Z"));
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "ascending: {times:?}"
    );

    // Default order is newest first.
    let newest = get(&emulator, "/v1.0/me/messages?$top=1", &token).await;
    assert_eq!(
        newest.body["value"][0]["receivedDateTime"],
        "2024-01-01T09:00:00Z"
    );

    // A message added at runtime shows up for a poller filtering on the last seen time.
    let id = emulator
        .add_message(
            "user1@deckhand.test",
            NewMessage {
                body: "hello".into(),
                received_at: Some(SystemTime::now()),
                ..NewMessage::new("New order", "customer@example.test")
            },
        )
        .expect("user exists");
    let url = reqwest::Url::parse_with_params(
        &format!(
            "{}/users/user1@deckhand.test/messages",
            emulator.graph_url()
        ),
        &[("$filter", "receivedDateTime gt 2024-01-01T09:00:00Z")],
    )
    .expect("url");
    let fresh = get(&emulator, url.as_str(), &token).await;
    assert_eq!(fresh.body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(fresh.body["value"][0]["id"], id.as_str());
    assert_eq!(
        fresh.body["value"][0]["from"]["emailAddress"]["address"],
        "customer@example.test"
    );
    assert!(
        emulator
            .add_message("ghost@nowhere.test", NewMessage::new("x", "y"))
            .is_none()
    );

    let bad = get(
        &emulator,
        "/v1.0/me/messages?$filter=startswith(subject,'a')",
        &token,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn graph_send_mail_is_recorded_and_delivered() {
    let emulator = start(EmulatorConfig {
        seed_messages_per_user: 0,
        ..EmulatorConfig::default()
    })
    .await;
    let token = graph_user_token(&emulator).await;
    let mail = json!({
        "message": {
            "subject": "Report",
            "body": {"contentType": "Text", "content": "All green."},
            "toRecipients": [
                {"emailAddress": {"address": "user2@deckhand.test"}},
                {"emailAddress": {"address": "outside@example.test"}},
            ],
        },
        "saveToSentItems": false,
    });
    let sent = send_json(&emulator, Method::POST, "/v1.0/me/sendMail", &token, &mail).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED);
    assert_eq!(sent.body, Value::Null);

    let app = graph_app_token(&emulator)
        .await
        .str("access_token")
        .to_owned();
    let as_user = send_json(
        &emulator,
        Method::POST,
        "/v1.0/users/user3@deckhand.test/sendMail",
        &app,
        &mail,
    )
    .await;
    assert_eq!(as_user.status, StatusCode::ACCEPTED);

    let recorded = emulator.sent_mail();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].subject(), Some("Report"));
    assert_eq!(
        recorded[0].to_addresses(),
        ["user2@deckhand.test", "outside@example.test"]
    );
    assert!(!recorded[0].save_to_sent_items);
    let users = emulator.graph_users();
    assert_eq!(recorded[0].user_id, users[0]["id"].as_str().expect("id"));

    // user2 received both copies.
    let inbox = get(&emulator, "/v1.0/users/user2@deckhand.test/messages", &app).await;
    assert_eq!(inbox.body["value"].as_array().map(Vec::len), Some(2));
    assert_eq!(inbox.body["value"][0]["subject"], "Report");

    // Validation errors.
    let no_recipients = send_json(
        &emulator,
        Method::POST,
        "/v1.0/me/sendMail",
        &token,
        &json!({"message": {"subject": "x"}}),
    )
    .await;
    assert_eq!(no_recipients.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        no_recipients.body["error"]["code"],
        "ErrorInvalidRecipients"
    );
    let not_json = http()
        .post(format!("{}/me/sendMail", emulator.graph_url()))
        .bearer_auth(&token)
        .body("nope")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(emulator.sent_mail().len(), 2);
}

#[tokio::test]
async fn unknown_paths_are_json_404() {
    let emulator = start(EmulatorConfig::default()).await;
    let response = http()
        .get(format!("{}/nope", emulator.base_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "not_found");

    // Undecodable path parameters answer JSON in the API's shape, not plain text.
    let token = graph_app_token(&emulator)
        .await
        .str("access_token")
        .to_owned();
    let bad = get(&emulator, "/v1.0/users/%FF", &token).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["code"], "BadRequest");
    let bad_tenant = post_form(
        &format!("{}/%FF/oauth2/v2.0/token", emulator.base_url()),
        &[],
    )
    .await;
    assert_eq!(bad_tenant.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_tenant.body["error"], "invalid_request");
}

#[tokio::test]
async fn sub_second_lifetimes_expire_exactly() {
    let emulator = start(EmulatorConfig {
        token_lifetime: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let reply = graph_app_token(&emulator).await;
    assert_eq!(reply.body["expires_in"], 0, "whole seconds, rounded down");
    let token = reply.str("access_token").to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(&emulator, "/v1.0/users", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
}
