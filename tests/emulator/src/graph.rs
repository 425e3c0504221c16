//! Microsoft Graph-like API under `/v1.0/`: users, `/me`, `sendMail` and mailbox messages.
//!
//! Collections support `$top`, `$skiptoken` (offset, from `@odata.nextLink`), `$select`,
//! `$orderby=field [asc|desc]` and `$filter` with `field op literal [and ...]` where `op` is
//! `eq ne gt ge lt le`, `field` may be a path such as `from/emailAddress/address`, and a literal
//! is a date-time (`2024-01-01T00:00:00Z`), a number, `true`/`false`/`null` or a
//! `'quoted string'`. Functions (`startswith`, `contains`, `any`), `or` and `not` are answered
//! with 400. Paging recomputes the result on each page, so records added between pages
//! shift later pages (good enough for polling tests; real Graph snapshots).

use std::collections::HashMap;
use std::time::SystemTime;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};

use crate::filter::{CmpOp, Condition, Literal, Record, lookup_field, sort_records};
use crate::guard::Caller;
use crate::respond::{Params, graph_error, json_response, parse_query, query_param};
use crate::state::{AppState, Shared, lock};
use crate::time::{graph_datetime, now_utc, seed_epoch};

/// Largest accepted `$top`.
const MAX_TOP: usize = 1000;

/// A mail accepted by `POST /v1.0/users/{id}/sendMail` or `POST /v1.0/me/sendMail`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMail {
    /// Id of the sending user.
    pub user_id: String,
    /// The `message` object of the request, as sent.
    pub message: Value,
    /// The request's `saveToSentItems` (Graph's default `true` when absent).
    pub save_to_sent_items: bool,
}

impl SentMail {
    /// The message subject, if any.
    pub fn subject(&self) -> Option<&str> {
        self.message.get("subject").and_then(Value::as_str)
    }

    /// The `toRecipients` addresses.
    pub fn to_addresses(&self) -> Vec<String> {
        recipient_addresses(&self.message)
    }
}

/// A message to deliver into a mailbox with
/// [`Emulator::add_message`](crate::Emulator::add_message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Subject line.
    pub subject: String,
    /// Sender address.
    pub from: String,
    /// Plain-text body.
    pub body: String,
    /// `receivedDateTime`; `None` means now.
    pub received_at: Option<SystemTime>,
}

impl NewMessage {
    /// A message with an empty body, received now.
    pub fn new(subject: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            from: from.into(),
            body: String::new(),
            received_at: None,
        }
    }
}

/// Users, mailboxes and sent mail.
#[derive(Debug, Default)]
pub(crate) struct GraphStore {
    users: Vec<Record>,
    /// Messages by user id, in delivery order.
    mailboxes: HashMap<String, Vec<Record>>,
    sent: Vec<SentMail>,
    next_message: u64,
}

const GIVEN_NAMES: [&str; 6] = ["Adele", "Alex", "Diego", "Grady", "Isaiah", "Megan"];
const SURNAMES: [&str; 6] = ["Vance", "Wilber", "Siciliani", "Archie", "Langer", "Bowen"];

impl GraphStore {
    /// `users` users (`user1@deckhand.test`, ...) with `messages` messages each; message *j*
    /// is received at 2024-01-01T00:00Z + *j* hours.
    pub(crate) fn seeded(users: usize, messages: usize) -> Self {
        let mut store = Self::default();
        for i in 1..=users {
            let given = GIVEN_NAMES[(i - 1) % GIVEN_NAMES.len()];
            let surname = SURNAMES[((i - 1) / GIVEN_NAMES.len()) % SURNAMES.len()];
            let id = format!("{i:08x}-0000-4000-8000-{i:012x}");
            let upn = format!("user{i}@deckhand.test");
            store.users.push(record(json!({
                "id": id,
                "displayName": format!("{given} {surname}"),
                "givenName": given,
                "surname": surname,
                "userPrincipalName": upn,
                "mail": upn,
                "jobTitle": "Integration Tester",
                "officeLocation": null,
                "mobilePhone": null,
                "businessPhones": [],
                "preferredLanguage": "en-US",
            })));
            for j in 1..=messages {
                let received = seed_epoch() + ChronoDuration::hours(j as i64);
                store.deliver(
                    &id,
                    &format!("Seeded message {j} for {upn}"),
                    &format!("sender{j}@example.test"),
                    &format!("Body of seeded message {j}."),
                    received,
                );
            }
        }
        store
    }

