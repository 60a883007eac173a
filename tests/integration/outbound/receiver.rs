//! `omneo-webhook`'s answers: signatures, shapes, tenants, sizes and an unavailable queue.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::pipeline::{Pipeline, install};
use crate::support::{DownQueue, StoreKind, TestApp, TestAppOptions};

const WEBHOOK: &str = "/api/v1/webhooks/omneo";

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_signatures_are_401_and_nothing_is_enqueued() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let other = install(&o.t, "other", json!({})).await;
    let body = br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-111111111111"}"#;
    let url = format!("{}/{}{WEBHOOK}", o.t.url, o.tenant);
    let post = |signature: Option<String>, body: Vec<u8>| {
        let mut request =
            o.t.http
                .post(&url)
                .header("X-Omneo-Event", "profile.updated")
                .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Omneo-Hmac-SHA256", signature);
        }
        request.send()
    };
    let cases = [
        (
            "wrong key",
            Some(harness::omneo::sign("not-the-secret", body)),
            body.to_vec(),
        ),
        (
            "modified body",
            Some(harness::omneo::sign(
                &o.registered.omneo_signing_secret,
                body,
            )),
            br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-222222222222"}"#.to_vec(),
        ),
        ("missing header", None, body.to_vec()),
        (
            "another tenant's secret",
            Some(harness::omneo::sign(&other.omneo_signing_secret, body)),
            body.to_vec(),
        ),
        ("not hex", Some("zz".repeat(32)), body.to_vec()),
    ];
    for (why, signature, body) in cases {
        let (status, error) = error_of(post(signature, body).await.unwrap()).await;
        assert_eq!(status, 401, "{why}: {error}");
        assert_eq!(error["error"]["code"], "invalid_signature", "{why}");
        assert_eq!(error["error"]["field"], "x-omneo-hmac-sha256", "{why}");
    }
    o.settle().await;
    assert_eq!(o.t.queue.stats().delivered, 0, "nothing was enqueued");
}

#[tokio::test]
async fn shapes_tenants_and_sizes_get_their_status() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let (status, error) = error_of(
        o.post_signed(WEBHOOK, Some("profile.updated"), b"{not json")
            .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{error}"
    );
    let (status, error) = error_of(
        o.post_signed(WEBHOOK, Some("profile.updated"), br#"{"first_name":"x"}"#)
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "id", "{error}");
    let (status, error) = error_of(
        o.post_signed(WEBHOOK, Some("profile.updated"), br#"{"id":"a/b"}"#)
            .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("id")),
        "{error}"
    );
    let (status, error) = error_of(o.post_signed(WEBHOOK, None, br#"{"id":"p-1"}"#).await).await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (400, Some("X-Omneo-Event")),
        "{error}"
    );

    // Unknown events are acknowledged and ignored, so Omneo does not retry them forever.
    let response = o
        .post_signed(WEBHOOK, Some("transaction.created"), br#"{"id":1}"#)
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-task-status"], "ignored");

    // Unknown tenant → 404, whatever the signature.
    let response =
        o.t.request(Method::POST, &format!("/nobody{WEBHOOK}"), None)
            .header("X-Omneo-Event", "profile.updated")
            .header("X-Omneo-Hmac-SHA256", "00")
            .body("{}")
            .send()
            .await
            .unwrap();
    assert_eq!(response.status(), 404);

    // Over 256 KiB → 413.
    let big = format!(r#"{{"id":"p-1","pad":"{}"}}"#, "x".repeat(300 * 1024));
    let (status, error) = error_of(
        o.post_signed(WEBHOOK, Some("profile.updated"), big.as_bytes())
            .await,
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{error}"
    );

    // A valid delivery is 202 with its task; the same delivery again is the same task.
    let body = br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-333333333333","email":"x@shop.test"}"#;
    let first = o.post_signed(WEBHOOK, Some("profile.updated"), body).await;
    let again = o.post_signed(WEBHOOK, Some("profile.updated"), body).await;
    assert_eq!(
        (first.status().as_u16(), again.status().as_u16()),
        (202, 202)
    );
    assert_eq!(first.headers()["x-task-status"], "enqueued");
    assert_eq!(again.headers()["x-task-status"], "duplicate");
    assert_eq!(
        first.headers()["x-task-name"],
        again.headers()["x-task-name"]
    );
    assert_eq!(first.bytes().await.unwrap().len(), 0, "202 has no body");
}

#[tokio::test]
async fn a_tenant_that_is_not_installed_is_404() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let registered = t.register("fresh").await;
    let body = br#"{"id":"p-1"}"#;
    let response = t
        .request(Method::POST, &format!("/fresh{WEBHOOK}"), None)
        .header("X-Omneo-Event", "profile.updated")
        .header(
            "X-Omneo-Hmac-SHA256",
            harness::omneo::sign(&registered.omneo_signing_secret, body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("not_installed")),
        "{error}"
    );
}

#[tokio::test]
async fn a_queue_that_is_down_is_503_and_nothing_is_acknowledged() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let down = o.t.instance_of(o.t.with_queue(Arc::new(DownQueue))).await;
    let url = &down.url;
    let body = br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-444444444444"}"#;
    let response =
        o.t.http
            .post(format!("{url}/{}{WEBHOOK}", o.tenant))
            .header("X-Omneo-Event", "profile.updated")
            .header(
                "X-Omneo-Hmac-SHA256",
                harness::omneo::sign(&o.registered.omneo_signing_secret, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{error}"
    );
}
