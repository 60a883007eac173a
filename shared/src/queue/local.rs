//! The in-process Cloud Tasks look-alike of local runs (product.md §9).
//!
//! It behaves like the real service where the workers can tell: tasks are POSTed to
//! `{target}/tasks/{direction}` with the JSON envelope and the `X-CloudTasks-*` headers; any
//! non-2xx answer or connection error is retried with Cloud Tasks' backoff (doubling from
//! `min_backoff` `max_doublings` times, then linear, capped at `max_backoff`), plus jitter, until
//! both `max_attempts` and `max_retry_duration` are spent; `schedule_at` is honoured; a task name
//! stays taken while its task is pending and for 24 h after it finished; enqueueing on a queue
//! that was never ensured fails like the real service.
//!
//! **Rate limits.** Every attempt — first try or retry — is a dispatch, and each queue admits
//! dispatches under its [`QueueSettings`] like Cloud Tasks does:
//! - `max_dispatches_per_second` through a token bucket: each dispatch takes a token, tokens come
//!   back continuously at that rate, and the bucket holds at most [`burst_size`] of them — a fifth
//!   of a second's worth, at least one. Cloud Tasks picks its `max_burst_size` from the rate
//!   without documenting how; a fifth of a second gives the 100 a queue at the 500/s maximum
//!   reports, and keeps bursts small at our rates (1 at 5/s, 3 at 12/s). So in any window of `t`
//!   seconds at most `burst + rate × t` dispatches start;
//! - `max_concurrent_dispatches`: an attempt counts from its dispatch until its answer (or error)
//!   arrives, and no more than that many are in flight per queue.
//!
//! Each queue admits in the order its tasks became due (their schedule time, or the end of their
//! backoff). `ensure_queue` on an existing queue changes its settings for the dispatches admitted
//! after it; attempts already in flight are not cut short. Settings Cloud Tasks would refuse, and
//! that would stall a queue here (a rate of 0 or over 500/s, a concurrency of 0 or over 5000),
//! are refused with [`QueueError::Rejected`].
//!
//! **Pause.** [`LocalQueue::pause`] holds a queue's tasks, like pausing a Cloud Tasks queue:
//! enqueueing still works, attempts in flight finish, but nothing is dispatched — neither new tasks
//! nor retries — until [`LocalQueue::resume`]; held tasks are never dropped. A paused queue stays
//! paused through `ensure_queue` (Cloud Tasks' UpdateQueue does not touch the state either).
//! Held tasks are pending, so [`LocalQueue::idle`] waits for them: on a paused queue holding
//! tasks it returns only after a resume let them finish.
//!
//! Delivery runs on tokio tasks of the runtime the queue was created on (not the caller's: a
//! caller on a runtime that shuts down must not take queued tasks with it, just as a Cloud Run
//! instance that dies takes nothing out of Cloud Tasks); `enqueue` returns as soon as the task
//! is accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    Enqueued, MAX_TASK_BYTES, Queue, QueueError, QueueName, QueueSettings, Task, TaskName,
    TaskTargets, header,
};

/// How long a task name stays taken after its task finished (Cloud Tasks: up to about 24 h).
const NAME_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often, at most, enqueueing sweeps the names whose retention ended (a name is checked on
/// its own whenever it is reused, so the sweep only bounds memory).
const NAME_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Each backoff is drawn uniformly from ±20 % around its nominal value (then capped).
const JITTER: f64 = 0.2;
/// How long one attempt may take (Cloud Tasks' default dispatch deadline).
const DISPATCH_DEADLINE: Duration = Duration::from_secs(600);
/// The highest `max_dispatches_per_second` Cloud Tasks accepts.
const MAX_DISPATCHES_PER_SECOND: f64 = 500.0;
/// The highest `max_concurrent_dispatches` Cloud Tasks accepts.
const MAX_CONCURRENT_DISPATCHES: u32 = 5000;
/// How many seconds' worth of dispatches a queue's token bucket holds (see [`burst_size`]).
const BURST_SECONDS: f64 = 0.2;
/// How far short of a whole token still counts as one (floating-point refills).
const TOKEN_ROUNDING: f64 = 1e-9;
/// The shortest wait for a token: the timer's resolution.
const MIN_REFILL_WAIT: Duration = Duration::from_millis(1);

/// Counters of a [`LocalQueue`], for tests and the local stack's status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalQueueStats {
    /// Tasks accepted and not yet finished (waiting for their time or a paused queue, in flight or
    /// backing off).
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
    /// The runtime deliveries and dispatchers run on: the one `LocalQueue::new` was called on.
    runtime: tokio::runtime::Handle,
    targets: TaskTargets,
    http: reqwest::Client,
    state: Mutex<State>,
    stats: watch::Sender<LocalQueueStats>,
}

