//! One pushed task's run, the same for both workers (product.md §8): read the push
//! (`X-CloudTasks-*` headers, JSON envelope), load the tenant — not installed or
//! `reauthorization_required` ends the task with a failure record before any remote call — run the
//! [`Worker`]'s work on a [`Job`], and [`settle`] the outcome: 200 when done or recorded as
//! failed, 503 for "retry me", a reschedule for a long `Retry-After`.
//!
//! **Idempotency.** Cloud Tasks delivers at least once, so every side effect must be safe to
//! repeat. A `Job` gives the workers the store's two tools for it: a per-profile lease
//! ([`Job::with_profile_lease`], so two attempts on one profile never interleave their reads and
//! writes) and done-markers ([`Job::hold_for`], [`Job::once`]: a side effect that cannot be repeated
//! harmlessly — an Omneo interaction, a reward — is claimed first, and marked done once made).

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
use crate::omneo::models::Profile as OmneoProfile;
use crate::queue::{Direction, QueueName, QueueSettings, Task, TaskEnvelope, Work};
use crate::remote::RemoteError;
use crate::store::{
    Claim, Failure, IdempotencyKey, Install, InstallStatus, Severity, StoreError, Tenant,
};
use crate::worker::{Outcome, Setback, TaskContext, TaskRequest, settle};

/// How long a working attempt's claim (a profile's lease, a side effect's claim) lasts unless
/// renewed: the attempt renews it every third of this while it works, so an instance that dies
/// mid-work holds it up for at most this long (found by the soak: with a fixed five-minute
/// claim a killed instance stalled its profiles for five minutes).
pub const WORK_LEASE: Duration = Duration::from_secs(30);

/// A task worker: which queue it serves and what it does with one task.
pub trait Worker: Send + Sync + 'static {
    /// The queue direction whose tasks it runs.
    const DIRECTION: Direction;

    /// Runs the task's work for a loaded tenant.
    fn run<'a>(job: &'a Job<'a>) -> impl Future<Output = Result<(), Setback>> + Send + 'a;
}

/// The route of worker `W`: `POST /tasks/{inbound|outbound}`.
pub fn routes<W: Worker>(app: Arc<App>) -> Router {
    Router::new()
        .route(W::DIRECTION.task_path(), post(push::<W>))
        .with_state(app)
}

/// A pushed task: parsed, checked to be `W`'s, run and settled.
async fn push<W: Worker>(
    State(app): State<Arc<App>>,
    request: TaskRequest,
    body: Bytes,
) -> Response {
    let direction = W::DIRECTION;
    let envelope: TaskEnvelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(error) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidBody,
                format!("not an {} task: {error}", direction.as_str()),
            )
            .into_response();
        }
    };
    if envelope.work.kind().direction() != direction {
        return ApiError::invalid_field(
            "kind",
            format!(
                "{} is not {} work",
                envelope.work.kind(),
                direction.as_str()
            ),
        )
        .into_response();
    }
    // On the request span, whose last line the queue-delay alert reads (infra/alerts.tf).
    let request_span = tracing::Span::current();
    request_span.record("queue", request.queue.as_str());
    if let Some(delay) = request.queue_delay(Timestamp::now()) {
        request_span.record(
            "queue_delay_ms",
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        );
    }
    let span = tracing::info_span!(
        "task",
        direction = direction.as_str(),
        tenant = %envelope.tenant,
        task_name = %request.name,
        task_kind = %envelope.work.kind(),
        retry_count = request.retry_count,
    );
    let settings = QueueSettings::for_direction(direction);
    let attempt = async {
        let job = Job::load(&app, &request, &envelope).await?;
        W::run(&job).await
    };
    let outcome = Outcome::from(attempt.instrument(span.clone()).await);
    let context = TaskContext {
        request: &request,
        direction,
        envelope: &envelope,
        settings: &settings,
    };
    settle(outcome, &context, &app.store, app.queue.as_ref())
        .instrument(span)
        .await
        .into_response()
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

/// A claim this attempt holds on an idempotency key (see [`Job::hold_for`]).
#[derive(Debug)]
pub struct Held {
    key: IdempotencyKey,
    holder: String,
}

/// What [`Job::hold_for`] found.
#[derive(Debug)]
pub enum Hold {
    /// The key is this attempt's until it is finished or let go.
    Acquired(Held),
    /// The work was done before (by an earlier delivery or attempt).
    Done,
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

    /// The work of the task.
    pub fn work(&self) -> &'a Work {
        &self.envelope.work
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

