//! Salesforce-like REST API under `/services/data/v{version}/`, plus `userinfo` and the
//! identity URL. Records live in memory; see [`crate::soql`] for the query subset.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Duration as ChronoDuration;
use serde_json::{Map, Value, json};

use crate::filter::{Record, lookup_field, sort_records};
use crate::respond::{Params, json_response, parse_query, query_param, salesforce_error};
use crate::soql;
use crate::state::{AppState, lock};
use crate::time::{now_utc, salesforce_datetime, seed_epoch};

/// Organization id of the emulated org (18-character form).
pub(crate) const ORG_ID: &str = "00D000000000001AAA";
/// User id of the emulated integration user (18-character form).
pub(crate) const USER_ID: &str = "005000000000001AAA";
const USERNAME: &str = "integration@deckhand.test";
/// Fields maintained by the emulator; clients may not write them.
const SYSTEM_FIELDS: [&str; 4] = ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"];
/// How many query cursors are kept (oldest are dropped first).
const MAX_CURSORS: usize = 1000;

/// The identity URL returned as `id` by the token endpoint.
pub(crate) fn identity_url(base_url: &str) -> String {
    format!("{base_url}/id/{ORG_ID}/{USER_ID}")
}

#[derive(Debug)]
struct Table {
    /// The object's canonical spelling (`Account`).
    name: String,
    records: Vec<Record>,
}

/// Results of a query that did not fit in one page.
#[derive(Debug)]
struct Cursor {
    records: Vec<Value>,
    page_size: usize,
}

/// In-memory sObject store.
#[derive(Debug, Default)]
pub(crate) struct SalesforceStore {
    /// Keyed by lower-cased object name (object names are case-insensitive).
    tables: BTreeMap<String, Table>,
    next_id: u64,
    cursors: BTreeMap<u64, Cursor>,
    next_cursor: u64,
}

const INDUSTRIES: [&str; 5] = [
    "Technology",
    "Manufacturing",
    "Retail",
    "Finance",
    "Healthcare",
];
const FIRST_NAMES: [&str; 6] = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken"];
const LAST_NAMES: [&str; 6] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson",
];

impl SalesforceStore {
    /// A store seeded with `accounts` Accounts and `contacts` Contacts. Seeded
    /// `LastModifiedDate`s are deterministic: Account *i* at 2024-01-01T00:00Z + *i* hours,
    /// Contact *i* at 2024-01-01T00:00Z + *i* × 30 minutes.
    pub(crate) fn seeded(accounts: usize, contacts: usize) -> Self {
        let mut store = Self::default();
        store.ensure_table("Account");
        store.ensure_table("Contact");
        let mut account_ids = Vec::with_capacity(accounts);
        for i in 1..=accounts {
            let at = salesforce_datetime(seed_epoch() + ChronoDuration::hours(i as i64));
            let id = store.insert(
                "Account",
                record(json!({
                    "Name": format!("Account {i:04}"),
                    "AccountNumber": format!("ACC-{i:05}"),
                    "External_Id__c": format!("EXT-A-{i:05}"),
                    "Industry": INDUSTRIES[i % INDUSTRIES.len()],
                    "NumberOfEmployees": i * 10,
                    "CreatedDate": at,
                    "LastModifiedDate": at,
                    "SystemModstamp": at,
                })),
            );
            account_ids.push(id);
        }
        for i in 1..=contacts {
            let at = salesforce_datetime(seed_epoch() + ChronoDuration::minutes(30 * i as i64));
            let first = FIRST_NAMES[i % FIRST_NAMES.len()];
            let last = LAST_NAMES[(i / FIRST_NAMES.len()) % LAST_NAMES.len()];
            let account_id = account_ids.get(i % account_ids.len().max(1)).cloned();
            store.insert(
                "Contact",
                record(json!({
                    "FirstName": first,
                    "LastName": last,
                    "Name": format!("{first} {last}"),
                    "Email": format!("contact{i:04}@example.test"),
                    "External_Id__c": format!("EXT-C-{i:05}"),
                    "AccountId": account_id,
                    "CreatedDate": at,
                    "LastModifiedDate": at,
                    "SystemModstamp": at,
                })),
            );
        }
        store
    }

