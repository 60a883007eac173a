//! Provisioning (product.md §5.4–§5.5) against the simulators: every resource exactly once,
//! reinstall reuses and repairs without touching `is_active`, a failure at each step is recorded
//! and `reprovision` resumes, real Klaviyo rate limits, concurrency, and the reprovision route.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use harness::klaviyo::KlaviyoSimOptions;
use harness::sim::FaultRule;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use shared::app::App;
use shared::domain::{DataSourceKind, OmneoProfileId, TenantId};
use shared::install::provision::{
    OMNEO_TRIGGERS, ProvisionError, provision, system_webhook_topics,
};
use shared::klaviyo::models::{NewDataSource, Visibility};
use shared::omneo::models::WebhookUpdate;
use shared::queue::{
    Direction, Enqueued, Queue, QueueError, QueueName, QueueSettings, SyncProfile, Task,
    TaskEnvelope, TaskName, Work,
};
use shared::store::{Install, InstallStatus, Tenant, TenantSecret};

use crate::support::{StoreKind, TestApp, TestAppOptions};

/// Registers `name` and gives it Klaviyo tokens, as the OAuth callback leaves it.
pub(super) async fn installable(t: &TestApp, name: &str) -> (TenantId, String) {
    let registered = t.register(name).await;
    t.seed_tokens(name, InstallStatus::Provisioning).await;
    (TenantId::parse(name).unwrap(), registered.admin_key)
}

pub(super) async fn install_record(t: &TestApp, tenant: &TenantId) -> Install {
    t.app
        .store
        .install(tenant)
        .await
        .unwrap()
        .expect("install record")
}

async fn tenant_record(t: &TestApp, tenant: &TenantId) -> Tenant {
    t.app
        .store
        .tenant(tenant)
        .await
        .unwrap()
        .expect("tenant record")
}

pub(super) fn omneo_url(t: &TestApp, tenant: &str) -> String {
    format!("{}/{tenant}/api/v1/webhooks/omneo", t.url)
}

/// `POST …/install/reprovision` with `bearer`.
pub(super) async fn reprovision(
    t: &TestApp,
    tenant: &str,
    bearer: Option<&str>,
) -> reqwest::Response {
    t.request(
        Method::POST,
        &format!("/{tenant}/api/v1/install/reprovision"),
        bearer,
    )
    .send()
    .await
    .expect("reprovision request")
}

