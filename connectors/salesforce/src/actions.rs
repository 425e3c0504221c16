//! The actions: `query`, `create`, `upsert` and `lookup`.

use deckhand::connector::{ConnectorError, Context, ErrorKind, Input, Message};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::config::{api_name, checkbox, field_list};

/// How `query` emits its results (field `emitBehavior`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EmitBehavior {
    /// One message per record (`emitIndividually`, the default).
    Individually,
    /// One message per page: `{totalSize, done, records}` (`emitPage`).
    Page,
}

impl EmitBehavior {
    fn from_config(input: &Input) -> Result<Self, ConnectorError> {
        match input.config_opt_str("emitBehavior") {
            None | Some("emitIndividually") => Ok(Self::Individually),
            Some("emitPage") => Ok(Self::Page),
            Some(other) => Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!("`emitBehavior` must be emitIndividually or emitPage, not `{other}`"),
            )),
        }
    }
}

/// `query`: runs the SOQL query of the message body's `query` and follows `nextRecordsUrl` to
/// the last page, emitting one message per record or one per page.
///
/// A 429/503 on the first page is rebounded (see the crate docs); once something was emitted
/// a failure is an error, because replaying the message would emit those records again.
pub(crate) async fn query(
    api: &Api<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let soql = input.body_str("query")?;
    let behavior = EmitBehavior::from_config(input)?;
    let mut page = api.query(soql, checkbox(input, "includeDeleted")).await?;
    let mut pages = 0usize;
    let mut records = 0usize;
    loop {
        pages += 1;
        records += page.records.len();
        match behavior {
            EmitBehavior::Individually => {
                for record in &page.records {
                    ctx.emit_data(Message::new(record.clone())).await?;
                }
            }
            EmitBehavior::Page => {
                let body = json!({
                    "totalSize": page.total_size,
                    "done": page.done,
                    "records": page.records,
                });
                ctx.emit_data(Message::new(body)).await?;
            }
        }
        match api.next_page(&page).await {
            Ok(Some(next)) => page = next,
            Ok(None) => break,
            Err(err) => return Err(after_partial_output(err, records)),
        }
    }
    tracing::debug!(pages, records, "query finished");
    Ok(())
}

/// An error that must not be rebounded because part of the output was already emitted.
fn after_partial_output(err: ConnectorError, emitted_records: usize) -> ConnectorError {
    if !err.is_throttled() {
        return err;
    }
    // A new error without the status: it must not be taken for a throttle and rebounded.
    ConnectorError::new(
        err.kind().clone(),
        format!(
            "{} ({emitted_records} records were emitted before this failure, so the message is \
             not rebounded: run it again, or narrow the query, to get the rest)",
            err.message()
        ),
    )
}

/// `create`: creates a record of the configured object from the message body.
pub(crate) async fn create(
    api: &Api<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let sobject = api_name(input, "sobject")?;
    let record = record_body(input)?;
    let request = api.post(api.url(&["sobjects", sobject])).json(&record);
    let created = api.send_json(request).await?;
    ctx.emit_data(Message::new(created)).await?;
    Ok(())
}

/// `upsert`: creates or updates the record whose external id field (`externalIdField`) has the
/// value found under that field in the message body.
///
/// Emits `{id, created, success, errors}`. Salesforce answers an update with 200 and that body
/// from API v46.0 on, and with an empty 204 before; after a 204 the record's Id is looked up so
/// the output is the same.
pub(crate) async fn upsert(
    api: &Api<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let sobject = api_name(input, "sobject")?;
    let field = api_name(input, "externalIdField")?;
    let mut record = record_body(input)?;
    // The value goes in the URL, so it is taken out of the body.
    let key = record
        .keys()
        .find(|k| k.eq_ignore_ascii_case(field))
        .cloned()
        .ok_or_else(|| missing_body_field(field))?;
    let value = scalar_text(record.remove(&key), field)?;
    let url = api.url(&["sobjects", sobject, field, &value]);
    let reply = api.send(api.patch(url.clone()).json(&record)).await?;
    let result = match reply.body {
        Some(mut body) => {
            if let Some(fields) = body.as_object_mut() {
                let created = reply.status == StatusCode::CREATED;
                fields.entry("created").or_insert(json!(created));
            }
            body
        }
        None => {
            let id = if field.eq_ignore_ascii_case("Id") {
                value
            } else {
                let found = api
                    .send_json(api.get(url).query(&[("fields", "Id")]))
                    .await?;
                found
                    .get("Id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            json!({"id": id, "created": false, "success": true, "errors": []})
        }
    };
    ctx.emit_data(Message::new(result)).await?;
    Ok(())
}

/// `lookup`: reads the record whose `lookupField` (default `Id`) equals the body's `value`.
///
/// When none matches, the step fails with `NOT_FOUND`, or emits an empty message if
/// `allowNotFound` is checked. Several matches (a non-unique external id) fail with
/// `MULTIPLE_CHOICES`.
pub(crate) async fn lookup(
    api: &Api<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let sobject = api_name(input, "sobject")?;
    let field = match input.config_opt_str("lookupField") {
        Some(_) => api_name(input, "lookupField")?,
        None => "Id",
    };
    let value = scalar_text(input.message.body.get("value").cloned(), "value")?;
    let mut url = if field.eq_ignore_ascii_case("Id") {
        api.url(&["sobjects", sobject, &value])
    } else {
        api.url(&["sobjects", sobject, field, &value])
    };
    if let Some(fields) = field_list(input, "fields")? {
        url.query_pairs_mut()
            .append_pair("fields", &fields.join(","));
    }
    match api.send_json(api.get(url)).await {
        Ok(record) => ctx.emit_data(Message::new(record)).await?,
        Err(err) if err.status() == Some(StatusCode::NOT_FOUND) => {
            if checkbox(input, "allowNotFound") {
                ctx.emit_data(Message::new(json!({}))).await?;
            } else {
                return Err(ConnectorError::new(
                    ErrorKind::Provider("NOT_FOUND".into()),
                    format!("no {sobject} record has {field} = `{value}`"),
                )
                .with_source(err));
            }
        }
        Err(err) => return Err(err),
    }
    Ok(())
}

/// The message body as a record: a JSON object of field values.
fn record_body(input: &Input) -> Result<Map<String, Value>, ConnectorError> {
    match &input.message.body {
        Value::Object(fields) => Ok(fields.clone()),
        _ => Err(ConnectorError::new(
            ErrorKind::InvalidInput,
            "the message body must be a JSON object of field values",
        )),
    }
}

/// A string or number from the message body, as it goes into a URL.
fn scalar_text(value: Option<Value>, field: &str) -> Result<String, ConnectorError> {
    match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(missing_body_field(field)),
    }
}

fn missing_body_field(field: &str) -> ConnectorError {
    ConnectorError::new(
        ErrorKind::InvalidInput,
        format!(
            "message body field `{field}` is required and must be a non-empty string or a number"
        ),
    )
}
