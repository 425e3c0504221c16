//! The actions against a mocked Graph (mockito): request shape, paging, error mapping and
//! throttling.

mod common;

use common::*;
use mockito::Matcher;
use serde_json::{Value, json};

fn user(n: u32) -> Value {
    json!({"id": format!("id-{n}"), "displayName": format!("User {n}"), "userPrincipalName": format!("user{n}@contoso.com")})
}

#[tokio::test]
async fn list_users_follows_next_link_and_emits_one_message_per_user() {
    let mut server = mockito::Server::new_async().await;
    let token = mock_app_token(&mut server).await;
    let next = format!("{}/v1.0/users?$top=2&$skiptoken=page2", server.url());
    let page1 = server
        .mock("GET", "/v1.0/users")
        .match_query(Matcher::AllOf(vec![
            Matcher::UrlEncoded("$top".into(), "2".into()),
            Matcher::UrlEncoded("$filter".into(), "accountEnabled eq true".into()),
            Matcher::UrlEncoded("$select".into(), "id,displayName".into()),
        ]))
        .match_header("authorization", bearer().as_str())
        .with_header("content-type", "application/json")
        .with_body(json!({"value": [user(1), user(2)], "@odata.nextLink": next}).to_string())
        .expect(1)
        .create_async()
        .await;
    let page2 = server
        .mock("GET", "/v1.0/users")
        .match_query(Matcher::UrlEncoded("$skiptoken".into(), "page2".into()))
        .match_header("authorization", bearer().as_str())
        .with_header("content-type", "application/json")
        .with_body(json!({"value": [user(3)]}).to_string())
        .expect(1)
        .create_async()
        .await;

    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(
        &session,
        "listUsers",
        // pageSize as a string, as mappers often produce it.
        json!({"filter": "accountEnabled eq true", "select": "id,displayName", "pageSize": "2"}),
    )
    .await;

    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events), [user(1), user(2), user(3)]);
    token.assert_async().await;
    page1.assert_async().await;
    page2.assert_async().await;
}

#[tokio::test]
async fn list_users_refuses_a_next_link_to_another_origin() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let _page = server
        .mock("GET", "/v1.0/users")
        .with_header("content-type", "application/json")
        .with_body(
            json!({"value": [user(1)], "@odata.nextLink": "https://evil.example/v1.0/users?$skiptoken=2"})
                .to_string(),
        )
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(&session, "listUsers", json!({})).await;
    assert_eq!(data(&events), [user(1)]);
    assert_eq!(outcome.errors, 1);
    let err = &errors(&events)[0];
    assert_eq!(err.name, "InvalidResponse");
    assert!(err.message.contains("https://evil.example"), "{err:?}");
}

#[tokio::test]
async fn list_users_rejects_a_bad_page_size_before_calling_graph() {
    let server = mockito::Server::new_async().await;
    let session = app_session(&server.url(), json!({}), json!({}));
    for bad in [json!(0), json!(1000), json!("ten"), json!(2.5)] {
        let (_, events) = run(&session, "listUsers", json!({"pageSize": bad})).await;
        let err = &errors(&events)[0];
        assert_eq!(err.name, "InvalidInput", "{bad}");
        assert!(err.message.contains("pageSize"), "{err:?}");
    }
}

#[tokio::test]
async fn get_user_encodes_the_upn_and_drops_odata_annotations() {
    let mut server = mockito::Server::new_async().await;
    let token = mock_app_token(&mut server).await;
    // A guest's UPN: `#` must be percent-encoded, or it would start a URL fragment.
    let lookup = server
        .mock("GET", "/v1.0/users/adele_fabrikam.com%23EXT%23@contoso.com")
        .match_query(Matcher::UrlEncoded("$select".into(), "id,mail".into()))
        .match_header("authorization", bearer().as_str())
        .with_header("content-type", "application/json")
        .with_body(
            json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity", "id": "id-7", "mail": "adele@fabrikam.com"})
                .to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(
        &session,
        "getUser",
        json!({"userId": "adele_fabrikam.com#EXT#@contoso.com", "select": "id,mail"}),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(
        data(&events),
        [json!({"id": "id-7", "mail": "adele@fabrikam.com"})]
    );
    token.assert_async().await;
    lookup.assert_async().await;
}

#[tokio::test]
async fn get_user_not_found_is_a_clear_error() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let _missing = server
        .mock("GET", "/v1.0/users/nobody@contoso.com")
        .with_status(404)
        .with_header("content-type", "application/json")
        .with_body(
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource 'nobody@contoso.com' does not exist."}})
                .to_string(),
        )
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(&session, "getUser", json!({"userId": "nobody@contoso.com"})).await;
    assert_eq!(outcome.errors, 1);
    assert!(data(&events).is_empty());
    let err = &errors(&events)[0];
    assert_eq!(err.name, "NotFound");
    assert_eq!(
        err.message,
        "no user has the id or userPrincipalName `nobody@contoso.com`"
    );
}

#[tokio::test]
async fn get_user_needs_a_user_id() {
    let server = mockito::Server::new_async().await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (_, events) = run(&session, "getUser", json!({})).await;
    let err = &errors(&events)[0];
    assert_eq!(err.name, "InvalidInput");
    assert!(err.message.contains("userId"), "{err:?}");
}

#[tokio::test]
async fn graph_errors_keep_their_code_message_and_request_id() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let _denied = server
        .mock("GET", "/v1.0/users")
        .with_status(403)
        .with_header("content-type", "application/json")
        .with_body(
            json!({"error": {
                "code": "Authorization_RequestDenied",
                "message": "Insufficient privileges to complete the operation.",
                "innerError": {"request-id": "req-42", "date": "2024-01-01T00:00:00"}
            }})
            .to_string(),
        )
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(&session, "listUsers", json!({})).await;
    assert_eq!(outcome.errors, 1);
    let err = &errors(&events)[0];
    assert_eq!(err.name, "Authorization_RequestDenied");
    assert_eq!(
        err.message,
        "Insufficient privileges to complete the operation."
    );
    assert!(
        err.stack
            .contains("caused by: HTTP 403 Forbidden to GET /v1.0/users (request-id req-42)"),
        "{}",
        err.stack
    );
}