/// Every resource is in the simulators exactly once, as the install record says.
pub(super) async fn assert_provisioned_once(t: &TestApp, tenant: &TenantId) {
    let install = install_record(t, tenant).await;
    assert_eq!(install.status, InstallStatus::Installed, "{install:?}");
    assert_eq!(install.last_error, None);

    // Six data sources, exact titles, private, each once, ids recorded by title.
    let sources = t.klaviyo.data_sources();
    assert_eq!(sources.len(), 6, "{sources:?}");
    for title in DataSourceKind::ALL.map(DataSourceKind::title) {
        let matching: Vec<_> = sources.iter().filter(|s| s.title == title).collect();
        assert_eq!(matching.len(), 1, "{title}: {sources:?}");
        assert_eq!(matching[0].visibility, "private");
        assert!(!matching[0].description.is_empty());
        assert_eq!(
            install.resources.data_sources.get(title),
            Some(&matching[0].id)
        );
    }
    assert_eq!(install.resources.data_sources.len(), 6);

    // One Klaviyo webhook: name, URL, the tenant's webhook_secret, the topic set.
    let webhooks = t.klaviyo.webhooks();
    assert_eq!(webhooks.len(), 1, "{webhooks:?}");
    let webhook = &webhooks[0];
    assert_eq!(webhook.name, format!("Omneo {tenant}"));
    assert_eq!(
        webhook.endpoint_url,
        format!("{}/{tenant}/api/v1/webhooks/klaviyo/system", t.url)
    );
    let record = tenant_record(t, tenant).await;
    let secret = record
        .open(&t.app.config.keyring, TenantSecret::WebhookSecret)
        .unwrap();
    assert_eq!(webhook.secret_key, secret.expose_secret());
    let topics: BTreeSet<&str> = webhook.topics.iter().map(String::as_str).collect();
    let expected = system_webhook_topics();
    assert_eq!(topics, expected.iter().map(String::as_str).collect());
    assert!(webhook.enabled);
    assert_eq!(
        install.resources.klaviyo_webhook_id.as_ref(),
        Some(&webhook.id)
    );

    // Three Omneo webhooks in the namespace, pointing at us, one per trigger.
    let omneo = t.omneo.webhooks(tenant.as_str());
    assert_eq!(omneo.len(), 3, "{omneo:?}");
    for trigger in OMNEO_TRIGGERS {
        let matching: Vec<_> = omneo.iter().filter(|w| w.trigger == trigger).collect();
        assert_eq!(matching.len(), 1, "{trigger}: {omneo:?}");
        assert_eq!(matching[0].namespace, "klaviyo");
        assert_eq!(matching[0].url, omneo_url(t, tenant.as_str()));
        assert_eq!(
            install.resources.omneo_webhooks.get(trigger),
            Some(&matching[0].id.to_string())
        );
    }

    // Both queues exist, named `{tenant}-klaviyo-{direction}` and reserved for the tenant, and the
    // install says where each direction enqueues: a task far in the future is accepted by each
    // (and never runs here).
    let expected: Vec<QueueName> = [Direction::Inbound, Direction::Outbound]
        .map(|d| QueueName::parse(&format!("{tenant}-klaviyo-{}", d.as_str())).unwrap())
        .to_vec();
    assert_eq!(install.resources.queues, expected);
    for direction in [Direction::Inbound, Direction::Outbound] {
        let queue = install
            .queue(direction)
            .expect("a queue per direction")
            .clone();
        assert_eq!(
            t.app
                .store
                .reserve_queue_name(&queue, &TenantId::parse("intruder").unwrap())
                .await
                .unwrap(),
            *tenant,
            "the name is reserved for the tenant"
        );
        let task = Task {
            queue,
            direction,
            envelope: TaskEnvelope {
                tenant: tenant.clone(),
                work: Work::SyncProfile(SyncProfile {
                    profile_id: OmneoProfileId::parse("probe").unwrap(),
                }),
            },
            name: TaskName::from_parts(&[
                "probe",
                direction.as_str(),
                &jiff::Timestamp::now().to_string(),
            ]),
            schedule_at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)),
        };
        assert_eq!(t.app.queue.enqueue(&task).await.unwrap(), Enqueued::Created);
    }
}

/// The simulator offers every topic we subscribe to (`GET /api/webhook-topics`).
async fn assert_topics_exist(t: &TestApp, tenant: &TenantId) {
    let token = t.app.tokens.access_token(tenant).await.unwrap();
    let offered: BTreeSet<String> = t
        .app
        .klaviyo
        .webhook_topics(&token)
        .await
        .unwrap()
        .into_iter()
        .map(|topic| topic.id)
        .collect();
    for topic in system_webhook_topics() {
        assert!(
            offered.contains(&topic),
            "{topic} is not a Klaviyo topic: {offered:?}"
        );
    }
}

async fn full_provisioning(store: StoreKind) {
    let t = TestApp::spawn(TestAppOptions {
        store,
        ..TestAppOptions::default()
    })
    .await;
    let (tenant, _) = installable(&t, "acme").await;
    let install = provision(&t.app, &tenant).await.expect("provisioning");
    assert_eq!(install.status, InstallStatus::Installed);
    let stored = install_record(&t, &tenant).await;
    assert_eq!(install.resources, stored.resources);
    assert_eq!(stored.status, InstallStatus::Installed);
    assert_provisioned_once(&t, &tenant).await;
    assert_topics_exist(&t, &tenant).await;
    // Created disabled: the customer enables them in CX Manager.
    assert!(t.omneo.webhooks("acme").iter().all(|w| !w.is_active));
    // The history shows the way to `installed`.
    assert_eq!(
        install.history.last().map(|h| h.status),
        Some(InstallStatus::Installed)
    );
}

#[tokio::test]
async fn full_provisioning_creates_every_resource_exactly_once() {
    full_provisioning(StoreKind::Memory).await;
}

#[tokio::test]
async fn full_provisioning_on_firestore() {
    full_provisioning(StoreKind::Firestore).await;
}

