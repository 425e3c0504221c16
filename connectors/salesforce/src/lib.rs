//! # deckhand-salesforce
//!
//! A Salesforce connector for Deckhand, and the example to copy for an OAuth2 connector whose
//! provider sends no `expires_in`.
//!
//! | function | kind | what it does |
//! | --- | --- | --- |
//! | `query` | action | runs the SOQL of `body.query`, follows `nextRecordsUrl` to the last page; one message per record, or per page (`emitBehavior`) |
//! | `create` | action | creates a record of `sobject` from the body |
//! | `upsert` | action | creates or updates by `externalIdField` (its value is read from the body) |
//! | `lookup` | action | reads one record by `Id` or by `lookupField`, value in `body.value` |
//! | `getUpdatedObjects` | polling trigger | emits records of `sobject` modified since the last poll; see [the position](crate#polling-position) |
//!
//! ## Credentials
//!
//! The credential holds `prodEnv` (`login` = production, `test` = sandbox), an optional
//! `loginUrl` (a My Domain URL, or the emulator in tests, used instead of
//! `https://{prodEnv}.salesforce.com` as the token host) and the `oauth` token response of the
//! authorization-code flow (`access_token`, `refresh_token`, `instance_url`, …). The connected
//! app (client id and secret) is not part of the credential: [`Salesforce::from_env`] reads it
//! from `OAUTH_CLIENT_ID` / `OAUTH_CLIENT_SECRET`, as the platform's `{{OAUTH_CLIENT_ID}}`
//! placeholders do; [`Salesforce::new`] takes it directly.
//!
//! Requests go to `{instance_url}/services/data/{version}/…`, where `instance_url` comes from
//! the latest token response and the version from `SALESFORCE_API_VERSION` or
//! [`Salesforce::with_api_version`] (default [`DEFAULT_API_VERSION`]).
//!
//! ## Token lifecycle
//!
//! * **Refresh on 401 only** ([`Strategy::on_401`]). Salesforce's token response has no
//!   `expires_in` and its access tokens are opaque, so there is no expiry to refresh ahead of:
//!   the session timeout is an org setting the client cannot see. The token is used until
//!   Salesforce answers 401 `INVALID_SESSION_ID`; the SDK then refreshes through its
//!   single-flight gate and sends the request **once** more. A second 401 is an error
//!   (`AuthError`), not a loop. Any number of concurrent requests failing with the same
//!   expired token cause one refresh. (Refreshing on a timer would cost token requests and, with
//!   rotation, gain nothing.)
//! * **Rotation-safe.** With Refresh Token Rotation (enforced by Salesforce from 2026) every
//!   refresh returns a new refresh token and invalidates the old one; presenting a spent one
//!   revokes the whole grant. The SDK persists the rotated token set (the credentials file, or
//!   an `updateKeys` confirmed by the platform) *before* the new access token is used, and
//!   never sends the same refresh token twice. Without rotation, Salesforce omits
//!   `refresh_token` from the response and the old one is kept.
//! * **Re-authorization.** When Salesforce refuses the refresh token (`invalid_grant`: revoked,
//!   expired by policy, or the app's access was removed) the step fails with `ReauthRequired`
//!   and no further token requests are sent for that credential.
//! * **The instance URL** is read from the token set at the start of every message, so a
//!   refresh that returns a new `instance_url` is followed from the next message on. A
//!   credential seeded with only a refresh token gets its first access token (and instance
//!   URL) before the first request.
//!
//! ## Errors
//!
//! * Salesforce's error answers `[{"message", "errorCode", "fields"}]` become errors named
//!   after the `errorCode` (`MALFORMED_QUERY`, `REQUIRED_FIELD_MISSING`, …) with the message
//!   (and the fields) as the message.
//! * `lookup` of a record that does not exist fails with `NOT_FOUND`, or emits an empty
//!   message `{}` when `allowNotFound` is checked. Several matches fail with
//!   `MULTIPLE_CHOICES`.
//! * **429 and 503** (Salesforce asking to come back later) make an action emit a **rebound**:
//!   the platform delivers the message again later with a growing delay. `query` rebounds
//!   only while it has emitted nothing; after that, replaying the message would duplicate
//!   records, so it fails instead. The trigger fails and the next poll resumes from the
//!   position saved so far. Other statuses are errors.
//!
//! ## Polling position
//!
//! `getUpdatedObjects` queries `LastModifiedDate >= position` in ascending order and keeps the
//! Ids already emitted at the position's exact timestamp in the snapshot, so records sharing a
//! `LastModifiedDate` are neither lost nor emitted twice, wherever a poll stops. Details in the
//! [`trigger`] module.
//!
//! ## Example
//!
//! The connector run in-process against the Salesforce emulator, the way the tests and the
//! quick start run it:
//!
//! ```
//! use std::sync::Arc;
//! use deckhand::auth::MemorySink;
//! use deckhand::connector::{CollectingEmitter, Event, Message, Session, StepConfig};
//! use deckhand::credentials::Credentials;
//! use deckhand_emulator::{Emulator, EmulatorConfig};
//! use deckhand_salesforce::{OAuthApp, Salesforce};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::start(EmulatorConfig::default()).await?;
//! let app = emulator.client();
//! let connector = Salesforce::new(OAuthApp::new(&app.id, &app.secret));
//!
//! // A credential as the authorization-code flow leaves it; here only a refresh token.
//! let credentials = Credentials::from_keys(json!({
//!     "prodEnv": "login",
//!     "loginUrl": emulator.base_url(),
//!     "oauth": {"refresh_token": emulator.issue_refresh_token(&app.id)},
//! }))?;
//! let step = StepConfig {
//!     credentials: Some(credentials),
//!     ..StepConfig::default()
//! };
//! let sink = MemorySink::new(); // where rotated tokens go; a credentials file in production
//! let session = Session::new(Arc::new(connector), step, Arc::new(sink.clone()))?;
//!
//! let events = CollectingEmitter::new();
//! let message = Message::new(json!({"query": "SELECT Id, Name FROM Account LIMIT 2"}));
//! let outcome = session.process("query", message, Arc::new(events.clone())).await;
//! assert_eq!(outcome.errors, 0);
//! let names: Vec<_> = events.events().iter().map(Event::name).collect();
//! assert_eq!(names, ["data", "data", "end"]);
//! assert_eq!(sink.updates().len(), 1); // the first token, persisted before use
//! # Ok(()) }
//! ```
//!
//! [`Strategy::on_401`]: deckhand::auth::Strategy::on_401

