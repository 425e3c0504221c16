//! Emulator configuration.

use std::time::Duration;

/// Upper bound for [`EmulatorConfig::token_lifetime`] (keeps time arithmetic far from overflow).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A confidential OAuth2 client registered with the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// The `client_id`.
    pub id: String,
    /// The `client_secret`.
    pub secret: String,
}

impl OAuthClient {
    /// Creates a client registration.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

/// How the Microsoft-style token endpoint reports `expires_in` / `ext_expires_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiresInFormat {
    /// `"expires_in": 3600` — a JSON number (Microsoft identity platform v2.0).
    #[default]
    Number,
    /// `"expires_in": "3600"` — a numeric string (Azure AD v1-style endpoints).
    String,
    /// Both fields are left out; clients have to read the JWT `exp` claim.
    Omitted,
}

/// What happens to a refresh token when it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshRotation {
    /// Each refresh returns a new refresh token and invalidates the used one.
    /// Presenting an already-used refresh token answers `invalid_grant` **and revokes the
    /// whole token family** (every refresh and access token descended from the same grant),
    /// like Salesforce Refresh Token Rotation and other strict providers.
    #[default]
    Strict,
    /// Each refresh returns a new refresh token, but the used one stays valid
    /// (what the Microsoft identity platform actually does).
    Lenient,
    /// No new refresh token is returned; the original one stays valid
    /// (Salesforce without Refresh Token Rotation).
    Off,
    /// Like [`Strict`](Self::Strict), but a used refresh token may be presented again for
    /// `window` after its first use and still gets a new token set (the reuse grace period of
    /// Okta, Auth0, Cognito, Xero). After the window, reuse answers `invalid_grant` and revokes
    /// the family.
    Grace {
        /// How long after its first use a refresh token is still accepted.
        window: std::time::Duration,
    },
}

/// Shape of the access tokens handed out by the Salesforce-style token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessTokenFormat {
    /// An opaque session id such as `00D000000000001!AQ...` — like real Salesforce, clients
    /// cannot read the expiry and only learn about it from a 401 `INVALID_SESSION_ID`.
    #[default]
    Opaque,
    /// An HS256 JWT carrying `exp`, like the Microsoft-style endpoint.
    Jwt,
}

/// Configuration for [`Emulator::start`](crate::Emulator::start).
///
/// All fields are public; start from [`EmulatorConfig::default()`] and override what a test
/// needs with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use deckhand_emulator::EmulatorConfig;
///
/// let config = EmulatorConfig {
///     token_lifetime: Duration::from_secs(2),
///     salesforce_page_size: 3,
///     ..EmulatorConfig::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Registered confidential clients. The first one is returned by
    /// [`Emulator::client`](crate::Emulator::client). Default: one client,
    /// `deckhand-test-client` / `deckhand-test-secret`.
    pub clients: Vec<OAuthClient>,
    /// Lifetime of every access token (both APIs). Sub-second values work: expiry is tracked
    /// with an exact `Instant`; the JWT `exp` claim is that instant rounded down to seconds.
    /// Default: 3600 s.
    pub token_lifetime: Duration,
    /// How the Microsoft-style endpoint reports `expires_in`. Default: [`ExpiresInFormat::Number`].
    pub expires_in_format: ExpiresInFormat,
    /// Refresh token rotation on the Microsoft-style endpoint. Default: [`RefreshRotation::Strict`].
    pub graph_refresh_rotation: RefreshRotation,
    /// Refresh token rotation on the Salesforce-style endpoint. Default: [`RefreshRotation::Strict`]
    /// (Salesforce enforces Refresh Token Rotation from 2026).
    pub salesforce_refresh_rotation: RefreshRotation,
    /// Access token shape on the Salesforce-style endpoint. Default: [`AccessTokenFormat::Opaque`].
    pub salesforce_access_token_format: AccessTokenFormat,
    /// Tenant used by [`Emulator::microsoft_token_url`](crate::Emulator::microsoft_token_url).
    /// The token endpoint accepts any tenant path segment and echoes it in the `tid` claim.
    pub tenant_id: String,
    /// Scope granted to families created by
    /// [`Emulator::issue_refresh_token`](crate::Emulator::issue_refresh_token), returned by
    /// refresh responses when the request carries no `scope`.
    pub delegated_scope: String,
    /// Records per page of a Salesforce query (`nextRecordsUrl` paging). Default: 2000.
    /// A `Sforce-Query-Options: batchSize=N` request header overrides it per query.
    pub salesforce_page_size: usize,
    /// Page size of Graph collections when the request has no `$top`. Default: 100.
    pub graph_page_size: usize,
    /// Number of seeded Salesforce `Account` records. Default: 25.
    pub seed_accounts: usize,
    /// Number of seeded Salesforce `Contact` records. Default: 50.
    pub seed_contacts: usize,
    /// Number of seeded Graph users. The first one is the signed-in user (`/me`) of delegated
    /// grants. Default: 5.
    pub seed_users: usize,
    /// Number of seeded mailbox messages per Graph user. Default: 10.
    pub seed_messages_per_user: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            clients: vec![OAuthClient::new(
                "deckhand-test-client",
                "deckhand-test-secret",
            )],
            token_lifetime: Duration::from_secs(3600),
            expires_in_format: ExpiresInFormat::Number,
            graph_refresh_rotation: RefreshRotation::Strict,
            salesforce_refresh_rotation: RefreshRotation::Strict,
            salesforce_access_token_format: AccessTokenFormat::Opaque,
            tenant_id: "deckhand-test-tenant".to_owned(),
            delegated_scope: "openid profile offline_access User.Read Mail.Read Mail.Send"
                .to_owned(),
            salesforce_page_size: 2000,
            graph_page_size: 100,
            seed_accounts: 25,
            seed_contacts: 50,
            seed_users: 5,
            seed_messages_per_user: 10,
        }
    }
}

impl EmulatorConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.clients.is_empty() {
            return Err("at least one OAuth client must be configured".into());
        }
        if self.token_lifetime > MAX_TOKEN_LIFETIME {
            return Err("token_lifetime must be at most 10 years".into());
        }
        if self.salesforce_page_size == 0 {
            return Err("salesforce_page_size must be at least 1".into());
        }
        if self.graph_page_size == 0 {
            return Err("graph_page_size must be at least 1".into());
        }
        Ok(())
    }
}
