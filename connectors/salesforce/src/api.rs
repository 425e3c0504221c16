//! The Salesforce REST API as the functions use it: URLs under
//! `{instance_url}/services/data/{version}/`, and the mapping of Salesforce's error answers to
//! [`ConnectorError`]s.

use deckhand::auth::{AuthError, TokenManager};
use deckhand::connector::{ConnectorError, ErrorKind};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// A connection to one org's REST API: the authenticated client, the org's instance URL and
/// the API version.
pub(crate) struct Api<'a> {
    http: &'a ClientWithMiddleware,
    instance: Url,
    version: &'a str,
}

impl<'a> Api<'a> {
    /// Connects with the credential behind `tokens`.
    ///
    /// The instance URL comes from the latest token response (`instance_url`). A credential
    /// that holds only a refresh token has none yet: asking for an authorization first runs
    /// that initial refresh. With an access token in hand, it costs nothing.
    pub(crate) async fn connect(
        http: &'a ClientWithMiddleware,
        tokens: Option<&TokenManager>,
        version: &'a str,
    ) -> Result<Api<'a>, ConnectorError> {
        let tokens = tokens.ok_or_else(|| {
            ConnectorError::new(
                ErrorKind::InvalidCredentials,
                "this step has no Salesforce credential with OAuth2 tokens",
            )
        })?;
        tokens.authorization().await.map_err(auth_failure)?;
        let credentials = tokens.credentials();
        let instance = credentials
            .token()
            .and_then(|token| token.extra("instance_url"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::InvalidCredentials,
                    "the credential's token has no `instance_url`; authorize the credential again",
                )
            })?;
        let instance = Url::parse(instance)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.has_host())
            .ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::InvalidCredentials,
                    format!("the credential's `instance_url` ({instance}) is not an http(s) URL"),
                )
            })?;
        Ok(Api {
            http,
            instance,
            version,
        })
    }

    /// `{instance_url}/services/data/{version}/{segments…}`, each segment percent-encoded (so a
    /// record id or external id value cannot change the path).
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.instance.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear()
                .extend(["services", "data", self.version])
                .extend(segments);
        }
        url
    }

    /// A path Salesforce returned (such as `nextRecordsUrl`), resolved against the instance.
    pub(crate) fn resolve(&self, path: &str) -> Result<Url, ConnectorError> {
        let url = self.instance.join(path).map_err(|e| {
            ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!("Salesforce returned an unusable URL `{path}`: {e}"),
            )
        })?;
        // Only a path on the org's own instance: the access token goes nowhere else anyway,
        // but a foreign URL would be a confusing 401 later.
        if url.origin() != self.instance.origin() {
            return Err(ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!("Salesforce returned a URL on another host: `{path}`"),
            ));
        }
        Ok(url)
    }

    /// A GET request.
    pub(crate) fn get(&self, url: Url) -> RequestBuilder {
        self.http.get(url)
    }

    /// A POST request.
    pub(crate) fn post(&self, url: Url) -> RequestBuilder {
        self.http.post(url)
    }

    /// A PATCH request.
    pub(crate) fn patch(&self, url: Url) -> RequestBuilder {
        self.http.patch(url)
    }

    /// Runs a SOQL query (`queryAll` with `include_deleted`: deleted and archived records too)
    /// and returns the first page of results.
    pub(crate) async fn query(
        &self,
        soql: &str,
        include_deleted: bool,
    ) -> Result<QueryPage, ConnectorError> {
        let resource = if include_deleted { "queryAll" } else { "query" };
        let request = self.get(self.url(&[resource])).query(&[("q", soql)]);
        QueryPage::parse(self.send_json(request).await?)
    }

    /// The page after `page` (its `nextRecordsUrl`), or `None` after the last one.
    pub(crate) async fn next_page(
        &self,
        page: &QueryPage,
    ) -> Result<Option<QueryPage>, ConnectorError> {
        let Some(next) = &page.next_records_url else {
            return Ok(None);
        };
        let url = self.resolve(next)?;
        QueryPage::parse(self.send_json(self.get(url)).await?).map(Some)
    }

    /// Sends a request. A 2xx answer is returned with its JSON body (`None` when empty, as for
    /// 204); anything else becomes a [`ConnectorError`] named after Salesforce's `errorCode`,
    /// with the HTTP status and `Retry-After` attached.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Reply, ConnectorError> {
        let response = request
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(middleware_failure)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(deckhand::retry::retry_after);
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status, retry_after, &bytes));
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                ConnectorError::new(
                    ErrorKind::InvalidResponse,
                    format!("Salesforce answered HTTP {status} with a body that is not JSON: {e}"),
                )
            })?)
        };
        Ok(Reply { status, body })
    }

    /// Sends a request whose answer must have a JSON body.
    pub(crate) async fn send_json(&self, request: RequestBuilder) -> Result<Value, ConnectorError> {
        let reply = self.send(request).await?;
        reply.body.ok_or_else(|| {
            ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!("Salesforce answered HTTP {} without a body", reply.status),
            )
        })
    }
}

/// One page of a query result.
#[derive(Debug, Deserialize)]
pub(crate) struct QueryPage {
    /// The number of records of the whole result.
    #[serde(rename = "totalSize", default)]
    pub(crate) total_size: u64,
    /// Whether this is the last page.
    #[serde(default)]
    pub(crate) done: bool,
    /// The records of this page, each with its `attributes`.
    #[serde(default)]
    pub(crate) records: Vec<Value>,
    /// The path of the next page.
    #[serde(rename = "nextRecordsUrl")]
    next_records_url: Option<String>,
}

