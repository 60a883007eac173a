//! Google Cloud Tasks over gRPC (platform.md), or the Cloud Tasks emulator in tests.
//!
//! Tasks are HTTP-target tasks named `projects/P/locations/L/queues/Q/tasks/<TaskName>`, POSTed
//! with `Content-Type: application/json` (Cloud Tasks sets none) and, when an invoker service
//! account is configured, an OIDC token whose audience is the worker's base URL.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use gcloud_sdk::google::cloud::tasks::v2 as pb;
use gcloud_sdk::google::cloud::tasks::v2::cloud_tasks_client::CloudTasksClient;
use gcloud_sdk::google_cloud_auth::credentials::anonymous;
use gcloud_sdk::tonic::{Code, Status};
use gcloud_sdk::{GoogleApi, GoogleAuthMiddleware, prost_types};
use jiff::Timestamp;

use super::{Enqueued, Queue, QueueError, QueueName, QueueSettings, Task, TaskTargets};

/// The production endpoint.
const ENDPOINT: &str = "https://cloudtasks.googleapis.com";
/// How long one API call may take before the queue counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The [`Queue`] of production: Google Cloud Tasks.
#[derive(Clone)]
pub struct CloudTasksQueue {
    client: GoogleApi<CloudTasksClient<GoogleAuthMiddleware>>,
    /// `projects/P/locations/L`.
    location: String,
    invoker_service_account: Option<String>,
    targets: TaskTargets,
}

impl CloudTasksQueue {
    /// Connects to Cloud Tasks in `project`/`location` with the default credentials, or to the
    /// emulator at `emulator_host` (`host:port`, no credentials). Tasks carry an OIDC token of
    /// `invoker_service_account` when given (never on the emulator, which cannot mint one).
    pub async fn connect(
        project: &str,
        location: &str,
        emulator_host: Option<&str>,
        invoker_service_account: Option<String>,
        targets: TaskTargets,
    ) -> anyhow::Result<Self> {
        let client = match emulator_host {
            Some(host) => {
                let url = if host.contains("://") {
                    host.to_owned()
                } else {
                    format!("http://{host}")
                };
                GoogleApi::from_function_with_credentials(
                    CloudTasksClient::new,
                    &url,
                    None,
                    anonymous::Builder::new().build(),
                )
                .await
                .with_context(|| format!("connecting to the Cloud Tasks emulator at {url}"))?
            }
            None => GoogleApi::from_function(CloudTasksClient::new, ENDPOINT, None)
                .await
                .context("connecting to Cloud Tasks with the default credentials")?,
        };
        Ok(Self {
            client,
            location: format!("projects/{project}/locations/{location}"),
            invoker_service_account,
            targets,
        })
    }

    fn queue_path(&self, queue: &QueueName) -> String {
        format!("{}/queues/{queue}", self.location)
    }

    fn http_request(&self, task: &Task, body: Vec<u8>) -> pb::HttpRequest {
        let audience = self
            .targets
            .base(task.direction)
            .as_str()
            .trim_end_matches('/');
        pb::HttpRequest {
            url: self.targets.url(task.direction).to_string(),
            http_method: pb::HttpMethod::Post.into(),
            headers: [("Content-Type".to_owned(), "application/json".to_owned())].into(),
            body,
            authorization_header: self.invoker_service_account.as_ref().map(|account| {
                pb::http_request::AuthorizationHeader::OidcToken(pb::OidcToken {
                    service_account_email: account.clone(),
                    audience: audience.to_owned(),
                })
            }),
        }
    }
}

#[async_trait]
impl Queue for CloudTasksQueue {
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
        let body = serde_json::to_vec(&task.envelope)
            .map_err(|e| QueueError::Rejected(format!("task body is not JSON: {e}")))?;
        let parent = self.queue_path(&task.queue);
        let name = format!("{parent}/tasks/{}", task.name);
        let request = pb::CreateTaskRequest {
            task: Some(pb::Task {
                name: name.clone(),
                schedule_time: task.schedule_at.map(timestamp),
                message_type: Some(pb::task::MessageType::HttpRequest(
                    self.http_request(task, body),
                )),
                ..Default::default()
            }),
            parent,
            response_view: pb::task::View::Unspecified.into(),
        };
        let mut client = self.client.get();
        match call(client.create_task(request)).await {
            Ok(_) => Ok(Enqueued::Created),
            Err(status) => match status.code() {
                Code::AlreadyExists => Ok(Enqueued::AlreadyExists),
                Code::NotFound => Err(QueueError::QueueNotFound(task.queue.to_string())),
                // The emulator's answer for a missing queue.
                Code::FailedPrecondition if status.message().contains("does not exist") => {
                    Err(QueueError::QueueNotFound(task.queue.to_string()))
                }
                Code::InvalidArgument => Err(QueueError::Rejected(format!(
                    "CreateTask {name}: {}",
                    status.message()
                ))),
                _ => Err(unavailable(&status, format!("CreateTask {name}"))),
            },
        }
    }

    /// One UpdateQueue call: it creates the queue when missing and otherwise updates only the
    /// rate limits and retry settings.
    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        let path = self.queue_path(queue);
        let request = pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                name: path.clone(),
                rate_limits: Some(pb::RateLimits {
                    max_dispatches_per_second: settings.max_dispatches_per_second,
                    max_burst_size: 0,
                    max_concurrent_dispatches: saturating_i32(settings.max_concurrent_dispatches),
                }),
                retry_config: Some(pb::RetryConfig {
                    max_attempts: saturating_i32(settings.max_attempts),
                    max_retry_duration: Some(duration(settings.max_retry_duration)),
                    min_backoff: Some(duration(settings.min_backoff)),
                    max_backoff: Some(duration(settings.max_backoff)),
                    max_doublings: saturating_i32(settings.max_doublings),
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: [
                    "rate_limits.max_dispatches_per_second",
                    "rate_limits.max_concurrent_dispatches",
                    "retry_config.max_attempts",
                    "retry_config.max_retry_duration",
                    "retry_config.min_backoff",
                    "retry_config.max_backoff",
                    "retry_config.max_doublings",
                ]
                .map(str::to_owned)
                .into(),
            }),
        };
        let mut client = self.client.get();
        call(client.update_queue(request))
            .await
            .map(drop)
            .map_err(|status| unavailable(&status, format!("UpdateQueue {path}")))
    }
}

/// Awaits an API call with [`CALL_TIMEOUT`], a timeout reading as `DEADLINE_EXCEEDED`.
async fn call<T>(
    future: impl Future<Output = Result<gcloud_sdk::tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(result) => result.map(gcloud_sdk::tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

fn unavailable(status: &Status, what: String) -> QueueError {
    QueueError::Unavailable(anyhow::anyhow!(
        "{what}: {:?}: {}",
        status.code(),
        status.message()
    ))
}

fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.as_second(),
        nanos: at.subsec_nanosecond(),
    }
}

fn duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).expect("sub-second nanos fit an i32"),
    }
}

fn saturating_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_durations_convert_exactly() {
        let at = Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        assert_eq!(
            timestamp(at),
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789
            }
        );
        assert_eq!(
            duration(Duration::from_millis(5_250)),
            prost_types::Duration {
                seconds: 5,
                nanos: 250_000_000
            }
        );
        assert_eq!(saturating_i32(u32::MAX), i32::MAX);
    }
}
