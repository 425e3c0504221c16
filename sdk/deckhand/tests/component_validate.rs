//! Validator behaviour on the fixtures under `tests/fixtures/components/`: real-shaped valid
//! descriptors pass with no finding at all, and each planted mistake is reported once, at the
//! exact pointer, line and column.

use std::path::{Path, PathBuf};

use deckhand::component::{
    Code, Finding, Options, Report, Severity, ValidateError, validate_bytes, validate_file,
    validate_str,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/components")
}

fn invalid(name: &str) -> PathBuf {
    fixtures().join("invalid").join(format!("{name}.json"))
}

fn validate(path: &Path) -> Report {
    match validate_file(path) {
        Ok(report) => report,
        Err(error) => panic!("{}: {error}", path.display()),
    }
}

/// The report holds exactly one finding; returns it.
fn single(report: &Report) -> &Finding {
    assert_eq!(
        report.findings.len(),
        1,
        "expected one finding, got:\n{report}"
    );
    &report.findings[0]
}

#[track_caller]
fn assert_finding(
    finding: &Finding,
    severity: Severity,
    file: &Path,
    pointer: &str,
    (line, column): (usize, usize),
    message: &str,
) {
    assert_eq!(finding.severity, severity, "{finding}");
    assert_eq!(finding.file, file, "{finding}");
    assert_eq!(finding.pointer, pointer, "{finding}");
    assert_eq!((finding.line, finding.column), (line, column), "{finding}");
    assert!(
        finding.message.contains(message),
        "message {:?} lacks {message:?}",
        finding.message
    );
}

#[track_caller]
fn assert_single_error(name: &str, pointer: &str, at: (usize, usize), message: &str) {
    let path = invalid(name);
    let report = validate(&path);
    assert!(report.has_errors());
    assert_finding(
        single(&report),
        Severity::Error,
        &path,
        pointer,
        at,
        message,
    );
}

#[test]
fn realistic_descriptors_have_no_findings() {
    for name in ["salesforce-legacy", "outlook", "java"] {
        let report = validate(&fixtures().join(name));
        assert!(report.findings.is_empty(), "{name}:\n{report}");
    }
    let report = validate(&invalid("base-valid"));
    assert!(report.findings.is_empty(), "base-valid:\n{report}");
}

#[test]
fn directory_and_file_paths_validate_the_same_descriptor() {
    let dir = fixtures().join("outlook");
    let report = validate(&dir);
    assert_eq!(report, validate(&dir.join("component.json")));
}

#[test]
fn bad_trigger_name() {
    assert_single_error(
        "bad-trigger-name",
        "/triggers/get-pets",
        (14, 17),
        r#"invalid name "get-pets""#,
    );
}

#[test]
fn unknown_view_class_is_a_warning() {
    // The list of view classes is open (newer UIs add some, e.g. TextView).
    let path = invalid("unknown-view-class");
    let report = validate(&path);
    assert!(!report.has_errors(), "{report}");
    let finding = single(&report);
    assert_finding(
        finding,
        Severity::Warning,
        &path,
        "/actions/createPet/fields/status/viewClass",
        (30, 24),
        r#"unknown view class "DropdownView"; known: TextFieldView, TextFieldWithNoteView"#,
    );
    assert_eq!(finding.code, Code::UnknownViewClass);
}

#[test]
fn missing_title() {
    assert_single_error(
        "missing-title",
        "",
        (1, 1),
        r#""title" is a required property"#,
    );
}

#[test]
fn duplicate_name_across_triggers_and_actions() {
    assert_single_error(
        "duplicate-name",
        "/actions/getPets",
        (24, 16),
        r#""getPets" is both a trigger and an action"#,
    );
}

#[test]
fn select_view_without_model() {
    assert_single_error(
        "select-without-model",
        "/actions/createPet/fields/status",
        (28, 19),
        r#"SelectView field "status" has no "model""#,
    );
}

#[test]
fn function_without_metadata_is_the_no_in_metadata_mode() {
    let report = validate(&invalid("no-metadata"));
    assert!(report.findings.is_empty(), "{report}");
}