    /// The Omneo profile a Klaviyo profile stands for: the one holding its Klaviyo identity, else
    /// the first with its email; `None` when neither finds one.
    pub async fn omneo_profile_of(
        &self,
        klaviyo_id: Option<&str>,
        email: Option<&str>,
    ) -> Result<Option<OmneoProfile>, Setback> {
        if let Some(klaviyo_id) = klaviyo_id.filter(|id| !id.trim().is_empty()) {
            let found = self
                .omneo
                .find_profile_by_identity(&self.tenant.settings.identity_handle, klaviyo_id)
                .await
                .map_err(omneo_setback("find_profile"))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        let Some(email) = email.filter(|email| !email.trim().is_empty()) else {
            return Ok(None);
        };
        Ok(self
            .omneo
            .find_profiles_by_email(email)
            .await
            .map_err(omneo_setback("find_profile"))?
            .into_iter()
            .next())
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

    /// The tenant's queue of `direction`; a tenant without one (provisioning never reached its
    /// queues) gives up at `step`.
    pub fn queue(&self, direction: Direction, step: &'static str) -> Result<&QueueName, Setback> {
        self.install.queue(direction).ok_or_else(|| {
            Setback::give_up(
                step,
                format!("the tenant has no {} queue", direction.as_str()),
            )
        })
    }

    /// Enqueues `task`; a queue that cannot take it now asks for a retry at `step`.
    pub async fn enqueue(&self, task: &Task, step: &'static str) -> Result<(), Setback> {
        self.app
            .queue
            .enqueue(task)
            .await
            .map(drop)
            .map_err(|error| Setback::retry(step, error.to_string()))
    }

    /// Claims `key` for this attempt for `lease`: [`Hold::Done`] when the work was done before; a
    /// key another attempt holds asks for a retry.
    pub async fn hold_for(
        &self,
        key: IdempotencyKey,
        lease: Duration,
        step: &'static str,
    ) -> Result<Hold, Setback> {
        let holder = format!(
            "{}:{}:{}",
            self.request.name,
            self.request.retry_count,
            uuid::Uuid::new_v4()
        );
        let claim = self
            .app
            .store
            .claim(&key, &holder, lease)
            .await
            .map_err(store_setback(step))?;
        match claim {
            Claim::Acquired => Ok(Hold::Acquired(Held { key, holder })),
            Claim::Done => Ok(Hold::Done),
            Claim::InProgress => Err(Setback::retry(
                step,
                "another attempt is working on the same thing",
            )),
        }
    }

    /// Marks held work done; it answers [`Hold::Done`] for `retain`.
    pub async fn finish(
        &self,
        held: Held,
        retain: Duration,
        step: &'static str,
    ) -> Result<(), Setback> {
        self.app
            .store
            .complete(&held.key, retain)
            .await
            .map_err(store_setback(step))
    }

    /// Lets go of a claim without finishing (the work failed, or was a lease); a claim that
    /// cannot be released lapses by itself, and the next attempt only waits for it.
    pub async fn let_go(&self, held: Held) {
        if let Err(error) = self.app.store.release(&held.key, &held.holder).await {
            tracing::warn!(key = held.key.as_str(), error = %error, "could not release a claim");
        }
    }

    /// Runs `work` once per `key` within `retain`: `None` when it was done before. The claim
    /// lasts [`WORK_LEASE`], renewed while `work` runs; work that fails lets the key go, so the
    /// retry runs it.
    pub async fn once<T>(
        &self,
        key: IdempotencyKey,
        retain: Duration,
        step: &'static str,
        work: impl Future<Output = Result<T, Setback>>,
    ) -> Result<Option<T>, Setback> {
        let held = match self.hold_for(key, WORK_LEASE, step).await? {
            Hold::Done => return Ok(None),
            Hold::Acquired(held) => held,
        };
        match self.renewing(&held, WORK_LEASE, work).await {
            Ok(value) => {
                self.finish(held, retain, step).await?;
                Ok(Some(value))
            }
            Err(setback) => {
                self.let_go(held).await;
                Err(setback)
            }
        }
    }

    /// Runs `work` holding the profile's lease ([`WORK_LEASE`], renewed while it runs), so no
    /// other attempt (of either worker) works on the same Omneo profile meanwhile; a lease held
    /// elsewhere asks for a retry.
    pub async fn with_profile_lease<T>(
        &self,
        profile: &OmneoProfileId,
        work: impl Future<Output = Result<T, Setback>>,
    ) -> Result<T, Setback> {
        let key = IdempotencyKey::new(&self.tenant.id, "profile", &[profile.as_str()]);
        let held = match self.hold_for(key, WORK_LEASE, "lease_profile").await? {
            Hold::Acquired(held) => held,
            // Leases are only ever let go, never finished.
            Hold::Done => {
                return Err(Setback::retry(
                    "lease_profile",
                    format!("the lease of profile {profile} is marked done"),
                ));
            }
        };
        let result = self.renewing(&held, WORK_LEASE, work).await;
        self.let_go(held).await;
        result
    }

    /// Runs `work` while renewing `held` for `lease` every third of it, so the claim outlives
    /// any attempt that is alive and lapses soon after one that died.
    pub async fn renewing<T>(
        &self,
        held: &Held,
        lease: Duration,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::select! {
            result = work => result,
            never = self.keep_alive(held, lease) => match never {},
        }
    }

    /// Renews `held` for `lease` every third of it, forever (the caller stops polling it). A
    /// renewal that fails is logged: the lease may lapse, and the work goes on.
    async fn keep_alive(&self, held: &Held, lease: Duration) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.app.store.claim(&held.key, &held.holder, lease).await {
                Ok(Claim::Acquired) => {}
                Ok(other) => tracing::warn!(
                    key = held.key.as_str(),
                    claim = ?other,
                    "a lease lapsed while its work ran"
                ),
                Err(error) => tracing::warn!(
                    key = held.key.as_str(),
                    error = %error,
                    "could not renew a lease"
                ),
            }
        }
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
