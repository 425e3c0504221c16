//! Message encryption exactly as Sailor does it (reference §4.3).
//!
//! AES-256-CBC with PKCS#7 padding; the key is SHA-256 of the UTF-8 password and the IV is
//! the UTF-8 bytes of `ELASTICIO_MESSAGE_CRYPTO_IV` — the *same static IV for every message*.
//! A static IV is weak cryptography (equal plaintexts give equal ciphertexts), but it is what
//! the platform and every other step speak, so it is reproduced bit for bit.
//!
//! On the wire, protocol version 1 carries the base64 text of the ciphertext and version 2 the
//! raw ciphertext bytes.

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use sha2::{Digest, Sha256};

type Aes256CbcEnc = cbc::Encryptor<Aes256>;
type Aes256CbcDec = cbc::Decryptor<Aes256>;

/// Length in bytes the crypto IV must have (one AES block).
pub(crate) const IV_LEN: usize = 16;

/// How an encrypted message body is encoded on the wire (`protocolVersion` AMQP header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Version 1: the body is the base64 text of the ciphertext. The default, and what a
    /// message without a `protocolVersion` header is.
    #[default]
    V1,
    /// Version 2: the body is the raw ciphertext.
    V2,
}

impl ProtocolVersion {
    /// The number carried in the `protocolVersion` header and in `ELASTICIO_PROTOCOL_VERSION`.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// The version for a header/env number: `1` or `2`, anything else is `None`.
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// Why a message could not be encrypted or decrypted. Never contains key material or message
/// content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// `ELASTICIO_MESSAGE_CRYPTO_IV` is not exactly 16 bytes of UTF-8.
    #[error("the message crypto IV must be exactly {IV_LEN} bytes of UTF-8, got {0} bytes")]
    InvalidIvLength(usize),
    /// The password is empty; Sailor refuses to process messages without one.
    #[error("the message crypto password is empty")]
    EmptyPassword,
    /// A protocol-v1 body is not valid base64.
    #[error("message body is not valid base64 (protocol version 1)")]
    InvalidBase64,
    /// The ciphertext length is not a multiple of 16 or the padding is wrong: wrong key/IV,
    /// truncated or corrupt message.
    #[error(
        "message could not be decrypted: bad ciphertext length or padding (wrong key/IV or corrupt message)"
    )]
    BadCiphertext,
    /// The decrypted bytes are not the JSON the protocol requires.
    #[error("decrypted message is not valid JSON: {0}")]
    InvalidJson(String),
}

/// The AES key and IV used for every message of a step.
///
/// `Debug` never shows the key, the password it came from, or the IV.
///
/// ```
/// use deckhand_runtime::crypto::{MessageCipher, ProtocolVersion};
///
/// let cipher = MessageCipher::new("testCryptoPassword", "iv=any16_symbols").unwrap();
/// let body = cipher.encrypt(br#"{"body":{"hello":"world"}}"#, ProtocolVersion::V1);
/// assert_eq!(body, b"axyl/YcFb4wgFzIyJ9McA9xyf/alvd9InmVcpgXq9OA=");
/// assert_eq!(
///     cipher.decrypt(&body, ProtocolVersion::V1).unwrap(),
///     br#"{"body":{"hello":"world"}}"#
/// );
/// ```
#[derive(Clone)]
pub struct MessageCipher {
    key: [u8; 32],
    iv: [u8; IV_LEN],
}

impl fmt::Debug for MessageCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageCipher { key: [redacted], iv: [redacted] }")
    }
}

impl MessageCipher {
    /// Derives the key (SHA-256 of the UTF-8 password) and checks the IV is exactly 16 bytes.
    pub fn new(password: &str, iv: &str) -> Result<Self, CryptoError> {
        if password.is_empty() {
            return Err(CryptoError::EmptyPassword);
        }
        let iv: [u8; IV_LEN] = iv
            .as_bytes()
            .try_into()
            .map_err(|_| CryptoError::InvalidIvLength(iv.len()))?;
        let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        Ok(Self { key, iv })
    }

    /// Encrypts `plaintext` and encodes it for `version` (v1: base64 text bytes, v2: raw).
    pub fn encrypt(&self, plaintext: &[u8], version: ProtocolVersion) -> Vec<u8> {
        let raw = self.encrypt_raw(plaintext);
        match version {
            ProtocolVersion::V1 => BASE64.encode(raw).into_bytes(),
            ProtocolVersion::V2 => raw,
        }
    }