    fn ensure_table(&mut self, object: &str) -> &mut Table {
        self.tables
            .entry(object.to_ascii_lowercase())
            .or_insert_with(|| Table {
                name: object.to_owned(),
                records: Vec::new(),
            })
    }

    fn table(&self, object: &str) -> Option<&Table> {
        self.tables.get(&object.to_ascii_lowercase())
    }

    /// Inserts a record, assigning `Id` and filling the system timestamps that are absent.
    /// Returns the new id.
    pub(crate) fn insert(&mut self, object: &str, mut fields: Record) -> String {
        self.next_id += 1;
        let id = format!("{}{:012}AAA", id_prefix(object), self.next_id);
        let now = salesforce_datetime(now_utc());
        for field in ["CreatedDate", "LastModifiedDate", "SystemModstamp"] {
            if lookup_field(&fields, field).is_none() {
                fields.insert(field.to_owned(), json!(now));
            }
        }
        if lookup_field(&fields, "Name").is_none() {
            let part = |f| {
                lookup_field(&fields, f)
                    .and_then(|(_, v)| v.as_str())
                    .map(str::to_owned)
            };
            if let (Some(first), Some(last)) = (part("FirstName"), part("LastName")) {
                fields.insert("Name".to_owned(), json!(format!("{first} {last}")));
            }
        }
        let mut record = Map::new();
        record.insert("Id".to_owned(), json!(id));
        record.extend(fields);
        self.ensure_table(object).records.push(record);
        id
    }

    /// Copies of all records of `object` (with `attributes`).
    pub(crate) fn records(&self, object: &str, version: &str) -> Vec<Value> {
        self.table(object)
            .map(|table| {
                table
                    .records
                    .iter()
                    .map(|r| with_attributes(&table.name, record_id(r), r, version))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Indices of records of `object` whose `field` equals `value`.
    fn find(&self, object: &str, field: &str, value: &str) -> Vec<usize> {
        let Some(table) = self.table(object) else {
            return Vec::new();
        };
        table
            .records
            .iter()
            .enumerate()
            .filter(|(_, record)| {
                lookup_field(record, field).is_some_and(|(_, actual)| match actual {
                    Value::String(s) => s.eq_ignore_ascii_case(value),
                    Value::Number(n) => n.to_string() == value,
                    _ => false,
                })
            })
            .map(|(index, _)| index)
            .collect()
    }

    fn remember_cursor(&mut self, records: Vec<Value>, page_size: usize) -> u64 {
        self.next_cursor += 1;
        self.cursors
            .insert(self.next_cursor, Cursor { records, page_size });
        while self.cursors.len() > MAX_CURSORS {
            self.cursors.pop_first();
        }
        self.next_cursor
    }
}

fn record(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Key prefix of record ids, per object.
fn id_prefix(object: &str) -> &'static str {
    match object.to_ascii_lowercase().as_str() {
        "account" => "001",
        "contact" => "003",
        "user" => "005",
        "opportunity" => "006",
        "lead" => "00Q",
        "case" => "500",
        _ => "a00",
    }
}

/// A record as the API returns it: `attributes` (type and URL of record `id`) first, then
/// `fields`.
fn with_attributes(object: &str, id: &str, fields: &Record, version: &str) -> Value {
    let mut out = Map::new();
    out.insert(
        "attributes".to_owned(),
        json!({ "type": object, "url": format!("/services/data/{version}/sobjects/{object}/{id}") }),
    );
    out.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    Value::Object(out)
}

fn record_id(record: &Record) -> &str {
    record.get("Id").and_then(Value::as_str).unwrap_or_default()
}

/// `v60.0`-style version segment check.
fn check_version(version: &str) -> Result<(), Response> {
    let valid = version
        .strip_prefix('v')
        .and_then(|number| number.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
    if valid { Ok(()) } else { Err(not_found()) }
}

fn not_found() -> Response {
    salesforce_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

fn parse_record_body(body: &[u8]) -> Result<Record, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            if let Some(field) = SYSTEM_FIELDS
                .iter()
                .find(|f| lookup_field(&map, f).is_some())
            {
                return Err(salesforce_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    &format!(
                        "Unable to create/update fields: {field}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."
                    ),
                ));
            }
            Ok(map)
        }
        Ok(_) => Err(salesforce_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "The request body must be a JSON object",
        )),
        Err(error) => Err(salesforce_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            &format!("Unable to parse the request body: {error}"),
        )),
    }
}

