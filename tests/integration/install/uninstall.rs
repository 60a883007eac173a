//! Uninstall (product.md §5.7): the Klaviyo webhook goes, the Omneo webhooks are disabled (not
//! deleted), the refresh token is revoked, the account unbound, status `uninstalled`; data sources
//! stay; twice is fine; remote failures change nothing and can be retried.

use harness::sim::FaultRule;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;
use shared::domain::TenantId;
use shared::install::provision::provision;
use shared::klaviyo::oauth::OAuthError;
use shared::omneo::models::WebhookUpdate;
use shared::store::{InstallStatus, TokenSecret};

use super::provision::{install_record, installable};
use crate::support::{StoreKind, TestApp, TestAppOptions};

async fn uninstall(t: &TestApp, tenant: &str, bearer: Option<&str>) -> reqwest::Response {
    t.request(Method::DELETE, &format!("/{tenant}/api/v1/install"), bearer)
        .send()
        .await
        .expect("uninstall request")
}

/// The stored refresh token, in plaintext (to check it was revoked).
async fn refresh_token(t: &TestApp, tenant: &TenantId) -> SecretString {
    let install = install_record(t, tenant).await;
    let tokens = install.tokens.expect("tokens");
    tokens
        .open(&t.app.config.keyring, tenant, TokenSecret::RefreshToken)
        .unwrap()
}

async fn uninstall_twice(store: StoreKind) {
    let t = TestApp::spawn(TestAppOptions {
        store,
        ..TestAppOptions::default()
    })
    .await;
    let (tenant, admin_key) = installable(&t, "acme").await;
    let installed = provision(&t.app, &tenant).await.expect("provisioning");
    // The customer enabled one Omneo webhook meanwhile.
    let record = t.app.store.tenant(&tenant).await.unwrap().unwrap();
    t.app
        .omneo(&record)
        .unwrap()
        .update_webhook(
            &installed.resources.omneo_webhooks["profile.updated"],
            &WebhookUpdate {
                url: None,
                namespace: None,
                is_active: Some(true),
            },
        )
        .await
        .unwrap();
    let refresh = refresh_token(&t, &tenant).await;
    let account = t.klaviyo.options().account_id;
    assert_eq!(
        t.app.store.klaviyo_account_tenant(&account).await.unwrap(),
        None,
        "seeding does not bind; bind as the OAuth callback would"
    );
    t.app
        .store
        .bind_klaviyo_account(&account, &tenant)
        .await
        .unwrap();

    let response = uninstall(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "uninstalled");

    // Klaviyo: webhook gone, data sources kept, refresh token revoked.
    assert!(t.klaviyo.webhooks().is_empty());
    assert_eq!(t.klaviyo.data_sources().len(), 6);
    assert_eq!(t.klaviyo.token_counts().revoked, 1);
    assert!(matches!(
        t.app.oauth.refresh(&refresh).await,
        Err(OAuthError::InvalidGrant(_))
    ));
    // Omneo: all three still there, all disabled.
    let omneo = t.omneo.webhooks("acme");
    assert_eq!(omneo.len(), 3);
    assert!(omneo.iter().all(|w| !w.is_active), "{omneo:?}");
    // Store: unbound, tokens dropped, uninstalled.
    assert_eq!(
        t.app.store.klaviyo_account_tenant(&account).await.unwrap(),
        None
    );
    let install = install_record(&t, &tenant).await;
    assert_eq!(install.status, InstallStatus::Uninstalled);
    assert_eq!(install.tokens, None);
    assert_eq!(install.klaviyo_account_id, None);
    assert_eq!(install.resources.klaviyo_webhook_id, None);
    assert_eq!(install.resources.data_sources.len(), 6);
    // Workers can no longer get a token.
    assert!(t.app.tokens.access_token(&tenant).await.is_err());

    // Again: 200, still uninstalled, and no remote call at all.
    t.klaviyo.recorder().clear();
    t.omneo.recorder().clear();
    let response = uninstall(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "uninstalled");
    assert!(t.klaviyo.recorder().requests().is_empty());
    assert!(t.omneo.recorder().requests().is_empty());
    assert_eq!(t.klaviyo.token_counts().revoked, 1);

    // Reprovisioning an uninstalled tenant is refused: it must install again.
    let response = t
        .request(
            Method::POST,
            "/acme/api/v1/install/reprovision",
            Some(&admin_key),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
}

#[tokio::test]
async fn uninstall_removes_disables_revokes_and_is_safe_twice() {
    uninstall_twice(StoreKind::Memory).await;
}

#[tokio::test]
async fn uninstall_twice_on_firestore() {
    uninstall_twice(StoreKind::Firestore).await;
}

#[tokio::test]
async fn a_remote_failure_changes_nothing_and_a_retry_completes() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, admin_key) = installable(&t, "acme").await;
    provision(&t.app, &tenant).await.expect("provisioning");

    t.klaviyo
        .faults()
        .inject(FaultRule::status("/api/webhooks/", 400, 1).method("DELETE"));
    let response = uninstall(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "uninstall_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("klaviyo_webhook"),
        "{body}"
    );
    let install = install_record(&t, &tenant).await;
    assert_eq!(install.status, InstallStatus::Installed);
    assert!(install.tokens.is_some());
    assert_eq!(t.klaviyo.webhooks().len(), 1);
    assert_eq!(t.klaviyo.token_counts().revoked, 0);

    let response = uninstall(&t, "acme", Some(&admin_key)).await;
    let status = response.status();
    assert_eq!(status, 200, "{:?}", response.text().await);
    assert!(t.klaviyo.webhooks().is_empty());
    assert_eq!(
        install_record(&t, &tenant).await.status,
        InstallStatus::Uninstalled
    );
}

