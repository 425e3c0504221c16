//! The message a function processes and emits: the decrypted elastic.io envelope, one type for
//! connectors and the wire.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The decrypted message envelope (reference §7 "Message shape").
///
/// Fields Deckhand does not know (webhook `method`, `url`, `originalUrl`, `query`, …) are kept
/// in [`extra`](Self::extra) and written back unchanged.
// `Deserialize` is written by hand: the derive with `#[serde(flatten)]` buffers the whole
// envelope, body included, in serde's intermediate tree before reading the fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// Message id (a uuid); becomes the outgoing `messageId` header of a data event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The payload.
    pub body: Value,
    /// `{name: {url, size, "content-type"}}`.
    pub attachments: Map<String, Value>,
    /// Message headers (not AMQP headers); `reply_to` is injected here on input.
    pub headers: Map<String, Value>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Earlier steps' messages by step id, for passthrough steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<Map<String, Value>>,
    /// Every other field, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A new message with a fresh uuid and the given body.
    pub fn new(body: Value) -> Self {
        Self {
            id: Some(Uuid::new_v4().to_string()),
            body,
            attachments: Map::new(),
            headers: Map::new(),
            metadata: Map::new(),
            passthrough: None,
            extra: Map::new(),
        }
    }
}

/// Reads the envelope in one pass: a missing `body` is `{}`, a `null` or missing
/// `attachments`/`headers`/`metadata` is empty, an `id` that is a number becomes its decimal
/// text (any other non-string id is dropped rather than rejecting the message), and every
/// other field goes to `extra`. A known field given twice is an error, as with a derive.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message envelope (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut id: Option<Option<String>> = None;
        let mut body: Option<Value> = None;
        let mut attachments: Option<Map<String, Value>> = None;
        let mut headers: Option<Map<String, Value>> = None;
        let mut metadata: Option<Map<String, Value>> = None;
        let mut passthrough: Option<Option<Map<String, Value>>> = None;
        let mut extra = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => set_once(&mut id, "id", lenient_id(map.next_value()?))?,
                "body" => set_once(&mut body, "body", map.next_value()?)?,
                "attachments" => set_once(&mut attachments, "attachments", or_empty(&mut map)?)?,
                "headers" => set_once(&mut headers, "headers", or_empty(&mut map)?)?,
                "metadata" => set_once(&mut metadata, "metadata", or_empty(&mut map)?)?,
                "passthrough" => set_once(&mut passthrough, "passthrough", map.next_value()?)?,
                _ => {
                    let value = map.next_value()?;
                    extra.insert(key, value);
                }
            }
        }
        Ok(Message {
            id: id.flatten(),
            body: body.unwrap_or_else(|| Value::Object(Map::new())),
            attachments: attachments.unwrap_or_default(),
            headers: headers.unwrap_or_default(),
            metadata: metadata.unwrap_or_default(),
            passthrough: passthrough.flatten(),
            extra,
        })
    }
}

fn set_once<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

/// A map field where `null` means empty.
fn or_empty<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Map<String, Value>, A::Error> {
    Ok(map
        .next_value::<Option<Map<String, Value>>>()?
        .unwrap_or_default())
}

/// Ids are uuid strings, but a number is accepted (as its decimal text) rather than rejecting
/// the whole message.
fn lenient_id(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An input message from JSON: an object with `body` is a message; any other object is a body.
pub fn message_from_json(value: Value) -> Result<Message, String> {
    match value {
        Value::Object(map) if map.contains_key("body") => {
            serde_json::from_value(Value::Object(map)).map_err(|e| format!("message: {e}"))
        }
        Value::Object(map) => Ok(Message::new(Value::Object(map))),
        _ => Err("the message must be a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> Result<Message, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn known_fields_are_read_and_unknown_ones_kept_in_order() {
        let m = read(
            r#"{"url":"/hook","id":"m1","body":{"b":1,"a":2},"headers":{"x":"y"},
                "method":"POST","metadata":{"k":true},"attachments":{"f":{"size":1}},
                "passthrough":{"step_1":{"body":{}}}}"#,
        )
        .unwrap();
        assert_eq!(m.id.as_deref(), Some("m1"));
        assert_eq!(serde_json::to_string(&m.body).unwrap(), r#"{"b":1,"a":2}"#);
        assert_eq!(m.headers["x"], json!("y"));
        assert_eq!(m.metadata["k"], json!(true));
        assert_eq!(m.attachments["f"], json!({"size": 1}));
        assert_eq!(m.passthrough.unwrap()["step_1"], json!({"body": {}}));
        assert_eq!(m.extra.keys().collect::<Vec<_>>(), ["url", "method"]);
    }

    #[test]
    fn missing_and_null_fields_get_their_defaults() {
        let m = read(r#"{"headers":null,"attachments":null,"metadata":null,"passthrough":null}"#)
            .unwrap();
        assert_eq!(m.id, None);
        assert_eq!(m.body, json!({}));
        assert!(m.headers.is_empty() && m.attachments.is_empty() && m.metadata.is_empty());
        assert_eq!(m.passthrough, None);
        assert!(m.extra.is_empty());
        assert_eq!(read(r#"{"body":null}"#).unwrap().body, Value::Null);
    }

    #[test]
    fn a_numeric_id_becomes_text_and_other_ids_are_dropped() {
        assert_eq!(read(r#"{"id":42}"#).unwrap().id.as_deref(), Some("42"));
        assert_eq!(read(r#"{"id":null}"#).unwrap().id, None);
        assert_eq!(read(r#"{"id":{"x":1}}"#).unwrap().id, None);
    }

    #[test]
    fn wrong_shapes_are_errors_naming_the_problem() {
        let not_object = read("[1]").unwrap_err().to_string();
        assert!(not_object.contains("a message envelope"), "{not_object}");
        let bad_headers = read(r#"{"headers":[1]}"#).unwrap_err().to_string();
        assert!(
            bad_headers.contains("invalid type: sequence"),
            "{bad_headers}"
        );
        let twice = read(r#"{"body":1,"body":2}"#).unwrap_err().to_string();
        assert!(twice.contains("duplicate field `body`"), "{twice}");
    }

    #[test]
    fn a_message_reads_back_what_it_writes() {
        let mut m = Message::new(json!({"n": [1, "two", null]}));
        m.headers.insert("reply_to".into(), json!("q"));
        m.extra.insert("query".into(), json!({"a": "b"}));
        m.passthrough = Some(Map::from_iter([("s".to_string(), json!({"body": 1}))]));
        let back = read(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
