//! Provisioning (product.md §5.4–§5.5): everything a tenant needs on both sides, created or reused,
//! and `POST /{tenant}/api/v1/install/reprovision`.
//!
//! [`provision`] runs four [`Step`]s in order, each one *detecting and reusing* what exists, so a
//! run is idempotent and a failed one resumes by simply running again:
//!
//! | step | what it ensures | how it finds what exists |
//! |---|---|---|
//! | `data_sources` | the six Klaviyo data sources of [`DATA_SOURCES`] (private) | every page of `GET /api/data-sources`, by exact title; only the missing are created |
//! | `klaviyo_webhook` | one system webhook `Omneo {tenant}` at `{KLAVIYO_WEBHOOK_URL}/{tenant}/api/v1/webhooks/klaviyo/system`, `secret_key` = the tenant's `webhook_secret`, topics [`SYSTEM_WEBHOOK_TOPICS`] | by *name* (Klaviyo masks URLs); found → `PATCH` url, secret and topics; extra copies of the name are deleted |
//! | `omneo_webhooks` | [`OMNEO_TRIGGERS`] at `{OMNEO_WEBHOOK_URL}/{tenant}/api/v1/webhooks/omneo` in the tenant's namespace, created **disabled** | by (namespace, trigger); a changed URL is fixed with `PUT {url}`; `is_active` is never touched |
//! | `queues` | `{task_queue_name}-{namespace}-inbound` / `-outbound` with [`QueueSettings::for_direction`] | `ensure_queue` creates or updates |
//!
//! Every step's outcome is written to the install record as soon as it is known (resources after
//! each step). A failure leaves status `failed` with `last_error {step, message, at}`; success sets
//! `installed` and clears `last_error`. Steps that already succeeded are re-run on resume too: they
//! only list and reuse, and that also repairs drift (a changed URL, a rotated secret).
//!
//! **Rate limits.** Klaviyo's Webhooks API allows 1 request/s and data sources 3/s per account.
//! Klaviyo calls are paced per endpoint class ([`Pacer`]), a little slower than the limit so
//! latency jitter does not push two calls into one window; a 429 that slips through is retried by
//! the client after its `Retry-After`. A full provisioning against the simulator's real limits
//! takes about 3–4 s.
//!
//! **One run at a time.** A run (and an uninstall) holds a lease on the tenant
//! ([`InstallLease`], a `processed/{tenant}:install:…` marker claimed in a store transaction, so
//! it holds across instances); a concurrent caller gets [`ProvisionErrorKind::Busy`] instead of
//! racing creates. The lease lapses by itself after [`InstallLease::DURATION`] if an instance
//! dies mid-run.
//!
//! **Reprovision** answers synchronously: `200` with the install status document (as `GET …/install`) when every step
//! succeeded; `502 provisioning_failed` naming the step when one failed (the record says the
//! same); `409 not_installed` for a tenant without Klaviyo tokens (never installed or
//! uninstalled), `409 reauthorization_required` when Klaviyo refused the refresh token (install
//! again), `409 provisioning_in_progress` while another run holds the lease, `409 conflict` when
//! the install left `provisioning` under the run. The run itself is
//! spawned, so a client that hangs up does not cut it short.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use jiff::Timestamp;
use secrecy::SecretString;
use tokio::time::Instant;
use url::Url;

use super::admin::AdminTenant;
use super::status::InstallView;
use super::tokens::{KlaviyoCallError, TokenError};
use crate::api_error::ApiError;
use crate::app::App;
use crate::config::{Config, join};
use crate::domain::TenantId;
use crate::klaviyo::KlaviyoClient;
use crate::klaviyo::models::{NewDataSource, NewWebhook, Visibility, WebhookUpdate};
use crate::omneo::models as omneo;
use crate::queue::{Direction, QueueName, QueueSettings};
use crate::remote::RemoteError;
use crate::store::{
    Abort, Claim, IdempotencyKey, Install, InstallStatus, Resources, StepError, StoreError, Tenant,
};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/{tenant}/api/v1/install/reprovision", post(reprovision))
}

