//! The task workers' shared side (product.md §8): reading the `X-CloudTasks-*` headers of a
//! pushed task, and turning a worker's [`Outcome`] into the answer Cloud Tasks acts on.
//!
//! It sits above [`crate::queue`] (which it re-enqueues on) and [`crate::store`] (where failures
//! are recorded); neither depends on it.
//!
//! Cloud Tasks retries every non-2xx answer and has no "give up" status, so [`settle`] answers
//! 2xx for work that can never succeed (after recording a [`Failure`]) and for the last allowed
//! attempt, and non-2xx only when a retry can help. A remote 429 whose `Retry-After` is longer
//! than the queue's backoff would be retried too early: the task is re-enqueued for that time.
//!
//! The headers are information, not authentication: the push is authenticated by Cloud Run's
//! OIDC check before the request reaches us.

use std::time::Duration;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};

use crate::api_error::{ApiError, ErrorCode};
use crate::queue::{
    Direction, Enqueued, Queue, QueueName, QueueSettings, Task, TaskEnvelope, TaskName, header,
};
use crate::remote::Disposition;
use crate::store::{Failure, Severity, Store, StoreError, StoreResult};

/// Where [`settle`] records failures: the one store operation it needs.
#[async_trait::async_trait]
pub trait FailureRecorder: Send + Sync {
    /// Records a permanent failure for review.
    async fn record_failure(&self, failure: &Failure) -> StoreResult<()>;
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> FailureRecorder for std::sync::Arc<S> {
    async fn record_failure(&self, failure: &Failure) -> StoreResult<()> {
        Store::record_failure(self.as_ref(), failure).await
    }
}

/// Cloud Tasks refuses schedule times more than 30 days ahead; a reschedule stays under that.
const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(29 * 24 * 3600);

/// What Cloud Tasks says about a pushed task, from its `X-CloudTasks-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// The queue the task came from (its short id, also when the full path was sent).
    pub queue: QueueName,
    /// The task's name.
    pub name: TaskName,
    /// How many times the task was retried: 0 on the first attempt.
    pub retry_count: u32,
    /// How many earlier attempts got a non-5xx answer (0 when absent).
    pub execution_count: u32,
    /// When this attempt was scheduled, if the header was present and readable.
    pub eta: Option<Timestamp>,
    /// The HTTP status of the previous attempt, on retries.
    pub previous_response: Option<String>,
    /// Why the task is being retried, on retries.
    pub retry_reason: Option<String>,
}

impl TaskRequest {
    /// How long after its scheduled time (`X-CloudTasks-TaskETA`) this attempt started: how
    /// long the task waited in its queue. `None` without the header; zero when it came early.
    pub fn queue_delay(&self, now: Timestamp) -> Option<Duration> {
        let eta = self.eta?;
        Some(Duration::try_from(now.duration_since(eta)).unwrap_or(Duration::ZERO))
    }

    /// Reads the headers; a missing or malformed queue name, task name or retry count is a 400
    /// naming the header. The informational headers are read leniently.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let queue = required(headers, header::QUEUE_NAME)?;
        let queue = QueueName::parse(queue).ok_or_else(|| {
            ApiError::invalid_field(header::QUEUE_NAME, "not a Cloud Tasks queue id")
        })?;
        let name = required(headers, header::TASK_NAME)?;
        let name = TaskName::parse(name).ok_or_else(|| {
            ApiError::invalid_field(header::TASK_NAME, "not a Cloud Tasks task id")
        })?;
        let retry_count = required(headers, header::RETRY_COUNT)?
            .parse()
            .map_err(|_| {
                ApiError::invalid_field(header::RETRY_COUNT, "must be a non-negative integer")
            })?;
        Ok(Self {
            queue,
            name,
            retry_count,
            execution_count: optional(headers, header::EXECUTION_COUNT)
                .and_then(|count| count.parse().ok())
                .unwrap_or(0),
            eta: optional(headers, header::ETA).and_then(parse_eta),
            previous_response: optional(headers, header::PREVIOUS_RESPONSE).map(str::to_owned),
            retry_reason: optional(headers, header::RETRY_REASON).map(str::to_owned),
        })
    }

    /// Whether this is the last attempt a queue allowing `max_attempts` makes.
    pub fn is_last_attempt(&self, max_attempts: u32) -> bool {
        self.retry_count.saturating_add(1) >= max_attempts
    }
}

