//! The `readMail` polling trigger against a mocked Graph: the query, and the position in the
//! snapshot on a first run, a next run, and with equal timestamps.

mod common;

use std::sync::Arc;

use common::*;
use deckhand::auth::MemorySink;
use mockito::{Matcher, Mock, ServerGuard};
use serde_json::{Value, json};

const MAILBOX: &str = "adele@contoso.com";
const T1: &str = "2024-03-01T08:00:00Z";
const T2: &str = "2024-03-01T09:00:00Z";
const T3: &str = "2024-03-01T10:00:00Z";

fn mail(id: &str, received: &str) -> Value {
    json!({"id": id, "receivedDateTime": received, "subject": format!("Mail {id}")})
}

fn mailbox() -> Value {
    json!({"mailbox": MAILBOX})
}

/// The messages request from `since`, answering `page`.
async fn mock_messages(server: &mut ServerGuard, path: &str, since: &str, page: Value) -> Mock {
    server
        .mock("GET", path)
        .match_query(Matcher::AllOf(vec![
            Matcher::UrlEncoded("$filter".into(), format!("receivedDateTime ge {since}")),
            Matcher::UrlEncoded("$orderby".into(), "receivedDateTime asc".into()),
            Matcher::UrlEncoded("$top".into(), "50".into()),
        ]))
        .match_header("authorization", bearer().as_str())
        .with_header("content-type", "application/json")
        .with_body(page.to_string())
        .expect(1)
        .create_async()
        .await
}

fn messages_path() -> String {
    format!("/v1.0/users/{MAILBOX}/messages")
}

#[tokio::test]
async fn first_run_emits_all_mail_oldest_first_and_records_the_position_per_page() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let next = format!("{}{}?$skiptoken=2", server.url(), messages_path());
    let page1 = mock_messages(
        &mut server,
        &messages_path(),
        "1970-01-01T00:00:00Z",
        json!({"value": [mail("m1", T1), mail("m2", T2)], "@odata.nextLink": next}),
    )
    .await;
    let page2 = server
        .mock("GET", messages_path().as_str())
        .match_query(Matcher::UrlEncoded("$skiptoken".into(), "2".into()))
        .with_header("content-type", "application/json")
        .with_body(json!({"value": [mail("m3", T2)]}).to_string())
        .expect(1)
        .create_async()
        .await;

    let session = app_session(&server.url(), mailbox(), json!({}));
    let (outcome, events) = run(&session, "readMail", json!({})).await;

    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(
        data(&events),
        [mail("m1", T1), mail("m2", T2), mail("m3", T2)]
    );
    assert_eq!(
        snapshots(&events),
        [
            json!({"lastReceivedDateTime": T2, "idsAtLastReceivedDateTime": ["m2"]}),
            json!({"lastReceivedDateTime": T2, "idsAtLastReceivedDateTime": ["m2", "m3"]}),
        ]
    );
    assert_eq!(
        session.snapshot(),
        json!({"lastReceivedDateTime": T2, "idsAtLastReceivedDateTime": ["m2", "m3"]})
    );
    page1.assert_async().await;
    page2.assert_async().await;
}

#[tokio::test]
async fn next_run_starts_at_the_position_and_skips_what_was_emitted() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let poll = mock_messages(
        &mut server,
        &messages_path(),
        T2,
        json!({"value": [mail("m2", T2), mail("m3", T2), mail("m4", T2), mail("m5", T3)]}),
    )
    .await;
    let snapshot = json!({"lastReceivedDateTime": T2, "idsAtLastReceivedDateTime": ["m2", "m3"]});
    let session = app_session(&server.url(), mailbox(), snapshot);
    let (outcome, events) = run(&session, "readMail", json!({})).await;

    assert_eq!(outcome.errors, 0, "{events:?}");
    // m4 has the timestamp of the position but was not emitted yet; m5 is newer.
    assert_eq!(data(&events), [mail("m4", T2), mail("m5", T3)]);
    assert_eq!(
        session.snapshot(),
        json!({"lastReceivedDateTime": T3, "idsAtLastReceivedDateTime": ["m5"]})
    );
    poll.assert_async().await;
}

