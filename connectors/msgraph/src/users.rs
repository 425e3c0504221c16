//! The `listUsers` and `getUser` actions.

use deckhand::connector::field::{self, Lenient};
use deckhand::connector::{Body, ConnectorError, Context, ErrorKind, Message};
use serde::Deserialize;
use serde_json::Value;

use crate::graph::Graph;

/// Largest `$top` Graph accepts for users.
const MAX_PAGE_SIZE: u64 = 999;

/// The body of `listUsers` (all optional). Mappers often send numbers as strings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListUsers {
    #[serde(default, deserialize_with = "field::optional")]
    filter: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    select: Option<String>,
    #[serde(default, deserialize_with = "field::optional")]
    page_size: Option<Lenient<u64>>,
}

/// `listUsers`: every user of the directory, one message per user, page after page, with
/// the OData `$filter`, `$select` and `$top` of the body.
pub(crate) async fn list_users(
    graph: Graph,
    Body(body): Body<ListUsers>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let mut query: Vec<_> = [("$filter", body.filter), ("$select", body.select)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    match body.page_size {
        None => {}
        Some(Lenient(size @ 1..=MAX_PAGE_SIZE)) => query.push(("$top", size.to_string())),
        Some(_) => {
            return Err(ConnectorError::new(
                ErrorKind::InvalidInput,
                format!("message body field `pageSize` must be from 1 to {MAX_PAGE_SIZE}"),
            ));
        }
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

/// The body of `getUser`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GetUser {
    user_id: String,
    #[serde(default, deserialize_with = "field::optional")]
    select: Option<String>,
}

/// `getUser`: one user by id or userPrincipalName (`userId`), with an optional `select`.
pub(crate) async fn get_user(
    graph: Graph,
    Body(body): Body<GetUser>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let id = body.user_id.trim();
    if id.is_empty() {
        return Err(ConnectorError::new(
            ErrorKind::InvalidInput,
            "message body field `userId` must not be empty",
        ));
    }
    let mut url = graph.url(&["users", id]);
    if let Some(select) = &body.select {
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

/// The entity without `@odata.context` and the like.
fn without_odata_annotations(mut entity: Value) -> Value {
    if let Value::Object(map) = &mut entity {
        map.retain(|key, _| !key.starts_with("@odata."));
    }
    entity
}
