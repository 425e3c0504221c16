//! Checks of `metadata.in` / `metadata.out` schemas as the platform reads them.
//!
//! elastic.io metadata is JSON Schema **draft-03** with the platform's own habits: a boolean
//! `required` on each property, custom `type` values (draft-03 allows them; `date` and
//! `numeric` appear in elastic.io's own docs and tutorials), and values such as
//! `"required": "true"` or `"maxLength": "20000"` that the platform tolerates. Metadata only
//! drives the mapping UI, so nothing inside a schema stops a component from running: every
//! finding here is a warning, and each mistake is reported once — a schema nested one level
//! too deep is one finding, not one per misplaced keyword. `properties` on an array schema is
//! accepted: elastic.io's petstore tutorial and Outlook component describe items that way.

use serde_json::{Map, Value};

use super::positions::escape_token;
use super::rules::{Code, echo};

/// One problem inside a metadata schema, at a JSON pointer relative to the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub pointer: String,
    pub code: Code,
    pub message: String,
}

/// Draft-03 type names, plus the custom types elastic.io's docs and tutorials use.
const KNOWN_TYPES: [&str; 10] = [
    "string", "number", "integer", "boolean", "object", "array", "null", "any", "date", "numeric",
];

const NUMBER_KEYWORDS: [&str; 10] = [
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "divisibleBy",
    "multipleOf",
    "minProperties",
    "maxProperties",
];

const STRING_KEYWORDS: [&str; 4] = ["title", "description", "format", "pattern"];

/// Schema keywords that show a `properties` member is a misplaced keyword, not a property.
const MISPLACED_KEYWORDS: [&str; 4] = ["type", "required", "title", "description"];

fn join(at: &str, token: &str) -> String {
    format!("{at}/{}", escape_token(token))
}

/// Checks a whole metadata schema.
pub(crate) fn check(schema: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    match schema {
        Value::Object(node) => schema_node(node, "", &mut issues),
        other => issues.push(Issue {
            pointer: String::new(),
            code: Code::MetadataNotObject,
            message: format!("metadata must be a JSON Schema object, not {}", echo(other)),
        }),
    }
    issues
}

fn issue(issues: &mut Vec<Issue>, pointer: String, code: Code, message: String) {
    issues.push(Issue {
        pointer,
        code,
        message,
    });
}

fn keyword_type(issues: &mut Vec<Issue>, at: &str, keyword: &str, expected: &str, value: &Value) {
    issue(
        issues,
        join(at, keyword),
        Code::KeywordType,
        format!(
            "\"{keyword}\" must be {expected}, not {}; it is ignored",
            echo(value)
        ),
    );
}

