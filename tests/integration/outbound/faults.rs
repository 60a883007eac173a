//! Faults from the simulated Klaviyo: the final state is right, nothing is written twice, and what
//! cannot succeed becomes a failure record that can be replayed once the cause is fixed.

use std::time::{Duration, Instant};

use harness::sim::FaultRule;
use reqwest::Method;
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::store::{InstallStatus, Severity};

use crate::pipeline::{Pipeline, customer};
use crate::support::StoreKind;

const IMPORT: &str = "/api/profile-import";

/// Successful profile imports (those the simulator answered 2xx to) are one profile each.
fn assert_one_profile(o: &Pipeline, omneo_id: &str) {
    let twins =
        o.t.klaviyo
            .profiles()
            .into_iter()
            .filter(|p| p.external_id.as_deref() == Some(omneo_id))
            .count();
    assert_eq!(twins, 1, "exactly one Klaviyo profile");
}

async fn transient_faults_heal(store: StoreKind) {
    let o = Pipeline::start(store, json!({})).await;
    // More 500s than one call retries (5 attempts): the task itself is retried by the queue.
    o.t.klaviyo
        .faults()
        .inject(FaultRule::status(IMPORT, 500, 6));
    o.t.klaviyo
        .faults()
        .inject(FaultRule::status(IMPORT, 503, 1));
    o.t.klaviyo.faults().inject(
        FaultRule::status("/api/profile-subscription-bulk-create-jobs", 429, 2).retry_after(1),
    );
    let created = o.create(customer(90)).await;
    let k = o
        .klaviyo_profile(&created.id)
        .expect("synced after the faults");
    assert_one_profile(&o, &created.id);
    assert_eq!(
        k.subscriptions.email_marketing.consent,
        harness::klaviyo::ConsentState::Subscribed
    );
    let subscribes = o.klaviyo_calls("POST", "/api/profile-subscription-bulk-create-jobs");
    assert_eq!(subscribes, 3, "two 429s, then the one subscribe");
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn transient_faults_heal_without_duplicates() {
    transient_faults_heal(StoreKind::Memory).await;
}

#[tokio::test]
async fn transient_faults_heal_without_duplicates_on_firestore() {
    transient_faults_heal(StoreKind::Firestore).await;
}

#[tokio::test]
async fn a_timed_out_import_is_repeated_without_a_second_profile() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    // Klaviyo handles the import at once but the answer outlives the 30 s attempt timeout.
    o.t.klaviyo
        .faults()
        .inject(FaultRule::slow_answer(IMPORT, Duration::from_secs(32), 1));
    let created = o.create(customer(95)).await;
    assert_one_profile(&o, &created.id);
    assert_eq!(
        o.klaviyo_calls("POST", IMPORT),
        2,
        "the timed-out import and its repeat"
    );
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once_and_the_call_repeated() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let refreshed = o.t.klaviyo.token_counts().refreshed;
    o.t.klaviyo.expire_access_tokens();
    let created = o.create(customer(91)).await;
    assert!(o.klaviyo_profile(&created.id).is_some());
    assert_eq!(o.t.klaviyo.token_counts().refreshed, refreshed + 1);
    assert!(o.failures().await.is_empty());
}

#[tokio::test]
async fn a_long_retry_after_reschedules_the_task_instead_of_failing_it() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    o.t.klaviyo
        .faults()
        .inject(FaultRule::status(IMPORT, 429, 1).retry_after(3600));
    o.t.omneo.seed_profile(o.tenant, customer(92)).unwrap();
    o.t.omneo.settle().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = o.t.queue.stats();
        // The first attempt answered 2xx (rescheduled), and a copy waits an hour.
        if stats.delivered >= 1 && stats.pending == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no reschedule: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(o.failures().await.is_empty());
    assert!(o.t.klaviyo.profiles().is_empty());
}

#[tokio::test]
async fn a_permanent_rejection_is_recorded_and_its_replay_succeeds_once_fixed() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    o.t.klaviyo
        .faults()
        .inject(FaultRule::status(IMPORT, 400, 1));
    let created = o.create(customer(93)).await;
    assert!(o.klaviyo_profile(&created.id).is_none());
    let failures = o.failures().await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!(failure.step.as_deref(), Some("import_profile"));
    assert_eq!(failure.profile.as_deref(), Some(created.id.as_str()));
    assert_eq!(failure.severity, Severity::Failed);
    assert_eq!(failure.attempts, 1, "a 400 is not retried");
    assert!(failure.error.contains("400"), "{}", failure.error);

    // The cause is gone (the fault was one call): replaying the record syncs the profile once.
    let response =
        o.t.request(
            Method::POST,
            &format!("/{}/api/v1/failures/{}/retry", o.tenant, failure.id),
            Some(&o.registered.admin_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    o.settle().await;
    assert_one_profile(&o, &created.id);
    let imports = o.klaviyo_calls("POST", IMPORT);
    assert_eq!(imports, 2, "the rejected import and the replayed one");
}

#[tokio::test]
async fn a_tenant_that_must_reauthorise_gets_failure_records_and_no_klaviyo_calls() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let tenant = TenantId::parse(o.tenant).unwrap();
    o.t.app
        .store
        .update_install(&tenant, &|current| {
            let mut install = current.expect("installed");
            install.transition(
                InstallStatus::ReauthorizationRequired,
                None,
                jiff::Timestamp::now(),
            );
            Ok(install)
        })
        .await
        .unwrap();
    o.t.klaviyo.recorder().clear();
    // The receiver's cache may still see `installed` for a few seconds; the worker checks anew.
    let body = json!({"id": "7b0d2a52-3f7e-4c55-9e0e-555555555555"}).to_string();
    let response = o
        .post_signed(
            "/api/v1/webhooks/omneo",
            Some("profile.updated"),
            body.as_bytes(),
        )
        .await;
    if response.status() == 202 {
        o.settle().await;
        let failures = o.failures().await;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].step.as_deref(), Some("check_install"));
        assert!(
            failures[0].error.contains("re-authorise"),
            "{}",
            failures[0].error
        );
    } else {
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "not_installed", "{error}");
    }
    let api_calls =
        o.t.klaviyo
            .recorder()
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/"))
            .count();
    assert_eq!(
        api_calls, 0,
        "no Klaviyo call for a tenant that must re-authorise"
    );
}

#[tokio::test]
async fn a_data_conflict_drops_the_phone_once_and_leaves_a_warning() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let created = o.create(customer(94)).await;
    // Another Klaviyo profile holds the number the customer now gives Omneo.
    let taken = "+61400999888";
    o.t.klaviyo
        .seed_profile(json!({"email": "someone.else@example.org", "phone_number": taken}))
        .unwrap();
    o.edit(&created.id, |p| {
        p.mobile_phone = Some(taken.into());
        p.first_name = Some("Conflicted".into());
    });
    o.settle().await;
    let k = o.klaviyo_profile(&created.id).expect("still synced");
    assert_eq!(
        k.first_name.as_deref(),
        Some("Conflicted"),
        "synced without the phone"
    );
    assert_eq!(
        k.phone_number, created.mobile_phone,
        "the phone was left out"
    );
    let failures = o.failures().await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].severity, Severity::Warning);
    assert_eq!(failures[0].step.as_deref(), Some("import_profile"));
    assert!(
        failures[0].error.contains("data conflict"),
        "{}",
        failures[0].error
    );
    assert_eq!(
        o.klaviyo_calls("POST", IMPORT),
        3,
        "the first sync, the 409, the retry without the phone"
    );
}
