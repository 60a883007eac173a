//! Secrets at rest over real sockets and the Firestore emulator: values bound to their place (a
//! copy does not open elsewhere), and key rotation that finishes — an instance on a rotated
//! keyring reports what still needs the old key, re-seals everything
//! (`POST /api/v1/keyring/reseal`), and an instance without the old key then opens every secret.

use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::Value;
use shared::app::OmneoAccessError;
use shared::crypto::CryptoError;
use shared::domain::TenantId;
use shared::store::{InstallStatus, TenantSecret};

use crate::support::{StoreKind, TestApp, TestAppOptions};

/// The key the tenants are first sealed under (`k1`), and the one that replaces it (`k2`).
const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn id(raw: &str) -> TenantId {
    TenantId::parse(raw).unwrap()
}

async fn report(url: &str, method: Method, path: &str, bearer: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_rotation_reports_reseals_and_lets_the_old_key_go() {
    let t = TestApp::spawn(TestAppOptions {
        store: StoreKind::Firestore,
        encryption_key: Some(K1.to_owned()),
        ..TestAppOptions::default()
    })
    .await;
    let acme = t.register("acme").await;
    t.register("globex").await;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let (acme_token, _) = t.stored_tokens("acme").await;
    // An install in flight holds an OAuth state sealed under k1 too.
    let link: Value = t
        .request(
            Method::POST,
            "/acme/api/v1/install/link",
            Some(&acme.admin_key),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let install = t
        .http
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(install.status(), 302);

    // The redeploy: k2 first, k1 kept to open what exists.
    let rotated = t.instance_with_key(&format!("{K2},{K1}")).await;
    let operator = t.operator_token.clone();
    let (status, before) = report(&rotated.url, Method::GET, "/api/v1/keyring", &operator).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["active_key_id"], "k2");
    assert_eq!(before["key_ids"], serde_json::json!(["k2", "k1"]));
    assert_eq!(
        (before["tenants"].as_u64(), before["installs"].as_u64()),
        (Some(2), Some(1))
    );
    // Three secrets per tenant, two tokens for the one install.
    assert_eq!(before["remaining"]["total"], 8, "{before}");
    assert_eq!(before["remaining"]["by_key"]["k1"], 8, "{before}");
    assert_eq!(
        before["pending_oauth_states"]["under_old_keys"], 1,
        "{before}"
    );
    assert_eq!(before["resealed"], 0, "GET changes nothing");

    // Only the operator may look or act.
    for method in [Method::GET, Method::POST] {
        let path = if method == Method::GET {
            "/api/v1/keyring"
        } else {
            "/api/v1/keyring/reseal"
        };
        let (status, _) = report(&rotated.url, method, path, &acme.admin_key).await;
        assert_eq!(status, 401);
    }

    let (status, after) = report(
        &rotated.url,
        Method::POST,
        "/api/v1/keyring/reseal",
        &operator,
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["resealed"], 8, "{after}");
    assert_eq!(after["unreadable"], 0);
    assert_eq!(after["remaining"]["total"], 0, "{after}");
    // Running it again has nothing left to do.
    let (_, again) = report(
        &rotated.url,
        Method::POST,
        "/api/v1/keyring/reseal",
        &operator,
    )
    .await;
    assert_eq!(
        (
            again["resealed"].as_u64(),
            again["remaining"]["total"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // k1 can go: an instance with k2 alone opens every tenant secret and token.
    let k2_only = t.instance_with_key(K2).await;
    let keyring = &k2_only.app.config.keyring;
    for tenant in ["acme", "globex"] {
        let record = k2_only
            .app
            .store
            .tenant(&id(tenant))
            .await
            .unwrap()
            .unwrap();
        for which in [
            TenantSecret::OmneoApiToken,
            TenantSecret::OmneoSigningSecret,
            TenantSecret::WebhookSecret,
        ] {
            assert!(record.open(keyring, which).is_ok(), "{tenant} {which:?}");
        }
    }
    let token = k2_only.app.tokens.access_token(&id("acme")).await.unwrap();
    assert_eq!(token.expose_secret(), acme_token);
    let settings = reqwest::Client::new()
        .get(format!("{}/acme/api/v1/settings", k2_only.url))
        .bearer_auth(&acme.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(settings.status(), 200);
    // …and the old ring alone no longer opens them.
    let k1_only = shared::crypto::Keyring::parse(K1).unwrap();
    let record = k2_only
        .app
        .store
        .tenant(&id("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record
            .open(&k1_only, TenantSecret::OmneoApiToken)
            .unwrap_err(),
        CryptoError::UnknownKey("k2".into())
    );
}

#[tokio::test]
async fn a_sealed_value_copied_to_another_tenant_or_field_does_not_open() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    t.register("acme").await;
    let globex = t.register("globex").await;
    let acme_record = t.app.store.tenant(&id("acme")).await.unwrap().unwrap();

    // Someone with write access to the store copies acme's Omneo token and webhook secret into
    // globex's record, and acme's token into acme's own signing-secret field.
    let copied_token = acme_record.omneo_api_token.clone();
    let copied_secret = acme_record.webhook_secret.clone();
    t.app
        .store
        .update_tenant(&id("globex"), &|current| {
            let mut record = current.unwrap();
            record.omneo_api_token = copied_token.clone();
            record.webhook_secret = copied_secret.clone();
            Ok(record)
        })
        .await
        .unwrap();
    let globex_record = t.app.store.tenant(&id("globex")).await.unwrap().unwrap();
    assert!(matches!(
        t.app.omneo(&globex_record),
        Err(OmneoAccessError::Token(CryptoError::Corrupt))
    ));
    assert!(
        t.app.omneo(&acme_record).is_ok(),
        "in its own place it opens"
    );
    let settings = t
        .request(
            Method::GET,
            "/globex/api/v1/settings",
            Some(&globex.admin_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        settings.status(),
        500,
        "globex's webhook secret does not open"
    );

    let moved = acme_record.omneo_api_token.clone();
    t.app
        .store
        .update_tenant(&id("acme"), &|current| {
            let mut record = current.unwrap();
            record.omneo_signing_secret = moved.clone();
            Ok(record)
        })
        .await
        .unwrap();
    let record = t.app.store.tenant(&id("acme")).await.unwrap().unwrap();
    assert_eq!(
        record
            .open(&t.app.config.keyring, TenantSecret::OmneoSigningSecret)
            .unwrap_err(),
        CryptoError::Corrupt
    );
}