// ---- handlers -------------------------------------------------------------------------------

/// `GET /services/data/` — the API versions list.
pub(crate) async fn versions() -> Response {
    let list: Vec<Value> = [
        ("Winter '24", "59.0"),
        ("Spring '24", "60.0"),
        ("Summer '24", "61.0"),
        ("Winter '25", "62.0"),
    ]
    .iter()
    .map(|(label, version)| {
        json!({ "label": label, "url": format!("/services/data/v{version}"), "version": version })
    })
    .collect();
    json_response(StatusCode::OK, Value::Array(list))
}

/// `GET /services/data/v{version}` — the resources of a version.
pub(crate) async fn resources(Params(version): Params<String>) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let base = format!("/services/data/{version}");
    json_response(
        StatusCode::OK,
        json!({
            "query": format!("{base}/query"),
            "queryAll": format!("{base}/queryAll"),
            "sobjects": format!("{base}/sobjects"),
        }),
    )
}

/// `GET /services/data/v{version}/query?q=SOQL`.
pub(crate) async fn query(
    State(shared): State<AppState>,
    Params(version): Params<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let params = parse_query(raw.as_deref());
    let Some(q) = query_param(&params, "q").filter(|q| !q.trim().is_empty()) else {
        return salesforce_error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "A query string has to be specified (parameter 'q').",
        );
    };
    let parsed = match soql::parse(q) {
        Ok(parsed) => parsed,
        Err(reason) => {
            return salesforce_error(
                StatusCode::BAD_REQUEST,
                "MALFORMED_QUERY",
                &format!("{reason} (query: {q})"),
            );
        }
    };
    let page_size = batch_size(&headers).unwrap_or(shared.config.salesforce_page_size);

    let mut store = lock(&shared.salesforce);
    let Some(table) = store.table(&parsed.object) else {
        return salesforce_error(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!("sObject type '{}' is not supported.", parsed.object),
        );
    };
    let mut rows: Vec<Record> = table
        .records
        .iter()
        .filter(|record| parsed.conditions.iter().all(|c| c.matches(record)))
        .cloned()
        .collect();
    if let Some((field, descending)) = &parsed.order_by {
        sort_records(&mut rows, field, *descending);
    }
    let rows = rows
        .into_iter()
        .skip(parsed.offset.unwrap_or(0))
        .take(parsed.limit.unwrap_or(usize::MAX));
    let records: Vec<Value> = rows
        .map(|record| {
            let mut projected = Map::new();
            for field in &parsed.fields {
                let (key, value) = lookup_field(&record, field)
                    .map_or((field.clone(), Value::Null), |(k, v)| {
                        (k.clone(), v.clone())
                    });
                projected.insert(key, value);
            }
            with_attributes(&table.name, record_id(&record), &projected, &version)
        })
        .collect();

    let total = records.len();
    if total <= page_size {
        return query_page(total, records, None);
    }
    let first_page = records[..page_size].to_vec();
    let cursor = store.remember_cursor(records, page_size);
    let next = format!(
        "/services/data/{version}/query/{}",
        make_locator(cursor, page_size)
    );
    query_page(total, first_page, Some(next))
}

/// `GET /services/data/v{version}/query/{locator}` — the next page of a query.
pub(crate) async fn query_more(
    State(shared): State<AppState>,
    Params((version, locator)): Params<(String, String)>,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let invalid = || {
        salesforce_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        )
    };
    let Some((cursor, offset)) = parse_locator(&locator) else {
        return invalid();
    };
    let store = lock(&shared.salesforce);
    let Some(cursor_data) = store.cursors.get(&cursor) else {
        return invalid();
    };
    let total = cursor_data.records.len();
    if offset >= total {
        return invalid();
    }
    let end = (offset + cursor_data.page_size).min(total);
    let page = cursor_data.records[offset..end].to_vec();
    let next = (end < total).then(|| {
        format!(
            "/services/data/{version}/query/{}",
            make_locator(cursor, end)
        )
    });
    query_page(total, page, next)
}