    /// Encrypts `plaintext` to base64 text, the encoding of the error envelope's fields and
    /// of error replies whatever the protocol version.
    pub(crate) fn encrypt_base64(&self, plaintext: &[u8]) -> String {
        BASE64.encode(self.encrypt_raw(plaintext))
    }

    /// Serializes `value` to JSON (as `JSON.stringify` would) and encrypts it for `version`.
    pub fn encrypt_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        version: ProtocolVersion,
    ) -> Vec<u8> {
        self.encrypt(&to_json_bytes(value), version)
    }

    /// Decodes a body for `version` and decrypts it. Bad base64, a ciphertext that is not a
    /// whole number of blocks and bad padding are errors, never panics.
    pub fn decrypt(&self, body: &[u8], version: ProtocolVersion) -> Result<Vec<u8>, CryptoError> {
        match version {
            ProtocolVersion::V1 => {
                let raw = BASE64
                    .decode(body.trim_ascii())
                    .map_err(|_| CryptoError::InvalidBase64)?;
                self.decrypt_raw(&raw)
            }
            ProtocolVersion::V2 => self.decrypt_raw(body),
        }
    }

    /// Decrypts a base64 string (an error envelope field).
    #[cfg(test)]
    pub(crate) fn decrypt_base64(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        self.decrypt(text.as_bytes(), ProtocolVersion::V1)
    }

    /// Decrypts a body and parses the plaintext as JSON.
    pub fn decrypt_json<T: serde::de::DeserializeOwned>(
        &self,
        body: &[u8],
        version: ProtocolVersion,
    ) -> Result<T, CryptoError> {
        let plain = self.decrypt(body, version)?;
        serde_json::from_slice(&plain).map_err(|e| CryptoError::InvalidJson(e.to_string()))
    }

    fn encrypt_raw(&self, plaintext: &[u8]) -> Vec<u8> {
        Aes256CbcEnc::new(&self.key.into(), &self.iv.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext)
    }

    fn decrypt_raw(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(IV_LEN) {
            return Err(CryptoError::BadCiphertext);
        }
        Aes256CbcDec::new(&self.key.into(), &self.iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
            .map_err(|_| CryptoError::BadCiphertext)
    }
}

