//! The `sendMail` action and the `readMail` polling trigger.

use chrono::{DateTime, SecondsFormat, Utc};
use deckhand::connector::field::{self, Lenient};
use deckhand::connector::{Body, Config, ConnectorError, Context, ErrorKind, Message, Snapshot};
use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::{Value, json};

use crate::graph::Graph;
use crate::settings::{AuthMode, Settings};

/// Messages per page when polling (Graph's maximum is 1000).
const MAIL_PAGE_SIZE: u32 = 50;

/// The body of `sendMail`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendMail {
    #[serde(default, deserialize_with = "field::optional")]
    from: Option<String>,
    #[serde(default, deserialize_with = "addresses")]
    to: Vec<String>,
    #[serde(default, deserialize_with = "addresses")]
    cc: Vec<String>,
    #[serde(default, deserialize_with = "addresses")]
    bcc: Vec<String>,
    subject: String,
    #[serde(default, deserialize_with = "content_type")]
    content_type: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    body: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    save_to_sent_items: Option<bool>,
}

/// `sendMail`: sends a mail from `from` (a user id or UPN), or from the signed-in user.
pub(crate) async fn send_mail(
    graph: Graph,
    settings: Config<Settings>,
    Body(mail): Body<SendMail>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let from = mail.from.as_deref().map(str::trim);
    let url = match from {
        Some(user) => graph.url(&["users", user, "sendMail"]),
        None if settings.mode == AuthMode::Delegated => graph.url(&["me", "sendMail"]),
        None => {
            return Err(invalid_input(
                "an app-only credential sends as a user: give `from` (a user id or \
                 userPrincipalName)",
            ));
        }
    };
    if mail.to.is_empty() {
        return Err(invalid_input("`to` needs at least one address"));
    }
    let request = json!({
        "message": {
            "subject": mail.subject,
            "body": {"contentType": mail.content_type.as_deref().unwrap_or("Text"), "content": mail.body.unwrap_or_default()},
            "toRecipients": recipients(&mail.to),
            "ccRecipients": recipients(&mail.cc),
            "bccRecipients": recipients(&mail.bcc),
        },
        "saveToSentItems": mail.save_to_sent_items.unwrap_or(true),
    });
    graph.post(url, &request).await?;
    ctx.emit_data(Message::new(json!({
        "accepted": true,
        "from": from.unwrap_or("me"),
        "to": mail.to,
        "subject": mail.subject,
    })))
    .await?;
    Ok(())
}

/// Addresses from an array of strings, or from one string separated by `,` or `;`.
fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let split = |s: &str| -> Vec<String> {
        s.split([',', ';'])
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(split(&s)),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(split))
            .collect::<Option<Vec<_>>>()
            .map(|lists| lists.concat())
            .ok_or_else(|| D::Error::custom("must hold strings (addresses)")),
        _ => Err(D::Error::custom(
            "must be an address or a list of addresses",
        )),
    }
}

/// `text` (the default) or `html`, whatever the case, as Graph spells them.
fn content_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text: Option<String> = field::optional(d)?;
    match text.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
        None | Some("text") => Ok(Some("Text".into())),
        Some("html") => Ok(Some("HTML".into())),
        Some(other) => Err(D::Error::custom(format!(
            "must be `text` or `html`, not `{other}`"
        ))),
    }
}

fn recipients(addresses: &[String]) -> Value {
    addresses
        .iter()
        .map(|address| json!({"emailAddress": {"address": address}}))
        .collect()
}

/// The step configuration of `readMail`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadMail {
    #[serde(default, deserialize_with = "field::optional")]
    mailbox: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    folder: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    start_time: Option<Lenient<DateTime<Utc>>>,
}

/// `readMail`: emits every message received since the last poll, oldest first, and moves the
/// position in the snapshot forward.
///
/// The position is the `receivedDateTime` of the newest message emitted, plus the ids of the
/// messages emitted with exactly that timestamp. Polling asks for `receivedDateTime ge
/// <position>`, so a message that arrives later with the same timestamp is still found, and
/// the ids make sure those already emitted are not emitted twice.
pub(crate) async fn read_mail(
    graph: Graph,
    settings: Config<Settings>,
    config: Config<ReadMail>,
    Snapshot(snapshot): Snapshot<Value>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let mut position = Position::from_snapshot(&snapshot)?;
    let since = position
        .received
        .or(config.start_time.map(|Lenient(at)| at))
        .unwrap_or(DateTime::UNIX_EPOCH);
    let mut path = match config.mailbox.as_deref() {
        Some(user) => vec!["users", user],
        None if settings.mode == AuthMode::Delegated => vec!["me"],
        None => {
            return Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                "an app-only credential reads a user's mailbox: set `mailbox` (a user id or \
                 userPrincipalName)",
            ));
        }
    };
    if let Some(folder) = config.folder.as_deref() {
        path.extend(["mailFolders", folder]);
    }
    path.push("messages");
    let mut url = graph.url(&path);
    url.query_pairs_mut()
        .append_pair(
            "$filter",
            &format!("receivedDateTime ge {}", format_time(since)),
        )
        .append_pair("$orderby", "receivedDateTime asc")
        .append_pair("$top", &MAIL_PAGE_SIZE.to_string());

    let mut pages = graph.pages(url);
    while let Some(messages) = pages.next().await? {
        let before = position.clone();
        for message in messages {
            let (received, id) = stamp(&message)?;
            if position.covers(received, &id) {
                continue;
            }
            ctx.emit_data(Message::new(message)).await?;
            position.advance(received, id);
        }
        // After every page, so that a failure later costs at most one page of duplicates.
        if position != before {
            ctx.emit_snapshot(position.to_snapshot()).await?;
        }
    }
    Ok(())
}

