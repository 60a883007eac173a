//! `PUT /{tenant}/api/v1/tenant`: registration, update, key rotation, validation.

use reqwest::Method;
use serde_json::{Value, json};
use shared::domain::TenantId;

use crate::support::{TestApp, TestAppOptions};

#[tokio::test]
async fn registration_returns_the_admin_key_once_and_seals_the_secrets() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let registered = t.register("acme").await;
    assert_eq!(registered.admin_key.len(), 43);

    let stored = t
        .app
        .store
        .tenant(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let document = serde_json::to_string(&stored).unwrap();
    assert!(
        !document.contains(&registered.omneo_token),
        "Omneo token stored in plaintext"
    );
    assert!(
        !document.contains(&registered.omneo_signing_secret),
        "signing secret stored in plaintext"
    );
    assert!(
        !document.contains(&registered.admin_key),
        "admin key stored in plaintext"
    );
    assert_eq!(stored.omneo_api_url, t.omneo.api_url("acme"));

    // Updating answers 200 without a key; the key still works.
    let response = t
        .put_tenant(
            "acme",
            &json!({"omneo_api_url": "https://api.acme.example.com"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"tenant": "acme"}));
    let stored = t
        .app
        .store
        .tenant(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.omneo_api_url, "https://api.acme.example.com");
}

#[tokio::test]
async fn rotating_the_admin_key_replaces_it() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let old = t.register("acme").await.admin_key;
    let response = t
        .put_tenant("acme", &json!({"rotate_admin_key": true}))
        .await;
    assert_eq!(response.status(), 200);
    let new = response.json::<Value>().await.unwrap()["admin_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    let stored = t
        .app
        .store
        .tenant(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let digest =
        |key: &str| shared::crypto::digest_hex(&secrecy::SecretString::from(key.to_owned()));
    assert_eq!(stored.admin_key_hash, digest(&new));
    assert_ne!(stored.admin_key_hash, digest(&old));
}

#[tokio::test]
async fn bad_registrations_name_the_field_and_store_nothing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let cases = [
        (
            "acme",
            json!({"omneo_signing_secret": "s"}),
            "omneo_api_token",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t"}),
            "omneo_signing_secret",
        ),
        (
            "acme",
            json!({"omneo_api_token": "", "omneo_signing_secret": "s"}),
            "omneo_api_token",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "omneo_api_url": "ftp://x"}),
            "omneo_api_url",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "omneo_api_url": "http://api.acme.getomneo.com"}),
            "omneo_api_url",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "omneo_api_url": "http://10.0.0.8:8080"}),
            "omneo_api_url",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "settings": {"task_queue_name": "globex"}}),
            "settings.task_queue_name",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "colour": "red"}),
            "colour",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "settings": {"coalesce_seconds": 0}}),
            "settings.coalesce_seconds",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "settings": {"namespace": "Bad NS"}}),
            "settings.namespace",
        ),
        (
            "acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s", "settings": {"wat": 1}}),
            "settings.wat",
        ),
        (
            "Acme",
            json!({"omneo_api_token": "t", "omneo_signing_secret": "s"}),
            "tenant",
        ),
    ];
    for (tenant, body, field) in cases {
        let response = t.put_tenant(tenant, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(error["error"]["field"], field, "{body}: {error}");
        }
    }
    assert!(
        t.app
            .store
            .tenant(&TenantId::parse("acme").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // Not even a queue name was reserved for the tenant that was never created.
    let other = TenantId::parse("other").unwrap();
    let name = shared::queue::QueueName::parse("acme-klaviyo-inbound").unwrap();
    assert_eq!(
        t.app.store.reserve_queue_name(&name, &other).await.unwrap(),
        other
    );
}

#[tokio::test]
async fn only_the_operator_may_register() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let admin_key = t.register("acme").await.admin_key;
    let body = json!({"omneo_api_token": "t", "omneo_signing_secret": "s"});
    for bearer in [
        None,
        Some("wrong-token-wrong-token"),
        Some(admin_key.as_str()),
    ] {
        let response = t
            .request(Method::PUT, "/beta/api/v1/tenant", bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{bearer:?}");
    }
}
