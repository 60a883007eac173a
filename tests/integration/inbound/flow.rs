//! Klaviyo Flow webhooks: rewards, benefits and interactions, validated at once (400 naming the
//! field, which Klaviyo does not retry), authenticated by the shared secret, and done once per
//! delivery however often it is retried.

use serde_json::{Value, json};

use super::status_and_body;
use crate::pipeline::{Linked, Pipeline, customer};
use crate::support::StoreKind;

const REWARDS: &str = "/api/v1/webhooks/klaviyo/rewards";
const BENEFITS: &str = "/api/v1/webhooks/klaviyo/benefits";
const INTERACTIONS: &str = "/api/v1/webhooks/klaviyo/interactions";

async fn call(o: &Pipeline, path: &str, body: &Value) -> reqwest::Response {
    let secret = o.webhook_secret();
    o.post(
        path,
        &[("x-omneo-secret", &secret)],
        body.to_string().as_bytes(),
    )
    .await
}

async fn start(store: StoreKind) -> (Pipeline, Linked) {
    let o = Pipeline::start(store, json!({"default_region": "7"})).await;
    let l = o.linked(customer(70)).await;
    (o, l)
}

async fn each_action_happens(store: StoreKind) {
    let (o, l) = start(store).await;
    let reward = json!({
        "person_id": l.klaviyo_id,
        "data": {"reward_definition_id": 12, "amount": 15.5, "expires_at": "2027-01-31T00:00:00Z",
                 "meta": {"flow": "Welcome"}},
        "idempotency_key": "welcome-reward-1"
    });
    let response = call(&o, REWARDS, &reward).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-task-status"], "enqueued");
    let benefit = json!({"email": l.email, "data": {"benefit_definition_id": "free-coffee"}});
    assert_eq!(call(&o, BENEFITS, &benefit).await.status(), 202);
    let interaction = json!({
        "person_id": l.klaviyo_id,
        "data": {"action": "view", "channel": "email", "signal": 1, "name": "Opened the welcome email"}
    });
    assert_eq!(call(&o, INTERACTIONS, &interaction).await.status(), 202);
    o.settle().await;

    let rewards = o.t.omneo.rewards(o.tenant);
    assert_eq!(rewards.len(), 1, "{rewards:?}");
    let issued = &rewards[0];
    assert_eq!(issued.profile_id, l.omneo.id);
    assert_eq!(issued.reward_definition_id, json!(12));
    assert_eq!((issued.value_initial, issued.value_remaining), (15.5, 15.5));
    assert_eq!(
        issued.region_id,
        Some(json!("7")),
        "the tenant's default_region"
    );
    assert_eq!(issued.expires_at.as_deref(), Some("2027-01-31 00:00:00"));
    assert_eq!(issued.meta, Some(json!({"flow": "Welcome"})));
    assert!(issued.external_id.is_some());

    let benefits = o.t.omneo.benefits(o.tenant);
    assert_eq!(benefits.len(), 1);
    assert_eq!(benefits[0].profile_id, l.omneo.id, "matched by email");
    assert_eq!(benefits[0].benefit_definition_id, json!("free-coffee"));

    let interactions = o.interactions(&l.omneo.id);
    assert_eq!(interactions.len(), 1);
    assert_eq!(
        (
            interactions[0].action.as_str(),
            interactions[0].channel.as_str(),
            interactions[0].signal,
            interactions[0].name.as_str(),
            interactions[0].namespace.as_str()
        ),
        ("view", "email", 1, "Opened the welcome email", "klaviyo")
    );
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn each_action_happens_once() {
    each_action_happens(StoreKind::Memory).await;
}

#[tokio::test]
async fn each_action_happens_once_on_firestore() {
    each_action_happens(StoreKind::Firestore).await;
}

async fn five_deliveries_make_one_reward(store: StoreKind) {
    let (o, l) = start(store).await;
    let keyed = json!({"person_id": l.klaviyo_id, "idempotency_key": "order-77",
                       "data": {"reward_definition_id": "r1", "amount": 5}});
    let unkeyed =
        json!({"person_id": l.klaviyo_id, "data": {"reward_definition_id": "r2", "amount": 7}});
    for round in 0..5 {
        for body in [&keyed, &unkeyed] {
            let response = call(&o, REWARDS, body).await;
            assert_eq!(response.status(), 202);
            let expected = if round == 0 { "enqueued" } else { "duplicate" };
            assert_eq!(
                response.headers()["x-task-status"],
                expected,
                "round {round}"
            );
        }
        o.settle().await;
    }
    // The same key with another body is the same delivery (the caller said so).
    let mut changed = keyed.clone();
    changed["data"]["amount"] = json!(500);
    assert_eq!(call(&o, REWARDS, &changed).await.status(), 202);
    o.settle().await;
    let rewards = o.t.omneo.rewards(o.tenant);
    let mut amounts: Vec<f64> = rewards.iter().map(|r| r.value_initial).collect();
    amounts.sort_by(f64::total_cmp);
    assert_eq!(amounts, [5.0, 7.0], "one reward per delivery: {rewards:?}");
}

#[tokio::test]
async fn the_same_delivery_five_times_is_one_reward() {
    five_deliveries_make_one_reward(StoreKind::Memory).await;
}

#[tokio::test]
async fn the_same_delivery_five_times_is_one_reward_on_firestore() {
    five_deliveries_make_one_reward(StoreKind::Firestore).await;
}

#[tokio::test]
async fn a_new_task_for_a_delivery_already_done_does_nothing() {
    let (o, l) = start(StoreKind::Memory).await;
    let body =
        json!({"person_id": l.klaviyo_id, "data": {"reward_definition_id": "r1", "amount": 5}});
    assert_eq!(call(&o, REWARDS, &body).await.status(), 202);
    o.settle().await;
    // Cloud Tasks forgets a task name after about an hour; a retry by Klaviyo later in the day
    // makes a new task, which the worker's marker stops.
    let tenant = shared::domain::TenantId::parse(o.tenant).unwrap();
    let hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(body.to_string().as_bytes()))
    };
    let key = shared::store::IdempotencyKey::new(&tenant, "flow", &["rewards", "body", &hash]);
    assert_eq!(
        o.t.app
            .store
            .claim(&key, "probe", std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        shared::store::Claim::Done,
        "the delivery is marked done"
    );
    assert_eq!(o.t.omneo.rewards(o.tenant).len(), 1);
}

