//! Every rule `deckhand validate` applies, with its stable code, severity and fix.
//!
//! The severity follows the platform: a rule is an **error** only where the elastic.io
//! platform would reject the component or the component would fail at run time; anything that
//! is suspicious but runs is a **warning**. `deckhand validate --deny-warnings` fails on
//! warnings too, for CI.
//!
//! The full table (code, severity, why, fix) is [`Code`]'s documentation and
//! `component-schemas/RULES.md`; a test keeps the two in step with [`Code::ALL`].

use std::fmt;

use serde::{Serialize, Serializer};

use super::Severity;

/// The stable code of a finding, e.g. `E-main-missing`.
///
/// Codes never change meaning; new rules get new codes. The first letter is the severity
/// (`E` error, `W` warning).
///
/// | code | severity | why | fix |
/// |---|---|---|---|
/// | `E-json-invalid` | error | the descriptor or a metadata file is not UTF-8 JSON; the platform cannot load it | fix the JSON syntax at the position given |
/// | `E-not-object` | error | the descriptor must be a JSON object | make the file one JSON object `{...}` |
/// | `E-title-missing` | error | the platform needs a component title | add a non-empty `"title"` |
/// | `E-required-missing` | error | a member the platform reads is missing (field `viewClass`, function `title`, `oauth2` endpoints) | add the member named in the message |
/// | `E-wrong-type` | error | a value has a JSON type the platform cannot use | give the value the type named in the message |
/// | `E-value-invalid` | error | a value is not one the platform accepts (`authClientTypes`, `buildType`, env var names, empty strings) | use one of the accepted values |
/// | `E-name-invalid` | error | trigger and action names must match `^[A-Za-z][A-Za-z0-9_]*$` (elasticio-cli) | rename the function with letters, digits and `_` |
/// | `E-trigger-type` | error | a trigger `type` other than `polling`, `webhook` or `pushing` is not scheduled | use `polling` or `webhook` |
/// | `E-name-both` | error | the Node Sailor would run the trigger and the Java Sailor the action of that name | rename the trigger or the action |
/// | `E-main-required` | error | a Node component's function without `main` cannot be loaded | add `"main": "./lib/<kind>s/<name>.js"` |
/// | `E-main-missing` | error | the Sailor `require()`s `main` at run time; neither the module nor a TypeScript source that builds it exists | fix the path, or add the module (or its `.ts` source) |
/// | `E-path-outside` | error | metadata and `main` paths must stay inside the component directory; such paths are refused, never read | use a relative path inside the component directory |
/// | `E-metadata-missing` | error | the platform loads metadata files when the component is deployed | create the file or fix the path |
/// | `E-file-unreadable` | error | a referenced file is not a regular file, is over 10 MB, or cannot be read | point at a regular file under 10 MB |
/// | `E-metadata-not-object` | error | a metadata schema must be a JSON object | make the metadata a JSON Schema object `{"type": "object", ...}` |
/// | `E-select-model-missing` | error | a `SelectView`/`MultiSelectView` without `model` has no options | add `"model"`: an object of options or the name of a function |
/// | `E-select-model-function` | error | credentials have no module to call, so a function name as `model` gives no options | give the options as an object |
/// | `E-placeholder-unknown` | error | the platform renders an unknown `{{name}}` as empty, so the OAuth2 flow fails | declare it under `envVars` or `credentials.fields`, or set `useOAuthClient` |
/// | `E-placeholder-malformed` | error | the platform cannot render the `{{...}}` template | write placeholders as `{{name}}` |
/// | `W-duplicate-key` | warning | JSON parsers keep only the last value of a repeated key | remove or rename one of the keys |
/// | `W-description-missing` | warning | the component shows no description in the UI | add a `"description"` |
/// | `W-no-functions` | warning | a component without triggers and actions cannot be used in a flow | declare at least one trigger or action |
/// | `W-unknown-key` | warning | the platform ignores unknown top-level keys (e.g. `env` for `envVars`) | use the key the message suggests, or remove it |
/// | `W-main-duplicate` | warning | two triggers (or two actions) run the same module, usually a copy-paste slip | point each function at its own module |
/// | `W-metadata-and-dynamic` | warning | with `dynamicMetadata` the static `metadata` is not used | keep only one of them |
/// | `W-unknown-view-class` | warning | the view class is not one this validator knows; newer UIs may have it | check the spelling against the platform's view classes |
/// | `W-field-label-missing` | warning | the field is shown without a name (self-labelled views such as `OAuthFieldView` are exempt) | add a `"label"` |
/// | `W-require-unknown` | warning | `require` names a field the step does not have | name a field of the same step |
/// | `W-oauth2-missing` | warning | an `OAuthFieldView` without `credentials.oauth2`, `authClientTypes` or `useOAuthClient` has no OAuth2 app | add `credentials.oauth2` or `"authClientTypes": ["oauth2"]` |
/// | `W-oauth-field-missing` | warning | `credentials.oauth2` without an `OAuthFieldView`/`HTTPAuthView` field stores the tokens nowhere | add an `OAuthFieldView` credential field |
/// | `W-unknown-type` | warning | metadata is JSON Schema draft-03, which allows custom types, but this one is unknown | use `string`, `number`, `integer`, `boolean`, `object`, `array`, `null`, `any` or `date` |
/// | `W-string-boolean` | warning | `"true"` written as a string; elastic.io tolerates it, other tools do not | write `true` / `false` without quotes |
/// | `W-string-number` | warning | a number written as a string; elastic.io tolerates it, other tools do not | write the number without quotes |
/// | `W-required-array` | warning | elastic.io does not support the array form of `required` | put `"required": true` on each required property |
/// | `W-nested-schema` | warning | `type`/`properties` were nested inside `properties`, so they describe two bogus properties | move them up one level, out of `properties` |
/// | `W-not-a-schema` | warning | a property (or `items`) is not a schema object | make it a schema object such as `{"type": "string"}` |
/// | `W-external-ref` | warning | elastic.io resolves no external `$ref` | inline the schema or reference `#/definitions/...` |
/// | `W-keyword-type` | warning | a metadata keyword has the wrong JSON type and is ignored | give the keyword the type named in the message |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Code {
    /// `E-json-invalid`
    JsonInvalid,
    /// `E-not-object`
    NotObject,
    /// `E-title-missing`
    TitleMissing,
    /// `E-required-missing`
    RequiredMissing,
    /// `E-wrong-type`
    WrongType,
    /// `E-value-invalid`
    ValueInvalid,
    /// `E-name-invalid`
    NameInvalid,
    /// `E-trigger-type`
    TriggerType,
    /// `E-name-both`
    NameBoth,
    /// `E-main-required`
    MainRequired,
    /// `E-main-missing`
    MainMissing,
    /// `E-path-outside`
    PathOutside,
    /// `E-metadata-missing`
    MetadataMissing,
    /// `E-file-unreadable`
    FileUnreadable,
    /// `E-metadata-not-object`
    MetadataNotObject,
    /// `E-select-model-missing`
    SelectModelMissing,
    /// `E-select-model-function`
    SelectModelFunction,
    /// `E-placeholder-unknown`
    PlaceholderUnknown,
    /// `E-placeholder-malformed`
    PlaceholderMalformed,
    /// `W-duplicate-key`
    DuplicateKey,
    /// `W-description-missing`
    DescriptionMissing,
    /// `W-no-functions`
    NoFunctions,
    /// `W-unknown-key`
    UnknownKey,
    /// `W-main-duplicate`
    MainDuplicate,
    /// `W-metadata-and-dynamic`
    MetadataAndDynamic,
    /// `W-unknown-view-class`
    UnknownViewClass,
    /// `W-field-label-missing`
    FieldLabelMissing,
    /// `W-require-unknown`
    RequireUnknown,
    /// `W-oauth2-missing`
    OAuth2Missing,
    /// `W-oauth-field-missing`
    OAuthFieldMissing,
    /// `W-unknown-type`
    UnknownType,
    /// `W-string-boolean`
    StringBoolean,
    /// `W-string-number`
    StringNumber,
    /// `W-required-array`
    RequiredArray,
    /// `W-nested-schema`
    NestedSchema,
    /// `W-not-a-schema`
    NotASchema,
    /// `W-external-ref`
    ExternalRef,
    /// `W-keyword-type`
    KeywordType,
}

