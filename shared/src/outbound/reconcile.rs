//! The outbound half of a scheduled reconciliation (product.md §10): an incremental backfill of
//! the profiles updated since the last run that covered everything, which catches the Omneo
//! changes whose webhooks were lost. The result (the run started, or why none) is recorded on the
//! tenant's reconciliation record; the run's own progress is the backfill's.

use jiff::{SignedDuration, Timestamp};

use super::backfill::{self, RunRequest, StartError};
use crate::job::{Job, store_setback};
use crate::queue::Reconcile;
use crate::store::{InstallStatus, ReconcileResult, ReconcileStatus, Reconciliation, RunTrigger};
use crate::worker::Setback;

/// Starts the incremental run, unless a backfill is already running.
pub async fn run(job: &Job<'_>, work: &Reconcile) -> Result<(), Setback> {
    let tenant = &job.tenant.id;
    let fallback = first_cursor(job, work.scheduled_at);
    let record = job
        .app
        .store
        .update_reconciliation(tenant, &|current| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(tenant.clone()));
            record.outbound_since.get_or_insert(fallback);
            Ok(record)
        })
        .await
        .map_err(store_setback("read_reconciliation"))?;
    let since = record.outbound_since.unwrap_or(fallback);
    let request = RunRequest {
        since: Some(since),
        dry_run: false,
        trigger: RunTrigger::Reconciliation,
    };
    let (status, message, run_id) = match backfill::start(job.app, tenant, request).await {
        Ok(run) => (
            ReconcileStatus::Succeeded,
            format!(
                "started backfill run {} of the profiles updated since {since}",
                run.id
            ),
            Some(run.id),
        ),
        Err(StartError::Running(run)) => (
            ReconcileStatus::Skipped,
            format!("backfill run {} is running", run.id),
            Some(run.id),
        ),
        Err(StartError::NotInstalled) => (
            ReconcileStatus::Failed,
            "the tenant is not installed".to_owned(),
            None,
        ),
        Err(StartError::Unavailable(error)) => {
            return Err(Setback::retry("start_run", format!("{error:#}")));
        }
    };
    tracing::info!(%tenant, ?status, %message, "outbound reconciliation");
    let result = ReconcileResult {
        at: Timestamp::now(),
        status,
        message,
        run_id,
        events: None,
    };
    job.app
        .store
        .update_reconciliation(tenant, &|current| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(tenant.clone()));
            record.outbound = Some(result.clone());
            Ok(record)
        })
        .await
        .map(drop)
        .map_err(store_setback("record_reconciliation"))
}

/// Where the first reconciliation of a tenant starts: when it was last installed (webhooks carry
/// what came after), else one interval before the schedule.
fn first_cursor(job: &Job<'_>, scheduled_at: Timestamp) -> Timestamp {
    let installed = job
        .install
        .history
        .iter()
        .rev()
        .find(|change| change.status == InstallStatus::Installed)
        .map(|change| change.at);
    installed.unwrap_or_else(|| {
        let interval = i64::from(job.tenant.settings.reconcile_interval_minutes.max(1));
        scheduled_at
            .checked_sub(SignedDuration::from_mins(interval))
            .unwrap_or(scheduled_at)
    })
}
