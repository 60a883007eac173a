//! Task queues between the receivers and the workers (product.md §5, §8; platform.md).
//!
//! Each tenant has two queues, `{task_queue_name}-{namespace}-inbound` and `…-outbound`. A [`Task`]
//! is posted as a JSON [`TaskEnvelope`] to `{INBOUND_TASK_URL}/tasks/inbound` or
//! `{OUTBOUND_TASK_URL}/tasks/outbound`. [`CloudTasksQueue`] is production; [`LocalQueue`] is an
//! in-process look-alike for local runs that dispatches over HTTP with the same `X-CloudTasks-*`
//! headers, retries with backoff and de-duplicates task names. [`task`] is the workers' side.

mod cloud_tasks;
mod local;
pub mod task;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::cloud_tasks::CloudTasksQueue;
pub use self::local::{LocalQueue, LocalQueueStats};
use crate::domain::TenantId;

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

/// A Cloud Tasks queue id: `{task_queue_name}-{namespace}-{direction}`, `[A-Za-z0-9-]{1,100}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueName(String);

impl QueueName {
    /// The queue of one tenant and direction. Characters Cloud Tasks does not accept become `-`.
    pub fn new(task_queue_name: &str, namespace: &str, direction: Direction) -> Self {
        let raw = format!("{task_queue_name}-{namespace}-{}", direction.as_str());
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Self(cleaned)
    }

    /// Parses a queue id as Cloud Tasks names it in `X-CloudTasks-QueueName`; a full path
    /// (`projects/P/locations/L/queues/Q`, as the emulator sends) gives its last segment.
    pub fn parse(raw: &str) -> Option<Self> {
        let id = raw.rsplit('/').next().unwrap_or(raw);
        let valid = (1..=100).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        valid.then(|| Self(id.to_owned()))
    }

    /// The queue id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A deterministic task id, `[A-Za-z0-9_-]`: the hex SHA-256 of what identifies the work, so the
/// same work enqueued twice is de-duplicated (never a timestamp prefix, which hurts Cloud Tasks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskName(String);

impl TaskName {
    /// A name derived from the parts (length-prefixed, so `["ab","c"]` ≠ `["a","bc"]`).
    pub fn from_parts(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Self(hex::encode(hasher.finalize()))
    }

    /// Parses a task id as Cloud Tasks sends it in `X-CloudTasks-TaskName`:
    /// `[A-Za-z0-9_-]{1,500}`.
    pub fn parse(raw: &str) -> Option<Self> {
        let valid = (1..=500).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self(raw.to_owned()))
    }

    /// The task id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// The JSON body of a task request. Keep it small: ids, not documents (the worker re-reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    /// The tenant the work is for.
    pub tenant: TenantId,
    /// What to do, e.g. `sync_profile`.
    pub kind: String,
    /// Kind-specific data.
    pub payload: serde_json::Value,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new task was created.
    Created,
    /// A task of that name already existed (or ran recently): nothing to do, and not an error.
    AlreadyExists,
}

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
    /// Settings for a tenant's queue of `direction`: outbound 10/s (under Klaviyo's steady
    /// 750/min per account), inbound 20/s; backoff 5 s → 300 s, 5 doublings, 20 attempts, 24 h.
    pub fn for_direction(direction: Direction) -> Self {
        Self {
            max_dispatches_per_second: match direction {
                Direction::Inbound => 20.0,
                Direction::Outbound => 10.0,
            },
            max_concurrent_dispatches: 20,
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
    fn queue_names_follow_the_product_pattern() {
        assert_eq!(
            QueueName::new("acme", "klaviyo", Direction::Inbound).as_str(),
            "acme-klaviyo-inbound"
        );
        assert_eq!(
            QueueName::new("acme_au", "kl.x", Direction::Outbound).as_str(),
            "acme-au-kl-x-outbound"
        );
    }

    #[test]
    fn queue_ids_parse_from_short_ids_and_full_paths() {
        let short = QueueName::parse("acme-klaviyo-inbound").unwrap();
        assert_eq!(short.as_str(), "acme-klaviyo-inbound");
        let full = QueueName::parse("projects/p/locations/l/queues/acme-klaviyo-inbound").unwrap();
        assert_eq!(full, short);
        assert_eq!(QueueName::parse(""), None);
        assert_eq!(QueueName::parse("projects/p/locations/l/queues/"), None);
        assert_eq!(QueueName::parse("bad_name"), None);
        assert_eq!(QueueName::parse(&"q".repeat(101)), None);
    }

    #[test]
    fn task_ids_parse_only_when_cloud_tasks_would_accept_them() {
        assert!(TaskName::parse("abc_DEF-123").is_some());
        assert_eq!(TaskName::parse(""), None);
        assert_eq!(TaskName::parse("a/b"), None);
        assert_eq!(TaskName::parse(&"t".repeat(501)), None);
    }

    #[test]
    fn task_names_are_deterministic_and_unambiguous() {
        assert_eq!(
            TaskName::from_parts(&["a", "b"]),
            TaskName::from_parts(&["a", "b"])
        );
        assert_ne!(
            TaskName::from_parts(&["ab", "c"]),
            TaskName::from_parts(&["a", "bc"])
        );
        let name = TaskName::from_parts(&["tenant", "profile", "42"]);
        assert_eq!(TaskName::parse(name.as_str()), Some(name.clone()));
        assert_eq!(name.as_str().len(), 64);
        assert!(name.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