mod actions;
mod api;
mod config;
pub mod trigger;

use async_trait::async_trait;
use deckhand::auth::{AuthError, ClientAuth, Grant, Strategy, TokenEndpoint};
use deckhand::component::render_template;
use deckhand::connector::{
    AuthSetup, Connector, ConnectorError, Context, ErrorKind, Function, Input, Verification,
    VerifyContext,
};
use deckhand::credentials::{Credentials, Secret};
use reqwest::StatusCode;
use url::Url;

use crate::api::Api;

/// The REST API version used unless configured otherwise.
pub const DEFAULT_API_VERSION: &str = "v60.0";

/// The token URL of the credential's environment, as in component.json's `oauth2.token_uri`.
pub const TOKEN_URI_TEMPLATE: &str = "https://{{prodEnv}}.salesforce.com/services/oauth2/token";

/// The trigger and action names, as in component.json.
const QUERY: &str = "query";
const CREATE: &str = "create";
const UPSERT: &str = "upsert";
const LOOKUP: &str = "lookup";
const GET_UPDATED_OBJECTS: &str = "getUpdatedObjects";

/// A Salesforce connected app: the client the refresh-token grant authenticates as.
///
/// `Debug` never shows the secret.
#[derive(Clone, Debug)]
pub struct OAuthApp {
    /// The consumer key.
    pub client_id: String,
    /// The consumer secret.
    pub client_secret: Secret,
}

impl OAuthApp {
    /// An app from its consumer key and secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Secret::new(client_secret),
        }
    }
}

/// The Salesforce connector. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct Salesforce {
    /// The connected app, or the names of the environment variables that were missing.
    app: Result<OAuthApp, Vec<&'static str>>,
    /// The API version as configured (`v60.0` or `60.0`); checked when used.
    api_version: String,
}

impl Salesforce {
    /// The connector for `app`.
    pub fn new(app: OAuthApp) -> Self {
        Self {
            app: Ok(app),
            api_version: DEFAULT_API_VERSION.to_owned(),
        }
    }

