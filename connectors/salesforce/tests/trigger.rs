//! The polling trigger `getUpdatedObjects` against mockito: the SOQL it sends, the position it
//! keeps in the snapshot, and records sharing a `LastModifiedDate` across polls.

mod common;

use common::*;
use mockito::Matcher;
use serde_json::{Value, json};

const T1: &str = "2024-03-01T10:00:00.000+0000";
const T2: &str = "2024-03-01T10:00:05.000+0000";
const T3: &str = "2024-03-01T10:00:09.000+0000";

fn soql(since: &str) -> String {
    format!(
        "SELECT Id, LastModifiedDate, Name FROM Account WHERE LastModifiedDate >= {since} \
         ORDER BY LastModifiedDate ASC"
    )
}

fn account(id: &str, at: &str) -> Value {
    record(
        "Account",
        id,
        json!({"LastModifiedDate": at, "Name": format!("Account {id}")}),
    )
}

fn page(records: Vec<Value>) -> String {
    json!({"totalSize": records.len(), "done": true, "records": records}).to_string()
}

async fn query_mock(
    server: &mut mockito::ServerGuard,
    since: &str,
    records: Vec<Value>,
) -> mockito::Mock {
    server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::UrlEncoded("q".into(), soql(since)))
        .match_header("authorization", "Bearer AT-1")
        .with_body(page(records))
        .expect(1)
        .create_async()
        .await
}