/// The six Klaviyo data sources: exact title and description (product.md §5.4 purposes).
pub const DATA_SOURCES: [(&str, &str); 6] = [
    ("Omneo Dates", "Omneo customer date fields"),
    ("Omneo Connections", "Omneo external account links"),
    (
        "Omneo Rewards",
        "Omneo loyalty rewards activity and redemptions",
    ),
    ("Omneo Addresses", "Omneo profile address changes"),
    (
        "Omneo Benefits",
        "Omneo enrolments and activity for special programs",
    ),
    (
        "Omneo Lists",
        "Omneo list membership and subscription activity",
    ),
];

/// The topics of the Klaviyo system webhook (klaviyo.md §System webhooks): exactly the topics the
/// inbound worker maps to Omneo comms (product.md §7.2) — bounce (`bounced_email`,
/// `failed_to_deliver_sms`), spam, subscribe/unsubscribe for email, SMS and lists, and manual
/// suppression/unsuppression. `event:klaviyo.dropped_email` is left out on purpose: a dropped
/// email is Klaviyo skipping a send to an address it already suppresses, not a new fact about the
/// customer, and §7.2 gives it no mapping.
pub const SYSTEM_WEBHOOK_TOPICS: [&str; 11] = [
    "event:klaviyo.bounced_email",
    "event:klaviyo.failed_to_deliver_sms",
    "event:klaviyo.marked_email_as_spam",
    "event:klaviyo.subscribed_to_email_marketing",
    "event:klaviyo.unsubscribed_from_email_marketing",
    "event:klaviyo.subscribed_to_sms_marketing",
    "event:klaviyo.unsubscribed_from_sms_marketing",
    "event:klaviyo.subscribed_to_list",
    "event:klaviyo.unsubscribed_from_list",
    "event:klaviyo.manually_suppressed_from_email_marketing",
    "event:klaviyo.manually_unsuppressed_from_email_marketing",
];

/// The Omneo webhook triggers the extension subscribes to.
pub const OMNEO_TRIGGERS: [&str; 3] = ["profile.created", "profile.updated", "profile.deleted"];

/// The name of the tenant's Klaviyo system webhook (how it is found again: URLs are masked).
pub fn klaviyo_webhook_name(tenant: &TenantId) -> String {
    format!("Omneo {tenant}")
}

/// Where Klaviyo delivers the tenant's system webhooks.
pub fn klaviyo_webhook_url(config: &Config, tenant: &TenantId) -> Url {
    join(
        &config.urls.klaviyo_webhook,
        &format!("/{tenant}/api/v1/webhooks/klaviyo/system"),
    )
}

/// Where Omneo delivers the tenant's profile webhooks.
pub fn omneo_webhook_url(config: &Config, tenant: &TenantId) -> Url {
    join(
        &config.urls.omneo_webhook,
        &format!("/{tenant}/api/v1/webhooks/omneo"),
    )
}

/// The tenant's two queue names (inbound, outbound).
pub fn queue_names(tenant: &Tenant) -> [QueueName; 2] {
    let prefix = tenant
        .settings
        .task_queue_name
        .as_deref()
        .unwrap_or(tenant.id.as_str());
    let namespace = &tenant.settings.namespace;
    [Direction::Inbound, Direction::Outbound].map(|d| QueueName::new(prefix, namespace, d))
}

/// One provisioning step, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The six Klaviyo data sources.
    DataSources,
    /// The Klaviyo system webhook.
    KlaviyoWebhook,
    /// The three Omneo webhooks.
    OmneoWebhooks,
    /// The two Cloud Tasks queues.
    Queues,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Self; 4] = [
        Self::DataSources,
        Self::KlaviyoWebhook,
        Self::OmneoWebhooks,
        Self::Queues,
    ];

    /// The name recorded in `last_error.step`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataSources => "data_sources",
            Self::KlaviyoWebhook => "klaviyo_webhook",
            Self::OmneoWebhooks => "omneo_webhooks",
            Self::Queues => "queues",
        }
    }
}

/// The `step` of errors raised before any step ran.
const START: &str = "start";
/// The `step` of errors raised after every step succeeded, while recording `installed`.
const FINISH: &str = "finish";