#[tokio::test]
async fn mail_arriving_later_with_an_equal_timestamp_is_emitted_once() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let first = mock_messages(
        &mut server,
        &messages_path(),
        "1970-01-01T00:00:00Z",
        json!({"value": [mail("m1", T1), mail("m2", T1)]}),
    )
    .await;
    let second = mock_messages(
        &mut server,
        &messages_path(),
        T1,
        json!({"value": [mail("m1", T1), mail("m2", T1), mail("m3", T1)]}),
    )
    .await;
    let third = mock_messages(
        &mut server,
        &messages_path(),
        T1,
        json!({"value": [mail("m1", T1), mail("m2", T1), mail("m3", T1)]}),
    )
    .await;
    // One session: the snapshot carries over from poll to poll.
    let session = app_session(&server.url(), mailbox(), json!({}));

    let (_, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(data(&events), [mail("m1", T1), mail("m2", T1)]);

    let (_, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(data(&events), [mail("m3", T1)]);
    assert_eq!(
        snapshots(&events),
        [json!({"lastReceivedDateTime": T1, "idsAtLastReceivedDateTime": ["m1", "m2", "m3"]})]
    );

    // Nothing new: no data, and no snapshot event either.
    let (outcome, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(outcome.errors, 0);
    assert!(
        data(&events).is_empty() && snapshots(&events).is_empty(),
        "{events:?}"
    );

    first.assert_async().await;
    second.assert_async().await;
    third.assert_async().await;
}

#[tokio::test]
async fn the_first_run_starts_at_start_time_in_the_folder() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let path = format!("/v1.0/users/{MAILBOX}/mailFolders/inbox/messages");
    let poll = mock_messages(&mut server, &path, T2, json!({"value": [mail("m5", T3)]})).await;
    let fields =
        json!({"mailbox": MAILBOX, "folder": "inbox", "startTime": "2024-03-01T10:00:00+01:00"});
    let session = app_session(&server.url(), fields, json!({}));
    let (outcome, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events), [mail("m5", T3)]);
    poll.assert_async().await;
}

#[tokio::test]
async fn delegated_credentials_read_the_signed_in_users_mailbox() {
    let mut server = mockito::Server::new_async().await;
    let scope = format!("{}/.default offline_access", server.url());
    let token = server
        .mock("POST", format!("/{TENANT}/oauth2/v2.0/token").as_str())
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("grant_type".into(), "refresh_token".into()),
            Matcher::UrlEncoded("refresh_token".into(), "rt-0".into()),
            Matcher::UrlEncoded("scope".into(), scope),
        ]))
        .with_header("content-type", "application/json")
        .with_body(
            json!({"token_type": "Bearer", "expires_in": 3599, "access_token": ACCESS_TOKEN, "refresh_token": "rt-1"})
                .to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let poll = mock_messages(
        &mut server,
        "/v1.0/me/messages",
        "1970-01-01T00:00:00Z",
        json!({"value": [mail("m1", T1)]}),
    )
    .await;
    let sink = MemorySink::new();
    let session = session_with(
        connector(),
        delegated_keys(&server.url(), TENANT, "app-id", "app-secret", "rt-0"),
        json!({}),
        json!({}),
        Arc::new(sink.clone()),
    );
    let (outcome, events) = run(&session, "readMail", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events), [mail("m1", T1)]);
    // The rotated refresh token was persisted.
    assert_eq!(
        sink.last().unwrap().keys()["oauth"]["refresh_token"],
        "rt-1"
    );
    token.assert_async().await;
    poll.assert_async().await;
}

#[tokio::test]
async fn configuration_and_snapshot_problems_are_reported() {
    let server = mockito::Server::new_async().await;
    let cases = [
        (
            json!({}),
            json!({}),
            "InvalidConfiguration",
            "set `mailbox`",
        ),
        (
            json!({"mailbox": MAILBOX, "startTime": "yesterday"}),
            json!({}),
            "InvalidConfiguration",
            "`startTime`",
        ),
        (
            mailbox(),
            json!({"lastReceivedDateTime": 12}),
            "InvalidSnapshot",
            "non-string `lastReceivedDateTime`",
        ),
    ];
    for (fields, snapshot, name, message) in cases {
        let session = app_session(&server.url(), fields, snapshot);
        let (_, events) = run(&session, "readMail", json!({})).await;
        let err = &errors(&events)[0];
        assert_eq!(err.name, name);
        assert!(err.message.contains(message), "{err:?}");
    }
}