#[tokio::test]
async fn bad_calls_are_400_naming_the_field() {
    let (o, l) = start(StoreKind::Memory).await;
    let id = l.klaviyo_id.as_str();
    let cases: Vec<(&str, Value, &str)> = vec![
        (REWARDS, json!({"person_id": id}), "data"),
        (
            REWARDS,
            json!({"person_id": id, "data": {"amount": 5}}),
            "data.reward_definition_id",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": 1}}),
            "data.amount",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": 1, "amount": "ten"}}),
            "data.amount",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": 1, "amount": -5}}),
            "data.amount",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": "", "amount": 5}}),
            "data.reward_definition_id",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": 1, "amount": 5, "expires_at": "soon"}}),
            "data.expires_at",
        ),
        (
            REWARDS,
            json!({"person_id": id, "data": {"reward_definition_id": 1, "amount": 5, "ammount": 5}}),
            "data.ammount",
        ),
        (
            REWARDS,
            json!({"data": {"reward_definition_id": 1, "amount": 5}}),
            "person_id",
        ),
        (
            REWARDS,
            json!({"person_id": " ", "email": "", "data": {"reward_definition_id": 1, "amount": 5}}),
            "person_id",
        ),
        (
            REWARDS,
            json!({"person_id": "not/an id", "data": {"reward_definition_id": 1, "amount": 5}}),
            "person_id",
        ),
        (
            BENEFITS,
            json!({"person_id": id, "data": {}}),
            "data.benefit_definition_id",
        ),
        (
            BENEFITS,
            json!({"person_id": id, "data": {"benefit_definition_id": true}}),
            "data.benefit_definition_id",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"channel": "email", "signal": 1, "name": "n"}}),
            "data.action",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "dance", "channel": "email", "signal": 1, "name": "n"}}),
            "data.action",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "view", "channel": "fax", "signal": 1, "name": "n"}}),
            "data.channel",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "view", "channel": "email", "signal": 2, "name": "n"}}),
            "data.signal",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "view", "channel": "email", "name": "n"}}),
            "data.signal",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "view", "channel": "email", "signal": 1}}),
            "data.name",
        ),
        (
            INTERACTIONS,
            json!({"person_id": id, "data": {"action": "view", "channel": "email", "signal": 1, "name": "  "}}),
            "data.name",
        ),
    ];
    let before = o.t.queue.stats().attempts;
    for (path, body, field) in cases {
        let (status, error) = status_and_body(call(&o, path, &body).await).await;
        assert_eq!(status, 400, "{path} {body}: {error}");
        assert_eq!(error["error"]["field"], field, "{path} {body}: {error}");
    }
    let (status, error) = status_and_body(
        o.post(
            REWARDS,
            &[("x-omneo-secret", &o.webhook_secret())],
            b"{oops",
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    o.settle().await;
    assert_eq!(o.t.queue.stats().attempts, before, "nothing enqueued");
    // Quoted numbers from a template are read as numbers.
    let quoted = json!({"person_id": id, "data": {"reward_definition_id": 1, "amount": "2.5"}});
    assert_eq!(call(&o, REWARDS, &quoted).await.status(), 202);
    let quoted = json!({"person_id": id, "data": {"action": "view", "channel": "sms", "signal": "-1", "name": "n"}});
    assert_eq!(call(&o, INTERACTIONS, &quoted).await.status(), 202);
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401() {
    let (o, l) = start(StoreKind::Memory).await;
    let body = json!({"person_id": l.klaviyo_id, "data": {"reward_definition_id": 1, "amount": 5}})
        .to_string();
    for headers in [vec![("x-omneo-secret", "guess")], vec![]] {
        let (status, error) =
            status_and_body(o.post(REWARDS, &headers, body.as_bytes()).await).await;
        assert_eq!(status, 401, "{error}");
        assert_eq!(error["error"]["code"], "invalid_signature");
        assert_eq!(error["error"]["field"], "x-omneo-secret");
    }
    o.settle().await;
    assert!(o.t.omneo.rewards(o.tenant).is_empty());
}

#[tokio::test]
async fn an_unmatched_profile_is_a_failure_that_replays_once_the_profile_exists() {
    let (o, _) = start(StoreKind::Memory).await;
    let body = json!({"email": "newcomer@shop.test", "idempotency_key": "k-1",
                      "data": {"reward_definition_id": 3, "amount": 10}});
    assert_eq!(call(&o, REWARDS, &body).await.status(), 202);
    o.settle().await;
    let failures = o.failures().await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].step.as_deref(), Some("find_profile"));
    assert_eq!(failures[0].profile.as_deref(), Some("newcomer@shop.test"));
    assert!(o.t.omneo.rewards(o.tenant).is_empty());

    // The customer signs up in Omneo; the operator replays the failure.
    let mut newcomer = customer(71);
    newcomer.email = Some("newcomer@shop.test".into());
    let profile = o.create(newcomer).await;
    let response =
        o.t.request(
            reqwest::Method::POST,
            &format!("/{}/api/v1/failures/{}/retry", o.tenant, failures[0].id),
            Some(&o.registered.admin_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    o.settle().await;
    let rewards = o.t.omneo.rewards(o.tenant);
    assert_eq!(rewards.len(), 1);
    assert_eq!(rewards[0].profile_id, profile.id);
}
