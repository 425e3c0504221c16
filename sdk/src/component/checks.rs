//! The validation pass: parse, schema, then the checks a JSON Schema cannot express.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::positions::{self, Position, PositionIndex, escape_token};
use super::schemas::Schema;
use super::template::{TemplateError, placeholders};
use super::{Finding, Options, Report, Severity};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes descriptor bytes, skipping a UTF-8 byte-order mark (Node's `require` does too).
pub(super) fn decode<'b>(bytes: &'b [u8], file: &Path) -> Result<&'b str, Finding> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|error| {
        let at = positions::position_of(bytes, error.valid_up_to());
        finding_at(
            Severity::Error,
            file,
            String::new(),
            at,
            format!(
                "invalid UTF-8 at byte {}: JSON text must be UTF-8",
                error.valid_up_to()
            ),
        )
    })
}

fn finding_at(
    severity: Severity,
    file: &Path,
    pointer: String,
    at: Position,
    message: String,
) -> Finding {
    Finding {
        severity,
        file: file.to_owned(),
        pointer,
        line: at.line,
        column: at.column,
        message,
    }
}

/// Parses JSON text, turning a syntax error into a finding at the parser's position.
fn parse(text: &str, file: &Path) -> Result<Value, Finding> {
    serde_json::from_str(text).map_err(|error| {
        let at = positions::position_from_serde(text.as_bytes(), error.line(), error.column());
        let full = error.to_string();
        let suffix = format!(" at line {} column {}", error.line(), error.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full);
        finding_at(
            Severity::Error,
            file,
            String::new(),
            at,
            format!("invalid JSON: {message}"),
        )
    })
}

/// Joins JSON pointer tokens, escaping each.
fn pointer(parent: &str, token: &str) -> String {
    format!("{parent}/{}", escape_token(token))
}

/// JavaScript truthiness, which elasticio-cli applies to `metadata`/`dynamicMetadata`.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(_) => true,
    }
}

const SELECT_VIEWS: [&str; 2] = ["SelectView", "MultiSelectView"];
const OAUTH_VIEWS: [&str; 2] = ["OAuthFieldView", "HTTPAuthView"];

/// Where a set of fields lives, which changes what a select model may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldsOwner {
    Credentials,
    Function,
}

struct Checker<'a> {
    file: &'a Path,
    options: &'a Options,
    index: PositionIndex<'a>,
    findings: Vec<Finding>,
    checked_metadata_files: HashSet<PathBuf>,
}

