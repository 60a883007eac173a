//! Klaviyo access tokens per tenant (product.md §5.6).
//!
//! Access tokens last about an hour. [`TokenProvider::access_token`] refreshes ahead of expiry
//! (at least [`REFRESH_MARGIN`] before), [`TokenProvider::call`] refreshes once more when Klaviyo
//! answers 401 anyway. Only one refresh per tenant runs at a time across every instance: the
//! refresher takes a lease on the install document in a store transaction (each attempt is its
//! own lease holder), and everyone else waits for the new token instead of spending the refresh
//! token a second time (with rotation on, a second refresh would kill the first one's token).
//! Within one instance, callers first queue on a per-tenant lock, so they do not all contend for
//! the lease. The refresh token Klaviyo returns is always stored. `invalid_grant` means the
//! customer uninstalled or the token died: the install moves to `reauthorization_required` and
//! every later call fails fast with [`TokenError::ReauthorizationRequired`], so workers park their
//! tasks instead of calling Klaviyo.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;

use crate::crypto::{Keyring, Sealed};
use crate::domain::TenantId;
use crate::klaviyo::oauth::{KlaviyoOAuth, OAuthError, TokenGrant};
use crate::remote::{Disposition, RemoteError};
use crate::store::{Abort, Install, InstallStatus, Lease, OAuthTokens, Store, StoreError};

/// Refresh when the access token has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a refresher may hold the lease before others may take over.
const LEASE: Duration = Duration::from_secs(30);
/// How often a waiting caller re-reads the install while another instance refreshes.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Why no usable access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The tenant has no Klaviyo tokens (never installed, or uninstalled).
    #[error("tenant {0} is not installed")]
    NotInstalled(TenantId),
    /// Klaviyo refused the refresh token: the customer must install again.
    #[error("tenant {0} must reauthorize the Klaviyo app")]
    ReauthorizationRequired(TenantId),
    /// Klaviyo's token endpoint rejected the app's request (`invalid_client`, …): configuration.
    #[error("Klaviyo rejected the token refresh: {0}")]
    Rejected(String),
    /// The store or the token endpoint is unavailable: retry later.
    #[error("token refresh unavailable: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// How a task worker should treat the failure.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Unavailable(_) => Disposition::Retryable,
            Self::NotInstalled(_) | Self::ReauthorizationRequired(_) | Self::Rejected(_) => {
                Disposition::Permanent
            }
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(format!("{error:#}"))
    }
}

/// A Klaviyo call through [`TokenProvider::call`] failed.
#[derive(Debug, thiserror::Error)]
pub enum KlaviyoCallError {
    /// No usable token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Klaviyo answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl KlaviyoCallError {
    /// How a task worker should treat the failure.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Token(e) => e.disposition(),
            Self::Remote(e) => e.disposition(),
        }
    }
}

/// Hands out valid Klaviyo access tokens, refreshing them single-flight per tenant.
#[derive(Clone)]
pub struct TokenProvider {
    store: Arc<dyn Store>,
    keyring: Keyring,
    oauth: KlaviyoOAuth,
    /// Identifies this instance in leases.
    instance: String,
    /// One lock per tenant: callers of this instance queue here instead of all racing for the
    /// store lease, and the ones behind the refresher then find the fresh token.
    local: Arc<std::sync::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A token as handed out: the plaintext, plus the sealed form that identifies it in the store.
struct Issued {
    secret: SecretString,
    sealed: Sealed,
}

impl TokenProvider {
    /// A provider over the store's install records.
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, oauth: KlaviyoOAuth) -> Self {
        Self {
            store,
            keyring,
            oauth,
            instance: uuid::Uuid::new_v4().to_string(),
            local: Arc::default(),
        }
    }

    /// A valid access token for the tenant, refreshed first when it expires within [`REFRESH_MARGIN`].
    pub async fn access_token(&self, tenant: &TenantId) -> Result<SecretString, TokenError> {
        Ok(self.current(tenant).await?.secret)
    }