impl<S: Send + Sync> FromRequestParts<S> for TaskRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// A present, non-empty, visible-ASCII header value.
fn optional<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn required<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, ApiError> {
    optional(headers, name)
        .ok_or_else(|| ApiError::invalid_field(name, format!("missing {name} header")))
}

/// `1700000000` or `1700000000.25`: seconds since the Unix epoch.
fn parse_eta(raw: &str) -> Option<Timestamp> {
    let seconds: f64 = raw.parse().ok()?;
    let duration = SignedDuration::try_from_secs_f64(seconds).ok()?;
    Timestamp::from_duration(duration).ok()
}

/// How a worker's attempt at a task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work is done (or was already done).
    Done,
    /// The attempt did not finish; the setback says where, why and what may help.
    Failed(Setback),
}

/// Why an attempt did not finish: the step it stopped at, what went wrong, and what may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setback {
    /// The step of the task that failed, e.g. `import_profile` (shown in failure records).
    pub step: &'static str,
    /// What went wrong, for the logs and the failure record.
    pub reason: String,
    /// Whether and when a retry may succeed.
    pub next: Next,
}

/// What may help after a [`Setback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A retry may succeed (remote 5xx, timeout, connection error, 429 without a long wait).
    Retry,
    /// A retry may succeed, but not before this long (a remote 429 with `Retry-After`).
    RetryAfter(Duration),
    /// No retry can succeed (remote 4xx other than 401/408/409/429, invalid input, tenant gone).
    GiveUp,
}

impl Setback {
    /// A setback a retry may cure.
    pub fn retry(step: &'static str, reason: impl Into<String>) -> Self {
        Self {
            step,
            reason: reason.into(),
            next: Next::Retry,
        }
    }

    /// A setback no retry can cure.
    pub fn give_up(step: &'static str, reason: impl Into<String>) -> Self {
        Self {
            step,
            reason: reason.into(),
            next: Next::GiveUp,
        }
    }

    /// A failed remote call at `step`, classified by its [`Disposition`]. A Klaviyo 401 that
    /// survived the token provider's refresh is retried: the provider marks the install for
    /// re-authorisation when the grant is really gone, and the next attempt then gives up.
    pub fn remote(
        step: &'static str,
        disposition: Disposition,
        error: &dyn std::fmt::Display,
    ) -> Self {
        let next = match disposition {
            Disposition::Retryable | Disposition::Reauthorize => Next::Retry,
            Disposition::RetryAfter(after) => Next::RetryAfter(after),
            Disposition::Permanent => Next::GiveUp,
        };
        Self {
            step,
            reason: error.to_string(),
            next,
        }
    }
}

impl From<Setback> for Outcome {
    fn from(setback: Setback) -> Self {
        Self::Failed(setback)
    }
}

impl<E: Into<Setback>> From<Result<(), E>> for Outcome {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(setback) => Self::Failed(setback.into()),
        }
    }
}

/// The task a worker is answering for.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    /// What Cloud Tasks said about the push.
    pub request: &'a TaskRequest,
    /// Which worker runs it (and so where a rescheduled copy goes).
    pub direction: Direction,
    /// The task's body.
    pub envelope: &'a TaskEnvelope,
    /// The settings of the queue it came from (attempts and backoff).
    pub settings: &'a QueueSettings,
}

