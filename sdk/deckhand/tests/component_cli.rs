//! The `deckhand validate` binary: exit codes and output formats.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/components")
}

fn deckhand(args: &[&str], paths: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(args)
        .args(paths)
        .output()
        .expect("binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn valid_descriptors_exit_zero() {
    let paths = [
        fixtures().join("salesforce-legacy"),
        fixtures().join("outlook/component.json"),
        fixtures().join("java"),
    ];
    let output = deckhand(&["validate"], &paths);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "0 errors, 0 warnings in 3 paths\n");
}

#[test]
fn warnings_alone_exit_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("component.json");
    std::fs::write(&file, r#"{"title": "Only a title"}"#).expect("write");
    let output = deckhand(&["validate"], std::slice::from_ref(&file));
    assert_eq!(output.status.code(), Some(0));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with(&format!(
        "{}:1:1: warning: no \"description\"",
        file.display()
    )));
    assert!(lines[0].ends_with("[W-description-missing]"), "{out}");
    assert_eq!(lines[1], "  = fix: add a \"description\"");
    assert!(lines[2].ends_with("[W-no-functions]"), "{out}");
    assert_eq!(lines[4], "0 errors, 2 warnings in 1 path");

    // --deny-warnings makes them fail, for CI.
    let denied = deckhand(
        &["validate", "--deny-warnings"],
        std::slice::from_ref(&file),
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stdout(&denied).ends_with("0 errors, 2 warnings in 1 path; warnings are denied\n"),
        "{}",
        stdout(&denied)
    );
    let json = deckhand(
        &["validate", "--deny-warnings", "--format", "json"],
        std::slice::from_ref(&file),
    );
    assert_eq!(json.status.code(), Some(1));
    let parsed: Value = serde_json::from_slice(&json.stdout).expect("stdout is JSON");
    assert_eq!(parsed[0]["valid"], false);
    assert_eq!(parsed[0]["warnings"], 2);
}

#[test]
fn errors_exit_one_with_one_line_per_finding() {
    let bad = fixtures().join("invalid/bad-trigger-type.json");
    let output = deckhand(&["validate"], &[fixtures().join("java"), bad.clone()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stdout(&output),
        format!(
            "{}:17:15: error: /triggers/getPets/type: \"realtime\" is not one of \"polling\", \
             \"webhook\", \"pushing\" [E-trigger-type]\n  = fix: use \"polling\" or \"webhook\"\n\
             1 error, 0 warnings in 2 paths\n",
            bad.display()
        )
    );
}

#[test]
fn unreadable_paths_exit_two_but_the_rest_is_still_checked() {
    let missing = fixtures().join("no-such-component");
    let bad = fixtures().join("invalid/missing-title.json");
    let output = deckhand(&["validate"], &[missing.clone(), bad]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains(&format!("cannot read {}", missing.display())));
    let out = stdout(&output);
    assert!(
        out.contains("error: \"title\" is a required property"),
        "{out}"
    );
    assert!(
        out.ends_with("1 error, 0 warnings in 2 paths (1 could not be read)\n"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(deckhand(&["validate"], &[]).status.code(), Some(2));
    assert_eq!(deckhand(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(
        deckhand(&["validate", "--format", "xml"], &[fixtures().join("java")])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(deckhand(&["--help"], &[]).status.code(), Some(0));
}

#[test]
fn json_format() {
    let good = fixtures().join("outlook");
    let bad = fixtures().join("invalid/metadata-path-missing.json");
    let missing = fixtures().join("absent.json");
    let output = deckhand(
        &["validate", "--format", "json"],
        &[good.clone(), bad.clone(), missing.clone()],
    );
    assert_eq!(output.status.code(), Some(2));
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let files = parsed.as_array().expect("array");
    assert_eq!(files.len(), 3);

    assert_eq!(files[0]["path"], good.to_string_lossy().as_ref());
    assert_eq!(files[0]["valid"], true);
    assert_eq!(files[0]["errors"], 0);
    assert_eq!(files[0]["findings"], Value::Array(vec![]));
    assert!(files[0].get("io_error").is_none());

    assert_eq!(files[1]["valid"], false);
    assert_eq!(files[1]["errors"], 1);
    assert_eq!(files[1]["warnings"], 0);
    let first = &files[1]["findings"][0];
    let keys: Vec<&str> = first
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "severity", "file", "pointer", "line", "column", "message", "code", "fix"
        ]
    );
    assert_eq!(first["severity"], "error");
    assert_eq!(first["code"], "E-metadata-missing");
    assert_eq!(first["fix"], "create the file or fix the path");
    assert_eq!(first["pointer"], "/triggers/getPets/metadata/out");
    assert_eq!(first["line"], 19);
    assert_eq!(first["column"], 16);
    assert_eq!(first["file"], bad.to_string_lossy().as_ref());

    assert_eq!(files[2]["valid"], false);
    assert!(
        files[2]["io_error"]
            .as_str()
            .is_some_and(|e| e.contains("absent.json"))
    );
}

#[test]
fn json_format_exit_one_without_io_errors() {
    let output = deckhand(
        &["validate", "--format=json"],
        &[fixtures().join("invalid/bad-json.json")],
    );
    assert_eq!(output.status.code(), Some(1));
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(parsed[0]["findings"][0]["line"], 8);
    assert_eq!(parsed[0]["findings"][0]["column"], 9);
}

#[test]
fn library_entry_point_reports_status() {
    use deckhand::component::cli::{OutputFormat, ValidateStatus, run_validate};
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = run_validate(
        &[fixtures().join("invalid/missing-title.json")],
        OutputFormat::Human,
        &mut out,
        &mut err,
    );
    assert_eq!(status, ValidateStatus::Invalid);
    assert_eq!(status.code(), 1);
    assert!(err.is_empty());
    assert!(
        String::from_utf8_lossy(&out)
            .contains("error: \"title\" is a required property [E-title-missing]")
    );
}
