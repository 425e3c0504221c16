//! `serde` deserializers for what elastic.io's field views send, for the fields of a typed
//! [`Config`](super::Config): `#[serde(default, deserialize_with = "field::checkbox")]`.
//!
//! A `CheckBoxView` sends `true`, or `"on"`/`"true"` on older platform versions; a
//! `TextFieldView` sends numbers as strings; an untouched optional field arrives as `""` or
//! `null`. Mappers do the same in message bodies ([`Body`](super::Body)).
//!
//! ```
//! use deckhand_connector::field;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(rename_all = "camelCase")]
//! struct Poll {
//!     #[serde(default, deserialize_with = "field::checkbox")]
//!     include_deleted: bool,
//!     #[serde(default, deserialize_with = "field::optional")]
//!     max_records: Option<field::Lenient<u32>>,
//!     #[serde(default, deserialize_with = "field::optional")]
//!     start_time: Option<String>,
//! }
//!
//! let poll: Poll = serde_json::from_value(serde_json::json!({
//!     "includeDeleted": "on", "maxRecords": "50", "startTime": "",
//! })).unwrap();
//! assert!(poll.include_deleted);
//! assert_eq!(poll.max_records.map(|n| n.0), Some(50));
//! assert_eq!(poll.start_time, None);
//! ```

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A checkbox: `true`, `"true"` or `"on"` mean `true`; anything else (`false`, `null`, `""`,
/// `"off"`) means `false`. Use with `#[serde(default)]` for an absent field.
pub fn checkbox<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Bool(b) => b,
        Value::String(s) => matches!(s.as_str(), "true" | "on"),
        _ => false,
    })
}

/// An optional field: `null` and blank strings mean `None`, anything else must deserialize as
/// `T`. Use with `#[serde(default)]` for an absent field.
pub fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        value => T::deserialize(value).map(Some).map_err(D::Error::custom),
    }
}

/// A value read with [`FromStr`](std::str::FromStr) from a string (surrounding blanks
/// ignored) or a number: `50` and `"50"` alike, or a date-time string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lenient<T>(pub T);

impl<'de, T> Deserialize<'de> for Lenient<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(deserializer)? {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(D::Error::custom(format!(
                    "`{other}` is not a string or number"
                )));
            }
        };
        text.parse()
            .map(Lenient)
            .map_err(|e| D::Error::custom(format!("`{text}` is not valid here ({e})")))
    }
}
