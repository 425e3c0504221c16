//! Token bookkeeping: grant families, refresh tokens and issued access tokens.
//!
//! A *family* is everything descended from one original grant: the refresh token seeded by
//! [`Emulator::issue_refresh_token`](crate::Emulator::issue_refresh_token) (as if the user
//! completed the authorization-code flow), every refresh token it rotated into, and every
//! access token issued along the way. Each client-credentials grant is a family of its own.
//! Revoking a family invalidates all of them at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

use crate::config::RefreshRotation;

/// Which resource API an access token was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// Issued by `/{tenant}/oauth2/v2.0/token`; accepted under `/v1.0/`.
    Graph,
    /// Issued by `/services/oauth2/token`; accepted under `/services/`.
    Salesforce,
}

/// One original grant and what descends from it.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) client_id: String,
    /// Graph user id for delegated grants, the client id for client-credentials grants.
    pub(crate) subject: String,
    pub(crate) scope: String,
    pub(crate) delegated: bool,
    pub(crate) revoked: bool,
}

#[derive(Debug)]
struct RefreshRecord {
    family: String,
    /// When it was first redeemed (single-use modes).
    used_at: Option<Instant>,
}

#[derive(Debug)]
struct AccessRecord {
    family: String,
    api: Api,
    expires_at: Instant,
}

/// Why an access token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessDenied {
    Unknown,
    Expired,
    Revoked,
    WrongApi,
}

impl AccessDenied {
    pub(crate) fn description(self) -> &'static str {
        match self {
            AccessDenied::Unknown => {
                "The access token is malformed or was not issued by this server."
            }
            AccessDenied::Expired => "Lifetime validation failed, the token is expired.",
            AccessDenied::Revoked => "The access token has been revoked.",
            AccessDenied::WrongApi => "The access token was not issued for this API.",
        }
    }
}

/// Outcome of a successful refresh-token redemption.
#[derive(Debug)]
pub(crate) struct Redeemed {
    pub(crate) family_id: String,
    pub(crate) family: Family,
    /// The refresh token to return, if any.
    pub(crate) refresh_token: Option<String>,
}

/// Outcome of a failed redemption: always answered with `invalid_grant`.
#[derive(Debug)]
pub(crate) struct RedeemFailed {
    pub(crate) description: &'static str,
    /// Set when this failure revoked the family (refresh-token reuse).
    pub(crate) revoked_family: bool,
}

/// Expired access tokens are forgotten this long after expiry (bounds memory in benchmarks).
const ACCESS_RETENTION: Duration = Duration::from_secs(300);
/// Prune expired access tokens every this many issuances.
const PRUNE_EVERY: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    next_family: u64,
    families: HashMap<String, Family>,
    refresh: HashMap<String, RefreshRecord>,
    access: HashMap<String, AccessRecord>,
    issued_since_prune: usize,
}

impl TokenStore {
    /// Starts a new family and returns its id (`fam-000001`, ...).
    pub(crate) fn new_family(&mut self, family: Family) -> String {
        self.next_family += 1;
        let id = format!("fam-{:06}", self.next_family);
        self.families.insert(id.clone(), family);
        id
    }

    /// Mints a fresh refresh token in `family_id`.
    pub(crate) fn new_refresh_token(&mut self, family_id: &str) -> String {
        let token = format!("rt.{}", random_string(48));
        self.refresh.insert(
            token.clone(),
            RefreshRecord {
                family: family_id.to_owned(),
                used_at: None,
            },
        );
        token
    }

    /// Redeems `token` for `client_id` under the given rotation policy.
    pub(crate) fn redeem_refresh(
        &mut self,
        token: &str,
        client_id: &str,
        rotation: RefreshRotation,
    ) -> Result<Redeemed, RedeemFailed> {
        let fail = |description| RedeemFailed {
            description,
            revoked_family: false,
        };
        let Some(record) = self.refresh.get(token) else {
            return Err(fail("The refresh token is unknown or malformed."));
        };
        let family_id = record.family.clone();
        let used_at = record.used_at;
        let Some(family) = self.families.get(&family_id).cloned() else {
            return Err(fail("The refresh token is unknown or malformed."));
        };
        if family.revoked {
            return Err(fail("The refresh token has been revoked."));
        }
        if family.client_id != client_id {
            return Err(fail("The refresh token was issued to a different client."));
        }
        let within_grace = match (rotation, used_at) {
            (RefreshRotation::Grace { window }, Some(at)) => at.elapsed() <= window,
            _ => false,
        };
        if used_at.is_some() && !within_grace {
            self.revoke_family(&family_id);
            return Err(RedeemFailed {
                description: "The refresh token has already been used; \
                              the whole token family has been revoked.",
                revoked_family: true,
            });
        }
        let refresh_token = match rotation {
            RefreshRotation::Strict | RefreshRotation::Grace { .. } => {
                if let Some(record) = self.refresh.get_mut(token) {
                    record.used_at.get_or_insert_with(Instant::now);
                }
                Some(self.new_refresh_token(&family_id))
            }
            RefreshRotation::Lenient => Some(self.new_refresh_token(&family_id)),
            RefreshRotation::Off => None,
        };
        Ok(Redeemed {
            family_id,
            family,
            refresh_token,
        })
    }

