//! Provisioning (product.md §5.4–§5.5): everything a tenant needs on both sides, created or reused,
//! and `POST /{tenant}/api/v1/install/reprovision`.
//!
//! [`provision`] runs four steps in order, one module each, every one *detecting and reusing* what
//! exists, so a run is idempotent and a failed one resumes by simply running again:
//!
//! | step | module | what it ensures | how it finds what exists |
//! |---|---|---|---|
//! | `data_sources` | [`data_sources`] | the six Klaviyo data sources of [`DataSourceKind`](crate::domain::DataSourceKind) (private) | every page of `GET /api/data-sources`, by exact title; only the missing are created |
//! | `klaviyo_webhook` | [`klaviyo_webhook`] | one system webhook `Omneo {tenant}` at `{KLAVIYO_WEBHOOK_URL}/{tenant}/api/v1/webhooks/klaviyo/system`, `secret_key` = the tenant's `webhook_secret`, topics [`system_webhook_topics`] | by *name* (Klaviyo masks URLs); found → `PATCH` url, secret and topics; extra copies of the name are deleted |
//! | `omneo_webhooks` | [`omneo_webhooks`] | [`OMNEO_TRIGGERS`] at `{OMNEO_WEBHOOK_URL}/{tenant}/api/v1/webhooks/omneo` in the tenant's namespace, created **disabled** | by (namespace, trigger); a changed URL is fixed with `PUT {url}`; `is_active` is never touched |
//! | `queues` | [`queues`] | the tenant's [`TenantQueues`](crate::queue::TenantQueues) with [`QueueSettings::for_direction`](crate::queue::QueueSettings::for_direction), their names reserved for the tenant | `ensure_queue` creates or updates |
//!
//! Every step's outcome is written to the install record as soon as it is known (resources after
//! each step). A failure leaves status `failed` with `last_error {step, message, at}`; success sets
//! `installed` and clears `last_error`. Steps that already succeeded are re-run on resume too: they
//! only list and reuse, and that also repairs drift (a changed URL, a rotated secret — a
//! `webhook_secret` change that Klaviyo had not confirmed is marked confirmed once the webhook
//! step has written it).
//!
//! **Rate limits.** Klaviyo's Webhooks API allows 1 request/s and data sources 3/s per account.
//! Klaviyo calls are paced per endpoint class ([`Pacer`]); a 429 that slips through is retried by
//! the client after its `Retry-After`. A full provisioning against the simulator's real limits
//! takes about 3–4 s.
//!
//! **One run at a time.** A run (and an uninstall) holds the tenant's [`InstallLease`]; a
//! concurrent caller gets [`ProvisionError::Busy`] instead of racing creates. The lease lapses by
//! itself after [`InstallLease::DURATION`] if an instance dies mid-run.
//!
//! **Reprovision** answers synchronously: `200` with the install status document (as `GET …/install`) when every step
//! succeeded; `502 provisioning_failed` naming the step when one failed (the record says the
//! same); `409 not_installed` for a tenant without Klaviyo tokens (never installed or
//! uninstalled), `409 reauthorization_required` when Klaviyo refused the refresh token (install
//! again), `409 provisioning_in_progress` while another run holds the lease, `409 conflict` when
//! the install left `provisioning` under the run. The run itself is
//! spawned, so a client that hangs up does not cut it short.

pub mod data_sources;
pub mod klaviyo_webhook;
pub mod omneo_webhooks;
pub mod queues;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use jiff::Timestamp;
use secrecy::SecretString;

pub use self::klaviyo_webhook::{klaviyo_webhook_name, klaviyo_webhook_url, system_webhook_topics};
pub use self::omneo_webhooks::{OMNEO_TRIGGERS, omneo_webhook_url};
use super::admin::AdminTenant;
use super::failure::StepFailure;
use super::lease::{InstallLease, LeaseError};
use super::status::{InstallView, run_to_view};
use crate::access::{KlaviyoCallError, Pacer, RateClass, TokenError, klaviyo_call};
use crate::api_error::{ApiError, ErrorChain, ErrorCode};
use crate::app::App;
use crate::domain::TenantId;
use crate::klaviyo::KlaviyoClient;
use crate::queue::QueueName;
use crate::remote::RemoteError;
use crate::store::{Install, InstallStatus, InstallStep, Resources, StepError, StoreError, Tenant};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/{tenant}/api/v1/install/reprovision", post(reprovision))
}

