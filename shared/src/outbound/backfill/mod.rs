//! Whole-tenant backfill (product.md §10): every Omneo profile (or those updated since a time)
//! mapped as the live sync maps it and written through Klaviyo's bulk jobs.
//!
//! A run is one record (`backfills/{tenant}`, [`BackfillRun`]) and a chain of chunk tasks on the
//! tenant's outbound queue ([`chunk`]): each chunk reads its pages of Omneo's listing, enqueues
//! the next chunk at once (so chunks overlap across instances), then imports its profiles and
//! counts them on the run. The run record is the checkpoint: the chunks enqueued, the bulk
//! import jobs each created (a retried chunk polls them instead of importing again), which are
//! done, and the counts. The run completes when the listing reached its end and every chunk is
//! done; a chunk that fails for good fails the run; `DELETE` cancels it (chunks still queued
//! then do nothing).
//!
//! | module | concern |
//! |---|---|
//! | [`chunk`] | one chunk: list, map, import, poll, write back, consent, sync state, count |
//! | [`bulk`] | packing imports and consent changes into bulk jobs within Klaviyo's limits |

pub mod bulk;
pub mod chunk;

use jiff::Timestamp;

use crate::app::App;
use crate::domain::TenantId;
use crate::queue::{BackfillChunk, Direction, QueueName, Task, TaskEnvelope, TaskName, Work};
use crate::store::{
    BackfillRun, InstallStatus, Reconciliation, RunCounts, RunState, RunTrigger, StoreError,
};

/// What a new run should cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRequest {
    /// Only profiles updated at or after this time (`None`: all).
    pub since: Option<Timestamp>,
    /// Count, write nothing.
    pub dry_run: bool,
    /// Who asks.
    pub trigger: RunTrigger,
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A run is already running (it is returned).
    #[error("backfill run {} is running", .0.id)]
    Running(Box<BackfillRun>),
    /// The tenant is not installed, or has no outbound queue.
    #[error("the tenant is not installed")]
    NotInstalled,
    /// The store or the queue is unavailable.
    #[error(transparent)]
    Unavailable(#[from] anyhow::Error),
}

/// Starts a run: records it (refused while another runs) and enqueues its first chunk.
pub async fn start(
    app: &App,
    tenant: &TenantId,
    request: RunRequest,
) -> Result<BackfillRun, StartError> {
    let install = app
        .store
        .install(tenant)
        .await
        .map_err(|e| StartError::Unavailable(e.into()))?;
    let queue = match install {
        Some(install) if install.status == InstallStatus::Installed => install
            .queue(Direction::Outbound)
            .cloned()
            .ok_or(StartError::NotInstalled)?,
        _ => return Err(StartError::NotInstalled),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = Timestamp::now();
    let started = app
        .store
        .update_backfill_or(tenant, |current| match current {
            Some(run) if run.state == RunState::Running => Err(Box::new(run)),
            _ => {
                let mut run = BackfillRun {
                    tenant: tenant.clone(),
                    id: id.clone(),
                    trigger: request.trigger,
                    since: request.since,
                    dry_run: request.dry_run,
                    state: RunState::Running,
                    started_at: now,
                    finished_at: None,
                    total: None,
                    pages_per_chunk: 0,
                    listing_done: false,
                    chunks: Default::default(),
                    counts: RunCounts::default(),
                    errors: Vec::new(),
                    failure: None,
                };
                run.chunk_mut(1);
                Ok(run)
            }
        })
        .await
        .map_err(|e| StartError::Unavailable(e.into()))?
        .map_err(StartError::Running)?;
    let first = chunk_task(tenant, &queue, &started.id, 1, Vec::new());
    if let Err(error) = app.queue.enqueue(&first).await {
        let message = format!("the first chunk could not be enqueued: {error}");
        end(app, tenant, &started.id, RunState::Failed, Some(message)).await;
        return Err(StartError::Unavailable(error.into()));
    }
    tracing::info!(%tenant, run = %started.id, since = ?request.since, dry_run = request.dry_run, "backfill started");
    Ok(started)
}

/// Cancels the running run; `None` when none runs (the latest run, if any, is returned as is).
pub async fn cancel(app: &App, tenant: &TenantId) -> Result<Option<BackfillRun>, StoreError> {
    let now = Timestamp::now();
    let cancelled = app
        .store
        .update_backfill_or(tenant, |current| match current {
            Some(mut run) if run.state == RunState::Running => {
                run.state = RunState::Cancelled;
                run.finished_at = Some(now);
                Ok(run)
            }
            _ => Err(()),
        })
        .await?;
    Ok(cancelled.ok())
}

/// Ends run `run_id` in `state` if it is still running (a later run is left alone).
pub(crate) async fn end(
    app: &App,
    tenant: &TenantId,
    run_id: &str,
    state: RunState,
    failure: Option<String>,
) {
    let now = Timestamp::now();
    let ended = app
        .store
        .update_backfill_or(tenant, |current| match current {
            Some(mut run) if run.id == run_id && run.state == RunState::Running => {
                run.state = state;
                run.finished_at = Some(now);
                run.failure.clone_from(&failure);
                Ok(run)
            }
            _ => Err(()),
        })
        .await;
    if let Err(error) = ended {
        tracing::warn!(%tenant, run = run_id, %error, "could not record the end of a backfill run");
    }
}

/// The chunk task of `run_id` starting at `first_page`: named from the run and the page, so a
/// chunk is enqueued once however often its predecessor runs.
pub fn chunk_task(
    tenant: &TenantId,
    queue: &QueueName,
    run_id: &str,
    first_page: u32,
    skip: Vec<crate::domain::OmneoProfileId>,
) -> Task {
    let page = first_page.to_string();
    Task {
        queue: queue.clone(),
        direction: Direction::Outbound,
        envelope: TaskEnvelope {
            tenant: tenant.clone(),
            work: Work::BackfillChunk(BackfillChunk {
                run_id: run_id.to_owned(),
                first_page,
                skip,
            }),
        },
        name: TaskName::from_parts(&["backfill", tenant.as_str(), run_id, &page]),
        schedule_at: None,
    }
}

/// After a run completed: reconciliation continues from its start when it covered everything
/// since the current cursor (a full run always does; a dry run never counts).
pub(crate) async fn advance_outbound_cursor(
    app: &App,
    run: &BackfillRun,
) -> Result<(), StoreError> {
    if run.dry_run || run.state != RunState::Completed {
        return Ok(());
    }
    let result = app
        .store
        .update_reconciliation_or(&run.tenant, |current| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(run.tenant.clone()));
            let covers = match (run.since, record.outbound_since) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(since), Some(cursor)) => since <= cursor,
            };
            if !covers || record.outbound_since.is_some_and(|c| c >= run.started_at) {
                return Err(());
            }
            record.outbound_since = Some(run.started_at);
            Ok(record)
        })
        .await?;
    if result.is_ok() {
        tracing::info!(tenant = %run.tenant, since = %run.started_at, "reconciliation's outbound cursor advanced");
    }
    Ok(())
}
