//! {{title}}: a Deckhand connector with one action, `getItem`, on an HTTP API that takes OAuth2
//! access tokens from the refresh token grant. The user signs in once (the platform stores the
//! tokens under the credential's `oauth` field); the SDK refreshes the access token before it
//! expires or once after a 401, and persists every rotated refresh token before it uses the new
//! access token.
//!
//! `cargo run -- validate` checks component.json against the router; README.md has the rest.

use std::process::ExitCode;

use async_trait::async_trait;
use deckhand::auth::{Grant, Strategy, TokenEndpoint};
use deckhand::connector::{
    AuthSetup, Body, Config, Connector, ConnectorError, Context, ErrorKind, Message, Router,
    Verification, VerifyContext,
};
use deckhand::credentials::{Credentials, Secret};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

#[cfg(test)]
mod tests;

/// The connector: one value serves every message of a step. Settings that belong to the
/// connector rather than to a credential (timeouts, retry bounds) go here.
#[derive(Default)]
pub struct App;

/// The credential's fields (component.json `credentials.fields`; the token is not among them).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    api_base: String,
    token_url: String,
    client_id: String,
    client_secret: Secret,
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

/// `getItem`: fetches one item and emits it. `ctx.http()` adds the access token (to requests
/// for `apiBase`'s origin only), refreshing it when needed.
async fn get_item(
    settings: Config<Settings>,
    Body(input): Body<GetItem>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let url = api_url(&settings.api_base, &["items", &input.id])?;
    let response = ctx.http().get(url).send().await?;
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

    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let settings = Settings::from_fields(credentials.fields())?;
        if credentials
            .token()
            .and_then(|t| t.refresh_token())
            .is_none()
        {
            return Err(ConnectorError::new(
                ErrorKind::InvalidCredentials,
                "the credential has no refresh token in `oauth`: sign in again",
            ));
        }
        let endpoint = TokenEndpoint::new(&settings.token_url, settings.client_id)?
            .client_secret(settings.client_secret)
            .grant(Grant::RefreshToken);
        Ok(Some(
            AuthSetup::new(endpoint)
                .strategy(Strategy::default())
                .api_origin(settings.api_base),
        ))
    }

    async fn verify_credentials(
        &self,
        credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        // A token proves the client, its secret and the sign-in.
        if let Some(manager) = ctx.token_manager()
            && let Err(err) = manager.authorization().await
        {
            if err.is_reauth_required() {
                return Ok(Verification::NotVerified {
                    reason: err.to_string(),
                });
            }
            return Err(err.into());
        }
        let settings = Settings::from_fields(credentials.fields())?;
        let status = ctx
            .http()
            .get(api_url(&settings.api_base, &["me"])?)
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
