//! Klaviyo access tokens per tenant (product.md §5.6).
//!
//! Access tokens last about an hour. [`TokenProvider::access_token`] refreshes ahead of expiry
//! (at least [`REFRESH_MARGIN`] before), [`TokenProvider::call`] refreshes once more when Klaviyo
//! answers 401 anyway.
//!
//! **One refresh at a time.** Only one refresh per tenant runs at a time across every instance:
//! the refresher takes a lease on the install document in a store transaction (each attempt is its
//! own lease holder), and everyone else waits for the new token instead of spending the refresh
//! token a second time (with rotation on, a second refresh would kill the first one's token).
//! Within one instance, callers first queue on a per-tenant lock, so they do not all contend for
//! the lease. The lease lasts [`LEASE_PER_CALL_TIMEOUT`] times the token call's timeout
//! ([`KlaviyoOAuth::call_timeout`]): it cannot lapse while its holder's call may still succeed.
//!
//! **The write is a compare-and-set on the refresh token spent.** A refresh's outcome is written
//! only if the install is still active and its stored refresh token is still the one the call
//! spent. So a reinstall (new tokens) or an uninstall (no tokens) that lands while a refresh is in
//! flight is never overwritten by the old grant; and a grant obtained for an install that was
//! uninstalled meanwhile is revoked, so no live token is left behind. The lease orders the
//! spending; it is deliberately not a condition of the write: a refresher whose lease lapsed (an
//! instance paused mid-call) may hold the only live refresh token after rotation, and throwing it
//! away would let the next refresher's `invalid_grant` end a healthy install.
//!
//! **`invalid_grant`** means the customer uninstalled or the token died — but only for the token
//! that is still stored. For a token that is no longer the stored one it means "someone already
//! refreshed (or reinstalled)", and the caller gets the stored token. And a refresher that took
//! over a *lapsed* lease does not end the install on `invalid_grant` either: with rotation, the
//! lapsed holder's call may have spent the token first and may still store the live grant; the
//! refresher answers [`TokenError::Busy`] (retry later) and marks its lease, so that the next
//! refresher, if the token really is dead, does end it. A dead stored token moves the install to
//! `reauthorization_required`, after which every call fails fast with
//! [`TokenError::ReauthorizationRequired`], so workers park their tasks instead of calling Klaviyo.
//! The refresh token Klaviyo returns is always stored.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{CryptoError, Keyring, constant_time_eq};
use crate::domain::TenantId;
use crate::klaviyo::oauth::{KlaviyoOAuth, OAuthError, TokenGrant};
use crate::remote::{Disposition, RemoteError};
use crate::store::{Install, InstallStatus, Lease, OAuthTokens, Store, StoreError, TokenSecret};

