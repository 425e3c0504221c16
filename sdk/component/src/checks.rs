//! The validation pass: parse, schema, then the checks a JSON Schema cannot express.
//!
//! Every finding carries a [`Code`] (see [`super::rules`]), which fixes its severity.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::files::{ComponentDir, FileError};
use super::metadata;
use super::positions::{self, Position, PositionIndex, escape_token};
use super::rules::{Code, MAX_ECHO, MAX_MESSAGE, shorten};
use super::schemas::{DetailedViolation, Keyword, Schema};
use super::template::{TemplateError, placeholders};
use super::{Finding, Options, Report};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes descriptor bytes, skipping a UTF-8 byte-order mark (Node's `require` does too).
pub(super) fn decode<'b>(bytes: &'b [u8], file: &Path) -> Result<&'b str, Finding> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|error| {
        let at = positions::position_of(bytes, error.valid_up_to());
        finding_at(
            Code::JsonInvalid,
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

/// The one place findings are made: the code decides the severity, and messages are cut
/// short so that no value from the input is ever echoed at length.
fn finding_at(code: Code, file: &Path, pointer: String, at: Position, message: String) -> Finding {
    Finding {
        severity: code.severity(),
        code,
        file: file.to_owned(),
        pointer,
        line: at.line,
        column: at.column,
        message: shorten(&message, MAX_MESSAGE),
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
            Code::JsonInvalid,
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

/// A name or path from the document, quoted and cut short for a message.
fn quoted(text: &str) -> String {
    format!("\"{}\"", shorten(text, MAX_ECHO))
}

/// JavaScript truthiness, which the platform applies to `metadata`/`dynamicMetadata`.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(_) => true,
    }
}

/// Top-level keys the platform, the Sailors or the docs know. `fields` (component-level
/// fields of the code component) and `service` (the webhook component) are legacy keys of
/// components that run today.
const TOP_LEVEL_KEYS: [&str; 19] = [
    "title",
    "description",
    "version",
    "docsUrl",
    "url",
    "buildType",
    "deprecated",
    "consumesRawData",
    "envVars",
    "credentials",
    "authClientTypes",
    "useOAuthClient",
    "help",
    "triggers",
    "actions",
    "fields",
    "service",
    "language",
    "$schema",
];

/// View classes known to elasticio-cli and the docs. The list is open: others only warn.
const VIEW_CLASSES: [&str; 22] = [
    "TextFieldView",
    "TextFieldWithNoteView",
    "PasswordFieldView",
    "CheckBoxView",
    "CodeFieldView",
    "TextAreaView",
    "TextAreaWithNoteView",
    "SelectView",
    "MultiSelectView",
    "SelectTreeView",
    "SelectPropertyView",
    "OAuthFieldView",
    "WebHookPayloadView",
    "OutMetadataView",
    "InMetadataExtensionView",
    "CSVReadView",
    "CSVWriteView",
    "JSONataView",
    "RESTAPIView",
    "HTTPAuthView",
    "WebhookAuthView",
    "TextView",
];

const SELECT_VIEWS: [&str; 2] = ["SelectView", "MultiSelectView"];

/// Credential fields that store a token response.
const TOKEN_VIEWS: [&str; 2] = ["OAuthFieldView", "HTTPAuthView"];

/// Node module extensions `require()` tries, and the TypeScript sources `tsc` builds them
/// from.
const JS_EXTENSIONS: [&str; 4] = [".js", ".cjs", ".mjs", ".jsx"];
const TS_EXTENSIONS: [&str; 4] = [".ts", ".tsx", ".mts", ".cts"];

/// Where a set of fields lives, which changes what a select model may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldsOwner {
    Credentials,
    Function,
}

/// `compilerOptions.outDir` / `rootDir` of the component's `tsconfig.json`.
#[derive(Debug, Clone, Default)]
struct TsLayout {
    out_dir: Option<PathBuf>,
    root_dir: Option<PathBuf>,
}