/// What kind of failure stopped provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionErrorKind {
    /// The tenant has no Klaviyo tokens: not registered, never installed, or uninstalled.
    NotInstalled,
    /// Klaviyo refused the refresh token: the customer must install again.
    ReauthorizationRequired,
    /// Another provisioning or uninstall of the tenant holds the lease.
    Busy,
    /// The install changed under the run (e.g. uninstalled meanwhile); the run stopped.
    Interrupted,
    /// A step failed; the install is `failed` with `last_error` naming it.
    StepFailed,
    /// The store failed; retry later.
    Store,
}

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
#[error("provisioning failed at {step}: {message}")]
pub struct ProvisionError {
    /// What kind of failure.
    pub kind: ProvisionErrorKind,
    /// The step (`data_sources`, `klaviyo_webhook`, `omneo_webhooks`, `queues`), or `start` /
    /// `finish` for what happens before and after them.
    pub step: String,
    /// What went wrong (never a secret).
    pub message: String,
}

impl ProvisionError {
    fn new(kind: ProvisionErrorKind, step: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            step: step.to_owned(),
            message: message.into(),
        }
    }

    fn store(step: &str, error: &StoreError) -> Self {
        Self::new(ProvisionErrorKind::Store, step, format!("{error:#}"))
    }
}

impl From<ProvisionError> for ApiError {
    fn from(error: ProvisionError) -> Self {
        let message = error.to_string();
        match error.kind {
            ProvisionErrorKind::NotInstalled => Self::new(
                StatusCode::CONFLICT,
                "not_installed",
                format!(
                    "{}: the tenant has not authorised Klaviyo; start an install from CX Manager \
                     (POST …/install/link)",
                    error.message
                ),
            ),
            ProvisionErrorKind::ReauthorizationRequired => Self::new(
                StatusCode::CONFLICT,
                "reauthorization_required",
                format!(
                    "{}: Klaviyo no longer accepts the tenant's authorisation; install again from \
                     CX Manager",
                    error.message
                ),
            ),
            ProvisionErrorKind::Busy => {
                Self::new(StatusCode::CONFLICT, "provisioning_in_progress", message)
            }
            ProvisionErrorKind::Interrupted => Self::new(StatusCode::CONFLICT, "conflict", message),
            ProvisionErrorKind::StepFailed => {
                Self::new(StatusCode::BAD_GATEWAY, "provisioning_failed", message)
            }
            ProvisionErrorKind::Store => Self::unavailable(&error),
        }
    }
}