/// Refresh when the access token has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How many token-call timeouts a refresh lease lasts: one for the call, the rest for the store
/// transactions around it and the clock differences between instances.
pub const LEASE_PER_CALL_TIMEOUT: u32 = 3;
/// How often a waiting caller re-reads the install while another instance refreshes.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How many times one refresh looks again after the stored tokens changed under it.
const MAX_SUPERSEDED: u32 = 4;

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
    #[error("Klaviyo rejected the token refresh")]
    Rejected(#[source] OAuthError),
    /// Klaviyo's token endpoint could not be reached or answered something unreadable.
    #[error("Klaviyo's token endpoint is unavailable")]
    Endpoint(#[source] OAuthError),
    /// Another instance held the refresh lease for longer than a caller waits.
    #[error("another instance is still refreshing the tokens of tenant {0}")]
    Busy(TenantId),
    /// The store failed.
    #[error("the store failed while handling the tokens")]
    Store(#[from] StoreError),
    /// A stored token cannot be opened (a key missing from `ENCRYPTION_KEY`, or a moved value).
    #[error("a stored token cannot be opened")]
    Sealed(#[source] CryptoError),
}

impl TokenError {
    /// How a task worker should treat the failure.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Endpoint(_) | Self::Busy(_) | Self::Store(StoreError::Unavailable(_)) => {
                Disposition::Retryable
            }
            Self::NotInstalled(_)
            | Self::ReauthorizationRequired(_)
            | Self::Rejected(_)
            | Self::Store(_)
            | Self::Sealed(_) => Disposition::Permanent,
        }
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
    /// How long a refresher holds the lease.
    lease: Duration,
    /// Identifies this instance in leases.
    instance: String,
    /// One lock per tenant: callers of this instance queue here instead of all racing for the
    /// store lease, and the ones behind the refresher then find the fresh token.
    local: Arc<std::sync::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A token as handed out.
struct Issued {
    secret: SecretString,
}

/// Why taking the refresh lease did not hand the caller a refresh token to spend.
enum LeaseRefusal {
    NotInstalled,
    Reauthorize,
    /// Someone refreshed since the caller saw its token: the stored access token is fresh.
    AlreadyRefreshed(crate::crypto::Sealed),
    /// Another holder's lease is live.
    Busy,
}

/// A refresh lease taken, with the refresh token it lets the holder spend.
struct Taken {
    /// The stored refresh token, sealed.
    refresh_token: crate::crypto::Sealed,
    /// The lease was taken over from a refresher whose lease lapsed mid-refresh.
    after_lapsed_refresh: bool,
}

/// Why a refresh's outcome was not written.
enum WriteRefusal {
    /// The install is gone, uninstalled or holds no tokens.
    Inactive,
    /// The stored refresh token is no longer the one spent (refreshed or reinstalled meanwhile).
    Superseded,
    /// A stored token cannot be opened.
    Sealed(CryptoError),
}

/// What spending the refresh token came to.
enum Spent {
    /// A fresh token, stored.
    Issued(Issued),
    /// The stored tokens changed under the call: look at them again.
    Superseded,
}

impl TokenProvider {
    /// A provider over the store's install records; its lease lasts [`LEASE_PER_CALL_TIMEOUT`]
    /// times `oauth`'s call timeout.
    pub fn new(store: Arc<dyn Store>, keyring: Keyring, oauth: KlaviyoOAuth) -> Self {
        Self {
            store,
            keyring,
            lease: oauth.call_timeout() * LEASE_PER_CALL_TIMEOUT,
            oauth,
            instance: uuid::Uuid::new_v4().to_string(),
            local: Arc::default(),
        }
    }

    /// How long a refresher holds the lease.
    pub fn lease(&self) -> Duration {
        self.lease
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
        match call(issued.secret.clone()).await {
            Err(error) if error.disposition() == Disposition::Reauthorize => {
                tracing::info!(%tenant, "Klaviyo answered 401; refreshing the access token once");
                let fresh = self.refresh(tenant, &issued.secret).await?;
                Ok(call(fresh.secret).await?)
            }
            other => Ok(other?),
        }
    }

    /// The stored token if it is fresh enough, else a refreshed one.
    async fn current(&self, tenant: &TenantId) -> Result<Issued, TokenError> {
        let install = self.store.install(tenant).await?;
        let tokens = usable_tokens(tenant, install.as_ref())?;
        let access = self.open(tenant, tokens, TokenSecret::AccessToken)?;
        if remaining(tokens, Timestamp::now()) > REFRESH_MARGIN {
            return Ok(Issued { secret: access });
        }
        self.refresh(tenant, &access).await
    }

    /// Replaces `stale` with a fresh token, unless another caller already did; waits while
    /// another instance holds the refresh lease.
    async fn refresh(&self, tenant: &TenantId, stale: &SecretString) -> Result<Issued, TokenError> {
        let local = self.local_lock(tenant);
        let _queued = local.lock().await;
        // Every attempt is its own lease holder: callers in one instance must exclude each other
        // too (with rotation, a second refresh with the same token gets `invalid_grant`).
        let holder = format!("{}/{}", self.instance, uuid::Uuid::new_v4());
        let deadline = tokio::time::Instant::now() + self.lease + REFRESH_MARGIN;
        let mut superseded = 0;
        loop {
            match self.take_lease(tenant, stale, &holder).await? {
                Ok(taken) => match self.spend(tenant, &taken, &holder).await? {
                    Spent::Issued(issued) => return Ok(issued),
                    Spent::Superseded if superseded < MAX_SUPERSEDED => superseded += 1,
                    Spent::Superseded => return Err(TokenError::Busy(tenant.clone())),
                },
                Err(LeaseRefusal::AlreadyRefreshed(access)) => {
                    let secret = self
                        .keyring
                        .open(&access, &TokenSecret::AccessToken.at(tenant))
                        .map_err(TokenError::Sealed)?;
                    return Ok(Issued { secret });
                }
                Err(LeaseRefusal::NotInstalled) => {
                    return Err(TokenError::NotInstalled(tenant.clone()));
                }
                Err(LeaseRefusal::Reauthorize) => {
                    return Err(TokenError::ReauthorizationRequired(tenant.clone()));
                }
                Err(LeaseRefusal::Busy) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(WAIT_POLL).await;
                }
                Err(LeaseRefusal::Busy) => return Err(TokenError::Busy(tenant.clone())),
            }
        }
    }

    /// In one transaction: if the stored access token is no longer `stale` and is fresh, someone
    /// refreshed already; if another holder's lease is live, we are busy; else take the lease and
    /// return the (sealed) refresh token to spend.
    async fn take_lease(
        &self,
        tenant: &TenantId,
        stale: &SecretString,
        holder: &str,
    ) -> Result<Result<Taken, LeaseRefusal>, TokenError> {
        let now = Timestamp::now();
        let until = now
            .saturating_add(signed(self.lease))
            .unwrap_or(Timestamp::MAX);
        // Set by the (last) run of the transaction that took the lease.
        let took_over = AtomicBool::new(false);
        let outcome = self
            .store
            .update_install_or(tenant, |install| {
                let mut install = install.ok_or(LeaseRefusal::NotInstalled)?;
                let tokens =
                    usable_tokens(tenant, Some(&install)).map_err(|error| match error {
                        TokenError::ReauthorizationRequired(_) => LeaseRefusal::Reauthorize,
                        _ => LeaseRefusal::NotInstalled,
                    })?;
                let replaced = tokens
                    .open(&self.keyring, tenant, TokenSecret::AccessToken)
                    .is_ok_and(|stored| !same_secret(&stored, stale));
                if replaced && remaining(tokens, now) > REFRESH_MARGIN {
                    return Err(LeaseRefusal::AlreadyRefreshed(tokens.access_token.clone()));
                }
                let previous = install.refresh_lease.as_ref();
                if previous.is_some_and(|lease| lease.holder != holder && lease.until > now) {
                    return Err(LeaseRefusal::Busy);
                }
                took_over.store(
                    previous.is_some_and(|lease| lease.holder != holder && !lease.refused_grant),
                    Ordering::Relaxed,
                );
                install.refresh_lease = Some(Lease {
                    holder: holder.to_owned(),
                    until,
                    refused_grant: false,
                });
                Ok(install)
            })
            .await?;
        Ok(outcome.map(|install| Taken {
            refresh_token: install
                .tokens
                .expect("a lease is only taken on an install with tokens")
                .refresh_token,
            after_lapsed_refresh: took_over.load(Ordering::Relaxed),
        }))
    }

    /// Spends the refresh token while holding the lease and records the outcome.
    async fn spend(
        &self,
        tenant: &TenantId,
        taken: &Taken,
        holder: &str,
    ) -> Result<Spent, TokenError> {
        let spent = match self
            .keyring
            .open(&taken.refresh_token, &TokenSecret::RefreshToken.at(tenant))
        {
            Ok(spent) => spent,
            Err(error) => {
                self.release(tenant, holder).await;
                return Err(TokenError::Sealed(error));
            }
        };
        match self.oauth.refresh(&spent).await {
            Ok(grant) => self.store_grant(tenant, &spent, grant, holder).await,
            Err(OAuthError::InvalidGrant(description)) => {
                self.refused(
                    tenant,
                    &spent,
                    holder,
                    taken.after_lapsed_refresh,
                    &description,
                )
                .await
            }
            Err(other) => {
                self.release(tenant, holder).await;
                Err(match other {
                    OAuthError::Rejected { .. } => TokenError::Rejected(other),
                    _ => TokenError::Endpoint(other),
                })
            }
        }
    }

    /// Stores a fresh grant if the install still holds the refresh token that was spent.
    async fn store_grant(
        &self,
        tenant: &TenantId,
        spent: &SecretString,
        grant: TokenGrant,
        holder: &str,
    ) -> Result<Spent, TokenError> {
        let now = Timestamp::now();
        let fresh = self.seal_grant(tenant, &grant, spent, now);
        let outcome = self
            .store
            .update_install_or(tenant, |install| {
                let mut install = install.ok_or(WriteRefusal::Inactive)?;
                self.still_spent(&install, tenant, spent)?;
                if install.status == InstallStatus::ReauthorizationRequired {
                    // A refresher that got `invalid_grant` for this very token while our call was
                    // turning it into a fresh one: ours is the live grant, so the install is back.
                    let before = status_before_reauthorization(&install);
                    let reason = Some("a concurrent refresh of the same token succeeded".into());
                    install.transition(before, reason, now);
                }
                install.tokens = Some(fresh.clone());
                release_if_held(&mut install, holder);
                // A holder that held back on `invalid_grant` for this token was waiting for us.
                if install
                    .refresh_lease
                    .as_ref()
                    .is_some_and(|l| l.refused_grant)
                {
                    install.refresh_lease = None;
                }
                Ok(install)
            })
            .await?;
        match outcome {
            Ok(_) => {
                tracing::info!(%tenant, "refreshed the Klaviyo access token");
                Ok(Spent::Issued(Issued {
                    secret: grant.access_token,
                }))
            }
            Err(WriteRefusal::Superseded) => {
                tracing::info!(%tenant, "the tokens were replaced during the refresh; keeping the stored ones");
                self.release(tenant, holder).await;
                Ok(Spent::Superseded)
            }
            Err(WriteRefusal::Inactive) => {
                // Uninstalled while the call was in flight: nobody will ever use this grant.
                let orphan = grant.refresh_token.as_ref().unwrap_or(spent);
                if let Err(error) = self.oauth.revoke(orphan).await {
                    tracing::warn!(%tenant, %error, "could not revoke the grant of a refresh that finished after an uninstall");
                } else {
                    tracing::info!(%tenant, "revoked the grant of a refresh that finished after an uninstall");
                }
                Err(TokenError::NotInstalled(tenant.clone()))
            }
            Err(WriteRefusal::Sealed(error)) => Err(TokenError::Sealed(error)),
        }
    }

    /// Klaviyo refused the spent refresh token: the install needs reauthorizing — if that token is
    /// still the stored one, and no lapsed refresher may still store a live grant for it (then the
    /// lease is kept, marked, and the caller told to retry).
    async fn refused(
        &self,
        tenant: &TenantId,
        spent: &SecretString,
        holder: &str,
        after_lapsed_refresh: bool,
        description: &str,
    ) -> Result<Spent, TokenError> {
        if after_lapsed_refresh {
            let held = self
                .store
                .update_install_or(tenant, |install| {
                    let mut install = install.ok_or(WriteRefusal::Inactive)?;
                    self.still_spent(&install, tenant, spent)?;
                    match install.refresh_lease.as_mut() {
                        Some(lease) if lease.holder == holder => lease.refused_grant = true,
                        _ => return Err(WriteRefusal::Superseded),
                    }
                    Ok(install)
                })
                .await?;
            return match held {
                Ok(_) => {
                    tracing::warn!(%tenant, "invalid_grant after taking over a lapsed refresh; waiting for it before asking for reauthorization");
                    Err(TokenError::Busy(tenant.clone()))
                }
                Err(WriteRefusal::Superseded) => Ok(Spent::Superseded),
                Err(WriteRefusal::Inactive) => Err(TokenError::NotInstalled(tenant.clone())),
                Err(WriteRefusal::Sealed(error)) => Err(TokenError::Sealed(error)),
            };
        }
        let outcome = self
            .store
            .update_install_or(tenant, |install| {
                let mut install = install.ok_or(WriteRefusal::Inactive)?;
                self.still_spent(&install, tenant, spent)?;
                release_if_held(&mut install, holder);
                if install.status != InstallStatus::ReauthorizationRequired {
                    let reason = Some("Klaviyo refused the refresh token (invalid_grant)".into());
                    install.transition(
                        InstallStatus::ReauthorizationRequired,
                        reason,
                        Timestamp::now(),
                    );
                }
                Ok(install)
            })
            .await?;
        match outcome {
            Ok(_) => {
                tracing::warn!(%tenant, %description, "Klaviyo refused the refresh token; reauthorization required");
                Err(TokenError::ReauthorizationRequired(tenant.clone()))
            }
            Err(WriteRefusal::Superseded) => {
                tracing::info!(%tenant, "invalid_grant for a refresh token that was already replaced; using the stored tokens");
                self.release(tenant, holder).await;
                Ok(Spent::Superseded)
            }
            Err(WriteRefusal::Inactive) => Err(TokenError::NotInstalled(tenant.clone())),
            Err(WriteRefusal::Sealed(error)) => Err(TokenError::Sealed(error)),
        }
    }

    /// The install is active (or waiting for reauthorization) and still holds `spent`.
    fn still_spent(
        &self,
        install: &Install,
        tenant: &TenantId,
        spent: &SecretString,
    ) -> Result<(), WriteRefusal> {
        if matches!(
            install.status,
            InstallStatus::Uninstalled | InstallStatus::Pending
        ) {
            return Err(WriteRefusal::Inactive);
        }
        let tokens = install.tokens.as_ref().ok_or(WriteRefusal::Inactive)?;
        let stored = tokens
            .open(&self.keyring, tenant, TokenSecret::RefreshToken)
            .map_err(WriteRefusal::Sealed)?;
        if same_secret(&stored, spent) {
            Ok(())
        } else {
            Err(WriteRefusal::Superseded)
        }
    }

    /// Gives the lease back after a refresh that wrote nothing, if it is still ours (best effort:
    /// it lapses by itself anyway).
    async fn release(&self, tenant: &TenantId, holder: &str) {
        let released = self
            .store
            .update_install_or(tenant, |install| {
                let mut install = install.ok_or(())?;
                if !release_if_held(&mut install, holder) {
                    return Err(());
                }
                Ok(install)
            })
            .await;
        if let Err(error) = released {
            tracing::warn!(%tenant, %error, "could not release the refresh lease; it lapses by itself");
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

    /// Seals a grant for the tenant, keeping the spent refresh token when Klaviyo returned none.
    fn seal_grant(
        &self,
        tenant: &TenantId,
        grant: &TokenGrant,
        spent: &SecretString,
        now: Timestamp,
    ) -> OAuthTokens {
        let refresh = grant.refresh_token.as_ref().unwrap_or(spent);
        OAuthTokens {
            access_token: TokenSecret::AccessToken.seal(&self.keyring, tenant, &grant.access_token),
            refresh_token: TokenSecret::RefreshToken.seal(&self.keyring, tenant, refresh),
            expires_at: expiry(now, grant.expires_in),
            scopes: grant.scopes.clone(),
            last_refreshed_at: Some(now),
        }
    }

    fn open(
        &self,
        tenant: &TenantId,
        tokens: &OAuthTokens,
        which: TokenSecret,
    ) -> Result<SecretString, TokenError> {
        tokens
            .open(&self.keyring, tenant, which)
            .map_err(TokenError::Sealed)
    }
}

/// When a token that lives `expires_in` from `now` expires.
pub fn expiry(now: Timestamp, expires_in: Duration) -> Timestamp {
    now.saturating_add(signed(expires_in))
        .unwrap_or(Timestamp::MAX)
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
}

fn remaining(tokens: &OAuthTokens, now: Timestamp) -> Duration {
    Duration::try_from(tokens.expires_at.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn same_secret(a: &SecretString, b: &SecretString) -> bool {
    constant_time_eq(a.expose_secret().as_bytes(), b.expose_secret().as_bytes())
}

/// The tokens of an install that may call Klaviyo.
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

/// The status the install had before it was marked `reauthorization_required`.
fn status_before_reauthorization(install: &Install) -> InstallStatus {
    install
        .history
        .iter()
        .rev()
        .map(|change| change.status)
        .find(|status| *status != InstallStatus::ReauthorizationRequired)
        .unwrap_or(InstallStatus::Installed)
}

/// Clears the refresh lease if `holder` holds it; whether it did.
fn release_if_held(install: &mut Install, holder: &str) -> bool {
    let held = install
        .refresh_lease
        .as_ref()
        .is_some_and(|lease| lease.holder == holder);
    if held {
        install.refresh_lease = None;
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_outlasts_the_call_it_covers() {
        let call = crate::klaviyo::oauth::CALL_TIMEOUT;
        let lease = call * LEASE_PER_CALL_TIMEOUT;
        assert!(
            lease >= call * 2,
            "a lease of {lease:?} must clearly outlast a call of {call:?}"
        );
    }
}
