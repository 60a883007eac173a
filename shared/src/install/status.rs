//! `GET /{tenant}/api/v1/install` (admin): the install status of product.md §2.
//!
//! `{"tenant", "status", "klaviyo_account_id", "resources": {"data_sources": {title: id},
//! "klaviyo_webhook_id", "omneo_webhooks": {trigger: id}, "queues": [name]}, "token":
//! {"expires_at", "last_refreshed_at", "scopes"} | null, "last_error": {"step", "message", "at"} |
//! null, "updated_at"}`. `token` is `null` when the install holds no tokens (ours). A registered
//! tenant that never installed answers `"status": "pending"` with empty resources and the tenant's
//! registration time as `updated_at`. No token or secret value is ever part of the answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Serialize;

use super::admin::AdminTenant;
use crate::api_error::ApiError;
use crate::app::App;
use crate::domain::TenantId;
use crate::queue::QueueName;
use crate::store::{Install, InstallStatus, InstallStep, OAuthTokens, StepError};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/{tenant}/api/v1/install", get(show))
}

/// Runs an install operation (provisioning, uninstall) to completion on its own task — a client
/// hanging up does not abandon it half-way — and answers its install as the status document.
pub(crate) async fn run_to_view<E>(
    operation: impl Future<Output = Result<Install, E>> + Send + 'static,
) -> Result<Json<InstallView>, ApiError>
where
    E: Into<ApiError> + Send + 'static,
{
    match tokio::spawn(operation).await {
        Ok(Ok(install)) => Ok(Json(InstallView::of(install))),
        Ok(Err(error)) => Err(error.into()),
        Err(panicked) => Err(ApiError::internal(&panicked)),
    }
}

/// The status document.
#[derive(Debug, Serialize)]
pub struct InstallView {
    /// The tenant id.
    pub tenant: TenantId,
    /// Where the install is in its life.
    pub status: InstallStatus,
    /// The Klaviyo account the tenant authorised.
    pub klaviyo_account_id: Option<String>,
    /// What provisioning created or found.
    pub resources: ResourcesView,
    /// The token's health (never its value); `None` without tokens.
    pub token: Option<TokenView>,
    /// The last failure and its step.
    pub last_error: Option<ErrorView>,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Provisioned resources.
#[derive(Debug, Serialize)]
pub struct ResourcesView {
    /// Klaviyo data source ids by title.
    pub data_sources: BTreeMap<String, String>,
    /// The Klaviyo system webhook id.
    pub klaviyo_webhook_id: Option<String>,
    /// Omneo webhook ids by trigger.
    pub omneo_webhooks: BTreeMap<String, String>,
    /// The Cloud Tasks queue names.
    pub queues: Vec<QueueName>,
}

/// The access token's health.
#[derive(Debug, Serialize)]
pub struct TokenView {
    /// When the access token expires.
    pub expires_at: Timestamp,
    /// When it was last refreshed (`null`: straight from the code exchange).
    pub last_refreshed_at: Option<Timestamp>,
    /// Scopes granted.
    pub scopes: Vec<String>,
}

/// The last failure.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    /// The step it happened at.
    pub step: InstallStep,
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

impl InstallView {
    /// The view of an install record.
    pub fn of(install: Install) -> Self {
        let Install {
            tenant,
            status,
            klaviyo_account_id,
            tokens,
            resources,
            last_error,
            updated_at,
            ..
        } = install;
        Self {
            tenant,
            status,
            klaviyo_account_id,
            resources: ResourcesView {
                data_sources: resources.data_sources,
                klaviyo_webhook_id: resources.klaviyo_webhook_id,
                omneo_webhooks: resources.omneo_webhooks,
                queues: resources.queues,
            },
            token: tokens.map(
                |OAuthTokens {
                     expires_at,
                     last_refreshed_at,
                     scopes,
                     ..
                 }| TokenView {
                    expires_at,
                    last_refreshed_at,
                    scopes,
                },
            ),
            last_error: last_error.map(|StepError { step, message, at }| ErrorView {
                step,
                message,
                at,
            }),
            updated_at,
        }
    }
}

async fn show(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<InstallView>, ApiError> {
    let install = app
        .store
        .install(&tenant.id)
        .await?
        .unwrap_or_else(|| Install::pending(tenant.id.clone(), tenant.created_at));
    Ok(Json(InstallView::of(install)))
}