/// The provisioning steps, in execution order.
pub const STEPS: [InstallStep; 4] = [
    InstallStep::DataSources,
    InstallStep::KlaviyoWebhook,
    InstallStep::OmneoWebhooks,
    InstallStep::Queues,
];

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The tenant has no Klaviyo tokens: not registered, never installed, or uninstalled.
    #[error("tenant {0} is not installed")]
    NotInstalled(TenantId),
    /// Klaviyo refused the refresh token: the customer must install again.
    #[error("tenant {tenant} must reauthorize the Klaviyo app (at {step})")]
    ReauthorizationRequired {
        /// The tenant.
        tenant: TenantId,
        /// Where it was noticed.
        step: InstallStep,
    },
    /// Another provisioning or uninstall of the tenant holds the lease.
    #[error(
        "another provisioning or uninstall of {0} is running (or was interrupted less than 15 \
         minutes ago); retry later"
    )]
    Busy(TenantId),
    /// The install changed under the run (e.g. uninstalled meanwhile); the run stopped.
    #[error("the install changed to {status:?} while provisioning ({step}); nothing more was done")]
    Interrupted {
        /// Where the run was.
        step: InstallStep,
        /// The status it found.
        status: Option<InstallStatus>,
    },
    /// A step failed; the install is `failed` with `last_error` naming it.
    #[error("provisioning failed at {step}")]
    StepFailed {
        /// The step.
        step: InstallStep,
        /// Why.
        #[source]
        failure: StepFailure,
    },
    /// The store failed; retry later.
    #[error("the store failed while provisioning ({step})")]
    Store {
        /// Where the run was.
        step: InstallStep,
        /// The store's error.
        #[source]
        error: StoreError,
    },
}

impl ProvisionError {
    /// The step the run was at.
    pub fn step(&self) -> InstallStep {
        match self {
            Self::NotInstalled(_) | Self::Busy(_) => InstallStep::Start,
            Self::ReauthorizationRequired { step, .. }
            | Self::Interrupted { step, .. }
            | Self::StepFailed { step, .. }
            | Self::Store { step, .. } => *step,
        }
    }

    fn store(step: InstallStep, error: StoreError) -> Self {
        Self::Store { step, error }
    }
}

impl From<ProvisionError> for ApiError {
    fn from(error: ProvisionError) -> Self {
        let message = ErrorChain(&error).to_string();
        match &error {
            ProvisionError::NotInstalled(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::NotInstalled,
                format!(
                    "{message}: the tenant has not authorised Klaviyo; start an install from CX \
                     Manager (POST …/install/link)"
                ),
            ),
            ProvisionError::ReauthorizationRequired { .. } => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::ReauthorizationRequired,
                format!(
                    "{message}: Klaviyo no longer accepts the tenant's authorisation; install \
                     again from CX Manager"
                ),
            ),
            ProvisionError::Busy(_) => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::ProvisioningInProgress,
                message,
            ),
            ProvisionError::Interrupted { .. } => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
            }
            ProvisionError::StepFailed { .. } => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::ProvisioningFailed,
                message,
            ),
            ProvisionError::Store { .. } => Self::unavailable(&error),
        }
    }
}

/// Provisions every resource of the tenant (see the module docs) and returns the install record.
///
/// The install must have Klaviyo tokens (status `provisioning`, `installed` or `failed`).
pub async fn provision(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let lease = InstallLease::acquire(app, tenant)
        .await
        .map_err(|error| match error {
            LeaseError::Busy => ProvisionError::Busy(tenant.clone()),
            LeaseError::Store(error) => ProvisionError::store(InstallStep::Start, error),
        })?;
    let started = std::time::Instant::now();
    let result = run(app, tenant).await;
    lease.release(app).await;
    match &result {
        Ok(_) => {
            tracing::info!(%tenant, elapsed_ms = started.elapsed().as_millis() as u64, "provisioning complete")
        }
        Err(error) => {
            tracing::warn!(%tenant, step = %error.step(), error = %ErrorChain(error), "provisioning stopped")
        }
    }
    result
}

