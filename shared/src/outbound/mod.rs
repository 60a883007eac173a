//! Omneo → Klaviyo: the `outbound-task` worker (product.md §6, §8), run by [`crate::job`].
//!
//! | module | concern |
//! |---|---|
//! | [`mapping`] | exclusions and the one mapping of an Omneo profile to a Klaviyo profile import |
//! | [`consent`] | Omneo's consent vs Klaviyo's: the subscribe / unsubscribe writes of a sync |
//! | [`sync`] | *sync profile*: re-read, exclude, match, import, identity, consent, sync state |
//! | [`removal`] | *profile deleted* (and a re-read that finds the profile gone) |
//! | [`targets`] | the `metric` and `data-source-record` targets' work |
//! | [`backfill`] | whole-tenant backfill through Klaviyo's bulk jobs, in chunk tasks |
//! | [`reconcile`] | reconciliation's outbound half: an incremental backfill |
//!
//! **Idempotency.** Every step is safe to repeat: profile import is an upsert, consent jobs set a
//! state and are only sent on a difference read from Klaviyo just before, events carry a
//! deterministic `unique_id`, data-source records a stable `id`, and deletions are harmless twice.
//! Work on one profile (sync and deletion) holds the per-profile lease (a stale attempt could
//! otherwise write an older profile after a newer one).

pub mod backfill;
pub mod consent;
pub mod mapping;
pub mod reconcile;
pub mod removal;
pub mod sync;
pub mod targets;

use std::sync::Arc;

use axum::Router;

use crate::app::App;
use crate::job::{Job, Worker};
use crate::queue::{Direction, Work};
use crate::worker::Setback;

/// The routes of `outbound-task`.
pub fn routes(app: Arc<App>) -> Router {
    crate::job::routes::<Outbound>(app)
}

/// The Omneo → Klaviyo worker.
pub struct Outbound;

impl Worker for Outbound {
    const DIRECTION: Direction = Direction::Outbound;

    async fn run<'a>(job: &'a Job<'a>) -> Result<(), Setback> {
        match job.work() {
            Work::SyncProfile(work) => sync::sync_profile(job, &work.profile_id).await,
            Work::ProfileDeleted(work) => removal::profile_deleted(job, work).await,
            Work::SendMetric(work) => targets::send_metric(job, work).await,
            Work::DataSourceRecord(work) => targets::data_source_record(job, work).await,
            Work::BackfillChunk(work) => backfill::chunk::run(job, work).await,
            Work::ReconcileOutbound(work) => reconcile::run(job, work).await,
            Work::KlaviyoEvents(_) | Work::FlowAction(_) | Work::ReconcileInbound(_) => Err(
                Setback::give_up("route", "inbound work reached the outbound worker"),
            ),
        }
    }
}
