//! The backfill admin API (product.md §10): start, watch and cancel a tenant's backfill run
//! ([`crate::outbound::backfill`]). The routes take the tenant's admin key or the operator token.
//!
//! - `POST /{tenant}/api/v1/backfill` `{"since"?: RFC 3339, "dry_run"?: bool}` (an empty body is
//!   `{}`) → `202` and the run; `409 conflict` while a run is running, `409 not_installed` when
//!   the tenant is not installed, `400 invalid_field` naming a bad or unknown field.
//! - `GET /{tenant}/api/v1/backfill` → `200` and the latest run (running or finished; `404` when
//!   the tenant never ran one).
//! - `DELETE /{tenant}/api/v1/backfill` → `200` and the run, cancelled; `404` when none runs.
//!
//! A run as the API shows it ([`RunView`]): `id`, `state` (`running|completed|failed|cancelled`),
//! `trigger`, `since`, `dry_run`, `started_at`, `finished_at`, `total` (when Omneo said),
//! `counts` (`read`, `excluded`, `imported`, `subscribed`, `unsubscribed`, `unchanged`,
//! `failed`), `chunks` and `chunks_done`, `rate_per_minute` (profiles read per minute so far),
//! `eta` (while running, once the total is known), `errors` (the latest ten: `profile`, `step`,
//! `message`, `at`) and `failure` (why it failed).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::api_error::{ApiError, ErrorCode, parse_json};
use crate::app::App;
use crate::install::admin::AdminTenant;
use crate::outbound::backfill::{self, RunRequest, StartError};
use crate::store::{BackfillRun, RunCounts, RunError, RunState, RunTrigger};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/{tenant}/api/v1/backfill",
        get(show).post(start).delete(cancel),
    )
}

/// The body of `POST …/backfill`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// Only profiles updated at or after this time.
    #[serde(default)]
    since: Option<Timestamp>,
    /// Count, write nothing.
    #[serde(default)]
    dry_run: bool,
}

/// A backfill run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// The run's id.
    pub id: String,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub state: &'static str,
    /// Who started it: `admin` or `reconciliation`.
    pub trigger: RunTrigger,
    /// Only profiles updated at or after this time (`null`: all).
    pub since: Option<Timestamp>,
    /// Counted only, nothing written.
    pub dry_run: bool,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Profiles to read, once Omneo said.
    pub total: Option<u64>,
    /// What the finished chunks did.
    pub counts: RunCounts,
    /// Chunks enqueued so far.
    pub chunks: usize,
    /// Chunks finished.
    pub chunks_done: usize,
    /// Profiles read per minute, from the start to the end (or now).
    pub rate_per_minute: f64,
    /// When it should end at that rate (while running, once the total is known).
    pub eta: Option<Timestamp>,
    /// The latest errors.
    pub errors: Vec<ErrorView>,
    /// Why it failed.
    pub failure: Option<String>,
}

impl RunView {
    /// The view of `run` at `now`.
    pub fn of(run: BackfillRun, now: Timestamp) -> Self {
        let end = run.finished_at.unwrap_or(now);
        let minutes = end.duration_since(run.started_at).as_secs_f64() / 60.0;
        let read = run.counts.read as f64;
        let rate_per_minute = if minutes > 0.0 { read / minutes } else { 0.0 };
        let eta = match (run.state, run.total) {
            (RunState::Running, Some(total)) if rate_per_minute > 0.0 => {
                let left = total.saturating_sub(run.counts.read) as f64 / rate_per_minute;
                SignedDuration::try_from_secs_f64(left * 60.0)
                    .ok()
                    .and_then(|left| now.checked_add(left).ok())
            }
            _ => None,
        };
        Self {
            state: run.state.as_str(),
            chunks: run.chunks.len(),
            chunks_done: run.chunks.values().filter(|c| c.done).count(),
            id: run.id,
            trigger: run.trigger,
            since: run.since,
            dry_run: run.dry_run,
            started_at: run.started_at,
            finished_at: run.finished_at,
            total: run.total,
            counts: run.counts,
            rate_per_minute: (rate_per_minute * 10.0).round() / 10.0,
            eta,
            errors: run.errors.into_iter().map(ErrorView::from).collect(),
            failure: run.failure,
        }
    }
}

