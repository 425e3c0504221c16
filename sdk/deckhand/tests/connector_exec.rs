//! The example connector (`sdk/deckhand/examples/petstore`) run through its `exec`, `verify`,
//! `validate` and `component` commands, against mockito on loopback.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

/// The example binary, built by `cargo test` beside the test binaries (built here if not).
fn petstore() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(build_petstore).clone()
}

fn build_petstore() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join("petstore");
    // Built (or found up to date) every time: `cargo test --test …` alone does not rebuild
    // examples, and a stale binary would test old code.
    {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "deckhand", "--example", "petstore"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the example failed");
    }
    bin
}

fn read_events(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
        .collect()
}

fn credentials(dir: &tempfile::TempDir, server: &mockito::ServerGuard, oauth: Value) -> PathBuf {
    let path = dir.path().join("creds.json");
    let keys = json!({
        "apiBase": server.url(),
        "tokenUrl": format!("{}/token", server.url()),
        "clientId": "petstore-app",
        "clientSecret": "SECRET-CLIENT",
        "oauth": oauth,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&keys).unwrap()).unwrap();
    path
}

#[test]
fn exec_prints_update_keys_data_error_and_end_in_order_and_persists_the_rotation() {
    let mut server = mockito::Server::new();
    let token = server
        .mock("POST", "/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "R-OLD".into(),
        ))
        .with_header("content-type", "application/json")
        .with_body(r#"{"access_token":"A-NEW","refresh_token":"R-NEW","expires_in":3600}"#)
        .expect(1)
        .create();
    let found = server
        .mock("GET", "/pets/1")
        .match_header("authorization", "Bearer A-NEW")
        .with_body(r#"{"id":1,"name":"Rex"}"#)
        .create();
    let missing = server
        .mock("GET", "/pets/2")
        .match_header("authorization", "Bearer A-NEW")
        .with_status(404)
        .create();
    let dir = tempfile::tempdir().unwrap();
    // An expired access token: the first request refreshes.
    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "A-OLD", "refresh_token": "R-OLD", "expires_at": 1}),
    );
    let message = dir.path().join("message.json");
    std::fs::write(&message, r#"{"body": {"ids": [1, 2]}}"#).unwrap();

    let output = Command::new(petstore())
        .args(["exec", "getPets", "--credentials"])
        .arg(&creds)
        .arg("--message")
        .arg(&message)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error event means exit 1: {output:?}"
    );
    let events = read_events(&output);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["updateKeys", "data", "error", "end"], "{events:#?}");
    assert_eq!(events[0]["data"]["generation"], 1);
    assert_eq!(events[1]["data"]["body"], json!({"id": 1, "name": "Rex"}));
    assert_eq!(events[2]["data"]["message"], "pet 2 does not exist");
    token.assert();
    found.assert();
    missing.assert();

    // The rotated tokens are in the file; nothing secret was printed.
    let stored: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(stored["oauth"]["refresh_token"], "R-NEW");
    assert_eq!(stored["oauth"]["access_token"], "A-NEW");
    assert_eq!(stored["clientSecret"], "SECRET-CLIENT");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in ["A-NEW", "R-NEW", "R-OLD", "SECRET-CLIENT"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }

    // A second run uses the persisted token: no new token request.
    std::fs::write(&message, r#"{"body": {"ids": [1]}}"#).unwrap();
    let output = Command::new(petstore())
        .args(["exec", "getPets", "--credentials"])
        .arg(&creds)
        .arg("--message")
        .arg(&message)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let names: Vec<String> = read_events(&output)
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["data", "end"]);
    token.assert();
}

#[test]
fn exec_trigger_keeps_its_position_in_the_snapshot() {
    let mut server = mockito::Server::new();
    let _pets = server
        .mock("GET", "/pets")
        .match_query(mockito::Matcher::UrlEncoded("since".into(), "3".into()))
        .match_header("authorization", "Bearer A1")
        .with_body(r#"[{"id":4,"name":"a"},{"id":7,"name":"b"}]"#)
        .create();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "A1", "refresh_token": "R1"}),
    );
    let snapshot = dir.path().join("snapshot.json");
    std::fs::write(&snapshot, r#"{"lastId": 3}"#).unwrap();
    let output = Command::new(petstore())
        .args(["exec", "newPets", "--credentials"])
        .arg(&creds)
        .arg("--snapshot")
        .arg(&snapshot)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let events = read_events(&output);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data", "data", "snapshot", "end"]);
    assert_eq!(events[2]["data"], json!({"lastId": 7}));
    // The next poll continues from the stored position.
    let stored: Value = serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    assert_eq!(stored, json!({"lastId": 7}));
}

