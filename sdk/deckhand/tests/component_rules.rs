//! One small fixture per validator rule (every [`Code`] fires exactly where expected), the
//! false alarms the validator must not raise, and bad input: FIFOs, devices, paths leaving the
//! component directory, oversized files and huge values.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use deckhand::component::{Code, Report, Severity, ValidateError, validate_file};
use tempfile::TempDir;

/// A component directory holding `component.json` and the given files (a `/` in a name
/// creates folders).
fn component(descriptor: &str, files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "component.json", descriptor);
    for (name, content) in files {
        write(dir.path(), name, content);
    }
    dir
}

fn write(root: &Path, name: &str, content: &str) {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

/// Validates a directory on another thread, failing instead of hanging.
fn validate_in_time(path: &Path) -> Result<Report, ValidateError> {
    let (send, receive) = mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = send.send(validate_file(&path));
    });
    receive
        .recv_timeout(Duration::from_secs(20))
        .expect("the validator returned within 20 s")
}

fn validate(dir: &TempDir) -> Report {
    validate_in_time(dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// `(code, pointer)` of every finding.
fn codes(report: &Report) -> Vec<(Code, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.code, f.pointer.clone()))
        .collect()
}

/// A valid Node component around `actions` (JSON members), with `lib/a.js` present.
fn with_actions(actions: &str) -> String {
    format!(r#"{{"title": "T", "description": "d", "actions": {{{actions}}}}}"#)
}

const ACTION_A: &str = r#""a": {"title": "A", "main": "./lib/a.js", "dynamicMetadata": true}"#;
const LIB_A: (&str, &str) = ("lib/a.js", "");

/// An action `a` whose inline `metadata.in` is `schema`.
fn with_in_metadata(schema: &str) -> String {
    with_actions(&format!(
        r#""a": {{"title": "A", "main": "./lib/a.js", "metadata": {{"in": {schema}}}}}"#
    ))
}

type Files = Vec<(&'static str, &'static str)>;

/// A rule, its descriptor, extra files, and the pointer of the one finding it must produce.
type RuleFixture = (
    Code,
    String,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

/// One fixture per rule.
fn rule_fixtures() -> Vec<RuleFixture> {
    let oauth_field = r#""oauth": {"label": "Sign in", "viewClass": "OAuthFieldView"}"#;
    let oauth2 = |client_id: &str| {
        format!(
            r#""oauth2": {{"client_id": "{client_id}", "client_secret": "s", "auth_uri": "https://a", "token_uri": "https://t"}}"#
        )
    };
    vec![
        (Code::JsonInvalid, r#"{"title": }"#.into(), vec![], ""),
        (Code::NotObject, "[]".into(), vec![], ""),
        (
            Code::TitleMissing,
            format!(r#"{{"description": "d", "actions": {{{ACTION_A}}}}}"#),
            vec![LIB_A],
            "",
        ),
        (
            Code::RequiredMissing,
            with_actions(r#""a": {"main": "./lib/a.js", "dynamicMetadata": true}"#),
            vec![LIB_A],
            "/actions/a",
        ),
        (
            Code::WrongType,
            format!(
                r#"{{"title": "T", "description": "d", "deprecated": "yes", "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
            "/deprecated",
        ),
        (
            Code::ValueInvalid,
            format!(
                r#"{{"title": "T", "description": "d", "buildType": "zip", "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
            "/buildType",
        ),
        (
            Code::NameInvalid,
            with_actions(r#""a-b": {"title": "A", "main": "./lib/a.js", "dynamicMetadata": true}"#),
            vec![LIB_A],
            "/actions/a-b",
        ),
        (
            Code::TriggerType,
            r#"{"title": "T", "description": "d", "triggers": {"t": {"title": "T", "main": "./lib/a.js", "type": "realtime"}}}"#.to_owned(),
            vec![LIB_A],
            "/triggers/t/type",
        ),
        (
            Code::NameBoth,
            format!(
                r#"{{"title": "T", "description": "d", "triggers": {{"a": {{"title": "T", "main": "./lib/t.js"}}}}, "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A, ("lib/t.js", "")],
            "/actions/a",
        ),
        (
            Code::MainRequired,
            with_actions(r#""a": {"title": "A", "dynamicMetadata": true}"#),
            vec![("package.json", "{}")],
            "/actions/a",
        ),
        (
            Code::MainMissing,
            with_actions(r#""a": {"title": "A", "main": "./lib/nothing.js"}"#),
            vec![LIB_A],
            "/actions/a/main",
        ),
        (
            Code::PathOutside,
            with_actions(r#""a": {"title": "A", "main": "../../outside.js"}"#),
            vec![],
            "/actions/a/main",
        ),
        (
            Code::MetadataMissing,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib/none.json"}}"#,
            ),
            vec![LIB_A],
            "/actions/a/metadata/in",
        ),
        (
            Code::FileUnreadable,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib"}}"#,
            ),
            vec![LIB_A],
            "/actions/a/metadata/in",
        ),
        (
            Code::MetadataNotObject,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib/in.json"}}"#,
            ),
            vec![LIB_A, ("lib/in.json", "[1, 2]")],
            "",
        ),
        (
            Code::SelectModelMissing,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "fields": {"s": {"label": "S", "viewClass": "SelectView"}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/fields/s",
        ),
        (
            Code::SelectModelFunction,
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{"fields": {{"s": {{"label": "S", "viewClass": "SelectView", "model": "getEnvs"}}}}}}, "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
            "/credentials/fields/s/model",
        ),
        (
            Code::PlaceholderUnknown,
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{"fields": {{{oauth_field}}}, {}}}, "actions": {{{ACTION_A}}}}}"#,
                oauth2("{{CLIENT_ID}}")
            ),
            vec![LIB_A],
            "/credentials/oauth2/client_id",
        ),
        (
            Code::PlaceholderMalformed,
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{"fields": {{{oauth_field}}}, {}}}, "actions": {{{ACTION_A}}}}}"#,
                oauth2("{{a b}}")
            ),
            vec![LIB_A],
            "/credentials/oauth2/client_id",
        ),
        (
            Code::DuplicateKey,
            format!(
                r#"{{"title": "T", "description": "d", "actions": {{{ACTION_A}}}, "description": "e"}}"#
            ),
            vec![LIB_A],
            "/description",
        ),
        (
            Code::DescriptionMissing,
            format!(r#"{{"title": "T", "actions": {{{ACTION_A}}}}}"#),
            vec![LIB_A],
            "",
        ),
        (
            Code::NoFunctions,
            r#"{"title": "T", "description": "d", "triggers": {}, "actions": {}}"#.into(),
            vec![],
            "",
        ),
        (
            Code::UnknownKey,
            format!(
                r#"{{"title": "T", "description": "d", "env": {{"X": {{}}}}, "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
            "/env",
        ),
        (
            Code::MainDuplicate,
            with_actions(&format!(
                r#"{ACTION_A}, "b": {{"title": "B", "main": "lib/a", "dynamicMetadata": true}}"#
            )),
            vec![LIB_A],
            "/actions/b/main",
        ),
        (
            Code::MetadataAndDynamic,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "dynamicMetadata": true, "metadata": {"out": {}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/dynamicMetadata",
        ),
        (
            Code::UnknownViewClass,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "fields": {"f": {"label": "F", "viewClass": "FancyView"}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/fields/f/viewClass",
        ),
        (
            Code::FieldLabelMissing,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "fields": {"f": {"viewClass": "TextFieldView"}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/fields/f",
        ),
        (
            Code::RequireUnknown,
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "fields": {"f": {"label": "F", "viewClass": "TextFieldView", "require": ["g"]}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/fields/f/require/0",
        ),
        (
            Code::OAuth2Missing,
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{"fields": {{{oauth_field}}}}}, "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
            "/credentials/fields",
        ),
        (
            Code::OAuthFieldMissing,
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{{}}}, "actions": {{{ACTION_A}}}}}"#,
                oauth2("id")
            ),
            vec![LIB_A],
            "/credentials/oauth2",
        ),
        (
            Code::UnknownType,
            with_in_metadata(r#"{"properties": {"x": {"type": "HTML"}}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties/x/type",
        ),
        (
            Code::StringBoolean,
            with_in_metadata(r#"{"properties": {"x": {"type": "string", "required": "true"}}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties/x/required",
        ),
        (
            Code::StringNumber,
            with_in_metadata(r#"{"properties": {"x": {"type": "string", "maxLength": "20000"}}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties/x/maxLength",
        ),
        (
            Code::RequiredArray,
            with_in_metadata(r#"{"required": ["x"], "properties": {"x": {"type": "string"}}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/required",
        ),
        (
            Code::NestedSchema,
            with_in_metadata(
                r#"{"type": "object", "properties": {"type": "object", "properties": {"x": {"type": "string"}}}}"#,
            ),
            vec![LIB_A],
            "/actions/a/metadata/in/properties",
        ),
        (
            Code::NotASchema,
            with_in_metadata(r#"{"properties": {"x": "string"}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties/x",
        ),
        (
            Code::ExternalRef,
            with_in_metadata(r#"{"properties": {"x": {"$ref": "https://example.com/x.json"}}}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties/x/$ref",
        ),
        (
            Code::KeywordType,
            with_in_metadata(r#"{"properties": []}"#),
            vec![LIB_A],
            "/actions/a/metadata/in/properties",
        ),
    ]
}

#[test]
fn every_rule_fires_once_on_its_fixture() {
    let fixtures = rule_fixtures();
    let mut covered: Vec<Code> = Vec::new();
    for (code, descriptor, files, pointer) in fixtures {
        let dir = component(&descriptor, &files);
        let report = validate(&dir);
        assert_eq!(
            codes(&report),
            [(code, pointer.to_owned())],
            "{code}:\n{}",
            report.grouped()
        );
        let finding = &report.findings[0];
        assert_eq!(finding.severity, code.severity());
        assert_eq!(finding.fix(), code.fix());
        covered.push(code);
    }
    // A new rule needs a fixture here.
    let missing: Vec<Code> = Code::ALL
        .into_iter()
        .filter(|code| !covered.contains(code))
        .collect();
    assert!(missing.is_empty(), "rules without a fixture: {missing:?}");
}

#[test]
fn unknown_keys_suggest_the_known_one() {
    let dir = component(
        &format!(r#"{{"title": "T", "description": "d", "env": {{}}, "actions": {{{ACTION_A}}}}}"#),
        &[LIB_A],
    );
    let report = validate(&dir);
    assert!(
        report.findings[0]
            .message
            .contains("did you mean \"envVars\"?"),
        "{}",
        report.grouped()
    );
}

#[test]
fn the_issue_s_false_alarms_are_gone() {
    let cases: Vec<(&str, String, Files)> = vec![
        (
            "TypeScript twins beside the .js",
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js"}, "b": {"title": "B", "main": "./src/b.js"},
                   "c": {"title": "C", "main": "./lib/c.mjs"}, "d": {"title": "D", "main": "./lib/d"}"#,
            ),
            vec![
                ("package.json", "{}"),
                ("lib/a.ts", ""),
                ("src/b.tsx", ""),
                ("lib/c.mts", ""),
                ("lib/d.ts", ""),
            ],
        ),
        (
            "tsconfig outDir/rootDir",
            with_actions(r#""a": {"title": "A", "main": "./dist/actions/a.js"}"#),
            vec![
                ("package.json", "{}"),
                (
                    "tsconfig.json",
                    "{\n  // built into dist\n  \"compilerOptions\": {\"outDir\": \"./dist\", \"rootDir\": \"./src\",},\n}",
                ),
                ("src/actions/a.ts", ""),
            ],
        ),
        (
            "no in-metadata mode, no credentials",
            with_actions(r#""a": {"title": "A", "main": "./lib/a.js"}"#),
            vec![LIB_A],
        ),
        (
            "draft-03 metadata with elastic.io's custom types",
            with_in_metadata(
                r#"{"type": "object", "properties": {"d": {"type": "date", "required": true}, "n": {"type": "numeric"}}}"#,
            ),
            vec![LIB_A],
        ),
        (
            "self-labelled views",
r#"{"title": "T", "description": "d", "authClientTypes": ["oauth2"],
                   "credentials": {"fields": {"o": {"viewClass": "OAuthFieldView"}, "h": {"viewClass": "HTTPAuthView"},
                                               "w": {"viewClass": "WebhookAuthView"}}},
                   "actions": {"a": {"title": "A", "main": "./lib/a.js",
                     "fields": {"r": {"viewClass": "CSVReadView"}, "w": {"viewClass": "CSVWriteView"}, "t": {"viewClass": "TextView"}}}}}"#
            .to_owned(),
            vec![LIB_A],
        ),
        (
            "OAuth client placeholders with useOAuthClient",
            format!(
                r#"{{"title": "T", "description": "d", "useOAuthClient": true,
                   "credentials": {{"fields": {{"oauth": {{"label": "L", "viewClass": "OAuthFieldView"}}}},
                     "oauth2": {{"client_id": "{{{{OAUTH_CLIENT_ID}}}}", "client_secret": "{{{{OAUTH_CLIENT_SECRET}}}}",
                                "auth_uri": "https://a", "token_uri": "https://t"}}}},
                   "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
        ),
        (
            "an HTTPAuthView collects the OAuth2 app the placeholders name",
            format!(
                r#"{{"title": "T", "description": "d",
                   "credentials": {{"fields": {{"auth": {{"viewClass": "HTTPAuthView"}}}},
                     "oauth2": {{"client_id": "{{{{clientId}}}}", "client_secret": "{{{{clientSecret}}}}",
                                "auth_uri": "{{{{authUri}}}}", "token_uri": "{{{{tokenUri}}}}"}}}},
                   "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
        ),
        (
            "HTTPAuthView is not OAuth",
            format!(
                r#"{{"title": "T", "description": "d", "credentials": {{"fields": {{"auth": {{"viewClass": "HTTPAuthView"}}}}}},
                   "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
        ),
        (
            "a trigger and an action sharing one module",
            format!(
                r#"{{"title": "T", "description": "d", "triggers": {{"t": {{"title": "T", "main": "./lib/a.js"}}}},
                   "actions": {{{ACTION_A}}}}}"#
            ),
            vec![LIB_A],
        ),
        (
            "a generated component dispatching one module by callParams",
            with_actions(
                r#""a": {"title": "A", "main": "./lib/a.js", "callParams": {"pathName": "/a", "method": "get"}},
                   "b": {"title": "B", "main": "./lib/a.js", "callParams": {"pathName": "/b", "method": "post"}}"#,
            ),
            vec![LIB_A],
        ),
        (
            "Java class names, one class serving two actions",
            with_actions(
                r#""a": {"title": "A", "main": "io.elastic.Action", "dynamicMetadata": "io.elastic.Meta"},
                   "b": {"title": "B", "main": "io.elastic.Action", "dynamicMetadata": "io.elastic.Meta"}"#,
            ),
            vec![],
        ),
    ];
    for (case, descriptor, files) in cases {
        let dir = component(&descriptor, &files);
        let report = validate(&dir);
        assert!(report.findings.is_empty(), "{case}:\n{}", report.grouped());
    }
    // Outside outDir, the mapping does not apply: build/b.js has no source.
    let dir = component(
        &with_actions(r#""b": {"title": "B", "main": "build/b.js"}"#),
        &[
            (
                "tsconfig.json",
                r#"{"compilerOptions": {"outDir": "dist"}}"#,
            ),
            ("src/b.ts", ""),
        ],
    );
    assert_eq!(
        codes(&validate(&dir)),
        [(Code::MainMissing, "/actions/b/main".to_owned())]
    );
}

#[test]
fn tsconfig_out_dir_without_root_dir_maps_to_the_root_or_src() {
    for source in ["src/a.ts", "a.ts"] {
        let dir = component(
            &with_actions(r#""a": {"title": "A", "main": "./dist/a.js"}"#),
            &[
                (
                    "tsconfig.json",
                    r#"{"compilerOptions": {"outDir": "dist"}}"#,
                ),
                (source, ""),
            ],
        );
        let report = validate(&dir);
        assert!(
            report.findings.is_empty(),
            "{source}:\n{}",
            report.grouped()
        );
    }
}

// ----- bad input -----

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[cfg(unix)]
#[test]
fn a_fifo_named_component_json_does_not_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("component.json");
    mkfifo(&fifo);
    match validate_in_time(dir.path()) {
        Err(ValidateError::NotRegularFile { path, kind }) => {
            assert_eq!(path, fifo);
            assert_eq!(kind, "FIFO");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Named directly, it is "not a file or a component directory".
    assert!(matches!(
        validate_in_time(&fifo),
        Err(ValidateError::NotAFile { .. })
    ));
}

#[cfg(unix)]
#[test]
fn a_fifo_as_metadata_file_is_refused_unread() {
    let dir = component(
        &with_actions(
            r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib/in.json"}}"#,
        ),
        &[LIB_A],
    );
    mkfifo(&dir.path().join("lib/in.json"));
    let report = validate(&dir);
    assert_eq!(
        codes(&report),
        [(Code::FileUnreadable, "/actions/a/metadata/in".to_owned())]
    );
    assert!(
        report.findings[0]
            .message
            .contains("not a regular file but a FIFO")
    );
}

#[cfg(unix)]
#[test]
fn component_json_linked_to_dev_zero_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("component.json")).expect("symlink");
    match validate_in_time(dir.path()) {
        Err(error @ ValidateError::NotRegularFile { .. }) => {
            assert!(error.to_string().contains("character device"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn metadata_linked_to_dev_zero_or_outside_is_refused_unread() {
    let outside = tempfile::tempdir().expect("tempdir");
    // If it were read, it would be reported as invalid JSON in that file.
    write(outside.path(), "secret.json", "not json");
    let dir = component(
        &with_actions(
            r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib/zero.json", "out": "./lib/secret.json"}}"#,
        ),
        &[LIB_A],
    );
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("lib/zero.json")).expect("symlink");
    std::os::unix::fs::symlink(
        outside.path().join("secret.json"),
        dir.path().join("lib/secret.json"),
    )
    .expect("symlink");
    let report = validate(&dir);
    assert_eq!(
        codes(&report),
        [
            (Code::PathOutside, "/actions/a/metadata/in".to_owned()),
            (Code::PathOutside, "/actions/a/metadata/out".to_owned()),
        ],
        "{}",
        report.grouped()
    );
}

#[test]
fn paths_leaving_the_component_directory_are_refused_unread() {
    let parent = tempfile::tempdir().expect("tempdir");
    let root = parent.path().join("component");
    // Files the escaping paths name; reading them would report invalid JSON.
    write(parent.path(), "x.json", "not json");
    write(parent.path(), "x.js", "");
    write(
        &root,
        "component.json",
        &with_actions(
            r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "../../../../etc/shadow", "out": "lib/../../x.json"}},
               "b": {"title": "B", "main": "lib/../../x.js", "metadata": {"in": "/etc/passwd"}}"#,
        ),
    );
    write(&root, "lib/a.js", "");
    let report = validate_in_time(&root).expect("validates");
    assert_eq!(
        codes(&report),
        [
            (Code::PathOutside, "/actions/a/metadata/in".to_owned()),
            (Code::PathOutside, "/actions/a/metadata/out".to_owned()),
            (Code::PathOutside, "/actions/b/main".to_owned()),
            (Code::PathOutside, "/actions/b/metadata/in".to_owned()),
        ],
        "{}",
        report.grouped()
    );
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.file == root.join("component.json"))
    );
}

#[test]
fn oversized_files_are_refused_with_a_clear_error() {
    let eleven_mb = format!("{{\"title\": \"{}\"}}", "x".repeat(11 * 1024 * 1024));
    let dir = component(&eleven_mb, &[]);
    match validate_in_time(dir.path()) {
        Err(error @ ValidateError::TooLarge { .. }) => {
            assert!(error.to_string().contains("larger than 10 MB"), "{error}");
        }
        other => panic!("unexpected {:?}", other.map(|r| r.findings.len())),
    }
    let dir = component(
        &with_actions(
            r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"in": "./lib/in.json"}}"#,
        ),
        &[LIB_A, ("lib/in.json", &eleven_mb)],
    );
    let report = validate(&dir);
    assert_eq!(
        codes(&report),
        [(Code::FileUnreadable, "/actions/a/metadata/in".to_owned())]
    );
    assert!(report.findings[0].message.contains("larger than 10 MB"));
}

#[test]
fn huge_values_are_not_echoed() {
    let array = format!("[{}1]", "1, ".repeat(2_500_000));
    assert!(array.len() > 5_000_000);
    let dir = component(&array, &[]);
    let report = validate(&dir);
    assert_eq!(codes(&report), [(Code::NotObject, String::new())]);
    let message = &report.findings[0].message;
    assert!(message.len() < 200, "{} bytes", message.len());
    assert!(message.contains("is not of type \"object\""), "{message}");

    let smaller = format!("[{}1]", "\"item\", ".repeat(100_000));
    let dir = component(
        &with_actions(
            r#""a": {"title": "A", "main": "./lib/a.js", "metadata": {"out": "./lib/out.json"}}"#,
        ),
        &[LIB_A, ("lib/out.json", &smaller)],
    );
    let report = validate(&dir);
    assert_eq!(codes(&report), [(Code::MetadataNotObject, String::new())]);
    assert!(report.findings[0].message.len() < 300);

    // A long key or name is cut too.
    let key = "k".repeat(100_000);
    let dir = component(
        &format!(r#"{{"title": "T", "description": "d", "{key}": 1, "actions": {{{ACTION_A}}}}}"#),
        &[LIB_A],
    );
    let report = validate(&dir);
    assert_eq!(report.findings.len(), 1);
    assert!(report.findings[0].message.len() < 500);
    assert!(report.grouped().to_string().len() < 100_000 + 1_000);
}

#[test]
fn grouped_output_prints_each_fix_once_per_rule() {
    let actions: Vec<String> = (0..12)
        .map(|i| format!(r#""a{i}": {{"title": "A", "main": "./lib/missing{i}.js"}}"#))
        .collect();
    let dir = component(&with_actions(&actions.join(", ")), &[]);
    let report = validate(&dir);
    assert_eq!(report.findings.len(), 12);
    assert!(report.findings.iter().all(|f| f.code == Code::MainMissing));
    assert_eq!(report.findings[0].severity, Severity::Error);
    let text = report.grouped().to_string();
    assert_eq!(text.matches("  = fix: ").count(), 1, "{text}");
    assert_eq!(text.matches("[E-main-missing]").count(), 11, "{text}");
    assert!(
        text.contains("  ... and 2 more [E-main-missing] in this file\n"),
        "{text}"
    );
}

#[test]
fn the_rules_page_documents_every_code() {
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../component-schemas/RULES.md");
    let text = std::fs::read_to_string(&page).expect("component-schemas/RULES.md");
    for code in Code::ALL {
        let row = text
            .lines()
            .find(|line| line.starts_with(&format!("| `{code}` |")))
            .unwrap_or_else(|| panic!("{code} is not documented in RULES.md"));
        let severity = match code.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        assert!(row.contains(&format!("| {severity} |")), "{row}");
        assert!(
            row.contains(code.fix()),
            "RULES.md fix for {code} differs: {row}"
        );
    }
}
