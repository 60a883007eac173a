//! Omneo → Klaviyo: the `outbound-task` worker (product.md §6, §8).
//!
//! | module | concern |
//! |---|---|
//! | [`mapping`] | exclusions and the one mapping of an Omneo profile to a Klaviyo profile import |
//! | [`consent`] | Omneo's consent vs Klaviyo's: the subscribe / unsubscribe writes of a sync |
//! | [`sync`] | *sync profile*: re-read, exclude, match, import, identity, consent, sync state |
//! | [`removal`] | *profile deleted* (and a re-read that finds the profile gone) |
//! | [`targets`] | the `metric` and `data-source-record` targets' work |
//!
//! `POST /tasks/outbound` reads the task (`X-CloudTasks-*` headers, JSON envelope), checks the
//! tenant is installed — not installed or `reauthorization_required` ends the task with a failure
//! record before any Klaviyo call — runs the work, and [`settle`]s the outcome: 200 when done or
//! recorded as failed, 503 for "retry me", a reschedule for a long `Retry-After`.
//!
//! **Idempotency.** Cloud Tasks delivers at least once, so every step is safe to repeat: profile
//! import is an upsert, consent jobs set a state and are only sent on a difference read from
//! Klaviyo just before, events carry a deterministic `unique_id`, data-source records a stable
//! `id`, and deletions are harmless twice. Work on one profile (sync and deletion) holds a
//! per-profile lease in the store, so two attempts never interleave their reads and writes (a
//! stale attempt could otherwise write an older profile after a newer one); an attempt that finds
//! the lease taken asks to be retried.

pub mod consent;
pub mod mapping;
pub mod removal;
pub mod sync;
pub mod targets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use secrecy::SecretString;
use tracing::Instrument as _;

use crate::access::KlaviyoCallError;
use crate::api_error::{ApiError, ErrorCode};
use crate::app::App;
use crate::domain::{KlaviyoProfileId, OmneoProfileId};
use crate::klaviyo::KlaviyoClient;
use crate::klaviyo::models::Profile as KlaviyoProfile;
use crate::omneo::OmneoClient;
use crate::queue::{Direction, QueueSettings, TaskEnvelope, Work};
use crate::remote::RemoteError;
use crate::store::{
    Claim, Failure, IdempotencyKey, Install, InstallStatus, Severity, StoreError, Tenant,
};
use crate::worker::{Outcome, Setback, TaskContext, TaskRequest, settle};

/// How long one attempt holds a profile's lease: longer than an attempt can take (a handful of
/// calls, each bounded by the retry policy's two minutes).
pub const PROFILE_LEASE: Duration = Duration::from_secs(5 * 60);

/// The routes of `outbound-task`.
pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route(Direction::Outbound.task_path(), post(run))
        .with_state(app)
}

/// `POST /tasks/outbound`.
async fn run(State(app): State<Arc<App>>, request: TaskRequest, body: Bytes) -> Response {
    let envelope: TaskEnvelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(error) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidBody,
                format!("not an outbound task: {error}"),
            )
            .into_response();
        }
    };
    if envelope.work.kind().direction() != Direction::Outbound {
        return ApiError::invalid_field(
            "kind",
            format!("{} is not outbound work", envelope.work.kind()),
        )
        .into_response();
    }
    let span = tracing::info_span!(
        "outbound_task",
        tenant = %envelope.tenant,
        task_name = %request.name,
        task_kind = %envelope.work.kind(),
        retry_count = request.retry_count,
    );
    let settings = QueueSettings::for_direction(Direction::Outbound);
    let outcome = Outcome::from(
        work(&app, &request, &envelope)
            .instrument(span.clone())
            .await,
    );
    let context = TaskContext {
        request: &request,
        direction: Direction::Outbound,
        envelope: &envelope,
        settings: &settings,
    };
    settle(outcome, &context, &app.store, app.queue.as_ref())
        .instrument(span)
        .await
        .into_response()
}

/// Loads the tenant's state and runs the task's work.
async fn work(app: &App, request: &TaskRequest, envelope: &TaskEnvelope) -> Result<(), Setback> {
    let job = Job::load(app, request, envelope).await?;
    match &envelope.work {
        Work::SyncProfile(work) => sync::sync_profile(&job, &work.profile_id).await,
        Work::ProfileDeleted(work) => removal::profile_deleted(&job, work).await,
        Work::SendMetric(work) => targets::send_metric(&job, work).await,
        Work::DataSourceRecord(work) => targets::data_source_record(&job, work).await,
        Work::KlaviyoEvents(_) | Work::FlowAction(_) => Err(Setback::give_up(
            "route",
            "inbound work reached the outbound worker",
        )),
    }
}

/// One task's view of its tenant: records, clients, and where warnings go.
pub struct Job<'a> {
    /// The app.
    pub app: &'a App,
    /// The task being run.
    pub request: &'a TaskRequest,
    /// Its envelope.
    pub envelope: &'a TaskEnvelope,
    /// The tenant record.
    pub tenant: Tenant,
    /// The install record (status `installed`).
    pub install: Install,
    /// The tenant's Omneo client.
    pub omneo: OmneoClient,
}