    /// The first user: the signed-in user of delegated grants.
    pub(crate) fn default_user_id(&self) -> Option<String> {
        self.users
            .first()
            .and_then(|u| u.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Finds a user by id or user principal name (case-insensitive).
    pub(crate) fn user(&self, id_or_upn: &str) -> Option<&Record> {
        self.users.iter().find(|user| {
            ["id", "userPrincipalName", "mail"].iter().any(|key| {
                user.get(*key)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(id_or_upn))
            })
        })
    }

    fn user_id(&self, id_or_upn: &str) -> Option<String> {
        self.user(id_or_upn)
            .and_then(|u| u.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub(crate) fn users(&self) -> Vec<Value> {
        self.users.iter().cloned().map(Value::Object).collect()
    }

    pub(crate) fn sent(&self) -> Vec<SentMail> {
        self.sent.clone()
    }

    /// Delivers a message into the mailbox of user `user_id`; returns the message id.
    pub(crate) fn deliver(
        &mut self,
        user_id: &str,
        subject: &str,
        from: &str,
        body: &str,
        received: DateTime<Utc>,
    ) -> String {
        self.next_message += 1;
        let id = format!("AAMkADeckhand{:010}", self.next_message);
        let at = graph_datetime(received);
        let to = self
            .users
            .iter()
            .find(|u| u.get("id").and_then(Value::as_str) == Some(user_id))
            .and_then(|u| u.get("mail"))
            .cloned()
            .unwrap_or(Value::Null);
        let preview: String = body.chars().take(255).collect();
        let message = record(json!({
            "id": id,
            "createdDateTime": at,
            "lastModifiedDateTime": at,
            "receivedDateTime": at,
            "sentDateTime": at,
            "subject": subject,
            "bodyPreview": preview,
            "importance": "normal",
            "isRead": false,
            "hasAttachments": false,
            "internetMessageId": format!("<{id}@deckhand.test>"),
            "body": { "contentType": "text", "content": body },
            "from": { "emailAddress": { "name": from, "address": from } },
            "sender": { "emailAddress": { "name": from, "address": from } },
            "toRecipients": [ { "emailAddress": { "name": to, "address": to } } ],
        }));
        self.mailboxes
            .entry(user_id.to_owned())
            .or_default()
            .push(message);
        id
    }

    /// Delivers `message` to the user `id_or_upn`; `None` if there is no such user.
    pub(crate) fn add_message(&mut self, id_or_upn: &str, message: &NewMessage) -> Option<String> {
        let user_id = self.user_id(id_or_upn)?;
        let received = message
            .received_at
            .map_or_else(now_utc, DateTime::<Utc>::from);
        Some(self.deliver(
            &user_id,
            &message.subject,
            &message.from,
            &message.body,
            received,
        ))
    }
}

fn record(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn recipient_addresses(message: &Value) -> Vec<String> {
    message
        .get("toRecipients")
        .and_then(Value::as_array)
        .map(|recipients| {
            recipients
                .iter()
                .filter_map(|r| r.pointer("/emailAddress/address").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn user_not_found(id: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

// ---- collection queries ----------------------------------------------------------------------

/// Parsed OData query options of a collection request.
#[derive(Debug)]
struct ListOptions {
    top: usize,
    skip: usize,
    filter: Vec<Condition>,
    order_by: Option<(String, bool)>,
    select: Option<Vec<String>>,
}

fn list_options(
    params: &[(String, String)],
    default_top: usize,
    default_order: Option<(&str, bool)>,
) -> Result<ListOptions, Response> {
    let top = match query_param(params, "$top") {
        Some(top) => top
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=MAX_TOP).contains(&n))
            .ok_or_else(|| bad_request(&format!("Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.")))?,
        None => default_top.min(MAX_TOP),
    };
    let skip = match query_param(params, "$skiptoken") {
        Some(token) => token
            .parse::<usize>()
            .map_err(|_| bad_request("Invalid $skiptoken."))?,
        None => 0,
    };
    let filter = match query_param(params, "$filter") {
        Some(filter) => parse_filter(filter)
            .map_err(|reason| bad_request(&format!("Invalid filter clause: {reason}")))?,
        None => Vec::new(),
    };
    let order_by = match query_param(params, "$orderby") {
        Some(order) => {
            let mut words = order.split_whitespace();
            let field = words
                .next()
                .ok_or_else(|| bad_request("Invalid $orderby: empty."))?
                .to_owned();
            let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => {
                    return Err(bad_request(&format!(
                        "Invalid $orderby direction '{other}'."
                    )));
                }
            };
            if field.contains(',') || words.next().is_some() {
                return Err(bad_request(
                    "Only one $orderby field is supported by the emulator.",
                ));
            }
            Some((field, descending))
        }
        None => default_order.map(|(field, desc)| (field.to_owned(), desc)),
    };
    let select = query_param(params, "$select").map(|select| {
        select
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    Ok(ListOptions {
        top,
        skip,
        filter,
        order_by,
        select,
    })
}

/// Parses `field op literal [and field op literal ...]`.
fn parse_filter(filter: &str) -> Result<Vec<Condition>, String> {
    let words = filter_words(filter)?;
    let mut conditions = Vec::new();
    let mut rest = words.as_slice();
    loop {
        let [(field, false), (op, false), (value, quoted), tail @ ..] = rest else {
            return Err("expected 'property operator value'".into());
        };
        if field.contains('(') {
            return Err(format!(
                "function '{field}' is not supported by the emulator"
            ));
        }
        let op = match op.to_ascii_lowercase().as_str() {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            other => return Err(format!("unsupported operator '{other}'")),
        };
        let value = if *quoted {
            Literal::Text(value.clone())
        } else {
            Literal::from_bare(value).ok_or_else(|| format!("unsupported literal '{value}'"))?
        };
        conditions.push(Condition {
            path: field.split('/').map(str::to_owned).collect(),
            op,
            value,
        });
        match tail {
            [] => return Ok(conditions),
            [(and, false), more @ ..] if and.eq_ignore_ascii_case("and") => rest = more,
            [(other, _), ..] => {
                return Err(format!(
                    "expected 'and', found '{other}' (or/not are not supported by the emulator)"
                ));
            }
        }
    }
}

/// Splits a `$filter` into words; `'quoted strings'` (with `''` escapes) are one word,
/// marked `true`.
fn filter_words(filter: &str) -> Result<Vec<(String, bool)>, String> {
    let mut words = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut text = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        text.push('\'');
                    }
                    Some('\'') => break,
                    Some(other) => text.push(other),
                    None => return Err("unterminated string literal".into()),
                }
            }
            words.push((text, true));
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '\'' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            words.push((word, false));
        }
    }
    Ok(words)
}

/// Applies the options and renders one page, with `@odata.nextLink` when more remain.
fn list_page(
    shared: &Shared,
    mut records: Vec<Record>,
    options: &ListOptions,
    params: &[(String, String)],
    path: &str,
    context: &str,
) -> Response {
    records.retain(|record| options.filter.iter().all(|c| c.matches(record)));
    if let Some((field, descending)) = &options.order_by {
        sort_records(&mut records, field, *descending);
    }
    let total = records.len();
    let end = options.skip.saturating_add(options.top).min(total);
    let page: Vec<Value> = records
        .into_iter()
        .skip(options.skip)
        .take(options.top)
        .map(|record| select(record, options.select.as_deref()))
        .collect();
    let base = &shared.base_url;
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{base}/v1.0/$metadata#{context}")),
    );
    body.insert("value".into(), Value::Array(page));
    if end < total {
        body.insert(
            "@odata.nextLink".into(),
            json!(next_link(base, path, params, end)),
        );
    }
    json_response(StatusCode::OK, Value::Object(body))
}

/// `{base}{path}?<original options>&$skiptoken=<offset>`; `$` is kept literal like Graph.
fn next_link(base: &str, path: &str, params: &[(String, String)], offset: usize) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut query: Vec<String> = params
        .iter()
        .filter(|(key, _)| key != "$skiptoken")
        .map(|(key, value)| {
            let key = match key.strip_prefix('$') {
                Some(name) => format!("${}", encode(name)),
                None => encode(key),
            };
            format!("{key}={}", encode(value))
        })
        .collect();
    query.push(format!("$skiptoken={offset}"));
    format!("{base}{path}?{}", query.join("&"))
}

/// Keeps only the `$select`ed properties (plus `id`).
fn select(record: Record, fields: Option<&[String]>) -> Value {
    let Some(fields) = fields else {
        return Value::Object(record);
    };
    let mut out = Map::new();
    if let Some(id) = record.get("id") {
        out.insert("id".into(), id.clone());
    }
    for field in fields {
        if let Some((key, value)) = lookup_field(&record, field) {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

// ---- handlers ------------------------------------------------------------------------------

/// `GET /v1.0/users`.
pub(crate) async fn list_users(
    State(shared): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = parse_query(raw.as_deref());
    let options = match list_options(&params, shared.config.graph_page_size, None) {
        Ok(options) => options,
        Err(response) => return response,
    };
    let users = lock(&shared.graph).users.clone();
    list_page(&shared, users, &options, &params, "/v1.0/users", "users")
}

/// `GET /v1.0/users/{id-or-upn}`.
pub(crate) async fn get_user(
    State(shared): State<AppState>,
    Params(id): Params<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = parse_query(raw.as_deref());
    user_response(&shared, &id, &params)
}

/// `GET /v1.0/me`.
pub(crate) async fn me(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Response {
    let params = parse_query(raw.as_deref());
    match me_id(&caller) {
        Ok(id) => user_response(&shared, id, &params),
        Err(response) => response,
    }
}

fn me_id(caller: &Caller) -> Result<&str, Response> {
    if caller.delegated {
        Ok(&caller.subject)
    } else {
        Err(bad_request(
            "/me request is only valid with delegated authentication flow.",
        ))
    }
}

fn user_response(shared: &Shared, id: &str, params: &[(String, String)]) -> Response {
    let user = lock(&shared.graph).user(id).cloned();
    let Some(user) = user else {
        return user_not_found(id);
    };
    let fields: Option<Vec<String>> =
        query_param(params, "$select").map(|s| s.split(',').map(|f| f.trim().to_owned()).collect());
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{}/v1.0/$metadata#users/$entity", shared.base_url)),
    );
    if let Value::Object(user) = select(user, fields.as_deref()) {
        body.extend(user);
    }
    json_response(StatusCode::OK, Value::Object(body))
}

/// `GET /v1.0/users/{id}/messages` (and `/mailFolders/{folder}/messages`; folders are not
/// modelled, every folder is the whole mailbox).
pub(crate) async fn user_messages(
    State(shared): State<AppState>,
    Params(id): Params<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    messages_response(
        &shared,
        &id,
        raw.as_deref(),
        &format!("/v1.0/users/{id}/messages"),
    )
}

/// `GET /v1.0/users/{id}/mailFolders/{folder}/messages`.
pub(crate) async fn user_folder_messages(
    State(shared): State<AppState>,
    Params((id, folder)): Params<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let path = format!("/v1.0/users/{id}/mailFolders/{folder}/messages");
    messages_response(&shared, &id, raw.as_deref(), &path)
}

/// `GET /v1.0/me/messages`.
pub(crate) async fn me_messages(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Response {
    match me_id(&caller) {
        Ok(id) => messages_response(&shared, id, raw.as_deref(), "/v1.0/me/messages"),
        Err(response) => response,
    }
}

/// `GET /v1.0/me/mailFolders/{folder}/messages`.
pub(crate) async fn me_folder_messages(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    Params(folder): Params<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let path = format!("/v1.0/me/mailFolders/{folder}/messages");
    match me_id(&caller) {
        Ok(id) => messages_response(&shared, id, raw.as_deref(), &path),
        Err(response) => response,
    }
}

fn messages_response(shared: &Shared, id: &str, raw: Option<&str>, path: &str) -> Response {
    let params = parse_query(raw);
    let options = match list_options(
        &params,
        shared.config.graph_page_size,
        Some(("receivedDateTime", true)),
    ) {
        Ok(options) => options,
        Err(response) => return response,
    };
    let messages = {
        let store = lock(&shared.graph);
        let Some(user_id) = store.user_id(id) else {
            return user_not_found(id);
        };
        store.mailboxes.get(&user_id).cloned().unwrap_or_default()
    };
    let context = format!("users('{id}')/messages");
    list_page(shared, messages, &options, &params, path, &context)
}

/// `POST /v1.0/users/{id}/sendMail`.
pub(crate) async fn send_mail(
    State(shared): State<AppState>,
    Params(id): Params<String>,
    body: Bytes,
) -> Response {
    send_mail_as(&shared, &id, &body)
}

/// `POST /v1.0/me/sendMail`.
pub(crate) async fn me_send_mail(
    State(shared): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    match me_id(&caller) {
        Ok(id) => send_mail_as(&shared, id, &body),
        Err(response) => response,
    }
}

/// Records the mail (see [`Emulator::sent_mail`](crate::Emulator::sent_mail)) and delivers a
/// copy to every recipient that is an emulated user. Answers 202 with an empty body.
fn send_mail_as(shared: &Shared, id: &str, body: &[u8]) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return bad_request(&format!("Unable to read the JSON request body: {error}"));
        }
    };
    let Some(message) = request.get("message").filter(|m| m.is_object()) else {
        return bad_request("The request body must contain a 'message' object.");
    };
    let recipients = recipient_addresses(message);
    if recipients.is_empty() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient is required, but none were found.",
        );
    }
    let save_to_sent_items = request
        .get("saveToSentItems")
        .and_then(Value::as_bool)
        .unwrap_or(true);

