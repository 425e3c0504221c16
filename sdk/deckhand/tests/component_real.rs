//! The validator on thirteen real elastic.io / Open Integration Hub components that run on
//! the platform today, read from the shared corpus `../shared/real-descriptors/` (beside the
//! workspace, or in any directory above it; `DECKHAND_REAL_DESCRIPTORS` overrides). Each must
//! get exactly the verdict of that folder's README: the real mistakes, and nothing else.
//!
//! The corpus is test input and is never copied into this repository. Without it this test
//! fails and says where it looked.

use std::path::{Path, PathBuf};
use std::process::Command;

use deckhand::component::{Code, Report, validate_file};
use serde_json::Value;

fn corpus() -> PathBuf {
    if let Some(dir) = std::env::var_os("DECKHAND_REAL_DESCRIPTORS") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("README.md").is_file(),
            "DECKHAND_REAL_DESCRIPTORS={} holds no real-descriptor corpus (no README.md)",
            dir.display()
        );
        return dir;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the deckhand crate lives in the workspace");
    let found = workspace
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/real-descriptors"))
        .find(|candidate| candidate.join("README.md").is_file());
    match found {
        Some(dir) => dir,
        None => panic!(
            "the real-descriptor corpus is missing: expected shared/real-descriptors/ (with its \
             README.md) beside the workspace {} or in a directory above it; put a copy of \
             shared/ there or set DECKHAND_REAL_DESCRIPTORS",
            workspace.display()
        ),
    }
}

/// `(code, file relative to the component, pointer)` of every finding, in report order.
fn findings(component: &str) -> (Report, Vec<(Code, String, String)>) {
    let dir = corpus().join(component);
    let report = validate_file(&dir).unwrap_or_else(|e| panic!("{component}: {e}"));
    let summary = report
        .findings
        .iter()
        .map(|f| {
            let file = f.file.strip_prefix(&dir).unwrap_or(&f.file);
            (f.code, file.display().to_string(), f.pointer.clone())
        })
        .collect();
    (report, summary)
}

fn expect(component: &str, expected: &[(Code, &str, &str)]) {
    let (report, found) = findings(component);
    let expected: Vec<(Code, String, String)> = expected
        .iter()
        .map(|(code, file, pointer)| (*code, (*file).to_owned(), (*pointer).to_owned()))
        .collect();
    assert_eq!(found, expected, "{component}:\n{}", report.grouped());
}

#[test]
fn typescript_mains_are_built_by_tsc() {
    // aws-s3: main ./lib/x.js next to x.ts; no error for the .js not yet built.
    expect("aws-s3-component", &[]);
}

#[test]
fn sftp_has_one_real_finding_and_no_main_errors() {
    // TypeScript in src/; the upsertFile out-metadata nests type/properties inside
    // properties: one finding, not a cascade.
    expect(
        "sftp-component",
        &[(
            Code::NestedSchema,
            "component.json",
            "/actions/upsertFile/metadata/out/properties",
        )],
    );
}

#[test]
fn functions_without_metadata_are_the_no_in_metadata_mode() {
    expect("postgresql-component", &[]);
}

#[test]
fn utility_components_get_no_noise() {
    // No credentials is normal for a utility; the splitter is the docs' no-metadata example.
    for component in ["splitter-component", "code-component", "xml-component"] {
        expect(component, &[]);
    }
}

#[test]
fn missing_metadata_files_are_the_only_errors() {
    let missing = |direction: &str, trigger: &str| {
        (
            Code::MetadataMissing,
            "component.json",
            format!("/triggers/{trigger}/metadata/{direction}"),
        )
    };
    let expected: Vec<(Code, &str, String)> =
        ["getTicketsPolling", "getChancesPolling", "getSalesPolling"]
            .iter()
            .flat_map(|trigger| [missing("out", trigger), missing("in", trigger)])
            .collect();
    let expected: Vec<(Code, &str, &str)> = expected
        .iter()
        .map(|(code, file, pointer)| (*code, *file, pointer.as_str()))
        .collect();
    expect("wicecrm-adapter", &expected);
}

