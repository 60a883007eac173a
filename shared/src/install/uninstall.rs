//! Uninstall (product.md §5.7): `DELETE /{tenant}/api/v1/install` (admin).
//!
//! In order, remote side first so that a failure leaves the tokens in place for a retry:
//! 1. delete the Klaviyo system webhook(s) named `Omneo {tenant}` and the recorded webhook id
//!    (404 = already gone) — skipped when Klaviyo already refused the refresh token
//!    (`reauthorization_required`: the app is gone from the account and with it its webhooks);
//! 2. disable (never delete) the tenant's Omneo webhooks — those of our triggers in the tenant's
//!    namespace, plus the recorded ids — with `PUT {"is_active": false}`;
//! 3. revoke the refresh token at Klaviyo's revocation endpoint;
//! 4. unbind the Klaviyo account from the tenant, drop the stored tokens and the webhook id, and
//!    move to `uninstalled` — a compare-and-set on the refresh token just revoked: a token refresh
//!    that stored a new grant in between (its call was in flight) gets that grant revoked too, so
//!    no live token outlives the uninstall. (A refresh that finishes after this write finds no
//!    tokens and revokes its own grant: see [`crate::access::tokens`].)
//!
//! Data sources stay (they hold customer data), as do the queues and the disabled Omneo webhooks'
//! ids. Answers: `200` with the install status document (status `uninstalled`); again → `200`, with no
//! remote call; a tenant that never installed (`pending`, no install record) → `409 not_installed`
//! (there is nothing to uninstall, and CX Manager's view is wrong); a remote failure → `502
//! uninstall_failed` naming the step and its cause, nothing changed locally, safe to retry (the
//! error keeps the classified cause, [`StepFailure::disposition`], for callers that act on it);
//! `409 provisioning_in_progress` while a provisioning run holds the tenant's lease.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::delete;
use axum::{Json, Router};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

use super::admin::AdminTenant;
use super::failure::StepFailure;
use super::lease::{InstallLease, LeaseError};
use super::provision::OMNEO_TRIGGERS;
use super::provision::klaviyo_webhook::find_klaviyo_webhooks;
use super::status::{InstallView, run_to_view};
use crate::access::{KlaviyoCallError, Pacer, RateClass, TokenError, klaviyo_call};
use crate::api_error::{ApiError, ErrorChain, ErrorCode};
use crate::app::App;
use crate::crypto::constant_time_eq;
use crate::domain::TenantId;
use crate::omneo::models::WebhookUpdate;
use crate::store::{Install, InstallStatus, StoreError, TokenSecret};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/{tenant}/api/v1/install", delete(uninstall_route))
}

/// A remote step of uninstall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UninstallStep {
    /// Deleting the Klaviyo system webhook.
    KlaviyoWebhook,
    /// Disabling the Omneo webhooks.
    OmneoWebhooks,
    /// Revoking the refresh token.
    Revoke,
}

impl fmt::Display for UninstallStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::KlaviyoWebhook => "klaviyo_webhook",
            Self::OmneoWebhooks => "omneo_webhooks",
            Self::Revoke => "revoke",
        })
    }
}

/// Why an uninstall did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The tenant never installed: nothing to uninstall.
    #[error("tenant {0} was never installed")]
    NeverInstalled(TenantId),
    /// A provisioning run (or another uninstall) holds the tenant's lease.
    #[error("a provisioning or uninstall of tenant {0} is running; retry later")]
    Busy(TenantId),
    /// A remote step failed; nothing was changed locally, so calling again retries it.
    #[error("uninstall failed at {step}")]
    Step {
        /// The step.
        step: UninstallStep,
        /// Why, with the classified cause.
        #[source]
        failure: StepFailure,
    },
    /// The tokens kept changing under the uninstall (refreshes landing between revocations).
    #[error("the tenant's tokens kept changing during the uninstall; retry")]
    TokensChanging,
    /// The store failed.
    #[error("the store failed during the uninstall")]
    Store(#[from] StoreError),
}

