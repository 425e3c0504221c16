//! A tiny Deckhand connector for an OAuth2-protected pet store API.
//!
//! `cargo run -p deckhand --example petstore -- exec getPets --credentials creds.json --message msg.json`

use std::process::ExitCode;

use async_trait::async_trait;
use deckhand::auth::{Grant, Strategy, TokenEndpoint};
use deckhand::connector::{
    AuthSetup, Connector, ConnectorError, Context, ErrorKind, ErrorPayload, Function, Input,
    Message, Verification, VerifyContext,
};
use deckhand::credentials::Credentials;
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

#[async_trait]
impl Connector for Petstore {
    fn functions(&self) -> Vec<Function> {
        vec![Function::trigger("newPets"), Function::action("getPets")]
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

    async fn process(
        &self,
        function: &str,
        input: Input,
        ctx: &Context,
    ) -> Result<(), ConnectorError> {
        let base = input.config_str("apiBase")?.to_owned();
        match function {
            "getPets" => {
                let ids = input
                    .message
                    .body
                    .get("ids")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for id in ids {
                    let response = ctx.http().get(format!("{base}/pets/{id}")).send().await?;
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
            "newPets" => {
                let since = input
                    .snapshot
                    .get("lastId")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let pets: Vec<Value> = ctx
                    .http()
                    .get(format!("{base}/pets"))
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
            other => Err(ConnectorError::new(
                ErrorKind::UnknownFunction,
                other.to_owned(),
            )),
        }
    }
}

fn main() -> ExitCode {
    deckhand::main(Petstore, include_str!("component.json"))
}
