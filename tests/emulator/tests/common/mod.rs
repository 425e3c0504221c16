//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "not every test file uses every helper")]

use deckhand_emulator::{Emulator, EmulatorConfig};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// A response reduced to what the tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn str(&self, field: &str) -> &str {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string '{field}' in {}", self.body))
    }
}

pub async fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.expect("emulator starts")
}

/// An HTTP client with a timeout, so a broken emulator fails tests instead of hanging them.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// POSTs a token request with the first client's credentials in HTTP Basic.
pub async fn token(emulator: &Emulator, url: &str, form: &[(&str, &str)]) -> Reply {
    let client = emulator.client();
    let response = http()
        .post(url)
        .basic_auth(&client.id, Some(&client.secret))
        .form(form)
        .send()
        .await
        .expect("token request");
    Reply::from(response).await
}

/// POSTs a raw form body without client authentication headers.
pub async fn post_form(url: &str, form: &[(&str, &str)]) -> Reply {
    let response = http().post(url).form(form).send().await.expect("request");
    Reply::from(response).await
}

/// Microsoft client-credentials grant for Graph.
pub async fn graph_app_token(emulator: &Emulator) -> Reply {
    token(
        emulator,
        &emulator.microsoft_token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await
}

/// Refresh-token grant on `url`.
pub async fn refresh(emulator: &Emulator, url: &str, refresh_token: &str) -> Reply {
    token(
        emulator,
        url,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// Delegated Graph access token from a freshly seeded grant.
pub async fn graph_user_token(emulator: &Emulator) -> String {
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let reply = refresh(emulator, &emulator.microsoft_token_url(), &rt).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.str("access_token").to_owned()
}

/// Salesforce access token from a freshly seeded grant.
pub async fn salesforce_token(emulator: &Emulator) -> String {
    let rt = emulator.issue_refresh_token(&emulator.client().id);
    let reply = refresh(emulator, &emulator.salesforce_token_url(), &rt).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.str("access_token").to_owned()
}

/// GET with a Bearer token; `url` may be relative to the emulator (starts with `/`).
pub async fn get(emulator: &Emulator, url: &str, token: &str) -> Reply {
    let url = absolute(emulator, url);
    let response = http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    Reply::from(response).await
}

/// Sends `body` as JSON with a Bearer token.
pub async fn send_json(
    emulator: &Emulator,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: &Value,
) -> Reply {
    let url = absolute(emulator, url);
    let response = http()
        .request(method, url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request");
    Reply::from(response).await
}

fn absolute(emulator: &Emulator, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{url}", emulator.base_url())
    } else {
        url.to_owned()
    }
}

/// Unix time now, in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
