//! Secrets never appear in `Debug` output, error messages or trace output.

mod auth_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use auth_support::*;
use deckhand::auth::{AuthError, MemorySink, Strategy};
use deckhand::credentials::Credentials;
use serde_json::json;

const SECRETS: [&str; 5] = [
    "ACCESS-0-SECRET",
    "REFRESH-0-SECRET",
    "ACCESS-1-SECRET",
    "REFRESH-1-SECRET",
    CLIENT_SECRET,
];

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} leaks {secret}:\n{text}");
    }
}

// current_thread: the subscriber set for this thread also sees the spawned refresh task.
#[tokio::test(flavor = "current_thread")]
async fn secrets_are_absent_from_debug_errors_and_trace_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut server = mockito::Server::new_async().await;
    let _t = refresh_mock(
        &mut server,
        "REFRESH-0-SECRET",
        token_body(
            "ACCESS-1-SECRET",
            Some("REFRESH-1-SECRET"),
            Some(json!(3600)),
        ),
    )
    .await;
    let _stale = api_mock(&mut server, "ACCESS-0-SECRET", 401).await;
    let _fresh = api_mock(&mut server, "ACCESS-1-SECRET", 200).await;
    let _bad = server
        .mock("POST", "/oauth2/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "REFRESH-1-SECRET".into(),
        ))
        .with_status(400)
        .with_header("content-type", "application/json")
        .with_body(r#"{"error":"invalid_grant"}"#)
        .create_async()
        .await;
    let sink = MemorySink::new();
    let manager = manager(
        &server,
        refresh_keys(Some("ACCESS-0-SECRET"), "REFRESH-0-SECRET"),
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
    let err = manager.force_refresh().await.unwrap_err();
    assert!(matches!(err, AuthError::ReauthRequired { .. }));

    let debug_outputs = [
        format!("{manager:?}"),
        format!("{:?}", manager.credentials()),
        format!("{:?}", manager.credentials().token()),
        format!("{:?}", manager.endpoint()),
        format!("{:?}", sink.updates()),
        format!("{:?}", manager.authorization().await),
        format!("{err:?} {err}"),
    ];
    for (i, text) in debug_outputs.iter().enumerate() {
        assert_no_secret(text, &format!("debug output #{i}"));
    }
    let trace = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        trace.contains("access token refreshed"),
        "the refresh was traced:\n{trace}"
    );
    assert!(trace.contains("reason=rejected_401"), "{trace}");
    assert!(trace.contains("generation=1"), "{trace}");
    assert_no_secret(&trace, "trace output");

    // The keys themselves do carry the secrets, for persistence.
    let keys = sink.last().unwrap().keys();
    assert_eq!(keys["oauth"]["refresh_token"], "REFRESH-1-SECRET");
}

#[test]
fn credentials_debug_hides_every_field_value() {
    let creds = Credentials::from_keys(json!({
        "clientSecret": CLIENT_SECRET,
        "oauth": {"access_token": "ACCESS-0-SECRET", "refresh_token": "REFRESH-0-SECRET",
                  "signature": "ACCESS-1-SECRET"}
    }))
    .unwrap();
    assert_no_secret(&format!("{creds:?} {:#?}", creds.token()), "credentials");
}
