//! The harness of the end-to-end tests of both directions: a test app with one installed tenant
//! whose Omneo webhooks are active, and the ways a test drives and inspects it.

use std::time::Duration;

use harness::klaviyo::{Delivery as KlaviyoDelivery, KlaviyoSimOptions, SystemEvent};
use harness::omneo::{Interaction, NewProfile, Profile};
use reqwest::Method;
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::install::provision::provision;
use shared::store::{Failure, FailureQuery, InstallStatus};

use crate::support::{Registered, StoreKind, TestApp, TestAppOptions};

/// How long a test waits for the pipeline to settle.
const PATIENCE: Duration = Duration::from_secs(90);

/// A test app with one installed tenant whose Omneo webhooks are active.
pub(crate) struct Pipeline {
    pub t: TestApp,
    pub tenant: &'static str,
    pub registered: Registered,
}

impl Pipeline {
    /// Starts an app on `store`, installs `acme` with `settings` (coalescing 1 s unless given)
    /// and activates its Omneo webhooks.
    pub async fn start(store: StoreKind, settings: Value) -> Self {
        Self::start_with(
            store,
            KlaviyoSimOptions::default().without_rate_limits(),
            settings,
        )
        .await
    }

    /// Like [`Pipeline::start`], with the Klaviyo simulator's options.
    pub async fn start_with(store: StoreKind, klaviyo: KlaviyoSimOptions, settings: Value) -> Self {
        let t = TestApp::spawn(TestAppOptions {
            store,
            klaviyo,
            ..TestAppOptions::default()
        })
        .await;
        let tenant = "acme";
        let registered = install(&t, tenant, settings).await;
        Self {
            t,
            tenant,
            registered,
        }
    }

    /// Waits until every delivery has its answer and every task has run.
    pub async fn settle(&self) {
        tokio::time::timeout(PATIENCE, async {
            self.t.omneo.settle().await;
            self.t.queue.idle().await;
        })
        .await
        .expect("the pipeline settles");
    }

    /// Seeds a profile as CX Manager would (fires `profile.created`) and waits for the sync.
    pub async fn create(&self, new: NewProfile) -> Profile {
        let profile = self
            .t
            .omneo
            .seed_profile(self.tenant, new)
            .expect("seed profile");
        self.settle().await;
        profile
    }

    /// Edits a profile as CX Manager would (fires `profile.updated`) without waiting.
    pub fn edit(&self, id: &str, edit: impl FnOnce(&mut Profile)) -> Profile {
        self.t
            .omneo
            .edit_profile(self.tenant, id, edit)
            .expect("edit profile")
    }

    /// The Klaviyo profile whose `external_id` is the Omneo id.
    pub fn klaviyo_profile(&self, omneo_id: &str) -> Option<harness::klaviyo::Profile> {
        self.t
            .klaviyo
            .profiles()
            .into_iter()
            .find(|p| p.external_id.as_deref() == Some(omneo_id))
    }

    /// How many requests the Klaviyo simulator saw for `method path`.
    pub fn klaviyo_calls(&self, method: &str, path: &str) -> usize {
        self.t.klaviyo.recorder().matching(method, path).len()
    }

    /// Klaviyo writes so far: profile imports, subscription jobs, events, records, deletions.
    pub fn klaviyo_writes(&self) -> usize {
        [
            "/api/profile-import",
            "/api/profile-subscription-bulk-create-jobs",
            "/api/profile-subscription-bulk-delete-jobs",
            "/api/events",
            "/api/data-source-record-create-jobs",
            "/api/data-privacy-deletion-jobs",
        ]
        .iter()
        .map(|path| self.klaviyo_calls("POST", path))
        .sum()
    }

    /// The tenant's failure records (warnings included), newest first.
    pub async fn failures(&self) -> Vec<Failure> {
        let tenant = TenantId::parse(self.tenant).unwrap();
        let query = FailureQuery::newest(1000);
        let page = self.t.app.store.failures(&tenant, &query).await.unwrap();
        page.failures
    }

    /// A signed POST to one of the tenant's receiver paths.
    pub async fn post_signed(
        &self,
        path: &str,
        event: Option<&str>,
        body: &[u8],
    ) -> reqwest::Response {
        let signature = harness::omneo::sign(&self.registered.omneo_signing_secret, body);
        let mut request = self
            .t
            .request(Method::POST, &format!("/{}{path}", self.tenant), None)
            .header("X-Omneo-Hmac-SHA256", signature)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(event) = event {
            request = request.header("X-Omneo-Event", event);
        }
        request.send().await.expect("POST")
    }
}