#[test]
fn metadata_path_missing() {
    assert_single_error(
        "metadata-path-missing",
        "/triggers/getPets/metadata/out",
        (19, 16),
        r#"metadata file "./lib/schemas/pet.out.json" not found"#,
    );
}

#[test]
fn metadata_file_that_is_not_a_metadata_schema() {
    // Metadata only drives the mapping UI: its mistakes are warnings, located in the file.
    let report = validate(&invalid("metadata-not-schema"));
    let schema_file = fixtures().join("invalid/lib/schemas/not-a-schema.json");
    assert_eq!(report.findings.len(), 3, "{report}");
    assert!(!report.has_errors(), "{report}");
    let referenced = "(referenced from /actions/createPet/metadata/in)";
    assert_finding(
        &report.findings[0],
        Severity::Warning,
        &schema_file,
        "/properties/name/type",
        (4, 23),
        r#"unknown type "text""#,
    );
    assert_finding(
        &report.findings[1],
        Severity::Warning,
        &schema_file,
        "/properties/owner/$ref",
        (5, 24),
        r#"external reference "https://schemas.example.com/owner.json" is not resolved"#,
    );
    assert_finding(
        &report.findings[2],
        Severity::Warning,
        &schema_file,
        "/properties/tags/required",
        (6, 44),
        r#""required" must be true or false, not "yes""#,
    );
    let codes: Vec<Code> = report.findings.iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        [Code::UnknownType, Code::ExternalRef, Code::KeywordType]
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.message.ends_with(referenced))
    );
}

#[test]
fn metadata_file_with_bad_json() {
    let path = invalid("metadata-bad-json");
    let report = validate(&path);
    assert_finding(
        single(&report),
        Severity::Error,
        &fixtures().join("invalid/lib/schemas/broken.json"),
        "",
        (5, 5),
        "invalid JSON: expected `,` or `}` (metadata referenced from /triggers/getPets/metadata/out)",
    );
}

#[test]
fn unknown_placeholder() {
    assert_single_error(
        "unknown-placeholder",
        "/credentials/oauth2/token_uri",
        (32, 20),
        "placeholder {{env}} names neither a credential field nor a declared env var",
    );
}

#[test]
fn missing_main_file() {
    assert_single_error(
        "missing-main",
        "/actions/createPet/main",
        (26, 15),
        r#"main module "./lib/actions/create-pet.js" not found"#,
    );
}

#[test]
fn bad_json_reports_the_parser_position() {
    assert_single_error("bad-json", "", (8, 9), "invalid JSON: expected `,` or `}`");
}

#[test]
fn trigger_with_bad_type() {
    assert_single_error(
        "bad-trigger-type",
        "/triggers/getPets/type",
        (17, 15),
        r#""realtime" is not one of "polling", "webhook", "pushing""#,
    );
}

#[test]
fn human_line_format() {
    let path = invalid("duplicate-name");
    let line = single(&validate(&path)).to_string();
    assert_eq!(
        line,
        format!(
            "{}:24:16: error: /actions/getPets: \"getPets\" is both a trigger and an action: the \
             Node Sailor would run the trigger, the Java Sailor the action",
            path.display()
        )
    );
    let report = validate(&invalid("missing-title"));
    assert_eq!(
        report.to_string(),
        format!(
            "{}:1:1: error: \"title\" is a required property\n",
            invalid("missing-title").display()
        )
    );
}

#[test]
fn findings_serialize_with_stable_names() {
    let report = validate(&invalid("bad-trigger-type"));
    let json = serde_json::to_value(&report).expect("serializable");
    let finding = &json["findings"][0];
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["pointer"], "/triggers/getPets/type");
    assert_eq!(finding["line"], 17);
    assert_eq!(finding["column"], 15);
    assert_eq!(
        finding["file"],
        invalid("bad-trigger-type").to_string_lossy().as_ref()
    );
    assert!(
        finding["message"]
            .as_str()
            .is_some_and(|m| m.contains("realtime"))
    );
}

fn check(source: &str) -> Report {
    validate_str(source, Path::new("component.json"), &Options::default())
}

/// `(severity, pointer, line, column)` of every finding, for compact assertions.
fn summary(report: &Report) -> Vec<(Severity, &str, usize, usize)> {
    report
        .findings
        .iter()
        .map(|f| (f.severity, f.pointer.as_str(), f.line, f.column))
        .collect()
}