    /// Records an issued access token.
    pub(crate) fn register_access(
        &mut self,
        token: String,
        family_id: &str,
        api: Api,
        expires_at: Instant,
    ) {
        self.issued_since_prune += 1;
        if self.issued_since_prune >= PRUNE_EVERY {
            self.issued_since_prune = 0;
            let now = Instant::now();
            self.access
                .retain(|_, record| record.expires_at + ACCESS_RETENTION > now);
        }
        self.access.insert(
            token,
            AccessRecord {
                family: family_id.to_owned(),
                api,
                expires_at,
            },
        );
    }

    /// Validates an access token presented to `api`; returns its family on success.
    pub(crate) fn check_access(
        &self,
        token: &str,
        api: Api,
    ) -> Result<(&str, &Family), AccessDenied> {
        let record = self.access.get(token).ok_or(AccessDenied::Unknown)?;
        let family = self
            .families
            .get(&record.family)
            .ok_or(AccessDenied::Unknown)?;
        if family.revoked {
            return Err(AccessDenied::Revoked);
        }
        if record.api != api {
            return Err(AccessDenied::WrongApi);
        }
        if Instant::now() >= record.expires_at {
            return Err(AccessDenied::Expired);
        }
        Ok((&record.family, family))
    }

    /// Revokes a family. Returns `false` if it does not exist or was already revoked.
    pub(crate) fn revoke_family(&mut self, family_id: &str) -> bool {
        match self.families.get_mut(family_id) {
            Some(family) if !family.revoked => {
                family.revoked = true;
                true
            }
            _ => false,
        }
    }

    /// The family of a refresh or access token.
    pub(crate) fn family_of(&self, token: &str) -> Option<String> {
        self.refresh
            .get(token)
            .map(|r| r.family.clone())
            .or_else(|| self.access.get(token).map(|a| a.family.clone()))
    }

    /// Makes every access token issued so far expired.
    pub(crate) fn expire_all_access(&mut self) {
        let now = Instant::now();
        for record in self.access.values_mut() {
            record.expires_at = record.expires_at.min(now);
        }
    }

    /// Whether `token` is a refresh token that would be accepted now: known, not yet used
    /// under strict rotation, its family not revoked.
    pub(crate) fn is_refresh_live(&self, token: &str) -> bool {
        self.refresh.get(token).is_some_and(|record| {
            record.used_at.is_none()
                && self
                    .families
                    .get(&record.family)
                    .is_some_and(|family| !family.revoked)
        })
    }

    /// Looks up a family by id.
    pub(crate) fn family(&self, family_id: &str) -> Option<&Family> {
        self.families.get(family_id)
    }
}

/// A random alphanumeric string.
pub(crate) fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_family() -> (TokenStore, String, String) {
        let mut store = TokenStore::default();
        let family = store.new_family(Family {
            client_id: "c".into(),
            subject: "u".into(),
            scope: "s".into(),
            delegated: true,
            revoked: false,
        });
        let rt = store.new_refresh_token(&family);
        (store, family, rt)
    }

    #[test]
    fn strict_rotation_detects_reuse_and_revokes_family() {
        let (mut store, family, rt1) = store_with_family();
        let rt2 = store
            .redeem_refresh(&rt1, "c", RefreshRotation::Strict)
            .unwrap()
            .refresh_token
            .unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        store.register_access("at".into(), &family, Api::Graph, later);
        assert!(store.check_access("at", Api::Graph).is_ok());
        assert_eq!(
            store.check_access("at", Api::Salesforce).unwrap_err(),
            AccessDenied::WrongApi
        );

        let reuse = store
            .redeem_refresh(&rt1, "c", RefreshRotation::Strict)
            .unwrap_err();
        assert!(reuse.revoked_family);
        assert_eq!(
            store.check_access("at", Api::Graph).unwrap_err(),
            AccessDenied::Revoked
        );
        let newest = store
            .redeem_refresh(&rt2, "c", RefreshRotation::Strict)
            .unwrap_err();
        assert!(!newest.revoked_family);
    }

    #[test]
    fn grace_accepts_reuse_within_the_window_only() {
        let (mut store, family, rt1) = store_with_family();
        let grace = RefreshRotation::Grace {
            window: Duration::from_millis(200),
        };
        let rt2 = store.redeem_refresh(&rt1, "c", grace).unwrap();
        let again = store.redeem_refresh(&rt1, "c", grace).unwrap();
        assert_ne!(rt2.refresh_token, again.refresh_token);
        std::thread::sleep(Duration::from_millis(250));
        let late = store.redeem_refresh(&rt1, "c", grace).unwrap_err();
        assert!(late.revoked_family);
        assert!(store.family(&family).unwrap().revoked);
    }

    #[test]
    fn lenient_and_off_keep_the_old_token_valid() {
        let (mut store, _, rt) = store_with_family();
        for _ in 0..3 {
            let lenient = store
                .redeem_refresh(&rt, "c", RefreshRotation::Lenient)
                .unwrap();
            assert!(lenient.refresh_token.is_some());
            let off = store
                .redeem_refresh(&rt, "c", RefreshRotation::Off)
                .unwrap();
            assert!(off.refresh_token.is_none());
        }
        assert!(
            store
                .redeem_refresh(&rt, "other", RefreshRotation::Off)
                .is_err()
        );
        assert!(
            store
                .redeem_refresh("nope", "c", RefreshRotation::Off)
                .is_err()
        );
    }
}
