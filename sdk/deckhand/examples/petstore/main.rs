//! A tiny Deckhand connector for an OAuth2-protected pet store API.
//!
//! `cargo run -p deckhand --example petstore -- exec getPets --credentials creds.json --message msg.json`

use std::process::ExitCode;

use async_trait::async_trait;
use deckhand::auth::{Grant, Strategy, TokenEndpoint};
use deckhand::connector::{
    AuthSetup, Config, Connector, ConnectorError, Context, ErrorKind, ErrorPayload, Message,
    Router, Snapshot, Verification, VerifyContext,
};
use deckhand::credentials::Credentials;
use serde::Deserialize;
use serde_json::{Value, json};

struct Petstore;

fn field<'a>(credentials: &'a Credentials, name: &str) -> Result<&'a str, ConnectorError> {
    credentials.field_str(name).ok_or_else(|| {
        ConnectorError::new(
            ErrorKind::InvalidCredentials,
            format!("credential field `{name}` is required"),
        )
    })
}

/// What every function reads from the step (here a credential field).
#[derive(Deserialize)]
struct Api {
    #[serde(rename = "apiBase")]
    base: String,
}

/// `newPets`' snapshot: the highest id emitted so far.
#[derive(Deserialize)]
struct Position {
    #[serde(rename = "lastId", default)]
    last_id: u64,
}

async fn get_pets(api: Config<Api>, message: Message, ctx: Context) -> Result<(), ConnectorError> {
    let ids = message
        .body
        .get("ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for id in ids {
        let url = format!("{}/pets/{id}", api.base);
        let response = ctx.http().get(url).send().await?;
        if response.status() == 404 {
            ctx.emit_error(ErrorPayload {
                name: "NotFound".into(),
                message: format!("pet {id} does not exist"),
                stack: String::new(),
            })
            .await?;
            continue;
        }
        let pet: Value = response.error_for_status()?.json().await?;
        ctx.emit_data(Message::new(pet)).await?;
    }
    Ok(())
}

async fn new_pets(
    api: Config<Api>,
    Snapshot(position): Snapshot<Position>,
    ctx: Context,
) -> Result<(), ConnectorError> {
    let since = position.last_id;
    let pets: Vec<Value> = ctx
        .http()
        .get(format!("{}/pets", api.base))
        .query(&[("since", since)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut last = since;
    for pet in pets {
        last = last.max(pet.get("id").and_then(Value::as_u64).unwrap_or(last));
        ctx.emit_data(Message::new(pet)).await?;
    }
    ctx.emit_snapshot(json!({ "lastId": last })).await?;
    Ok(())
}

#[async_trait]
impl Connector for Petstore {
    fn router(&self) -> Router<Self> {
        Router::new()
            .trigger("newPets", new_pets)
            .action("getPets", get_pets)
    }

    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let endpoint = TokenEndpoint::new(
            field(credentials, "tokenUrl")?,
            field(credentials, "clientId")?,
        )?
        .client_secret(field(credentials, "clientSecret")?)
        .grant(Grant::RefreshToken);
        Ok(Some(
            AuthSetup::new(endpoint)
                .strategy(Strategy::default())
                .api_origin(field(credentials, "apiBase")?),
        ))
    }

    async fn verify_credentials(
        &self,
        credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        let url = format!("{}/me", field(credentials, "apiBase")?);
        let status = ctx.http().get(url).send().await?.status();
        Ok(if status.is_success() {
            Verification::Verified
        } else {
            Verification::NotVerified {
                reason: format!("the API answered {status}"),
            }
        })
    }
}

fn main() -> ExitCode {
    deckhand::main(Petstore, include_str!("component.json"))
}
