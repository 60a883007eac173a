//! `klaviyo-webhook`'s system-webhook answers: signatures, the delivery's origin and age, shapes,
//! tenants, secret rotation and an unavailable queue.

use std::sync::Arc;

use harness::klaviyo::{KlaviyoSimOptions, SystemEvent, topics};
use secrecy::ExposeSecret as _;
use serde_json::json;
use shared::domain::TenantId;

use super::{Handmade, SYSTEM, status_and_body};
use crate::pipeline::{Linked, Pipeline, customer};
use crate::support::{DownQueue, StoreKind, TestApp, TestAppOptions};

async fn linked() -> (Pipeline, Linked) {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(60)).await;
    (o, l)
}

fn unsubscribe(l: &Linked) -> SystemEvent {
    SystemEvent::new(
        topics::UNSUBSCRIBED_FROM_EMAIL,
        &l.klaviyo_id,
        Some(&l.email),
    )
}

/// Asserts a 401 `invalid_signature` naming `field`, and that no task ran since the queue's
/// attempts were `before`.
async fn assert_refused(
    o: &Pipeline,
    before: u64,
    response: reqwest::Response,
    field: &str,
    why: &str,
) {
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 401, "{why}: {body}");
    assert_eq!(body["error"]["code"], "invalid_signature", "{why}");
    assert_eq!(body["error"]["field"], field, "{why}");
    o.settle().await;
    assert_eq!(o.t.queue.stats().attempts, before, "{why}: no task");
}

#[tokio::test]
async fn a_genuine_delivery_is_accepted_and_becomes_one_task_per_profile() {
    let (o, l) = linked().await;
    let other = o.linked(customer(61)).await;
    let made = Handmade::of(
        &o,
        &[
            unsubscribe(&l),
            SystemEvent::new(topics::BOUNCED_EMAIL, &l.klaviyo_id, Some(&l.email)),
            unsubscribe(&other),
        ],
    );
    let response = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-task-status"], "enqueued");
    assert_eq!(response.headers()["x-task-count"], "2");
    assert_eq!(response.content_length(), Some(0));
    // Again, byte for byte: the same two tasks.
    let again = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["x-task-status"], "duplicate");
    o.settle().await;
    assert_eq!(o.interactions(&l.omneo.id).len(), 2);
    assert_eq!(o.interactions(&other.omneo.id).len(), 1);
}

#[tokio::test]
async fn bad_signatures_are_401_and_nothing_is_enqueued() {
    let (o, l) = linked().await;
    let before = o.t.queue.stats().attempts;
    let secret = o.webhook_secret();
    let made = Handmade::of(&o, &[unsubscribe(&l)]);
    let body = made.body.to_string();
    let signed = harness::klaviyo::deliveries::sign(&secret, body.as_bytes(), &made.timestamp);

    let wrong = made.send_signed_with(&o, "not-the-secret").await;
    assert_refused(&o, before, wrong, "klaviyo-signature", "wrong secret").await;

    let tampered = body.replace(&l.email, "someone@else.test");
    let modified = made.send(&o, tampered.as_bytes(), &signed).await;
    assert_refused(&o, before, modified, "klaviyo-signature", "modified body").await;

    let mut retimed = Handmade::of(&o, &[unsubscribe(&l)]);
    retimed.body = made.body.clone();
    retimed.timestamp = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    let response = retimed.send(&o, body.as_bytes(), &signed).await;
    assert_refused(
        &o,
        before,
        response,
        "klaviyo-signature",
        "modified timestamp header",
    )
    .await;

    let unsigned = o
        .post(
            SYSTEM,
            &[
                ("Klaviyo-Webhook-Id", &made.webhook_id),
                ("Klaviyo-Timestamp", &made.timestamp),
            ],
            body.as_bytes(),
        )
        .await;
    assert_refused(&o, before, unsigned, "klaviyo-signature", "no signature").await;

    let no_timestamp = o
        .post(
            SYSTEM,
            &[
                ("Klaviyo-Webhook-Id", &made.webhook_id),
                ("Klaviyo-Signature", &signed),
            ],
            body.as_bytes(),
        )
        .await;
    assert_refused(
        &o,
        before,
        no_timestamp,
        "klaviyo-timestamp",
        "no timestamp header",
    )
    .await;

    let not_hex = made.send(&o, body.as_bytes(), "zz").await;
    assert_refused(&o, before, not_hex, "klaviyo-signature", "not hex").await;

    // The genuine one still goes through.
    let genuine = made.send(&o, body.as_bytes(), &signed).await;
    assert_eq!(genuine.status(), 202);
}

