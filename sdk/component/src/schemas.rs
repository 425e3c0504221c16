//! The JSON Schemas of `component-schemas/`, embedded and compiled once.

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::positions::escape_token;
use super::rules::{MAX_ECHO, MAX_MESSAGE, echo, shorten};

/// One of the JSON Schemas shipped in `component-schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// `component.schema.json`: the `component.json` descriptor.
    Component,
    /// `metadata.schema.json`: the elastic.io metadata dialect of `metadata.in`/`metadata.out`.
    Metadata,
    /// `message.schema.json`: a decrypted wire message.
    Message,
    /// `error-envelope.schema.json`: the AMQP error envelope or the decrypted error.
    ErrorEnvelope,
    /// `update-keys.schema.json`: Deckhand's `updateKeys` event payload.
    UpdateKeys,
}

/// A place where an instance breaks a [`Schema`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer of the offending value (of the parent object for a missing property, of
    /// the member itself for a bad property name).
    pub pointer: String,
    /// What is wrong, in the validator's words.
    pub message: String,
}

static COMPONENT: &str = include_str!("../../../component-schemas/component.schema.json");
static METADATA: &str = include_str!("../../../component-schemas/metadata.schema.json");
static MESSAGE: &str = include_str!("../../../component-schemas/message.schema.json");
static ERROR_ENVELOPE: &str = include_str!("../../../component-schemas/error-envelope.schema.json");
static UPDATE_KEYS: &str = include_str!("../../../component-schemas/update-keys.schema.json");

/// `None` would mean a shipped schema does not compile; the unit test below makes that a
/// test failure instead of a runtime panic.
fn compile(text: &str) -> Option<Validator> {
    let schema: Value = serde_json::from_str(text).ok()?;
    jsonschema::draft202012::new(&schema).ok()
}

static COMPONENT_V: LazyLock<Option<Validator>> = LazyLock::new(|| compile(COMPONENT));
static METADATA_V: LazyLock<Option<Validator>> = LazyLock::new(|| compile(METADATA));
static MESSAGE_V: LazyLock<Option<Validator>> = LazyLock::new(|| compile(MESSAGE));
static ERROR_ENVELOPE_V: LazyLock<Option<Validator>> = LazyLock::new(|| compile(ERROR_ENVELOPE));
static UPDATE_KEYS_V: LazyLock<Option<Validator>> = LazyLock::new(|| compile(UPDATE_KEYS));

impl Schema {
    /// Every schema, in a fixed order.
    pub const ALL: [Schema; 5] = [
        Schema::Component,
        Schema::Metadata,
        Schema::Message,
        Schema::ErrorEnvelope,
        Schema::UpdateKeys,
    ];

