//! The in-process Cloud Tasks look-alike of local runs (product.md §9).
//!
//! It behaves like the real service where the workers can tell: tasks are POSTed to
//! `{target}/tasks/{direction}` with the JSON envelope and the `X-CloudTasks-*` headers; any
//! non-2xx answer or connection error is retried with Cloud Tasks' backoff (doubling from
//! `min_backoff` `max_doublings` times, then linear, capped at `max_backoff`), plus jitter, until
//! both `max_attempts` and `max_retry_duration` are spent; `schedule_at` is honoured; a task name
//! stays taken while its task is pending and for 24 h after it finished; enqueueing on a queue
//! that was never ensured fails like the real service. Rate limits are not applied.
//!
//! Delivery runs on tokio tasks: `enqueue` returns as soon as the task is accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    Enqueued, MAX_TASK_BYTES, Queue, QueueError, QueueName, QueueSettings, Task, TaskName,
    TaskTargets, header,
};

/// How long a task name stays taken after its task finished (Cloud Tasks: up to about 24 h).
const NAME_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Each backoff is drawn uniformly from ±20 % around its nominal value (then capped).
const JITTER: f64 = 0.2;
/// How long one attempt may take (Cloud Tasks' default dispatch deadline).
const DISPATCH_DEADLINE: Duration = Duration::from_secs(600);

/// Counters of a [`LocalQueue`], for tests and the local stack's status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalQueueStats {
    /// Tasks accepted and not yet finished (waiting for their time, in flight or backing off).
    pub pending: usize,
    /// HTTP attempts made, successful or not.
    pub attempts: u64,
    /// Tasks whose target answered 2xx.
    pub delivered: u64,
    /// Tasks dropped after their last allowed attempt failed.
    pub given_up: u64,
}

/// An in-process Cloud Tasks look-alike that dispatches over HTTP; see the module docs.
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
    backoff_scale: f64,
}

struct Inner {
    targets: TaskTargets,
    http: reqwest::Client,
    state: Mutex<State>,
    stats: watch::Sender<LocalQueueStats>,
}

#[derive(Default)]
struct State {
    queues: HashMap<QueueName, QueueSettings>,
    /// Taken task names, per queue: `None` while pending, else when the task finished.
    names: HashMap<(QueueName, TaskName), Option<Instant>>,
}

/// What the previous attempt got, sent on retries.
struct PreviousAttempt {
    status: Option<StatusCode>,
    reason: String,
}