#[tokio::test]
async fn uninstall_after_klaviyo_refused_the_token_still_completes() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, admin_key) = installable(&t, "acme").await;
    provision(&t.app, &tenant).await.expect("provisioning");
    // The customer removed the app in Klaviyo: the next refresh is invalid_grant.
    t.klaviyo.revoke_all();
    let call = t
        .app
        .tokens
        .call(&tenant, |token| {
            let klaviyo = t.app.klaviyo.clone();
            async move { klaviyo.account_id(&token).await }
        })
        .await;
    assert!(call.is_err());
    assert_eq!(
        install_record(&t, &tenant).await.status,
        InstallStatus::ReauthorizationRequired
    );

    let response = uninstall(&t, "acme", Some(&admin_key)).await;
    assert_eq!(response.status(), 200);
    assert!(t.omneo.webhooks("acme").iter().all(|w| !w.is_active));
    let install = install_record(&t, &tenant).await;
    assert_eq!(install.status, InstallStatus::Uninstalled);
    assert_eq!(install.tokens, None);
}

#[tokio::test]
async fn uninstall_requires_admin_credentials_and_an_install() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let (tenant, admin_key) = installable(&t, "acme").await;
    provision(&t.app, &tenant).await.expect("provisioning");
    let other_key = t.register("other").await.admin_key;

    assert_eq!(uninstall(&t, "acme", None).await.status(), 401);
    assert_eq!(uninstall(&t, "acme", Some("wrong-key")).await.status(), 401);
    assert_eq!(uninstall(&t, "acme", Some(&other_key)).await.status(), 401);
    assert_eq!(
        uninstall(&t, "nobody", Some(&admin_key)).await.status(),
        401
    );
    assert_eq!(
        uninstall(&t, "nobody", Some(&t.operator_token))
            .await
            .status(),
        404
    );
    assert_eq!(
        install_record(&t, &tenant).await.status,
        InstallStatus::Installed,
        "nothing happened"
    );
    assert_eq!(t.klaviyo.webhooks().len(), 1);

    // A tenant that never installed: nothing to uninstall.
    let response = uninstall(&t, "other", Some(&other_key)).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_installed");

    // The operator token works.
    assert_eq!(
        uninstall(&t, "acme", Some(&t.operator_token))
            .await
            .status(),
        200
    );
}