impl From<UninstallError> for ApiError {
    fn from(error: UninstallError) -> Self {
        let message = ErrorChain(&error).to_string();
        match &error {
            UninstallError::NeverInstalled(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::NotInstalled,
                format!("{message}: there is nothing to uninstall"),
            ),
            UninstallError::Busy(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::ProvisioningInProgress,
                message,
            ),
            UninstallError::Step { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UninstallFailed,
                format!("{message}; nothing was changed, call again to retry"),
            ),
            UninstallError::TokensChanging | UninstallError::Store(StoreError::Unavailable(_)) => {
                Self::unavailable(&error)
            }
            UninstallError::Store(_) => Self::internal(&error),
        }
    }
}

/// Uninstalls the tenant (see the module docs); an uninstalled tenant is returned as it is.
pub async fn uninstall(app: &App, tenant: &TenantId) -> Result<Install, UninstallError> {
    if let Current::AlreadyUninstalled(install) = current(app, tenant).await? {
        return Ok(install);
    }
    let lease = InstallLease::acquire(app, tenant)
        .await
        .map_err(|e| match e {
            LeaseError::Busy => UninstallError::Busy(tenant.clone()),
            LeaseError::Store(store) => UninstallError::Store(store),
        })?;
    let result = run(app, tenant).await;
    lease.release(app).await;
    result
}

/// Where the tenant's install stands before uninstalling.
enum Current {
    /// Something to uninstall.
    Installed(Install),
    /// Nothing left to do.
    AlreadyUninstalled(Install),
}

/// Reads the install; never installed (no record, or `pending`) is an error.
async fn current(app: &App, tenant: &TenantId) -> Result<Current, UninstallError> {
    let install = app.store.install(tenant).await?;
    match install {
        None => Err(UninstallError::NeverInstalled(tenant.clone())),
        Some(install) => match install.status {
            InstallStatus::Pending => Err(UninstallError::NeverInstalled(tenant.clone())),
            InstallStatus::Uninstalled => Ok(Current::AlreadyUninstalled(install)),
            _ => Ok(Current::Installed(install)),
        },
    }
}

/// The uninstall, holding the lease.
async fn run(app: &App, tenant: &TenantId) -> Result<Install, UninstallError> {
    // Re-read: the install may have changed before the lease was taken.
    let install = match current(app, tenant).await? {
        Current::AlreadyUninstalled(install) => return Ok(install),
        Current::Installed(install) => install,
    };
    if install.status == InstallStatus::ReauthorizationRequired {
        tracing::info!(%tenant, "Klaviyo refused the refresh token already; not deleting the Klaviyo webhook");
    } else {
        delete_klaviyo_webhooks(app, tenant, &install).await?;
    }
    disable_omneo_webhooks(app, tenant, &install).await?;
    if let Some(account) = &install.klaviyo_account_id {
        app.store.unbind_klaviyo_account(account, tenant).await?;
    }
    let done = revoke_and_clear(app, tenant).await?;
    tracing::info!(%tenant, "uninstalled");
    Ok(done)
}

/// How many times the revoke-then-clear loop runs before giving up on tokens that keep changing.
const REVOKE_ATTEMPTS: usize = 4;

/// Revokes the stored refresh token, then clears the install — only if the stored refresh token
/// is still the one revoked; a refresh that stored another one meanwhile gets it revoked too.
async fn revoke_and_clear(app: &App, tenant: &TenantId) -> Result<Install, UninstallError> {
    let keyring = &app.config.keyring;
    for _ in 0..REVOKE_ATTEMPTS {
        let install = app.store.install(tenant).await?;
        let revoked = match install.as_ref().and_then(|i| i.tokens.as_ref()) {
            Some(tokens) => {
                let refresh = tokens
                    .open(keyring, tenant, TokenSecret::RefreshToken)
                    .map_err(|e| step(UninstallStep::Revoke, StepFailure::Sealed(e)))?;
                app.oauth
                    .revoke(&refresh)
                    .await
                    .map_err(|e| step(UninstallStep::Revoke, StepFailure::Revoke(e)))?;
                Some(refresh)
            }
            None => None,
        };
        let now = Timestamp::now();
        let cleared = app
            .store
            .update_install_or(tenant, |current| {
                let mut install = current.ok_or(TokensChanged)?;
                let stored = install
                    .tokens
                    .as_ref()
                    .map(|t| t.open(keyring, tenant, TokenSecret::RefreshToken));
                let unchanged = match (&stored, &revoked) {
                    (None, None) => true,
                    (Some(Ok(stored)), Some(revoked)) => same(stored, revoked),
                    _ => false,
                };
                if !unchanged {
                    return Err(TokensChanged);
                }
                install.tokens = None;
                install.refresh_lease = None;
                install.klaviyo_account_id = None;
                install.resources.klaviyo_webhook_id = None;
                install.last_error = None;
                install.transition(
                    InstallStatus::Uninstalled,
                    Some("uninstalled through the admin API".into()),
                    now,
                );
                Ok(install)
            })
            .await?;
        match cleared {
            Ok(install) => return Ok(install),
            Err(TokensChanged) => {
                tracing::info!(%tenant, "a token refresh landed during the uninstall; revoking its grant too");
            }
        }
    }
    Err(UninstallError::TokensChanging)
}