#[tokio::test]
async fn reinstall_reuses_everything_repairs_drift_and_never_flips_is_active() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, admin_key) = installable(&t, "acme").await;

    // A data source the customer already has is reused, not duplicated.
    let token = t.app.tokens.access_token(&tenant).await.unwrap();
    let dates = t
        .app
        .klaviyo
        .create_data_source(
            &token,
            &NewDataSource {
                title: "Omneo Dates".into(),
                visibility: Visibility::Private,
                description: Some("made by the customer before installing".into()),
            },
        )
        .await
        .unwrap();
    let first = provision(&t.app, &tenant)
        .await
        .expect("first provisioning");
    assert_eq!(first.resources.data_sources["Omneo Dates"], dates.id);
    assert_provisioned_once(&t, &tenant).await;

    // Between runs: the customer enables profile.updated, profile.deleted's URL drifts, and the
    // webhook secret is rotated.
    let record = tenant_record(&t, &tenant).await;
    let omneo = t.app.omneo(&record).unwrap();
    let updated = &first.resources.omneo_webhooks["profile.updated"];
    let deleted = &first.resources.omneo_webhooks["profile.deleted"];
    omneo
        .update_webhook(
            updated,
            &WebhookUpdate {
                url: None,
                namespace: None,
                is_active: Some(true),
            },
        )
        .await
        .unwrap();
    omneo
        .update_webhook(
            deleted,
            &WebhookUpdate {
                url: Some("https://old-host.example.com/acme/api/v1/webhooks/omneo".into()),
                namespace: None,
                is_active: None,
            },
        )
        .await
        .unwrap();
    let new_secret = SecretString::from("rotated-webhook-secret-0123456789".to_owned());
    let sealed = TenantSecret::WebhookSecret.seal(&t.app.config.keyring, &tenant, &new_secret);
    t.app
        .store
        .update_tenant(&tenant, &|current| {
            let mut record = current.expect("tenant");
            record.webhook_secret = sealed.clone();
            Ok(record)
        })
        .await
        .unwrap();
    t.klaviyo.recorder().clear();

    let response = reprovision(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "installed");
    assert_eq!(body["last_error"], Value::Null);
    assert_eq!(
        body["resources"]["data_sources"].as_object().unwrap().len(),
        6
    );

    // Same resources, no duplicates, drift repaired.
    let second = install_record(&t, &tenant).await;
    assert_eq!(second.resources, first.resources);
    assert_provisioned_once(&t, &tenant).await;
    let by_trigger = |trigger: &str| {
        t.omneo
            .webhooks("acme")
            .into_iter()
            .find(|w| w.trigger == trigger)
            .unwrap()
    };
    assert!(
        by_trigger("profile.updated").is_active,
        "enabled stays enabled"
    );
    assert!(
        !by_trigger("profile.created").is_active,
        "disabled stays disabled"
    );
    assert!(
        !by_trigger("profile.deleted").is_active,
        "disabled stays disabled"
    );
    assert_eq!(by_trigger("profile.deleted").url, omneo_url(&t, "acme"));
    // Reinstall never sent is_active to Omneo.
    for request in t.omneo.recorder().matching("PUT", "/acme/api/v3/webhooks/") {
        let body = request.json();
        if body.get("url").is_some() {
            assert!(body.get("is_active").is_none(), "{body}");
        }
    }
    // The Klaviyo webhook was found by name and PATCHed with the new secret, not recreated.
    assert!(
        t.klaviyo
            .recorder()
            .matching("POST", "/api/webhooks")
            .is_empty()
    );
    assert_eq!(
        t.klaviyo
            .recorder()
            .matching("PATCH", "/api/webhooks/")
            .len(),
        1
    );
    assert_eq!(
        t.klaviyo.webhooks()[0].secret_key,
        new_secret.expose_secret()
    );
    assert!(
        t.klaviyo
            .recorder()
            .matching("POST", "/api/data-sources")
            .is_empty()
    );
}

/// A queue that refuses `ensure_queue` a number of times, then delegates.
struct FailingQueue {
    inner: Arc<dyn Queue>,
    failures_left: AtomicU32,
}