#[test]
fn file_checks_need_a_component_root() {
    let source = r#"{"title": "T", "description": "d", "credentials": {},
 "actions": {"a": {"title": "A", "main": "./lib/missing.js", "metadata": {"out": "./missing.json"}}}}"#;
    assert!(check(source).findings.is_empty(), "{}", check(source));

    let root = fixtures().join("invalid");
    let report = validate_str(
        source,
        &root.join("inline.json"),
        &Options::for_directory(&root),
    );
    assert_eq!(
        summary(&report),
        [
            (Severity::Error, "/actions/a/main", 2, 42),
            (Severity::Error, "/actions/a/metadata/out", 2, 82),
        ],
        "{report}"
    );

    let no_mains = Options {
        component_root: Some(root.clone()),
        check_main_files: false,
    };
    let report = validate_str(source, &root.join("inline.json"), &no_mains);
    assert_eq!(
        summary(&report),
        [(Severity::Error, "/actions/a/metadata/out", 2, 82)]
    );
}

#[test]
fn java_class_names_are_not_files() {
    let source = r#"{"title": "T", "description": "d", "credentials": {"verifier": "io.elastic.Verifier"},
 "actions": {"a": {"title": "A", "main": "io.elastic.actions.Create", "dynamicMetadata": "io.elastic.Meta"}}}"#;
    let root = fixtures().join("java");
    let report = validate_str(
        source,
        &root.join("component.json"),
        &Options::for_directory(&root),
    );
    assert!(report.findings.is_empty(), "{report}");
}

#[test]
fn node_main_without_extension_resolves_like_require() {
    // ./lib/actions/lookup is a folder with index.js in the Salesforce fixture.
    let root = fixtures().join("salesforce-legacy");
    let source = r#"{"title": "T", "description": "d", "credentials": {},
 "actions": {"a": {"title": "A", "main": "./lib/actions/lookup", "dynamicMetadata": true},
             "b": {"title": "B", "main": "lib/actions/query", "dynamicMetadata": true},
             "c": {"title": "C", "main": "lib/actions/nothing", "dynamicMetadata": true}}}"#;
    let report = validate_str(
        source,
        &root.join("component.json"),
        &Options::for_directory(&root),
    );
    assert_eq!(
        summary(&report),
        [(Severity::Error, "/actions/c/main", 4, 42)],
        "{report}"
    );
}

#[test]
fn select_models_in_credentials_and_multiselect() {
    let source = r#"{"title": "T", "description": "d",
 "credentials": {"fields": {"env": {"label": "Env", "viewClass": "SelectView", "model": "getEnvs"}}},
 "actions": {"a": {"title": "A", "main": "a.js", "dynamicMetadata": true,
   "fields": {"tags": {"label": "Tags", "viewClass": "MultiSelectView"},
              "ok": {"label": "Ok", "viewClass": "MultiSelectView", "model": "getTags"}}}}}"#;
    let report = check(source);
    assert_eq!(
        summary(&report),
        [
            (Severity::Error, "/credentials/fields/env/model", 2, 89),
            (Severity::Error, "/actions/a/fields/tags", 4, 23),
        ],
        "{report}"
    );
    assert!(
        report.findings[0]
            .message
            .contains("credentials have no module to call")
    );
    assert!(
        report.findings[1]
            .message
            .contains("MultiSelectView field \"tags\" has no \"model\"")
    );
}

#[test]
fn metadata_and_dynamic_metadata_together_warn_once() {
    let source = r#"{"title": "T", "description": "d", "credentials": {},
 "triggers": {"t": {"title": "T", "main": "t.js", "dynamicMetadata": true, "metadata": {"out": {}}},
              "u": {"title": "U", "main": "u.js", "dynamicMetadata": false, "metadata": {"out": {}}}}}"#;
    let report = check(source);
    assert_eq!(
        summary(&report),
        [(Severity::Warning, "/triggers/t/dynamicMetadata", 2, 70)],
        "{report}"
    );
    assert_eq!(report.findings[0].code, Code::MetadataAndDynamic);
}