/// `serde_json::to_vec` cannot fail for the `Value`/derive types used here, but a custom
/// `Serialize` impl could; `null` is the least surprising fallback and avoids a panic path.
fn to_json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "testCryptoPassword";
    const IV: &str = "iv=any16_symbols";
    const PLAINTEXT: &[u8] = br#"{"body":{"hello":"world"}}"#;
    const V1_BODY: &str = "axyl/YcFb4wgFzIyJ9McA9xyf/alvd9InmVcpgXq9OA=";

    fn cipher() -> MessageCipher {
        MessageCipher::new(PASSWORD, IV).unwrap()
    }

    #[test]
    fn reference_test_vector_v1() {
        let c = cipher();
        assert_eq!(
            c.encrypt(PLAINTEXT, ProtocolVersion::V1),
            V1_BODY.as_bytes()
        );
        assert_eq!(
            c.decrypt(V1_BODY.as_bytes(), ProtocolVersion::V1).unwrap(),
            PLAINTEXT
        );
        assert_eq!(c.encrypt_base64(PLAINTEXT), V1_BODY);
    }

    #[test]
    fn reference_key_derivation() {
        // The reference gives the key's first and last bytes: 199c4124…1ec0d2.
        let c = cipher();
        let hex: String = c.key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with("199c4124"), "{hex}");
        assert!(hex.ends_with("1ec0d2"), "{hex}");
    }

    #[test]
    fn v2_is_raw_ciphertext_of_v1() {
        let c = cipher();
        let raw = c.encrypt(PLAINTEXT, ProtocolVersion::V2);
        assert_eq!(BASE64.encode(&raw), V1_BODY);
        assert_eq!(c.decrypt(&raw, ProtocolVersion::V2).unwrap(), PLAINTEXT);
    }

    #[test]
    fn round_trips_both_versions() {
        let c = cipher();
        for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
            for plain in [
                &b""[..],
                b"x",
                &[0u8; 16],
                &[7u8; 1000],
                "ünïcødé".as_bytes(),
            ] {
                let body = c.encrypt(plain, version);
                assert_eq!(c.decrypt(&body, version).unwrap(), plain, "{version}");
            }
        }
    }

    #[test]
    fn json_helpers_round_trip() {
        let c = cipher();
        let value = serde_json::json!({"body": {"hello": "world"}});
        let body = c.encrypt_json(&value, ProtocolVersion::V1);
        assert_eq!(body, V1_BODY.as_bytes());
        let back: serde_json::Value = c.decrypt_json(&body, ProtocolVersion::V1).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn garbage_input_is_an_error_not_a_panic() {
        let c = cipher();
        assert_eq!(
            c.decrypt(b"not base64 !!!", ProtocolVersion::V1),
            Err(CryptoError::InvalidBase64)
        );
        // Valid base64, but 5 bytes: not a whole block.
        assert_eq!(
            c.decrypt(b"aGVsbG8=", ProtocolVersion::V1),
            Err(CryptoError::BadCiphertext)
        );
        assert_eq!(
            c.decrypt(b"", ProtocolVersion::V2),
            Err(CryptoError::BadCiphertext)
        );
        assert_eq!(
            c.decrypt(&[1u8; 15], ProtocolVersion::V2),
            Err(CryptoError::BadCiphertext)
        );
        // Whole blocks but garbage: the padding check fails (or, rarely, yields junk bytes);
        // in no case may it panic.
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..32)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect();
            let _ = c.decrypt(&junk, ProtocolVersion::V2);
        }
        // A v1 body read as v2 (and vice versa) is rejected.
        let v1 = c.encrypt(PLAINTEXT, ProtocolVersion::V1);
        assert!(c.decrypt(&v1, ProtocolVersion::V2).is_err());
        let v2 = c.encrypt(PLAINTEXT, ProtocolVersion::V2);
        assert!(c.decrypt(&v2, ProtocolVersion::V1).is_err());
    }

    #[test]
    fn wrong_key_does_not_decrypt_to_the_plaintext() {
        let body = cipher().encrypt(PLAINTEXT, ProtocolVersion::V1);
        let other = MessageCipher::new("another password", IV).unwrap();
        assert_ne!(
            other.decrypt(&body, ProtocolVersion::V1).ok().as_deref(),
            Some(PLAINTEXT)
        );
    }

    #[test]
    fn decrypt_json_rejects_non_json() {
        let c = cipher();
        let body = c.encrypt(b"not json", ProtocolVersion::V1);
        assert!(matches!(
            c.decrypt_json::<serde_json::Value>(&body, ProtocolVersion::V1),
            Err(CryptoError::InvalidJson(_))
        ));
    }

    #[test]
    fn iv_must_be_sixteen_bytes() {
        assert_eq!(
            MessageCipher::new(PASSWORD, "short").unwrap_err(),
            CryptoError::InvalidIvLength(5)
        );
        assert_eq!(
            MessageCipher::new(PASSWORD, "seventeen_symbols").unwrap_err(),
            CryptoError::InvalidIvLength(17)
        );
        // 16 characters but 17 bytes of UTF-8.
        assert_eq!(
            MessageCipher::new(PASSWORD, "é234567890123456").unwrap_err(),
            CryptoError::InvalidIvLength(17)
        );
        assert_eq!(
            MessageCipher::new("", IV).unwrap_err(),
            CryptoError::EmptyPassword
        );
    }

    #[test]
    fn debug_hides_key_material() {
        let dbg = format!("{:?}", cipher());
        assert_eq!(dbg, "MessageCipher { key: [redacted], iv: [redacted] }");
        assert!(!dbg.contains(IV));
    }

    #[test]
    fn protocol_version_numbers() {
        assert_eq!(ProtocolVersion::V1.number(), 1);
        assert_eq!(ProtocolVersion::V2.number(), 2);
        assert_eq!(ProtocolVersion::from_number(2), Some(ProtocolVersion::V2));
        assert_eq!(ProtocolVersion::from_number(3), None);
        assert_eq!(ProtocolVersion::default(), ProtocolVersion::V1);
    }
}
