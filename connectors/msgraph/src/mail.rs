//! The `sendMail` action and the `readMail` polling trigger.

use chrono::{DateTime, SecondsFormat, Utc};
use deckhand::connector::{ConnectorError, Context, ErrorKind, Input, Message};
use serde_json::{Value, json};

use crate::graph::Graph;
use crate::settings::AuthMode;
use crate::users::body_text;

/// Messages per page when polling (Graph's maximum is 1000).
const MAIL_PAGE_SIZE: u32 = 50;

/// `sendMail`: sends a mail from `from` (a user id or UPN), or from the signed-in user.
pub(crate) async fn send_mail(
    graph: &Graph<'_>,
    mode: AuthMode,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let from = body_text(input, "from")?.map(str::trim);
    let url = match from {
        Some(user) => graph.url(&["users", user, "sendMail"]),
        None if mode == AuthMode::Delegated => graph.url(&["me", "sendMail"]),
        None => {
            return Err(invalid_input(
                "an app-only credential sends as a user: give `from` (a user id or \
                 userPrincipalName)",
            ));
        }
    };
    let to = addresses(input, "to")?;
    if to.is_empty() {
        return Err(invalid_input("`to` needs at least one address"));
    }
    let subject = input.body_str("subject")?;
    let content_type = match body_text(input, "contentType")?.map(|t| t.trim().to_ascii_lowercase())
    {
        None => "Text",
        Some(t) if t == "text" => "Text",
        Some(t) if t == "html" => "HTML",
        Some(other) => {
            return Err(invalid_input(format!(
                "`contentType` must be `text` or `html`, not `{other}`"
            )));
        }
    };
    let save_to_sent_items = match input.message.body.get("saveToSentItems") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_input("`saveToSentItems` must be true or false")),
    };
    let request = json!({
        "message": {
            "subject": subject,
            "body": {"contentType": content_type, "content": body_text(input, "body")?.unwrap_or("")},
            "toRecipients": recipients(&to),
            "ccRecipients": recipients(&addresses(input, "cc")?),
            "bccRecipients": recipients(&addresses(input, "bcc")?),
        },
        "saveToSentItems": save_to_sent_items,
    });
    graph.post(url, &request).await?;
    ctx.emit_data(Message::new(json!({
        "accepted": true,
        "from": from.unwrap_or("me"),
        "to": to,
        "subject": subject,
    })))
    .await?;
    Ok(())
}

/// Addresses from an array of strings, or from one string separated by `,` or `;`.
fn addresses(input: &Input, field: &str) -> Result<Vec<String>, ConnectorError> {
    let split = |s: &str| -> Vec<String> {
        s.split([',', ';'])
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match input.message.body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(split(s)),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(split))
            .collect::<Option<Vec<_>>>()
            .map(|lists| lists.concat())
            .ok_or_else(|| invalid_input(format!("`{field}` must hold strings (addresses)"))),
        Some(_) => Err(invalid_input(format!(
            "`{field}` must be an address or a list of addresses"
        ))),
    }
}

fn recipients(addresses: &[String]) -> Value {
    addresses
        .iter()
        .map(|address| json!({"emailAddress": {"address": address}}))
        .collect()
}

/// `readMail`: emits every message received since the last poll, oldest first, and moves the
/// position in the snapshot forward.
///
/// The position is the `receivedDateTime` of the newest message emitted, plus the ids of the
/// messages emitted with exactly that timestamp. Polling asks for `receivedDateTime ge
/// <position>`, so a message that arrives later with the same timestamp is still found, and
/// the ids make sure those already emitted are not emitted twice.
pub(crate) async fn read_mail(
    graph: &Graph<'_>,
    mode: AuthMode,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let mut position = Position::from_snapshot(&input.snapshot)?;
    let since = match position.received {
        Some(at) => at,
        None => start_time(input)?,
    };
    let mut path = match input.config_opt_str("mailbox") {
        Some(user) => vec!["users", user],
        None if mode == AuthMode::Delegated => vec!["me"],
        None => {
            return Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                "an app-only credential reads a user's mailbox: set `mailbox` (a user id or \
                 userPrincipalName)",
            ));
        }
    };
    if let Some(folder) = input.config_opt_str("folder") {
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

/// Where the first poll starts: the `startTime` field, or else the beginning of time.
fn start_time(input: &Input) -> Result<DateTime<Utc>, ConnectorError> {
    match input.config_opt_str("startTime") {
        None => Ok(DateTime::UNIX_EPOCH),
        Some(start) => parse_time(start).ok_or_else(|| {
            ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!("`startTime` `{start}` is not an ISO 8601 date-time"),
            )
        }),
    }
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