/// Provisions every resource of the tenant (see the module docs) and returns the install record.
///
/// The install must have Klaviyo tokens (status `provisioning`, `installed` or `failed`).
pub async fn provision(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let lease = InstallLease::acquire(app, tenant)
        .await
        .map_err(|busy| match busy {
            LeaseError::Busy => ProvisionError::new(
                ProvisionErrorKind::Busy,
                START,
                format!(
                    "another provisioning or uninstall of {tenant} is running (or was interrupted \
                     less than {} minutes ago); retry later",
                    InstallLease::DURATION.as_secs() / 60
                ),
            ),
            LeaseError::Store(e) => ProvisionError::store(START, &e),
        })?;
    let started = std::time::Instant::now();
    let result = run(app, tenant).await;
    lease.release(app).await;
    match &result {
        Ok(_) => {
            tracing::info!(%tenant, elapsed_ms = started.elapsed().as_millis() as u64, "provisioning complete")
        }
        Err(error) => {
            tracing::warn!(%tenant, step = %error.step, error = %error.message, "provisioning stopped")
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
        .map_err(|e| ProvisionError::store(START, &e))?
        .ok_or_else(|| {
            ProvisionError::new(
                ProvisionErrorKind::NotInstalled,
                START,
                format!("tenant {tenant} is not registered"),
            )
        })?;
    begin(app, tenant).await?;
    let provisioner = Provisioner {
        app,
        tenant,
        record: &record,
        pacer: Pacer::default(),
    };
    for step in Step::ALL {
        match provisioner.step(step).await {
            Ok(outcome) => record_outcome(app, tenant, step, &outcome).await?,
            Err(failure) => return Err(record_failure(app, tenant, step, failure).await),
        }
    }
    finish(app, tenant).await
}

const NOT_INSTALLED: &str = "not installed";
const REAUTHORIZE: &str = "reauthorization required";
const NOT_PROVISIONING: &str = "no longer provisioning";

/// Moves the install to `provisioning` if it may be provisioned.
async fn begin(app: &App, tenant: &TenantId) -> Result<(), ProvisionError> {
    let now = Timestamp::now();
    let result = app
        .store
        .update_install(tenant, &|current| {
            let mut install = current.ok_or_else(|| Abort(NOT_INSTALLED.into()))?;
            match install.status {
                InstallStatus::Pending | InstallStatus::Uninstalled => {
                    Err(Abort(NOT_INSTALLED.into()))
                }
                InstallStatus::ReauthorizationRequired => Err(Abort(REAUTHORIZE.into())),
                _ if install.tokens.is_none() => Err(Abort(NOT_INSTALLED.into())),
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
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(StoreError::Aborted(reason)) if reason == REAUTHORIZE => Err(ProvisionError::new(
            ProvisionErrorKind::ReauthorizationRequired,
            START,
            format!("tenant {tenant} must reauthorize the Klaviyo app"),
        )),
        Err(StoreError::Aborted(_)) => Err(ProvisionError::new(
            ProvisionErrorKind::NotInstalled,
            START,
            format!("tenant {tenant} is not installed"),
        )),
        Err(other) => Err(ProvisionError::store(START, &other)),
    }
}

/// Writes a step's resources; the install must still be provisioning.
async fn record_outcome(
    app: &App,
    tenant: &TenantId,
    step: Step,
    outcome: &Outcome,
) -> Result<(), ProvisionError> {
    let now = Timestamp::now();
    let result = app
        .store
        .update_install(tenant, &|current| {
            let mut install = current.ok_or_else(|| Abort(NOT_PROVISIONING.into()))?;
            if install.status != InstallStatus::Provisioning {
                return Err(Abort(NOT_PROVISIONING.into()));
            }
            outcome.apply(&mut install.resources);
            install.updated_at = now;
            Ok(install)
        })
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(StoreError::Aborted(_)) => Err(interrupted(app, tenant, step.as_str()).await),
        Err(other) => Err(ProvisionError::store(step.as_str(), &other)),
    }
}

/// The error for an install that left `provisioning` under the run.
async fn interrupted(app: &App, tenant: &TenantId, step: &str) -> ProvisionError {
    let status = app
        .store
        .install(tenant)
        .await
        .ok()
        .flatten()
        .map(|i| i.status);
    match status {
        Some(InstallStatus::ReauthorizationRequired) => ProvisionError::new(
            ProvisionErrorKind::ReauthorizationRequired,
            step,
            format!("tenant {tenant} must reauthorize the Klaviyo app"),
        ),
        other => ProvisionError::new(
            ProvisionErrorKind::Interrupted,
            step,
            format!("the install changed to {other:?} while provisioning; nothing more was done"),
        ),
    }
}

/// Records a failed step: status `failed` (unless the token died: then it stays
/// `reauthorization_required`) and `last_error`.
async fn record_failure(
    app: &App,
    tenant: &TenantId,
    step: Step,
    failure: Failure,
) -> ProvisionError {
    let now = Timestamp::now();
    let error = StepError {
        step: step.as_str().to_owned(),
        message: failure.message.clone(),
        at: now,
    };
    let result = app
        .store
        .update_install(tenant, &|current| {
            let mut install = current.ok_or_else(|| Abort(NOT_PROVISIONING.into()))?;
            if install.status == InstallStatus::Provisioning {
                let reason = Some(format!("{}: {}", error.step, error.message));
                install.transition(InstallStatus::Failed, reason, now);
            }
            install.last_error = Some(error.clone());
            install.updated_at = now;
            Ok(install)
        })
        .await;
    if let Err(store) = result {
        tracing::error!(%tenant, step = step.as_str(), error = %store, "could not record the provisioning failure");
    }
    ProvisionError::new(failure.kind, step.as_str(), failure.message)
}

/// Every step succeeded: `installed`, `last_error` cleared.
async fn finish(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let now = Timestamp::now();
    let result = app
        .store
        .update_install(tenant, &|current| {
            let mut install = current.ok_or_else(|| Abort(NOT_PROVISIONING.into()))?;
            if install.status != InstallStatus::Provisioning {
                return Err(Abort(NOT_PROVISIONING.into()));
            }
            install.last_error = None;
            install.transition(InstallStatus::Installed, None, now);
            Ok(install)
        })
        .await;
    match result {
        Ok(install) => Ok(install),
        Err(StoreError::Aborted(_)) => Err(interrupted(app, tenant, FINISH).await),
        Err(other) => Err(ProvisionError::store(FINISH, &other)),
    }
}

/// What a step found or created.
enum Outcome {
    DataSources(BTreeMap<String, String>),
    KlaviyoWebhook(String),
    OmneoWebhooks(BTreeMap<String, String>),
    Queues(Vec<String>),
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

/// Why a step failed.
struct Failure {
    kind: ProvisionErrorKind,
    message: String,
}

impl Failure {
    fn step(message: impl Into<String>) -> Self {
        Self {
            kind: ProvisionErrorKind::StepFailed,
            message: message.into(),
        }
    }
}

impl From<KlaviyoCallError> for Failure {
    fn from(error: KlaviyoCallError) -> Self {
        let kind = match &error {
            KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_)) => {
                ProvisionErrorKind::ReauthorizationRequired
            }
            KlaviyoCallError::Token(TokenError::NotInstalled(_)) => {
                ProvisionErrorKind::NotInstalled
            }
            _ => ProvisionErrorKind::StepFailed,
        };
        Self {
            kind,
            message: error.to_string(),
        }
    }
}

impl From<RemoteError> for Failure {
    fn from(error: RemoteError) -> Self {
        Self::step(error.to_string())
    }
}

/// One run's context.
struct Provisioner<'a> {
    app: &'a App,
    tenant: &'a TenantId,
    record: &'a Tenant,
    pacer: Pacer,
}

impl Provisioner<'_> {
    async fn step(&self, step: Step) -> Result<Outcome, Failure> {
        match step {
            Step::DataSources => self.data_sources().await.map(Outcome::DataSources),
            Step::KlaviyoWebhook => self.klaviyo_webhook().await.map(Outcome::KlaviyoWebhook),
            Step::OmneoWebhooks => self.omneo_webhooks().await.map(Outcome::OmneoWebhooks),
            Step::Queues => self.queues().await.map(Outcome::Queues),
        }
    }

    /// Lists every data source, creates the missing ones; ids by title.
    async fn data_sources(&self) -> Result<BTreeMap<String, String>, Failure> {
        let app = self.app;
        let existing = klaviyo_call(
            app,
            self.tenant,
            &self.pacer,
            Class::DataSources,
            |k, t| async move { k.data_sources(&t).await },
        )
        .await?;
        let mut ids = BTreeMap::new();
        for (title, description) in DATA_SOURCES {
            if let Some(found) = existing.iter().find(|s| s.attributes.title == title) {
                ids.insert(title.to_owned(), found.id.clone());
                continue;
            }
            let source = NewDataSource {
                title: title.to_owned(),
                visibility: Visibility::Private,
                description: Some(description.to_owned()),
            };
            let created =
                klaviyo_call(app, self.tenant, &self.pacer, Class::DataSources, |k, t| {
                    let source = source.clone();
                    async move { k.create_data_source(&t, &source).await }
                })
                .await?;
            tracing::info!(tenant = %self.tenant, data_source = %created.id, title, "created a Klaviyo data source");
            ids.insert(title.to_owned(), created.id);
        }
        Ok(ids)
    }

    /// Finds the system webhook by name and updates it, or creates it; its id.
    async fn klaviyo_webhook(&self) -> Result<String, Failure> {
        let (app, tenant, pacer) = (self.app, self.tenant, &self.pacer);
        let name = klaviyo_webhook_name(tenant);
        let endpoint_url = klaviyo_webhook_url(&app.config, tenant);
        let secret_key = app
            .config
            .keyring
            .open(&self.record.webhook_secret)
            .map_err(|e| Failure::step(format!("cannot open the tenant's webhook_secret: {e}")))?;
        let topics: Vec<String> = SYSTEM_WEBHOOK_TOPICS.map(str::to_owned).to_vec();
        let mut ours = find_klaviyo_webhooks(app, tenant, pacer).await?.into_iter();
        let Some(id) = ours.next() else {
            let webhook = NewWebhook {
                name,
                endpoint_url,
                secret_key,
                description: Some(format!(
                    "Omneo ⇄ Klaviyo extension: consent and bounce events for tenant {tenant}"
                )),
                topics,
            };
            let created = klaviyo_call(app, tenant, pacer, Class::Webhooks, |k, t| {
                let webhook = webhook.clone();
                async move { k.create_webhook(&t, &webhook).await }
            })
            .await?;
            tracing::info!(%tenant, webhook = %created.id, "created the Klaviyo system webhook");
            return Ok(created.id);
        };
        for extra in ours {
            klaviyo_call(app, tenant, pacer, Class::Webhooks, |k, t| {
                let extra = extra.clone();
                async move { k.delete_webhook(&t, &extra).await }
            })
            .await?;
            tracing::warn!(%tenant, webhook = extra, "deleted a duplicate Klaviyo system webhook");
        }
        let update = WebhookUpdate {
            endpoint_url: Some(endpoint_url),
            secret_key: Some(secret_key),
            topics: Some(topics),
            ..WebhookUpdate::default()
        };
        klaviyo_call(app, tenant, pacer, Class::Webhooks, |k, t| {
            let (id, update) = (id.clone(), update.clone());
            async move { k.update_webhook(&t, &id, &update).await }
        })
        .await?;
        tracing::info!(%tenant, webhook = %id, "updated the existing Klaviyo system webhook");
        Ok(id)
    }

    /// Reuses the Omneo webhooks by (namespace, trigger), fixing URLs; creates missing ones
    /// disabled; ids by trigger.
    async fn omneo_webhooks(&self) -> Result<BTreeMap<String, String>, Failure> {
        let (app, tenant) = (self.app, self.tenant);
        let client = app
            .omneo(self.record)
            .map_err(|e| Failure::step(format!("{e:#}")))?;
        let namespace = self.record.settings.namespace.as_str();
        let url = omneo_webhook_url(&app.config, tenant).to_string();
        let existing = client.webhooks(namespace).await?;
        let mut ids = BTreeMap::new();
        for trigger in OMNEO_TRIGGERS {
            let mut candidates: Vec<&omneo::Webhook> = existing
                .iter()
                .filter(|w| w.trigger == trigger)
                .filter(|w| w.namespace.as_deref().is_none_or(|ns| ns == namespace))
                .collect();
            // Prefer one that already points at us (a pair Omneo keeps unique).
            candidates.sort_by_key(|w| w.url != url);
            let id = match candidates.first() {
                Some(found) if found.url == url => found.id.clone(),
                Some(found) => {
                    let update = omneo::WebhookUpdate {
                        url: Some(url.clone()),
                        is_active: None,
                    };
                    client.update_webhook(&found.id, &update).await?;
                    tracing::info!(%tenant, trigger, webhook = %found.id, "fixed the URL of an Omneo webhook");
                    found.id.clone()
                }
                None => {
                    let created = client
                        .create_webhook(&omneo::NewWebhook {
                            trigger: trigger.to_owned(),
                            url: url.clone(),
                            namespace: namespace.to_owned(),
                            is_active: false,
                        })
                        .await?;
                    tracing::info!(%tenant, trigger, webhook = %created.id, "created a disabled Omneo webhook");
                    created.id
                }
            };
            ids.insert(trigger.to_owned(), id);
        }
        Ok(ids)
    }

    /// Ensures both queues; their names.
    async fn queues(&self) -> Result<Vec<String>, Failure> {
        let mut names = Vec::new();
        for (name, direction) in queue_names(self.record)
            .into_iter()
            .zip([Direction::Inbound, Direction::Outbound])
        {
            self.app
                .queue
                .ensure_queue(&name, &QueueSettings::for_direction(direction))
                .await
                .map_err(|e| Failure::step(format!("queue {name}: {e}")))?;
            names.push(name.as_str().to_owned());
        }
        Ok(names)
    }
}