    let mut store = lock(&shared.graph);
    let Some(sender) = store.user(id).cloned() else {
        return user_not_found(id);
    };
    let sender_id = sender
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let sender_mail = sender
        .get("mail")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let subject = message
        .get("subject")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let content = message
        .pointer("/body/content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for address in &recipients {
        if let Some(recipient) = store.user_id(address) {
            store.deliver(&recipient, subject, &sender_mail, content, now_utc());
        }
    }
    store.sent.push(SentMail {
        user_id: sender_id,
        message: message.clone(),
        save_to_sent_items,
    });
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parsing() {
        let conditions = parse_filter(
            "receivedDateTime gt 2024-01-01T00:00:00Z and from/emailAddress/address eq 'o''neil@x.test'",
        )
        .unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1].path, ["from", "emailAddress", "address"]);
        assert_eq!(conditions[1].value, Literal::Text("o'neil@x.test".into()));
        for bad in [
            "",
            "startswith(subject,'a')",
            "a eq 1 or b eq 2",
            "a like 1",
            "a eq 'x",
            "a eq",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seeded_store() {
        let mut store = GraphStore::seeded(2, 3);
        assert_eq!(store.users().len(), 2);
        let first = store.default_user_id().unwrap();
        assert_eq!(store.mailboxes[&first].len(), 3);
        assert!(store.user("USER2@deckhand.test").is_some());
        assert!(
            store
                .add_message("user2@deckhand.test", &NewMessage::new("hi", "a@b.test"))
                .is_some()
        );
        assert!(
            store
                .add_message("nobody", &NewMessage::new("hi", "a@b.test"))
                .is_none()
        );
    }

    #[test]
    fn next_link_keeps_options() {
        let params = vec![
            ("$top".to_owned(), "2".to_owned()),
            (
                "$filter".to_owned(),
                "receivedDateTime gt 2024-01-01T00:00:00Z".to_owned(),
            ),
            ("$skiptoken".to_owned(), "2".to_owned()),
        ];
        let link = next_link("http://h", "/v1.0/me/messages", &params, 4);
        assert_eq!(
            link,
            "http://h/v1.0/me/messages?$top=2&$filter=receivedDateTime+gt+2024-01-01T00%3A00%3A00Z&$skiptoken=4"
        );
    }
}
