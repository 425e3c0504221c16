//! The `deckhand-salesforce` binary: `validate`, `exec` against the emulator, and the error
//! when the connected app is not configured.

use std::path::{Path, PathBuf};
use std::process::Output;

use deckhand_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_deckhand-salesforce");

fn events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
        .collect()
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn validate_accepts_the_embedded_component_json() {
    let output = Command::new(BINARY).arg("validate").output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("every trigger and action has a handler"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_query_prints_data_events_and_persists_the_rotation() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let app = emulator.client().clone();
    let refresh_token = emulator.issue_refresh_token(&app.id);
    let dir = tempfile::tempdir().unwrap();
    let credentials = write_json(
        dir.path(),
        "credentials.json",
        &json!({
            "prodEnv": "login",
            "loginUrl": emulator.base_url(),
            "oauth": {"refresh_token": refresh_token},
        }),
    );
    let message = write_json(
        dir.path(),
        "message.json",
        &json!({"body": {"query": "SELECT Id, Name FROM Account ORDER BY Name LIMIT 3"}}),
    );

    let output = Command::new(BINARY)
        .args(["exec", "query", "--credentials"])
        .arg(&credentials)
        .arg("--message")
        .arg(&message)
        .env("OAUTH_CLIENT_ID", &app.id)
        .env("OAUTH_CLIENT_SECRET", &app.secret)
        .env_remove("SALESFORCE_API_VERSION")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let events = events(&output);
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        names,
        ["updateKeys", "data", "data", "data", "end"],
        "{events:#?}"
    );
    assert_eq!(events[1]["data"]["body"]["Name"], "Account 0001");
    assert_eq!(events[1]["data"]["body"]["attributes"]["type"], "Account");

    // The rotated refresh token and the access token are in the file, the other keys kept.
    let stored: Value = serde_json::from_slice(&std::fs::read(&credentials).unwrap()).unwrap();
    let rotated = stored["oauth"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, refresh_token);
    assert_eq!(stored["oauth"]["instance_url"], emulator.base_url());
    assert_eq!(stored["prodEnv"], "login");
    let counters = emulator.counters();
    assert_eq!((counters.token_requests, counters.invalid_grant), (1, 0));

    // No secret was printed.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let access_token = stored["oauth"]["access_token"].as_str().unwrap();
    for secret in [refresh_token.as_str(), &rotated, access_token, &app.secret] {
        assert!(
            !printed.contains(secret),
            "a secret was printed:\n{printed}"
        );
    }
}

#[tokio::test]
async fn exec_without_the_connected_app_names_the_missing_variables() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = write_json(
        dir.path(),
        "credentials.json",
        &json!({"prodEnv": "login", "oauth": {"refresh_token": "RT"}}),
    );
    let output = Command::new(BINARY)
        .args(["exec", "query", "--credentials"])
        .arg(&credentials)
        .env_remove("OAUTH_CLIENT_ID")
        .env_remove("OAUTH_CLIENT_SECRET")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("set OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET"),
        "{stderr}"
    );
}