/// The ids of the Klaviyo webhooks named `Omneo {tenant}` (normally one).
pub(crate) async fn find_klaviyo_webhooks(
    app: &App,
    tenant: &TenantId,
    pacer: &Pacer,
) -> Result<Vec<String>, KlaviyoCallError> {
    let name = klaviyo_webhook_name(tenant);
    let webhooks = klaviyo_call(app, tenant, pacer, Class::Webhooks, |k, t| async move {
        k.webhooks(&t).await
    })
    .await?;
    Ok(webhooks
        .into_iter()
        .filter(|w| w.attributes.name == name)
        .map(|w| w.id)
        .collect())
}

/// A Klaviyo call with the tenant's token (refreshed once on 401), paced for `class`. `call`
/// receives a client handle and the token; it runs again after a refresh, so it owns (clones)
/// what its future needs.
pub(crate) async fn klaviyo_call<T, F, Fut>(
    app: &App,
    tenant: &TenantId,
    pacer: &Pacer,
    class: Class,
    call: F,
) -> Result<T, KlaviyoCallError>
where
    F: Fn(KlaviyoClient, SecretString) -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    app.tokens
        .call(tenant, |token| {
            let turn = pacer.turn(class);
            let request = call(app.klaviyo.clone(), token);
            async move {
                turn.await;
                request.await
            }
        })
        .await
}