#[test]
fn exec_of_an_unknown_function_is_an_error_event() {
    let server = mockito::Server::new();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "A1", "refresh_token": "R1"}),
    );
    let output = Command::new(petstore())
        .args(["exec", "nope", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let events = read_events(&output);
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["data"]["name"], "UnknownFunction");
    assert_eq!(events[1]["event"], "end");
}

#[test]
fn exec_with_a_missing_credentials_file_is_a_usage_error() {
    let output = Command::new(petstore())
        .args([
            "exec",
            "getPets",
            "--credentials",
            "/nonexistent/creds.json",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/creds.json"), "{stderr}");
}

#[test]
fn verify_exit_codes() {
    let mut server = mockito::Server::new();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "GOOD", "refresh_token": "R1"}),
    );
    let _ok = server
        .mock("GET", "/me")
        .match_header("authorization", "Bearer GOOD")
        .create();
    let out = Command::new(petstore())
        .args(["verify", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"verified": true})
    );

    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "BAD", "refresh_token": "R1"}),
    );
    let _no = server
        .mock("GET", "/me")
        .match_header("authorization", "Bearer BAD")
        .with_status(404)
        .create();
    let out = Command::new(petstore())
        .args(["verify", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);

    // The token endpoint refuses the grant: an error, not a "no".
    let creds = credentials(&dir, &server, json!({"refresh_token": "DEAD"}));
    let _dead = server
        .mock("POST", "/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "DEAD".into(),
        ))
        .with_status(400)
        .with_header("content-type", "application/json")
        .with_body(r#"{"error":"invalid_grant"}"#)
        .create();
    let out = Command::new(petstore())
        .args(["verify", "--credentials"])
        .arg(&creds)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["data"]["name"], "ReauthRequired");
}

#[test]
fn validate_cross_checks_and_component_prints_the_descriptor() {
    let out = Command::new(petstore()).arg("validate").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(petstore()).arg("component").output().unwrap();
    let descriptor: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(descriptor["title"], "Petstore (Deckhand example)");
}

#[test]
fn run_local_processes_json_lines_rejects_bad_lines_and_persists_rotations() {
    let mut server = mockito::Server::new();
    // Single-use refresh tokens: R1 -> R2 -> R3; reusing one would fail.
    let first = server
        .mock("POST", "/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "R1".into(),
        ))
        .with_header("content-type", "application/json")
        .with_body(r#"{"access_token":"A2","refresh_token":"R2","expires_in":3600}"#)
        .expect(1)
        .create();
    let _pet = server
        .mock("GET", "/pets/1")
        .match_header("authorization", "Bearer A2")
        .with_body(r#"{"id":1,"name":"Rex"}"#)
        .create();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials(
        &dir,
        &server,
        json!({"access_token": "A1", "refresh_token": "R1", "expires_at": 1}),
    );
    let input = dir.path().join("messages.jsonl");
    std::fs::write(
        &input,
        "{\"body\":{\"ids\":[1]}}\nnot json\n\n[1,2]\n{\"ids\":[1]}\n",
    )
    .unwrap();
    let output = Command::new(petstore())
        .args(["run", "--local", "--function", "getPets", "--credentials"])
        .arg(&creds)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let events = read_events(&output);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "updateKeys",
            "data",
            "end",
            "error",
            "end",
            "error",
            "end",
            "data",
            "end"
        ],
        "{events:#?}"
    );
    assert!(
        events[3]["data"]["message"]
            .as_str()
            .unwrap()
            .starts_with("input line 2: not JSON")
    );
    assert_eq!(
        events[5]["data"]["message"],
        "input line 4: the message must be a JSON object"
    );
    first.assert();
    let stored: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(stored["oauth"]["refresh_token"], "R2");

    // A restart continues from the persisted keys: after expiry it refreshes with R2, not R1.
    let mut stored = stored;
    // Expired long ago: an expiry in the past and no record of a recent arrival.
    stored["oauth"]["expires_at"] = json!(1);
    stored["oauth"]["obtained_at"] = json!(0);
    std::fs::write(&creds, serde_json::to_vec(&stored).unwrap()).unwrap();
    let second = server
        .mock("POST", "/token")
        .match_body(mockito::Matcher::UrlEncoded(
            "refresh_token".into(),
            "R2".into(),
        ))
        .with_header("content-type", "application/json")
        .with_body(r#"{"access_token":"A2","refresh_token":"R3","expires_in":3600}"#)
        .expect(1)
        .create();
    let output = Command::new(petstore())
        .args(["run", "--local", "--function", "getPets", "--credentials"])
        .arg(&creds)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    second.assert();
    first.assert();
    let stored: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(stored["oauth"]["refresh_token"], "R3");
}