#[async_trait]
impl Queue for FailingQueue {
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
        self.inner.enqueue(task).await
    }

    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(QueueError::Unavailable(anyhow::anyhow!(
                "injected: Cloud Tasks is down"
            )));
        }
        self.inner.ensure_queue(queue, settings).await
    }
}

#[tokio::test]
async fn a_failure_at_each_step_is_recorded_and_reprovision_resumes() {
    for step in [
        "data_sources",
        "klaviyo_webhook",
        "omneo_webhooks",
        "queues",
    ] {
        let t = TestApp::spawn(TestAppOptions::default()).await;
        let (tenant, admin_key) = installable(&t, "acme").await;
        // The app that runs the failing attempt: the test app itself, except for the queue step,
        // where the same store is paired with a queue backend that is down.
        let mut runner: Arc<App> = t.app.clone();
        match step {
            "data_sources" => t
                .klaviyo
                .faults()
                .inject(FaultRule::status("/api/data-sources", 400, 1).method("POST")),
            "klaviyo_webhook" => t
                .klaviyo
                .faults()
                .inject(FaultRule::status("/api/webhooks", 503, 10).method("POST")),
            "omneo_webhooks" => {
                t.omneo
                    .faults()
                    .inject(FaultRule::status("/acme/api/v3/webhooks", 500, 10))
            }
            "queues" => {
                let queue = Arc::new(FailingQueue {
                    inner: t.app.queue.clone(),
                    failures_left: AtomicU32::new(1),
                });
                runner = App::new(
                    t.app.config.clone(),
                    t.app.store.clone(),
                    queue,
                    t.app.http.clone(),
                );
            }
            other => unreachable!("{other}"),
        }

        let error = provision(&runner, &tenant).await.unwrap_err();
        assert_eq!(error.step().as_str(), step, "{error}");
        assert!(
            matches!(error, ProvisionError::StepFailed { .. }),
            "{step}: {error}"
        );
        let failed = install_record(&t, &tenant).await;
        assert_eq!(failed.status, InstallStatus::Failed, "{step}");
        let last = failed.last_error.as_ref().expect("last_error");
        assert_eq!(last.step.as_str(), step);
        assert!(!last.message.is_empty());
        // What the steps before it did is recorded; the failed step and later ones are not.
        let index = [
            "data_sources",
            "klaviyo_webhook",
            "omneo_webhooks",
            "queues",
        ]
        .iter()
        .position(|s| *s == step)
        .unwrap();
        assert_eq!(
            failed.resources.data_sources.len(),
            if index > 0 { 6 } else { 0 },
            "{step}"
        );
        assert_eq!(
            failed.resources.klaviyo_webhook_id.is_some(),
            index > 1,
            "{step}"
        );
        assert_eq!(
            failed.resources.omneo_webhooks.len(),
            if index > 2 { 3 } else { 0 },
            "{step}"
        );
        assert!(failed.resources.queues.is_empty(), "{step}");

        // The status endpoint's source of truth says failed; reprovision resumes to installed.
        t.klaviyo.faults().clear();
        t.omneo.faults().clear();
        let response = reprovision(&t, "acme", Some(&admin_key)).await;
        assert_eq!(
            response.status(),
            200,
            "{step}: {:?}",
            response.text().await
        );
        assert_provisioned_once(&t, &tenant).await;
        let history: Vec<InstallStatus> = install_record(&t, &tenant)
            .await
            .history
            .iter()
            .map(|h| h.status)
            .collect();
        assert!(
            history.ends_with(&[
                InstallStatus::Failed,
                InstallStatus::Provisioning,
                InstallStatus::Installed
            ]),
            "{step}: {history:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_step_answers_502_naming_it() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, admin_key) = installable(&t, "acme").await;
    t.klaviyo
        .faults()
        .inject(FaultRule::status("/api/data-sources", 400, 1).method("GET"));
    let response = reprovision(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provisioning_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("data_sources"), "{message}");
    assert_eq!(
        install_record(&t, &tenant).await.status,
        InstallStatus::Failed
    );
}

#[tokio::test]
async fn provisioning_succeeds_under_klaviyos_real_rate_limits() {
    let t = TestApp::spawn(TestAppOptions {
        store: StoreKind::Memory,
        klaviyo: KlaviyoSimOptions::default(),
        ..TestAppOptions::default()
    })
    .await;
    assert!(t.klaviyo.options().rate_limits.enabled);
    let (tenant, admin_key) = installable(&t, "acme").await;

    let started = Instant::now();
    provision(&t.app, &tenant)
        .await
        .expect("provisioning under real limits");
    let first = started.elapsed();
    assert_provisioned_once(&t, &tenant).await;

    let started = Instant::now();
    let response = reprovision(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 200);
    let again = started.elapsed();
    assert_provisioned_once(&t, &tenant).await;

    let calls = |method: &str, path: &str| t.klaviyo.recorder().matching(method, path).len();
    eprintln!(
        "real rate limits: provisioning took {first:?}, reprovisioning {again:?}; \
         Klaviyo calls: GET data-sources {}, POST data-sources {}, GET webhooks {}, POST webhooks {}, PATCH webhooks {}",
        calls("GET", "/api/data-sources"),
        calls("POST", "/api/data-sources"),
        calls("GET", "/api/webhooks"),
        calls("POST", "/api/webhooks"),
        calls("PATCH", "/api/webhooks/"),
    );
}

#[tokio::test]
async fn concurrent_runs_of_one_tenant_do_not_duplicate_anything() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, _) = installable(&t, "acme").await;
    let (a, b) = tokio::join!(provision(&t.app, &tenant), provision(&t.app, &tenant));
    // Exactly one runs; the other is refused while the first holds the lease.
    let busy = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(ProvisionError::Busy(_))))
        .count();
    let ran = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!((ran, busy), (1, 1), "{a:?} {b:?}");
    assert_provisioned_once(&t, &tenant).await;
    // The lease was given back: a later run goes ahead.
    provision(&t.app, &tenant).await.expect("a later run");
    assert_provisioned_once(&t, &tenant).await;
}