    /// Runs a Klaviyo call with the tenant's token; on a 401 refreshes once and runs it again.
    pub async fn call<T, F, Fut>(&self, tenant: &TenantId, call: F) -> Result<T, KlaviyoCallError>
    where
        F: Fn(SecretString) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        let issued = self.current(tenant).await?;
        match call(issued.secret).await {
            Err(error) if error.disposition() == Disposition::Reauthorize => {
                tracing::info!(%tenant, "Klaviyo answered 401; refreshing the access token once");
                let fresh = self.refresh(tenant, Some(&issued.sealed)).await?;
                Ok(call(fresh.secret).await?)
            }
            other => Ok(other?),
        }
    }

    /// The stored token if it is fresh enough, else a refreshed one.
    async fn current(&self, tenant: &TenantId) -> Result<Issued, TokenError> {
        let install = self.store.install(tenant).await?;
        let tokens = usable_tokens(tenant, install.as_ref())?;
        if remaining(tokens, Timestamp::now()) > REFRESH_MARGIN {
            return self.issue(&tokens.access_token);
        }
        let stale = tokens.access_token.clone();
        self.refresh(tenant, Some(&stale)).await
    }

    /// Replaces `stale` with a fresh token, unless another caller already did; waits while
    /// another instance holds the refresh lease.
    async fn refresh(
        &self,
        tenant: &TenantId,
        stale: Option<&Sealed>,
    ) -> Result<Issued, TokenError> {
        let local = self.local_lock(tenant);
        let _queued = local.lock().await;
        // Every attempt is its own lease holder: callers in one instance must exclude each other
        // too (with rotation, a second refresh with the same token gets `invalid_grant`).
        let holder = format!("{}/{}", self.instance, uuid::Uuid::new_v4());
        let deadline = tokio::time::Instant::now() + LEASE + REFRESH_MARGIN;
        loop {
            match self.take_lease(tenant, stale, &holder).await? {
                LeaseOutcome::Acquired(refresh_token) => {
                    return self
                        .refresh_holding_lease(tenant, &refresh_token, &holder)
                        .await;
                }
                LeaseOutcome::AlreadyRefreshed(access) => return self.issue(&access),
                LeaseOutcome::Busy if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(WAIT_POLL).await
                }
                LeaseOutcome::Busy => {
                    return Err(TokenError::Unavailable(format!(
                        "tenant {tenant}: another instance is still refreshing"
                    )));
                }
            }
        }
    }

    /// In one transaction: if the stored token is no longer `stale`, someone refreshed already;
    /// if another holder's lease is live, we are busy; else take the lease.
    async fn take_lease(
        &self,
        tenant: &TenantId,
        stale: Option<&Sealed>,
        holder: &str,
    ) -> Result<LeaseOutcome, TokenError> {
        let now = Timestamp::now();
        let until = now + SignedDuration::try_from(LEASE).unwrap_or(SignedDuration::from_secs(30));
        let result = self
            .store
            .update_install(tenant, &|install| {
                let mut install = install.ok_or_else(|| Abort(NOT_INSTALLED.into()))?;
                let Some(tokens) = usable_tokens_for_lease(&install) else {
                    return Err(Abort(NOT_INSTALLED.into()));
                };
                if stale.is_some_and(|stale| &tokens.access_token != stale)
                    && remaining(tokens, now) > REFRESH_MARGIN
                {
                    return Err(Abort(ALREADY_REFRESHED.into()));
                }
                if install
                    .refresh_lease
                    .as_ref()
                    .is_some_and(|lease| lease.holder != holder && lease.until > now)
                {
                    return Err(Abort(BUSY.into()));
                }
                install.refresh_lease = Some(Lease {
                    holder: holder.to_owned(),
                    until,
                });
                Ok(install)
            })
            .await;
        match result {
            Ok(install) => {
                let tokens = install
                    .tokens
                    .as_ref()
                    .ok_or_else(|| TokenError::NotInstalled(tenant.clone()))?;
                Ok(LeaseOutcome::Acquired(tokens.refresh_token.clone()))
            }
            Err(StoreError::Aborted(reason)) if reason == BUSY => Ok(LeaseOutcome::Busy),
            Err(StoreError::Aborted(reason)) if reason == ALREADY_REFRESHED => {
                let install = self.store.install(tenant).await?;
                let tokens = usable_tokens(tenant, install.as_ref())?;
                Ok(LeaseOutcome::AlreadyRefreshed(tokens.access_token.clone()))
            }
            Err(StoreError::Aborted(_)) => {
                let install = self.store.install(tenant).await?;
                Err(usable_tokens(tenant, install.as_ref())
                    .err()
                    .unwrap_or(TokenError::NotInstalled(tenant.clone())))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Calls the token endpoint while holding the lease and records the outcome.
    async fn refresh_holding_lease(
        &self,
        tenant: &TenantId,
        refresh_token: &Sealed,
        holder: &str,
    ) -> Result<Issued, TokenError> {
        let plaintext = self.keyring.open(refresh_token).map_err(|e| {
            TokenError::Unavailable(format!("cannot open the stored refresh token: {e}"))
        })?;
        match self.oauth.refresh(&plaintext).await {
            Ok(grant) => {
                let tokens = self.seal_grant(&grant, refresh_token);
                let access = tokens.access_token.clone();
                self.store
                    .update_install(tenant, &|install| {
                        let mut install = install.ok_or_else(|| Abort(NOT_INSTALLED.into()))?;
                        install.tokens = Some(tokens.clone());
                        release_if_held(&mut install, holder);
                        Ok(install)
                    })
                    .await?;
                tracing::info!(%tenant, "refreshed the Klaviyo access token");
                Ok(Issued {
                    secret: grant.access_token,
                    sealed: access,
                })
            }
            Err(OAuthError::InvalidGrant(description)) => {
                tracing::warn!(%tenant, %description, "Klaviyo refused the refresh token; reauthorization required");
                self.store
                    .update_install(tenant, &|install| {
                        let mut install = install.ok_or_else(|| Abort(NOT_INSTALLED.into()))?;
                        release_if_held(&mut install, holder);
                        let reason =
                            Some("Klaviyo refused the refresh token (invalid_grant)".to_owned());
                        install.transition(
                            InstallStatus::ReauthorizationRequired,
                            reason,
                            Timestamp::now(),
                        );
                        Ok(install)
                    })
                    .await?;
                Err(TokenError::ReauthorizationRequired(tenant.clone()))
            }
            Err(other) => {
                self.release(tenant, holder).await;
                Err(match other {
                    OAuthError::Rejected { code, description } => {
                        TokenError::Rejected(format!("{code}: {description}"))
                    }
                    other => TokenError::Unavailable(other.to_string()),
                })
            }
        }
    }

    /// Gives the lease back after a failed refresh (best effort: it lapses by itself anyway).
    async fn release(&self, tenant: &TenantId, holder: &str) {
        let released = self
            .store
            .update_install(tenant, &|install| {
                let mut install = install.ok_or_else(|| Abort(NOT_INSTALLED.into()))?;
                release_if_held(&mut install, holder);
                Ok(install)
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%tenant, error = %error, "could not release the refresh lease; it lapses by itself");
        }
    }

    /// This instance's refresh lock of the tenant.
    fn local_lock(&self, tenant: &TenantId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(tenant.clone()).or_default().clone()
    }

    /// Seals a grant, keeping the old refresh token when Klaviyo did not return one.
    fn seal_grant(&self, grant: &TokenGrant, previous_refresh: &Sealed) -> OAuthTokens {
        let now = Timestamp::now();
        OAuthTokens {
            access_token: self.keyring.seal(&grant.access_token),
            refresh_token: grant
                .refresh_token
                .as_ref()
                .map_or_else(|| previous_refresh.clone(), |t| self.keyring.seal(t)),
            expires_at: expiry(now, grant.expires_in),
            scopes: grant.scopes.clone(),
            last_refreshed_at: Some(now),
        }
    }

    fn issue(&self, sealed: &Sealed) -> Result<Issued, TokenError> {
        let secret = self.keyring.open(sealed).map_err(|e| {
            TokenError::Unavailable(format!("cannot open the stored access token: {e}"))
        })?;
        Ok(Issued {
            secret,
            sealed: sealed.clone(),
        })
    }
}

enum LeaseOutcome {
    Acquired(Sealed),
    AlreadyRefreshed(Sealed),
    Busy,
}

const NOT_INSTALLED: &str = "not installed";
const ALREADY_REFRESHED: &str = "already refreshed";
const BUSY: &str = "another instance is refreshing";

/// When a token that lives `expires_in` from `now` expires.
pub fn expiry(now: Timestamp, expires_in: Duration) -> Timestamp {
    now + SignedDuration::try_from(expires_in).unwrap_or(SignedDuration::from_secs(3600))
}

fn remaining(tokens: &OAuthTokens, now: Timestamp) -> Duration {
    Duration::try_from(tokens.expires_at.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn usable_tokens<'a>(
    tenant: &TenantId,
    install: Option<&'a Install>,
) -> Result<&'a OAuthTokens, TokenError> {
    let install = install.ok_or_else(|| TokenError::NotInstalled(tenant.clone()))?;
    match install.status {
        InstallStatus::ReauthorizationRequired => {
            Err(TokenError::ReauthorizationRequired(tenant.clone()))
        }
        InstallStatus::Uninstalled | InstallStatus::Pending => {
            Err(TokenError::NotInstalled(tenant.clone()))
        }
        _ => install
            .tokens
            .as_ref()
            .ok_or_else(|| TokenError::NotInstalled(tenant.clone())),
    }
}

fn usable_tokens_for_lease(install: &Install) -> Option<&OAuthTokens> {
    match install.status {
        InstallStatus::ReauthorizationRequired
        | InstallStatus::Uninstalled
        | InstallStatus::Pending => None,
        _ => install.tokens.as_ref(),
    }
}

fn release_if_held(install: &mut Install, holder: &str) {
    if install
        .refresh_lease
        .as_ref()
        .is_some_and(|lease| lease.holder == holder)
    {
        install.refresh_lease = None;
    }
}
