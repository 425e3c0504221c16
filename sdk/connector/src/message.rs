//! The message a function processes and emits: the decrypted elastic.io envelope, one type for
//! connectors and the wire.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The decrypted message envelope (reference §7 "Message shape").
///
/// Fields Deckhand does not know (webhook `method`, `url`, `originalUrl`, `query`, …) are kept
/// in [`extra`](Self::extra) and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Message id (a uuid); becomes the outgoing `messageId` header of a data event.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_id"
    )]
    pub id: Option<String>,
    /// The payload.
    #[serde(default = "empty_object")]
    pub body: Value,
    /// `{name: {url, size, "content-type"}}`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub attachments: Map<String, Value>,
    /// Message headers (not AMQP headers); `reply_to` is injected here on input.
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: Map<String, Value>,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: Map<String, Value>,
    /// Earlier steps' messages by step id, for passthrough steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Ids are uuid strings, but a number is accepted (as its decimal text) rather than rejecting
/// the whole message.
fn lenient_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
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