#[test]
fn placeholders_accept_fields_and_env_vars_and_reject_malformed() {
    let source = r#"{"title": "T", "description": "d",
 "envVars": {"CLIENT_ID": {"required": true}},
 "credentials": {
  "fields": {"host": {"label": "Host", "viewClass": "TextFieldView"},
             "oauth": {"label": "Auth", "viewClass": "OAuthFieldView"}},
  "oauth2": {"client_id": "{{CLIENT_ID}}", "client_secret": "{{ CLIENT_SECRET }}",
             "auth_uri": "https://{{host}}/authorize", "token_uri": "https://{{host/token",
             "scopes": ["{{host}}", "{{scope}}"]}}}"#;
    let report = check(source);
    assert_eq!(
        summary(&report),
        [
            (Severity::Warning, "", 1, 1),
            (Severity::Error, "/credentials/oauth2/client_secret", 6, 61),
            (Severity::Error, "/credentials/oauth2/token_uri", 7, 69),
            (Severity::Error, "/credentials/oauth2/scopes/1", 8, 37),
        ],
        "{report}"
    );
    assert_eq!(report.findings[0].code, Code::NoFunctions);
    assert!(report.findings[1].message.contains("{{CLIENT_SECRET}}"));
    assert!(report.findings[2].message.contains("unclosed placeholder"));
    assert_eq!(report.findings[2].code, Code::PlaceholderMalformed);
    assert!(report.findings[3].message.contains("{{scope}}"));
    assert_eq!(report.findings[3].code, Code::PlaceholderUnknown);
}

#[test]
fn sensible_warnings() {
    let source = r#"{"title": "T",
 "triggers": {"t": {"title": "T", "main": "t.js", "dynamicMetadata": true,
   "fields": {"b": {"label": "B", "viewClass": "SelectView", "model": "m", "require": ["a", "zz"]},
              "a": {"label": "A", "viewClass": "TextFieldView"}}}},
 "title": "Twice"}"#;
    let report = check(source);
    assert!(!report.has_errors(), "{report}");
    // No "no credentials" warning: utility components have none.
    assert_eq!(
        summary(&report),
        [
            (Severity::Warning, "", 1, 1),
            (Severity::Warning, "/triggers/t/fields/b/require/1", 3, 93),
            (Severity::Warning, "/title", 5, 11),
        ],
        "{report}"
    );
    let messages: Vec<&str> = report.findings.iter().map(|f| f.message.as_str()).collect();
    assert!(messages[0].contains("no \"description\""));
    assert!(messages[1].contains("\"zz\" is not a field of this step"));
    assert!(messages[2].contains("duplicate key"));
    let codes: Vec<Code> = report.findings.iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        [
            Code::DescriptionMissing,
            Code::RequireUnknown,
            Code::DuplicateKey
        ]
    );
}

const ONE_ACTION: &str =
    r#""actions": {"a": {"title": "A", "main": "a.js", "dynamicMetadata": true}}"#;

#[test]
fn oauth_configuration_mismatches_warn() {
    let field_only = format!(
        r#"{{"title": "T", "description": "d", {ONE_ACTION},
 "credentials": {{"fields": {{"oauth": {{"label": "Auth", "viewClass": "OAuthFieldView"}}}}}}}}"#
    );
    let report = check(&field_only);
    assert_eq!(
        summary(&report),
        [(Severity::Warning, "/credentials/fields", 2, 28)]
    );
    assert_eq!(report.findings[0].code, Code::OAuth2Missing);
    // authClientTypes names the platform-managed OAuth app instead.
    let with_clients = format!(
        r#"{{"title": "T", "description": "d", "authClientTypes": ["oauth2"], {ONE_ACTION},
 "credentials": {{"fields": {{"oauth": {{"label": "Auth", "viewClass": "OAuthFieldView"}}}}}}}}"#
    );
    assert!(check(&with_clients).findings.is_empty());
    let block_only = format!(
        r#"{{"title": "T", "description": "d", {ONE_ACTION},
 "credentials": {{"oauth2": {{"client_id": "a", "client_secret": "b", "auth_uri": "c", "token_uri": "d"}}}}}}"#
    );
    let report = check(&block_only);
    assert_eq!(
        summary(&report),
        [(Severity::Warning, "/credentials/oauth2", 2, 28)]
    );
    assert_eq!(report.findings[0].code, Code::OAuthFieldMissing);
}