/// What [`settle`] did with an outcome; its [`IntoResponse`] is the answer to Cloud Tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// 200: the work is done.
    Done,
    /// 503: Cloud Tasks should retry with its backoff.
    Retry {
        /// What went wrong.
        reason: String,
    },
    /// 200: a copy of the task was enqueued for later (or already had been).
    Rescheduled {
        /// The copy's name.
        name: TaskName,
        /// When it runs.
        at: Timestamp,
    },
    /// 200: the failure was recorded for review; the task ends here.
    Failed {
        /// The failure record's id.
        failure_id: String,
    },
    /// 503: recording the failure or rescheduling failed; Cloud Tasks should retry.
    Unavailable(ApiError),
}

impl IntoResponse for Settled {
    fn into_response(self) -> Response {
        let status = |status: &str| Json(serde_json::json!({ "status": status }));
        match self {
            Self::Done => (StatusCode::OK, status("done")).into_response(),
            Self::Rescheduled { .. } => (StatusCode::OK, status("rescheduled")).into_response(),
            Self::Failed { .. } => (StatusCode::OK, status("failed")).into_response(),
            Self::Retry { reason } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::RetryLater,
                reason,
            )
            .into_response(),
            Self::Unavailable(error) => error.into_response(),
        }
    }
}

/// Turns a worker's outcome into the answer Cloud Tasks acts on (product.md §8), recording a
/// [`Failure`] for permanent setbacks and failed last attempts, and re-enqueueing a task whose
/// `Retry-After` outlasts the queue's `max_backoff`.
pub async fn settle(
    outcome: Outcome,
    task: &TaskContext<'_>,
    failures: &dyn FailureRecorder,
    queue: &dyn Queue,
) -> Settled {
    let request = task.request;
    let setback = match outcome {
        Outcome::Done => return Settled::Done,
        Outcome::Failed(setback) => setback,
    };
    match setback.next {
        Next::RetryAfter(after) if after > task.settings.max_backoff => {
            reschedule(task, after, &setback.reason, queue).await
        }
        Next::Retry | Next::RetryAfter(_)
            if !request.is_last_attempt(task.settings.max_attempts) =>
        {
            tracing::info!(
                queue = %request.queue,
                task_name = %request.name,
                retry_count = request.retry_count,
                step = setback.step,
                reason = %setback.reason,
                "task attempt failed; Cloud Tasks will retry"
            );
            Settled::Retry {
                reason: setback.reason,
            }
        }
        Next::Retry | Next::RetryAfter(_) => {
            let reason = format!("last attempt failed: {}", setback.reason);
            record_failure(task, setback.step, &reason, failures).await
        }
        Next::GiveUp => record_failure(task, setback.step, &setback.reason, failures).await,
    }
}

async fn reschedule(
    task: &TaskContext<'_>,
    after: Duration,
    reason: &str,
    queue: &dyn Queue,
) -> Settled {
    let request = task.request;
    let wait = SignedDuration::try_from(after.min(MAX_SCHEDULE_AHEAD))
        .expect("29 days fit a signed duration");
    let at = Timestamp::now()
        .saturating_add(wait)
        .expect("a duration never fails to add");
    // One name per attempt: a re-delivered attempt reschedules the same copy.
    let name = TaskName::from_parts(&[
        "rescheduled",
        request.name.as_str(),
        &request.retry_count.to_string(),
    ]);
    let copy = Task {
        queue: request.queue.clone(),
        direction: task.direction,
        envelope: task.envelope.clone(),
        name: name.clone(),
        schedule_at: Some(at),
    };
    match queue.enqueue(&copy).await {
        Ok(enqueued) => {
            tracing::info!(
                queue = %request.queue,
                task_name = %request.name,
                rescheduled_as = %name,
                %at,
                already_enqueued = enqueued == Enqueued::AlreadyExists,
                %reason,
                "task rescheduled after the remote's Retry-After"
            );
            Settled::Rescheduled { name, at }
        }
        Err(error) => Settled::Unavailable(error.into()),
    }
}

