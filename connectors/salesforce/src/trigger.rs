//! The polling trigger `getUpdatedObjects` and its position.
//!
//! # How the position works
//!
//! Each poll runs
//!
//! ```text
//! SELECT <fields> FROM <object> WHERE LastModifiedDate >= <position> ORDER BY LastModifiedDate ASC
//! ```
//!
//! and emits the records in that order. The snapshot keeps the `LastModifiedDate` of the last
//! emitted record **and the Ids of every record emitted with exactly that `LastModifiedDate`**:
//!
//! ```json
//! {"lastModifiedDate": "2024-01-01T10:00:00.000+0000", "seenIds": ["001…A", "001…B"]}
//! ```
//!
//! Many records routinely share one `LastModifiedDate` (a data load, a workflow updating a
//! batch; the field has second precision). Keeping only the timestamp would force a choice
//! between `>` (records sharing the last timestamp that did not fit in this poll are lost
//! forever — the data loss Salesforce v2 2.9.0 fixed) and `>=` (the last record is emitted
//! again on every poll). With `>=` plus the Ids already seen, a record is emitted once, however
//! many share its timestamp and wherever `maxRecords` cuts a poll.
//!
//! Why Ids as a set rather than `ORDER BY LastModifiedDate, Id` with an `Id > last` tiebreak:
//! that needs `(LastModifiedDate = t AND Id > x) OR LastModifiedDate > t`, and the set works
//! whatever order Salesforce returns equal timestamps in. The set only holds the Ids at the
//! last timestamp, so it stays as small as the largest group of records modified in the same
//! second.
//!
//! The query has no `LIMIT`: the trigger stops reading pages once it has emitted `maxRecords`
//! records, so records already seen at the position never crowd out new ones.
//!
//! A record updated again after it was emitted gets a later `LastModifiedDate` and is emitted
//! again: the trigger emits updates, not just new records. `LastModifiedDate` is the time a
//! transaction *started*; a record committed by a transaction that was still running when a
//! poll passed its start time is not seen. Salesforce documents the same limitation for
//! `SystemModstamp`; flows that cannot tolerate it should also reconcile periodically.

use chrono::{DateTime, Utc};
use deckhand::connector::{ConnectorError, Context, ErrorKind, Input, Message};
use serde_json::{Value, json};

use crate::api::Api;
use crate::config::{api_name, field_list, positive_integer};

/// Records emitted by one poll when `maxRecords` is not set.
pub(crate) const DEFAULT_MAX_RECORDS: usize = 1000;

/// Where polling resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    /// The `LastModifiedDate` of the last emitted record (or the start time).
    at: DateTime<Utc>,
    /// `at` as Salesforce wrote it (or as the user configured it), kept in the snapshot.
    text: String,
    /// The Ids of the records already emitted whose `LastModifiedDate` is exactly `at`.
    seen_ids: Vec<String>,
}

impl Position {
    /// The position in `snapshot`, else the configured `startTime`, else the Unix epoch.
    fn load(snapshot: &Value, start_time: Option<&str>) -> Result<Self, ConnectorError> {
        if let Some(text) = snapshot.get("lastModifiedDate").and_then(Value::as_str) {
            let at = parse_datetime(text).ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::InvalidSnapshot,
                    format!("the snapshot's lastModifiedDate `{text}` is not a date-time"),
                )
            })?;
            let seen_ids = snapshot
                .get("seenIds")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Self {
                at,
                text: text.to_owned(),
                seen_ids,
            });
        }
        let text = start_time.unwrap_or("1970-01-01T00:00:00Z");
        let at = parse_datetime(text).ok_or_else(|| {
            ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!(
                    "`startTime` must be an ISO 8601 date-time such as 2024-01-01T00:00:00Z, \
                     not `{text}`"
                ),
            )
        })?;
        Ok(Self {
            at,
            text: text.to_owned(),
            seen_ids: Vec::new(),
        })
    }

    /// Whether a record at `at` with `id` was emitted already (or lies before the position).
    fn has_seen(&self, at: DateTime<Utc>, id: &str) -> bool {
        at < self.at || (at == self.at && self.seen_ids.iter().any(|seen| seen == id))
    }

    /// Moves past a record just emitted.
    fn advance(&mut self, at: DateTime<Utc>, text: &str, id: &str) {
        if at > self.at {
            self.at = at;
            self.text = text.to_owned();
            self.seen_ids.clear();
        }
        self.seen_ids.push(id.to_owned());
    }

    /// The SOQL literal of the position, in whole seconds (rounded down: together with `>=`
    /// and the seen Ids, nothing is skipped).
    fn soql_literal(&self) -> String {
        self.at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    fn to_snapshot(&self) -> Value {
        json!({"lastModifiedDate": self.text, "seenIds": self.seen_ids})
    }
}