struct State {
    queues: HashMap<QueueName, Gate>,
    /// Taken task names, per queue: `None` while pending, else when the task finished.
    names: HashMap<QueueName, HashMap<TaskName, Option<Instant>>>,
    /// When finished names were last swept.
    swept_at: Instant,
}

/// One queue's admission: its [`Control`], and the line of attempts waiting for a dispatch, which
/// the queue's dispatcher ([`dispatcher`]) serves in order.
#[derive(Clone)]
struct Gate {
    control: Arc<Control>,
    line: mpsc::UnboundedSender<oneshot::Sender<Slot>>,
}

/// A queue's settings and what its limits track.
struct Control {
    state: Mutex<Admission>,
    /// Woken when a slot frees, the queue resumes or its settings change.
    changed: Notify,
}

struct Admission {
    settings: QueueSettings,
    paused: bool,
    /// Attempts dispatched and not answered yet.
    in_flight: u32,
    /// Dispatches the token bucket allows right now (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled_at: Instant,
}

/// Why a dispatch cannot start yet.
enum Wait {
    /// Until the queue resumes or a slot frees.
    Changed,
    /// Until the bucket holds a token again.
    For(Duration),
}

/// A dispatch in flight: it counts against its queue's `max_concurrent_dispatches` until dropped.
struct Slot(Arc<Control>);

/// What the previous attempt got, sent on retries.
struct PreviousAttempt {
    status: Option<StatusCode>,
    reason: String,
}

impl LocalQueue {
    /// A queue posting tasks to `targets` with `http`, delivering on the current tokio runtime.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(targets: TaskTargets, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                targets,
                http,
                state: Mutex::new(State {
                    queues: HashMap::new(),
                    names: HashMap::new(),
                    swept_at: Instant::now(),
                }),
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

    /// Waits until no task is pending (returns at once when none is). Tasks held by a paused
    /// queue are pending: while one is, this waits for a [`LocalQueue::resume`] and their end.
    pub async fn idle(&self) {
        let mut stats = self.inner.stats.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        let _ = stats.wait_for(|stats| stats.pending == 0).await;
    }

    /// Holds the tasks of `queue`: nothing more is dispatched from it (attempts in flight finish)
    /// until [`LocalQueue::resume`]. Tasks can still be enqueued. Pausing a paused queue is a
    /// no-op.
    pub fn pause(&self, queue: &QueueName) -> Result<(), QueueError> {
        self.inner.gate(queue)?.control.set_paused(true);
        Ok(())
    }