#[test]
fn the_petstore_tutorial_is_valid() {
    // Its schemas use "type": "numeric", which draft-03 allows.
    expect("petstore-component-nodejs", &[]);
}

#[test]
fn self_labelled_views_need_no_label() {
    // CSVReadView/CSVWriteView, WebhookAuthView, HTTPAuthView (which is not OAuth either).
    for component in ["csv-component", "webhook-component", "odata-component"] {
        expect(component, &[]);
    }
}

#[test]
fn java_components_name_classes() {
    expect("jdbc-component", &[]);
}

#[test]
fn ms_office_mistakes_are_reported_and_date_is_accepted() {
    let schemas = "lib/schemas";
    let check_events = format!("{schemas}/checkEvents.out.json");
    let create_in = format!("{schemas}/createEvent.in.json");
    let create_out = format!("{schemas}/createEvent.out.json");
    let messages = format!("{schemas}/getMessages.out.json");
    let nested = "/items/properties/properties";
    let expected = [
        (
            Code::NestedSchema,
            &check_events,
            "/items/properties".to_owned(),
        ),
        (
            Code::UnknownType,
            &check_events,
            format!("{nested}/body/properties/contentType/type"),
        ),
        (
            Code::NotASchema,
            &check_events,
            format!("{nested}/attendees/items/properties/type"),
        ),
        (
            Code::NotASchema,
            &check_events,
            format!("{nested}/organizer/properties/type"),
        ),
        (
            Code::UnknownType,
            &create_in,
            "/properties/body/properties/contentType/type".to_owned(),
        ),
        (
            Code::NotASchema,
            &create_in,
            "/properties/attendees/items/properties/type".to_owned(),
        ),
        (
            Code::UnknownType,
            &create_out,
            "/properties/body/properties/contentType/type".to_owned(),
        ),
        (
            Code::NotASchema,
            &create_out,
            "/properties/attendees/items/properties/type".to_owned(),
        ),
        (
            Code::NotASchema,
            &create_out,
            "/properties/organizer/properties/type".to_owned(),
        ),
        (
            Code::NotASchema,
            &messages,
            "/properties/value/items/properties/hasAttachments".to_owned(),
        ),
    ];
    let expected: Vec<(Code, &str, &str)> = expected
        .iter()
        .map(|(code, file, pointer)| (*code, file.as_str(), pointer.as_str()))
        .collect();
    expect("ms-office-adapter", &expected);
    let (report, _) = findings("ms-office-adapter");
    assert!(!report.has_errors(), "{}", report.grouped());
    // "type": "date" (checkEvents.in.json) is a custom type, accepted.
    assert!(
        report.findings.iter().all(|f| !f.message.contains("date")),
        "{}",
        report.grouped()
    );
    assert!(
        report
            .findings
            .iter()
            .filter(|f| f.code == Code::UnknownType)
            .all(|f| f.message.contains("\"HTML\""))
    );
}

#[test]
fn the_command_line_agrees() {
    let dir = corpus();
    let mut components: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus readable")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.join("component.json").is_file())
        .collect();
    components.sort();
    assert_eq!(components.len(), 13, "{}", dir.display());
    let output = Command::new(env!("CARGO_BIN_EXE_deckhand"))
        .args(["validate", "--format", "json"])
        .args(&components)
        .output()
        .expect("binary runs");
    // wicecrm-adapter's missing metadata files are real errors.
    assert_eq!(output.status.code(), Some(1));
    let results: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for result in results.as_array().expect("array") {
        let path = result["path"].as_str().expect("path");
        let expected_errors = if path.ends_with("wicecrm-adapter") {
            6
        } else {
            0
        };
        assert_eq!(result["errors"], expected_errors, "{path}");
        for finding in result["findings"].as_array().expect("findings") {
            let code = finding["code"].as_str().expect("code");
            assert!(
                code.starts_with("E-") || code.starts_with("W-"),
                "{finding}"
            );
            assert!(finding["fix"].as_str().is_some_and(|fix| !fix.is_empty()));
        }
    }
}
