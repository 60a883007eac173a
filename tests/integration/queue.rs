//! The queue conformance suite: [`LocalQueue`] and [`CloudTasksQueue`] (against the Cloud Tasks
//! emulator) deliver to a real axum receiver on 127.0.0.1:0 ([`TaskReceiver`]), which records
//! every push.
//!
//! Each check is written once and run on every backend that can show it (`queue::local::*`,
//! `queue::emulator::*`). The emulator (`gcloud-tasks-emulator` 0.6.2) cannot show everything the
//! real service does, so these run against the in-process queue only:
//! - task-name de-duplication: the emulator accepts a reused name and runs the task again
//!   (real service: `ALREADY_EXISTS` for ~24 h);
//! - backoff and jitter, and giving up after `max_attempts`: the emulator retries every ~100 ms
//!   and stops after its `--max-retries`, ignoring the queue's retry config;
//! - the headers of retries: it sends no `X-CloudTasks-TaskPreviousResponse`/`-TaskRetryReason`;
//! - rate limits: it ignores `max_dispatches_per_second` and `max_concurrent_dispatches` and
//!   posts a queue's due tasks one after another; the local queue's token bucket, its
//!   concurrency ceiling (retries included) and pause/resume (a `LocalQueue` method: the app
//!   never pauses queues) are checked against a receiver that holds each push and counts them.
//!
//! Its other differences are asserted where they show: it sends the full queue path in
//! `X-CloudTasks-QueueName` (the real service and the local queue send the short id), and
//! answers `FAILED_PRECONDITION` for a missing queue (mapped to `QueueNotFound` like the real
//! service's `NOT_FOUND`). It honours `schedule_time` (polling every ~100 ms), so that check runs
//! on both; without one it sends an empty `X-CloudTasks-TaskETA` (the real service sends the
//! creation time).

use std::sync::Arc;
use std::time::Duration;

use harness::emulators::cloud_tasks::emulator_host;
use jiff::{SignedDuration, Timestamp};
use shared::domain::{OmneoProfileId, TenantId};
use shared::queue::{
    CloudTasksQueue, Direction, Enqueued, LocalQueue, LocalQueueStats, Queue, QueueError,
    QueueName, QueueSettings, SyncProfile, Task, TaskEnvelope, TaskName, TaskTargets, Work, header,
};
use tokio::time::Instant;

use crate::support::{PATIENCE, TaskReceiver};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    Emulator,
}

/// A queue under test; `local` is set for the in-process one, to wait for it to go idle.
struct Subject {
    queue: Arc<dyn Queue>,
    local: Option<LocalQueue>,
}

impl Backend {
    async fn subject(self, targets: TaskTargets) -> Subject {
        match self {
            Self::Local => {
                let local = LocalQueue::new(targets, reqwest::Client::new());
                Subject {
                    queue: Arc::new(local.clone()),
                    local: Some(local),
                }
            }
            Self::Emulator => {
                let project = format!("test-{}", uuid::Uuid::new_v4().simple());
                let queue = CloudTasksQueue::connect(
                    &project,
                    "local",
                    Some(&emulator_host()),
                    None,
                    targets,
                )
                .await
                .expect("connect to the Cloud Tasks emulator");
                Subject {
                    queue: Arc::new(queue),
                    local: None,
                }
            }
        }
    }
}

fn unique_queue(direction: Direction) -> QueueName {
    let name = format!(
        "q{}-test-{}",
        uuid::Uuid::new_v4().simple(),
        direction.as_str()
    );
    QueueName::parse(&name).expect("a valid queue id")
}

/// Quick retries, for the backends that honour the queue's retry config.
fn quick_retries() -> QueueSettings {
    QueueSettings {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        max_doublings: 3,
        max_attempts: 10,
        max_retry_duration: Duration::ZERO,
        ..QueueSettings::for_direction(Direction::Outbound)
    }
}

fn task(queue: &QueueName, direction: Direction) -> Task {
    let id = uuid::Uuid::new_v4().to_string();
    Task {
        queue: queue.clone(),
        direction,
        envelope: TaskEnvelope {
            tenant: TenantId::parse("acme").unwrap(),
            work: Work::SyncProfile(SyncProfile {
                profile_id: OmneoProfileId::parse(id.clone()).unwrap(),
            }),
        },
        name: TaskName::from_parts(&["conformance", &id]),
        schedule_at: None,
    }
}

/// Runs each check as `local::<check>` and `emulator::<check>`.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test]
            async fn $check() {
                super::$check(super::Backend::Local).await;
            })*
        }
        mod emulator {
            $(#[tokio::test]
            async fn $check() {
                super::$check(super::Backend::Emulator).await;
            })*
        }
    };
}

