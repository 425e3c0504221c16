//! Every rule `deckhand validate` applies, with its stable code, severity and fix.
//!
//! The severity follows the platform: a rule is an **error** only where the elastic.io
//! platform would reject the component or the component would fail at run time; anything that
//! is suspicious but runs is a **warning**. `deckhand validate --deny-warnings` fails on
//! warnings too, for CI.
//!
//! The full table (code, severity, why, fix) is [`Code`]'s documentation, included from
//! `component-schemas/RULES.md`; a test keeps that page in step with [`Code::ALL`] and
//! [`Code::fix`].

use std::fmt;

use serde::{Serialize, Serializer};

use super::Severity;

/// The stable code of a finding, e.g. `E-main-missing`.
///
/// Codes never change meaning; new rules get new codes. The first letter is the severity
/// (`E` error, `W` warning). What follows is `component-schemas/RULES.md`, the rules page.
///
#[doc = include_str!("../../../component-schemas/RULES.md")]
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
