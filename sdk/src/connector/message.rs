use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A message as connectors see it: the decrypted elastic.io message envelope.
///
/// Unknown fields (webhook `method`, `url`, `query`, …) are kept in [`extra`](Self::extra), so
/// a message passes through a step unchanged except where the step changes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The message id (a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The payload.
    #[serde(default = "empty_object")]
    pub body: Value,
    /// Attachments by name: `{url, size, "content-type"}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attachments: Map<String, Value>,
    /// Message headers (not the AMQP headers).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    /// Platform metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Earlier steps' messages, by step id, when the flow uses passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<Value>,
    /// Every other field, verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Message {
    /// A new message with a fresh id and `body`.
    pub fn new(body: Value) -> Self {
        Self {
            id: Some(uuid::Uuid::new_v4().to_string()),
            body,
            ..Self::default()
        }
    }
}
