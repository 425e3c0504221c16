//! The actions against mockito on loopback: the requests they send (method, versioned path,
//! URL-encoded SOQL, JSON body, bearer token), paging, emission, error mapping, rebounds, the
//! refresh on 401 and credential verification.

mod common;

use common::*;
use deckhand::connector::{Event, Verification};
use mockito::Matcher;
use serde_json::json;

/// SOQL with characters that break a query string unless it is encoded (`&`, `%`, `=`, `'`,
/// `+`): the mock only matches if it decodes back to exactly this text.
const SOQL: &str = "SELECT Id, Name FROM Account WHERE Name LIKE 'A&B%' AND Rating = 'A+'";

#[tokio::test]
async fn query_follows_next_records_url_and_emits_one_message_per_record() {
    let mut server = mockito::Server::new_async().await;
    let first = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::UrlEncoded("q".into(), SOQL.into()))
        .match_header("authorization", "Bearer AT-1")
        .match_header("accept", "application/json")
        .with_header("content-type", "application/json")
        .with_body(
            json!({
                "totalSize": 3, "done": false,
                "nextRecordsUrl": format!("{DATA}/query/01gD0000000001-2"),
                "records": [
                    record("Account", "001A", json!({"Name": "A&B one"})),
                    record("Account", "001B", json!({"Name": "A&B two"})),
                ],
            })
            .to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let second = server
        .mock("GET", format!("{DATA}/query/01gD0000000001-2").as_str())
        .match_header("authorization", "Bearer AT-1")
        .with_header("content-type", "application/json")
        .with_body(
            json!({
                "totalSize": 3, "done": true,
                "records": [record("Account", "001C", json!({"Name": "A&B three"}))],
            })
            .to_string(),
        )
        .expect(1)
        .create_async()
        .await;

    let (session, sink) = step_session(&server, json!({}), json!({}));
    let (outcome, events) = run(&session, "query", json!({"query": SOQL})).await;

    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(names(&events), ["data", "data", "data", "end"]);
    let ids: Vec<_> = data(&events).iter().map(|r| r["Id"].clone()).collect();
    assert_eq!(ids, [json!("001A"), json!("001B"), json!("001C")]);
    assert_eq!(data(&events)[0]["attributes"]["type"], "Account");
    first.assert_async().await;
    second.assert_async().await;
    assert!(sink.updates().is_empty(), "no refresh was needed");
}