    /// The connector configured by the environment: `OAUTH_CLIENT_ID`, `OAUTH_CLIENT_SECRET`
    /// and, optionally, `SALESFORCE_API_VERSION`.
    ///
    /// Never fails: a missing app is reported when a credential is first used (by
    /// [`Connector::auth`]), so `validate` and `component` work without it.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let app = match (var("OAUTH_CLIENT_ID"), var("OAUTH_CLIENT_SECRET")) {
            (Some(id), Some(secret)) => Ok(OAuthApp::new(id, secret)),
            (id, secret) => {
                let mut missing = Vec::new();
                if id.is_none() {
                    missing.push("OAUTH_CLIENT_ID");
                }
                if secret.is_none() {
                    missing.push("OAUTH_CLIENT_SECRET");
                }
                Err(missing)
            }
        };
        Self {
            app,
            api_version: var("SALESFORCE_API_VERSION")
                .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
        }
    }

    /// Uses REST API `version` (`v61.0` or `61.0`).
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// The API version as a URL segment, `v60.0`.
    pub fn api_version(&self) -> Result<String, ConnectorError> {
        let number = self
            .api_version
            .trim()
            .strip_prefix('v')
            .unwrap_or(self.api_version.trim());
        let valid = number.split_once('.').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        });
        if valid {
            Ok(format!("v{number}"))
        } else {
            Err(ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!(
                    "the Salesforce API version must look like v60.0, not `{}`",
                    self.api_version
                ),
            ))
        }
    }

    fn app(&self) -> Result<&OAuthApp, ConnectorError> {
        self.app.as_ref().map_err(|missing| {
            ConnectorError::new(
                ErrorKind::InvalidConfiguration,
                format!(
                    "the Salesforce connected app is not configured: set {} (the consumer key \
                     and secret the credential was authorized with)",
                    missing.join(" and ")
                ),
            )
        })
    }
}

/// The token URL for `credentials`: `{loginUrl}/services/oauth2/token` when `loginUrl` is set,
/// else [`TOKEN_URI_TEMPLATE`] with `prodEnv`.
pub fn token_url(credentials: &Credentials) -> Result<String, ConnectorError> {
    let invalid = |message: String| ConnectorError::new(ErrorKind::InvalidCredentials, message);
    if let Some(login_url) = credentials
        .field_str("loginUrl")
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let url = Url::parse(login_url)
            .map_err(|e| invalid(format!("`loginUrl` is not a URL ({e}): `{login_url}`")))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            // The token request carries the client secret and the refresh token.
            return Err(invalid(format!(
                "`loginUrl` must be an https URL (plain http only on 127.0.0.1 or localhost), \
                 not `{login_url}`"
            )));
        }
        return Ok(format!(
            "{}/services/oauth2/token",
            login_url.trim_end_matches('/')
        ));
    }
    match credentials.field_str("prodEnv") {
        Some(env @ ("login" | "test")) => render_template(TOKEN_URI_TEMPLATE, |name| {
            (name == "prodEnv").then(|| env.to_owned())
        })
        .map_err(|e| invalid(e.to_string())),
        Some(other) => Err(invalid(format!(
            "`prodEnv` must be `login` (production) or `test` (sandbox), not `{other}`; set \
             `loginUrl` for another login host"
        ))),
        None => Err(invalid(
            "credential field `prodEnv` is required (`login` or `test`) unless `loginUrl` is set"
                .to_owned(),
        )),
    }
}

#[async_trait]
impl Connector for Salesforce {
    fn functions(&self) -> Vec<Function> {
        vec![
            Function::trigger(GET_UPDATED_OBJECTS),
            Function::action(QUERY),
            Function::action(CREATE),
            Function::action(UPSERT),
            Function::action(LOOKUP),
        ]
    }

