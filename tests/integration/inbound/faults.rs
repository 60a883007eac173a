//! Faults from the simulated Omneo while inbound work runs: retried or recorded as product.md §8
//! says, and no side effect twice — a comms update, an interaction or a reward.

use std::time::Duration;

use harness::klaviyo::{SystemEvent, topics};
use harness::sim::FaultRule;
use serde_json::json;

use super::status_and_body;
use crate::pipeline::{Linked, Pipeline, customer};
use crate::support::StoreKind;

fn unsubscribes(l: &Linked) -> Vec<SystemEvent> {
    vec![
        SystemEvent::new(
            topics::UNSUBSCRIBED_FROM_EMAIL,
            &l.klaviyo_id,
            Some(&l.email),
        ),
        SystemEvent::new(topics::UNSUBSCRIBED_FROM_SMS, &l.klaviyo_id, Some(&l.email)),
    ]
}

fn path(o: &Pipeline, rest: &str) -> String {
    format!("/{}/api/v3{rest}", o.tenant)
}

async fn transient_faults_heal(store: StoreKind) {
    let o = Pipeline::start(store, json!({})).await;
    let mut start = customer(80);
    start.comms.sms_promo = Some(true);
    let l = o.linked(start).await;
    let comms_path = path(&o, &format!("/profiles/{}/attributes/comms", l.omneo.id));
    let faults = o.t.omneo.faults();
    // More 503s than one call retries: the task itself is retried by the queue.
    faults.inject(FaultRule::status(&comms_path, 503, 6).method("PUT"));
    faults.inject(FaultRule::status(&path(&o, "/profiles/search-id"), 500, 2));
    faults.inject(FaultRule::status(&path(&o, "/interactions"), 429, 2).retry_after(1));
    let puts_before = o.comms_updates(&l.omneo.id);
    o.deliver(unsubscribes(&l)).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(
        !comms.email_subscribed() && !comms.sms_subscribed(),
        "{comms:?}"
    );
    assert_eq!(
        o.comms_updates(&l.omneo.id) - puts_before,
        7,
        "six refused, then the one update"
    );
    assert_eq!(o.interactions(&l.omneo.id).len(), 2);
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn transient_omneo_faults_heal_without_duplicates() {
    transient_faults_heal(StoreKind::Memory).await;
}

#[tokio::test]
async fn transient_omneo_faults_heal_without_duplicates_on_firestore() {
    transient_faults_heal(StoreKind::Firestore).await;
}

#[tokio::test]
async fn a_retry_after_the_comms_were_written_writes_only_what_is_missing() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let mut start = customer(81);
    start.comms.sms_promo = Some(true);
    let l = o.linked(start).await;
    let puts_before = o.comms_updates(&l.omneo.id);
    // The first interaction is made; the second fails past one call's retries.
    let interactions = path(&o, "/interactions");
    o.deliver(vec![unsubscribes(&l)[0].clone()]).await;
    o.t.omneo
        .faults()
        .inject(FaultRule::status(&interactions, 502, 8));
    let mut second = unsubscribes(&l)[1].clone();
    second.datetime = jiff::Timestamp::now();
    o.deliver(vec![second]).await;
    assert_eq!(
        o.comms_updates(&l.omneo.id) - puts_before,
        2,
        "one update per delivery, none repeated by the retries"
    );
    assert_eq!(o.interactions(&l.omneo.id).len(), 2, "no interaction twice");
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn a_validation_error_is_recorded_and_its_replay_finishes_the_work() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let mut start = customer(82);
    start.comms.sms_promo = Some(true);
    let l = o.linked(start).await;
    let puts_before = o.comms_updates(&l.omneo.id);
    o.t.omneo
        .faults()
        .inject(FaultRule::status(&path(&o, "/interactions"), 422, 1));
    o.deliver(unsubscribes(&l)).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(!comms.email_subscribed(), "the comms were written first");
    assert!(o.interactions(&l.omneo.id).is_empty());

    // The failure shows in the admin API…
    let response =
        o.t.request(
            reqwest::Method::GET,
            &format!("/{}/api/v1/failures?kind=klaviyo_events", o.tenant),
            Some(&o.registered.admin_key),
        )
        .send()
        .await
        .unwrap();
    let (status, page) = status_and_body(response).await;
    assert_eq!(status, 200, "{page}");
    let failures = page["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{page}");
    assert_eq!(failures[0]["step"], "record_interaction");
    assert_eq!(failures[0]["profile"], l.klaviyo_id.as_str());
    let id = failures[0]["id"].as_str().unwrap();

    // …and its replay records both interactions without touching the comms again.
    let response =
        o.t.request(
            reqwest::Method::POST,
            &format!("/{}/api/v1/failures/{id}/retry", o.tenant),
            Some(&o.registered.admin_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    o.settle().await;
    assert_eq!(o.interactions(&l.omneo.id).len(), 2);
    assert_eq!(o.comms_updates(&l.omneo.id) - puts_before, 1);
}

#[tokio::test]
async fn a_reward_whose_answer_was_lost_is_not_issued_twice() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(83)).await;
    // Omneo issues the reward at once but its answer outlives the 30 s attempt timeout.
    o.t.omneo.faults().inject(FaultRule::slow_answer(
        &path(&o, "/rewards"),
        Duration::from_secs(32),
        1,
    ));
    let body =
        json!({"person_id": l.klaviyo_id, "data": {"reward_definition_id": 9, "amount": 20}});
    let secret = o.webhook_secret();
    let response = o
        .post(
            "/api/v1/webhooks/klaviyo/rewards",
            &[("x-omneo-secret", &secret)],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(response.status(), 202);
    o.settle().await;
    let rewards = o.t.omneo.rewards(o.tenant);
    assert_eq!(rewards.len(), 1, "{rewards:?}");
    assert_eq!(
        o.t.omneo
            .recorder()
            .matching("POST", &path(&o, "/rewards"))
            .len(),
        1,
        "the retry found the reward by its external id"
    );
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}
