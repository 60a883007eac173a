//! Task queues between the receivers and the workers (product.md §5, §8; platform.md).
//!
//! Each tenant has two queues ([`TenantQueues`]), `{task_queue_name}-{namespace}-inbound` and
//! `…-outbound`. A [`Task`] is posted as a JSON [`TaskEnvelope`] — the tenant plus a typed [`Work`]
//! — to `{INBOUND_TASK_URL}/tasks/inbound` or `{OUTBOUND_TASK_URL}/tasks/outbound`.
//! [`CloudTasksQueue`] is production; [`LocalQueue`] is an in-process look-alike for local runs
//! that dispatches over HTTP with the same [`header`]s, retries with backoff and de-duplicates
//! task names. The workers' side (reading a push, settling its outcome) is [`crate::worker`].

mod cloud_tasks;
mod local;
mod names;
mod work;

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::cloud_tasks::CloudTasksQueue;
pub use self::local::{LocalQueue, LocalQueueStats};
pub use self::names::{QueueName, TaskName, TenantQueues};
pub use self::work::{
    BackfillChunk, ConsentEvent, DataSourceRecord, DefinitionId, FlowAction, FlowDedupe,
    FlowRequest, IssueBenefit, IssueReward, KlaviyoEvents, OUR_CUSTOM_SOURCE, ProfileDeleted,
    Reconcile, RecordInteraction, SendMetric, SyncProfile, TaskKind, Work,
};
use crate::api_error::ApiError;
use crate::domain::{OmneoProfileId, TenantId};

/// The `X-CloudTasks-*` request headers Cloud Tasks pushes tasks with (platform.md).
pub mod header {
    /// The queue id (the emulator sends the full queue path).
    pub const QUEUE_NAME: &str = "X-CloudTasks-QueueName";
    /// The task id.
    pub const TASK_NAME: &str = "X-CloudTasks-TaskName";
    /// How many times the task was retried: 0 on the first attempt.
    pub const RETRY_COUNT: &str = "X-CloudTasks-TaskRetryCount";
    /// How many attempts got a non-5xx answer from the handler.
    pub const EXECUTION_COUNT: &str = "X-CloudTasks-TaskExecutionCount";
    /// The schedule time of the attempt, in seconds since the Unix epoch.
    pub const ETA: &str = "X-CloudTasks-TaskETA";
    /// The HTTP status of the previous attempt (retries only).
    pub const PREVIOUS_RESPONSE: &str = "X-CloudTasks-TaskPreviousResponse";
    /// Why the task is being retried (retries only).
    pub const RETRY_REASON: &str = "X-CloudTasks-TaskRetryReason";
}

/// The base URLs tasks are pushed to, by direction (`INBOUND_TASK_URL`, `OUTBOUND_TASK_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTargets {
    /// Base URL of `inbound-task`.
    pub inbound: url::Url,
    /// Base URL of `outbound-task`.
    pub outbound: url::Url,
}

impl TaskTargets {
    /// The base URL of the worker of `direction`; also the OIDC audience of its tasks.
    pub fn base(&self, direction: Direction) -> &url::Url {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// The full URL a task of `direction` is posted to.
    pub fn url(&self, direction: Direction) -> url::Url {
        crate::config::join(self.base(direction), direction.task_path())
    }
}

/// Which way the work flows, and so which queue and worker take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Klaviyo → Omneo, done by `inbound-task` at `/tasks/inbound`.
    Inbound,
    /// Omneo → Klaviyo, done by `outbound-task` at `/tasks/outbound`.
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }

    /// The worker path tasks of this direction are posted to.
    pub fn task_path(self) -> &'static str {
        match self {
            Self::Inbound => "/tasks/inbound",
            Self::Outbound => "/tasks/outbound",
        }
    }
}

/// The largest task body Cloud Tasks accepts (100 KiB); receivers refuse what would not fit.
pub const MAX_TASK_BYTES: usize = 100 * 1024;

