//! The `metric` and `data-source-record` targets, called as Omneo reactions call them.

use serde_json::{Value, json};
use shared::domain::DataSourceKind;

use crate::pipeline::{Pipeline, customer};
use crate::support::StoreKind;

fn target(o: &Pipeline, name: &str) -> String {
    format!("{}/{}/api/v1/targets/klaviyo/{name}", o.t.url, o.tenant)
}

#[tokio::test]
async fn a_metric_is_one_event_however_often_it_is_delivered() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let created = o.create(customer(70)).await;
    let event = json!({"data": {"type": "event", "attributes": {
        "properties": {"points": 120},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Points Earned"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": created.email}}}}}});
    for _ in 0..2 {
        let delivery =
            o.t.omneo
                .send_target_call(o.tenant, &target(&o, "metric"), &event)
                .await
                .unwrap();
        assert_eq!(delivery.outcome.status(), Some(202), "{delivery:?}");
    }
    o.settle().await;
    let events = o.t.klaviyo.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].metric, "Points Earned");
    assert_eq!(events[0].properties["points"], 120);
    assert!(!events[0].properties.contains_key("omneo_id_token"));
    assert_eq!(
        events[0].profile_id,
        o.klaviyo_profile(&created.id).unwrap().id
    );

    // Without the envelope, by Klaviyo id, with an ID token.
    let klaviyo_id = o.klaviyo_profile(&created.id).unwrap().id;
    let bare = json!({"type": "event", "attributes": {
        "properties": {}, "unique_id": "order-9",
        "metric": {"data": {"type": "metric", "attributes": {"name": "Reward Ready"}}},
        "profile": {"data": {"type": "profile", "id": klaviyo_id}}}});
    let url = format!("{}?withToken=true", target(&o, "metric"));
    let delivery =
        o.t.omneo
            .send_target_call(o.tenant, &url, &bare)
            .await
            .unwrap();
    assert_eq!(delivery.outcome.status(), Some(202), "{delivery:?}");
    o.settle().await;
    let events = o.t.klaviyo.events();
    let ready = events
        .iter()
        .find(|e| e.metric == "Reward Ready")
        .expect("the event");
    assert_eq!(ready.unique_id, "order-9");
    let token = ready.properties["omneo_id_token"]
        .as_str()
        .expect("an ID token");
    let claims = o.t.omneo.decode_id_token(o.tenant, token).unwrap();
    assert_eq!(claims.pid, created.id, "the token is the profile's");
    assert!(ready.properties["omneo_id_token_expires_at"].is_string());
}

#[tokio::test]
async fn a_metric_must_name_its_metric_and_profile() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    for (body, field) in [
        (
            json!({"data": {"attributes": {"metric": {"data": {"attributes": {"name": "X"}}}}}}),
            "data.attributes.profile",
        ),
        (
            json!({"attributes": {"profile": {"data": {"id": "01H"}}}}),
            "attributes.metric.data.attributes.name",
        ),
        (json!({"data": "nope"}), "data.attributes"),
    ] {
        let delivery =
            o.t.omneo
                .send_target_call(o.tenant, &target(&o, "metric"), &body)
                .await
                .unwrap();
        assert_eq!(delivery.outcome.status(), Some(400), "{delivery:?}");
        let answer: Value = match &delivery.outcome {
            harness::omneo::DeliveryOutcome::Answered { body, .. } => {
                serde_json::from_str(body).unwrap()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
}

#[tokio::test]
async fn records_reach_each_of_the_six_data_sources_by_title_or_short_name() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let sources = o.t.klaviyo.data_sources();
    for (n, kind) in DataSourceKind::ALL.into_iter().enumerate() {
        for (way, name) in [("title", kind.title()), ("short", kind.short_name())] {
            let body = json!({"data_source": name, "record": {"id": format!("{way}-{n}"), "email": "a@shop.test", "n": n}});
            let delivery =
                o.t.omneo
                    .send_target_call(o.tenant, &target(&o, "data-source-record"), &body)
                    .await
                    .unwrap();
            assert_eq!(delivery.outcome.status(), Some(202), "{delivery:?}");
        }
        o.settle().await;
        let id = &sources.iter().find(|s| s.title == kind.title()).unwrap().id;
        let records = o.t.klaviyo.records(id);
        let ids: Vec<&str> = records
            .iter()
            .filter_map(|r| r.record["id"].as_str())
            .collect();
        assert_eq!(
            ids,
            [format!("title-{n}"), format!("short-{n}")],
            "{}",
            kind.title()
        );
    }
    for (body, field) in [
        (
            json!({"data_source": "points", "record": {"id": "1", "email": "a@b.co"}}),
            "data_source",
        ),
        (
            json!({"data_source": "rewards", "record": {"email": "a@b.co"}}),
            "record.id",
        ),
        (
            json!({"data_source": "rewards", "record": {"id": "1"}}),
            "record.email",
        ),
        (json!({"record": {"id": "1"}}), "data_source"),
    ] {
        let delivery =
            o.t.omneo
                .send_target_call(o.tenant, &target(&o, "data-source-record"), &body)
                .await
                .unwrap();
        assert_eq!(delivery.outcome.status(), Some(400), "{body}: {delivery:?}");
        let harness::omneo::DeliveryOutcome::Answered { body: answer, .. } = &delivery.outcome
        else {
            panic!("{delivery:?}")
        };
        let answer: Value = serde_json::from_str(answer).unwrap();
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
}

#[tokio::test]
async fn targets_accept_the_shared_secret_instead_of_a_signature() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let created = o.create(customer(80)).await;
    let settings: Value =
        o.t.request(
            reqwest::Method::GET,
            "/acme/api/v1/settings",
            Some(&o.registered.admin_key),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(settings.get("webhook_secret").is_some(), "{settings}");
    let tenant = shared::domain::TenantId::parse(o.tenant).unwrap();
    let record = o.t.app.store.tenant(&tenant).await.unwrap().unwrap();
    let secret = record
        .open(
            &o.t.app.config.keyring,
            shared::store::TenantSecret::WebhookSecret,
        )
        .unwrap();
    let body = json!({"id": created.id});
    let post = |value: &str| {
        o.t.http
            .post(target(&o, "upsert-profile-data"))
            .header("x-omneo-secret", value.to_owned())
            .json(&body)
            .send()
    };
    use secrecy::ExposeSecret as _;
    assert_eq!(post(secret.expose_secret()).await.unwrap().status(), 202);
    assert_eq!(post("wrong").await.unwrap().status(), 401);
    let unsigned =
        o.t.http
            .post(target(&o, "upsert-profile-data"))
            .json(&body)
            .send()
            .await
            .unwrap();
    assert_eq!(unsigned.status(), 401);
}