#[tokio::test]
async fn query_can_emit_one_message_per_page_and_include_deleted_records() {
    let mut server = mockito::Server::new_async().await;
    let first = server
        .mock("GET", format!("{DATA}/queryAll").as_str())
        .match_query(Matcher::UrlEncoded("q".into(), SOQL.into()))
        .with_body(
            json!({
                "totalSize": 3, "done": false,
                "nextRecordsUrl": format!("{DATA}/queryAll/01gD0000000002-2"),
                "records": [record("Account", "001A", json!({})), record("Account", "001B", json!({}))],
            })
            .to_string(),
        )
        .create_async()
        .await;
    let second = server
        .mock("GET", format!("{DATA}/queryAll/01gD0000000002-2").as_str())
        .with_body(
            json!({"totalSize": 3, "done": true, "records": [record("Account", "001C", json!({}))]})
                .to_string(),
        )
        .create_async()
        .await;

    let fields = json!({"emitBehavior": "emitPage", "includeDeleted": true});
    let (session, _) = step_session(&server, fields, json!({}));
    let (outcome, events) = run(&session, "query", json!({"query": SOQL})).await;

    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(names(&events), ["data", "data", "end"]);
    let pages = data(&events);
    assert_eq!(pages[0]["totalSize"], 3);
    assert_eq!(pages[0]["done"], false);
    assert_eq!(pages[0]["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(pages[1]["done"], true);
    assert_eq!(pages[1]["records"][0]["Id"], "001C");
    assert!(pages[0].get("nextRecordsUrl").is_none());
    first.assert_async().await;
    second.assert_async().await;
}

#[tokio::test]
async fn salesforce_error_arrays_become_named_errors() {
    let mut server = mockito::Server::new_async().await;
    let _bad = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::Any)
        .with_status(400)
        .with_body(r#"[{"message":"unexpected token: 'FORM'","errorCode":"MALFORMED_QUERY"}]"#)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({}), json!({}));
    let (outcome, events) = run(
        &session,
        "query",
        json!({"query": "SELECT Id FORM Account"}),
    )
    .await;
    assert_eq!(outcome.errors, 1);
    assert_eq!(names(&events), ["error", "end"]);
    assert_eq!(
        error(&events),
        ("MALFORMED_QUERY".into(), "unexpected token: 'FORM'".into())
    );
    let Event::Error(payload) = &events[0] else {
        unreachable!()
    };
    assert!(payload.stack.contains("HTTP 400"), "{}", payload.stack);
}

#[tokio::test]
async fn a_missing_query_is_an_input_error_and_sends_nothing() {
    let mut server = mockito::Server::new_async().await;
    let any = server
        .mock("GET", Matcher::Any)
        .expect(0)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({}), json!({}));
    let (_, events) = run(&session, "query", json!({"soql": "SELECT Id FROM Account"})).await;
    assert_eq!(error(&events).0, "InvalidInput");
    any.assert_async().await;
}

#[tokio::test]
async fn a_503_before_any_output_rebounds_the_message() {
    let mut server = mockito::Server::new_async().await;
    let _busy = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::Any)
        .with_status(503)
        .with_header("retry-after", "5")
        .with_body("Service Unavailable")
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({}), json!({}));
    let (outcome, events) = run(&session, "query", json!({"query": SOQL})).await;
    assert_eq!((outcome.errors, outcome.rebounds), (0, 1), "{events:#?}");
    assert_eq!(names(&events), ["rebound", "end"]);
    let Event::Rebound { reason } = &events[0] else {
        unreachable!()
    };
    assert!(reason.starts_with("ServiceUnavailable:"), "{reason}");
}

#[tokio::test]
async fn a_503_after_records_were_emitted_is_an_error_not_a_rebound() {
    let mut server = mockito::Server::new_async().await;
    let _first = server
        .mock("GET", format!("{DATA}/query").as_str())
        .match_query(Matcher::Any)
        .with_body(
            json!({
                "totalSize": 4, "done": false,
                "nextRecordsUrl": format!("{DATA}/query/01gD0000000003-2"),
                "records": [record("Account", "001A", json!({})), record("Account", "001B", json!({}))],
            })
            .to_string(),
        )
        .create_async()
        .await;
    let _second = server
        .mock("GET", format!("{DATA}/query/01gD0000000003-2").as_str())
        .with_status(503)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({}), json!({}));
    let (outcome, events) = run(&session, "query", json!({"query": SOQL})).await;
    assert_eq!((outcome.errors, outcome.rebounds), (1, 0), "{events:#?}");
    assert_eq!(names(&events), ["data", "data", "error", "end"]);
    let (name, message) = error(&events);
    assert_eq!(name, "ServiceUnavailable");
    assert!(message.contains("2 records were emitted"), "{message}");
}