impl Code {
    /// Every code, errors first, in the order of the table above.
    pub const ALL: [Code; 38] = [
        Code::JsonInvalid,
        Code::NotObject,
        Code::TitleMissing,
        Code::RequiredMissing,
        Code::WrongType,
        Code::ValueInvalid,
        Code::NameInvalid,
        Code::TriggerType,
        Code::NameBoth,
        Code::MainRequired,
        Code::MainMissing,
        Code::PathOutside,
        Code::MetadataMissing,
        Code::FileUnreadable,
        Code::MetadataNotObject,
        Code::SelectModelMissing,
        Code::SelectModelFunction,
        Code::PlaceholderUnknown,
        Code::PlaceholderMalformed,
        Code::DuplicateKey,
        Code::DescriptionMissing,
        Code::NoFunctions,
        Code::UnknownKey,
        Code::MainDuplicate,
        Code::MetadataAndDynamic,
        Code::UnknownViewClass,
        Code::FieldLabelMissing,
        Code::RequireUnknown,
        Code::OAuth2Missing,
        Code::OAuthFieldMissing,
        Code::UnknownType,
        Code::StringBoolean,
        Code::StringNumber,
        Code::RequiredArray,
        Code::NestedSchema,
        Code::NotASchema,
        Code::ExternalRef,
        Code::KeywordType,
    ];