    /// Refresh-token grant at the credential's token URL, client id and secret in the form
    /// body (as Salesforce expects), refreshed on 401 only, the token sent to the origin of
    /// the token response's `instance_url`.
    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let app = self.app()?;
        self.api_version()?;
        let endpoint = TokenEndpoint::new(&token_url(credentials)?, &app.client_id)?
            .client_secret(app.client_secret.clone())
            .client_auth(ClientAuth::RequestBody)
            .grant(Grant::RefreshToken);
        Ok(Some(
            AuthSetup::new(endpoint)
                .strategy(Strategy::on_401())
                .api_origin_from_token_field("instance_url"),
        ))
    }

    /// One authenticated call, `GET /services/data/{version}`: it proves the token (refreshed
    /// if needed) and that the org serves the configured API version.
    async fn verify_credentials(
        &self,
        _credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        let version = self.api_version()?;
        let check = async {
            let api = Api::connect(ctx.http(), ctx.token_manager(), &version).await?;
            api.send(api.get(api.url(&[]))).await
        };
        match check.await.map(drop) {
            Ok(()) => Ok(Verification::Verified),
            Err(err) if rejects_credentials(&err) => Ok(Verification::NotVerified {
                reason: err.to_string(),
            }),
            Err(err) => Err(err),
        }
    }

    async fn process(
        &self,
        function: &str,
        input: Input,
        ctx: &Context,
    ) -> Result<(), ConnectorError> {
        let version = self.api_version()?;
        let api = Api::connect(ctx.http(), ctx.token_manager(), &version).await?;
        let result = match function {
            QUERY => actions::query(&api, &input, ctx).await,
            CREATE => actions::create(&api, &input, ctx).await,
            UPSERT => actions::upsert(&api, &input, ctx).await,
            LOOKUP => actions::lookup(&api, &input, ctx).await,
            // A trigger does not rebound: the next poll resumes from the saved position.
            GET_UPDATED_OBJECTS => return trigger::get_updated_objects(&api, &input, ctx).await,
            other => {
                return Err(ConnectorError::new(
                    ErrorKind::UnknownFunction,
                    format!("no function `{other}`"),
                ));
            }
        };
        match result {
            Err(err) if err.is_throttled() => {
                tracing::info!(error = %err, "Salesforce asked to retry later; rebounding");
                ctx.emit_rebound(err.to_string()).await?;
                Ok(())
            }
            other => other,
        }
    }
}

/// Whether a failure says the credential does not work (as opposed to Salesforce or the
/// network failing).
fn rejects_credentials(err: &ConnectorError) -> bool {
    let refused = err.auth_error().is_some_and(|auth| {
        auth.is_reauth_required()
            || matches!(
                auth,
                AuthError::RejectedAfterRefresh { .. } | AuthError::NoRefreshToken
            )
    });
    let status = err.status();
    refused || matches!(status, Some(StatusCode::FORBIDDEN | StatusCode::NOT_FOUND))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn credentials(keys: Value) -> Credentials {
        Credentials::from_keys(keys).unwrap()
    }

    #[test]
    fn the_token_url_template_is_the_one_in_component_json() {
        let descriptor: Value = serde_json::from_str(include_str!("../component.json")).unwrap();
        assert_eq!(
            descriptor["credentials"]["oauth2"]["token_uri"],
            TOKEN_URI_TEMPLATE
        );
    }

    #[test]
    fn token_url_from_prod_env_or_login_url() {
        let url = |keys| token_url(&credentials(keys));
        assert_eq!(
            url(json!({"prodEnv": "test"})).unwrap(),
            "https://test.salesforce.com/services/oauth2/token"
        );
        assert_eq!(
            url(json!({"prodEnv": "test", "loginUrl": "https://acme.my.salesforce.com/"})).unwrap(),
            "https://acme.my.salesforce.com/services/oauth2/token"
        );
        assert_eq!(
            url(json!({"loginUrl": "http://127.0.0.1:8080"})).unwrap(),
            "http://127.0.0.1:8080/services/oauth2/token"
        );
        for bad in [
            json!({}),
            json!({"prodEnv": "evil.example/x?"}),
            json!({"loginUrl": "http://acme.example"}),
            json!({"loginUrl": "not a url"}),
        ] {
            let err = url(bad.clone()).unwrap_err();
            assert_eq!(err.name(), "InvalidCredentials", "{bad}: {err}");
        }
    }

    #[test]
    fn api_versions_are_normalized_and_checked() {
        let app = OAuthApp::new("id", "secret");
        let sf = Salesforce::new(app.clone());
        assert_eq!(sf.api_version().unwrap(), "v60.0");
        let sf = sf.with_api_version("61.0");
        assert_eq!(sf.api_version().unwrap(), "v61.0");
        for bad in ["latest", "v60", "v60.x", ""] {
            let sf = Salesforce::new(app.clone()).with_api_version(bad);
            assert_eq!(sf.api_version().unwrap_err().name(), "InvalidConfiguration");
        }
    }

    #[test]
    fn a_missing_app_is_named_and_secrets_are_not_printed() {
        let sf = Salesforce {
            app: Err(vec!["OAUTH_CLIENT_SECRET"]),
            api_version: DEFAULT_API_VERSION.into(),
        };
        let err = sf
            .auth(&credentials(json!({"prodEnv": "login"})))
            .unwrap_err();
        assert_eq!(err.name(), "InvalidConfiguration");
        assert!(err.message().contains("set OAUTH_CLIENT_SECRET"), "{err}");

        let sf = Salesforce::new(OAuthApp::new("id", "TOP-SECRET"));
        assert!(!format!("{sf:?}").contains("TOP-SECRET"));
    }
}