#[tokio::test]
async fn create_posts_the_body_as_json_and_emits_the_result() {
    let mut server = mockito::Server::new_async().await;
    let create = server
        .mock("POST", format!("{DATA}/sobjects/Account").as_str())
        .match_header("authorization", "Bearer AT-1")
        .match_header("content-type", "application/json")
        .match_body(Matcher::Json(
            json!({"Name": "Acme", "NumberOfEmployees": 12}),
        ))
        .with_status(201)
        .with_body(r#"{"id":"001NEW","success":true,"errors":[]}"#)
        .expect(1)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (outcome, events) = run(
        &session,
        "create",
        json!({"Name": "Acme", "NumberOfEmployees": 12}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(
        data(&events),
        [json!({"id": "001NEW", "success": true, "errors": []})]
    );
    create.assert_async().await;
}

#[tokio::test]
async fn create_reports_the_fields_of_a_validation_error() {
    let mut server = mockito::Server::new_async().await;
    let _create = server
        .mock("POST", format!("{DATA}/sobjects/Contact").as_str())
        .with_status(400)
        .with_body(
            r#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#,
        )
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({"sobject": "Contact"}), json!({}));
    let (_, events) = run(&session, "create", json!({"FirstName": "Ada"})).await;
    assert_eq!(
        error(&events),
        (
            "REQUIRED_FIELD_MISSING".into(),
            "Required fields are missing: [LastName] (fields: LastName)".into()
        )
    );
}

#[tokio::test]
async fn an_object_name_that_is_not_an_api_name_is_refused_before_any_request() {
    let mut server = mockito::Server::new_async().await;
    let any = server
        .mock("POST", Matcher::Any)
        .expect(0)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({"sobject": "../query"}), json!({}));
    let (_, events) = run(&session, "create", json!({"Name": "x"})).await;
    assert_eq!(error(&events).0, "InvalidConfiguration");
    any.assert_async().await;
}

#[tokio::test]
async fn a_429_on_create_rebounds() {
    let mut server = mockito::Server::new_async().await;
    let _limited = server
        .mock("POST", format!("{DATA}/sobjects/Account").as_str())
        .with_status(429)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (outcome, events) = run(&session, "create", json!({"Name": "x"})).await;
    assert_eq!((outcome.errors, outcome.rebounds), (0, 1), "{events:#?}");
    assert_eq!(names(&events), ["rebound", "end"]);
}

#[tokio::test]
async fn upsert_patches_by_external_id_with_the_value_in_the_path_not_the_body() {
    let mut server = mockito::Server::new_async().await;
    let upsert = server
        .mock(
            "PATCH",
            format!("{DATA}/sobjects/Account/External_Id__c/EXT%201%2F2").as_str(),
        )
        .match_header("authorization", "Bearer AT-1")
        .match_body(Matcher::Json(json!({"Name": "Acme"})))
        .with_status(201)
        .with_body(r#"{"id":"001NEW","success":true,"errors":[],"created":true}"#)
        .expect(1)
        .create_async()
        .await;
    let fields = json!({"sobject": "Account", "externalIdField": "External_Id__c"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (outcome, events) = run(
        &session,
        "upsert",
        json!({"External_Id__c": "EXT 1/2", "Name": "Acme"}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(data(&events)[0]["created"], true);
    assert_eq!(data(&events)[0]["id"], "001NEW");
    upsert.assert_async().await;
}

#[tokio::test]
async fn an_update_answered_with_204_looks_up_the_id() {
    let mut server = mockito::Server::new_async().await;
    let upsert = server
        .mock(
            "PATCH",
            format!("{DATA}/sobjects/Account/External_Id__c/E-7").as_str(),
        )
        .with_status(204)
        .expect(1)
        .create_async()
        .await;
    let lookup = server
        .mock(
            "GET",
            format!("{DATA}/sobjects/Account/External_Id__c/E-7").as_str(),
        )
        .match_query(Matcher::UrlEncoded("fields".into(), "Id".into()))
        .with_body(json!(record("Account", "001OLD", json!({}))).to_string())
        .expect(1)
        .create_async()
        .await;
    let fields = json!({"sobject": "Account", "externalIdField": "External_Id__c"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (outcome, events) = run(
        &session,
        "upsert",
        json!({"external_id__c": "E-7", "Name": "B"}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    assert_eq!(
        data(&events),
        [json!({"id": "001OLD", "created": false, "success": true, "errors": []})]
    );
    upsert.assert_async().await;
    lookup.assert_async().await;
}

#[tokio::test]
async fn upsert_by_id_needs_no_lookup_and_a_missing_key_is_an_input_error() {
    let mut server = mockito::Server::new_async().await;
    let update = server
        .mock("PATCH", format!("{DATA}/sobjects/Account/Id/001X").as_str())
        .match_body(Matcher::Json(json!({"Name": "B"})))
        .with_status(204)
        .expect(1)
        .create_async()
        .await;
    let fields = json!({"sobject": "Account", "externalIdField": "Id"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (_, events) = run(&session, "upsert", json!({"Id": "001X", "Name": "B"})).await;
    assert_eq!(data(&events)[0]["id"], "001X");
    update.assert_async().await;

    let (_, events) = run(&session, "upsert", json!({"Name": "B"})).await;
    let (name, message) = error(&events);
    assert_eq!(name, "InvalidInput");
    assert!(message.contains("`Id`"), "{message}");
}

#[tokio::test]
async fn lookup_by_id_or_by_field_with_selected_fields() {
    let mut server = mockito::Server::new_async().await;
    let by_id = server
        .mock("GET", format!("{DATA}/sobjects/Account/001A").as_str())
        .match_header("authorization", "Bearer AT-1")
        .with_body(record("Account", "001A", json!({"Name": "A"})).to_string())
        .expect(1)
        .create_async()
        .await;
    let by_field = server
        .mock(
            "GET",
            format!("{DATA}/sobjects/Contact/Email__c/ada@example.test").as_str(),
        )
        .match_query(Matcher::UrlEncoded("fields".into(), "Id,Name".into()))
        .with_body(record("Contact", "003A", json!({"Name": "Ada"})).to_string())
        .expect(1)
        .create_async()
        .await;

    let (session, _) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (_, events) = run(&session, "lookup", json!({"value": "001A"})).await;
    assert_eq!(data(&events)[0]["Name"], "A");

    let fields = json!({"sobject": "Contact", "lookupField": "Email__c", "fields": "Id, Name"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (_, events) = run(&session, "lookup", json!({"value": "ada@example.test"})).await;
    assert_eq!(data(&events)[0]["Id"], "003A");
    by_id.assert_async().await;
    by_field.assert_async().await;
}

#[tokio::test]
async fn lookup_not_found_is_an_error_or_an_empty_message() {
    let mut server = mockito::Server::new_async().await;
    let _missing = server
        .mock("GET", format!("{DATA}/sobjects/Account/001NOPE").as_str())
        .with_status(404)
        .with_body(
            r#"[{"errorCode":"NOT_FOUND","message":"The requested resource does not exist"}]"#,
        )
        .expect(2)
        .create_async()
        .await;

    let (session, _) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (outcome, events) = run(&session, "lookup", json!({"value": "001NOPE"})).await;
    assert_eq!((outcome.errors, outcome.rebounds), (1, 0));
    assert_eq!(
        error(&events),
        (
            "NOT_FOUND".into(),
            "no Account record has Id = `001NOPE`".into()
        )
    );

    let fields = json!({"sobject": "Account", "allowNotFound": true});
    let (session, _) = step_session(&server, fields, json!({}));
    let (outcome, events) = run(&session, "lookup", json!({"value": "001NOPE"})).await;
    assert_eq!(outcome.errors, 0);
    assert_eq!(data(&events), [json!({})]);
}

#[tokio::test]
async fn lookup_with_several_matches_fails_with_multiple_choices() {
    let mut server = mockito::Server::new_async().await;
    let _several = server
        .mock("GET", format!("{DATA}/sobjects/Account/Name/Acme").as_str())
        .with_status(300)
        .with_body(format!(
            r#"["{DATA}/sobjects/Account/001A","{DATA}/sobjects/Account/001B"]"#
        ))
        .create_async()
        .await;
    let fields = json!({"sobject": "Account", "lookupField": "Name"});
    let (session, _) = step_session(&server, fields, json!({}));
    let (_, events) = run(&session, "lookup", json!({"value": "Acme"})).await;
    let (name, message) = error(&events);
    assert_eq!(name, "MULTIPLE_CHOICES");
    assert!(message.starts_with("2 records match"), "{message}");
}

/// `INVALID_SESSION_ID` → one refresh (client id and secret in the form body, as Salesforce
/// wants), the request sent again with the new token, the rotation persisted; the next
/// message uses the new token without another refresh.
#[tokio::test]
async fn an_expired_session_is_refreshed_once_and_the_request_retried() {
    let mut server = mockito::Server::new_async().await;
    let expired = server
        .mock("GET", format!("{DATA}/sobjects/Account/001A").as_str())
        .match_header("authorization", "Bearer AT-1")
        .with_status(401)
        .with_body(r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#)
        .expect(1)
        .create_async()
        .await;
    let token = server
        .mock("POST", "/services/oauth2/token")
        .match_body(Matcher::AllOf(vec![
            Matcher::UrlEncoded("grant_type".into(), "refresh_token".into()),
            Matcher::UrlEncoded("refresh_token".into(), "RT-1".into()),
            Matcher::UrlEncoded("client_id".into(), CLIENT_ID.into()),
            Matcher::UrlEncoded("client_secret".into(), CLIENT_SECRET.into()),
        ]))
        .with_header("content-type", "application/json")
        .with_body(
            json!({
                "access_token": "AT-2", "refresh_token": "RT-2",
                "instance_url": server.url(), "token_type": "Bearer",
                "issued_at": "1700000000000", "signature": "sig",
            })
            .to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let fresh = server
        .mock(
            "GET",
            Matcher::Regex(format!("^{DATA}/sobjects/Account/001[AB]$")),
        )
        .match_header("authorization", "Bearer AT-2")
        .with_body(record("Account", "001A", json!({})).to_string())
        .expect(2)
        .create_async()
        .await;

    let (session, sink) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (outcome, events) = run(&session, "lookup", json!({"value": "001A"})).await;
    assert_eq!(outcome.errors, 0, "{events:#?}");
    let (outcome, _) = run(&session, "lookup", json!({"value": "001B"})).await;
    assert_eq!(outcome.errors, 0);

    expired.assert_async().await;
    token.assert_async().await;
    fresh.assert_async().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].generation, 1);
    assert_eq!(updates[0].keys()["oauth"]["refresh_token"], "RT-2");
    assert_eq!(
        updates[0].keys()["prodEnv"],
        "login",
        "the other keys are kept"
    );
}

#[tokio::test]
async fn a_second_401_after_the_refresh_is_an_error_not_a_loop() {
    let mut server = mockito::Server::new_async().await;
    let rejected = server
        .mock("GET", format!("{DATA}/sobjects/Account/001A").as_str())
        .with_status(401)
        .with_body(r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#)
        .expect(2)
        .create_async()
        .await;
    let token = server
        .mock("POST", "/services/oauth2/token")
        .with_body(json!({"access_token": "AT-2", "instance_url": server.url()}).to_string())
        .expect(1)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({"sobject": "Account"}), json!({}));
    let (_, events) = run(&session, "lookup", json!({"value": "001A"})).await;
    let (name, message) = error(&events);
    assert_eq!(name, "AuthError");
    assert!(message.contains("HTTP 401 again"), "{message}");
    rejected.assert_async().await;
    token.assert_async().await;
}

#[tokio::test]
async fn verify_credentials_calls_the_versioned_api_root() {
    let mut server = mockito::Server::new_async().await;
    let root = server
        .mock("GET", DATA)
        .match_header("authorization", "Bearer AT-1")
        .with_body(r#"{"sobjects":"/services/data/v60.0/sobjects"}"#)
        .expect(1)
        .create_async()
        .await;
    let (session, _) = step_session(&server, json!({}), json!({}));
    assert_eq!(session.verify().await.unwrap(), Verification::Verified);
    root.assert_async().await;
}

#[tokio::test]
async fn a_refused_refresh_token_is_not_verified_and_no_secret_is_shown() {
    let mut server = mockito::Server::new_async().await;
    let token = server
        .mock("POST", "/services/oauth2/token")
        .with_status(400)
        .with_body(
            r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        )
        .expect(1)
        .create_async()
        .await;
    // Only a refresh token: the first request needs a token first.
    let keys = json!({
        "prodEnv": "login",
        "loginUrl": server.url(),
        "oauth": {"refresh_token": "RT-SECRET-VALUE"},
    });
    let (session, _) = step_session_with_keys(keys, json!({}), json!({}));
    let Verification::NotVerified { reason } = session.verify().await.unwrap() else {
        panic!("verified with a refused refresh token")
    };
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(!reason.contains("RT-SECRET-VALUE") && !reason.contains(CLIENT_SECRET));
    token.assert_async().await;

    // The step fails the same way, without asking the token endpoint again.
    let (_, events) = run(
        &session,
        "query",
        json!({"query": "SELECT Id FROM Account"}),
    )
    .await;
    assert_eq!(error(&events).0, "ReauthRequired");
    token.assert_async().await;
}