/// A Klaviyo rate-limit class (klaviyo.md's tiers of the endpoints provisioning uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    /// `/api/webhooks…`: tier XS, 1 request/s.
    Webhooks,
    /// `/api/data-sources…`: tier S, 3 requests/s.
    DataSources,
}

impl Class {
    /// The spacing between two calls: the tier's interval plus 10 % so that latency jitter does
    /// not land two calls in one of Klaviyo's fixed 1-second windows.
    fn spacing(self) -> Duration {
        match self {
            Self::Webhooks => Duration::from_millis(1100),
            Self::DataSources => Duration::from_millis(370),
        }
    }
}

/// Spaces Klaviyo calls per [`Class`] within one run.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    next: Mutex<HashMap<Class, Instant>>,
}

impl Pacer {
    /// Reserves the next slot of `class` now; the returned future waits for it.
    fn turn(&self, class: Class) -> tokio::time::Sleep {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = next.get(&class).copied().unwrap_or(now).max(now);
        next.insert(class, slot + class.spacing());
        tokio::time::sleep_until(slot)
    }
}

/// Why the install lease could not be taken.
pub(crate) enum LeaseError {
    /// Someone else holds it.
    Busy,
    /// The store failed.
    Store(StoreError),
}

/// The right to provision or uninstall one tenant, held across instances as a `processed`
/// marker (see [`crate::store::Store::claim`]).
pub(crate) struct InstallLease {
    key: IdempotencyKey,
}