/// The stored tokens are not the ones just revoked.
struct TokensChanged;

fn same(a: &SecretString, b: &SecretString) -> bool {
    constant_time_eq(a.expose_secret().as_bytes(), b.expose_secret().as_bytes())
}

fn step(step: UninstallStep, failure: StepFailure) -> UninstallError {
    UninstallError::Step { step, failure }
}

/// Deletes every webhook named `Omneo {tenant}` and the recorded one.
async fn delete_klaviyo_webhooks(
    app: &App,
    tenant: &TenantId,
    install: &Install,
) -> Result<(), UninstallError> {
    let pacer = Pacer::default();
    let failed = |e: KlaviyoCallError| step(UninstallStep::KlaviyoWebhook, e.into());
    let found = match find_klaviyo_webhooks(&app.tokens, &app.klaviyo, tenant, &pacer).await {
        Ok(found) => found,
        Err(KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_))) => {
            tracing::info!(%tenant, "Klaviyo refused the refresh token; not deleting the Klaviyo webhook");
            return Ok(());
        }
        Err(other) => return Err(failed(other)),
    };
    let ids: BTreeSet<String> = found
        .into_iter()
        .chain(install.resources.klaviyo_webhook_id.clone())
        .collect();
    for id in &ids {
        klaviyo_call(
            &app.tokens,
            &app.klaviyo,
            tenant,
            (&pacer, RateClass::Webhooks),
            |k, t| {
                let id = id.clone();
                async move { k.delete_webhook(&t, &id).await }
            },
        )
        .await
        .map_err(failed)?;
        tracing::info!(%tenant, webhook = id, "deleted the Klaviyo system webhook");
    }
    Ok(())
}

/// Turns off the tenant's active Omneo webhooks (ours by trigger in the namespace, or recorded).
async fn disable_omneo_webhooks(
    app: &App,
    tenant: &TenantId,
    install: &Install,
) -> Result<(), UninstallError> {
    let failed = |failure: StepFailure| step(UninstallStep::OmneoWebhooks, failure);
    let record = app
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| UninstallError::NeverInstalled(tenant.clone()))?;
    let client = app.omneo(&record).map_err(|e| failed(e.into()))?;
    let namespace = record.settings.namespace.as_str();
    let recorded: BTreeSet<&str> = install
        .resources
        .omneo_webhooks
        .values()
        .map(String::as_str)
        .collect();
    let webhooks = client
        .webhooks(namespace)
        .await
        .map_err(|e| failed(e.into()))?;
    let off = WebhookUpdate {
        is_active: Some(false),
        ..WebhookUpdate::default()
    };
    for webhook in webhooks.iter().filter(|w| w.is_active) {
        let ours = recorded.contains(webhook.id.as_str())
            || (OMNEO_TRIGGERS.contains(&webhook.trigger.as_str())
                && webhook
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| ns == namespace));
        if ours {
            client
                .update_webhook(&webhook.id, &off)
                .await
                .map_err(|e| failed(e.into()))?;
            tracing::info!(%tenant, webhook = %webhook.id, trigger = %webhook.trigger, "disabled an Omneo webhook");
        }
    }
    Ok(())
}

/// `DELETE /{tenant}/api/v1/install`.
async fn uninstall_route(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<InstallView>, ApiError> {
    let id = tenant.id;
    run_to_view(async move { uninstall(&app, &id).await }).await
}