/// Where `readMail` stands: the newest `receivedDateTime` emitted and the ids emitted at it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Position {
    received: Option<DateTime<Utc>>,
    ids: Vec<String>,
}

const RECEIVED_KEY: &str = "lastReceivedDateTime";
const IDS_KEY: &str = "idsAtLastReceivedDateTime";

impl Position {
    /// The position in a snapshot; an empty snapshot is the start.
    fn from_snapshot(snapshot: &Value) -> Result<Self, ConnectorError> {
        let invalid = |what: &str| {
            ConnectorError::new(
                ErrorKind::InvalidSnapshot,
                format!("the readMail snapshot {what}; delete it to start over"),
            )
        };
        let received = match snapshot.get(RECEIVED_KEY) {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::String(s)) => {
                parse_time(s).ok_or_else(|| invalid(&format!("has an invalid `{RECEIVED_KEY}`")))?
            }
            Some(_) => return Err(invalid(&format!("has a non-string `{RECEIVED_KEY}`"))),
        };
        let ids = match snapshot.get(IDS_KEY) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|id| id.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid(&format!("has non-string ids in `{IDS_KEY}`")))?,
            Some(_) => return Err(invalid(&format!("has a non-array `{IDS_KEY}`"))),
        };
        Ok(Self {
            received: Some(received),
            ids,
        })
    }

    fn to_snapshot(&self) -> Value {
        json!({
            RECEIVED_KEY: self.received.map(format_time),
            IDS_KEY: self.ids,
        })
    }

    /// Whether the message was emitted already (or is older than the position).
    fn covers(&self, received: DateTime<Utc>, id: &str) -> bool {
        match self.received {
            None => false,
            Some(at) => received < at || (received == at && self.ids.iter().any(|i| i == id)),
        }
    }

    /// Moves past a message just emitted.
    fn advance(&mut self, received: DateTime<Utc>, id: String) {
        if self.received != Some(received) {
            self.received = Some(received);
            self.ids.clear();
        }
        self.ids.push(id);
    }
}

/// A message's `receivedDateTime` and `id`.
fn stamp(message: &Value) -> Result<(DateTime<Utc>, String), ConnectorError> {
    let id = message.get("id").and_then(Value::as_str);
    let received = message
        .get("receivedDateTime")
        .and_then(Value::as_str)
        .and_then(parse_time);
    match (received, id) {
        (Some(received), Some(id)) => Ok((received, id.to_owned())),
        _ => Err(ConnectorError::new(
            ErrorKind::InvalidResponse,
            "Microsoft Graph returned a message without `id` or a valid `receivedDateTime`",
        )),
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `2024-01-01T05:00:00Z` (fractions of a second only when there are some).
fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn invalid_input(message: impl Into<String>) -> ConnectorError {
    ConnectorError::new(ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse_time(text).unwrap()
    }

    #[test]
    fn position_round_trips_and_breaks_ties_by_id() {
        let mut p = Position::default();
        assert!(!p.covers(at("2024-01-01T00:00:00Z"), "a"));
        p.advance(at("2024-01-01T01:00:00Z"), "a".into());
        p.advance(at("2024-01-01T01:00:00Z"), "b".into());
        assert!(p.covers(at("2024-01-01T01:00:00Z"), "b"));
        assert!(!p.covers(at("2024-01-01T01:00:00Z"), "c"));
        assert!(p.covers(at("2024-01-01T00:59:59Z"), "z"));
        let snapshot = p.to_snapshot();
        assert_eq!(
            snapshot,
            json!({"lastReceivedDateTime": "2024-01-01T01:00:00Z", "idsAtLastReceivedDateTime": ["a", "b"]})
        );
        assert_eq!(Position::from_snapshot(&snapshot).unwrap(), p);
        p.advance(at("2024-01-01T02:00:00Z"), "c".into());
        assert_eq!(p.ids, ["c"]);
    }

    #[test]
    fn empty_or_broken_snapshots() {
        assert_eq!(
            Position::from_snapshot(&json!({})).unwrap(),
            Position::default()
        );
        assert_eq!(
            Position::from_snapshot(&Value::Null).unwrap(),
            Position::default()
        );
        let err =
            Position::from_snapshot(&json!({"lastReceivedDateTime": "yesterday"})).unwrap_err();
        assert_eq!(err.name(), "InvalidSnapshot");
    }
}
