//! `GET /{tenant}/api/v1/install` (admin): the install status of product.md §2.
//!
//! `{"tenant", "status", "klaviyo_account_id", "resources": {"data_sources": {title: id},
//! "klaviyo_webhook_id", "omneo_webhooks": {trigger: id}, "queues": [name]}, "token":
//! {"expires_at", "last_refreshed_at", "scopes"} | null, "last_error": {"step", "message", "at"} |
//! null, "updated_at", "reconciliation"}`. `token` is `null` when the install holds no tokens
//! (ours). A registered tenant that never installed answers `"status": "pending"` with empty
//! resources and the tenant's registration time as `updated_at`. No token or secret value is ever
//! part of the answer.
//!
//! `reconciliation` (ours, product.md §10): `{"interval_minutes", "status": "on" | "off" |
//! "reauthorization_required" | "not_installed", "missing_scopes": [...], "last_scheduled_at", "next_due_at",
//! "outbound": {"since", "last"}, "inbound": {"events_after", "last"}}`, each `last` the latest
//! result `{"at", "status", "message", "run_id", "events"}` or `null`. A tenant whose grant lacks
//! `events:read metrics:read` shows `reauthorization_required` here while everything else syncs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::admin::AdminTenant;
use crate::api_error::ApiError;
use crate::app::App;
use crate::domain::TenantId;
use crate::klaviyo::oauth::missing_reconciliation_scopes;
use crate::queue::QueueName;
use crate::store::{
    Install, InstallStatus, InstallStep, OAuthTokens, ReconcileResult, ReconcileStatus,
    Reconciliation, StepError,
};

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
    /// Reconciliation's schedule, cursors and last results (the status route shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation: Option<ReconciliationView>,
}

/// Whether reconciliation runs for the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconciliationState {
    /// The tenant holds no Klaviyo grant (never installed, or uninstalled).
    NotInstalled,
    /// It runs every `interval_minutes`.
    On,
    /// `reconcile_interval_minutes` is 0.
    Off,
    /// The grant lacks its scopes: the inbound half waits for a re-authorisation.
    ReauthorizationRequired,
}

/// Reconciliation as the install status shows it.
#[derive(Debug, Serialize)]
pub struct ReconciliationView {
    /// `reconcile_interval_minutes`.
    pub interval_minutes: u32,
    /// Whether it runs.
    pub status: ReconciliationState,
    /// The scopes it lacks.
    pub missing_scopes: Vec<&'static str>,
    /// When it was last scheduled.
    pub last_scheduled_at: Option<Timestamp>,
    /// When it is next due (while on).
    pub next_due_at: Option<Timestamp>,
    /// The outbound half.
    pub outbound: OutboundReconciliationView,
    /// The inbound half.
    pub inbound: InboundReconciliationView,
}

/// The outbound half: its cursor and last result.
#[derive(Debug, Serialize)]
pub struct OutboundReconciliationView {
    /// The next incremental run reads profiles updated since then.
    pub since: Option<Timestamp>,
    /// How the last one ended.
    pub last: Option<ReconcileResultView>,
}

/// The inbound half: its cursor and last result.
#[derive(Debug, Serialize)]
pub struct InboundReconciliationView {
    /// Klaviyo consent events after this are read next.
    pub events_after: Option<Timestamp>,
    /// How the last one ended.
    pub last: Option<ReconcileResultView>,
}

/// The latest result of one half.
#[derive(Debug, Serialize)]
pub struct ReconcileResultView {
    /// When it ended.
    pub at: Timestamp,
    /// How.
    pub status: ReconcileStatus,
    /// In a few words.
    pub message: String,
    /// The backfill run it started (outbound).
    pub run_id: Option<String>,
    /// Consent events read (inbound).
    pub events: Option<u64>,
}

impl From<ReconcileResult> for ReconcileResultView {
    fn from(result: ReconcileResult) -> Self {
        let ReconcileResult {
            at,
            status,
            message,
            run_id,
            events,
        } = result;
        Self {
            at,
            status,
            message,
            run_id,
            events,
        }
    }
}

impl ReconciliationView {
    /// The view from the tenant's interval, its grant's scopes (`None` without a grant) and its
    /// record.
    pub fn of(
        interval_minutes: u32,
        granted: Option<&[String]>,
        record: Option<Reconciliation>,
    ) -> Self {
        let missing_scopes = granted
            .map(missing_reconciliation_scopes)
            .unwrap_or_default();
        let status = match (granted, interval_minutes, missing_scopes.is_empty()) {
            (None, _, _) => ReconciliationState::NotInstalled,
            (Some(_), 0, _) => ReconciliationState::Off,
            (Some(_), _, false) => ReconciliationState::ReauthorizationRequired,
            (Some(_), _, true) => ReconciliationState::On,
        };
        let record = record.as_ref();
        let last_scheduled_at = record.and_then(|r| r.last_scheduled_at);
        let next_due_at = last_scheduled_at.and_then(|last| {
            let interval = SignedDuration::from_mins(i64::from(interval_minutes));
            (interval_minutes > 0)
                .then(|| last.checked_add(interval).ok())
                .flatten()
        });
        Self {
            interval_minutes,
            status,
            missing_scopes,
            last_scheduled_at,
            next_due_at,
            outbound: OutboundReconciliationView {
                since: record.and_then(|r| r.outbound_since),
                last: record.and_then(|r| r.outbound.clone()).map(Into::into),
            },
            inbound: InboundReconciliationView {
                events_after: record.and_then(|r| r.events_after),
                last: record.and_then(|r| r.inbound.clone()).map(Into::into),
            },
        }
    }
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
            reconciliation: None,
        }
    }
}

async fn show(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<InstallView>, ApiError> {
    let (install, record) = tokio::join!(
        app.store.install(&tenant.id),
        app.store.reconciliation(&tenant.id)
    );
    let install =
        install?.unwrap_or_else(|| Install::pending(tenant.id.clone(), tenant.created_at));
    let granted = install.tokens.as_ref().map(|tokens| tokens.scopes.clone());
    let mut view = InstallView::of(install);
    view.reconciliation = Some(ReconciliationView::of(
        tenant.settings.reconcile_interval_minutes,
        granted.as_deref(),
        record?,
    ));
    Ok(Json(view))
}