    /// The schema's file name in `component-schemas/`, e.g. `component.schema.json`.
    pub fn file_name(self) -> &'static str {
        match self {
            Schema::Component => "component.schema.json",
            Schema::Metadata => "metadata.schema.json",
            Schema::Message => "message.schema.json",
            Schema::ErrorEnvelope => "error-envelope.schema.json",
            Schema::UpdateKeys => "update-keys.schema.json",
        }
    }

    /// The schema's JSON text, as shipped.
    pub fn text(self) -> &'static str {
        match self {
            Schema::Component => COMPONENT,
            Schema::Metadata => METADATA,
            Schema::Message => MESSAGE,
            Schema::ErrorEnvelope => ERROR_ENVELOPE,
            Schema::UpdateKeys => UPDATE_KEYS,
        }
    }

    fn validator(self) -> Option<&'static Validator> {
        let cell = match self {
            Schema::Component => &COMPONENT_V,
            Schema::Metadata => &METADATA_V,
            Schema::Message => &MESSAGE_V,
            Schema::ErrorEnvelope => &ERROR_ENVELOPE_V,
            Schema::UpdateKeys => &UPDATE_KEYS_V,
        };
        LazyLock::force(cell).as_ref()
    }

    /// Every way `instance` breaks this schema; empty when it is valid.
    ///
    /// Values from `instance` are quoted in messages only in short: a long value is cut.
    ///
    /// ```
    /// use deckhand_component::Schema;
    /// let payload = serde_json::json!({"keys": {}, "generation": 0, "accountId": null});
    /// let found = Schema::UpdateKeys.violations(&payload);
    /// assert_eq!(found[0].pointer, "/generation");
    /// ```
    pub fn violations(self, instance: &Value) -> Vec<Violation> {
        self.detailed_violations(instance)
            .into_iter()
            .map(|detailed| detailed.violation)
            .collect()
    }

    /// [`Schema::violations`] with the failing keyword, for the validator's rule codes.
    pub(crate) fn detailed_violations(self, instance: &Value) -> Vec<DetailedViolation> {
        let Some(validator) = self.validator() else {
            return vec![DetailedViolation {
                violation: Violation {
                    pointer: String::new(),
                    message: format!("internal error: {} does not compile", self.file_name()),
                },
                keyword: Keyword::Other,
            }];
        };
        validator
            .iter_errors(instance)
            .map(|error| {
                let mut pointer = error.instance_path().as_str().to_owned();
                let mut keyword = Keyword::Other;
                let message = match error.kind() {
                    // Point at the member whose name is wrong rather than at its parent object.
                    ValidationErrorKind::PropertyNames { error: inner } => {
                        keyword = Keyword::PropertyName;
                        if let Value::String(name) = inner.instance().as_ref() {
                            pointer.push('/');
                            pointer.push_str(&escape_token(name));
                            format!(
                                "invalid name {}: {}",
                                echo(&Value::String(name.clone())),
                                short_message(inner)
                            )
                        } else {
                            short_message(inner)
                        }
                    }
                    // The validator abbreviates long lists ("or 19 other candidates"); the
                    // accepted values are the useful part of the message, so list them all.
                    ValidationErrorKind::Enum { options } => {
                        keyword = Keyword::Enum;
                        match options.as_ref() {
                            Value::Array(options) => {
                                let accepted: Vec<String> =
                                    options.iter().map(Value::to_string).collect();
                                format!(
                                    "{} is not one of {}",
                                    echo(error.instance()),
                                    accepted.join(", ")
                                )
                            }
                            _ => short_message(&error),
                        }
                    }
                    ValidationErrorKind::Required { property } => {
                        keyword = Keyword::Required(property.as_str().unwrap_or("").to_owned());
                        short_message(&error)
                    }
                    ValidationErrorKind::Type { .. } => {
                        keyword = Keyword::Type;
                        short_message(&error)
                    }
                    ValidationErrorKind::MinLength { .. } => {
                        keyword = Keyword::MinLength;
                        short_message(&error)
                    }
                    _ => short_message(&error),
                };
                DetailedViolation {
                    violation: Violation { pointer, message },
                    keyword,
                }
            })
            .collect()
    }
}

/// The keyword a [`DetailedViolation`] failed, as far as the validator's codes care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Keyword {
    /// A required member is missing; its name.
    Required(String),
    /// Wrong JSON type.
    Type,
    /// Not one of the listed values.
    Enum,
    /// A member name does not match `propertyNames`.
    PropertyName,
    /// A string shorter than allowed.
    MinLength,
    /// Anything else.
    Other,
}

/// A [`Violation`] and the keyword it failed.
#[derive(Debug, Clone)]
pub(crate) struct DetailedViolation {
    pub violation: Violation,
    pub keyword: Keyword,
}

/// The validator's message with the offending value (which it prints in full, however
/// large) replaced by a short rendering, and the whole cut to a sane length.
fn short_message(error: &jsonschema::ValidationError<'_>) -> String {
    let full = error.to_string();
    let instance = error.instance().to_string();
    let message = match full.strip_prefix(&instance) {
        Some(rest) if instance.chars().count() > MAX_ECHO => {
            format!("{}{rest}", echo(error.instance()))
        }
        _ => full,
    };
    shorten(&message, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_compiles() {
        for schema in Schema::ALL {
            assert!(
                schema.validator().is_some(),
                "{} does not compile",
                schema.file_name()
            );
        }
    }
}