on_both_backends!(
    delivers_the_envelope_with_cloud_tasks_headers,
    retries_failed_attempts_with_a_growing_retry_count,
    refuses_a_missing_queue,
    honours_schedule_at,
);

async fn delivers_the_envelope_with_cloud_tasks_headers(backend: Backend) {
    let receiver = TaskReceiver::start(0).await;
    let subject = backend.subject(receiver.targets()).await;
    let queue = unique_queue(Direction::Outbound);
    subject
        .queue
        .ensure_queue(&queue, &quick_retries())
        .await
        .unwrap();
    // Ensuring again updates the settings of the existing queue.
    subject
        .queue
        .ensure_queue(&queue, &quick_retries())
        .await
        .unwrap();
    let task = task(&queue, Direction::Outbound);
    let before = Timestamp::now();
    assert_eq!(
        subject.queue.enqueue(&task).await.unwrap(),
        Enqueued::Created
    );

    let delivery = receiver.wait_for(1).await.remove(0);
    assert_eq!(delivery.path, "/tasks/outbound");
    assert_eq!(
        delivery.header("content-type"),
        Some("application/json"),
        "the task sets the content type"
    );
    let body: TaskEnvelope = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(body, task.envelope);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&delivery.body).unwrap(),
        serde_json::to_value(&task.envelope).unwrap()
    );

    let pushed = delivery.task();
    assert_eq!(pushed.queue, queue);
    assert_eq!(pushed.name, task.name);
    assert_eq!(pushed.retry_count, 0);
    assert_eq!(pushed.execution_count, 0);
    assert_eq!(delivery.header(header::PREVIOUS_RESPONSE), None);
    let raw_queue = delivery.header(header::QUEUE_NAME).unwrap();
    match backend {
        Backend::Local => {
            assert_eq!(raw_queue, queue.as_str());
            let eta = pushed.eta.expect("the local queue always sends the ETA");
            let slack = SignedDuration::from_millis(1);
            assert!(
                eta >= before - slack && eta <= delivery.wall + slack,
                "{eta}"
            );
        }
        Backend::Emulator => {
            assert!(
                raw_queue.starts_with("projects/")
                    && raw_queue.ends_with(&format!("/queues/{queue}")),
                "the emulator sends the full queue path: {raw_queue}"
            );
        }
    }
}

async fn retries_failed_attempts_with_a_growing_retry_count(backend: Backend) {
    let receiver = TaskReceiver::start(2).await;
    let subject = backend.subject(receiver.targets()).await;
    let queue = unique_queue(Direction::Inbound);
    subject
        .queue
        .ensure_queue(&queue, &quick_retries())
        .await
        .unwrap();
    let task = task(&queue, Direction::Inbound);
    subject.queue.enqueue(&task).await.unwrap();

    let deliveries = receiver.wait_for(3).await;
    let retry_counts: Vec<u32> = deliveries.iter().map(|d| d.task().retry_count).collect();
    assert_eq!(retry_counts[..3], [0, 1, 2]);
    for delivery in &deliveries {
        assert_eq!(delivery.path, "/tasks/inbound");
        assert_eq!(delivery.task().name, task.name);
        assert_eq!(
            serde_json::from_slice::<TaskEnvelope>(&delivery.body).unwrap(),
            task.envelope
        );
    }

    if let Some(local) = subject.local {
        tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();
        assert_eq!(receiver.deliveries().len(), 3, "no attempt after a 2xx");
        for retry in &deliveries[1..3] {
            assert_eq!(retry.header(header::PREVIOUS_RESPONSE), Some("503"));
            assert_eq!(
                retry.header(header::RETRY_REASON),
                Some("HTTP status code 503")
            );
            assert_eq!(
                retry.task().execution_count,
                0,
                "5xx answers are not executions"
            );
        }
        assert_eq!(
            local.stats(),
            LocalQueueStats {
                pending: 0,
                attempts: 3,
                delivered: 1,
                given_up: 0
            }
        );
    }
}

async fn refuses_a_missing_queue(backend: Backend) {
    let receiver = TaskReceiver::start(0).await;
    let subject = backend.subject(receiver.targets()).await;
    let missing = unique_queue(Direction::Outbound);
    let error = subject
        .queue
        .enqueue(&task(&missing, Direction::Outbound))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, QueueError::QueueNotFound(name) if name == missing.as_str()),
        "{error:?}"
    );
}

async fn honours_schedule_at(backend: Backend) {
    let receiver = TaskReceiver::start(0).await;
    let subject = backend.subject(receiver.targets()).await;
    let queue = unique_queue(Direction::Outbound);
    subject
        .queue
        .ensure_queue(&queue, &quick_retries())
        .await
        .unwrap();
    let mut task = task(&queue, Direction::Outbound);
    let at = Timestamp::now() + SignedDuration::from_millis(1500);
    task.schedule_at = Some(at);
    subject.queue.enqueue(&task).await.unwrap();

    let delivery = receiver.wait_for(1).await.remove(0);
    assert!(
        delivery.wall >= at,
        "delivered at {} before its schedule {at}",
        delivery.wall
    );
    let eta = delivery
        .task()
        .eta
        .expect("a scheduled task carries its ETA");
    assert!(
        eta.duration_since(at).abs() < SignedDuration::from_millis(1),
        "ETA {eta} is not the schedule {at}"
    );
}