impl<'a> Job<'a> {
    /// Reads the tenant and its install; a tenant that is not installed (or must re-authorise)
    /// ends the task here, before any remote call.
    async fn load(
        app: &'a App,
        request: &'a TaskRequest,
        envelope: &'a TaskEnvelope,
    ) -> Result<Self, Setback> {
        let id = &envelope.tenant;
        let (tenant, install) = tokio::join!(app.store.tenant(id), app.store.install(id));
        let tenant = tenant
            .map_err(store_setback("load_tenant"))?
            .ok_or_else(|| {
                Setback::give_up("load_tenant", format!("tenant {id} is not registered"))
            })?;
        let install = install.map_err(store_setback("load_tenant"))?;
        let install = match install {
            Some(install) if install.status == InstallStatus::Installed => install,
            Some(install) if install.status == InstallStatus::ReauthorizationRequired => {
                return Err(Setback::give_up(
                    "check_install",
                    format!("tenant {id} must re-authorise the Klaviyo app; nothing was sent"),
                ));
            }
            other => {
                let status = other.map_or("never installed".to_owned(), |i| {
                    format!("status {:?}", i.status)
                });
                return Err(Setback::give_up(
                    "check_install",
                    format!("tenant {id} is not installed ({status}); nothing was sent"),
                ));
            }
        };
        let omneo = app
            .omneo(&tenant)
            .map_err(|error| Setback::give_up("load_tenant", format!("{error:#}")))?;
        Ok(Self {
            app,
            request,
            envelope,
            tenant,
            install,
            omneo,
        })
    }

    /// A Klaviyo call with the tenant's token (refreshed once on a 401).
    pub async fn klaviyo<T, F, Fut>(&self, call: F) -> Result<T, KlaviyoCallError>
    where
        F: Fn(KlaviyoClient, SecretString) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        self.app
            .tokens
            .call(&self.tenant.id, |token| {
                call(self.app.klaviyo.clone(), token)
            })
            .await
    }

    /// The Klaviyo profile with this id, with its consent; `None` when Klaviyo has none.
    pub async fn klaviyo_profile(
        &self,
        id: &KlaviyoProfileId,
    ) -> Result<Option<KlaviyoProfile>, Setback> {
        self.klaviyo(|k, t| {
            let id = id.clone();
            async move { k.profile(&t, &id).await }
        })
        .await
        .map_err(klaviyo_setback("match_profile"))
    }

    /// Records a warning for review: the work was done, with a caveat (one per task and kind of
    /// caveat, however often the task is delivered).
    pub async fn warn(&self, step: &'static str, message: String) -> Result<(), Setback> {
        tracing::warn!(step, warning = %message, "task finished with a warning");
        let warning = Failure {
            id: format!("{}:{}:{step}", self.request.queue, self.request.name),
            tenant: self.tenant.id.clone(),
            queue: self.request.queue.clone(),
            task_kind: self.envelope.work.kind(),
            task_name: self.request.name.clone(),
            payload: self.envelope.work.payload().to_string(),
            profile: self.envelope.work.profile(),
            step: Some(step.to_owned()),
            severity: Severity::Warning,
            error: message,
            attempts: self.request.retry_count.saturating_add(1),
            at: Timestamp::now(),
            retries: 0,
            retried_at: None,
        };
        match self.app.store.record_failure(&warning).await {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(store_setback(step)(error)),
        }
    }

    /// Runs `work` holding the profile's lease, so no other attempt syncs or deletes the same
    /// profile meanwhile; a lease held elsewhere asks for a retry.
    pub async fn with_profile_lease<T>(
        &self,
        profile: &OmneoProfileId,
        work: impl Future<Output = Result<T, Setback>>,
    ) -> Result<T, Setback> {
        let key = IdempotencyKey::new(&self.tenant.id, "profile", &[profile.as_str()]);
        let holder = format!(
            "{}:{}:{}",
            self.request.name,
            self.request.retry_count,
            uuid::Uuid::new_v4()
        );
        let claim = self
            .app
            .store
            .claim(&key, &holder, PROFILE_LEASE)
            .await
            .map_err(store_setback("lease_profile"))?;
        if claim != Claim::Acquired {
            return Err(Setback::retry(
                "lease_profile",
                format!("another attempt is working on profile {profile}"),
            ));
        }
        let result = work.await;
        if let Err(error) = self.app.store.release(&key, &holder).await {
            // The lease lapses by itself; the next attempt only waits for it.
            tracing::warn!(%profile, error = %error, "could not release the profile lease");
        }
        result
    }
}

/// A store failure at `step`: retry when the store is unavailable, give up when a record is
/// unreadable.
pub fn store_setback(step: &'static str) -> impl Fn(StoreError) -> Setback {
    move |error| match error {
        StoreError::Unavailable(_) => Setback::retry(step, error.to_string()),
        other => Setback::give_up(step, other.to_string()),
    }
}

/// A failed Klaviyo call at `step`, classified.
pub fn klaviyo_setback(step: &'static str) -> impl Fn(KlaviyoCallError) -> Setback {
    move |error| Setback::remote(step, error.disposition(), &error)
}

/// A failed Omneo call at `step`, classified.
pub fn omneo_setback(step: &'static str) -> impl Fn(RemoteError) -> Setback {
    move |error| Setback::remote(step, error.disposition(), &error)
}
