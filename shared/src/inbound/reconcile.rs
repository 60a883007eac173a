//! The inbound half of a scheduled reconciliation (product.md §10): Klaviyo's consent events
//! since the tenant's cursor, read through the events API (`klaviyo.md` §Events and metrics) and
//! fed to the same *Klaviyo events* tasks the system webhook makes, one per profile. Events a
//! webhook already delivered are no-ops there (each event is claimed by its id), so the read
//! overlaps the cursor by [`OVERLAP`] to catch events Klaviyo indexed late.
//!
//! A tenant whose grant predates `events:read metrics:read` is recorded as needing
//! re-authorisation; its live sync is untouched.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::domain::{KlaviyoProfileId, KlaviyoTopic};
use crate::job::{Job, klaviyo_setback, store_setback};
use crate::klaviyo::models::EventQuery;
use crate::klaviyo::oauth::missing_reconciliation_scopes;
use crate::queue::{
    ConsentEvent, Direction, KlaviyoEvents, Reconcile, Task, TaskEnvelope, TaskName, Work,
};
use crate::store::{ReconcileResult, ReconcileStatus, Reconciliation};
use crate::worker::Setback;

/// How far before the cursor each read starts.
pub const OVERLAP: Duration = Duration::from_secs(10 * 60);
/// How far back the first read of a tenant goes.
pub const FIRST_LOOK_BACK: Duration = Duration::from_secs(24 * 3600);
/// Events per page (the API's largest).
const PAGE_SIZE: u16 = 1_000;

/// One profile's events found by the read.
#[derive(Default)]
struct ProfileEvents {
    email: Option<String>,
    events: Vec<ConsentEvent>,
}

/// Reads the consent events since the cursor and enqueues them; advances the cursor.
pub async fn run(job: &Job<'_>, work: &Reconcile) -> Result<(), Setback> {
    let granted = job
        .install
        .tokens
        .as_ref()
        .map(|tokens| tokens.scopes.as_slice())
        .unwrap_or_default();
    let missing = missing_reconciliation_scopes(granted);
    if !missing.is_empty() {
        let message = format!(
            "the Klaviyo grant lacks {}: re-authorise the app to reconcile consent",
            missing.join(" ")
        );
        tracing::warn!(tenant = %job.tenant.id, %message, "inbound reconciliation skipped");
        return record(
            job,
            ReconcileStatus::ReauthorizationRequired,
            message,
            0,
            None,
        )
        .await;
    }
    let cursor = job
        .app
        .store
        .reconciliation(&job.tenant.id)
        .await
        .map_err(store_setback("read_reconciliation"))?
        .and_then(|record| record.events_after);
    let after = cursor.map_or_else(
        || work.scheduled_at.checked_sub(FIRST_LOOK_BACK),
        |cursor| cursor.checked_sub(OVERLAP),
    );
    let after = after.unwrap_or(work.scheduled_at);
    match read_and_enqueue(job, after).await {
        Ok((events, tasks, newest)) => {
            let message = format!("{events} consent events since {after}, {tasks} tasks");
            let newest = newest.max(cursor.unwrap_or(after));
            record(
                job,
                ReconcileStatus::Succeeded,
                message,
                events,
                Some(newest),
            )
            .await
        }
        Err(setback) => {
            let message = format!("{}: {}", setback.step, setback.reason);
            record(job, ReconcileStatus::Failed, message, 0, None).await?;
            Err(setback)
        }
    }
}

/// Reads every consent metric's events after `after`, enqueues one task per profile: (events
/// read, tasks enqueued, the newest event time).
async fn read_and_enqueue(
    job: &Job<'_>,
    after: Timestamp,
) -> Result<(u64, usize, Timestamp), Setback> {
    let metrics = job
        .klaviyo(|k, t| async move { k.metrics(&t).await })
        .await
        .map_err(klaviyo_setback("read_metrics"))?;
    let mut profiles: BTreeMap<KlaviyoProfileId, ProfileEvents> = BTreeMap::new();
    let mut read = 0;
    let mut newest = after;
    for metric in metrics {
        let Some(topic) = KlaviyoTopic::from_metric_name(&metric.attributes.name) else {
            continue;
        };
        let query = EventQuery {
            metric_id: metric.id.clone(),
            after,
            page_size: PAGE_SIZE,
        };
        let mut next: Option<String> = None;
        loop {
            let page = job
                .klaviyo(|k, t| {
                    let (query, next) = (&query, next.clone());
                    async move { k.events_page(&t, query, next.as_deref()).await }
                })
                .await
                .map_err(klaviyo_setback("read_events"))?;
            for event in page.events {
                read += 1;
                let (profile, email, event) = event.consent_event(topic);
                newest = newest.max(event.at);
                if event.is_circular() {
                    continue;
                }
                let entry = profiles.entry(profile).or_default();
                if entry.email.is_none() {
                    entry.email = email.filter(|email| !email.trim().is_empty());
                }
                entry.events.push(event);
            }
            match page.next {
                Some(link) => next = Some(link),
                None => break,
            }
        }
    }
    let queue = job.queue(Direction::Inbound, "enqueue_events")?;
    let tasks: Vec<Task> = profiles
        .into_iter()
        .map(|(profile, found)| {
            let mut ids: Vec<&str> = found.events.iter().map(|e| e.id.as_str()).collect();
            ids.sort_unstable();
            let mut parts = vec![
                "klaviyo-reconcile",
                job.tenant.id.as_str(),
                profile.as_str(),
            ];
            parts.extend(ids);
            Task {
                queue: queue.clone(),
                direction: Direction::Inbound,
                name: TaskName::from_parts(&parts),
                envelope: TaskEnvelope {
                    tenant: job.tenant.id.clone(),
                    work: Work::KlaviyoEvents(KlaviyoEvents {
                        klaviyo_profile_id: profile,
                        email: found.email,
                        events: found.events,
                    }),
                },
                schedule_at: None,
            }
        })
        .collect();
    let results = futures_util::future::join_all(
        tasks.iter().map(|task| job.enqueue(task, "enqueue_events")),
    )
    .await;
    results.into_iter().collect::<Result<(), Setback>>()?;
    Ok((read, tasks.len(), newest))
}

/// Records how the inbound half ended (and the new cursor when it read).
async fn record(
    job: &Job<'_>,
    status: ReconcileStatus,
    message: String,
    events: u64,
    cursor: Option<Timestamp>,
) -> Result<(), Setback> {
    let tenant = &job.tenant.id;
    let result = ReconcileResult {
        at: Timestamp::now(),
        status,
        message,
        run_id: None,
        events: Some(events),
    };
    job.app
        .store
        .update_reconciliation(tenant, &|current| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(tenant.clone()));
            if let Some(cursor) = cursor {
                record.events_after = Some(record.events_after.map_or(cursor, |c| c.max(cursor)));
            }
            record.inbound = Some(result.clone());
            Ok(record)
        })
        .await
        .map(drop)
        .map_err(store_setback("record_reconciliation"))
}
