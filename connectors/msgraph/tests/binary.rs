//! The `deckhand-msgraph` binary: `validate`, `verify`, `exec` and `run --local` against the
//! emulator (which runs in this test process; the binary reaches it over loopback).

mod common;

use std::path::Path;
use std::process::Output;

use common::{app_keys, delegated_keys};
use deckhand::component::{Options, validate_str};
use deckhand_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_deckhand-msgraph");

async fn msgraph(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("LOG_LEVEL", "warn")
        .env_remove("MSGRAPH_CLIENT_ID")
        .env_remove("MSGRAPH_CLIENT_SECRET")
        .output()
        .await
        .expect("the binary runs")
}

fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn count(events: &[Value], event: &str) -> usize {
    events.iter().filter(|e| e["event"] == event).count()
}

fn write_json(path: &Path, value: &Value) -> String {
    std::fs::write(path, value.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn the_descriptor_has_no_errors_and_no_warnings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("component.json")).unwrap();
    let options = Options {
        component_root: Some(root.to_owned()),
        check_main_files: true,
    };
    let report = validate_str(&source, &root.join("component.json"), &options);
    assert!(report.findings.is_empty(), "{report}");
}

#[tokio::test]
async fn validate_exits_0() {
    let output = msgraph(&["validate"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("every trigger and action has a handler"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_list_users_prints_one_data_event_per_user() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let client = emulator.client();
    let dir = tempfile::tempdir().unwrap();
    let keys = app_keys(
        emulator.base_url(),
        &emulator.config().tenant_id,
        &client.id,
        &client.secret,
    );
    let credentials = write_json(&dir.path().join("credentials.json"), &keys);

    let output = msgraph(&["exec", "listUsers", "--credentials", &credentials]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = events(&output);
    assert_eq!(
        count(&events, "data"),
        emulator.config().seed_users,
        "{events:?}"
    );
    assert_eq!(events.last().unwrap()["event"], "end");
    // The app-only token went to the credentials file, so the next exec reuses it.
    let output = msgraph(&["exec", "listUsers", "--credentials", &credentials]).await;
    assert!(output.status.success());
    assert_eq!(emulator.counters().token_requests, 1);

    // A failing function: an error event, exit status 1.
    let message = write_json(
        &dir.path().join("message.json"),
        &serde_json::json!({"userId": "nobody@deckhand.test"}),
    );
    let output = msgraph(&[
        "exec",
        "getUser",
        "--credentials",
        &credentials,
        "--message",
        &message,
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let events = self::events(&output);
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["data"]["name"], "NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_run_local_with_a_delegated_credential() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let client = emulator.client();
    let refresh_token = emulator.issue_refresh_token(&client.id);
    let dir = tempfile::tempdir().unwrap();
    let keys = delegated_keys(
        emulator.base_url(),
        &emulator.config().tenant_id,
        &client.id,
        &client.secret,
        &refresh_token,
    );
    let credentials = write_json(&dir.path().join("credentials.json"), &keys);

    let output = msgraph(&["verify", "--credentials", &credentials]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(r#"{"verified":true}"#));

    let input = dir.path().join("messages.jsonl");
    std::fs::write(&input, "{}\n{}\n").unwrap();
    let output = msgraph(&[
        "run",
        "--local",
        "--function",
        "readMail",
        "--credentials",
        &credentials,
        "--input",
        &input.to_string_lossy(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = events(&output);
    // The first poll emits the signed-in user's mail; the second finds nothing new.
    assert_eq!(
        count(&events, "data"),
        emulator.config().seed_messages_per_user
    );
    assert_eq!(count(&events, "snapshot"), 1);
    assert_eq!(count(&events, "end"), 2);
    assert_eq!(emulator.counters().invalid_grant, 0);
}
