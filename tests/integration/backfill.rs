//! Backfill and reconciliation (product.md §10), end to end over real sockets: the admin API →
//! chunk tasks on the local queue → the outbound worker → the simulated Omneo listing and
//! Klaviyo's bulk jobs; and the reconciliation sweep → both workers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use harness::klaviyo::{Channel, ConsentState, KlaviyoSimOptions};
use harness::omneo::{NewProfile, Profile};
use harness::sim::FaultRule;
use jiff::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::store::Severity;

use crate::pipeline::{Pipeline, customer};
use crate::support::StoreKind;

/// How long a test waits for a run to end.
const PATIENCE: Duration = Duration::from_secs(120);

/// Profile `n` of a tenant: every tenth is test data at example.com (excluded), every third
/// has said no to email marketing, every fourth has no SMS consent.
fn shopper(n: u32) -> NewProfile {
    let mut profile = customer(n);
    if n.is_multiple_of(10) {
        profile.email = Some(format!("test.{n}@example.com"));
    }
    profile.comms.email_promo = Some(!n.is_multiple_of(3));
    profile.comms.sms_promo = Some(!n.is_multiple_of(4));
    profile
}

fn excluded(profile: &Profile) -> bool {
    profile
        .email
        .as_deref()
        .is_some_and(|e| e.ends_with("@example.com"))
}

impl Pipeline {
    /// Seeds `count` profiles straight into Omneo (no webhook fires, as for customers that
    /// existed before the install).
    fn seed_many(&self, count: u32) -> Vec<Profile> {
        self.t
            .omneo
            .insert_profiles(self.tenant, (1..=count).map(shopper).collect())
            .expect("seeding profiles")
    }

