//! Secrets at rest: AES-256-GCM under `ENCRYPTION_KEY`, with a key id so keys can rotate.
//!
//! `ENCRYPTION_KEY` is a comma-separated keyring `id:base64(32 bytes)[,id:base64(32 bytes)…]`.
//! The first key seals new values; every key listed opens values sealed under it, so rotating is
//! "put the new key first, keep the old one after it until every stored value has been rewritten".
//! A sealed value is the text `id:base64url(nonce ‖ ciphertext ‖ tag)` — the [`Sealed`] type, which
//! is the only form secrets take in store records.

use std::fmt;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// A secret encrypted under one key of the [`Keyring`]: safe to store and to print.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// The id of the key this value was sealed under.
    pub fn key_id(&self) -> &str {
        self.0.split_once(':').map_or("", |(id, _)| id)
    }

    /// The stored text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({}:…)", self.key_id())
    }
}

/// Why a keyring could not be built or a value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// `ENCRYPTION_KEY` is not a well-formed keyring.
    #[error("malformed keyring: {0}")]
    MalformedKeyring(String),
    /// The value names a key id the keyring does not hold.
    #[error("no key with id {0:?} in the keyring")]
    UnknownKey(String),
    /// The value is not of the sealed form, or fails authentication.
    #[error("sealed value is corrupt or was sealed under a different key")]
    Corrupt,
}