#[tokio::test]
async fn deliveries_from_elsewhere_or_too_old_are_401() {
    let (o, l) = linked().await;
    let before = o.t.queue.stats().attempts;
    let secret = o.webhook_secret();

    let mut header_mismatch = Handmade::of(&o, &[unsubscribe(&l)]);
    header_mismatch.webhook_id = "01JOTHERWEBHOOK".into();
    let response = header_mismatch.send_signed_with(&o, &secret).await;
    assert_refused(&o, before, response, "klaviyo-webhook-id", "header ≠ meta").await;

    let mut not_ours = Handmade::of(&o, &[unsubscribe(&l)]);
    not_ours.webhook_id = "01JOTHERWEBHOOK".into();
    not_ours.body["meta"]["klaviyo_webhook_id"] = json!("01JOTHERWEBHOOK");
    let response = not_ours.send_signed_with(&o, &secret).await;
    assert_refused(
        &o,
        before,
        response,
        "meta.klaviyo_webhook_id",
        "another webhook",
    )
    .await;

    let mut other_account = Handmade::of(&o, &[unsubscribe(&l)]);
    other_account.body["meta"]["klaviyo_account_id"] = json!("OtherAcc");
    let response = other_account.send_signed_with(&o, &secret).await;
    assert_refused(
        &o,
        before,
        response,
        "meta.klaviyo_account_id",
        "another account",
    )
    .await;

    for (minutes, why) in [(-6, "stale"), (6, "from the future")] {
        let mut aged = Handmade::of(&o, &[unsubscribe(&l)]);
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
        aged.body["meta"]["timestamp"] = json!(at);
        let response = aged.send_signed_with(&o, &secret).await;
        assert_refused(&o, before, response, "meta.timestamp", why).await;
    }

    // Four minutes old is inside the window; the header's hours of skew do not matter.
    let mut recent = Handmade::of(&o, &[unsubscribe(&l)]);
    recent.body["meta"]["timestamp"] =
        json!(jiff::Timestamp::now() - jiff::SignedDuration::from_mins(4));
    recent.timestamp = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(9 * 3600),
    );
    let response = recent.send_signed_with(&o, &secret).await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_timestamp_header_hours_off_still_verifies() {
    let o = Pipeline::start_with(
        StoreKind::Memory,
        KlaviyoSimOptions {
            delivery_timestamp_skew: jiff::SignedDuration::from_hours(-7),
            ..KlaviyoSimOptions::default().without_rate_limits()
        },
        json!({}),
    )
    .await;
    let l = o.linked(customer(62)).await;
    let delivery = o.deliver(vec![unsubscribe(&l)]).await;
    let sent = httpdate::parse_http_date(&delivery.timestamp).unwrap();
    assert!(
        std::time::SystemTime::now()
            .duration_since(sent)
            .unwrap()
            .as_secs()
            > 6 * 3600,
        "the header is hours off: {}",
        delivery.timestamp
    );
    assert!(
        !o.t.omneo
            .comms(o.tenant, &l.omneo.id)
            .unwrap()
            .email_subscribed()
    );
}