fn schema_node(node: &Map<String, Value>, at: &str, issues: &mut Vec<Issue>) {
    for (keyword, value) in node {
        match keyword.as_str() {
            "type" => type_keyword(value, at, issues),
            "required" => match value {
                Value::Bool(_) => {}
                Value::String(text) if is_boolean_text(text) => issue(
                    issues,
                    join(at, keyword),
                    Code::StringBoolean,
                    format!("\"required\": \"{text}\" is a string, not a boolean"),
                ),
                Value::Array(_) => issue(
                    issues,
                    join(at, keyword),
                    Code::RequiredArray,
                    "array-form \"required\" is not supported by elastic.io: mark each \
                     property with \"required\": true"
                        .to_owned(),
                ),
                other => keyword_type(issues, at, keyword, "true or false", other),
            },
            "properties" | "patternProperties" => match value {
                Value::Object(members) => properties(members, &join(at, keyword), issues),
                other => keyword_type(issues, at, keyword, "an object of schemas", other),
            },
            "definitions" | "$defs" => match value {
                Value::Object(members) => {
                    for (name, member) in members {
                        sub_schema(member, &join(&join(at, keyword), name), issues);
                    }
                }
                other => keyword_type(issues, at, keyword, "an object of schemas", other),
            },
            "items" => match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        sub_schema(item, &join(&join(at, keyword), &i.to_string()), issues);
                    }
                }
                other => sub_schema(other, &join(at, keyword), issues),
            },
            "additionalProperties" | "additionalItems" => match value {
                Value::Bool(_) => {}
                Value::Object(sub) => schema_node(sub, &join(at, keyword), issues),
                Value::String(text) if is_boolean_text(text) => issue(
                    issues,
                    join(at, keyword),
                    Code::StringBoolean,
                    format!("\"{keyword}\": \"{text}\" is a string, not a boolean"),
                ),
                other => keyword_type(issues, at, keyword, "a boolean or a schema", other),
            },
            "allOf" | "anyOf" | "oneOf" => match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        sub_schema(item, &join(&join(at, keyword), &i.to_string()), issues);
                    }
                }
                other => keyword_type(issues, at, keyword, "an array of schemas", other),
            },
            "not" | "extends" => match value {
                Value::Object(sub) => schema_node(sub, &join(at, keyword), issues),
                Value::Array(items) if keyword == "extends" => {
                    for (i, item) in items.iter().enumerate() {
                        sub_schema(item, &join(&join(at, keyword), &i.to_string()), issues);
                    }
                }
                other => keyword_type(issues, at, keyword, "a schema", other),
            },
            "$ref" => match value {
                Value::String(reference) if reference.starts_with('#') => {}
                Value::String(reference) => issue(
                    issues,
                    join(at, keyword),
                    Code::ExternalRef,
                    format!(
                        "external reference {} is not resolved by elastic.io",
                        echo(&Value::String(reference.clone()))
                    ),
                ),
                other => keyword_type(issues, at, keyword, "a string", other),
            },
            "enum" if !value.is_array() => keyword_type(issues, at, keyword, "an array", value),
            "uniqueItems" | "exclusiveMinimum" | "exclusiveMaximum" => {
                if let Value::String(text) = value
                    && is_boolean_text(text)
                {
                    issue(
                        issues,
                        join(at, keyword),
                        Code::StringBoolean,
                        format!("\"{keyword}\": \"{text}\" is a string, not a boolean"),
                    );
                }
            }
            name if NUMBER_KEYWORDS.contains(&name) => match value {
                Value::Number(_) => {}
                Value::String(text) if text.trim().parse::<f64>().is_ok() => issue(
                    issues,
                    join(at, keyword),
                    Code::StringNumber,
                    format!(
                        "\"{keyword}\": {} is a string, not a number",
                        echo(&Value::String(text.clone()))
                    ),
                ),
                other => keyword_type(issues, at, keyword, "a number", other),
            },
            name if STRING_KEYWORDS.contains(&name) && !value.is_string() => {
                keyword_type(issues, at, keyword, "a string", value);
            }
            // Unknown keywords are allowed: draft-03 and elastic.io add their own.
            _ => {}
        }
    }
}

fn is_boolean_text(text: &str) -> bool {
    matches!(text.trim(), "true" | "false")
}

/// A place where a schema is expected.
fn sub_schema(value: &Value, at: &str, issues: &mut Vec<Issue>) {
    match value {
        Value::Object(node) => schema_node(node, at, issues),
        // Boolean schemas are standard since draft-06; harmless here.
        Value::Bool(_) => {}
        other => issue(
            issues,
            at.to_owned(),
            Code::NotASchema,
            format!("{} is not a schema", echo(other)),
        ),
    }
}

fn type_keyword(value: &Value, at: &str, issues: &mut Vec<Issue>) {
    match value {
        Value::String(name) => type_name(name, &join(at, "type"), issues),
        Value::Array(names) => {
            for (i, item) in names.iter().enumerate() {
                let item_at = join(&join(at, "type"), &i.to_string());
                match item {
                    Value::String(name) => type_name(name, &item_at, issues),
                    // Draft-03 union types may hold schemas.
                    Value::Object(node) => schema_node(node, &item_at, issues),
                    other => issue(
                        issues,
                        item_at,
                        Code::KeywordType,
                        format!("a type must be a string, not {}", echo(other)),
                    ),
                }
            }
        }
        other => keyword_type(issues, at, "type", "a string or an array", other),
    }
}

