//! The failure records' admin API (product.md §10, "Failures"): what did not sync, and replaying
//! it. Both routes take the tenant's admin key or the operator token ([`AdminTenant`]).
//!
//! `GET /{tenant}/api/v1/failures?kind=&severity=&limit=&cursor=` → `200 {"failures":
//! [FailureView…], "next_cursor": "…" | null}`, newest first (by `at`, then `id`, both
//! descending). `kind` is a task kind (`sync_profile`, `klaviyo_events`…), `severity` `failed` or
//! `warning`, `limit` 1 to 200 (default 50), `cursor` the previous page's `next_cursor`, opaque to
//! callers; `next_cursor` is `null` on the last page. A parameter given empty counts as absent; a
//! malformed one, one given twice, or one not listed here is `400 invalid_field` naming it.
//!
//! `POST /{tenant}/api/v1/failures/{id}/retry` → `202 {"failure": FailureView, "task_name"}`:
//! the record's task enqueued again and the replay counted on the record; see [`replay`].
//! An unknown id, or another tenant's, is `404`; a tenant not installed `409 not_installed`; the
//! queue or the store down `503`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api_error::{ApiError, ErrorCode};
use crate::app::App;
use crate::domain::TenantId;
use crate::install::admin::AdminTenant;
use crate::queue::{
    Direction, Enqueued, QueueError, QueueName, Task, TaskEnvelope, TaskKind, TaskName, Work,
};
use crate::store::{Failure, FailureCursor, FailureQuery, InstallStatus, Severity, StoreError};

/// The page size when the caller names none.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page a caller may ask for.
pub const MAX_LIMIT: usize = 200;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/{tenant}/api/v1/failures", get(list))
        .route("/{tenant}/api/v1/failures/{id}/retry", post(retry))
}

/// A failure record as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureView {
    /// The record's id (`{queue}:{task name}`), for `…/failures/{id}/retry`.
    pub id: String,
    /// What the task was to do.
    pub task_kind: TaskKind,
    /// The profile the task was about (Omneo id, Klaviyo id or email), when it names one.
    pub profile: Option<String>,
    /// The step of the task that failed, when known.
    pub step: Option<String>,
    /// `failed` (the work was not done) or `warning` (done, with a caveat).
    pub severity: Severity,
    /// What went wrong.
    pub error: String,
    /// How many attempts the task made.
    pub attempts: u32,
    /// When the failure was recorded.
    pub at: Timestamp,
    /// How many times the task was replayed from this record.
    pub retries: u32,
    /// When it was last replayed.
    pub retried_at: Option<Timestamp>,
    /// The queue the task came from.
    pub queue: QueueName,
    /// The task's Cloud Tasks name.
    pub task_name: TaskName,
    /// The task's payload, as JSON (the stored text as a string, were it ever not JSON).
    pub payload: Value,
}

impl From<Failure> for FailureView {
    fn from(failure: Failure) -> Self {
        let payload = serde_json::from_str(&failure.payload)
            .unwrap_or_else(|_| Value::String(failure.payload.clone()));
        Self {
            id: failure.id,
            task_kind: failure.task_kind,
            profile: failure.profile,
            step: failure.step,
            severity: failure.severity,
            error: failure.error,
            attempts: failure.attempts,
            at: failure.at,
            retries: failure.retries,
            retried_at: failure.retried_at,
            queue: failure.queue,
            task_name: failure.task_name,
            payload,
        }
    }
}

