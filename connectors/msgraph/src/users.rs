//! The `listUsers` and `getUser` actions.

use deckhand::connector::{ConnectorError, Context, ErrorKind, Input, Message};
use serde_json::Value;

use crate::graph::Graph;

/// Largest `$top` Graph accepts for users.
const MAX_PAGE_SIZE: u64 = 999;

/// `listUsers`: every user of the directory, one message per user, page after page.
///
/// Body (all optional): `filter` (OData `$filter`), `select` (`$select`), `pageSize` (`$top`).
pub(crate) async fn list_users(
    graph: &Graph<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let mut query = Vec::new();
    if let Some(filter) = body_text(input, "filter")? {
        query.push(("$filter", filter.to_owned()));
    }
    if let Some(select) = body_text(input, "select")? {
        query.push(("$select", select.to_owned()));
    }
    if let Some(size) = page_size(input)? {
        query.push(("$top", size.to_string()));
    }
    let mut url = graph.url(&["users"]);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let mut pages = graph.pages(url);
    while let Some(users) = pages.next().await? {
        for user in users {
            ctx.emit_data(Message::new(user)).await?;
        }
    }
    Ok(())
}

/// `getUser`: one user by id or userPrincipalName (`userId`), with an optional `select`.
pub(crate) async fn get_user(
    graph: &Graph<'_>,
    input: &Input,
    ctx: &Context,
) -> Result<(), ConnectorError> {
    let id = input.body_str("userId")?.trim();
    if id.is_empty() {
        return Err(ConnectorError::new(
            ErrorKind::InvalidInput,
            "message body field `userId` must not be empty",
        ));
    }
    let mut url = graph.url(&["users", id]);
    if let Some(select) = body_text(input, "select")? {
        url.query_pairs_mut().append_pair("$select", select);
    }
    match graph.find(url).await? {
        Some(user) => {
            ctx.emit_data(Message::new(without_odata_annotations(user)))
                .await?;
            Ok(())
        }
        None => Err(ConnectorError::new(
            ErrorKind::NotFound,
            format!("no user has the id or userPrincipalName `{id}`"),
        )),
    }
}

/// An optional string field of the body (absent, null and blank mean `None`).
pub(crate) fn body_text<'a>(
    input: &'a Input,
    field: &str,
) -> Result<Option<&'a str>, ConnectorError> {
    match input.message.body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ConnectorError::new(
            ErrorKind::InvalidInput,
            format!("message body field `{field}` must be a string"),
        )),
    }
}

fn page_size(input: &Input) -> Result<Option<u64>, ConnectorError> {
    let value = match input.message.body.get("pageSize") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        // Mappers often produce numbers as strings.
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(v) => v.as_u64(),
    };
    match value {
        Some(n @ 1..=MAX_PAGE_SIZE) => Ok(Some(n)),
        _ => Err(ConnectorError::new(
            ErrorKind::InvalidInput,
            format!(
                "message body field `pageSize` must be a whole number from 1 to {MAX_PAGE_SIZE}"
            ),
        )),
    }
}

/// The entity without `@odata.context` and the like.
fn without_odata_annotations(mut entity: Value) -> Value {
    if let Value::Object(map) = &mut entity {
        map.retain(|key, _| !key.starts_with("@odata."));
    }
    entity
}
