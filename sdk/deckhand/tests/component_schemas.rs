//! The schemas in `component-schemas/` against their examples in
//! `component-schemas/examples/<schema>/{valid,invalid}/`.
//!
//! Every invalid example is listed below with the pointers it must fail at, so an example that
//! fails for the wrong reason (or a new example without an expectation) fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use deckhand::component::{Options, Schema, validate_str};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../component-schemas")
}

fn example_dir(schema: Schema) -> PathBuf {
    let name = schema
        .file_name()
        .strip_suffix(".schema.json")
        .unwrap_or_default();
    schemas_dir().join("examples").join(name)
}

fn examples(dir: &Path) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).expect("readable");
            let value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
                .to_owned();
            found.insert(name, value);
        }
    }
    found
}

/// Invalid examples and the pointers each must be rejected at.
fn expected_failures(schema: Schema) -> &'static [(&'static str, &'static [&'static str])] {
    match schema {
        Schema::Component => &[
            ("bad-auth-client-type.json", &["/authClientTypes/1"]),
            ("bad-function-name.json", &["/triggers/get-pets"]),
            ("bad-trigger-type.json", &["/triggers/t/type"]),
            ("field-without-label.json", &["/credentials/fields/key"]),
            ("metadata-number.json", &["/actions/a/metadata/in"]),
            ("no-title.json", &[""]),
            ("oauth2-without-token-uri.json", &["/credentials/oauth2"]),
        ],
        Schema::Metadata => &[
            ("external-ref.json", &["/properties/owner/$ref"]),
            ("not-an-object.json", &[""]),
            ("properties-array.json", &["/properties"]),
            ("required-string.json", &["/properties/id/required"]),
            ("unknown-type.json", &["/properties/when/type"]),
        ],
        Schema::Message => &[
            ("attachment-without-url.json", &["/attachments/a.txt"]),
            ("body-array.json", &["/body"]),
            ("negative-size.json", &["/attachments/a.txt/size"]),
            ("no-body.json", &[""]),
        ],
        Schema::ErrorEnvelope => &[("error-not-string.json", &[""]), ("neither.json", &[""])],
        Schema::UpdateKeys => &[
            ("generation-fraction.json", &["/generation"]),
            ("generation-zero.json", &["/generation"]),
            ("keys-not-object.json", &["/keys"]),
            ("missing-account.json", &[""]),
            ("unknown-member.json", &[""]),
        ],
    }
}

#[test]
fn valid_examples_pass() {
    for schema in Schema::ALL {
        let valid = examples(&example_dir(schema).join("valid"));
        assert!(
            valid.len() >= 2,
            "{}: too few valid examples",
            schema.file_name()
        );
        for (name, value) in &valid {
            let violations = schema.violations(value);
            assert!(
                violations.is_empty(),
                "{}/valid/{name}: {violations:?}",
                schema.file_name()
            );
        }
    }
}

#[test]
fn invalid_examples_fail_where_expected() {
    for schema in Schema::ALL {
        let invalid = examples(&example_dir(schema).join("invalid"));
        let expected: BTreeMap<&str, &[&str]> = expected_failures(schema).iter().copied().collect();
        assert_eq!(
            invalid.keys().map(String::as_str).collect::<Vec<_>>(),
            expected.keys().copied().collect::<Vec<_>>(),
            "{}: examples and expectations differ",
            schema.file_name()
        );
        for (name, value) in &invalid {
            let mut pointers: Vec<String> = schema
                .violations(value)
                .into_iter()
                .map(|v| v.pointer)
                .collect();
            pointers.dedup();
            assert_eq!(
                pointers,
                expected[name.as_str()],
                "{}/invalid/{name}",
                schema.file_name()
            );
        }
    }
}

#[test]
fn valid_component_examples_pass_the_whole_validator() {
    for (name, value) in examples(&example_dir(Schema::Component).join("valid")) {
        let text = serde_json::to_string_pretty(&value).expect("serializes");
        let report = validate_str(&text, Path::new(&name), &Options::default());
        assert!(!report.has_errors(), "{name}:\n{report}");
    }
}

#[test]
fn schema_files_are_draft_2020_12_schemas_matching_the_embedded_copies() {
    for schema in Schema::ALL {
        let path = schemas_dir().join(schema.file_name());
        let on_disk = std::fs::read_to_string(&path).expect("schema file readable");
        assert_eq!(on_disk, schema.text(), "{}", path.display());
        let value: Value = serde_json::from_str(&on_disk).expect("schema is JSON");
        assert_eq!(
            value["$schema"],
            "https://json-schema.org/draft/2020-12/schema",
            "{}",
            schema.file_name()
        );
        if let Err(error) = jsonschema::meta::validate(&value) {
            panic!("{} is not a valid schema: {error}", schema.file_name());
        }
    }
}
