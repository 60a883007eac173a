//! Scheduling reconciliation (product.md §10). In production one Cloud Scheduler job calls
//! `POST /tasks/reconcile` on `outbound-task` every few minutes (with the task invoker's OIDC
//! token, like Cloud Tasks); locally the `local` binary calls [`sweep`] on a timer. A sweep
//! enqueues, for every installed tenant whose `reconcile_interval_minutes` (0 = off) has passed
//! since its last schedule, one task per direction: [`Work::ReconcileOutbound`] on its outbound
//! queue and [`Work::ReconcileInbound`] on its inbound queue.
//!
//! Instances may sweep at the same time: the schedule is taken by compare-and-set on the
//! tenant's reconciliation record, and the tasks are named from the tenant and the schedule time,
//! so a tenant is enqueued once per interval.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::api_error::ApiError;
use crate::app::App;
use crate::domain::TenantId;
use crate::queue::{Direction, Reconcile, Task, TaskEnvelope, TaskName, Work};
use crate::store::{InstallStatus, Reconciliation};

/// The sweep's path on `outbound-task`.
pub const SWEEP_PATH: &str = "/tasks/reconcile";

/// The route of the sweep.
pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route(SWEEP_PATH, post(sweep_now))
        .with_state(app)
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Tenants whose reconciliation was enqueued.
    pub enqueued: Vec<TenantId>,
}

async fn sweep_now(State(app): State<Arc<App>>) -> Result<Json<Swept>, ApiError> {
    Ok(Json(sweep(&app, Timestamp::now()).await?))
}

/// Enqueues the reconciliation of every tenant due at `now`.
pub async fn sweep(app: &App, now: Timestamp) -> Result<Swept, ApiError> {
    // At the store's precision, so the schedule reads back equal.
    let now = Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now);
    let mut swept = Swept::default();
    for tenant in app.store.tenant_ids().await? {
        if schedule(app, &tenant, now).await? {
            swept.enqueued.push(tenant);
        }
    }
    if !swept.enqueued.is_empty() {
        tracing::info!(tenants = ?swept.enqueued, "reconciliation enqueued");
    }
    Ok(swept)
}

/// Takes the tenant's schedule if it is due and enqueues its two tasks; `false` when it is not
/// due (not installed, turned off, or scheduled less than an interval ago).
async fn schedule(app: &App, tenant: &TenantId, now: Timestamp) -> Result<bool, ApiError> {
    let (record, install) = tokio::join!(app.store.tenant(tenant), app.store.install(tenant));
    let (Some(record), Some(install)) = (record?, install?) else {
        return Ok(false);
    };
    let minutes = record.settings.reconcile_interval_minutes;
    let (Some(outbound), Some(inbound)) = (
        install.queue(Direction::Outbound),
        install.queue(Direction::Inbound),
    ) else {
        return Ok(false);
    };
    if minutes == 0 || install.status != InstallStatus::Installed {
        return Ok(false);
    }
    let interval = SignedDuration::from_mins(i64::from(minutes));
    let taken = app
        .store
        .update_reconciliation_or(tenant, |current| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(tenant.clone()));
            let due = record
                .last_scheduled_at
                .is_none_or(|last| last.checked_add(interval).is_ok_and(|next| next <= now));
            if !due {
                return Err(());
            }
            record.last_scheduled_at = Some(now);
            Ok(record)
        })
        .await?;
    let Ok(_) = taken else { return Ok(false) };
    let work = Reconcile { scheduled_at: now };
    let at = now.as_microsecond().to_string();
    let task = |queue, direction: Direction, work| Task {
        queue,
        direction,
        name: TaskName::from_parts(&["reconcile", direction.as_str(), tenant.as_str(), &at]),
        envelope: TaskEnvelope {
            tenant: tenant.clone(),
            work,
        },
        schedule_at: None,
    };
    let tasks = [
        task(
            outbound.clone(),
            Direction::Outbound,
            Work::ReconcileOutbound(work.clone()),
        ),
        task(
            inbound.clone(),
            Direction::Inbound,
            Work::ReconcileInbound(work),
        ),
    ];
    for task in &tasks {
        if let Err(error) = app.queue.enqueue(task).await {
            // Give the schedule back so the next sweep tries again.
            release(app, tenant, now).await;
            return Err(error.into());
        }
    }
    Ok(true)
}

/// Undoes a schedule taken at `at` whose tasks could not be enqueued.
async fn release(app: &App, tenant: &TenantId, at: Timestamp) {
    let released = app
        .store
        .update_reconciliation_or(tenant, |current| match current {
            Some(mut record) if record.last_scheduled_at == Some(at) => {
                record.last_scheduled_at = None;
                Ok(record)
            }
            _ => Err(()),
        })
        .await;
    if let Err(error) = released {
        tracing::warn!(%tenant, %error, "could not give back a reconciliation schedule");
    }
}