/// Salesforce's `2024-01-01T10:00:00.000+0000`, or RFC 3339 (`2024-01-01T10:00:00Z`).
fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// A field of a record, whatever the case of its name (SOQL names are case-insensitive).
fn field<'r>(record: &'r Value, name: &str) -> Option<&'r Value> {
    record
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// `getUpdatedObjects`: emits the records of `sobject` modified since the snapshot's position,
/// oldest first, at most `maxRecords` per poll, and stores the new position after every page
/// that emitted something (so a failure on a later page does not emit those records again).
pub(crate) async fn get_updated_objects(
    api: &Api<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let sobject = api_name(input, "sobject")?;
    // Id and LastModifiedDate first (the position needs them), then the user's fields.
    let mut fields = vec!["Id".to_owned(), "LastModifiedDate".to_owned()];
    for selected in field_list(input, "selectedFields")?.unwrap_or_default() {
        if !fields.iter().any(|f| f.eq_ignore_ascii_case(&selected)) {
            fields.push(selected);
        }
    }
    let max_records = positive_integer(input, "maxRecords", DEFAULT_MAX_RECORDS)?;
    let mut position = Position::load(&input.snapshot, input.config_opt_str("startTime"))?;
    let soql = format!(
        "SELECT {} FROM {sobject} WHERE LastModifiedDate >= {} ORDER BY LastModifiedDate ASC",
        fields.join(", "),
        position.soql_literal(),
    );

    let mut page = api.query(&soql, false).await?;
    let mut emitted = 0usize;
    'pages: loop {
        let before = emitted;
        for record in &page.records {
            if emitted == max_records {
                break;
            }
            let (at, text, id) = record_position(record)?;
            if position.has_seen(at, id) {
                continue;
            }
            ctx.emit_data(Message::new(record.clone())).await?;
            position.advance(at, text, id);
            emitted += 1;
        }
        if emitted > before {
            ctx.emit_snapshot(position.to_snapshot()).await?;
        }
        if emitted == max_records {
            break 'pages;
        }
        match api.next_page(&page).await? {
            Some(next) => page = next,
            None => break,
        }
    }
    tracing::debug!(emitted, sobject, "poll finished");
    Ok(())
}

/// The `LastModifiedDate` (parsed and as written) and `Id` of a record.
fn record_position(record: &Value) -> Result<(DateTime<Utc>, &str, &str), ConnectorError> {
    let id = field(record, "Id").and_then(Value::as_str);
    let text = field(record, "LastModifiedDate").and_then(Value::as_str);
    let (Some(id), Some(text)) = (id, text) else {
        return Err(ConnectorError::new(
            ErrorKind::InvalidResponse,
            "a record has no Id or no LastModifiedDate",
        ));
    };
    let at = parse_datetime(text).ok_or_else(|| {
        ConnectorError::new(
            ErrorKind::InvalidResponse,
            format!("record {id} has an unreadable LastModifiedDate `{text}`"),
        )
    })?;
    Ok((at, text, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_keeps_the_ids_at_its_timestamp() {
        let mut p = Position::load(&json!({}), Some("2024-01-01T00:00:00Z")).unwrap();
        let t1 = parse_datetime("2024-01-01T00:00:00.000+0000").unwrap();
        let t2 = parse_datetime("2024-01-01T00:00:01.000+0000").unwrap();
        assert!(!p.has_seen(t1, "a"), "the start time is inclusive");
        p.advance(t1, "2024-01-01T00:00:00.000+0000", "a");
        p.advance(t1, "2024-01-01T00:00:00.000+0000", "b");
        assert!(p.has_seen(t1, "a") && p.has_seen(t1, "b") && !p.has_seen(t1, "c"));
        p.advance(t2, "2024-01-01T00:00:01.000+0000", "c");
        assert_eq!(
            p.to_snapshot(),
            json!({"lastModifiedDate": "2024-01-01T00:00:01.000+0000", "seenIds": ["c"]})
        );
        assert!(p.has_seen(t1, "z"), "earlier than the position");
        let back = Position::load(&p.to_snapshot(), None).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.soql_literal(), "2024-01-01T00:00:01Z");
    }

    #[test]
    fn bad_start_times_are_configuration_errors() {
        let err = Position::load(&json!({}), Some("yesterday")).unwrap_err();
        assert_eq!(err.name(), "InvalidConfiguration");
        assert_eq!(
            Position::load(&json!({}), None).unwrap().soql_literal(),
            "1970-01-01T00:00:00Z"
        );
    }
}