/// One unit of work to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Queue to put it on.
    pub queue: QueueName,
    /// Which worker runs it.
    pub direction: Direction,
    /// The body the worker receives.
    pub envelope: TaskEnvelope,
    /// Deterministic name for de-duplication.
    pub name: TaskName,
    /// Run no earlier than this (≤ 30 days ahead); `None`: now.
    pub schedule_at: Option<Timestamp>,
}

impl Task {
    /// A sync of `profile` coalesced into the current bucket of `window_seconds` (a tenant's
    /// `coalesce_seconds`): named from (tenant, profile, window, bucket) and scheduled at the
    /// bucket's end, so every change inside one window is one task, which re-reads the profile.
    pub fn coalesced_sync(
        tenant: &TenantId,
        queue: QueueName,
        profile: OmneoProfileId,
        window_seconds: u32,
        now: Timestamp,
    ) -> Self {
        let window = i64::from(window_seconds.max(1));
        let bucket = now.as_second().div_euclid(window);
        let bucket_end = Timestamp::from_second((bucket + 1) * window).unwrap_or(now);
        let name = TaskName::from_parts(&[
            "sync",
            tenant.as_str(),
            profile.as_str(),
            &window.to_string(),
            &bucket.to_string(),
        ]);
        Self {
            queue,
            direction: Direction::Outbound,
            envelope: TaskEnvelope {
                tenant: tenant.clone(),
                work: Work::SyncProfile(SyncProfile {
                    profile_id: profile,
                }),
            },
            name,
            schedule_at: Some(bucket_end),
        }
    }
}

/// The JSON body of a task request: `{"tenant", "kind", "payload"}`. Keep it small: ids, not
/// documents (the worker re-reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    /// The tenant the work is for.
    pub tenant: TenantId,
    /// What to do, with its data.
    #[serde(flatten)]
    pub work: Work,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new task was created.
    Created,
    /// A task of that name already existed (or ran recently): nothing to do, and not an error.
    AlreadyExists,
}

/// A fixed-window rate limit: at most `requests` calls in each `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    /// Calls allowed per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

impl WindowLimit {
    /// The limit as a steady rate.
    pub const fn per_second(self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64()
    }
}

/// Klaviyo's steady limit of `POST /api/profile-import` (tier L, klaviyo.md): 750 requests per
/// account in each fixed 60-second window. Every outbound sync task makes one profile import, so
/// the outbound queues' dispatch rate ([`OUTBOUND_DISPATCHES_PER_SECOND`]) is derived from it.
///
/// This is the one place the figure lives: install applies it through
/// [`QueueSettings::for_direction`], and the Terraform of the queues (infrastructure issue) must
/// be generated from or checked against the settings derived here, not restate 750.
pub const KLAVIYO_PROFILE_IMPORT_STEADY: WindowLimit = WindowLimit {
    requests: 750,
    window: Duration::from_secs(60),
};

/// The share of [`KLAVIYO_PROFILE_IMPORT_STEADY`] the outbound queue dispatches at, in percent.
/// Klaviyo counts in fixed 60-second windows while a queue spaces dispatches evenly with a small
/// burst and jitter: at the full 12.5/s a window that starts on a burst goes over and answers 429.
/// 96 % leaves 30 requests per window for that.
const OUTBOUND_SHARE_PERCENT: u64 = 96;

/// `max_dispatches_per_second` of every tenant's outbound queue: [`OUTBOUND_SHARE_PERCENT`] of
/// [`KLAVIYO_PROFILE_IMPORT_STEADY`], rounded down to a whole rate — 750 / 60 s × 96 % = 12/s.
pub const OUTBOUND_DISPATCHES_PER_SECOND: f64 =
    (KLAVIYO_PROFILE_IMPORT_STEADY.requests as u64 * OUTBOUND_SHARE_PERCENT
        / (100 * KLAVIYO_PROFILE_IMPORT_STEADY.window.as_secs())) as f64;