/// A local queue whose backoffs are scaled down, on a fresh queue with `settings`.
async fn scaled_local(
    receiver: &TaskReceiver,
    scale: f64,
    settings: &QueueSettings,
) -> (LocalQueue, QueueName) {
    let local =
        LocalQueue::new(receiver.targets(), reqwest::Client::new()).with_backoff_scale(scale);
    let queue = unique_queue(Direction::Outbound);
    local.ensure_queue(&queue, settings).await.unwrap();
    (local, queue)
}

#[tokio::test]
async fn local_queue_deduplicates_task_names_per_queue() {
    let receiver = TaskReceiver::start(0).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &quick_retries()).await;
    let other = unique_queue(Direction::Outbound);
    local.ensure_queue(&other, &quick_retries()).await.unwrap();
    let first = task(&queue, Direction::Outbound);
    let mut same_name = task(&queue, Direction::Outbound);
    same_name.name = first.name.clone();

    assert_eq!(local.enqueue(&first).await.unwrap(), Enqueued::Created);
    assert_eq!(
        local.enqueue(&same_name).await.unwrap(),
        Enqueued::AlreadyExists
    );
    let mut elsewhere = first.clone();
    elsewhere.queue = other;
    assert_eq!(local.enqueue(&elsewhere).await.unwrap(), Enqueued::Created);

    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();
    assert_eq!(
        local.enqueue(&same_name).await.unwrap(),
        Enqueued::AlreadyExists,
        "a name stays taken after its task ran"
    );
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 2, "one delivery per queue");
    assert!(
        deliveries
            .iter()
            .all(|d| d.body == serde_json::to_vec(&first.envelope).unwrap())
    );
    assert_eq!(local.stats().delivered, 2);
}

#[tokio::test]
async fn local_queue_backs_off_exponentially_with_jitter() {
    // Nominal backoffs 5 s, 10 s, 20 s, 40 s scaled by 0.04: 200, 400, 800, 1600 ms, ±20 %.
    let settings = QueueSettings {
        min_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(300),
        max_doublings: 5,
        max_attempts: 10,
        max_retry_duration: Duration::ZERO,
        ..QueueSettings::for_direction(Direction::Outbound)
    };
    let receiver = TaskReceiver::start(4).await;
    let (local, queue) = scaled_local(&receiver, 0.04, &settings).await;
    local
        .enqueue(&task(&queue, Direction::Outbound))
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();

    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 5);
    let gaps: Vec<Duration> = deliveries.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, nominal_ms) in gaps.iter().zip([200u64, 400, 800, 1600]) {
        let nominal = Duration::from_millis(nominal_ms);
        // A backoff is never shorter than its jittered lower bound; load only adds to it.
        assert!(*gap >= nominal.mul_f64(0.8), "gaps {gaps:?}");
        assert!(
            *gap <= nominal.mul_f64(1.2) + Duration::from_secs(10),
            "gaps {gaps:?}"
        );
    }
    assert!(
        gaps[3] > gaps[0] && gaps[3] > gaps[1],
        "backoff grows: {gaps:?}"
    );
    assert_eq!(local.stats().delivered, 1);
}

#[tokio::test]
async fn local_queue_gives_up_after_max_attempts() {
    let settings = QueueSettings {
        max_attempts: 3,
        ..quick_retries()
    };
    let receiver = TaskReceiver::start(usize::MAX).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &settings).await;
    local
        .enqueue(&task(&queue, Direction::Outbound))
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();

    let retry_counts: Vec<u32> = receiver
        .deliveries()
        .iter()
        .map(|d| d.task().retry_count)
        .collect();
    assert_eq!(retry_counts, [0, 1, 2]);
    assert_eq!(
        local.stats(),
        LocalQueueStats {
            pending: 0,
            attempts: 3,
            delivered: 0,
            given_up: 1
        }
    );
}

#[tokio::test]
async fn local_queue_enqueue_does_not_wait_for_delivery() {
    let receiver = TaskReceiver::start(0).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &quick_retries()).await;
    let mut later = task(&queue, Direction::Outbound);
    later.schedule_at = Some(Timestamp::now() + SignedDuration::from_hours(1));
    assert_eq!(local.enqueue(&later).await.unwrap(), Enqueued::Created);
    assert_eq!(local.stats().pending, 1);
    assert!(receiver.deliveries().is_empty());
}

