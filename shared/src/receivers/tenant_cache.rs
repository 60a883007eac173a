//! What a receiver knows about a tenant, read once and kept for [`CACHE_TTL`].
//!
//! Receivers answer in milliseconds, so the hot path does no store read: the tenant's secrets
//! (opened once), settings and install state are cached per instance. A miss reads the tenant and
//! install documents concurrently (one round trip). A settings change, a new signing secret or an
//! uninstall is honoured by every instance within [`CACHE_TTL`]: entries are never served older
//! than that. Unknown tenants are cached too (so a flood of requests for a made-up tenant costs
//! one read per [`CACHE_TTL`]), and the cache forgets everything when it holds more than
//! [`MAX_ENTRIES`] tenants, so made-up ids cannot grow it without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jiff::Timestamp;
use secrecy::SecretString;

use super::HmacKey;
use crate::api_error::{ApiError, ErrorCode};
use crate::crypto::{CryptoError, Keyring};
use crate::domain::TenantId;
use crate::queue::{Direction, QueueName};
use crate::settings::Settings;
use crate::store::{Install, InstallStatus, Store, StoreError, TenantSecret};

/// How long a cached tenant view is served before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// The most tenants kept; past it the cache starts afresh.
pub const MAX_ENTRIES: usize = 10_000;

/// A tenant as receivers see it: opened secrets, settings and the install.
pub struct ReceiverTenant {
    /// The tenant id.
    pub id: TenantId,
    /// Its settings.
    pub settings: Settings,
    /// Key of `X-Omneo-Hmac-SHA256`, ready to verify with.
    pub omneo_signing_key: HmacKey,
    /// The shared secret (`x-omneo-secret`, the Klaviyo system webhook's `secret_key`).
    pub webhook_secret: SecretString,
    /// The replaced shared secret and until when it is still accepted.
    pub previous_webhook_secret: Option<(SecretString, Timestamp)>,
    /// Key of `Klaviyo-Signature` (the shared secret), ready to verify with.
    pub webhook_key: HmacKey,
    /// The replaced shared secret's key, accepted as long as that secret is.
    pub previous_webhook_key: Option<HmacKey>,
    /// The install record, if any.
    pub install: Option<Install>,
}

impl ReceiverTenant {
    /// The queue of `direction` of an installed tenant; anything else is 404 `not_installed`
    /// (product.md §2: "404 unknown tenant or not installed").
    pub fn queue(&self, direction: Direction) -> Result<&QueueName, ApiError> {
        let not_installed = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotInstalled,
                format!("tenant {} has not installed the Klaviyo app", self.id),
            )
        };
        let install = self.install.as_ref().ok_or_else(not_installed)?;
        if install.status != InstallStatus::Installed {
            return Err(not_installed());
        }
        install.queue(direction).ok_or_else(not_installed)
    }

    /// The shared secrets accepted at `now`: the current one, and the previous one until its
    /// `accepted_until`.
    pub fn webhook_secrets(&self, now: Timestamp) -> impl Iterator<Item = &SecretString> {
        let previous = self
            .previous_webhook_secret
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(secret, _)| secret);
        std::iter::once(&self.webhook_secret).chain(previous)
    }

    /// The keys of the shared secrets accepted at `now` (see [`Self::webhook_secrets`]).
    pub fn webhook_keys(&self, now: Timestamp) -> impl Iterator<Item = &HmacKey> {
        let previous_accepted = self
            .previous_webhook_secret
            .as_ref()
            .is_some_and(|(_, until)| now < *until);
        std::iter::once(&self.webhook_key).chain(
            self.previous_webhook_key
                .as_ref()
                .filter(|_| previous_accepted),
        )
    }
}

/// Why a tenant view could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TenantViewError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored secret cannot be opened (a key missing from `ENCRYPTION_KEY`).
    #[error("a secret of tenant {tenant} cannot be opened")]
    Sealed {
        /// Whose.
        tenant: TenantId,
        /// Why.
        #[source]
        cause: CryptoError,
    },
}

