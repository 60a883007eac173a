//! Signed, short-lived install links (product.md §5.1).
//!
//! CX Manager gets `{OAUTH_CALLBACK_URL}/oauth/install?tenant=T&link=L` from
//! `POST /{tenant}/api/v1/install/link`. `L` is `{expiry unix seconds}.{base64url(tag)}` where `tag`
//! is HMAC-SHA256 over `install-link/v1 ‖ tenant ‖ expiry` under the keyring's key derived for
//! [`PURPOSE`]: it binds the tenant and the expiry, so neither can be changed, and it verifies in
//! constant time. Links are good for [`LIFETIME`]; rotating `ENCRYPTION_KEY` voids outstanding ones
//! (the user asks CX Manager for a new link).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use jiff::Timestamp;
use sha2::Sha256;

use crate::crypto::Keyring;
use crate::domain::TenantId;

/// How long an install link is valid.
pub const LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The key-derivation purpose of install-link signatures.
pub const PURPOSE: &str = "install-link";

/// A freshly issued link token and its expiry. The token is a capability (anyone holding it can
/// start the tenant's install until it expires), so `{:?}` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct InstallLink {
    /// The `link` query parameter.
    pub token: String,
    /// When it stops being accepted (whole seconds).
    pub expires_at: Timestamp,
}

impl InstallLink {
    /// The browser URL: `{OAUTH_CALLBACK_URL}/oauth/install?tenant=T&link=L`.
    pub fn url(&self, oauth_callback: &url::Url, tenant: &TenantId) -> url::Url {
        let mut url = crate::config::join(oauth_callback, "/oauth/install");
        url.query_pairs_mut()
            .append_pair("tenant", tenant.as_str())
            .append_pair("link", &self.token);
        url
    }
}

impl std::fmt::Debug for InstallLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallLink")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not of the `{expiry}.{tag}` form.
    #[error("the install link is malformed")]
    Malformed,
    /// The tag does not match this tenant and expiry (forged, altered, other tenant, rotated key).
    #[error("the install link's signature does not match")]
    BadSignature,
    /// Authentic, but past its expiry.
    #[error("the install link has expired")]
    Expired,
}

/// Issues a link for `tenant` valid for [`LIFETIME`] from `now`.
pub fn issue(keyring: &Keyring, tenant: &TenantId, now: Timestamp) -> InstallLink {
    let expiry = now.as_second() + LIFETIME.as_secs() as i64;
    let tag = mac(keyring, tenant, expiry).finalize().into_bytes();
    InstallLink {
        token: format!("{expiry}.{}", URL_SAFE_NO_PAD.encode(tag)),
        expires_at: Timestamp::from_second(expiry).expect("now + 15 minutes is a valid timestamp"),
    }
}

/// Checks that `token` was issued for `tenant` and has not expired at `now`. The signature is
/// checked before the expiry is believed.
pub fn verify(
    keyring: &Keyring,
    tenant: &TenantId,
    token: &str,
    now: Timestamp,
) -> Result<(), LinkError> {
    let (expiry, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
    let expiry: i64 = expiry.parse().map_err(|_| LinkError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| LinkError::Malformed)?;
    mac(keyring, tenant, expiry)
        .verify_slice(&tag)
        .map_err(|_| LinkError::BadSignature)?;
    if now.as_second() >= expiry {
        return Err(LinkError::Expired);
    }
    Ok(())
}

/// The MAC over one (tenant, expiry), with length-prefixed fields so no two inputs collide.
fn mac(keyring: &Keyring, tenant: &TenantId, expiry: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&keyring.derive_key(PURPOSE))
        .expect("HMAC accepts a key of any length");
    mac.update(b"install-link/v1");
    mac.update(&(tenant.as_str().len() as u64).to_be_bytes());
    mac.update(tenant.as_str().as_bytes());
    mac.update(&expiry.to_be_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[test]
    fn a_link_verifies_for_its_tenant_until_it_expires() {
        let ring = Keyring::generate("k1");
        let now = Timestamp::now();
        let link = issue(&ring, &tenant("acme"), now);
        assert_eq!(
            link.expires_at.as_second(),
            now.as_second() + 15 * 60,
            "15 minutes"
        );
        assert_eq!(verify(&ring, &tenant("acme"), &link.token, now), Ok(()));
        let almost = now + SignedDuration::from_secs(15 * 60 - 1);
        assert_eq!(verify(&ring, &tenant("acme"), &link.token, almost), Ok(()));
        let after = now + SignedDuration::from_secs(15 * 60);
        assert_eq!(
            verify(&ring, &tenant("acme"), &link.token, after),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn other_tenants_altered_expiries_and_other_keys_are_refused() {
        let ring = Keyring::generate("k1");
        let now = Timestamp::now();
        let link = issue(&ring, &tenant("acme"), now);
        assert_eq!(
            verify(&ring, &tenant("globex"), &link.token, now),
            Err(LinkError::BadSignature)
        );
        let (expiry, tag) = link.token.split_once('.').unwrap();
        let extended = format!("{}.{tag}", expiry.parse::<i64>().unwrap() + 3600);
        assert_eq!(
            verify(&ring, &tenant("acme"), &extended, now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&Keyring::generate("k1"), &tenant("acme"), &link.token, now),
            Err(LinkError::BadSignature)
        );
        let first = tag.chars().next().unwrap();
        let flipped = format!(
            "{expiry}.{}{}",
            if first == 'A' { 'B' } else { 'A' },
            &tag[1..]
        );
        assert_eq!(
            verify(&ring, &tenant("acme"), &flipped, now),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn malformed_links_are_refused() {
        let ring = Keyring::generate("k1");
        let now = Timestamp::now();
        for bad in ["", "abc", "123", "x.abc", "123.!!!", ".abc"] {
            assert_eq!(
                verify(&ring, &tenant("acme"), bad, now),
                Err(LinkError::Malformed),
                "{bad:?}"
            );
        }
    }
}