    /// An admin call on the backfill route.
    async fn backfill(&self, method: Method, body: Option<Value>) -> (u16, Value) {
        let mut request = self.t.request(
            method,
            &format!("/{}/api/v1/backfill", self.tenant),
            Some(&self.registered.admin_key),
        );
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("backfill call");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Starts a run and waits until it ends; returns the finished run.
    async fn run_backfill(&self, body: Value) -> Value {
        let (status, started) = self.backfill(Method::POST, Some(body)).await;
        assert_eq!(status, 202, "{started}");
        assert_eq!(started["state"], "running");
        self.finished_run().await
    }

    /// Waits until the latest run is no longer running.
    async fn finished_run(&self) -> Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let (status, run) = self.backfill(Method::GET, None).await;
                assert_eq!(status, 200, "{run}");
                if run["state"] != "running" {
                    self.settle().await;
                    return run;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the run ends")
    }

    /// Klaviyo profile ids imported by bulk jobs, with how many jobs named each.
    fn bulk_imports(&self) -> HashMap<String, usize> {
        let mut imports = HashMap::new();
        for job in self.t.klaviyo.bulk_jobs() {
            for id in job.profile_ids {
                *imports.entry(id).or_default() += 1;
            }
        }
        imports
    }

    /// The tenant's install status.
    async fn install_status(&self) -> Value {
        self.t
            .request(
                Method::GET,
                &format!("/{}/api/v1/install", self.tenant),
                Some(&self.registered.admin_key),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Runs the reconciliation sweep as Cloud Scheduler would, at `now`, and waits for its tasks.
    async fn reconcile_at(&self, now: Timestamp) -> Vec<TenantId> {
        let swept = shared::reconcile::sweep(&self.t.app, now)
            .await
            .expect("sweep");
        self.settle().await;
        swept.enqueued
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_imports_every_included_profile_in_bulk_and_a_second_run_imports_nothing() {
    let options = KlaviyoSimOptions::default().without_rate_limits();
    let p = Pipeline::start_with(StoreKind::Memory, options, json!({})).await;
    let list = p.t.klaviyo.create_list("Everyone");
    let response =
        p.t.request(
            Method::PATCH,
            &format!("/{}/api/v1/settings", p.tenant),
            Some(&p.registered.admin_key),
        )
        .json(&json!({"master_list_id": list}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seeded = p.seed_many(2_500);

    let run = p.run_backfill(json!({})).await;
    assert_eq!(run["state"], "completed", "{run}");
    let included: Vec<&Profile> = seeded.iter().filter(|p| !excluded(p)).collect();
    let counts = &run["counts"];
    assert_eq!(counts["read"], 2_500, "{run}");
    assert_eq!(counts["excluded"], 250);
    assert_eq!(counts["imported"], included.len());
    assert_eq!(counts["failed"], 0);
    assert_eq!(run["total"], 2_500);
    assert!(
        run["chunks"].as_u64().unwrap() >= 8,
        "spread over chunks: {run}"
    );
    assert_eq!(run["chunks"], run["chunks_done"]);

    // Bulk only: no per-profile import, each profile in exactly one import job.
    assert_eq!(p.klaviyo_calls("POST", "/api/profile-import"), 0);
    let imports = p.bulk_imports();
    assert_eq!(imports.len(), included.len());
    assert!(
        imports.values().all(|&jobs| jobs == 1),
        "a profile imported twice"
    );

    let members: HashSet<String> = p.t.klaviyo.list_members(&list).into_iter().collect();
    for profile in &seeded {
        let klaviyo = p.klaviyo_profile(&profile.id);
        if excluded(profile) {
            assert!(klaviyo.is_none(), "{} is excluded", profile.id);
            continue;
        }
        let klaviyo = klaviyo.expect("imported");
        assert_eq!(klaviyo.email, profile.email);
        assert_eq!(klaviyo.first_name, profile.first_name);
        assert_eq!(klaviyo.last_name, profile.last_name);
        let identities = p.t.omneo.identities(p.tenant, &profile.id);
        assert!(
            identities.iter().any(|i| i.identifier == klaviyo.id),
            "identity written back for {}",
            profile.id
        );
        let consent = p.t.klaviyo.consent(&klaviyo.id).expect("consent");
        let email_subscribed = profile.attributes.comms.email_promo != Some(false);
        assert_eq!(
            consent.email_marketing.consent == ConsentState::Subscribed,
            email_subscribed,
            "{} email consent",
            profile.id
        );
        assert_eq!(members.contains(&klaviyo.id), email_subscribed);
    }

    // A second run finds everything as written: nothing imported, nothing subscribed.
    let jobs_before = p.t.klaviyo.bulk_jobs().len();
    let subscribes = p.klaviyo_calls("POST", "/api/profile-subscription-bulk-create-jobs");
    let again = p.run_backfill(json!({})).await;
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(again["counts"]["imported"], 0, "{again}");
    assert_eq!(again["counts"]["unchanged"], included.len());
    assert_eq!(p.t.klaviyo.bulk_jobs().len(), jobs_before);
    assert_eq!(
        p.klaviyo_calls("POST", "/api/profile-subscription-bulk-create-jobs"),
        subscribes
    );

    // The live sync skips them too: an event for an unchanged profile writes nothing.
    let writes = p.klaviyo_writes();
    let first = included[0];
    p.edit(&first.id, |_| {});
    p.settle().await;
    assert_eq!(
        p.klaviyo_writes(),
        writes,
        "the live sync skipped an unchanged profile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_that_dies_after_its_import_resumes_from_the_checkpoint_without_importing_again() {
    let p = Pipeline::start(StoreKind::Memory, json!({})).await;
    p.seed_many(400);
    // Every poll of an import job fails for a while: the chunk's attempts end after Klaviyo
    // accepted their import jobs, and the retries find the job ids on the run.
    p.t.klaviyo
        .faults()
        .inject(FaultRule::status("/api/profile-bulk-import-jobs/", 503, 40).method("GET"));
    let run = p.run_backfill(json!({})).await;
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["counts"]["imported"], 360, "{run}");
    let imports = p.bulk_imports();
    assert_eq!(imports.len(), 360);
    assert!(
        imports.values().all(|&jobs| jobs == 1),
        "a profile imported twice"
    );
    let chunks = run["chunks"].as_u64().unwrap() as usize;
    assert_eq!(
        p.t.klaviyo.bulk_jobs().len(),
        chunks,
        "one import job per chunk"
    );
    assert!(
        p.klaviyo_calls("GET", "/api/profile-bulk-import-jobs/") > chunks,
        "the polls were retried"
    );

    // A chunk task delivered again after its run ended does nothing.
    let jobs = p.t.klaviyo.bulk_jobs().len();
    let tenant = TenantId::parse(p.tenant).unwrap();
    let stored = p.t.app.store.backfill(&tenant).await.unwrap().unwrap();
    let install = p.t.app.store.install(&tenant).await.unwrap().unwrap();
    let queue = install.queue(shared::queue::Direction::Outbound).unwrap();
    let mut again =
        shared::outbound::backfill::chunk_task(&tenant, queue, &stored.id, 1, Vec::new());
    again.name = shared::queue::TaskName::from_parts(&["again"]);
    p.t.app.queue.enqueue(&again).await.unwrap();
    p.settle().await;
    assert_eq!(p.t.klaviyo.bulk_jobs().len(), jobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_errors_become_failure_records_and_bulk_rate_limits_are_waited_out() {
    let p = Pipeline::start(StoreKind::Memory, json!({})).await;
    let seeded = p.seed_many(50);
    // Klaviyo already has the email of profile 1 and the phone of profile 1 on two different
    // profiles: importing both identifiers together is an import error for that profile.
    let clash = &seeded[0];
    p.t.klaviyo
        .seed_profile(json!({"email": clash.email}))
        .unwrap();
    p.t.klaviyo
        .seed_profile(json!({"phone_number": clash.mobile_phone}))
        .unwrap();
    p.t.klaviyo.faults().inject(
        FaultRule::status("/api/profile-bulk-import-jobs", 429, 2)
            .method("POST")
            .retry_after(1),
    );
    let run = p.run_backfill(json!({})).await;
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["counts"]["failed"], 1, "{run}");
    assert_eq!(run["errors"][0]["profile"], clash.id.as_str(), "{run}");
    let failures = p.failures().await;
    let record = failures
        .iter()
        .find(|f| f.profile.as_deref() == Some(clash.id.as_str()))
        .expect("a failure record names the profile");
    assert_eq!(record.severity, Severity::Failed);
    assert_eq!(record.step.as_deref(), Some("bulk_import"));
    assert_eq!(
        record.task_kind,
        shared::queue::TaskKind::SyncProfile,
        "replayed as a sync"
    );
    assert!(
        p.klaviyo_calls("POST", "/api/profile-bulk-import-jobs") >= 3,
        "the 429s were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backfill_api_validates_refuses_a_second_run_and_cancels() {
    let p = Pipeline::start(StoreKind::Memory, json!({})).await;
    let (status, body) = p.backfill(Method::GET, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = p
        .backfill(Method::POST, Some(json!({"since": "yesterday"})))
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("since")),
        "{body}"
    );
    let (status, body) = p
        .backfill(Method::POST, Some(json!({"dry_runn": true})))
        .await;
    assert_eq!(status, 400, "{body}");

    p.seed_many(300);
    p.t.klaviyo
        .set_bulk_pace(harness::klaviyo::BulkPace::stalled());
    let (status, started) = p.backfill(Method::POST, Some(json!({}))).await;
    assert_eq!(status, 202, "{started}");
    let (status, body) = p.backfill(Method::POST, Some(json!({}))).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("conflict")),
        "{body}"
    );
    let (status, cancelled) = p.backfill(Method::DELETE, None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["id"], started["id"]);
    let (status, _) = p.backfill(Method::DELETE, None).await;
    assert_eq!(status, 404);

    // A dry run after the cancel counts and writes nothing.
    p.t.klaviyo
        .set_bulk_pace(harness::klaviyo::BulkPace::instant());
    let jobs = p.t.klaviyo.bulk_jobs().len();
    let dry = p.run_backfill(json!({"dry_run": true})).await;
    assert_eq!(dry["state"], "completed", "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["counts"]["read"], 300);
    assert_eq!(dry["counts"]["imported"], 270);
    assert_eq!(
        p.t.klaviyo.bulk_jobs().len(),
        jobs,
        "a dry run imports nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_on_firestore_checkpoints_and_writes_sync_states_there() {
    let p = Pipeline::start(StoreKind::Firestore, json!({})).await;
    let seeded = p.seed_many(300);
    let run = p.run_backfill(json!({})).await;
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["counts"]["imported"], 270, "{run}");
    let tenant = TenantId::parse(p.tenant).unwrap();
    let ids: Vec<_> = seeded
        .iter()
        .map(|p| shared::domain::OmneoProfileId::parse(p.id.clone()).unwrap())
        .collect();
    let states = p.t.app.store.sync_states(&tenant, &ids).await.unwrap();
    assert_eq!(states.len(), 270);
    let again = p.run_backfill(json!({})).await;
    assert_eq!(again["counts"]["unchanged"], 270, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_brings_a_dropped_consent_change_to_omneo_once() {
    let p = Pipeline::start(StoreKind::Memory, json!({})).await;
    let one = p.linked(customer(1)).await;
    let two = p.linked(customer(2)).await;
    let start = Timestamp::now();

    // The first unsubscribe is delivered by webhook; the second's delivery is lost.
    p.t.klaviyo
        .change_consent(
            &one.klaviyo_id,
            Channel::Email,
            ConsentState::Unsubscribed,
            "PREFERENCE_PAGE",
        )
        .unwrap();
    p.t.klaviyo.deliver_pending().await.unwrap();
    p.settle().await;
    assert_eq!(p.interactions(&one.omneo.id).len(), 1);
    p.t.klaviyo
        .change_consent(
            &two.klaviyo_id,
            Channel::Email,
            ConsentState::Unsubscribed,
            "PREFERENCE_PAGE",
        )
        .unwrap();
    assert_eq!(p.t.klaviyo.drop_pending().len(), 1);
    p.settle().await;
    assert_ne!(
        p.t.omneo
            .comms(p.tenant, &two.omneo.id)
            .unwrap()
            .email_promo,
        Some(false)
    );

    let swept = p.reconcile_at(start).await;
    assert_eq!(swept, [TenantId::parse(p.tenant).unwrap()]);
    assert_eq!(
        p.t.omneo
            .comms(p.tenant, &two.omneo.id)
            .unwrap()
            .email_promo,
        Some(false),
        "the dropped unsubscribe reached Omneo"
    );
    assert_eq!(p.interactions(&two.omneo.id).len(), 1);
    assert_eq!(
        p.interactions(&one.omneo.id).len(),
        1,
        "the event the webhook delivered made no second interaction"
    );

    // Not due again within the interval; due after it.
    assert!(p.reconcile_at(start).await.is_empty());
    let later = start
        .checked_add(jiff::SignedDuration::from_mins(61))
        .unwrap();
    assert_eq!(p.reconcile_at(later).await.len(), 1);
    assert_eq!(
        p.interactions(&two.omneo.id).len(),
        1,
        "events are read once"
    );

    let status = p.install_status().await;
    let reconciliation = &status["reconciliation"];
    assert_eq!(reconciliation["status"], "on", "{status}");
    assert_eq!(reconciliation["inbound"]["last"]["status"], "succeeded");
    assert!(reconciliation["inbound"]["events_after"].is_string());
    assert_eq!(reconciliation["outbound"]["last"]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_brings_a_change_missed_while_omneo_webhooks_were_off_to_klaviyo() {
    let p = Pipeline::start(StoreKind::Memory, json!({})).await;
    let linked = p.linked(customer(3)).await;
    let start = Timestamp::now();
    // The first reconciliation sets the cursor (a run of what changed since the install).
    p.reconcile_at(start).await;
    p.finished_run().await;

    for webhook in p.t.omneo.webhooks(p.tenant) {
        let response =
            p.t.http
                .put(format!(
                    "{}/api/v3/webhooks/{}",
                    p.t.omneo.api_url(p.tenant),
                    webhook.id
                ))
                .bearer_auth(&p.registered.omneo_token)
                .json(&json!({"is_active": false}))
                .send()
                .await
                .unwrap();
        assert_eq!(response.status(), 200);
    }
    p.edit(&linked.omneo.id, |profile| {
        profile.last_name = Some("Missed".into())
    });
    p.settle().await;
    assert_ne!(
        p.klaviyo_profile(&linked.omneo.id)
            .unwrap()
            .last_name
            .as_deref(),
        Some("Missed")
    );

    let later = start
        .checked_add(jiff::SignedDuration::from_mins(61))
        .unwrap();
    p.reconcile_at(later).await;
    let run = p.finished_run().await;
    assert_eq!(run["trigger"], "reconciliation", "{run}");
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(
        p.klaviyo_profile(&linked.omneo.id)
            .unwrap()
            .last_name
            .as_deref(),
        Some("Missed"),
        "the missed change reached Klaviyo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_without_the_new_scopes_reports_reconciliation_and_keeps_syncing() {
    let options = KlaviyoSimOptions {
        withheld_scopes: vec!["events:read".into(), "metrics:read".into()],
        ..KlaviyoSimOptions::default().without_rate_limits()
    };
    let p = Pipeline::start_with(StoreKind::Memory, options, json!({})).await;
    let linked = p.linked(customer(4)).await;
    assert!(
        p.klaviyo_profile(&linked.omneo.id).is_some(),
        "the live sync works"
    );

    p.reconcile_at(Timestamp::now()).await;
    let status = p.install_status().await;
    let reconciliation = &status["reconciliation"];
    assert_eq!(
        reconciliation["status"], "reauthorization_required",
        "{status}"
    );
    assert_eq!(
        reconciliation["missing_scopes"],
        json!(["events:read", "metrics:read"])
    );
    assert_eq!(
        reconciliation["inbound"]["last"]["status"],
        "reauthorization_required"
    );
    assert_eq!(status["status"], "installed", "the install itself is fine");
    assert_eq!(
        p.klaviyo_calls("GET", "/api/events"),
        0,
        "no call that would be refused"
    );

    // Consent still flows both ways through the webhooks.
    p.t.klaviyo
        .change_consent(
            &linked.klaviyo_id,
            Channel::Email,
            ConsentState::Unsubscribed,
            "PREFERENCE_PAGE",
        )
        .unwrap();
    p.t.klaviyo.deliver_pending().await.unwrap();
    p.settle().await;
    assert_eq!(
        p.t.omneo
            .comms(p.tenant, &linked.omneo.id)
            .unwrap()
            .email_promo,
        Some(false)
    );
}