    /// Dispatches the tasks of `queue` again, held ones first (in the order they became due).
    /// Resuming a running queue is a no-op.
    pub fn resume(&self, queue: &QueueName) -> Result<(), QueueError> {
        self.inner.gate(queue)?.control.set_paused(false);
        Ok(())
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
        // A name already taken is answered before the body is built: in a burst most calls are.
        if self.inner.lock().name_taken(task)? {
            return Ok(Enqueued::AlreadyExists);
        }
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
            // Taken meanwhile by a concurrent enqueue of the same name?
            if state.name_taken(task)? {
                return Ok(Enqueued::AlreadyExists);
            }
            state
                .names
                .entry(task.queue.clone())
                .or_default()
                .insert(task.name.clone(), None);
        }
        self.inner.stats.send_modify(|stats| stats.pending += 1);
        let delivery = Arc::clone(&self.inner).run(task.clone(), body, self.backoff_scale);
        self.inner.runtime.spawn(delivery);
        Ok(Enqueued::Created)
    }

    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        check_rate_limits(settings)?;
        let mut state = self.inner.lock();
        match state.queues.get(queue) {
            Some(gate) => gate.control.update(settings.clone()),
            None => {
                let control = Arc::new(Control::new(settings.clone()));
                let (line, waiting) = mpsc::unbounded_channel();
                self.inner
                    .runtime
                    .spawn(dispatcher(Arc::clone(&control), waiting));
                state.queues.insert(queue.clone(), Gate { control, line });
            }
        }
        Ok(())
    }
}

impl State {
    /// Whether `task`'s name is taken on its queue (sweeping expired names first); a queue that
    /// was never ensured is [`QueueError::QueueNotFound`].
    fn name_taken(&mut self, task: &Task) -> Result<bool, QueueError> {
        if !self.queues.contains_key(&task.queue) {
            return Err(QueueError::QueueNotFound(task.queue.to_string()));
        }
        self.sweep_names();
        Ok(self
            .names
            .get(&task.queue)
            .and_then(|names| names.get(&task.name))
            .is_some_and(|&finished| name_taken(finished)))
    }

    /// Forgets the names whose retention ended, at most once per [`NAME_SWEEP_INTERVAL`].
    fn sweep_names(&mut self) {
        if self.swept_at.elapsed() >= NAME_SWEEP_INTERVAL {
            for names in self.names.values_mut() {
                names.retain(|_, &mut finished| name_taken(finished));
            }
            self.swept_at = Instant::now();
        }
    }
}

/// Whether a name whose task finished at `finished` (`None`: still pending) is still taken.
fn name_taken(finished: Option<Instant>) -> bool {
    finished.is_none_or(|at| at.elapsed() < NAME_RETENTION)
}

/// Refuses rate limits Cloud Tasks would refuse and that would stall a queue here.
fn check_rate_limits(settings: &QueueSettings) -> Result<(), QueueError> {
    let rate = settings.max_dispatches_per_second;
    if !(rate > 0.0 && rate <= MAX_DISPATCHES_PER_SECOND) {
        return Err(QueueError::Rejected(format!(
            "max_dispatches_per_second must be over 0 and at most {MAX_DISPATCHES_PER_SECOND}, got {rate}"
        )));
    }
    let concurrency = settings.max_concurrent_dispatches;
    if !(1..=MAX_CONCURRENT_DISPATCHES).contains(&concurrency) {
        return Err(QueueError::Rejected(format!(
            "max_concurrent_dispatches must be 1 to {MAX_CONCURRENT_DISPATCHES}, got {concurrency}"
        )));
    }
    Ok(())
}

/// The most dispatches a queue's token bucket holds at `rate` per second: [`BURST_SECONDS`]'
/// worth, rounded up, at least 1 (see the module docs).
fn burst_size(rate: f64) -> f64 {
    (rate * BURST_SECONDS).ceil().max(1.0)
}

/// Admits the attempts waiting in `line` one at a time, each when its queue's [`Control`] allows;
/// it ends when the queue's [`LocalQueue`] is gone.
async fn dispatcher(
    control: Arc<Control>,
    mut line: mpsc::UnboundedReceiver<oneshot::Sender<Slot>>,
) {
    while let Some(waiter) = line.recv().await {
        control.admit().await;
        // A waiter that stopped waiting (its runtime is shutting down) gets nothing; dropping the
        // unsent slot frees it again.
        let _ = waiter.send(Slot(Arc::clone(&control)));
    }
}