    /// The code as printed, e.g. `E-main-missing`.
    pub fn as_str(self) -> &'static str {
        self.info().0
    }

    /// Error or warning; fixed per code.
    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('E') {
            Severity::Error
        } else {
            Severity::Warning
        }
    }

    /// One line saying how to fix a finding with this code.
    pub fn fix(self) -> &'static str {
        self.info().1
    }

    fn info(self) -> (&'static str, &'static str) {
        match self {
            Code::JsonInvalid => (
                "E-json-invalid",
                "fix the JSON syntax at the position given",
            ),
            Code::NotObject => ("E-not-object", "make the file one JSON object {...}"),
            Code::TitleMissing => ("E-title-missing", "add a non-empty \"title\""),
            Code::RequiredMissing => ("E-required-missing", "add the member named in the message"),
            Code::WrongType => (
                "E-wrong-type",
                "give the value the type named in the message",
            ),
            Code::ValueInvalid => ("E-value-invalid", "use one of the accepted values"),
            Code::NameInvalid => (
                "E-name-invalid",
                "rename the function: a letter, then letters, digits or _",
            ),
            Code::TriggerType => ("E-trigger-type", "use \"polling\" or \"webhook\""),
            Code::NameBoth => ("E-name-both", "rename the trigger or the action"),
            Code::MainRequired => (
                "E-main-required",
                "add \"main\": the path of the module exporting process()",
            ),
            Code::MainMissing => (
                "E-main-missing",
                "fix the path, or add the module (or the .ts source it is built from)",
            ),
            Code::PathOutside => (
                "E-path-outside",
                "use a relative path inside the component directory",
            ),
            Code::MetadataMissing => ("E-metadata-missing", "create the file or fix the path"),
            Code::FileUnreadable => (
                "E-file-unreadable",
                "point at a regular file (not a device, FIFO or directory) under 10 MB",
            ),
            Code::MetadataNotObject => (
                "E-metadata-not-object",
                "make the metadata a JSON Schema object such as {\"type\": \"object\", \"properties\": {...}}",
            ),
            Code::SelectModelMissing => (
                "E-select-model-missing",
                "add \"model\": an object of options or the name of a function returning them",
            ),
            Code::SelectModelFunction => (
                "E-select-model-function",
                "give the credential field's options as an object",
            ),
            Code::PlaceholderUnknown => (
                "E-placeholder-unknown",
                "declare the name under \"envVars\" or \"credentials.fields\", or set \"useOAuthClient\": true",
            ),
            Code::PlaceholderMalformed => {
                ("E-placeholder-malformed", "write placeholders as {{name}}")
            }
            Code::DuplicateKey => ("W-duplicate-key", "remove or rename one of the keys"),
            Code::DescriptionMissing => ("W-description-missing", "add a \"description\""),
            Code::NoFunctions => ("W-no-functions", "declare at least one trigger or action"),
            Code::UnknownKey => (
                "W-unknown-key",
                "use the key the message suggests, or remove it",
            ),
            Code::MainDuplicate => ("W-main-duplicate", "point each function at its own module"),
            Code::MetadataAndDynamic => (
                "W-metadata-and-dynamic",
                "keep either \"metadata\" or \"dynamicMetadata\"",
            ),
            Code::UnknownViewClass => (
                "W-unknown-view-class",
                "check the spelling against the platform's view classes",
            ),
            Code::FieldLabelMissing => ("W-field-label-missing", "add a \"label\""),
            Code::RequireUnknown => (
                "W-require-unknown",
                "name a field of the same step in \"require\"",
            ),
            Code::OAuth2Missing => (
                "W-oauth2-missing",
                "add \"credentials.oauth2\", or \"authClientTypes\": [\"oauth2\"] for platform-managed OAuth apps",
            ),
            Code::OAuthFieldMissing => (
                "W-oauth-field-missing",
                "add a credential field with \"viewClass\": \"OAuthFieldView\"",
            ),
            Code::UnknownType => (
                "W-unknown-type",
                "use string, number, integer, boolean, object, array, null, any or date",
            ),
            Code::StringBoolean => ("W-string-boolean", "write true or false without quotes"),
            Code::StringNumber => ("W-string-number", "write the number without quotes"),
            Code::RequiredArray => (
                "W-required-array",
                "put \"required\": true on each required property instead",
            ),
            Code::NestedSchema => (
                "W-nested-schema",
                "move \"type\" and \"properties\" up one level, out of \"properties\"",
            ),
            Code::NotASchema => (
                "W-not-a-schema",
                "make it a schema object such as {\"type\": \"string\"}",
            ),
            Code::ExternalRef => (
                "W-external-ref",
                "inline the schema or reference \"#/definitions/...\"",
            ),
            Code::KeywordType => (
                "W-keyword-type",
                "give the keyword the type named in the message",
            ),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Longest rendering of a value from the document inside a message, in characters.
pub(crate) const MAX_ECHO: usize = 60;

/// Longest message, in characters; anything longer is cut with an ellipsis.
pub(crate) const MAX_MESSAGE: usize = 400;

/// Cuts `text` to at most `max` characters, marking the cut with `…`.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let keep: String = text.chars().take(max.saturating_sub(1)).collect();
            format!("{keep}…")
        }
    }
}

/// A JSON value as it may appear in a message: compact and cut to [`MAX_ECHO`] characters.
pub(crate) fn echo(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) if items.len() > 3 => {
            format!("an array of {} items", items.len())
        }
        serde_json::Value::Object(members) if members.len() > 3 => {
            format!("an object with {} members", members.len())
        }
        _ => shorten(&value.to_string(), MAX_ECHO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_prefixed_by_severity() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            let expected = match code.severity() {
                Severity::Error => "E-",
                Severity::Warning => "W-",
            };
            assert!(code.as_str().starts_with(expected));
            assert!(!code.fix().is_empty());
        }
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééééé", 4), "ééé…");
        let big = serde_json::Value::Array((0..1_000_000).map(serde_json::Value::from).collect());
        assert_eq!(echo(&big), "an array of 1000000 items");
        assert_eq!(
            echo(&serde_json::json!("x".repeat(500))).chars().count(),
            MAX_ECHO
        );
    }
}