pub(super) fn run(text: &str, file: &Path, options: &Options) -> Report {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = match parse(text, file) {
        Ok(root) => root,
        Err(finding) => {
            return Report {
                findings: vec![finding],
            };
        }
    };
    let mut checker = Checker {
        file,
        options,
        index: PositionIndex::new(text),
        findings: Vec::new(),
        checked_metadata_files: HashSet::new(),
    };
    checker.duplicate_keys();
    for violation in Schema::Component.violations(&root) {
        checker.error(violation.pointer, violation.message);
    }
    if let Value::Object(top) = &root {
        checker.top_level(top);
        checker.functions(top);
        if let Some(Value::Object(credentials)) = top.get("credentials") {
            checker.credentials(top, credentials);
        }
    }
    let mut findings = checker.findings;
    // Stable, so findings at one place keep the order of the checks.
    findings.sort_by(|a, b| {
        (a.file != file, &a.file, a.line, a.column).cmp(&(
            b.file != file,
            &b.file,
            b.line,
            b.column,
        ))
    });
    Report { findings }
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, pointer: String, message: String) {
        let at = self.index.locate(&pointer);
        self.findings
            .push(finding_at(severity, self.file, pointer, at, message));
    }

    fn error(&mut self, pointer: String, message: String) {
        self.push(Severity::Error, pointer, message);
    }

    fn warning(&mut self, pointer: String, message: String) {
        self.push(Severity::Warning, pointer, message);
    }

    fn duplicate_keys(&mut self) {
        let duplicates = self.index.duplicates().to_vec();
        for duplicate in duplicates {
            self.findings.push(finding_at(
                Severity::Warning,
                self.file,
                duplicate.pointer,
                duplicate.position,
                "duplicate key: JSON parsers keep only the last value".to_owned(),
            ));
        }
    }

    fn top_level(&mut self, top: &Map<String, Value>) {
        if !top.contains_key("description") {
            self.warning(
                String::new(),
                "no \"description\": the component has no description in the UI".to_owned(),
            );
        }
        if !top.contains_key("credentials") {
            self.warning(
                String::new(),
                "no \"credentials\": the component has no credential step".to_owned(),
            );
        }
    }

    fn functions(&mut self, top: &Map<String, Value>) {
        let triggers = top.get("triggers").and_then(Value::as_object);
        let actions = top.get("actions").and_then(Value::as_object);
        if let (Some(triggers), Some(actions)) = (triggers, actions) {
            for name in actions.keys().filter(|name| triggers.contains_key(*name)) {
                self.error(
                    pointer("/actions", name),
                    format!(
                        "\"{name}\" is both a trigger and an action: the Node Sailor would run the \
                         trigger, the Java Sailor the action"
                    ),
                );
            }
        }
        for (section, kind, functions) in [
            ("/triggers", "trigger", triggers),
            ("/actions", "action", actions),
        ] {
            for (name, function) in functions.into_iter().flatten() {
                let Value::Object(function) = function else {
                    continue;
                };
                self.function(&pointer(section, name), kind, name, function);
            }
        }
    }

    fn function(&mut self, at: &str, kind: &str, name: &str, function: &Map<String, Value>) {
        if !truthy(function.get("metadata")) && !truthy(function.get("dynamicMetadata")) {
            self.error(
                at.to_owned(),
                format!(
                    "{kind} \"{name}\" has neither \"metadata\" nor \"dynamicMetadata\"; \
                     the platform needs one of them"
                ),
            );
        }
        if let Some(Value::Object(metadata)) = function.get("metadata") {
            for direction in ["in", "out"] {
                let source_at = pointer(&pointer(at, "metadata"), direction);
                match metadata.get(direction) {
                    Some(schema @ Value::Object(_)) => {
                        for violation in Schema::Metadata.violations(schema) {
                            self.error(
                                format!("{source_at}{}", violation.pointer),
                                format!("invalid metadata schema: {}", violation.message),
                            );
                        }
                    }
                    Some(Value::String(path)) if !path.is_empty() => {
                        self.metadata_file(&source_at, path);
                    }
                    _ => {}
                }
            }
        }
        if let Some(Value::Object(fields)) = function.get("fields") {
            self.fields(&pointer(at, "fields"), fields, FieldsOwner::Function);
        }
        match function.get("main") {
            Some(Value::String(main)) => self.main_file(&pointer(at, "main"), main),
            // Node's Sailor cannot load a function without a module; a Deckhand (Rust)
            // component registers its handlers in code and needs none.
            None if self.is_node_package() => self.error(
                at.to_owned(),
                "\"main\" is required in a Node component".to_owned(),
            ),
            _ => {}
        }
    }

    fn is_node_package(&self) -> bool {
        self.options.check_main_files
            && self
                .options
                .component_root
                .as_ref()
                .is_some_and(|root| root.join("package.json").is_file())
    }

    fn fields(&mut self, at: &str, fields: &Map<String, Value>, owner: FieldsOwner) {
        for (name, field) in fields {
            let Value::Object(field) = field else {
                continue;
            };
            let field_at = pointer(at, name);
            let view = field.get("viewClass").and_then(Value::as_str).unwrap_or("");
            if SELECT_VIEWS.contains(&view) {
                match (field.get("model"), owner) {
                    (None | Some(Value::Null), _) => self.error(
                        field_at.clone(),
                        format!(
                            "{view} field \"{name}\" has no \"model\": give the options as an \
                             object or name the function that returns them"
                        ),
                    ),
                    (Some(Value::String(_)), FieldsOwner::Credentials) => self.error(
                        pointer(&field_at, "model"),
                        format!(
                            "{view} field \"{name}\" of the credentials names a function, but \
                             credentials have no module to call: give the options as an object"
                        ),
                    ),
                    _ => {}
                }
            }
            if let Some(Value::Array(require)) = field.get("require") {
                for (i, other) in require.iter().enumerate() {
                    if let Value::String(other) = other
                        && !fields.contains_key(other)
                    {
                        self.warning(
                            pointer(&pointer(&field_at, "require"), &i.to_string()),
                            format!("\"{other}\" is not a field of this step"),
                        );
                    }
                }
            }
        }
    }

    fn credentials(&mut self, top: &Map<String, Value>, credentials: &Map<String, Value>) {
        let empty = Map::new();
        let fields = match credentials.get("fields") {
            Some(Value::Object(fields)) => fields,
            _ => &empty,
        };
        self.fields("/credentials/fields", fields, FieldsOwner::Credentials);

        let has_oauth_field = fields.values().any(|field| {
            field
                .get("viewClass")
                .and_then(Value::as_str)
                .is_some_and(|view| OAUTH_VIEWS.contains(&view))
        });
        let platform_client = top.contains_key("authClientTypes")
            || truthy(top.get("useOAuthClient"))
            || truthy(credentials.get("useOAuthClient"));
        let oauth2 = credentials.get("oauth2");
        if has_oauth_field && oauth2.is_none() && !platform_client {
            self.warning(
                "/credentials/fields".to_owned(),
                "an OAuth field is declared but there is no \"credentials.oauth2\" block, \
                 \"authClientTypes\" or \"useOAuthClient\" to say which OAuth2 app to use"
                    .to_owned(),
            );
        }
        if oauth2.is_some() && !has_oauth_field {
            self.warning(
                "/credentials/oauth2".to_owned(),
                "\"oauth2\" is configured but no credential field uses OAuthFieldView or \
                 HTTPAuthView, so the tokens are stored nowhere"
                    .to_owned(),
            );
        }
        if let Some(oauth2) = oauth2 {
            let env_vars = top.get("envVars").and_then(Value::as_object);
            let mut known = |name: &str| {
                fields.contains_key(name) || env_vars.is_some_and(|vars| vars.contains_key(name))
            };
            let mut problems = Vec::new();
            collect_placeholder_problems("/credentials/oauth2", oauth2, &mut known, &mut problems);
            for (at, message) in problems {
                self.error(at, message);
            }
        }
    }

    /// Checks a metadata file path: present, JSON, and a metadata schema. Problems inside the
    /// file are reported against that file.
    fn metadata_file(&mut self, at: &str, path: &str) {
        let Some(root) = self.options.component_root.clone() else {
            return;
        };
        if Path::new(path).is_absolute() {
            self.error(
                at.to_owned(),
                format!("metadata path \"{path}\" must be relative to the component directory"),
            );
            return;
        }
        let resolved = join_clean(&root, path);
        if !resolved.is_file() {
            self.error(
                at.to_owned(),
                format!(
                    "metadata file \"{path}\" not found (looked for {})",
                    resolved.display()
                ),
            );
            return;
        }
        if !self.checked_metadata_files.insert(resolved.clone()) {
            return;
        }
        let bytes = match std::fs::read(&resolved) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.error(
                    at.to_owned(),
                    format!("cannot read metadata file \"{path}\": {error}"),
                );
                return;
            }
        };
        let text = match decode(&bytes, &resolved) {
            Ok(text) => text,
            Err(mut finding) => {
                finding.message = format!("{} (metadata referenced from {at})", finding.message);
                self.findings.push(finding);
                return;
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let schema = match parse(text, &resolved) {
            Ok(schema) => schema,
            Err(mut finding) => {
                finding.message = format!("{} (metadata referenced from {at})", finding.message);
                self.findings.push(finding);
                return;
            }
        };
        let index = PositionIndex::new(text);
        for violation in Schema::Metadata.violations(&schema) {
            let position = index.locate(&violation.pointer);
            self.findings.push(finding_at(
                Severity::Error,
                &resolved,
                violation.pointer,
                position,
                format!(
                    "invalid metadata schema: {} (referenced from {at})",
                    violation.message
                ),
            ));
        }
    }

    /// Checks that a Node-style `main` module exists. Java class names are skipped.
    fn main_file(&mut self, at: &str, main: &str) {
        if !self.options.check_main_files {
            return;
        }
        let Some(root) = self.options.component_root.clone() else {
            return;
        };
        let looks_like_path = main.contains('/')
            || main.contains('\\')
            || [".js", ".cjs", ".mjs"]
                .iter()
                .any(|ext| main.ends_with(ext));
        let node_package = root.join("package.json").is_file();
        if main.is_empty() || !(looks_like_path || node_package) {
            return;
        }
        let resolved = join_clean(&root, main);
        // Node's require() resolution for a path: as given, with an extension, or a folder.
        let candidates = [
            resolved.clone(),
            append(&resolved, ".js"),
            append(&resolved, ".cjs"),
            append(&resolved, ".mjs"),
            resolved.join("index.js"),
        ];
        if !candidates.iter().any(|candidate| candidate.is_file()) {
            self.error(
                at.to_owned(),
                format!(
                    "main module \"{main}\" not found (looked for {})",
                    resolved.display()
                ),
            );
        }
    }
}

fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

/// `root` joined with a relative path, without `.` components so messages read cleanly.
fn join_clean(root: &Path, relative: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Finds `{{name}}` placeholders under `value` that name nothing `known`.
fn collect_placeholder_problems(
    at: &str,
    value: &Value,
    known: &mut dyn FnMut(&str) -> bool,
    problems: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(text) => match placeholders(text) {
            Ok(found) => {
                for placeholder in found {
                    if !known(placeholder.name) {
                        problems.push((
                            at.to_owned(),
                            format!(
                                "placeholder {{{{{}}}}} names neither a credential field nor a \
                                 declared env var",
                                placeholder.name
                            ),
                        ));
                    }
                }
            }
            Err(error @ (TemplateError::Unclosed { .. } | TemplateError::Malformed { .. })) => {
                problems.push((at.to_owned(), error.to_string()));
            }
            Err(TemplateError::Unknown { .. }) => {}
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_placeholder_problems(&pointer(at, &i.to_string()), item, known, problems);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                collect_placeholder_problems(&pointer(at, key), member, known, problems);
            }
        }
        _ => {}
    }
}
