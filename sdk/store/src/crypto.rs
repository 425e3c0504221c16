//! Keys at rest: AES-256-GCM with a key id, so keys can be rotated.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use deckhand_core::auth::store::{AccountId, StoreError};

/// The environment variable holding the store's encryption keys: `id=base64key[,id=base64key…]`,
/// each key 32 bytes; the first one encrypts, all of them decrypt.
pub const STORE_KEYS_ENV: &str = "DECKHAND_STORE_KEYS";

/// The AES-256-GCM keys of a credential store, by id. The first key encrypts new rows; every
/// key decrypts, so a key can be rotated by putting a new one first and keeping the old one
/// until every row was rewritten.
///
/// `Debug` shows the key ids only.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
}

/// One row's encrypted keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the key that encrypted it.
    pub key_id: String,
    /// The 96-bit nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with the GCM tag.
    pub ciphertext: Vec<u8>,
}

impl KeyRing {
    /// A ring from `(id, 32-byte key)` pairs; the first encrypts.
    pub fn new(keys: Vec<(String, [u8; 32])>) -> Result<Self, StoreError> {
        if keys.is_empty() {
            return Err(StoreError::Config(
                "the key ring needs at least one key".into(),
            ));
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_graphic()) {
                return Err(StoreError::Config(format!(
                    "key id `{id}`: use 1 to 64 printable ASCII characters"
                )));
            }
            if ring.iter().any(|(known, _)| known == &id) {
                return Err(StoreError::Config(format!("key id `{id}` appears twice")));
            }
            ring.push((id, Aes256Gcm::new(&key.into())));
        }
        Ok(Self { keys: ring })
    }

    /// Parses `id=base64key[,id=base64key…]` (the format of [`STORE_KEYS_ENV`]).
    pub fn parse(spec: &str) -> Result<Self, StoreError> {
        let mut keys = Vec::new();
        for (n, part) in spec.split(',').map(str::trim).enumerate() {
            let Some((id, encoded)) = part.split_once('=') else {
                return Err(StoreError::Config(format!(
                    "{STORE_KEYS_ENV}: entry {} is not `id=base64key`",
                    n + 1
                )));
            };
            let bytes = STANDARD.decode(encoded.trim()).map_err(|_| {
                StoreError::Config(format!(
                    "{STORE_KEYS_ENV}: the key of `{}` is not valid base64",
                    id.trim()
                ))
            })?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                StoreError::Config(format!(
                    "{STORE_KEYS_ENV}: the key of `{}` has {} bytes; AES-256 needs 32",
                    id.trim(),
                    b.len()
                ))
            })?;
            keys.push((id.trim().to_owned(), key));
        }
        Self::new(keys)
    }

    /// The ring from [`STORE_KEYS_ENV`].
    pub fn from_env() -> Result<Self, StoreError> {
        let spec = std::env::var(STORE_KEYS_ENV)
            .map_err(|_| StoreError::Config(format!("{STORE_KEYS_ENV} is not set")))?;
        Self::parse(&spec)
    }

    /// The id of the key that encrypts.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Encrypts `plaintext`, bound to the account and generation (a row copied to another
    /// account or generation does not decrypt).
    pub fn seal(
        &self,
        account: &AccountId,
        generation: u64,
        plaintext: &[u8],
    ) -> Result<Sealed, StoreError> {
        let (key_id, cipher) = &self.keys[0];
        let nonce: [u8; 12] = rand::random();
        let aad = associated_data(account, generation);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Config("AES-GCM encryption failed".into()))?;
        Ok(Sealed {
            key_id: key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a row sealed for `account` at `generation`.
    pub fn open(
        &self,
        account: &AccountId,
        generation: u64,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, StoreError> {
        let fail = |reason: String| StoreError::Decrypt {
            account: account.to_string(),
            reason,
        };
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| id == &sealed.key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| fail(format!("no key with id `{}` is configured", sealed.key_id)))?;
        if sealed.nonce.len() != 12 {
            return Err(fail("the nonce is not 12 bytes".into()));
        }
        let aad = associated_data(account, generation);
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                fail(format!(
                    "authentication failed with key `{}` (wrong key or altered row)",
                    sealed.key_id
                ))
            })
    }
}

fn associated_data(account: &AccountId, generation: u64) -> Vec<u8> {
    format!("deckhand-keys\u{0}{account}\u{0}{generation}").into_bytes()
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> AccountId {
        AccountId::new("acc-1").unwrap()
    }

    #[test]
    fn sealed_keys_open_only_with_the_right_key_account_and_generation() {
        let ring = KeyRing::new(vec![("k1".into(), [7; 32])]).unwrap();
        let sealed = ring.seal(&account(), 3, b"refresh-secret").unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            ring.open(&account(), 3, &sealed).unwrap(),
            b"refresh-secret"
        );
        assert!(ring.open(&account(), 4, &sealed).is_err());
        assert!(
            ring.open(&AccountId::new("acc-2").unwrap(), 3, &sealed)
                .is_err()
        );
        let other = KeyRing::new(vec![("k1".into(), [8; 32])]).unwrap();
        assert!(matches!(
            other.open(&account(), 3, &sealed),
            Err(StoreError::Decrypt { .. })
        ));
    }

    #[test]
    fn rotated_ring_reads_old_rows_and_writes_with_the_new_key() {
        let old = KeyRing::new(vec![("k1".into(), [1; 32])]).unwrap();
        let sealed = old.seal(&account(), 0, b"x").unwrap();
        let rotated = KeyRing::new(vec![("k2".into(), [2; 32]), ("k1".into(), [1; 32])]).unwrap();
        assert_eq!(rotated.open(&account(), 0, &sealed).unwrap(), b"x");
        assert_eq!(rotated.seal(&account(), 0, b"x").unwrap().key_id, "k2");
    }

    #[test]
    fn parse_reports_what_is_wrong_without_the_key() {
        let key = STANDARD.encode([5u8; 32]);
        assert!(KeyRing::parse(&format!("a={key},b={key}")).is_ok());
        let err = KeyRing::parse("a=c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("has 5 bytes"), "{err}");
        assert!(!err.contains("c2hvcnQ"));
        assert!(KeyRing::parse("nokey").is_err());
        assert!(KeyRing::parse(&format!("a={key},a={key}")).is_err());
        let debug = format!("{:?}", KeyRing::parse(&format!("a={key}")).unwrap());
        assert!(!debug.contains(&key), "{debug}");
    }
}
