//! Secrets at rest: AES-256-GCM under `ENCRYPTION_KEY`, with a key id so keys can rotate, and
//! bound to the place they are stored in.
//!
//! `ENCRYPTION_KEY` is either one bare base64 key of 32 bytes (what `head -c32 /dev/urandom |
//! base64` prints: it becomes the one active key, with an id derived from the key itself) or a
//! comma-separated keyring `id:base64(32 bytes)[,id:base64(32 bytes)…]`. The first key seals new
//! values; every key listed opens values sealed under it, so rotating is "put the new key first,
//! keep the old one after it, re-seal every record (`POST /api/v1/keyring/reseal`), then drop the
//! old key".
//!
//! A sealed value is the text `id.base64url(nonce ‖ ciphertext ‖ tag)` — the [`Sealed`] type, the
//! only form secrets take in store records. Its associated data is the value's place,
//! `collection/document/field` ([`SealedAt`]): a sealed value copied to another tenant's record or
//! another field does not open. Values sealed before places were bound have the form
//! `id:base64url(…)` and no associated data; they still open (anywhere), count as needing a
//! re-seal, and are re-sealed bound to their place the next time their record is written.

use std::fmt;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// Separates the key id from the body of a value bound to its place.
const BOUND: char = '.';
/// Separates the key id from the body of a value sealed before places were bound.
const UNBOUND: char = ':';

/// A secret encrypted under one key of the [`Keyring`]: safe to store and to print.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// The id of the key this value was sealed under.
    pub fn key_id(&self) -> &str {
        self.parts().map_or("", |(id, _, _)| id)
    }

    /// Whether the value is bound to its place (else it was sealed before places were bound).
    pub fn is_bound(&self) -> bool {
        self.parts().is_some_and(|(_, bound, _)| bound)
    }

    /// The stored text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `(key id, bound to its place, body)`; `None` when the text has neither separator.
    fn parts(&self) -> Option<(&str, bool, &str)> {
        let at = self.0.find([BOUND, UNBOUND])?;
        let (id, rest) = self.0.split_at(at);
        let bound = rest.starts_with(BOUND);
        Some((id, bound, &rest[1..]))
    }
}

/// Where a sealed value is stored: its associated data, which binds the ciphertext there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedAt {
    /// The collection, e.g. `tenants`.
    pub collection: &'static str,
    /// The document id, e.g. the tenant id.
    pub document: String,
    /// The field path within the document, e.g. `tokens.refresh_token`.
    pub field: &'static str,
}

impl SealedAt {
    /// The place `collection/document/field`.
    pub fn new(collection: &'static str, document: impl Into<String>, field: &'static str) -> Self {
        Self {
            collection,
            document: document.into(),
            field,
        }
    }

    /// The associated data: `collection/document/field`.
    fn associated_data(&self) -> Vec<u8> {
        format!("{}/{}/{}", self.collection, self.document, self.field).into_bytes()
    }
}