async fn record_failure(
    task: &TaskContext<'_>,
    step: &str,
    reason: &str,
    failures: &dyn FailureRecorder,
) -> Settled {
    let request = task.request;
    let failure = Failure {
        id: format!("{}:{}", request.queue, request.name),
        tenant: task.envelope.tenant.clone(),
        queue: request.queue.clone(),
        task_kind: task.envelope.work.kind(),
        task_name: request.name.clone(),
        payload: task.envelope.work.payload().to_string(),
        profile: task.envelope.work.profile(),
        step: Some(step.to_owned()),
        severity: Severity::Failed,
        error: reason.to_owned(),
        attempts: request.retry_count.saturating_add(1),
        at: Timestamp::now(),
        retries: 0,
        retried_at: None,
    };
    match failures.record_failure(&failure).await {
        // A conflict means an earlier delivery of this attempt recorded it already.
        Ok(()) | Err(StoreError::Conflict { .. }) => {
            tracing::warn!(
                tenant = %failure.tenant,
                queue = %failure.queue,
                task_name = %failure.task_name,
                task_kind = %failure.task_kind,
                step,
                attempts = failure.attempts,
                error = %failure.error,
                "task failed for good; recorded for review"
            );
            Settled::Failed {
                failure_id: failure.id,
            }
        }
        Err(error) => Settled::Unavailable(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use axum::body::to_bytes;
    use axum::http::{HeaderValue, Request};

    use super::*;
    use crate::domain::{OmneoProfileId, TenantId};
    use crate::queue::{QueueError, SyncProfile, TaskKind, Work};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn first_attempt_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            (header::QUEUE_NAME, "acme-klaviyo-outbound"),
            (header::TASK_NAME, "abc123"),
            (header::RETRY_COUNT, "0"),
            (header::EXECUTION_COUNT, "0"),
            (header::ETA, "1700000000.250000"),
        ]
    }

    #[test]
    fn the_queue_delay_is_the_time_since_the_scheduled_time() {
        let request = TaskRequest::from_headers(&headers(&first_attempt_headers())).unwrap();
        let eta = request.eta.unwrap();
        let later = eta + SignedDuration::from_millis(1_500);
        assert_eq!(
            request.queue_delay(later),
            Some(Duration::from_millis(1_500))
        );
        let earlier = eta - SignedDuration::from_secs(2);
        assert_eq!(request.queue_delay(earlier), Some(Duration::ZERO));
        let mut pairs = first_attempt_headers();
        pairs.retain(|(name, _)| *name != header::ETA);
        let without = TaskRequest::from_headers(&headers(&pairs)).unwrap();
        assert_eq!(without.queue_delay(later), None);
    }

    #[test]
    fn headers_parse_into_a_task_request() {
        let request = TaskRequest::from_headers(&headers(&first_attempt_headers())).unwrap();
        assert_eq!(request.queue.as_str(), "acme-klaviyo-outbound");
        assert_eq!(request.name.as_str(), "abc123");
        assert_eq!(request.retry_count, 0);
        assert_eq!(request.execution_count, 0);
        assert_eq!(
            request.eta,
            Some(Timestamp::from_millisecond(1_700_000_000_250).unwrap())
        );
        assert_eq!(request.previous_response, None);
        assert_eq!(request.retry_reason, None);

        let retry = TaskRequest::from_headers(&headers(&[
            (
                header::QUEUE_NAME,
                "projects/p/locations/l/queues/acme-klaviyo-outbound",
            ),
            (header::TASK_NAME, "abc123"),
            (header::RETRY_COUNT, "3"),
            (header::ETA, "1700000000"),
            (header::PREVIOUS_RESPONSE, "503"),
            (header::RETRY_REASON, "HTTP status code 503"),
        ]))
        .unwrap();
        assert_eq!(
            retry.queue, request.queue,
            "the full path gives its last segment"
        );
        assert_eq!(retry.retry_count, 3);
        assert_eq!(
            retry.execution_count, 0,
            "absent execution count reads as 0"
        );
        assert_eq!(
            retry.eta,
            Some(Timestamp::from_second(1_700_000_000).unwrap())
        );
        assert_eq!(retry.previous_response.as_deref(), Some("503"));
        assert_eq!(retry.retry_reason.as_deref(), Some("HTTP status code 503"));
    }

    #[test]
    fn informational_headers_are_read_leniently() {
        let mut pairs = first_attempt_headers();
        pairs.retain(|(name, _)| *name != header::ETA && *name != header::EXECUTION_COUNT);
        pairs.push((header::ETA, ""));
        pairs.push((header::EXECUTION_COUNT, "many"));
        let request = TaskRequest::from_headers(&headers(&pairs)).unwrap();
        assert_eq!(request.eta, None);
        assert_eq!(request.execution_count, 0);
    }

    #[test]
    fn missing_or_malformed_required_headers_are_400s_naming_the_header() {
        for required in [header::QUEUE_NAME, header::TASK_NAME, header::RETRY_COUNT] {
            let mut pairs = first_attempt_headers();
            pairs.retain(|(name, _)| *name != required);
            let error = TaskRequest::from_headers(&headers(&pairs)).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.field.as_deref(), Some(required));
            assert!(error.message.contains(required), "{}", error.message);
        }
        for (name, bad) in [
            (header::QUEUE_NAME, "acme_outbound"),
            (header::TASK_NAME, "a/b"),
            (header::RETRY_COUNT, "-1"),
            (header::RETRY_COUNT, "one"),
        ] {
            let mut pairs = first_attempt_headers();
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, bad));
            let error = TaskRequest::from_headers(&headers(&pairs)).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(name), "{name}: {bad}");
        }
    }

    #[tokio::test]
    async fn the_extractor_answers_400_in_the_api_error_shape() {
        let (mut parts, ()) = Request::builder()
            .header(header::QUEUE_NAME, "q")
            .body(())
            .unwrap()
            .into_parts();
        let error = TaskRequest::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(response.into_body(), 1 << 16).await.unwrap())
                .unwrap();
        assert_eq!(body["error"]["field"], header::TASK_NAME);
    }

    #[test]
    fn the_last_attempt_is_the_one_numbered_max_attempts() {
        let mut request = TaskRequest::from_headers(&headers(&first_attempt_headers())).unwrap();
        assert!(!request.is_last_attempt(3));
        request.retry_count = 1;
        assert!(!request.is_last_attempt(3));
        request.retry_count = 2;
        assert!(request.is_last_attempt(3));
        request.retry_count = 7;
        assert!(request.is_last_attempt(3));
        request.retry_count = 0;
        assert!(request.is_last_attempt(1));
        request.retry_count = u32::MAX;
        assert!(request.is_last_attempt(u32::MAX));
    }

    /// Records failures, or answers with a prepared error once.
    #[derive(Default)]
    struct FailureLog {
        failures: Mutex<Vec<Failure>>,
        answer: Mutex<Option<StoreError>>,
    }

    #[async_trait]
    impl FailureRecorder for FailureLog {
        async fn record_failure(&self, failure: &Failure) -> StoreResult<()> {
            if let Some(error) = self.answer.lock().unwrap().take() {
                return Err(error);
            }
            self.failures.lock().unwrap().push(failure.clone());
            Ok(())
        }
    }

    /// A queue that records what it is asked to enqueue and answers as told.
    #[derive(Default)]
    struct EnqueueLog {
        tasks: Mutex<Vec<Task>>,
        unavailable: bool,
    }

    #[async_trait]
    impl Queue for EnqueueLog {
        async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
            if self.unavailable {
                return Err(QueueError::Unavailable(anyhow::anyhow!(
                    "connection refused"
                )));
            }
            let mut tasks = self.tasks.lock().unwrap();
            let seen = tasks.iter().any(|t| t.name == task.name);
            tasks.push(task.clone());
            Ok(if seen {
                Enqueued::AlreadyExists
            } else {
                Enqueued::Created
            })
        }
        async fn ensure_queue(&self, _: &QueueName, _: &QueueSettings) -> Result<(), QueueError> {
            panic!("settle does not call Queue::ensure_queue")
        }
    }

    struct Fixture {
        request: TaskRequest,
        envelope: TaskEnvelope,
        settings: QueueSettings,
        store: FailureLog,
        queue: EnqueueLog,
    }

    impl Fixture {
        fn at_retry(retry_count: u32) -> Self {
            let mut request =
                TaskRequest::from_headers(&headers(&first_attempt_headers())).unwrap();
            request.retry_count = retry_count;
            Self {
                request,
                envelope: TaskEnvelope {
                    tenant: TenantId::parse("acme").unwrap(),
                    work: Work::SyncProfile(SyncProfile {
                        profile_id: OmneoProfileId::parse("p-1").unwrap(),
                    }),
                },
                settings: QueueSettings {
                    max_attempts: 5,
                    max_backoff: Duration::from_secs(300),
                    ..QueueSettings::for_direction(Direction::Outbound)
                },
                store: FailureLog::default(),
                queue: EnqueueLog::default(),
            }
        }

        async fn settle(&self, outcome: Outcome) -> Settled {
            let context = TaskContext {
                request: &self.request,
                direction: Direction::Outbound,
                envelope: &self.envelope,
                settings: &self.settings,
            };
            settle(outcome, &context, &self.store, &self.queue).await
        }

        fn failures(&self) -> Vec<Failure> {
            self.store.failures.lock().unwrap().clone()
        }

        fn enqueued(&self) -> Vec<Task> {
            self.queue.tasks.lock().unwrap().clone()
        }
    }

    fn retry(reason: &str) -> Outcome {
        Setback::retry("call_klaviyo", reason).into()
    }

    fn retry_after(seconds: u64, reason: &str) -> Outcome {
        Outcome::Failed(Setback {
            step: "call_klaviyo",
            reason: reason.into(),
            next: Next::RetryAfter(Duration::from_secs(seconds)),
        })
    }

    fn give_up(reason: &str) -> Outcome {
        Setback::give_up("call_klaviyo", reason).into()
    }

    #[tokio::test]
    async fn done_answers_2xx_and_touches_nothing() {
        let fixture = Fixture::at_retry(4);
        let settled = fixture.settle(Outcome::Done).await;
        assert_eq!(settled, Settled::Done);
        assert_eq!(settled.into_response().status(), StatusCode::OK);
        assert!(fixture.failures().is_empty() && fixture.enqueued().is_empty());
    }

    #[tokio::test]
    async fn retryable_outcomes_answer_503_before_the_last_attempt() {
        let fixture = Fixture::at_retry(3);
        let settled = fixture.settle(retry("Klaviyo answered 502")).await;
        assert_eq!(
            settled,
            Settled::Retry {
                reason: "Klaviyo answered 502".into()
            }
        );
        assert_eq!(
            settled.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let short_wait = retry_after(300, "429");
        assert!(matches!(
            fixture.settle(short_wait).await,
            Settled::Retry { .. }
        ));
        assert!(fixture.failures().is_empty() && fixture.enqueued().is_empty());
    }

    #[tokio::test]
    async fn a_failing_last_attempt_is_recorded_and_answered_2xx() {
        let fixture = Fixture::at_retry(4);
        let settled = fixture.settle(retry("Klaviyo answered 502")).await;
        let Settled::Failed { failure_id } = &settled else {
            panic!("expected a recorded failure, got {settled:?}");
        };
        assert_eq!(settled.clone().into_response().status(), StatusCode::OK);
        let failures = fixture.failures();
        assert_eq!(failures.len(), 1);
        let failure = &failures[0];
        assert_eq!(&failure.id, failure_id);
        assert_eq!(failure.tenant.as_str(), "acme");
        assert_eq!(failure.queue.as_str(), "acme-klaviyo-outbound");
        assert_eq!(failure.task_kind, TaskKind::SyncProfile);
        assert_eq!(failure.task_name.as_str(), "abc123");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&failure.payload).unwrap(),
            fixture.envelope.work.payload()
        );
        assert!(
            failure.error.contains("Klaviyo answered 502"),
            "{}",
            failure.error
        );
        assert_eq!(failure.attempts, 5);
        assert_eq!(failure.step.as_deref(), Some("call_klaviyo"));
        assert_eq!(failure.profile.as_deref(), Some("p-1"));
        assert_eq!(failure.severity, Severity::Failed);
        assert_eq!((failure.retries, failure.retried_at), (0, None));

        let short_wait = retry_after(60, "429");
        assert!(matches!(
            fixture.settle(short_wait).await,
            Settled::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn permanent_outcomes_are_recorded_on_any_attempt() {
        let fixture = Fixture::at_retry(0);
        let settled = fixture
            .settle(give_up("Klaviyo answered 400: invalid email"))
            .await;
        assert!(matches!(settled, Settled::Failed { .. }));
        assert_eq!(settled.into_response().status(), StatusCode::OK);
        let failures = fixture.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].error, "Klaviyo answered 400: invalid email");
        assert_eq!(failures[0].attempts, 1);
    }

    #[tokio::test]
    async fn a_failure_already_recorded_still_ends_the_task() {
        let fixture = Fixture::at_retry(0);
        *fixture.store.answer.lock().unwrap() = Some(StoreError::Conflict {
            collection: "failures",
            id: "x".into(),
        });
        let settled = fixture.settle(give_up("bad")).await;
        assert!(matches!(settled, Settled::Failed { .. }));
    }

    #[tokio::test]
    async fn a_store_outage_while_recording_asks_for_a_retry() {
        let fixture = Fixture::at_retry(4);
        *fixture.store.answer.lock().unwrap() = Some(StoreError::Unavailable(anyhow::anyhow!(
            "deadline exceeded"
        )));
        let settled = fixture.settle(retry("boom")).await;
        assert!(matches!(settled, Settled::Unavailable(_)));
        assert_eq!(
            settled.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_backoff_reschedules_a_copy() {
        let fixture = Fixture::at_retry(4);
        let before = Timestamp::now();
        let outcome = retry_after(3600, "Klaviyo answered 429");
        let settled = fixture.settle(outcome.clone()).await;
        let Settled::Rescheduled { name, at } = &settled else {
            panic!("expected a reschedule, got {settled:?}");
        };
        assert_eq!(settled.clone().into_response().status(), StatusCode::OK);
        let enqueued = fixture.enqueued();
        assert_eq!(enqueued.len(), 1);
        let copy = &enqueued[0];
        assert_eq!(&copy.name, name);
        assert_ne!(copy.name, fixture.request.name);
        assert_eq!(copy.queue, fixture.request.queue);
        assert_eq!(copy.direction, Direction::Outbound);
        assert_eq!(copy.envelope, fixture.envelope);
        assert_eq!(copy.schedule_at, Some(*at));
        let wait = at.duration_since(before);
        assert!(
            wait >= SignedDuration::from_secs(3600) && wait < SignedDuration::from_secs(3660),
            "{wait:?}"
        );
        assert!(fixture.failures().is_empty(), "even on the last attempt");

        // The same attempt delivered again reschedules the same copy (de-duplicated).
        let again = fixture.settle(outcome).await;
        assert!(matches!(again, Settled::Rescheduled { name: n, .. } if &n == name));
        assert_eq!(fixture.enqueued()[1].name, *name);
    }

    #[tokio::test]
    async fn reschedules_stay_within_the_30_day_limit() {
        let fixture = Fixture::at_retry(0);
        let before = Timestamp::now();
        let settled = fixture.settle(retry_after(90 * 24 * 3600, "429")).await;
        let Settled::Rescheduled { at, .. } = settled else {
            panic!("expected a reschedule, got {settled:?}");
        };
        assert!(at.duration_since(before) < SignedDuration::from_hours(30 * 24));
    }

    #[tokio::test]
    async fn a_queue_outage_while_rescheduling_asks_for_a_retry() {
        let mut fixture = Fixture::at_retry(0);
        fixture.queue.unavailable = true;
        let settled = fixture.settle(retry_after(3600, "429")).await;
        assert!(matches!(settled, Settled::Unavailable(_)));
        assert_eq!(
            settled.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