/// The run, holding the lease.
async fn run(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let record = app
        .store
        .tenant(tenant)
        .await
        .map_err(|e| ProvisionError::store(InstallStep::Start, e))?
        .ok_or_else(|| ProvisionError::NotInstalled(tenant.clone()))?;
    begin(app, tenant).await?;
    let run = Run {
        app,
        tenant,
        record: &record,
        pacer: Pacer::default(),
    };
    for step in STEPS {
        match run.step(step).await {
            Ok(outcome) => record_outcome(app, tenant, step, &outcome).await?,
            Err(failure) => return Err(record_failure(app, tenant, step, failure).await),
        }
    }
    finish(app, tenant).await
}

/// Why an install may not be provisioned now.
enum NotProvisionable {
    NotInstalled,
    Reauthorize,
}

/// Moves the install to `provisioning` if it may be provisioned.
async fn begin(app: &App, tenant: &TenantId) -> Result<(), ProvisionError> {
    let now = Timestamp::now();
    let result = app
        .store
        .update_install_or(tenant, |current| {
            let mut install = current.ok_or(NotProvisionable::NotInstalled)?;
            match install.status {
                InstallStatus::Pending | InstallStatus::Uninstalled => {
                    Err(NotProvisionable::NotInstalled)
                }
                InstallStatus::ReauthorizationRequired => Err(NotProvisionable::Reauthorize),
                _ if install.tokens.is_none() => Err(NotProvisionable::NotInstalled),
                InstallStatus::Provisioning => Ok(install),
                InstallStatus::Installed | InstallStatus::Failed => {
                    install.transition(
                        InstallStatus::Provisioning,
                        Some("reprovisioning".into()),
                        now,
                    );
                    Ok(install)
                }
            }
        })
        .await
        .map_err(|e| ProvisionError::store(InstallStep::Start, e))?;
    match result {
        Ok(_) => Ok(()),
        Err(NotProvisionable::Reauthorize) => Err(ProvisionError::ReauthorizationRequired {
            tenant: tenant.clone(),
            step: InstallStep::Start,
        }),
        Err(NotProvisionable::NotInstalled) => Err(ProvisionError::NotInstalled(tenant.clone())),
    }
}

/// The install left `provisioning` under the run.
struct NotProvisioning;

/// Writes a step's resources; the install must still be provisioning.
async fn record_outcome(
    app: &App,
    tenant: &TenantId,
    step: InstallStep,
    outcome: &Outcome,
) -> Result<(), ProvisionError> {
    while_provisioning(app, tenant, step, |install| {
        outcome.apply(&mut install.resources);
    })
    .await
    .map(drop)
}

/// Applies `change` to the install (and stamps it) if it is still provisioning; otherwise the run
/// was interrupted at `step`.
async fn while_provisioning(
    app: &App,
    tenant: &TenantId,
    step: InstallStep,
    change: impl Fn(&mut Install) + Send + Sync,
) -> Result<Install, ProvisionError> {
    let now = Timestamp::now();
    let result = app
        .store
        .update_install_or(tenant, |current| {
            let mut install = current.ok_or(NotProvisioning)?;
            if install.status != InstallStatus::Provisioning {
                return Err(NotProvisioning);
            }
            change(&mut install);
            install.updated_at = now;
            Ok(install)
        })
        .await
        .map_err(|e| ProvisionError::store(step, e))?;
    match result {
        Ok(install) => Ok(install),
        Err(NotProvisioning) => Err(interrupted(app, tenant, step).await),
    }
}

/// The error for an install that left `provisioning` under the run.
async fn interrupted(app: &App, tenant: &TenantId, step: InstallStep) -> ProvisionError {
    let status = app
        .store
        .install(tenant)
        .await
        .ok()
        .flatten()
        .map(|i| i.status);
    match status {
        Some(InstallStatus::ReauthorizationRequired) => ProvisionError::ReauthorizationRequired {
            tenant: tenant.clone(),
            step,
        },
        status => ProvisionError::Interrupted { step, status },
    }
}