impl QueryPage {
    fn parse(body: Value) -> Result<Self, ConnectorError> {
        serde_json::from_value(body).map_err(|e| {
            ConnectorError::new(
                ErrorKind::InvalidResponse,
                format!("Salesforce answered the query with an unexpected body: {e}"),
            )
        })
    }
}

/// A successful answer.
#[derive(Debug)]
pub(crate) struct Reply {
    /// 200, 201, 204…
    pub(crate) status: StatusCode,
    /// The JSON body, if there was one.
    pub(crate) body: Option<Value>,
}

/// A token failure as a [`ConnectorError`] (`ReauthRequired` or `AuthError`), keeping the
/// [`AuthError`] as its source.
pub(crate) fn auth_failure(err: AuthError) -> ConnectorError {
    ConnectorError::from(err.clone()).with_source(err)
}

fn middleware_failure(err: reqwest_middleware::Error) -> ConnectorError {
    match err {
        reqwest_middleware::Error::Middleware(e) => match e.downcast::<AuthError>() {
            Ok(auth) => auth_failure(auth),
            Err(other) => ConnectorError::new(ErrorKind::HttpError, other.to_string()),
        },
        reqwest_middleware::Error::Reqwest(e) => e.into(),
    }
}

/// One element of Salesforce's error answer `[{"message", "errorCode", "fields"?}]`.
#[derive(Debug, Deserialize)]
struct SalesforceError {
    message: String,
    #[serde(rename = "errorCode")]
    error_code: String,
    #[serde(default)]
    fields: Vec<String>,
}

impl SalesforceError {
    fn describe(&self) -> String {
        if self.fields.is_empty() {
            self.message.clone()
        } else {
            format!("{} (fields: {})", self.message, self.fields.join(", "))
        }
    }
}

/// Maps an error answer: Salesforce's error array becomes an error of kind
/// `Provider(errorCode)` (several errors are joined with `; `, named after the first); other bodies get a
/// name from the status.
fn api_error(
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &[u8],
) -> ConnectorError {
    let errors: Vec<SalesforceError> = serde_json::from_slice(body).unwrap_or_default();
    let (kind, message) = match errors.first() {
        Some(first) => {
            let messages: Vec<String> = errors.iter().map(SalesforceError::describe).collect();
            (
                ErrorKind::Provider(first.error_code.clone()),
                messages.join("; "),
            )
        }
        None => fallback_error(status, body),
    };
    let error = ConnectorError::new(kind, message).with_status(status);
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}

/// Name and message for an error answer without Salesforce's error array.
fn fallback_error(status: StatusCode, body: &[u8]) -> (ErrorKind, String) {
    match status {
        // Lookups and upserts by an external id that is not unique: the body lists the
        // matching records' URLs.
        StatusCode::MULTIPLE_CHOICES => {
            let matches = serde_json::from_slice::<Vec<Value>>(body).map_or(0, |v| v.len());
            (
                ErrorKind::Provider("MULTIPLE_CHOICES".into()),
                format!("{matches} records match; use a field whose values are unique"),
            )
        }
        StatusCode::NOT_FOUND => (
            ErrorKind::Provider("NOT_FOUND".into()),
            "the requested resource does not exist".into(),
        ),
        StatusCode::TOO_MANY_REQUESTS => (
            ErrorKind::Provider("RateLimited".into()),
            "Salesforce is rate limiting this org; try again later".into(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            ErrorKind::Provider("ServiceUnavailable".into()),
            "Salesforce is unavailable; try again later".into(),
        ),
        _ => {
            let text = String::from_utf8_lossy(body);
            let excerpt: String = text.trim().chars().take(200).collect();
            let message = if excerpt.is_empty() {
                format!("Salesforce answered HTTP {status}")
            } else {
                format!("Salesforce answered HTTP {status}: {excerpt}")
            };
            (ErrorKind::HttpError, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_arrays_are_named_after_the_first_error_code() {
        let body = br#"[{"message":"Required fields are missing: [Name]","errorCode":"REQUIRED_FIELD_MISSING","fields":["Name"]},
                        {"message":"second","errorCode":"OTHER"}]"#;
        let err = api_error(StatusCode::BAD_REQUEST, None, body);
        assert_eq!(err.name(), "REQUIRED_FIELD_MISSING");
        assert_eq!(
            err.message(),
            "Required fields are missing: [Name] (fields: Name); second"
        );
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert!(!err.is_throttled());
    }

    #[test]
    fn bodies_without_error_arrays_are_named_by_status() {
        let err = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(std::time::Duration::from_secs(7)),
            b"<html>down</html>",
        );
        assert_eq!(err.name(), "ServiceUnavailable");
        assert!(err.is_throttled());
        assert!(err.stack().contains("Retry-After: 7 s"), "{}", err.stack());

        let err = api_error(StatusCode::MULTIPLE_CHOICES, None, br#"["/a","/b"]"#);
        assert_eq!(err.name(), "MULTIPLE_CHOICES");
        assert!(err.message().starts_with("2 records match"));

        let err = api_error(StatusCode::INTERNAL_SERVER_ERROR, None, b"boom");
        assert_eq!(
            (err.name(), err.message()),
            (
                "HttpError",
                "Salesforce answered HTTP 500 Internal Server Error: boom"
            )
        );
    }
}