/// Quick retries with the given rate limits.
fn rate_limited(max_dispatches_per_second: f64, max_concurrent_dispatches: u32) -> QueueSettings {
    QueueSettings {
        max_dispatches_per_second,
        max_concurrent_dispatches,
        ..quick_retries()
    }
}

/// Enqueues `count` fresh tasks on `queue`.
async fn enqueue_many(local: &LocalQueue, queue: &QueueName, count: usize) {
    for _ in 0..count {
        let created = local.enqueue(&task(queue, Direction::Outbound)).await;
        assert_eq!(created.unwrap(), Enqueued::Created);
    }
}

#[tokio::test]
async fn local_queue_keeps_at_most_max_concurrent_dispatches_in_flight() {
    let receiver = TaskReceiver::holding(0, Duration::from_millis(200)).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &rate_limited(500.0, 2)).await;
    enqueue_many(&local, &queue, 10).await;
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();

    assert_eq!(receiver.deliveries().len(), 10);
    assert_eq!(local.stats().delivered, 10);
    assert_eq!(
        receiver.max_in_flight(),
        2,
        "two at a time: never more, and the queue does use both"
    );
}

#[tokio::test]
async fn local_queue_counts_retries_against_max_concurrent_dispatches() {
    // Every task fails once: its retry must wait for a slot like any first attempt.
    let receiver = TaskReceiver::holding(1, Duration::from_millis(100)).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &rate_limited(500.0, 1)).await;
    enqueue_many(&local, &queue, 3).await;
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();

    assert_eq!(receiver.deliveries().len(), 6);
    assert_eq!(local.stats().attempts, 6);
    assert_eq!(local.stats().delivered, 3);
    assert_eq!(receiver.max_in_flight(), 1);
}

#[tokio::test]
async fn local_queue_spaces_dispatch_starts_by_the_rate() {
    // 5/s with a burst of one: starts 200 ms apart, the 10th 1.8 s after the first. Arrivals are
    // measured at the receiver, so allow some of that as measurement noise: never earlier than
    // 1.6 s, and in any window no more than burst + rate × window starts (+1 for the noise).
    let receiver = TaskReceiver::start(0).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &rate_limited(5.0, 100)).await;
    enqueue_many(&local, &queue, 10).await;
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();

    let starts: Vec<Instant> = receiver.deliveries().iter().map(|d| d.at).collect();
    assert_eq!(starts.len(), 10);
    let span = starts[9] - starts[0];
    assert!(
        span >= Duration::from_millis(1600),
        "10 dispatches at 5/s took only {span:?}"
    );
    for (i, first) in starts.iter().enumerate() {
        for (j, last) in starts.iter().enumerate().skip(i + 1) {
            let window = (*last - *first).as_secs_f64();
            let started = (j - i + 1) as f64;
            assert!(
                started <= 1.0 + 5.0 * window + 1.0,
                "{started} dispatches started within {window:.3} s"
            );
        }
    }
}

#[tokio::test]
async fn local_queue_holds_the_tasks_of_a_paused_queue_until_resumed() {
    let receiver = TaskReceiver::start(0).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &quick_retries()).await;
    local.pause(&queue).unwrap();
    enqueue_many(&local, &queue, 5).await;
    // Ensuring the queue again changes its settings, not its state.
    local.ensure_queue(&queue, &quick_retries()).await.unwrap();

    assert!(
        tokio::time::timeout(Duration::from_millis(500), local.idle())
            .await
            .is_err(),
        "held tasks are pending, so the queue is not idle"
    );
    assert!(
        receiver.deliveries().is_empty(),
        "a paused queue dispatched"
    );
    assert_eq!(local.stats().pending, 5);
    assert_eq!(local.stats().attempts, 0);

    local.resume(&queue).unwrap();
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();
    assert_eq!(receiver.deliveries().len(), 5);
    assert_eq!(local.stats().delivered, 5);
}

/// A task enqueued from a runtime that then dies is still delivered: the local queue delivers on
/// its own runtime, as Cloud Tasks keeps a task whatever happens to the instance that created it.
#[tokio::test]
async fn local_queue_tasks_outlive_the_runtime_that_enqueued_them() {
    let receiver = TaskReceiver::start(0).await;
    let (local, queue) = scaled_local(&receiver, 1.0, &quick_retries()).await;
    let doomed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let enqueued = {
        let (local, task) = (local.clone(), task(&queue, Direction::Outbound));
        tokio::task::spawn_blocking(move || doomed.block_on(async { local.enqueue(&task).await }))
    };
    assert_eq!(enqueued.await.unwrap().unwrap(), Enqueued::Created);
    tokio::time::timeout(PATIENCE, local.idle()).await.unwrap();
    assert_eq!(receiver.deliveries().len(), 1, "the task was delivered");
}
