//! Klaviyo → Omneo: the `inbound-task` worker (product.md §7, §8), run by [`crate::job`].
//!
//! | module | concern |
//! |---|---|
//! | [`consent`] | the event → comms → interaction table, and the merge of a profile's events |
//! | [`events`] | *Klaviyo events*: one profile's consent events → one comms update, interactions |
//! | [`flow`] | *Flow action*: a Flow webhook's reward, benefit or interaction, once per delivery |
//! | [`reconcile`] | reconciliation's inbound half: Klaviyo's consent events since the cursor |
//!
//! Outcomes, retries and failure records are the same as outbound's ([`crate::worker::settle`]);
//! so are the profile lease and the done-markers ([`crate::job::Job`]).

pub mod consent;
pub mod events;
pub mod flow;
pub mod reconcile;

use std::sync::Arc;

use axum::Router;

use crate::app::App;
use crate::job::{Job, Worker};
use crate::queue::{Direction, Work};
use crate::worker::Setback;

/// The routes of `inbound-task`.
pub fn routes(app: Arc<App>) -> Router {
    crate::job::routes::<Inbound>(app)
}

/// The Klaviyo → Omneo worker.
pub struct Inbound;

impl Worker for Inbound {
    const DIRECTION: Direction = Direction::Inbound;

    async fn run<'a>(job: &'a Job<'a>) -> Result<(), Setback> {
        match job.work() {
            Work::KlaviyoEvents(work) => events::klaviyo_events(job, work).await,
            Work::FlowAction(work) => flow::flow_action(job, work).await,
            Work::ReconcileInbound(work) => reconcile::run(job, work).await,
            Work::SyncProfile(_)
            | Work::ProfileDeleted(_)
            | Work::SendMetric(_)
            | Work::DataSourceRecord(_)
            | Work::BackfillChunk(_)
            | Work::ReconcileOutbound(_) => Err(Setback::give_up(
                "route",
                "outbound work reached the inbound worker",
            )),
        }
    }
}