/// Rotates the tenant's `webhook_secret` through the settings API; the old one.
async fn rotate(o: &Pipeline) -> String {
    let old = o.webhook_secret();
    let response =
        o.t.request(
            reqwest::Method::PATCH,
            &format!("/{}/api/v1/settings", o.tenant),
            Some(&o.registered.admin_key),
        )
        .json(&json!({"webhook_secret": "a-new-shared-secret-of-32-chars!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(o.webhook_secret(), "a-new-shared-secret-of-32-chars!");
    old
}

/// Waits until every receiver instance has re-read the tenant (its view is kept this long).
async fn outlive_the_tenant_cache() {
    tokio::time::sleep(shared::receivers::CACHE_TTL).await;
}

#[tokio::test]
async fn the_previous_secret_counts_during_its_grace_only() {
    let (o, l) = linked().await;
    let old = rotate(&o).await;
    outlive_the_tenant_cache().await;
    let made = Handmade::of(&o, &[unsubscribe(&l)]);
    assert_eq!(
        made.send_signed_with(&o, &old).await.status(),
        202,
        "inside"
    );
    let new = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(new.status(), 202, "and the new one");
    let flow = o
        .post(
            "/api/v1/webhooks/klaviyo/interactions",
            &[("x-omneo-secret", &old)],
            json!({"email": l.email, "data": {"action": "view", "channel": "email", "signal": 0, "name": "Opened"}})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(flow.status(), 202, "Flow webhooks too");
}

#[tokio::test]
async fn the_previous_secret_is_refused_once_its_grace_ended() {
    let (o, l) = linked().await;
    let old = rotate(&o).await;
    let before = o.t.queue.stats().attempts;
    // End the grace at once.
    let id = TenantId::parse(o.tenant).unwrap();
    o.t.app
        .store
        .update_tenant(&id, &|current| {
            let mut tenant = current.expect("registered");
            let previous = tenant.previous_webhook_secret.as_mut().expect("kept");
            previous.accepted_until = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
            Ok(tenant)
        })
        .await
        .unwrap();
    outlive_the_tenant_cache().await;
    let made = Handmade::of(&o, &[unsubscribe(&l)]);
    let response = made.send_signed_with(&o, &old).await;
    assert_refused(
        &o,
        before,
        response,
        "klaviyo-signature",
        "outside the grace",
    )
    .await;
    let response = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(response.status(), 202, "the new secret");
}

#[tokio::test]
async fn shape_errors_are_400_naming_the_field() {
    let (o, l) = linked().await;
    let secret = o.webhook_secret();
    let o = &o;
    let send = |body: String| {
        let made = Handmade::of(o, &[]);
        let signature =
            harness::klaviyo::deliveries::sign(&secret, body.as_bytes(), &made.timestamp);
        async move { made.send(o, body.as_bytes(), &signature).await }
    };
    let (status, body) = status_and_body(send("{not json".into()).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let valid = Handmade::of(o, &[unsubscribe(&l)]).body;
    let cases = [
        ("/meta", "meta"),
        ("/meta/timestamp", "meta.timestamp"),
        (
            "/data/0/payload/data/attributes/datetime",
            "data[0].payload.data.attributes.datetime",
        ),
        (
            "/data/0/payload/data/relationships",
            "data[0].payload.data.relationships",
        ),
        ("/data/0/external_id", "data[0].external_id"),
    ];
    for (pointer, field) in cases {
        let mut broken = valid.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        broken
            .pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        let (status, body) = status_and_body(send(broken.to_string()).await).await;
        assert_eq!(status, 400, "{pointer}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{pointer}");
        assert_eq!(body["error"]["field"], field, "{pointer}");
    }
    let mut bad_time = valid.clone();
    bad_time["data"][0]["payload"]["data"]["attributes"]["datetime"] = json!("yesterday");
    let (status, body) = status_and_body(send(bad_time.to_string()).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["field"],
        "data[0].payload.data.attributes.datetime"
    );
    let mut bad_profile = valid;
    bad_profile["data"][0]["payload"]["data"]["relationships"]["profile"]["data"]["id"] =
        json!("has spaces/and slashes");
    let (status, body) = status_and_body(send(bad_profile.to_string()).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["field"],
        "data[0].payload.data.relationships.profile.data.id"
    );
}

#[tokio::test]
async fn topics_we_do_not_act_on_are_ignored() {
    let (o, l) = linked().await;
    let made = Handmade::of(
        &o,
        &[SystemEvent::new(
            topics::DROPPED_EMAIL,
            &l.klaviyo_id,
            Some(&l.email),
        )],
    );
    let before = o.t.queue.stats().attempts;
    let response = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-task-status"], "ignored");
    o.settle().await;
    assert_eq!(o.t.queue.stats().attempts, before);
}

#[tokio::test]
async fn unknown_and_uninstalled_tenants_are_404() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let response = t
        .request(
            reqwest::Method::POST,
            "/nobody/api/v1/webhooks/klaviyo/system",
            None,
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    t.register("fresh").await;
    let flow = |secret: String| {
        t.request(
            reqwest::Method::POST,
            "/fresh/api/v1/webhooks/klaviyo/rewards",
            None,
        )
        .header("x-omneo-secret", secret)
        .body("{}")
        .send()
    };
    let (status, body) = status_and_body(flow("whatever".into()).await.unwrap()).await;
    assert_eq!(
        status, 401,
        "authentication comes before the install check: {body}"
    );
    let id = TenantId::parse("fresh").unwrap();
    let record = t.app.store.tenant(&id).await.unwrap().unwrap();
    let secret = record
        .open(
            &t.app.config.keyring,
            shared::store::TenantSecret::WebhookSecret,
        )
        .unwrap();
    let response = flow(secret.expose_secret().to_owned()).await.unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_installed")),
        "{body}"
    );
}

#[tokio::test]
async fn a_queue_that_is_down_is_503_and_nothing_is_acknowledged() {
    let (o, l) = linked().await;
    let down = o.t.instance_of(o.t.with_queue(Arc::new(DownQueue))).await;
    let made = Handmade::of(&o, &[unsubscribe(&l)]);
    let body = made.body.to_string();
    let signature =
        harness::klaviyo::deliveries::sign(&o.webhook_secret(), body.as_bytes(), &made.timestamp);
    let response =
        o.t.http
            .post(format!("{}/{}{SYSTEM}", down.url, o.tenant))
            .header("Klaviyo-Webhook-Id", &made.webhook_id)
            .header("Klaviyo-Timestamp", &made.timestamp)
            .header("Klaviyo-Signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
    let (status, body) = status_and_body(response).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
}