impl fmt::Display for SealedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.collection, self.document, self.field)
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
    /// The value is not of the sealed form, or fails authentication (corrupt, sealed under a
    /// different key, or moved from another place).
    #[error(
        "sealed value is corrupt, was sealed under a different key, or belongs to another place"
    )]
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
        f.debug_struct("Keyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// Parses `ENCRYPTION_KEY`: a bare base64 key of 32 bytes, or `id:base64key[,id:base64key…]`
    /// whose first key is the active one.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let spec = spec.trim();
        if !spec.contains([':', ',']) {
            let bytes = decode_key(spec).map_err(|why| {
                CryptoError::MalformedKeyring(format!(
                    "a bare key must be base64 of 32 bytes ({why}); for several keys use id:base64[,id:base64…]"
                ))
            })?;
            return Self::from_keys(vec![(bare_key_id(&bytes), bytes)]);
        }
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
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
            let bytes = decode_key(key_b64)
                .map_err(|why| CryptoError::MalformedKeyring(format!("key {id:?}: {why}")))?;
            keys.push((id.to_owned(), bytes));
        }
        Self::from_keys(keys)
    }

    /// A keyring of these keys, the first one active.
    fn from_keys(keys: Vec<(String, [u8; 32])>) -> Result<Self, CryptoError> {
        let Some((_, active_root)) = keys.first() else {
            return Err(CryptoError::MalformedKeyring("no key given".into()));
        };
        let active_root = *active_root;
        let keys = keys
            .into_iter()
            .map(|(id, bytes)| (id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes))))
            .collect();
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

    /// Every key id of the ring, the active one first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Encrypts a secret under the active key with a fresh random nonce, bound to its place.
    pub fn seal(&self, secret: &SecretString, at: &SealedAt) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = at.associated_data();
        let payload = Payload {
            msg: secret.expose_secret().as_bytes(),
            aad: &aad,
        };
        let ciphertext = cipher
            .encrypt(&nonce, payload)
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Sealed(format!("{id}{BOUND}{}", URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Decrypts a value sealed under any key of the ring for this place (a value of the older,
    /// unbound form opens anywhere).
    pub fn open(&self, sealed: &Sealed, at: &SealedAt) -> Result<SecretString, CryptoError> {
        let (id, bound, body) = sealed.parts().ok_or(CryptoError::Corrupt)?;
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
        let aad = if bound {
            at.associated_data()
        } else {
            Vec::new()
        };
        let payload = Payload {
            msg: ciphertext,
            aad: &aad,
        };
        let plaintext = cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Corrupt)?;
        let text = String::from_utf8(plaintext).map_err(|_| CryptoError::Corrupt)?;
        Ok(SecretString::from(text))
    }

    /// The value sealed anew under the active key and bound to `at`, when it needs it
    /// ([`Keyring::needs_reseal`]); `None` when it is current.
    pub fn reseal(&self, sealed: &Sealed, at: &SealedAt) -> Result<Option<Sealed>, CryptoError> {
        if !self.needs_reseal(sealed) {
            return Ok(None);
        }
        let secret = self.open(sealed, at)?;
        Ok(Some(self.seal(&secret, at)))
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

    /// True when the value is sealed under a retired key, or not bound to its place, and should be
    /// re-sealed.
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != self.active_key_id() || !sealed.is_bound()
    }
}

/// Decodes one key: standard or URL-safe base64 of exactly 32 bytes.
fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| "not base64".to_owned())?;
    let length = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("must be 32 bytes, got {length}"))
}