#[test]
fn inline_metadata_is_checked_against_the_metadata_dialect() {
    let source = r#"{"title": "T", "description": "d", "credentials": {},
 "actions": {"a": {"title": "A", "main": "a.js",
   "metadata": {"in": {"properties": {"x": {"type": "str"}}}, "out": {"$ref": "other.json#/x"}}}}}"#;
    let report = check(source);
    assert_eq!(
        summary(&report),
        [
            (
                Severity::Warning,
                "/actions/a/metadata/in/properties/x/type",
                3,
                53
            ),
            (Severity::Warning, "/actions/a/metadata/out/$ref", 3, 79),
        ],
        "{report}"
    );
    assert!(
        report.findings[0]
            .message
            .starts_with("invalid metadata schema: unknown type \"str\"")
    );
}

#[test]
fn non_object_roots_and_wrong_shapes_do_not_confuse_the_checks() {
    for source in [
        "[]",
        "null",
        "\"component\"",
        r#"{"title": "T", "triggers": [], "actions": {"a": 1}, "credentials": {"fields": []}}"#,
        r#"{"title": "T", "actions": {"a": {"fields": {"f": 3}, "metadata": [], "main": 7}}}"#,
    ] {
        let report = check(source);
        assert!(report.has_errors(), "{source}: {report}");
    }
    let report = check("[]");
    assert_eq!(summary(&report), [(Severity::Error, "", 1, 1)]);
    assert!(
        report.findings[0]
            .message
            .contains("is not of type \"object\"")
    );
}

#[test]
fn byte_order_mark_and_crlf_are_accepted() {
    let source = "\u{feff}{\r\n  \"title\": \"T\",\r\n  \"description\": \"d\",\r\n  \"credentials\": {},\r\n  \"actions\": {\"bad-name\": {\"title\": \"A\", \"main\": \"a.js\", \"dynamicMetadata\": true}}\r\n}\r\n";
    let report = check(source);
    assert_eq!(
        summary(&report),
        [(Severity::Error, "/actions/bad-name", 5, 27)]
    );
    let bytes = validate_bytes(source.as_bytes(), Path::new("c.json"), &Options::default());
    assert_eq!(
        summary(&bytes),
        [(Severity::Error, "/actions/bad-name", 5, 27)]
    );
}

#[test]
fn invalid_utf8_is_reported_at_its_position() {
    let mut bytes = b"{\n  \"title\": \"caf".to_vec();
    bytes.extend_from_slice(&[0xC3, 0x28]);
    bytes.extend_from_slice(b"\"\n}\n");
    let report = validate_bytes(&bytes, Path::new("component.json"), &Options::default());
    let finding = single(&report);
    assert_eq!((finding.line, finding.column), (2, 16));
    assert_eq!(
        finding.message,
        "invalid UTF-8 at byte 17: JSON text must be UTF-8"
    );
}

#[test]
fn empty_and_truncated_input() {
    let report = check("");
    let finding = single(&report);
    assert_eq!((finding.line, finding.column), (1, 1));
    assert_eq!(finding.message, "invalid JSON: EOF while parsing a value");

    let report = check("{\n  \"title\": \"T\",\n");
    let finding = single(&report);
    assert_eq!((finding.line, finding.column), (3, 1));
    assert!(
        finding
            .message
            .starts_with("invalid JSON: EOF while parsing")
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let source =
        r#"{"title": "Ünïcødé", "description": "d", "credentials": {}, "actions": {"x-y": {}}}"#;
    let report = check(source);
    let finding = report
        .findings
        .iter()
        .find(|f| f.pointer == "/actions/x-y")
        .expect("bad name reported");
    assert_eq!((finding.line, finding.column), (1, 80));
}

#[test]
fn unreadable_paths_are_errors_not_findings() {
    let missing = fixtures().join("does-not-exist");
    match validate_file(&missing) {
        Err(ValidateError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A directory without component.json.
    let dir = fixtures().join("invalid/lib");
    match validate_file(&dir) {
        Err(ValidateError::Io { path, .. }) => assert_eq!(path, dir.join("component.json")),
        other => panic!("unexpected {other:?}"),
    }
}