impl From<TenantViewError> for ApiError {
    fn from(error: TenantViewError) -> Self {
        match error {
            TenantViewError::Store(store) => store.into(),
            sealed @ TenantViewError::Sealed { .. } => Self::internal(&sealed),
        }
    }
}

struct Entry {
    read_at: Instant,
    tenant: Option<Arc<ReceiverTenant>>,
}

/// Per-instance cache of [`ReceiverTenant`]s; see the module docs.
pub struct TenantCache {
    store: Arc<dyn Store>,
    keyring: Keyring,
    ttl: Duration,
    entries: Mutex<HashMap<TenantId, Entry>>,
}

impl TenantCache {
    /// A cache reading from `store`, opening secrets with `keyring`, serving entries for `ttl`.
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, ttl: Duration) -> Self {
        Self {
            store,
            keyring,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant named by the raw path segment `raw`: `Ok(None)` when it is not registered or
    /// not a tenant id at all. A cached tenant is found without parsing or allocating.
    pub async fn get(&self, raw: &str) -> Result<Option<Arc<ReceiverTenant>>, TenantViewError> {
        if let Some(fresh) = self.fresh(raw) {
            return Ok(fresh);
        }
        match TenantId::parse(raw) {
            Ok(id) => self.refresh(&id).await,
            Err(_) => Ok(None),
        }
    }

    /// [`Self::get`], with an unknown tenant as the 404 receivers answer.
    pub async fn find(&self, raw: &str) -> Result<Arc<ReceiverTenant>, ApiError> {
        self.get(raw)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no tenant {raw:?}")))
    }

    /// The cached entry of `id` while it is younger than the TTL.
    fn fresh(&self, id: &str) -> Option<Option<Arc<ReceiverTenant>>> {
        self.lock()
            .get(id)
            .filter(|entry| entry.read_at.elapsed() < self.ttl)
            .map(|entry| entry.tenant.clone())
    }

    /// Reads the tenant from the store and caches it.
    async fn refresh(&self, id: &TenantId) -> Result<Option<Arc<ReceiverTenant>>, TenantViewError> {
        let read_at = Instant::now();
        let tenant = self.read(id).await?.map(Arc::new);
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            id.clone(),
            Entry {
                read_at,
                tenant: tenant.clone(),
            },
        );
        Ok(tenant)
    }

    async fn read(&self, id: &TenantId) -> Result<Option<ReceiverTenant>, TenantViewError> {
        let (tenant, install) = tokio::join!(self.store.tenant(id), self.store.install(id));
        let Some(tenant) = tenant? else {
            return Ok(None);
        };
        let install = install?;
        let sealed = |cause| TenantViewError::Sealed {
            tenant: id.clone(),
            cause,
        };
        let open = |which| tenant.open(&self.keyring, which).map_err(sealed);
        // While a change is pending the previous secret has no end (Klaviyo may still sign
        // with it); the cache re-reads within CACHE_TTL of the confirmation.
        let until = match (
            &tenant.previous_webhook_secret,
            tenant.webhook_secret_pending_since,
        ) {
            (_, Some(_)) => Timestamp::MAX,
            (Some(retired), None) => retired.accepted_until,
            (None, None) => Timestamp::MIN,
        };
        let previous = tenant
            .previous_webhook_secret(&self.keyring, Timestamp::now())
            .map_err(sealed)?
            .map(|secret| (secret, until));
        let webhook_secret = open(TenantSecret::WebhookSecret)?;
        Ok(Some(ReceiverTenant {
            id: id.clone(),
            omneo_signing_key: HmacKey::new(&open(TenantSecret::OmneoSigningSecret)?),
            webhook_key: HmacKey::new(&webhook_secret),
            webhook_secret,
            previous_webhook_key: previous.as_ref().map(|(secret, _)| HmacKey::new(secret)),
            previous_webhook_secret: previous,
            settings: tenant.settings,
            install,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use hmac::{Hmac, KeyInit as _, Mac as _};
    use secrecy::ExposeSecret as _;
    use sha2::Sha256;

    use super::*;
    use crate::receivers::verify_hex_hmac;

    /// Whether the view's signing key is `secret`'s.
    fn signs_with(view: &ReceiverTenant, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"{}");
        let mut headers = HeaderMap::new();
        let signature = hex::encode(mac.finalize().into_bytes());
        headers.insert("sig", HeaderValue::from_str(&signature).unwrap());
        verify_hex_hmac(&headers, "sig", &view.omneo_signing_key, &[b"{}"]).is_ok()
    }
    use crate::crypto::random_secret;
    use crate::store::{MemoryStore, Tenant};

    fn tenant(keyring: &Keyring, id: &TenantId, signing_secret: &str) -> Tenant {
        let now = Timestamp::now();
        Tenant {
            id: id.clone(),
            omneo_api_url: "https://api.acme.getomneo.com".into(),
            omneo_api_token: TenantSecret::OmneoApiToken.seal(keyring, id, &random_secret(8)),
            omneo_signing_secret: TenantSecret::OmneoSigningSecret.seal(
                keyring,
                id,
                &SecretString::from(signing_secret),
            ),
            webhook_secret: TenantSecret::WebhookSecret.seal(keyring, id, &random_secret(8)),
            previous_webhook_secret: None,
            webhook_secret_pending_since: None,
            admin_key_hash: String::new(),
            settings: Settings::default(),
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn a_change_is_seen_once_the_entry_is_older_than_the_ttl() {
        let keyring = Keyring::generate("k");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(keyring.clone()));
        let id = TenantId::parse("acme").unwrap();
        let ttl = Duration::from_millis(200);
        let cache = TenantCache::new(store.clone(), keyring.clone(), ttl);
        assert!(
            cache.get("acme").await.unwrap().is_none(),
            "unknown at first"
        );

        store
            .create_tenant(&tenant(&keyring, &id, "first"))
            .await
            .unwrap();
        assert!(
            cache.get("acme").await.unwrap().is_none(),
            "an unknown tenant is cached for the TTL too"
        );
        tokio::time::sleep(ttl).await;
        let seen = cache.get("acme").await.unwrap().expect("registered");
        assert!(signs_with(&seen, "first"));
        assert!(seen.queue(Direction::Outbound).is_err(), "not installed");

        store
            .update_tenant(&id, &|current| {
                let mut record = current.expect("exists");
                record.omneo_signing_secret = TenantSecret::OmneoSigningSecret.seal(
                    &keyring,
                    &id,
                    &SecretString::from("second"),
                );
                record.settings.coalesce_seconds = 30;
                Ok(record)
            })
            .await
            .unwrap();
        let cached = cache.get("acme").await.unwrap().unwrap();
        assert!(signs_with(&cached, "first"), "within the TTL");
        tokio::time::sleep(ttl).await;
        let fresh = cache.get("acme").await.unwrap().unwrap();
        assert!(signs_with(&fresh, "second"));
        assert_eq!(fresh.settings.coalesce_seconds, 30);
    }

    #[test]
    fn the_previous_webhook_secret_counts_until_its_end() {
        let now = Timestamp::now();
        let view = ReceiverTenant {
            id: TenantId::parse("acme").unwrap(),
            settings: Settings::default(),
            omneo_signing_key: HmacKey::new(&SecretString::from("s")),
            webhook_secret: SecretString::from("new"),
            previous_webhook_secret: Some((
                SecretString::from("old"),
                now + jiff::SignedDuration::from_mins(10),
            )),
            webhook_key: HmacKey::new(&SecretString::from("new")),
            previous_webhook_key: Some(HmacKey::new(&SecretString::from("old"))),
            install: None,
        };
        let accepted = |at| -> Vec<String> {
            view.webhook_secrets(at)
                .map(|s| s.expose_secret().to_owned())
                .collect()
        };
        assert_eq!(accepted(now), ["new", "old"]);
        assert_eq!(accepted(now + jiff::SignedDuration::from_mins(11)), ["new"]);
        assert_eq!(view.webhook_keys(now).count(), 2);
        assert_eq!(
            view.webhook_keys(now + jiff::SignedDuration::from_mins(11))
                .count(),
            1
        );
    }
}