/// One page of the listing.
#[derive(Debug, Serialize)]
pub struct FailureList {
    /// The records, newest first.
    pub failures: Vec<FailureView>,
    /// The `cursor` of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /{tenant}/api/v1/failures`.
async fn list(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
    RawQuery(raw): RawQuery,
) -> Result<Json<FailureList>, ApiError> {
    let query = list_query(raw.as_deref())?;
    let page = app.store.failures(&admin.tenant.id, &query).await?;
    Ok(Json(FailureList {
        failures: page.failures.into_iter().map(FailureView::from).collect(),
        next_cursor: page.next.map(|cursor| cursor.encode()),
    }))
}

/// The listing's query string as a store query; each bad parameter is a 400 naming it.
fn list_query(raw: Option<&str>) -> Result<FailureQuery, ApiError> {
    let mut query = FailureQuery::newest(DEFAULT_LIMIT);
    let mut seen = HashSet::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !seen.insert(name.clone()) {
            return Err(ApiError::invalid_field(name, "given more than once"));
        }
        match (name.as_ref(), value.as_ref()) {
            ("kind" | "severity" | "limit" | "cursor", "") => {}
            ("kind", kind) => {
                query.kind = Some(
                    variant(kind).map_err(|e| ApiError::invalid_field("kind", e.to_string()))?,
                );
            }
            ("severity", severity) => {
                query.severity = Some(
                    variant(severity)
                        .map_err(|e| ApiError::invalid_field("severity", e.to_string()))?,
                );
            }
            ("limit", limit) => {
                query.limit = limit
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "limit",
                            format!("must be a whole number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            ("cursor", cursor) => {
                query.after = Some(FailureCursor::decode(cursor).ok_or_else(|| {
                    ApiError::invalid_field(
                        "cursor",
                        "not a cursor of this listing: pass a next_cursor as it was given",
                    )
                })?);
            }
            (other, _) => {
                return Err(ApiError::invalid_field(
                    other,
                    "unknown parameter: expected kind, severity, limit or cursor",
                ));
            }
        }
    }
    Ok(query)
}

/// A unit enum variant by its serde name; the error lists the names it expected.
fn variant<'de, T: Deserialize<'de>>(raw: &'de str) -> Result<T, ValueError> {
    let deserializer: StrDeserializer<'de, ValueError> = raw.into_deserializer();
    T::deserialize(deserializer)
}

/// The `{id}` of `…/failures/{id}/retry`.
#[derive(Debug, Deserialize)]
struct FailureId {
    id: String,
}

/// What `…/retry` answers.
#[derive(Debug, Serialize)]
pub struct RetryAnswer {
    /// The record after the replay was counted.
    pub failure: FailureView,
    /// The name of the task enqueued.
    pub task_name: TaskName,
}

/// `POST /{tenant}/api/v1/failures/{id}/retry` → 202.
async fn retry(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
    path: Result<Path<FailureId>, PathRejection>,
) -> Result<(StatusCode, Json<RetryAnswer>), ApiError> {
    let Path(FailureId { id }) =
        path.map_err(|rejection| ApiError::invalid_field("id", rejection.body_text()))?;
    let replayed = replay(&app, &admin.tenant.id, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RetryAnswer {
            failure: replayed.failure.into(),
            task_name: replayed.task_name,
        }),
    ))
}

/// A replay [`replay`] enqueued and counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The record, its replay counted.
    pub failure: Failure,
    /// The name of the task on the queue.
    pub task_name: TaskName,
}

/// Why a tenant's task cannot be replayed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInstalled {
    /// The tenant never installed the Klaviyo app.
    Never,
    /// The install is not `installed`.
    Status(InstallStatus),
    /// The install has no queue of the task's direction.
    NoQueue(Direction),
}

impl std::fmt::Display for NotInstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Never => f.write_str("it never installed the Klaviyo app"),
            Self::Status(status) => write!(f, "its install is {status}"),
            Self::NoQueue(direction) => write!(f, "it has no {} queue", direction.as_str()),
        }
    }
}