impl InstallLease {
    /// How long a lease lasts when its holder never gives it back (an instance died mid-run).
    /// Generous: a run takes seconds, but each remote call may retry for up to two minutes.
    pub(crate) const DURATION: Duration = Duration::from_secs(15 * 60);

    /// Takes the tenant's lease, or [`LeaseError::Busy`].
    pub(crate) async fn acquire(app: &App, tenant: &TenantId) -> Result<Self, LeaseError> {
        let key = IdempotencyKey::new(tenant, "install", &["lease"]);
        match app.store.claim(&key, Self::DURATION).await {
            Ok(Claim::Acquired) => Ok(Self { key }),
            // The key is never completed, so `Done` cannot be seen; refuse rather than run unheld.
            Ok(Claim::InProgress | Claim::Done) => Err(LeaseError::Busy),
            Err(error) => Err(LeaseError::Store(error)),
        }
    }

    /// Gives the lease back (best effort: it lapses by itself anyway).
    pub(crate) async fn release(self, app: &App) {
        if let Err(error) = app.store.release(&self.key).await {
            tracing::warn!(error = %error, "could not release the install lease; it lapses by itself");
        }
    }
}

/// `POST /{tenant}/api/v1/install/reprovision`.
async fn reprovision(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<InstallView>, ApiError> {
    let id = tenant.id;
    // Spawned, so a client hanging up does not abandon the run half-way.
    let run = tokio::spawn(async move { provision(&app, &id).await });
    match run.await {
        Ok(Ok(install)) => Ok(Json(InstallView::of(install))),
        Ok(Err(error)) => Err(error.into()),
        Err(panicked) => Err(ApiError::internal(&panicked)),
    }
}