/// `max_concurrent_dispatches` of every tenant's outbound queue. A sync task makes one profile
/// import plus a few reads (Omneo profile, Klaviyo match) and takes well under a second, so 10 in
/// flight already sustain the 12/s rate limit; more concurrency would not raise a rate-limited
/// throughput, only the number of requests Klaviyo and Omneo see at once when a burst is queued.
pub const OUTBOUND_CONCURRENT_DISPATCHES: u32 = 10;

/// Retry and rate settings of a queue (platform.md's suggestions are the defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Dispatch rate ceiling.
    pub max_dispatches_per_second: f64,
    /// Concurrent dispatch ceiling.
    pub max_concurrent_dispatches: u32,
    /// Attempts before Cloud Tasks gives up (the worker records the last one as a failure).
    pub max_attempts: u32,
    /// Give up retrying after this long.
    pub max_retry_duration: Duration,
    /// First backoff.
    pub min_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// How many times the backoff doubles before growing linearly.
    pub max_doublings: u32,
}

impl QueueSettings {
    /// Settings for a tenant's queue of `direction`: outbound [`OUTBOUND_DISPATCHES_PER_SECOND`]
    /// (12/s, under Klaviyo's profile-import steady limit) with
    /// [`OUTBOUND_CONCURRENT_DISPATCHES`] (10) in flight, inbound 20/s with 20; both back off
    /// 5 s → 300 s, 5 doublings, 20 attempts, 24 h.
    pub fn for_direction(direction: Direction) -> Self {
        let (max_dispatches_per_second, max_concurrent_dispatches) = match direction {
            Direction::Inbound => (20.0, 20),
            Direction::Outbound => (
                OUTBOUND_DISPATCHES_PER_SECOND,
                OUTBOUND_CONCURRENT_DISPATCHES,
            ),
        };
        Self {
            max_dispatches_per_second,
            max_concurrent_dispatches,
            max_attempts: 20,
            max_retry_duration: Duration::from_secs(24 * 3600),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            max_doublings: 5,
        }
    }
}

/// What can go wrong enqueueing.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The named queue does not exist (provisioning has not created it).
    #[error("queue {0} does not exist")]
    QueueNotFound(String),
    /// The task was refused as malformed (e.g. too large).
    #[error("task rejected: {0}")]
    Rejected(String),
    /// The queue service is unreachable or failed; receivers answer 503 so the sender retries.
    #[error("queue unavailable: {0:#}")]
    Unavailable(#[source] anyhow::Error),
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        match error {
            QueueError::Unavailable(_) | QueueError::QueueNotFound(_) => Self::unavailable(&error),
            QueueError::Rejected(_) => Self::internal(&error),
        }
    }
}

/// Enqueues tasks and makes sure queues exist.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Enqueues a task; a task of the same name is [`Enqueued::AlreadyExists`], not an error.
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError>;
    /// Creates the queue with `settings` if missing, or updates its settings.
    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbound_rate_stays_strictly_under_klaviyos_steady_limit() {
        let outbound = QueueSettings::for_direction(Direction::Outbound);
        let limit = KLAVIYO_PROFILE_IMPORT_STEADY;
        assert_eq!(limit.per_second(), 12.5);
        assert!(outbound.max_dispatches_per_second > 0.0);
        assert!(
            outbound.max_dispatches_per_second < limit.per_second(),
            "{}/s is not under {}/s",
            outbound.max_dispatches_per_second,
            limit.per_second()
        );
        let per_window = outbound.max_dispatches_per_second * limit.window.as_secs_f64();
        assert!(
            per_window < f64::from(limit.requests),
            "{per_window} per window"
        );
        assert_eq!(
            outbound.max_dispatches_per_second, 12.0,
            "96 %, rounded down"
        );
    }
}