#[tokio::test]
async fn reprovision_needs_an_install_with_usable_tokens() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let pending_key = t.register("pending").await.admin_key;
    let reauth_key = t.register("reauth").await.admin_key;
    t.seed_tokens("reauth", InstallStatus::ReauthorizationRequired)
        .await;
    let uninstalled_key = t.register("gone").await.admin_key;
    t.seed_tokens("gone", InstallStatus::Uninstalled).await;

    for (tenant, key, code) in [
        ("pending", &pending_key, "not_installed"),
        ("gone", &uninstalled_key, "not_installed"),
        ("reauth", &reauth_key, "reauthorization_required"),
    ] {
        let response = reprovision(&t, tenant, Some(key)).await;
        assert_eq!(response.status(), 409, "{tenant}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{tenant}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        let hint = if code == "not_installed" {
            "install"
        } else {
            "install again"
        };
        assert!(message.contains(hint), "{tenant}: {message}");
    }
    // Nothing was created anywhere, and the statuses are unchanged.
    assert!(t.klaviyo.data_sources().is_empty());
    assert!(t.klaviyo.webhooks().is_empty());
    let reauth = install_record(&t, &TenantId::parse("reauth").unwrap()).await;
    assert_eq!(reauth.status, InstallStatus::ReauthorizationRequired);
}

#[tokio::test]
async fn reprovision_requires_the_tenants_admin_credentials() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (_, admin_key) = installable(&t, "acme").await;
    let other_key = t.register("other").await.admin_key;
    assert_eq!(reprovision(&t, "acme", None).await.status(), 401);
    assert_eq!(
        reprovision(&t, "acme", Some("wrong-key")).await.status(),
        401
    );
    assert_eq!(
        reprovision(&t, "acme", Some(&other_key)).await.status(),
        401
    );
    assert_eq!(
        reprovision(&t, "nobody", Some(&admin_key)).await.status(),
        401
    );
    assert!(t.klaviyo.data_sources().is_empty(), "nothing ran");
    // The operator token works too, and an unknown tenant is a 404 only to it.
    assert_eq!(
        reprovision(&t, "nobody", Some(&t.operator_token))
            .await
            .status(),
        404
    );
    let response = reprovision(&t, "acme", Some(&t.operator_token)).await;
    assert_eq!(response.status(), 200);
}