/// The id of a key given bare: `k` and the first 8 hex digits of SHA-256("omneo-klaviyo-ext/key-id/"
/// ‖ key) — stable for the key, different for another, and revealing nothing usable about it.
fn bare_key_id(key: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"omneo-klaviyo-ext/key-id/");
    hasher.update(key);
    format!("k{}", &hex::encode(hasher.finalize())[..8])
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

    fn at(document: &str, field: &'static str) -> SealedAt {
        SealedAt::new("tenants", document, field)
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let ring = Keyring::generate("k1");
        let place = at("acme", "omneo_api_token");
        let sealed = ring.seal(&secret("refresh-token-123"), &place);
        assert!(!sealed.as_str().contains("refresh-token-123"));
        assert_eq!(sealed.key_id(), "k1");
        assert!(sealed.is_bound());
        assert_eq!(
            ring.open(&sealed, &place).unwrap().expose_secret(),
            "refresh-token-123"
        );
        assert!(!format!("{sealed:?}").contains(&sealed.as_str()[3..]));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let ring = Keyring::generate("k1");
        let place = at("acme", "webhook_secret");
        assert_ne!(
            ring.seal(&secret("x"), &place),
            ring.seal(&secret("x"), &place)
        );
    }

    #[test]
    fn a_value_moved_to_another_place_does_not_open() {
        let ring = Keyring::generate("k1");
        let sealed = ring.seal(&secret("s3cret"), &at("acme", "omneo_api_token"));
        for elsewhere in [
            at("globex", "omneo_api_token"),
            at("acme", "webhook_secret"),
            SealedAt::new("installs", "acme", "omneo_api_token"),
        ] {
            assert_eq!(
                ring.open(&sealed, &elsewhere).unwrap_err(),
                CryptoError::Corrupt,
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn unbound_values_of_the_older_form_open_and_need_a_reseal() {
        let ring = Keyring::parse(&format!("k1:{}", STANDARD.encode([7u8; 32]))).unwrap();
        // The older form: `id:` then nonce ‖ ciphertext ‖ tag with no associated data.
        let (_, cipher) = &ring.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut blob = nonce.to_vec();
        blob.extend(cipher.encrypt(&nonce, b"legacy".as_slice()).unwrap());
        let legacy = Sealed(format!("k1:{}", URL_SAFE_NO_PAD.encode(blob)));
        assert!(!legacy.is_bound());
        assert_eq!(legacy.key_id(), "k1");
        let place = at("acme", "webhook_secret");
        assert_eq!(
            ring.open(&legacy, &place).unwrap().expose_secret(),
            "legacy"
        );
        assert!(ring.needs_reseal(&legacy));
        let resealed = ring.reseal(&legacy, &place).unwrap().expect("resealed");
        assert!(resealed.is_bound() && !ring.needs_reseal(&resealed));
        assert_eq!(
            ring.open(&resealed, &place).unwrap().expose_secret(),
            "legacy"
        );
        assert_eq!(ring.reseal(&resealed, &place).unwrap(), None);
    }

    #[test]
    fn rotation_keeps_old_values_readable_until_resealed() {
        let place = at("acme", "webhook_secret");
        let old_spec_key = format!("k1:{}", STANDARD.encode([7u8; 32]));
        let old = Keyring::parse(&old_spec_key).unwrap();
        let sealed_before = old.seal(&secret("s3cret"), &place);
        let rotated =
            Keyring::parse(&format!("k2:{},{old_spec_key}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_eq!(rotated.active_key_id(), "k2");
        assert_eq!(
            rotated
                .open(&sealed_before, &place)
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert!(rotated.needs_reseal(&sealed_before));
        let resealed = rotated.reseal(&sealed_before, &place).unwrap().unwrap();
        assert_eq!(resealed.key_id(), "k2");
        assert!(!rotated.needs_reseal(&rotated.seal(&secret("new"), &place)));
        // Once the old key is dropped from the ring, its values no longer open; resealed ones do.
        let only_new = Keyring::parse(&format!("k2:{}", STANDARD.encode([9u8; 32]))).unwrap();
        assert_eq!(
            only_new.open(&sealed_before, &place).unwrap_err(),
            CryptoError::UnknownKey("k1".into())
        );
        assert_eq!(
            only_new.open(&resealed, &place).unwrap().expose_secret(),
            "s3cret"
        );
    }

    #[test]
    fn tampered_values_are_rejected() {
        let ring = Keyring::generate("k1");
        let place = at("acme", "webhook_secret");
        let sealed = ring.seal(&secret("abc"), &place);
        let mut text = sealed.as_str().to_owned();
        let last = text.pop().unwrap();
        text.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(
            ring.open(&Sealed(text), &place).unwrap_err(),
            CryptoError::Corrupt
        );
        assert_eq!(
            ring.open(&Sealed("k1".into()), &place).unwrap_err(),
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
    fn a_bare_base64_key_is_the_one_active_key_with_a_stable_id() {
        // What `head -c32 /dev/urandom | base64` prints: 44 characters with padding.
        let bare = STANDARD.encode([5u8; 32]);
        let ring = Keyring::parse(&format!("{bare}\n")).unwrap();
        let again = Keyring::parse(&bare).unwrap();
        assert_eq!(ring.active_key_id(), again.active_key_id());
        assert!(ring.active_key_id().starts_with('k') && ring.active_key_id().len() == 9);
        let other = Keyring::parse(&STANDARD.encode([6u8; 32])).unwrap();
        assert_ne!(ring.active_key_id(), other.active_key_id());
        // The same key can later join a rotation keyring under its derived id.
        let place = at("acme", "webhook_secret");
        let sealed = ring.seal(&secret("kept"), &place);
        let rotation = Keyring::parse(&format!(
            "k2:{},{}:{bare}",
            STANDARD.encode([9u8; 32]),
            ring.active_key_id()
        ))
        .unwrap();
        assert_eq!(
            rotation.open(&sealed, &place).unwrap().expose_secret(),
            "kept"
        );
        // The URL-safe alphabet works too; a short key is refused.
        assert!(Keyring::parse(&URL_SAFE_NO_PAD.encode([5u8; 32])).is_ok());
        assert!(matches!(
            Keyring::parse(&STANDARD.encode([5u8; 16])),
            Err(CryptoError::MalformedKeyring(why)) if why.contains("32 bytes")
        ));
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