/// An Omneo profile synced to Klaviyo: both ids and the email.
pub(crate) struct Linked {
    /// The Omneo profile.
    pub omneo: Profile,
    /// Its Klaviyo profile id (also its Omneo identity).
    pub klaviyo_id: String,
    /// Its email.
    pub email: String,
}

impl Pipeline {
    /// Creates `new` in Omneo, lets it sync to Klaviyo (identity written back), and delivers the
    /// echoes of the sync's own consent writes, so the next delivery starts clean.
    pub async fn linked(&self, new: NewProfile) -> Linked {
        let omneo = self.create(new).await;
        let klaviyo_id = self
            .klaviyo_profile(&omneo.id)
            .expect("synced to Klaviyo")
            .id;
        let identities = self.t.omneo.identities(self.tenant, &omneo.id);
        assert!(
            identities.iter().any(|i| i.identifier == klaviyo_id),
            "identity written back: {identities:?}"
        );
        for delivery in self.t.klaviyo.deliver_pending().await.unwrap() {
            assert_eq!(delivery.status, Some(202), "{delivery:?}");
        }
        self.settle().await;
        let email = omneo.email.clone().expect("an email");
        Linked {
            omneo,
            klaviyo_id,
            email,
        }
    }

    /// Delivers `events` as Klaviyo would (one signed batch), expects 202 and waits for the tasks.
    pub async fn deliver(&self, events: Vec<SystemEvent>) -> KlaviyoDelivery {
        let mut deliveries = self.t.klaviyo.deliver(events).await.unwrap();
        assert_eq!(deliveries.len(), 1, "one webhook subscribed");
        let delivery = deliveries.remove(0);
        assert_eq!(delivery.status, Some(202), "{delivery:?}");
        self.settle().await;
        delivery
    }

    /// The Omneo comms updates made so far for a profile.
    pub fn comms_updates(&self, omneo_id: &str) -> usize {
        let path = format!(
            "/{}/api/v3/profiles/{omneo_id}/attributes/comms",
            self.tenant
        );
        self.t.omneo.recorder().matching("PUT", &path).len()
    }

    /// The Omneo interactions of a profile, oldest first.
    pub fn interactions(&self, omneo_id: &str) -> Vec<Interaction> {
        self.t
            .omneo
            .interactions(self.tenant)
            .into_iter()
            .filter(|i| i.profile_id == omneo_id)
            .collect()
    }

    /// The tenant's current shared secret, as its Klaviyo webhook holds it.
    pub fn webhook_secret(&self) -> String {
        self.klaviyo_webhook().secret_key
    }

    /// The tenant's Klaviyo system webhook.
    pub fn klaviyo_webhook(&self) -> harness::klaviyo::Webhook {
        let mut webhooks = self.t.klaviyo.webhooks();
        assert_eq!(webhooks.len(), 1, "one system webhook");
        webhooks.remove(0)
    }

    /// A POST to one of the tenant's receiver paths with these headers.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self
            .t
            .request(Method::POST, &format!("/{}{path}", self.tenant), None)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("POST")
    }
}

/// Registers `tenant`, sets `settings` (coalescing 1 s unless given), provisions it and activates
/// its Omneo webhooks, as a customer enabling them in CX Manager would.
pub(crate) async fn install(t: &TestApp, tenant: &str, settings: Value) -> Registered {
    let registered = t.register(tenant).await;
    let mut patch = json!({"coalesce_seconds": 1});
    if let (Some(patch), Some(settings)) = (patch.as_object_mut(), settings.as_object()) {
        patch.extend(settings.clone());
    }
    let response = t
        .request(
            Method::PATCH,
            &format!("/{tenant}/api/v1/settings"),
            Some(&registered.admin_key),
        )
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    t.seed_tokens(tenant, InstallStatus::Provisioning).await;
    let id = TenantId::parse(tenant).unwrap();
    let installed = provision(&t.app, &id).await.expect("provisioning");
    assert_eq!(installed.status, InstallStatus::Installed);
    for webhook in t.omneo.webhooks(tenant) {
        let response = t
            .http
            .put(format!(
                "{}/api/v3/webhooks/{}",
                t.omneo.api_url(tenant),
                webhook.id
            ))
            .bearer_auth(&registered.omneo_token)
            .json(&json!({"is_active": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    registered
}

/// A customer with email and phone, subscribed to email marketing only.
pub(crate) fn customer(n: u32) -> NewProfile {
    let mut profile = NewProfile::demo(n);
    profile.comms.sms_promo = Some(false);
    profile
}