impl Control {
    fn new(settings: QueueSettings) -> Self {
        Self {
            state: Mutex::new(Admission {
                tokens: burst_size(settings.max_dispatches_per_second),
                settings,
                paused: false,
                in_flight: 0,
                refilled_at: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Admission> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn settings(&self) -> QueueSettings {
        self.lock().settings.clone()
    }

    /// New settings; tokens earned so far were earned at the old rate.
    fn update(&self, settings: QueueSettings) {
        let mut admission = self.lock();
        admission.refill(Instant::now());
        admission.settings = settings;
        drop(admission);
        self.changed.notify_one();
    }

    fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.changed.notify_one();
    }

    /// Waits until one more dispatch may start, and counts it in flight. Only the queue's
    /// dispatcher calls this, so `notify_one` always reaches it (or is kept for its next wait).
    async fn admit(&self) {
        loop {
            let wait = self.lock().try_admit(Instant::now());
            match wait {
                Ok(()) => return,
                Err(Wait::Changed) => self.changed.notified().await,
                Err(Wait::For(refill)) => {
                    tokio::select! {
                        () = self.changed.notified() => {}
                        () = tokio::time::sleep(refill) => {}
                    }
                }
            }
        }
    }
}

impl Admission {
    /// Brings the token bucket up to `now` at the current rate.
    fn refill(&mut self, now: Instant) {
        let rate = self.settings.max_dispatches_per_second;
        let earned = now.duration_since(self.refilled_at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst_size(rate));
        self.refilled_at = now;
    }

    /// Starts a dispatch now if the queue runs, has a free slot and a token; else why not.
    fn try_admit(&mut self, now: Instant) -> Result<(), Wait> {
        self.refill(now);
        if self.paused || self.in_flight >= self.settings.max_concurrent_dispatches {
            return Err(Wait::Changed);
        }
        if self.tokens < 1.0 - TOKEN_ROUNDING {
            let missing = (1.0 - self.tokens) / self.settings.max_dispatches_per_second;
            return Err(Wait::For(
                Duration::from_secs_f64(missing).max(MIN_REFILL_WAIT),
            ));
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.changed.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gate(&self, queue: &QueueName) -> Result<Gate, QueueError> {
        self.lock()
            .queues
            .get(queue)
            .cloned()
            .ok_or_else(|| QueueError::QueueNotFound(queue.to_string()))
    }

    /// The gate of a queue a task was accepted on.
    fn accepted_gate(&self, queue: &QueueName) -> Gate {
        self.gate(queue)
            .expect("queues are never removed, and tasks are only accepted on existing ones")
    }

    /// Waits for the queue's turn to dispatch one attempt; the slot is held until dropped.
    async fn dispatch_slot(&self, queue: &QueueName) -> Slot {
        let (waiter, slot) = oneshot::channel();
        self.accepted_gate(queue)
            .line
            .send(waiter)
            .expect("a queue's dispatcher runs as long as the queue exists");
        slot.await
            .expect("a queue's dispatcher answers every waiter while it exists")
    }

    /// Delivers one task until it succeeds or its retries are spent, then releases its name.
    async fn run(self: Arc<Self>, task: Task, body: Vec<u8>, backoff_scale: f64) {
        let mut eta = task.schedule_at.unwrap_or_else(Timestamp::now);
        if let Some(wait) = duration_until(eta) {
            tokio::time::sleep(wait).await;
        }
        let mut first_attempt_at = None;
        let mut retry_count = 0;
        let mut execution_count = 0;
        let mut previous = None;
        let delivered = loop {
            let slot = self.dispatch_slot(&task.queue).await;
            let first_attempt = *first_attempt_at.get_or_insert_with(Instant::now);
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
            drop(slot);
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
            let settings = self.accepted_gate(&task.queue).control.settings();
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
            .get_mut(&task.queue)
            .and_then(|names| names.get_mut(&task.name))
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

    #[test]
    fn the_burst_is_a_fifth_of_a_second_of_dispatches_and_at_least_one() {
        let bursts: Vec<f64> = [0.5, 5.0, 12.0, 20.0, 500.0]
            .into_iter()
            .map(burst_size)
            .collect();
        assert_eq!(bursts, [1.0, 1.0, 3.0, 4.0, 100.0]);
    }

    #[test]
    fn a_full_steady_window_of_outbound_dispatches_stays_within_klaviyos_limit() {
        // Klaviyo counts in fixed windows: the worst window holds a full bucket plus a window's
        // worth of refills.
        let limit = crate::queue::KLAVIYO_PROFILE_IMPORT_STEADY;
        let rate = QueueSettings::for_direction(Direction::Outbound).max_dispatches_per_second;
        let worst_window = burst_size(rate) + rate * limit.window.as_secs_f64();
        assert!(
            worst_window <= f64::from(limit.requests),
            "{worst_window} dispatches can start in one {:?} window",
            limit.window
        );
    }

    fn rate_limited(rate: f64, concurrency: u32) -> QueueSettings {
        QueueSettings {
            max_dispatches_per_second: rate,
            max_concurrent_dispatches: concurrency,
            ..QueueSettings::for_direction(Direction::Inbound)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dispatches_are_spaced_by_the_rate_after_the_burst() {
        let control = Control::new(rate_limited(5.0, 100));
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..10 {
            control.admit().await;
            starts.push(start.elapsed());
        }
        // A burst of one, then one token every 200 ms.
        let expected: Vec<Duration> = (0..10).map(|i| Duration::from_millis(200 * i)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn new_settings_apply_to_the_next_dispatch() {
        let control = Control::new(rate_limited(0.1, 100));
        let start = Instant::now();
        control.admit().await;
        control.update(rate_limited(100.0, 100));
        control.admit().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(10),
            "the next token comes at the new rate, not in 10 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_concurrent_dispatches_are_admitted() {
        let control = Arc::new(Control::new(rate_limited(500.0, 2)));
        control.admit().await;
        control.admit().await;
        let first = Slot(Arc::clone(&control));
        let _second = Slot(Arc::clone(&control));
        let third = tokio::spawn({
            let control = Arc::clone(&control);
            async move { control.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !third.is_finished(),
            "a third dispatch started beside two in flight"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("a freed slot admits the next dispatch")
            .unwrap();
        assert_eq!(control.lock().in_flight, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_queue_admits_nothing_until_resumed() {
        let control = Arc::new(Control::new(rate_limited(500.0, 10)));
        control.set_paused(true);
        let admitted = tokio::spawn({
            let control = Arc::clone(&control);
            async move { control.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!admitted.is_finished(), "a paused queue dispatched");
        control.set_paused(false);
        tokio::time::timeout(Duration::from_secs(1), admitted)
            .await
            .expect("resuming admits the held dispatch")
            .unwrap();
    }

    #[tokio::test]
    async fn rate_limits_cloud_tasks_refuses_are_refused() {
        let queue = LocalQueue::new(unreachable_targets(), reqwest::Client::new());
        let name = QueueName::parse("t-ns-inbound").unwrap();
        for (rate, concurrency) in [
            (0.0, 1),
            (f64::NAN, 1),
            (-1.0, 1),
            (500.5, 1),
            (1.0, 0),
            (1.0, 5001),
        ] {
            let error = queue
                .ensure_queue(&name, &rate_limited(rate, concurrency))
                .await
                .unwrap_err();
            assert!(
                matches!(error, QueueError::Rejected(_)),
                "{rate}/s, {concurrency}: {error:?}"
            );
        }
        queue
            .ensure_queue(&name, &rate_limited(500.0, 5000))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pausing_a_missing_queue_fails_like_enqueueing_on_it() {
        let queue = LocalQueue::new(unreachable_targets(), reqwest::Client::new());
        let name = QueueName::parse("t-ns-inbound").unwrap();
        assert!(
            matches!(queue.pause(&name), Err(QueueError::QueueNotFound(q)) if q == name.as_str())
        );
        assert!(
            matches!(queue.resume(&name), Err(QueueError::QueueNotFound(q)) if q == name.as_str())
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
