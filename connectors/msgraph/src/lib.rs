//! # deckhand-msgraph
//!
//! A Microsoft Graph connector for Deckhand: the actions `listUsers`, `getUser` and `sendMail`,
//! and the polling trigger `readMail`. It is also the worked example of
//! [`connectors/README.md`](https://example.invalid/deckhand/connectors/README.md), the guide to
//! writing a connector.
//!
//! One credential authenticates either as the application (`authMode: "app"`, client
//! credentials grant) or as a signed-in user (`authMode: "delegated"`, a refresh token that
//! rotates on every refresh). Either way the SDK refreshes the token before it expires (and
//! once after a 401), through one single-flight gate per credential, and persists every
//! rotation before the new token is used.
//!
//! ## Run it in-process
//!
//! Against the Graph emulator of the test suite:
//!
//! ```
//! use std::sync::Arc;
//! use deckhand::auth::MemorySink;
//! use deckhand::connector::{CollectingEmitter, Event, Message, Session, StepConfig};
//! use deckhand::credentials::Credentials;
//! use deckhand_emulator::{Emulator, EmulatorConfig};
//! use deckhand_msgraph::MsGraph;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emulator = Emulator::start(EmulatorConfig::default()).await?;
//! let credentials = Credentials::from_keys(json!({
//!     "authMode": "app",
//!     "tenantId": emulator.config().tenant_id,
//!     "clientId": emulator.client().id,
//!     "clientSecret": emulator.client().secret,
//!     "authorityUrl": emulator.base_url(),
//!     "graphUrl": emulator.base_url(),
//! }))?;
//! let step = StepConfig { credentials: Some(credentials), ..StepConfig::default() };
//! let session = Session::new(Arc::new(MsGraph::default()), step, Arc::new(MemorySink::new()))?;
//!
//! let events = CollectingEmitter::new();
//! let message = Message::new(json!({"userId": "user2@deckhand.test"}));
//! session.process("getUser", message, Arc::new(events.clone())).await;
//! let Event::Data(user) = &events.events()[0] else { panic!("{:?}", events.events()) };
//! assert_eq!(user.body["userPrincipalName"], "user2@deckhand.test");
//! # Ok(()) }
//! ```

mod graph;
mod mail;
mod settings;
mod users;

use std::time::Duration;

use async_trait::async_trait;
use deckhand::auth::{Grant, Strategy, TokenEndpoint};
use deckhand::connector::{
    AuthSetup, Call, Connector, ConnectorError, ErrorKind, FromCall, Router, Verification,
    VerifyContext,
};
use deckhand::credentials::Credentials;
use deckhand::retry::{Backoff, Policy, ThrottleRetry};
use reqwest::{Method, StatusCode};

use graph::Graph;
use settings::AppClient;
pub use settings::{
    AuthMode, CLIENT_ID_ENV, CLIENT_SECRET_ENV, DEFAULT_AUTHORITY_URL, DEFAULT_GRAPH_URL, Settings,
};

/// Refresh this long before the token expires (Graph tokens live 60–90 minutes). The SDK caps
/// it at half the token's lifetime, so short-lived tokens are not refreshed on every call.
pub const REFRESH_SKEW: Duration = Duration::from_secs(5 * 60);

/// How requests Graph throttles (429, 503) are retried by default: 3 times, after Graph's
/// `Retry-After` (at most 30 s) or else 1 s, 2 s, 4 s; then the answer becomes an error.
pub const THROTTLING: Policy =
    Policy::new(Backoff::exponential(Duration::from_secs(1)).with_cap(Duration::from_secs(30)))
        .with_max_attempts(4);

/// The Microsoft Graph connector.
///
/// [`MsGraph::default`] reads the fallback OAuth2 app from [`CLIENT_ID_ENV`] and
/// [`CLIENT_SECRET_ENV`] and retries throttled requests as [`THROTTLING`] says.
#[derive(Clone, Debug)]
pub struct MsGraph {
    throttling: Policy,
    default_client: Option<AppClient>,
}