/// The active sealing key plus every retired key that may still open old values.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
    /// The active key's bytes, the root of [`Keyring::derive_key`].
    active_root: [u8; 32],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]`; the first key is the active one.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let mut keys = Vec::new();
        let mut active_root = None;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key_b64) = entry.split_once(':').ok_or_else(|| {
                CryptoError::MalformedKeyring("each key must be `id:base64`".into())
            })?;
            let valid_id = !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(CryptoError::MalformedKeyring(format!(
                    "key id {id:?} must be [A-Za-z0-9_-]+"
                )));
            }
            if keys.iter().any(|(existing, _)| existing == id) {
                return Err(CryptoError::MalformedKeyring(format!(
                    "key id {id:?} appears twice"
                )));
            }
            let bytes = STANDARD
                .decode(key_b64)
                .or_else(|_| URL_SAFE_NO_PAD.decode(key_b64))
                .map_err(|_| CryptoError::MalformedKeyring(format!("key {id:?} is not base64")))?;
            if bytes.len() != 32 {
                return Err(CryptoError::MalformedKeyring(format!(
                    "key {id:?} must be 32 bytes, got {}",
                    bytes.len()
                )));
            }
            keys.push((
                id.to_owned(),
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            ));
            if active_root.is_none() {
                let mut root = [0u8; 32];
                root.copy_from_slice(&bytes);
                active_root = Some(root);
            }
        }
        let Some(active_root) = active_root else {
            return Err(CryptoError::MalformedKeyring("no key given".into()));
        };
        Ok(Self { keys, active_root })
    }

    /// A keyring with one freshly generated key, for local runs and tests.
    pub fn generate(id: &str) -> Self {
        let key = Aes256Gcm::generate_key(OsRng);
        Self::parse(&format!("{id}:{}", STANDARD.encode(key)))
            .expect("generated key is well formed")
    }

    /// The id of the key new values are sealed under.
    pub fn active_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Encrypts a secret under the active key with a fresh random nonce.
    pub fn seal(&self, secret: &SecretString) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(&nonce, secret.expose_secret().as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Sealed(format!("{id}:{}", URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Decrypts a value sealed under any key of the ring.
    pub fn open(&self, sealed: &Sealed) -> Result<SecretString, CryptoError> {
        let (id, body) = sealed.0.split_once(':').ok_or(CryptoError::Corrupt)?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(key_id, _)| key_id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Corrupt)?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plaintext = cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Corrupt)?;
        let text = String::from_utf8(plaintext).map_err(|_| CryptoError::Corrupt)?;
        Ok(SecretString::from(text))
    }

    /// A 32-byte key for one `purpose` (e.g. `install-link`), derived from the active key as
    /// HMAC-SHA256(active key, "omneo-klaviyo-ext/derive/" ‖ purpose): distinct purposes get
    /// independent keys, and the encryption key itself never signs anything. Rotating the active
    /// key changes every derived key (values signed before then stop verifying).
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{KeyInit as _, Mac as _};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.active_root)
            .expect("HMAC accepts a key of any length");
        mac.update(b"omneo-klaviyo-ext/derive/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// True when the value is sealed under a retired key and should be re-sealed.
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != self.active_key_id()
    }
}

/// Compares two byte strings in time that depends only on their lengths (signatures, keys).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A fresh `ENCRYPTION_KEY` value holding one random key with id `id`.
pub fn new_keyring_spec(id: &str) -> SecretString {
    let key = Aes256Gcm::generate_key(OsRng);
    SecretString::from(format!("{id}:{}", STANDARD.encode(key)))
}

/// A fresh random secret of `bytes` random bytes, base64url-encoded (admin keys, webhook secrets).
pub fn random_secret(bytes: usize) -> SecretString {
    let mut buf = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buf);
    SecretString::from(URL_SAFE_NO_PAD.encode(buf))
}

/// SHA-256 of a secret, lowercase hex: how keys are stored when only a check is needed.
pub fn digest_hex(secret: &SecretString) -> String {
    hex::encode(Sha256::digest(secret.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let ring = Keyring::generate("k1");
        let sealed = ring.seal(&secret("refresh-token-123"));
        assert!(!sealed.as_str().contains("refresh-token-123"));
        assert_eq!(sealed.key_id(), "k1");
        assert_eq!(
            ring.open(&sealed).unwrap().expose_secret(),
            "refresh-token-123"
        );
        assert!(!format!("{sealed:?}").contains(sealed.as_str().split_once(':').unwrap().1));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let ring = Keyring::generate("k1");
        assert_ne!(ring.seal(&secret("x")), ring.seal(&secret("x")));
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old_spec_key = format!("k1:{}", STANDARD.encode([7u8; 32]));
        let old = Keyring::parse(&old_spec_key).unwrap();
        let sealed_before = old.seal(&secret("s3cret"));
        let rotated =
            Keyring::parse(&format!("k2:{},{old_spec_key}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_eq!(rotated.active_key_id(), "k2");
        assert_eq!(
            rotated.open(&sealed_before).unwrap().expose_secret(),
            "s3cret"
        );
        assert!(rotated.needs_reseal(&sealed_before));
        assert!(!rotated.needs_reseal(&rotated.seal(&secret("new"))));
        // Once the old key is dropped from the ring, its values no longer open.
        let only_new = Keyring::parse(&format!("k2:{}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_eq!(
            only_new.open(&sealed_before).unwrap_err(),
            CryptoError::UnknownKey("k1".into())
        );
    }

    #[test]
    fn tampered_values_are_rejected() {
        let ring = Keyring::generate("k1");
        let sealed = ring.seal(&secret("abc"));
        let mut text = sealed.as_str().to_owned();
        let last = text.pop().unwrap();
        text.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(ring.open(&Sealed(text)).unwrap_err(), CryptoError::Corrupt);
        assert_eq!(
            ring.open(&Sealed("k1".into())).unwrap_err(),
            CryptoError::Corrupt
        );
    }

    #[test]
    fn random_secrets_are_long_distinct_and_hash_stably() {
        let a = random_secret(32);
        let b = random_secret(32);
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(digest_hex(&a), digest_hex(&a));
        assert_ne!(digest_hex(&a), digest_hex(&b));
        assert_eq!(
            digest_hex(&secret("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn derived_keys_are_stable_per_purpose_and_follow_the_active_key() {
        let k1 = format!("k1:{}", STANDARD.encode([7u8; 32]));
        let ring = Keyring::parse(&k1).unwrap();
        let again = Keyring::parse(&k1).unwrap();
        assert_eq!(
            ring.derive_key("install-link"),
            again.derive_key("install-link")
        );
        assert_ne!(ring.derive_key("install-link"), ring.derive_key("other"));
        assert_ne!(ring.derive_key("install-link"), [7u8; 32]);
        // Computed independently: `printf %s 'omneo-klaviyo-ext/derive/install-link' |
        // openssl dgst -sha256 -mac HMAC -macopt hexkey:0707…07 (32 bytes)`.
        assert_eq!(
            hex::encode(ring.derive_key("install-link")),
            "05a79d691cdc7c18e8b0c0566e5fe5bbee7ecb67b2ed5c17e2da66866716a123"
        );
        // The active (first) key is the root; retired keys do not matter.
        let rotated = Keyring::parse(&format!("k2:{},{k1}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_ne!(
            rotated.derive_key("install-link"),
            ring.derive_key("install-link")
        );
        let with_retired =
            Keyring::parse(&format!("{k1},k0:{}", STANDARD.encode([1u8; 32]))).unwrap();
        assert_eq!(
            with_retired.derive_key("install-link"),
            ring.derive_key("install-link")
        );
    }

    #[test]
    fn malformed_keyrings_are_refused() {
        for bad in [
            "",
            "nokey",
            "k1:notbase64!!",
            "k1:AAAA",
            "bad id:AAAA",
            &format!("a:{0},a:{0}", STANDARD.encode([1u8; 32])),
        ] {
            assert!(
                matches!(Keyring::parse(bad), Err(CryptoError::MalformedKeyring(_))),
                "{bad}"
            );
        }
    }
}