impl LocalQueue {
    /// A queue posting tasks to `targets` with `http`.
    pub fn new(targets: TaskTargets, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets,
                http,
                state: Mutex::new(State::default()),
                stats: watch::Sender::new(LocalQueueStats::default()),
            }),
            backoff_scale: 1.0,
        }
    }

    /// Multiplies every retry duration (backoffs and `max_retry_duration`) by `scale`, so tests
    /// can watch the real schedule quickly. It applies to tasks enqueued through the result.
    ///
    /// # Panics
    /// If `scale` is not a positive finite number.
    pub fn with_backoff_scale(mut self, scale: f64) -> Self {
        assert!(
            scale.is_finite() && scale > 0.0,
            "backoff scale must be positive and finite, got {scale}"
        );
        self.backoff_scale = scale;
        self
    }

    /// The current counters.
    pub fn stats(&self) -> LocalQueueStats {
        *self.inner.stats.borrow()
    }

    /// Waits until no task is pending (returns at once when none is).
    pub async fn idle(&self) {
        let mut stats = self.inner.stats.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = stats.wait_for(|stats| stats.pending == 0).await;
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
        let body = serde_json::to_vec(&task.envelope)
            .map_err(|e| QueueError::Rejected(format!("task body is not JSON: {e}")))?;
        if body.len() > MAX_TASK_BYTES {
            return Err(QueueError::Rejected(format!(
                "task body is {} bytes, over the {MAX_TASK_BYTES}-byte limit",
                body.len()
            )));
        }
        {
            let mut state = self.inner.lock();
            if !state.queues.contains_key(&task.queue) {
                return Err(QueueError::QueueNotFound(task.queue.to_string()));
            }
            state
                .names
                .retain(|_, finished| finished.is_none_or(|at| at.elapsed() < NAME_RETENTION));
            let key = (task.queue.clone(), task.name.clone());
            if state.names.contains_key(&key) {
                return Ok(Enqueued::AlreadyExists);
            }
            state.names.insert(key, None);
        }
        self.inner.stats.send_modify(|stats| stats.pending += 1);
        tokio::spawn(Arc::clone(&self.inner).run(task.clone(), body, self.backoff_scale));
        Ok(Enqueued::Created)
    }

    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        self.inner
            .lock()
            .queues
            .insert(queue.clone(), settings.clone());
        Ok(())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn settings(&self, queue: &QueueName) -> QueueSettings {
        self.lock()
            .queues
            .get(queue)
            .cloned()
            .expect("queues are never removed, and tasks are only accepted on existing ones")
    }

    /// Delivers one task until it succeeds or its retries are spent, then releases its name.
    async fn run(self: Arc<Self>, task: Task, body: Vec<u8>, backoff_scale: f64) {
        let mut eta = task.schedule_at.unwrap_or_else(Timestamp::now);
        if let Some(wait) = duration_until(eta) {
            tokio::time::sleep(wait).await;
        }
        let first_attempt = Instant::now();
        let mut retry_count = 0;
        let mut execution_count = 0;
        let mut previous = None;
        let delivered = loop {
            let result = self
                .attempt(
                    &task,
                    &body,
                    retry_count,
                    execution_count,
                    eta,
                    previous.as_ref(),
                )
                .await;
            self.stats.send_modify(|stats| stats.attempts += 1);
            let failed = match result {
                Ok(status) if status.is_success() => break true,
                Ok(status) => {
                    // Like Cloud Tasks, 5xx answers do not count as executions.
                    if !status.is_server_error() {
                        execution_count += 1;
                    }
                    PreviousAttempt {
                        status: Some(status),
                        reason: format!("HTTP status code {}", status.as_u16()),
                    }
                }
                Err(error) => PreviousAttempt {
                    status: None,
                    reason: format!("request failed: {error}"),
                },
            };
            let settings = self.settings(&task.queue);
            let attempts = retry_count + 1;
            let retry_window = settings.max_retry_duration.mul_f64(backoff_scale);
            if attempts >= settings.max_attempts && first_attempt.elapsed() >= retry_window {
                tracing::warn!(
                    queue = %task.queue,
                    task_name = %task.name,
                    attempts,
                    last_error = %failed.reason,
                    "giving up on task after its last allowed attempt"
                );
                break false;
            }
            let backoff =
                jittered_backoff(&settings, retry_count, &mut rand::rng()).mul_f64(backoff_scale);
            tracing::debug!(
                queue = %task.queue,
                task_name = %task.name,
                retry_in_ms = backoff.as_millis(),
                reason = %failed.reason,
                "task attempt failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            eta = Timestamp::now();
            retry_count += 1;
            previous = Some(failed);
        };
        if let Some(finished) = self
            .lock()
            .names
            .get_mut(&(task.queue.clone(), task.name.clone()))
        {
            *finished = Some(Instant::now());
        }
        self.stats.send_modify(|stats| {
            stats.pending -= 1;
            if delivered {
                stats.delivered += 1;
            } else {
                stats.given_up += 1;
            }
        });
    }

    /// One POST of the task with Cloud Tasks' headers; the status, or why there was none.
    async fn attempt(
        &self,
        task: &Task,
        body: &[u8],
        retry_count: u32,
        execution_count: u32,
        eta: Timestamp,
        previous: Option<&PreviousAttempt>,
    ) -> Result<StatusCode, reqwest::Error> {
        let mut request = self
            .http
            .post(self.targets.url(task.direction))
            .timeout(DISPATCH_DEADLINE)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(header::QUEUE_NAME, task.queue.as_str())
            .header(header::TASK_NAME, task.name.as_str())
            .header(header::RETRY_COUNT, retry_count)
            .header(header::EXECUTION_COUNT, execution_count)
            .header(
                header::ETA,
                format!("{}.{:06}", eta.as_second(), eta.subsec_microsecond()),
            )
            .body(body.to_vec());
        if let Some(previous) = previous {
            if let Some(status) = previous.status {
                request = request.header(header::PREVIOUS_RESPONSE, status.as_u16());
            }
            request = request.header(header::RETRY_REASON, previous.reason.as_str());
        }
        Ok(request.send().await?.status())
    }
}

/// How long until `at`, if it is in the future.
fn duration_until(at: Timestamp) -> Option<Duration> {
    Duration::try_from(at.duration_since(Timestamp::now()))
        .ok()
        .filter(|wait| !wait.is_zero())
}

/// Cloud Tasks' nominal wait before retry number `retry + 1`: `min_backoff` doubled `retry`
/// times up to `max_doublings`, then growing by the last doubled step each retry, capped at
/// `max_backoff` (10 s / 300 s / 3 doublings: 10, 20, 40, 80, 160, 240, 300, 300 …).
fn nominal_backoff(settings: &QueueSettings, retry: u32) -> Duration {
    let doublings = retry.min(settings.max_doublings);
    let doubled = settings
        .min_backoff
        .saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX));
    let linear_steps = retry - doublings;
    doubled
        .saturating_mul(linear_steps.saturating_add(1))
        .min(settings.max_backoff)
}