/// Records a failed step: status `failed` (unless the token died: then it stays
/// `reauthorization_required`) and `last_error`.
async fn record_failure(
    app: &App,
    tenant: &TenantId,
    step: InstallStep,
    failure: StepFailure,
) -> ProvisionError {
    let error = match failure {
        StepFailure::Klaviyo(KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_))) => {
            ProvisionError::ReauthorizationRequired {
                tenant: tenant.clone(),
                step,
            }
        }
        StepFailure::Klaviyo(KlaviyoCallError::Token(TokenError::NotInstalled(_))) => {
            ProvisionError::NotInstalled(tenant.clone())
        }
        failure => ProvisionError::StepFailed { step, failure },
    };
    let now = Timestamp::now();
    let last_error = StepError {
        step,
        message: match &error {
            ProvisionError::StepFailed { failure, .. } => ErrorChain(failure).to_string(),
            other => other.to_string(),
        },
        at: now,
    };
    let result = app
        .store
        .update_install_or(tenant, |current| {
            let mut install = current.ok_or(NotProvisioning)?;
            if install.status == InstallStatus::Provisioning {
                let reason = Some(format!("{}: {}", last_error.step, last_error.message));
                install.transition(InstallStatus::Failed, reason, now);
            }
            install.last_error = Some(last_error.clone());
            install.updated_at = now;
            Ok::<_, NotProvisioning>(install)
        })
        .await;
    if !matches!(result, Ok(Ok(_))) {
        tracing::error!(%tenant, %step, "could not record the provisioning failure");
    }
    error
}

/// Every step succeeded: `installed`, `last_error` cleared.
async fn finish(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let now = Timestamp::now();
    while_provisioning(app, tenant, InstallStep::Finish, |install| {
        install.last_error = None;
        install.transition(InstallStatus::Installed, None, now);
    })
    .await
}

/// What a step found or created.
enum Outcome {
    DataSources(BTreeMap<String, String>),
    KlaviyoWebhook(String),
    OmneoWebhooks(BTreeMap<String, String>),
    Queues(Vec<QueueName>),
}

impl Outcome {
    fn apply(&self, resources: &mut Resources) {
        match self {
            Self::DataSources(ids) => resources.data_sources = ids.clone(),
            Self::KlaviyoWebhook(id) => resources.klaviyo_webhook_id = Some(id.clone()),
            Self::OmneoWebhooks(ids) => resources.omneo_webhooks = ids.clone(),
            Self::Queues(names) => resources.queues = names.clone(),
        }
    }
}

/// One run's context, handed to each step.
pub(crate) struct Run<'a> {
    pub(crate) app: &'a App,
    pub(crate) tenant: &'a TenantId,
    pub(crate) record: &'a Tenant,
    pub(crate) pacer: Pacer,
}

impl Run<'_> {
    async fn step(&self, step: InstallStep) -> Result<Outcome, StepFailure> {
        match step {
            InstallStep::DataSources => data_sources::ensure(self).await.map(Outcome::DataSources),
            InstallStep::KlaviyoWebhook => klaviyo_webhook::ensure(self)
                .await
                .map(Outcome::KlaviyoWebhook),
            InstallStep::OmneoWebhooks => omneo_webhooks::ensure(self)
                .await
                .map(Outcome::OmneoWebhooks),
            InstallStep::Queues => queues::ensure(self).await.map(Outcome::Queues),
            InstallStep::Start | InstallStep::Finish => {
                unreachable!("{step} is not a provisioning step")
            }
        }
    }

    /// A Klaviyo call of this run with the tenant's token, paced for `class`.
    pub(crate) async fn klaviyo<T, F, Fut>(
        &self,
        class: RateClass,
        call: F,
    ) -> Result<T, KlaviyoCallError>
    where
        F: Fn(KlaviyoClient, SecretString) -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        klaviyo_call(
            &self.app.tokens,
            &self.app.klaviyo,
            self.tenant,
            (&self.pacer, class),
            call,
        )
        .await
    }
}

/// `POST /{tenant}/api/v1/install/reprovision`.
async fn reprovision(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<InstallView>, ApiError> {
    let id = tenant.id;
    run_to_view(async move { provision(&app, &id).await }).await
}
