//! {{title}}: a Deckhand connector with one action, `getItem`, on an HTTP API that takes an API
//! key. The key is a credential field (`apiKey`, a password field on the platform), sent with
//! every request in the [`API_KEY_HEADER`] header.
//!
//! `cargo run -- validate` checks component.json against the router; README.md has the rest.

use std::process::ExitCode;

use async_trait::async_trait;
use deckhand::connector::{
    Body, Config, Connector, ConnectorError, Context, ErrorKind, Message, Router, Verification,
    VerifyContext,
};
use deckhand::credentials::{Credentials, Secret};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

#[cfg(test)]
mod tests;

/// The header that carries the API key. Some APIs want `Authorization: Bearer KEY` instead:
/// change it here and in `src/tests.rs`.
const API_KEY_HEADER: &str = "X-API-Key";

/// The connector: one value serves every message of a step. Settings that belong to the
/// connector rather than to a credential (timeouts, retry bounds) go here.
#[derive(Default)]
pub struct App;

/// The credential's fields (component.json `credentials.fields`). `Secret` keeps the key out of
/// `Debug` output and logs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    api_base: String,
    api_key: Secret,
}

impl Settings {
    fn from_fields(fields: &Map<String, Value>) -> Result<Self, ConnectorError> {
        serde_json::from_value(Value::Object(fields.clone())).map_err(|e| {
            ConnectorError::new(ErrorKind::InvalidCredentials, format!("credentials: {e}"))
        })
    }
}

/// `getItem`'s input: the message body (component.json `metadata.in`).
#[derive(Deserialize)]
struct GetItem {
    id: String,
}

/// `{api_base}/{segments…}`, each segment percent-encoded.
fn api_url(api_base: &str, segments: &[&str]) -> Result<Url, ConnectorError> {
    let invalid = |reason: String| {
        ConnectorError::new(
            ErrorKind::InvalidConfiguration,
            format!("apiBase `{api_base}`: {reason}"),
        )
    };
    let mut url = Url::parse(api_base).map_err(|e| invalid(e.to_string()))?;
    url.path_segments_mut()
        .map_err(|()| invalid("not an http(s) URL".into()))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// `getItem`: fetches one item and emits it.
async fn get_item(
    settings: Config<Settings>,
    Body(input): Body<GetItem>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let url = api_url(&settings.api_base, &["items", &input.id])?;
    let response = ctx
        .http()
        .get(url)
        .header(API_KEY_HEADER, settings.api_key.expose())
        .send()
        .await?;
    if response.status() == 404 {
        return Err(ConnectorError::new(
            ErrorKind::NotFound,
            format!("no item has the id `{}`", input.id),
        ));
    }
    let item: Value = response.error_for_status()?.json().await?;
    ctx.emit_data(Message::new(item)).await?;
    Ok(())
}

#[async_trait]
impl Connector for App {
    fn router(&self) -> Router<Self> {
        Router::new().action("getItem", get_item)
    }

    // No `auth()`: its default, `Ok(None)`, means no OAuth2 tokens; the handlers send the key.

    async fn verify_credentials(
        &self,
        credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        let settings = Settings::from_fields(credentials.fields())?;
        let status = ctx
            .http()
            .get(api_url(&settings.api_base, &["me"])?)
            .header(API_KEY_HEADER, settings.api_key.expose())
            .send()
            .await?
            .status();
        Ok(if status.is_success() {
            Verification::Verified
        } else {
            Verification::NotVerified {
                reason: format!("the API answered {status} to GET /me"),
            }
        })
    }
}

fn main() -> ExitCode {
    deckhand::main(App, include_str!("../component.json"))
}