fn type_name(name: &str, at: &str, issues: &mut Vec<Issue>) {
    if !KNOWN_TYPES.contains(&name) {
        issue(
            issues,
            at.to_owned(),
            Code::UnknownType,
            format!(
                "unknown type {}: the mapping UI treats it as untyped",
                echo(&Value::String(name.to_owned()))
            ),
        );
    }
}

/// The members of `properties`: one schema per property.
fn properties(members: &Map<String, Value>, at: &str, issues: &mut Vec<Issue>) {
    // `{"properties": {"type": "object", "properties": {...}}}`: a whole schema was put one
    // level too deep. Report it once and check what was meant.
    let nested = matches!(members.get("type"), Some(Value::String(_)))
        && matches!(members.get("properties"), Some(Value::Object(_)));
    if nested {
        issue(
            issues,
            at.to_owned(),
            Code::NestedSchema,
            "\"type\" and \"properties\" are nested inside \"properties\", so they describe \
             properties named \"type\" and \"properties\" instead of this object"
                .to_owned(),
        );
    }
    for (name, member) in members {
        let member_at = join(at, name);
        match member {
            Value::Object(node) if nested && name == "properties" => {
                properties(node, &member_at, issues);
            }
            Value::Object(node) => schema_node(node, &member_at, issues),
            _ if nested && MISPLACED_KEYWORDS.contains(&name.as_str()) => {}
            Value::String(text) if name == "type" && text == "required" => issue(
                issues,
                member_at,
                Code::NotASchema,
                "property \"type\" is the string \"required\": to mark a property required \
                 write \"required\": true inside it"
                    .to_owned(),
            ),
            other => issue(
                issues,
                member_at,
                Code::NotASchema,
                format!(
                    "property \"{}\" is {}, not a schema",
                    super::rules::shorten(name, super::rules::MAX_ECHO),
                    echo(other)
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(schema: Value) -> Vec<(String, Code)> {
        check(&schema)
            .into_iter()
            .map(|i| (i.pointer, i.code))
            .collect()
    }

    #[test]
    fn elastic_io_forms_are_accepted() {
        let schema = json!({
            "type": "object",
            "definitions": {"a": {"type": "object", "required": true}},
            "properties": {
                "when": {"type": "date", "required": true},
                "n": {"type": "numeric", "maxLength": 3},
                "r": {"$ref": "#/definitions/a"},
                "u": {"type": ["string", "null"]},
                "x": {"type": "string", "example": "anything", "format": "date"}
            }
        });
        assert_eq!(codes(schema), []);
    }

    #[test]
    fn tolerated_forms_warn() {
        let schema = json!({
            "required": ["a"],
            "properties": {
                "a": {"type": "HTML", "required": "true", "maxLength": "20000"},
                "b": {"$ref": "https://example.com/b.json"},
                "c": false,
                "type": "required"
            }
        });
        assert_eq!(
            codes(schema),
            [
                ("/required".to_owned(), Code::RequiredArray),
                ("/properties/a/type".to_owned(), Code::UnknownType),
                ("/properties/a/required".to_owned(), Code::StringBoolean),
                ("/properties/a/maxLength".to_owned(), Code::StringNumber),
                ("/properties/b/$ref".to_owned(), Code::ExternalRef),
                ("/properties/c".to_owned(), Code::NotASchema),
                ("/properties/type".to_owned(), Code::NotASchema),
            ]
        );
    }

    #[test]
    fn a_schema_nested_in_properties_is_one_finding() {
        let schema = json!({
            "type": "object",
            "properties": {
                "type": "object",
                "properties": {"name": {"type": "string", "required": true}, "bad": {"type": "text"}}
            }
        });
        assert_eq!(
            codes(schema),
            [
                ("/properties".to_owned(), Code::NestedSchema),
                (
                    "/properties/properties/bad/type".to_owned(),
                    Code::UnknownType
                ),
            ]
        );
    }

    #[test]
    fn non_object_roots_are_errors() {
        assert_eq!(
            codes(json!([1, 2, 3, 4, 5])),
            [(String::new(), Code::MetadataNotObject)]
        );
        let message = &check(&json!("x".repeat(10_000)))[0].message;
        assert!(message.len() < 200, "{message}");
    }
}