struct Checker<'a> {
    file: &'a Path,
    options: &'a Options,
    dir: Option<ComponentDir>,
    index: PositionIndex<'a>,
    findings: Vec<Finding>,
    checked_metadata_files: HashSet<PathBuf>,
    ts_layout: Option<Option<TsLayout>>,
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
        dir: options.component_root.as_deref().map(ComponentDir::new),
        index: PositionIndex::new(text),
        findings: Vec::new(),
        checked_metadata_files: HashSet::new(),
        ts_layout: None,
    };
    checker.duplicate_keys();
    for violation in Schema::Component.detailed_violations(&root) {
        let code = schema_code(&violation);
        checker.push(
            code,
            violation.violation.pointer,
            violation.violation.message,
        );
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

/// The rule a schema violation belongs to.
fn schema_code(detailed: &DetailedViolation) -> Code {
    let pointer = detailed.violation.pointer.as_str();
    let in_functions = pointer.starts_with("/triggers/") || pointer.starts_with("/actions/");
    match &detailed.keyword {
        Keyword::Required(property) if property == "title" && pointer.is_empty() => {
            Code::TitleMissing
        }
        Keyword::Required(property) if property == "label" => Code::FieldLabelMissing,
        Keyword::Required(_) => Code::RequiredMissing,
        Keyword::Type if pointer.is_empty() => Code::NotObject,
        Keyword::Type => Code::WrongType,
        Keyword::PropertyName if in_functions => Code::NameInvalid,
        Keyword::Enum if pointer.starts_with("/triggers/") && pointer.ends_with("/type") => {
            Code::TriggerType
        }
        Keyword::MinLength if pointer == "/title" => Code::TitleMissing,
        _ => Code::ValueInvalid,
    }
}

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The known key an unknown one was probably meant to be.
fn suggestion(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let lower = key.to_lowercase();
    known
        .iter()
        .copied()
        .filter(|candidate| candidate.len() > 2)
        .find(|candidate| {
            let candidate_lower = candidate.to_lowercase();
            (lower.len() >= 3 && candidate_lower.starts_with(&lower))
                || distance(&lower, &candidate_lower) <= 2
        })
}

impl Checker<'_> {
    fn push(&mut self, code: Code, pointer: String, message: String) {
        let at = self.index.locate(&pointer);
        self.findings
            .push(finding_at(code, self.file, pointer, at, message));
    }

    fn duplicate_keys(&mut self) {
        let duplicates = self.index.duplicates().to_vec();
        for duplicate in duplicates {
            self.findings.push(finding_at(
                Code::DuplicateKey,
                self.file,
                duplicate.pointer,
                duplicate.position,
                "duplicate key: JSON parsers keep only the last value".to_owned(),
            ));
        }
    }

    fn top_level(&mut self, top: &Map<String, Value>) {
        if !top.contains_key("description") {
            self.push(
                Code::DescriptionMissing,
                String::new(),
                "no \"description\": the component has no description in the UI".to_owned(),
            );
        }
        for key in top.keys() {
            if TOP_LEVEL_KEYS.contains(&key.as_str()) {
                continue;
            }
            let message = match suggestion(key, &TOP_LEVEL_KEYS) {
                Some(known) => format!(
                    "unknown top-level key {}: the platform ignores it; did you mean \"{known}\"?",
                    quoted(key)
                ),
                None => format!(
                    "unknown top-level key {}: the platform ignores it",
                    quoted(key)
                ),
            };
            self.push(Code::UnknownKey, pointer("", key), message);
        }
        let empty = |name: &str| match top.get(name) {
            None | Some(Value::Null) => true,
            Some(Value::Object(members)) => members.is_empty(),
            // A wrong type is the schema's finding.
            Some(_) => false,
        };
        if empty("triggers") && empty("actions") {
            self.push(
                Code::NoFunctions,
                String::new(),
                "no triggers and no actions: the component cannot be used in a flow".to_owned(),
            );
        }
    }

    fn functions(&mut self, top: &Map<String, Value>) {
        let triggers = top.get("triggers").and_then(Value::as_object);
        let actions = top.get("actions").and_then(Value::as_object);
        if let (Some(triggers), Some(actions)) = (triggers, actions) {
            for name in actions.keys().filter(|name| triggers.contains_key(*name)) {
                self.push(
                    Code::NameBoth,
                    pointer("/actions", name),
                    format!(
                        "{} is both a trigger and an action: the Node Sailor would run the \
                         trigger, the Java Sailor the action",
                        quoted(name)
                    ),
                );
            }
        }
        for (section, kind, functions) in [
            ("/triggers", "trigger", triggers),
            ("/actions", "action", actions),
        ] {
            // A trigger and an action sharing a module is normal (one module, both roles);
            // two triggers or two actions sharing one is a copy-paste slip — unless they say
            // how the module tells them apart, as generated components do with `callParams`.
            // Java classes are reused on purpose (elastic.io's Java petstore runs one class
            // for a static and a dynamic select model), so only Node module paths count.
            let mut mains: HashMap<String, &str> = HashMap::new();
            for (name, function) in functions.into_iter().flatten() {
                let Value::Object(function) = function else {
                    continue;
                };
                let at = pointer(section, name);
                self.function(&at, kind, name, function);
                if let Some(Value::String(main)) = function.get("main")
                    && is_module_path(main)
                    && !function.contains_key("callParams")
                {
                    match mains.get(&module_key(main)) {
                        Some(first) => self.push(
                            Code::MainDuplicate,
                            pointer(&at, "main"),
                            format!(
                                "{kind} {} runs the same module as {kind} {} ({})",
                                quoted(name),
                                quoted(first),
                                quoted(main)
                            ),
                        ),
                        None => {
                            mains.insert(module_key(main), name);
                        }
                    }
                }
            }
        }
    }

    fn function(&mut self, at: &str, kind: &str, name: &str, function: &Map<String, Value>) {
        // Neither is fine: the platform's "no in-metadata" mode (the splitter is the docs'
        // example). Both is a contradiction.
        if truthy(function.get("metadata")) && truthy(function.get("dynamicMetadata")) {
            self.push(
                Code::MetadataAndDynamic,
                pointer(at, "dynamicMetadata"),
                format!(
                    "{kind} {} has both \"metadata\" and \"dynamicMetadata\": the static \
                     metadata is not used",
                    quoted(name)
                ),
            );
        }
        if let Some(Value::Object(metadata)) = function.get("metadata") {
            for direction in ["in", "out"] {
                let source_at = pointer(&pointer(at, "metadata"), direction);
                match metadata.get(direction) {
                    Some(schema @ Value::Object(_)) => {
                        for issue in metadata::check(schema) {
                            self.push(
                                issue.code,
                                format!("{source_at}{}", issue.pointer),
                                format!("invalid metadata schema: {}", issue.message),
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
            None if self.is_node_package() => self.push(
                Code::MainRequired,
                at.to_owned(),
                "\"main\" is required in a Node component".to_owned(),
            ),
            _ => {}
        }
    }

    fn is_node_package(&self) -> bool {
        self.options.check_main_files
            && self.dir.as_ref().is_some_and(|dir| {
                dir.join("package.json")
                    .is_ok_and(|path| dir.is_regular_file(&path))
            })
    }

    fn fields(&mut self, at: &str, fields: &Map<String, Value>, owner: FieldsOwner) {
        for (name, field) in fields {
            let Value::Object(field) = field else {
                continue;
            };
            let field_at = pointer(at, name);
            let view = field.get("viewClass").and_then(Value::as_str).unwrap_or("");
            if !view.is_empty() && !VIEW_CLASSES.contains(&view) {
                self.push(
                    Code::UnknownViewClass,
                    pointer(&field_at, "viewClass"),
                    format!(
                        "unknown view class {}; known: {}",
                        quoted(view),
                        VIEW_CLASSES.join(", ")
                    ),
                );
            }
            if SELECT_VIEWS.contains(&view) {
                match (field.get("model"), owner) {
                    (None | Some(Value::Null), _) => self.push(
                        Code::SelectModelMissing,
                        field_at.clone(),
                        format!(
                            "{view} field {} has no \"model\": give the options as an object \
                             or name the function that returns them",
                            quoted(name)
                        ),
                    ),
                    (Some(Value::String(_)), FieldsOwner::Credentials) => self.push(
                        Code::SelectModelFunction,
                        pointer(&field_at, "model"),
                        format!(
                            "{view} field {} of the credentials names a function, but \
                             credentials have no module to call: give the options as an object",
                            quoted(name)
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
                        self.push(
                            Code::RequireUnknown,
                            pointer(&pointer(&field_at, "require"), &i.to_string()),
                            format!("{} is not a field of this step", quoted(other)),
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

        let views = || {
            fields
                .values()
                .filter_map(|field| field.get("viewClass").and_then(Value::as_str))
        };
        // HTTPAuthView is the auth-client view (basic, API key or OAuth through a platform
        // auth client): it needs no OAuth2 app in the descriptor.
        let has_oauth_view = views().any(|view| view == "OAuthFieldView");
        let has_token_field = views().any(|view| TOKEN_VIEWS.contains(&view));
        let use_oauth_client =
            truthy(top.get("useOAuthClient")) || truthy(credentials.get("useOAuthClient"));
        let platform_client = top.contains_key("authClientTypes") || use_oauth_client;
        let oauth2 = credentials.get("oauth2");
        if has_oauth_view
            && oauth2.is_none()
            && !credentials.contains_key("oauth1")
            && !platform_client
        {
            self.push(
                Code::OAuth2Missing,
                "/credentials/fields".to_owned(),
                "an OAuthFieldView is declared but there is no \"credentials.oauth2\" block, \
                 \"authClientTypes\" or \"useOAuthClient\" to say which OAuth2 app to use"
                    .to_owned(),
            );
        }
        if oauth2.is_some() && !has_token_field {
            self.push(
                Code::OAuthFieldMissing,
                "/credentials/oauth2".to_owned(),
                "\"oauth2\" is configured but no credential field uses OAuthFieldView or \
                 HTTPAuthView, so the tokens are stored nowhere"
                    .to_owned(),
            );
        }
        if let Some(oauth2) = oauth2 {
            let env_vars = top.get("envVars").and_then(Value::as_object);
            // With useOAuthClient the platform fills {{OAUTH_CLIENT_ID}}-style placeholders
            // from the tenant's OAuth client, and an HTTPAuthView collects the OAuth2 app
            // (clientId, authUri, ...) itself: names the descriptor does not declare are fine.
            let has_http_auth_view = views().any(|view| view == "HTTPAuthView");
            let mut known = |name: &str| {
                use_oauth_client
                    || has_http_auth_view
                    || fields.contains_key(name)
                    || env_vars.is_some_and(|vars| vars.contains_key(name))
            };
            let mut problems = Vec::new();
            collect_placeholder_problems("/credentials/oauth2", oauth2, &mut known, &mut problems);
            for (code, at, message) in problems {
                self.push(code, at, message);
            }
        }
    }

    /// Reads and checks a metadata file: inside the component directory, a regular file,
    /// JSON, and a metadata schema. Problems inside the file are reported against that file.
    fn metadata_file(&mut self, at: &str, path: &str) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let Ok(resolved) = dir.join(path) else {
            self.push(
                Code::PathOutside,
                at.to_owned(),
                format!(
                    "metadata path {} is absolute or leaves the component directory; it was not \
                     read",
                    quoted(path)
                ),
            );
            return;
        };
        // A file referenced twice is checked once; a missing one is reported at each reference.
        if self.checked_metadata_files.contains(&resolved) {
            return;
        }
        let bytes = match dir.read(&resolved) {
            Ok(bytes) => bytes,
            Err(FileError::NotFound(_)) => {
                self.push(
                    Code::MetadataMissing,
                    at.to_owned(),
                    format!(
                        "metadata file {} not found (looked for {})",
                        quoted(path),
                        resolved.display()
                    ),
                );
                return;
            }
            Err(FileError::Outside) => {
                self.push(
                    Code::PathOutside,
                    at.to_owned(),
                    format!(
                        "metadata file {} is a link out of the component directory; it was not \
                         read",
                        quoted(path)
                    ),
                );
                return;
            }
            Err(error) => {
                self.push(
                    Code::FileUnreadable,
                    at.to_owned(),
                    format!("cannot read metadata file {}: {error}", quoted(path)),
                );
                return;
            }
        };
        self.checked_metadata_files.insert(resolved.clone());
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
        for issue in metadata::check(&schema) {
            let position = index.locate(&issue.pointer);
            self.findings.push(finding_at(
                issue.code,
                &resolved,
                issue.pointer,
                position,
                format!(
                    "invalid metadata schema: {} (referenced from {at})",
                    issue.message
                ),
            ));
        }
    }

    /// Checks that a Node-style `main` module exists, or will once `tsc` has built it.
    /// Java class names are skipped.
    fn main_file(&mut self, at: &str, main: &str) {
        if !self.options.check_main_files {
            return;
        }
        let Some(dir) = self.dir.clone() else {
            return;
        };
        if main.is_empty() || !(is_module_path(main) || self.is_node_package()) {
            return;
        }
        let Ok(resolved) = dir.join(main) else {
            self.push(
                Code::PathOutside,
                at.to_owned(),
                format!(
                    "main {} is absolute or leaves the component directory",
                    quoted(main)
                ),
            );
            return;
        };
        // Node's require() resolution for a path: as given, with an extension, or a folder.
        let mut candidates = vec![resolved.clone()];
        candidates.extend(JS_EXTENSIONS.iter().map(|ext| append(&resolved, ext)));
        candidates.push(resolved.join("index.js"));
        // A TypeScript component ships `main: ./lib/x.js` built by tsc from the x.ts beside
        // it, or from rootDir when tsconfig's outDir holds the output.
        candidates.extend(typescript_twins(&resolved));
        let mapped = self.out_dir_sources(&dir, main);
        for source in &mapped {
            candidates.extend(typescript_twins(source));
        }
        if candidates
            .iter()
            .any(|candidate| dir.is_regular_file(candidate))
        {
            return;
        }
        let mut looked = format!("{} and its .ts source", resolved.display());
        for source in &mapped {
            looked.push_str(&format!(", {}.ts", strip_js(source).display()));
        }
        self.push(
            Code::MainMissing,
            at.to_owned(),
            format!(
                "main module {} not found (looked for {looked})",
                quoted(main)
            ),
        );
    }

    /// Where `tsc` compiles `main` from when it lies under tsconfig's `outDir`.
    fn out_dir_sources(&mut self, dir: &ComponentDir, main: &str) -> Vec<PathBuf> {
        let layout = self
            .ts_layout
            .get_or_insert_with(|| read_ts_layout(dir))
            .clone();
        let Some(TsLayout {
            out_dir: Some(out_dir),
            root_dir,
        }) = layout
        else {
            return Vec::new();
        };
        let Ok(main_path) = dir.join(main) else {
            return Vec::new();
        };
        let Ok(out_path) = dir.join(&out_dir.to_string_lossy()) else {
            return Vec::new();
        };
        let Ok(rest) = main_path.strip_prefix(&out_path) else {
            return Vec::new();
        };
        // Without rootDir tsc uses the common directory of the sources: usually the
        // component root or src/.
        let roots = match root_dir {
            Some(root_dir) => vec![root_dir],
            None => vec![PathBuf::from("."), PathBuf::from("src")],
        };
        roots
            .iter()
            .filter_map(|root| dir.join(&root.join(rest).to_string_lossy()).ok())
            .collect()
    }
}

/// `tsconfig.json`'s `compilerOptions.outDir` and `rootDir`, read like every other file.
fn read_ts_layout(dir: &ComponentDir) -> Option<TsLayout> {
    let bytes = dir.read(&dir.join("tsconfig.json").ok()?).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let config: Value = serde_json::from_str(&strip_jsonc(text)).ok()?;
    let options = config.get("compilerOptions")?;
    let path = |key: &str| options.get(key).and_then(Value::as_str).map(PathBuf::from);
    Some(TsLayout {
        out_dir: path("outDir"),
        root_dir: path("rootDir"),
    })
}

/// tsconfig files are JSON with comments and trailing commas; this removes both.
fn strip_jsonc(text: &str) -> String {
    remove_trailing_commas(&remove_comments(text))
}

/// Calls `visit` with each character and whether it is inside a string literal.
fn scan_strings(text: &str, mut visit: impl FnMut(usize, char, bool)) {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        let inside = in_string;
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        visit(i, c, inside);
    }
}

fn remove_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // Byte offset up to which input is skipped (inside a comment).
    let mut skip_until = 0;
    scan_strings(text, |i, c, in_string| {
        if i < skip_until {
            return;
        }
        if !in_string && c == '/' {
            match bytes.get(i + 1) {
                Some(b'/') => {
                    skip_until = text[i..].find('\n').map_or(text.len(), |n| i + n);
                    return;
                }
                Some(b'*') => {
                    skip_until = text[i + 2..].find("*/").map_or(text.len(), |n| i + n + 4);
                    out.push(' ');
                    return;
                }
                _ => {}
            }
        }
        out.push(c);
    });
    out
}

fn remove_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    scan_strings(text, |i, c, in_string| {
        let trailing = !in_string
            && c == ','
            && matches!(text[i + 1..].trim_start().chars().next(), Some('}' | ']'));
        if !trailing {
            out.push(c);
        }
    });
    out
}

/// Whether `main` is a Node module path rather than a Java class name.
fn is_module_path(main: &str) -> bool {
    main.contains('/') || main.contains('\\') || JS_EXTENSIONS.iter().any(|ext| main.ends_with(ext))
}

/// `path` without a JavaScript extension.
fn strip_js(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    for ext in JS_EXTENSIONS {
        if let Some(stem) = text.strip_suffix(ext) {
            return PathBuf::from(stem);
        }
    }
    path.to_path_buf()
}

/// The TypeScript sources `tsc` would compile to the module at `path`.
fn typescript_twins(path: &Path) -> Vec<PathBuf> {
    let stem = strip_js(path);
    let mut twins: Vec<PathBuf> = TS_EXTENSIONS.iter().map(|ext| append(&stem, ext)).collect();
    twins.push(stem.join("index.ts"));
    twins
}

/// A `main` as a module identity: `./lib/x.js`, `lib/x` and `lib/./x.js` are one module.
fn module_key(main: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in Path::new(main).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    let joined = parts.join("/");
    strip_js(Path::new(&joined)).to_string_lossy().into_owned()
}

fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}

/// Finds `{{name}}` placeholders under `value` that name nothing `known`.
fn collect_placeholder_problems(
    at: &str,
    value: &Value,
    known: &mut dyn FnMut(&str) -> bool,
    problems: &mut Vec<(Code, String, String)>,
) {
    match value {
        Value::String(text) => match placeholders(text) {
            Ok(found) => {
                for placeholder in found {
                    if !known(placeholder.name) {
                        problems.push((
                            Code::PlaceholderUnknown,
                            at.to_owned(),
                            format!(
                                "placeholder {{{{{}}}}} names neither a credential field nor a \
                                 declared env var",
                                shorten(placeholder.name, MAX_ECHO)
                            ),
                        ));
                    }
                }
            }
            Err(error @ (TemplateError::Unclosed { .. } | TemplateError::Malformed { .. })) => {
                problems.push((Code::PlaceholderMalformed, at.to_owned(), error.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_and_trailing_commas() {
        let text = "{\n // c\n \"a\": \"x//y\", /* b */ \"b\": [1, 2,],\n}";
        let value: Value = serde_json::from_str(&strip_jsonc(text)).expect("json");
        assert_eq!(value, serde_json::json!({"a": "x//y", "b": [1, 2]}));
    }

    #[test]
    fn suggestions_for_near_misses() {
        assert_eq!(suggestion("env", &TOP_LEVEL_KEYS), Some("envVars"));
        assert_eq!(suggestion("trigger", &TOP_LEVEL_KEYS), Some("triggers"));
        assert_eq!(
            suggestion("descripton", &TOP_LEVEL_KEYS),
            Some("description")
        );
        assert_eq!(suggestion("zzzzzz", &TOP_LEVEL_KEYS), None);
    }

    #[test]
    fn module_identity() {
        assert_eq!(module_key("./lib/x.js"), module_key("lib/x"));
        assert_eq!(module_key("lib/./a/../x.js"), "lib/x");
        assert_ne!(module_key("lib/x.js"), module_key("lib/y.js"));
    }
}