impl Default for MsGraph {
    fn default() -> Self {
        Self {
            throttling: THROTTLING,
            default_client: AppClient::from_env(),
        }
    }
}

impl MsGraph {
    /// Sets how throttled requests (429, 503) are retried.
    pub fn with_throttling(mut self, throttling: Policy) -> Self {
        self.throttling = throttling;
        self
    }

    /// Sets the OAuth2 app used by credentials without their own `clientId`/`clientSecret`
    /// (instead of the environment's).
    pub fn with_default_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.default_client = Some(AppClient {
            id: id.into(),
            secret: secret.into().into(),
        });
        self
    }

    /// Microsoft Graph as `settings` locate it, through `http` (the step's authenticated client).
    fn graph(&self, http: &reqwest_middleware::ClientWithMiddleware, settings: &Settings) -> Graph {
        Graph::new(http.clone(), settings.api_base())
    }
}

/// Every handler's Graph client: the step's settings (read once per step), its HTTP client.
impl FromCall<MsGraph> for Graph {
    async fn from_call(call: &mut Call<MsGraph>) -> Result<Self, ConnectorError> {
        let settings = call.config::<Settings>()?;
        Ok(call.connector().graph(call.context().http(), &settings))
    }
}

#[async_trait]
impl Connector for MsGraph {
    fn router(&self) -> Router<Self> {
        Router::new()
            .trigger("readMail", mail::read_mail)
            .action("listUsers", users::list_users)
            .action("getUser", users::get_user)
            .action("sendMail", mail::send_mail)
    }

    fn throttle_retry(&self) -> Option<ThrottleRetry> {
        Some(ThrottleRetry::new(self.throttling))
    }

    fn auth(&self, credentials: &Credentials) -> Result<Option<AuthSetup>, ConnectorError> {
        let settings = Settings::from_keys(credentials.fields())?;
        let client = AppClient::resolve(credentials.fields(), self.default_client.as_ref())?;
        let grant = match settings.mode {
            AuthMode::App => Grant::ClientCredentials,
            AuthMode::Delegated => {
                if credentials
                    .token()
                    .and_then(|t| t.refresh_token())
                    .is_none()
                {
                    return Err(ConnectorError::new(
                        ErrorKind::InvalidCredentials,
                        "delegated credentials need a refresh token in `oauth`: sign in again \
                         (with the offline_access scope)",
                    ));
                }
                Grant::RefreshToken
            }
        };
        let mut endpoint = TokenEndpoint::new(&settings.token_url(), client.id)?
            .client_secret(client.secret)
            .grant(grant);
        for scope in settings.scopes() {
            endpoint = endpoint.scope(scope);
        }
        Ok(Some(
            AuthSetup::new(endpoint)
                .strategy(Strategy::before_expiry(REFRESH_SKEW).with_on_401())
                .api_origin(settings.graph_origin()),
        ))
    }

    async fn verify_credentials(
        &self,
        credentials: &Credentials,
        ctx: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        let settings = Settings::from_keys(credentials.fields())?;
        // A token proves the tenant, the app and its secret (and, delegated, the sign-in).
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
        if settings.mode == AuthMode::App {
            // Graph permissions are the functions' business: an app that may only send mail
            // cannot read any user, and is still a valid credential.
            return Ok(Verification::Verified);
        }
        let graph = self.graph(ctx.http(), &settings);
        let url = graph.url(&["me"]);
        let response = graph.get_response(&url).await?;
        match response.status() {
            s if s.is_success() => Ok(Verification::Verified),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let err = graph::error_of(response, &Method::GET, &url).await;
                Ok(Verification::NotVerified {
                    reason: format!("Microsoft Graph refused /me: {err}"),
                })
            }
            _ => Err(graph::error_of(response, &Method::GET, &url).await),
        }
    }
}