/// [`nominal_backoff`] with ±[`JITTER`], still capped at `max_backoff`.
fn jittered_backoff(settings: &QueueSettings, retry: u32, rng: &mut impl Rng) -> Duration {
    let factor = rng.random_range((1.0 - JITTER)..=(1.0 + JITTER));
    nominal_backoff(settings, retry)
        .mul_f64(factor)
        .min(settings.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OmneoProfileId, TenantId};
    use crate::queue::{Direction, SyncProfile, TaskEnvelope, Work};

    fn settings(min_secs: u64, max_secs: u64, max_doublings: u32) -> QueueSettings {
        QueueSettings {
            min_backoff: Duration::from_secs(min_secs),
            max_backoff: Duration::from_secs(max_secs),
            max_doublings,
            ..QueueSettings::for_direction(Direction::Outbound)
        }
    }

    #[test]
    fn backoff_follows_the_cloud_tasks_schedule() {
        let documented = settings(10, 300, 3);
        let schedule: Vec<u64> = (0..8)
            .map(|retry| nominal_backoff(&documented, retry).as_secs())
            .collect();
        assert_eq!(schedule, [10, 20, 40, 80, 160, 240, 300, 300]);

        let ours = QueueSettings::for_direction(Direction::Inbound);
        let schedule: Vec<u64> = (0..8)
            .map(|retry| nominal_backoff(&ours, retry).as_secs())
            .collect();
        assert_eq!(schedule, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(nominal_backoff(&ours, u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn backoff_jitter_stays_within_bounds_and_varies() {
        let settings = settings(10, 300, 3);
        let mut rng = rand::rng();
        let draws: Vec<Duration> = (0..200)
            .map(|_| jittered_backoff(&settings, 1, &mut rng))
            .collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_secs(16) && *d <= Duration::from_secs(24))
        );
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "jitter should spread the retries");
        assert!(
            (0..200).all(|_| jittered_backoff(&settings, 20, &mut rng) <= settings.max_backoff)
        );
    }

    fn task(queue: &QueueName, name: &str) -> Task {
        Task {
            queue: queue.clone(),
            direction: Direction::Inbound,
            envelope: TaskEnvelope {
                tenant: TenantId::parse("acme").unwrap(),
                work: Work::SyncProfile(SyncProfile {
                    profile_id: OmneoProfileId::parse("p-1").unwrap(),
                }),
            },
            name: TaskName::from_parts(&[name]),
            schedule_at: None,
        }
    }

    /// Targets on a port nothing listens on: attempts fail fast with a connection error.
    fn unreachable_targets() -> TaskTargets {
        let url = url::Url::parse("http://127.0.0.1:9/").unwrap();
        TaskTargets {
            inbound: url.clone(),
            outbound: url,
        }
    }

    fn single_attempt() -> QueueSettings {
        QueueSettings {
            max_attempts: 1,
            max_retry_duration: Duration::ZERO,
            ..QueueSettings::for_direction(Direction::Inbound)
        }
    }

    #[tokio::test]
    async fn unknown_queues_and_oversized_tasks_are_refused() {
        let queue = LocalQueue::new(unreachable_targets(), reqwest::Client::new());
        let name = QueueName::parse("t-ns-inbound").unwrap();
        let error = queue.enqueue(&task(&name, "a")).await.unwrap_err();
        assert!(matches!(error, QueueError::QueueNotFound(q) if q == name.as_str()));

        queue.ensure_queue(&name, &single_attempt()).await.unwrap();
        let mut big = task(&name, "big");
        big.envelope.work = Work::SendMetric(crate::queue::SendMetric {
            event: serde_json::json!("x".repeat(MAX_TASK_BYTES)),
            with_token: false,
        });
        assert!(matches!(
            queue.enqueue(&big).await,
            Err(QueueError::Rejected(_))
        ));
        assert_eq!(queue.stats(), LocalQueueStats::default());
    }

    #[tokio::test]
    async fn a_failed_last_attempt_gives_up_and_keeps_the_name_taken() {
        let queue = LocalQueue::new(unreachable_targets(), reqwest::Client::new());
        let name = QueueName::parse("t-ns-inbound").unwrap();
        queue.ensure_queue(&name, &single_attempt()).await.unwrap();
        assert_eq!(
            queue.enqueue(&task(&name, "a")).await.unwrap(),
            Enqueued::Created
        );
        tokio::time::timeout(Duration::from_secs(30), queue.idle())
            .await
            .expect("the task should give up after one attempt");
        assert_eq!(
            queue.stats(),
            LocalQueueStats {
                pending: 0,
                attempts: 1,
                delivered: 0,
                given_up: 1
            }
        );
        assert_eq!(
            queue.enqueue(&task(&name, "a")).await.unwrap(),
            Enqueued::AlreadyExists
        );
    }
}