/// One of a run's sampled errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    /// The Omneo profile id, when the error is about one profile.
    pub profile: Option<String>,
    /// The step.
    pub step: String,
    /// What went wrong.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

impl From<RunError> for ErrorView {
    fn from(
        RunError {
            profile,
            step,
            message,
            at,
        }: RunError,
    ) -> Self {
        Self {
            profile,
            step,
            message,
            at,
        }
    }
}

async fn start(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        parse_json(&body)?
    };
    let request = RunRequest {
        since: body.since,
        dry_run: body.dry_run,
        trigger: RunTrigger::Admin,
    };
    match backfill::start(&app, &admin.tenant.id, request).await {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            Json(RunView::of(run, Timestamp::now())),
        )),
        Err(StartError::Running(run)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!(
                "backfill run {} is running; cancel it (DELETE) or wait for it to end",
                run.id
            ),
        )),
        Err(StartError::NotInstalled) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotInstalled,
            format!(
                "tenant {} is not installed; install it before a backfill",
                admin.tenant.id
            ),
        )),
        Err(StartError::Unavailable(error)) => Err(ApiError::unavailable(error.as_ref())),
    }
}

async fn show(State(app): State<Arc<App>>, admin: AdminTenant) -> Result<Json<RunView>, ApiError> {
    let run = app.store.backfill(&admin.tenant.id).await?.ok_or_else(|| {
        ApiError::not_found(format!("tenant {} never ran a backfill", admin.tenant.id))
    })?;
    Ok(Json(RunView::of(run, Timestamp::now())))
}

async fn cancel(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
) -> Result<Json<RunView>, ApiError> {
    let run = backfill::cancel(&app, &admin.tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("no backfill run is running"))?;
    tracing::info!(tenant = %admin.tenant.id, run = %run.id, "backfill cancelled");
    Ok(Json(RunView::of(run, Timestamp::now())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    fn run(state: RunState, read: u64, total: Option<u64>) -> BackfillRun {
        let now: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        BackfillRun {
            tenant: TenantId::parse("acme").unwrap(),
            id: "run-1".into(),
            trigger: RunTrigger::Admin,
            since: None,
            dry_run: false,
            state,
            started_at: now.checked_sub(SignedDuration::from_mins(2)).unwrap(),
            finished_at: None,
            total,
            pages_per_chunk: 10,
            listing_done: false,
            chunks: Default::default(),
            counts: RunCounts {
                read,
                ..RunCounts::default()
            },
            errors: Vec::new(),
            failure: None,
        }
    }

    #[test]
    fn the_rate_is_profiles_read_per_minute_and_the_eta_follows_it() {
        let now: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let view = RunView::of(run(RunState::Running, 1_000, Some(3_000)), now);
        assert_eq!(view.rate_per_minute, 500.0);
        assert_eq!(view.eta, Some("2026-12-02T10:04:00Z".parse().unwrap()));
        assert_eq!(view.state, "running");
    }

    #[test]
    fn no_eta_without_a_total_or_once_finished() {
        let now: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        assert_eq!(
            RunView::of(run(RunState::Running, 1_000, None), now).eta,
            None
        );
        let mut finished = run(RunState::Completed, 3_000, Some(3_000));
        finished.finished_at = Some(now.checked_sub(SignedDuration::from_mins(1)).unwrap());
        let view = RunView::of(finished, now);
        assert_eq!(view.eta, None);
        assert_eq!(
            view.rate_per_minute, 3_000.0,
            "measured to the end, not to now"
        );
    }
}