/// Why [`replay`] did not replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No such record for the tenant.
    #[error("tenant {tenant} has no failure record {id}")]
    NotFound {
        /// The tenant.
        tenant: TenantId,
        /// The id asked for.
        id: String,
    },
    /// The tenant is not installed: there is no queue to replay on, or no one to run the task.
    #[error("tenant {tenant} is not installed: {why}")]
    NotInstalled {
        /// The tenant.
        tenant: TenantId,
        /// What is missing.
        why: NotInstalled,
    },
    /// The recorded payload no longer makes a task of its kind.
    #[error("failure record {id} does not hold a {kind} task")]
    Unreplayable {
        /// The record.
        id: String,
        /// Its task kind.
        kind: TaskKind,
        /// Why the payload does not parse.
        #[source]
        cause: serde_json::Error,
    },
    /// Enqueueing failed; the record was not marked.
    #[error("the replay could not be enqueued")]
    Queue(#[source] QueueError),
    /// The store failed.
    #[error("the store failed during the replay")]
    Store(#[from] StoreError),
}

impl From<ReplayError> for ApiError {
    fn from(error: ReplayError) -> Self {
        match &error {
            ReplayError::NotFound { .. } => Self::not_found(error.to_string()),
            ReplayError::NotInstalled { .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::NotInstalled,
                format!("{error}; install it before replaying its tasks"),
            ),
            ReplayError::Queue(QueueError::Unavailable(_) | QueueError::QueueNotFound(_))
            | ReplayError::Store(StoreError::Unavailable(_)) => Self::unavailable(&error),
            // A record written by an older version whose task format has changed since: the
            // operator learns why, and that no replay will work.
            ReplayError::Unreplayable { cause, .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                format!("{error}: {cause}; it cannot be replayed"),
            ),
            ReplayError::Queue(QueueError::Rejected(_)) | ReplayError::Store(_) => {
                Self::internal(&error)
            }
        }
    }
}

/// Replays the tenant's failure record `id`: rebuilds its task (kind and payload, for `tenant`),
/// enqueues it on the tenant's current queue of the kind's direction as
/// `TaskName::from_parts(["replay", id, retries + 1])`, then counts the replay on the record by
/// compare-and-set ([`Store::mark_failure_retried`](crate::store::Store::mark_failure_retried):
/// `retries` from the count read to one more, `retried_at` now).
///
/// Enqueue first, mark second: when the queue or the store fails, the record is not marked (a
/// task enqueued before a failed mark is not enqueued again by the next call, which computes the
/// same name). Two overlapping calls read the same count, so they compute the same task name:
/// the queue takes the task once (the other call gets [`Enqueued::AlreadyExists`]) and the
/// compare-and-set lets one of them mark the record; the other finds it marked and answers with
/// it and the same task name. A call after a replay was counted is a new replay, under a new
/// name — safe, because every worker is idempotent.
pub async fn replay(app: &App, tenant: &TenantId, id: &str) -> Result<Replayed, ReplayError> {
    let not_found = || ReplayError::NotFound {
        tenant: tenant.clone(),
        id: id.to_owned(),
    };
    let failure = app.store.failure(tenant, id).await?.ok_or_else(not_found)?;
    let direction = failure.task_kind.direction();
    let not_installed = |why| ReplayError::NotInstalled {
        tenant: tenant.clone(),
        why,
    };
    let install = app
        .store
        .install(tenant)
        .await?
        .ok_or_else(|| not_installed(NotInstalled::Never))?;
    if install.status != InstallStatus::Installed {
        return Err(not_installed(NotInstalled::Status(install.status)));
    }
    let queue = install
        .queue(direction)
        .ok_or_else(|| not_installed(NotInstalled::NoQueue(direction)))?
        .clone();
    let work = serde_json::from_str(&failure.payload)
        .and_then(|payload| Work::from_parts(failure.task_kind, payload))
        .map_err(|cause| ReplayError::Unreplayable {
            id: failure.id.clone(),
            kind: failure.task_kind,
            cause,
        })?;
    let count = failure.retries.saturating_add(1).to_string();
    let task_name = TaskName::from_parts(&["replay", &failure.id, &count]);
    let task = Task {
        queue,
        direction,
        envelope: TaskEnvelope {
            tenant: tenant.clone(),
            work,
        },
        name: task_name.clone(),
        schedule_at: None,
    };
    let enqueued = app.queue.enqueue(&task).await.map_err(ReplayError::Queue)?;
    let now = Timestamp::now();
    // Firestore keeps microseconds: the answer shows the time as it is stored.
    let now = Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now);
    let marked = match app
        .store
        .mark_failure_retried(tenant, id, failure.retries, now)
        .await
    {
        Ok(marked) => marked,
        // An overlapping call counted this replay first.
        Err(StoreError::Aborted) => app.store.failure(tenant, id).await?,
        Err(error) => return Err(error.into()),
    };
    let failure = marked.ok_or_else(not_found)?;
    tracing::info!(
        %tenant,
        failure_id = id,
        task_kind = %failure.task_kind,
        queue = %task.queue,
        task_name = %task_name,
        already_enqueued = enqueued == Enqueued::AlreadyExists,
        retries = failure.retries,
        "failed task replayed"
    );
    Ok(Replayed { failure, task_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(raw: &str) -> Option<String> {
        list_query(Some(raw)).unwrap_err().field
    }

    #[test]
    fn an_empty_query_asks_for_the_newest_page() {
        assert_eq!(
            list_query(None).unwrap(),
            FailureQuery::newest(DEFAULT_LIMIT)
        );
        assert_eq!(
            list_query(Some("kind=&severity=&limit=&cursor=")).unwrap(),
            FailureQuery::newest(DEFAULT_LIMIT),
            "empty parameters count as absent"
        );
    }

    #[test]
    fn every_parameter_is_read() {
        let cursor = FailureCursor {
            at: Timestamp::from_microsecond(1_700_000_000_123_456).unwrap(),
            id: "acme-klaviyo-outbound:abc".into(),
        };
        let raw = format!(
            "kind=klaviyo_events&severity=warning&limit=200&cursor={}",
            cursor.encode()
        );
        assert_eq!(
            list_query(Some(&raw)).unwrap(),
            FailureQuery {
                kind: Some(TaskKind::KlaviyoEvents),
                severity: Some(Severity::Warning),
                after: Some(cursor),
                limit: 200,
            }
        );
        assert_eq!(list_query(Some("limit=1")).unwrap().limit, 1);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (raw, field) in [
            ("kind=teleport", "kind"),
            ("kind=SYNC_PROFILE", "kind"),
            ("severity=fatal", "severity"),
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("cursor=not-a-cursor", "cursor"),
            ("cursor=%FF", "cursor"),
            ("limit=5&limit=6", "limit"),
            ("kinds=sync_profile", "kinds"),
        ] {
            assert_eq!(field_of(raw).as_deref(), Some(field), "{raw}");
        }
        let error = list_query(Some("kind=teleport")).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("sync_profile"),
            "names the kinds: {}",
            error.message
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = FailureCursor {
            at: Timestamp::from_microsecond(-5).unwrap(),
            id: "q:with:colons".into(),
        };
        assert_eq!(FailureCursor::decode(&cursor.encode()), Some(cursor));
        use base64::Engine as _;
        let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        for forged in ["", "12", "12:", ":id", "x:id", "99999999999999999999:id"] {
            assert_eq!(FailureCursor::decode(&encode(forged)), None, "{forged}");
        }
        assert_eq!(FailureCursor::decode("12:id"), None, "not base64url");
    }

    #[test]
    fn install_statuses_show_as_stored() {
        for status in [
            InstallStatus::Pending,
            InstallStatus::Provisioning,
            InstallStatus::Installed,
            InstallStatus::Failed,
            InstallStatus::ReauthorizationRequired,
            InstallStatus::Uninstalled,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn views_show_the_payload_as_json() {
        let failure = Failure {
            id: "q:t".into(),
            tenant: TenantId::parse("acme").unwrap(),
            queue: QueueName::parse("acme-klaviyo-outbound").unwrap(),
            task_kind: TaskKind::SyncProfile,
            task_name: TaskName::parse("t").unwrap(),
            payload: r#"{"profile_id":"p-1"}"#.into(),
            profile: Some("p-1".into()),
            step: None,
            severity: Severity::Failed,
            error: "bad".into(),
            attempts: 1,
            at: Timestamp::UNIX_EPOCH,
            retries: 0,
            retried_at: None,
        };
        let view = serde_json::to_value(FailureView::from(failure)).unwrap();
        assert_eq!(view["payload"], serde_json::json!({"profile_id": "p-1"}));
        assert_eq!(view["task_kind"], "sync_profile");
        assert_eq!(view["severity"], "failed");
        assert_eq!(view["at"], "1970-01-01T00:00:00Z");
        assert_eq!(view["retried_at"], Value::Null);
        assert!(view.get("tenant").is_none(), "the path names the tenant");
    }
}