fn query_page(total: usize, records: Vec<Value>, next: Option<String>) -> Response {
    let mut body = json!({ "totalSize": total, "done": next.is_none(), "records": records });
    if let Some(next) = next {
        body["nextRecordsUrl"] = json!(next);
    }
    json_response(StatusCode::OK, body)
}

/// `01g000000000000042-2000`: cursor number and offset of the next page.
fn make_locator(cursor: u64, offset: usize) -> String {
    format!("01g{cursor:015}-{offset}")
}

fn parse_locator(locator: &str) -> Option<(u64, usize)> {
    let (cursor, offset) = locator.strip_prefix("01g")?.split_once('-')?;
    Some((cursor.parse().ok()?, offset.parse().ok()?))
}

/// `Sforce-Query-Options: batchSize=N`.
fn batch_size(headers: &HeaderMap) -> Option<usize> {
    let options = headers.get("sforce-query-options")?.to_str().ok()?;
    options
        .split(',')
        .filter_map(|option| option.trim().split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("batchSize"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .filter(|&size: &usize| size > 0)
}

/// `POST /services/data/v{version}/sobjects/{Object}` — create.
pub(crate) async fn create(
    State(shared): State<AppState>,
    Params((version, object)): Params<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let fields = match parse_record_body(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let id = lock(&shared.salesforce).insert(&object, fields);
    json_response(
        StatusCode::CREATED,
        json!({ "id": id, "success": true, "errors": [] }),
    )
}

/// `GET /services/data/v{version}/sobjects/{Object}/{id}` — lookup by id.
pub(crate) async fn get_by_id(
    State(shared): State<AppState>,
    Params((version, object, id)): Params<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    get_by_field(
        State(shared),
        Params((version, object, "Id".to_owned(), id)),
        RawQuery(raw),
    )
    .await
}

/// `GET /services/data/v{version}/sobjects/{Object}/{Field}/{value}` — lookup by an external
/// id field. Several matches answer 300 with the matching record URLs, like Salesforce.
/// `?fields=A,B` limits the returned fields.
pub(crate) async fn get_by_field(
    State(shared): State<AppState>,
    Params((version, object, field, value)): Params<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let params = parse_query(raw.as_deref());
    let store = lock(&shared.salesforce);
    let Some(table) = store.table(&object) else {
        return not_found();
    };
    let matches = store.find(&object, &field, &value);
    match matches.as_slice() {
        [] => not_found(),
        [index] => {
            let mut record = table.records[*index].clone();
            if let Some(fields) = query_param(&params, "fields") {
                let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
                record.retain(|key, _| {
                    key == "Id" || wanted.iter().any(|w| w.eq_ignore_ascii_case(key))
                });
            }
            let id = record_id(&record).to_owned();
            json_response(
                StatusCode::OK,
                with_attributes(&table.name, &id, &record, &version),
            )
        }
        several => {
            let urls: Vec<Value> = several
                .iter()
                .map(|&index| {
                    let id = record_id(&table.records[index]);
                    json!(format!(
                        "/services/data/{version}/sobjects/{}/{id}",
                        table.name
                    ))
                })
                .collect();
            json_response(StatusCode::MULTIPLE_CHOICES, Value::Array(urls))
        }
    }
}

/// `PATCH /services/data/v{version}/sobjects/{Object}/{id}` — update by id (204).
pub(crate) async fn update_by_id(
    State(shared): State<AppState>,
    Params((version, object, id)): Params<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let fields = match parse_record_body(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let mut store = lock(&shared.salesforce);
    match store.find(&object, "Id", &id).first() {
        Some(&index) => {
            update_record(&mut store, &object, index, fields);
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(),
    }
}

/// `PATCH /services/data/v{version}/sobjects/{Object}/{Field}/{value}` — upsert by external
/// id: 201 `{"id", "success", "errors", "created": true}` when inserted, 204 when updated,
/// 300 when several records match.
pub(crate) async fn upsert(
    State(shared): State<AppState>,
    Params((version, object, field, value)): Params<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(response) = check_version(&version) {
        return response;
    }
    let mut fields = match parse_record_body(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    if field.eq_ignore_ascii_case("Id") {
        // `PATCH .../Account/Id/{id}` is an update by id.
        return update_by_id(State(shared), Params((version, object, value)), body).await;
    }
    let mut store = lock(&shared.salesforce);
    let matches = store.find(&object, &field, &value);
    match matches.as_slice() {
        [] => {
            // Keep the caller's spelling of the external id field unless the body has it.
            if lookup_field(&fields, &field).is_none() {
                fields.insert(field.clone(), json!(value));
            }
            let id = store.insert(&object, fields);
            json_response(
                StatusCode::CREATED,
                json!({ "id": id, "success": true, "errors": [], "created": true }),
            )
        }
        [index] => {
            update_record(&mut store, &object, *index, fields);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => salesforce_error(
            StatusCode::MULTIPLE_CHOICES,
            "MULTIPLE_CHOICES",
            &format!("More than one record of {object} has {field} = {value}"),
        ),
    }
}

fn update_record(store: &mut SalesforceStore, object: &str, index: usize, fields: Record) {
    let now = salesforce_datetime(now_utc());
    let table = store.ensure_table(object);
    if let Some(record) = table.records.get_mut(index) {
        for (key, value) in fields {
            // Update the existing key (whatever its case) or add a new one.
            let existing = record
                .keys()
                .find(|k| k.eq_ignore_ascii_case(&key))
                .cloned()
                .unwrap_or(key);
            record.insert(existing, value);
        }
        record.insert("LastModifiedDate".to_owned(), json!(now));
        record.insert("SystemModstamp".to_owned(), json!(now));
    }
}

/// `GET /services/oauth2/userinfo`.
pub(crate) async fn userinfo(State(shared): State<AppState>) -> Response {
    let base = &shared.base_url;
    json_response(
        StatusCode::OK,
        json!({
            "sub": identity_url(base),
            "user_id": USER_ID,
            "organization_id": ORG_ID,
            "preferred_username": USERNAME,
            "nickname": "integration",
            "name": "Integration User",
            "email": USERNAME,
            "email_verified": true,
            "zoneinfo": "Etc/UTC",
            "locale": "en_US",
            "active": true,
            "user_type": "STANDARD",
            "urls": {
                "rest": format!("{base}/services/data/v{{version}}/"),
                "query": format!("{base}/services/data/v{{version}}/query/"),
                "sobjects": format!("{base}/services/data/v{{version}}/sobjects/"),
            },
        }),
    )
}

/// `GET /id/{org}/{user}` — the identity URL (`id` in token responses).
pub(crate) async fn identity(
    State(shared): State<AppState>,
    Params((org, user)): Params<(String, String)>,
) -> Response {
    if org != ORG_ID || user != USER_ID {
        return not_found();
    }
    let base = &shared.base_url;
    json_response(
        StatusCode::OK,
        json!({
            "id": identity_url(base),
            "user_id": USER_ID,
            "organization_id": ORG_ID,
            "username": USERNAME,
            "display_name": "Integration User",
            "email": USERNAME,
            "active": true,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_and_lookup() {
        let store = SalesforceStore::seeded(3, 4);
        assert_eq!(store.records("Account", "v60.0").len(), 3);
        assert_eq!(store.records("contact", "v60.0").len(), 4);
        assert_eq!(
            store.find("Account", "external_id__c", "ext-a-00002").len(),
            1
        );
        let id = store.records("Account", "v60.0")[0]["Id"].clone();
        assert_eq!(id.as_str().map(str::len), Some(18));
    }

    #[test]
    fn locators_round_trip() {
        assert_eq!(parse_locator(&make_locator(42, 2000)), Some((42, 2000)));
        assert_eq!(parse_locator("garbage"), None);
        assert!(check_version("v60.0").is_ok());
        assert!(check_version("60.0").is_err());
        assert!(check_version("v60").is_err());
    }
}