fn ids(events: &[deckhand::connector::Event]) -> Vec<String> {
    data(events)
        .iter()
        .map(|r| r["Id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn first_poll_starts_at_start_time_and_the_next_poll_at_the_stored_position() {
    let mut server = mockito::Server::new_async().await;
    let first = query_mock(
        &mut server,
        "2024-03-01T00:00:00Z",
        vec![
            account("001A", T1),
            account("001B", T2),
            account("001C", T2),
        ],
    )
    .await;
    let fields = json!({
        "sobject": "Account",
        "selectedFields": "Name",
        "startTime": "2024-03-01T00:00:00Z",
    });
    let (session, _) = step_session(&server, fields, json!({}));

    let (outcome, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(names(&events), ["data", "data", "data", "snapshot", "end"]);
    assert_eq!(ids(&events), ["001A", "001B", "001C"]);
    let position = json!({"lastModifiedDate": T2, "seenIds": ["001B", "001C"]});
    assert_eq!(snapshots(&events), std::slice::from_ref(&position));
    assert_eq!(session.snapshot(), position);
    first.assert_async().await;

    // The next poll asks from T2 (whole seconds) on: B and C come back and are skipped; D,
    // modified in the same second after the last poll, and E are new.
    let second = query_mock(
        &mut server,
        "2024-03-01T10:00:05Z",
        vec![
            account("001B", T2),
            account("001C", T2),
            account("001D", T2),
            account("001E", T3),
        ],
    )
    .await;
    let (_, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(ids(&events), ["001D", "001E"]);
    assert_eq!(
        snapshots(&events),
        [json!({"lastModifiedDate": T3, "seenIds": ["001E"]})]
    );
    second.assert_async().await;

    // Nothing new: nothing emitted, the position stays.
    let third = query_mock(
        &mut server,
        "2024-03-01T10:00:09Z",
        vec![account("001E", T3)],
    )
    .await;
    let (_, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(names(&events), ["end"]);
    third.assert_async().await;
}

/// The bug this design avoids: `maxRecords` cuts a poll in the middle of records that share
/// one `LastModifiedDate`. With a bare timestamp and `>`, record C would never be emitted;
/// with `>=`, A and B would be emitted again.
#[tokio::test]
async fn records_sharing_a_timestamp_are_neither_lost_nor_repeated_when_a_poll_is_cut() {
    let mut server = mockito::Server::new_async().await;
    let group = vec![
        account("001A", T1),
        account("001B", T1),
        account("001C", T1),
    ];
    let first = query_mock(&mut server, "1970-01-01T00:00:00Z", group.clone()).await;
    let fields = json!({"sobject": "Account", "selectedFields": "Name", "maxRecords": "2"});
    let (session, _) = step_session(&server, fields, json!({}));

    let (_, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(ids(&events), ["001A", "001B"]);
    assert_eq!(
        session.snapshot(),
        json!({"lastModifiedDate": T1, "seenIds": ["001A", "001B"]})
    );
    first.assert_async().await;

    let second = query_mock(&mut server, "2024-03-01T10:00:00Z", group).await;
    let (_, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(ids(&events), ["001C"]);
    assert_eq!(
        session.snapshot(),
        json!({"lastModifiedDate": T1, "seenIds": ["001A", "001B", "001C"]})
    );
    second.assert_async().await;
}

#[tokio::test]
async fn a_stored_snapshot_wins_over_the_start_time_and_pages_are_followed() {
    let mut server = mockito::Server::new_async().await;
    let first = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::UrlEncoded(
            "q".into(),
            soql("2024-03-01T10:00:00Z"),
        ))
        .with_body(
            json!({
                "totalSize": 3, "done": false,
                "nextRecordsUrl": format!("{DATA}/query/01gD0000000009-2"),
                "records": [account("001A", T1), account("001B", T2)],
            })
            .to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let second = server
        .mock("GET", format!("{DATA}/query/01gD0000000009-2").as_str())
        .with_body(page(vec![account("001C", T3)]))
        .expect(1)
        .create_async()
        .await;
    let fields = json!({
        "sobject": "Account",
        "selectedFields": "Id, Name",
        "startTime": "2020-01-01T00:00:00Z",
    });
    let snapshot = json!({"lastModifiedDate": T1, "seenIds": ["001A"]});
    let (session, _) = step_session(&server, fields, snapshot);

    let (outcome, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(ids(&events), ["001B", "001C"]);
    // The position is saved after every page that emitted something.
    assert_eq!(
        snapshots(&events),
        [
            json!({"lastModifiedDate": T2, "seenIds": ["001B"]}),
            json!({"lastModifiedDate": T3, "seenIds": ["001C"]}),
        ]
    );
    first.assert_async().await;
    second.assert_async().await;
}

#[tokio::test]
async fn a_failing_poll_fails_without_a_rebound_and_keeps_the_position_of_earlier_pages() {
    let mut server = mockito::Server::new_async().await;
    let _first = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::Any)
        .with_body(
            json!({
                "totalSize": 3, "done": false,
                "nextRecordsUrl": format!("{DATA}/query/01gD0000000010-1"),
                "records": [account("001A", T1)],
            })
            .to_string(),
        )
        .create_async()
        .await;
    let _second = server
        .mock("GET", format!("{DATA}/query/01gD0000000010-1").as_str())
        .with_status(503)
        .create_async()
        .await;
    let fields = json!({"sobject": "Account", "selectedFields": "Name"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (outcome, events) = run(&session, "getUpdatedObjects", json!({})).await;
    assert_eq!((outcome.errors, outcome.rebounds), (1, 0));
    assert_eq!(names(&events), ["data", "snapshot", "error", "end"]);
    assert_eq!(
        session.snapshot(),
        json!({"lastModifiedDate": T1, "seenIds": ["001A"]})
    );
}

#[tokio::test]
async fn invalid_configuration_is_reported_before_any_request() {
    let mut server = mockito::Server::new_async().await;
    let any = server
        .mock("GET", Matcher::Any)
        .expect(0)
        .create_async()
        .await;
    for (fields, field) in [
        (json!({"selectedFields": "Name"}), "`sobject`"),
        (
            json!({"sobject": "Account", "selectedFields": "Name; DROP"}),
            "`selectedFields`",
        ),
        (
            json!({"sobject": "Account", "selectedFields": "Name", "startTime": "last week"}),
            "`startTime`",
        ),
        (
            json!({"sobject": "Account", "selectedFields": "Name", "maxRecords": "0"}),
            "`maxRecords`",
        ),
    ] {
        let (session, _) = step_session(&server, fields.clone(), json!({}));
        let (_, events) = run(&session, "getUpdatedObjects", json!({})).await;
        let (name, message) = error(&events);
        assert_eq!(name, "InvalidConfiguration", "{fields}");
        assert!(message.contains(field), "{fields}: {message}");
    }
    any.assert_async().await;
}