#[tokio::test]
async fn errors_without_a_graph_body_name_the_status() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let _gateway = server
        .mock("GET", "/v1.0/users")
        .with_status(502)
        .with_header("content-type", "text/html")
        .with_body("<html>Bad Gateway</html>")
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (_, events) = run(&session, "listUsers", json!({})).await;
    let err = &errors(&events)[0];
    assert_eq!(err.name, "HttpError");
    assert_eq!(err.message, "Microsoft Graph answered HTTP 502 Bad Gateway");
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after_then_succeeds() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    // mockito serves the first mock until it had its expected hits, then the next one.
    let throttled = server
        .mock("GET", "/v1.0/users/id-1")
        .with_status(429)
        .with_header("retry-after", "10")
        .with_header("content-type", "application/json")
        .with_body(
            json!({"error": {"code": "TooManyRequests", "message": "Slow down."}}).to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let unavailable = server
        .mock("GET", "/v1.0/users/id-1")
        .with_status(503)
        .with_header("content-type", "application/json")
        .with_body(
            json!({"error": {"code": "ServiceNotAvailable", "message": "Later."}}).to_string(),
        )
        .expect(1)
        .create_async()
        .await;
    let ok = server
        .mock("GET", "/v1.0/users/id-1")
        .with_header("content-type", "application/json")
        .with_body(user(1).to_string())
        .expect(1)
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let started = std::time::Instant::now();
    let (outcome, events) = run(&session, "getUser", json!({"userId": "id-1"})).await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(data(&events), [user(1)]);
    // Retry-After: 10 was capped at the test's 20 ms.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    throttled.assert_async().await;
    unavailable.assert_async().await;
    ok.assert_async().await;
}

#[tokio::test]
async fn throttling_retries_are_bounded() {
    let mut server = mockito::Server::new_async().await;
    let _token = mock_app_token(&mut server).await;
    let throttled = server
        .mock("GET", "/v1.0/users")
        .with_status(429)
        .with_header("retry-after", "1")
        .with_header("content-type", "application/json")
        .with_body(
            json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}})
                .to_string(),
        )
        .expect(4) // the first attempt and 3 retries
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(&session, "listUsers", json!({})).await;
    assert_eq!(outcome.errors, 1);
    let err = &errors(&events)[0];
    assert_eq!(
        (err.name.as_str(), err.message.as_str()),
        ("TooManyRequests", "Too many requests.")
    );
    throttled.assert_async().await;
}

#[tokio::test]
async fn send_mail_posts_the_graph_message() {
    let mut server = mockito::Server::new_async().await;
    let token = mock_app_token(&mut server).await;
    let send = server
        .mock("POST", "/v1.0/users/sender@contoso.com/sendMail")
        .match_header("authorization", bearer().as_str())
        .match_header("content-type", "application/json")
        .match_body(Matcher::Json(json!({
            "message": {
                "subject": "Hello",
                "body": {"contentType": "HTML", "content": "<b>Hi</b>"},
                "toRecipients": [
                    {"emailAddress": {"address": "a@fabrikam.com"}},
                    {"emailAddress": {"address": "b@fabrikam.com"}}
                ],
                "ccRecipients": [{"emailAddress": {"address": "c@fabrikam.com"}}],
                "bccRecipients": []
            },
            "saveToSentItems": false
        })))
        .with_status(202)
        .expect(1)
        .create_async()
        .await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let (outcome, events) = run(
        &session,
        "sendMail",
        json!({
            "from": "sender@contoso.com",
            "to": ["a@fabrikam.com", "b@fabrikam.com"],
            "cc": "c@fabrikam.com",
            "subject": "Hello",
            "body": "<b>Hi</b>",
            "contentType": "html",
            "saveToSentItems": false
        }),
    )
    .await;
    assert_eq!(outcome.errors, 0, "{events:?}");
    assert_eq!(
        data(&events),
        [
            json!({"accepted": true, "from": "sender@contoso.com", "to": ["a@fabrikam.com", "b@fabrikam.com"], "subject": "Hello"})
        ]
    );
    token.assert_async().await;
    send.assert_async().await;
}

#[tokio::test]
async fn send_mail_checks_its_input() {
    let server = mockito::Server::new_async().await;
    let session = app_session(&server.url(), json!({}), json!({}));
    let cases = [
        (json!({"to": "a@b.com", "subject": "s"}), "give `from`"),
        (
            json!({"from": "u", "to": [], "subject": "s"}),
            "`to` needs at least one address",
        ),
        (
            json!({"from": "u", "to": [1], "subject": "s"}),
            "`to` must hold strings",
        ),
        (json!({"from": "u", "to": "a@b.com"}), "`subject`"),
        (
            json!({"from": "u", "to": "a@b.com", "subject": "s", "contentType": "rtf"}),
            "`contentType` must be `text` or `html`",
        ),
    ];
    for (body, expected) in cases {
        let (_, events) = run(&session, "sendMail", body.clone()).await;
        let err = &errors(&events)[0];
        assert_eq!(err.name, "InvalidInput", "{body}");
        assert!(err.message.contains(expected), "{body}: {err:?}");
    }
}
