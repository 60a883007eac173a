//! Admin/operator authentication on every admin path of the settings and status API
//! (product.md §2, Auth): 401 before anything about the tenant is revealed, 404 only for the
//! operator, and nothing changed by a refused write.

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::store::TokenSecret;

use crate::support::{TestApp, TestAppOptions};

/// Every admin path of this branch, with a valid body for the writes.
fn admin_paths(tenant: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/{tenant}/api/v1/settings"), None),
        (
            Method::PUT,
            format!("/{tenant}/api/v1/settings"),
            Some(json!({"namespace": "changed"})),
        ),
        (
            Method::PATCH,
            format!("/{tenant}/api/v1/settings"),
            Some(json!({"namespace": "changed"})),
        ),
        (Method::GET, format!("/{tenant}/api/v1/install"), None),
    ]
}

/// Sends `method path` with the given `Authorization` header value (none when `None`).
async fn send(
    t: &TestApp,
    method: &Method,
    path: &str,
    body: Option<&Value>,
    authorization: Option<HeaderValue>,
) -> (u16, Value) {
    let mut request = t.request(method.clone(), path, None);
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn bearer(token: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"))
}

async fn stored_namespace(t: &TestApp, tenant: &str) -> String {
    t.app
        .store
        .tenant(&TenantId::parse(tenant).unwrap())
        .await
        .unwrap()
        .expect("tenant")
        .settings
        .namespace
}

#[tokio::test]
async fn bad_credentials_are_refused_on_every_admin_path() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    t.register("acme").await;
    let other = t.register("other").await.admin_key;
    for (method, path, body) in admin_paths("acme") {
        for authorization in [
            None,
            bearer("wrong-token-wrong-token-wrong-token"),
            bearer(&other),
        ] {
            let (status, error) =
                send(&t, &method, &path, body.as_ref(), authorization.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {authorization:?}");
            assert_eq!(error["error"]["code"], "unauthorized", "{error}");
        }
    }
    assert_eq!(stored_namespace(&t, "acme").await, "klaviyo");
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    let malformed = [
        HeaderValue::from_static("Bearer"),
        HeaderValue::from_static("Bearer "),
        HeaderValue::from_static("Bearer    "),
        HeaderValue::from_str(&key).unwrap(),
        HeaderValue::from_str(&format!("Bearer{key}")).unwrap(),
        HeaderValue::from_str(&format!("Basic {key}")).unwrap(),
        HeaderValue::from_str(&format!("Token {key}")).unwrap(),
        HeaderValue::from_str(&format!("Bearer {key} {key}")).unwrap(),
        HeaderValue::from_str(&format!("Bearer {key}x")).unwrap(),
        HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
    ];
    for (method, path, body) in admin_paths("acme") {
        for value in &malformed {
            let (status, _) = send(&t, &method, &path, body.as_ref(), Some(value.clone())).await;
            assert_eq!(status, 401, "{method} {path} with {value:?}");
        }
    }
    assert_eq!(stored_namespace(&t, "acme").await, "klaviyo");
    // The scheme is case-insensitive (RFC 9110 §11.1): the same key works with "bearer".
    let lower = HeaderValue::from_str(&format!("bearer {key}")).unwrap();
    let (status, _) = send(&t, &Method::GET, "/acme/api/v1/settings", None, Some(lower)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn unknown_tenants_are_401_to_everyone_but_the_operator() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    for (method, path, body) in admin_paths("ghost") {
        for authorization in [None, bearer("wrong-token-wrong-token"), bearer(&key)] {
            let (status, _) = send(&t, &method, &path, body.as_ref(), authorization.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {authorization:?}");
        }
        let (status, error) =
            send(&t, &method, &path, body.as_ref(), bearer(&t.operator_token)).await;
        assert_eq!(status, 404, "{method} {path} as the operator: {error}");
        assert_eq!(error["error"]["code"], "not_found");
    }
    // A malformed tenant id: 401 to a non-operator, 400 naming `tenant` to the operator.
    for (method, path, body) in admin_paths("Not_A-Tenant!") {
        let (status, _) = send(&t, &method, &path, body.as_ref(), bearer(&key)).await;
        assert_eq!(status, 401, "{method} {path}");
        let (status, error) =
            send(&t, &method, &path, body.as_ref(), bearer(&t.operator_token)).await;
        assert_eq!(status, 400, "{method} {path}: {error}");
        assert_eq!(error["error"]["field"], "tenant");
    }
    assert!(
        t.app
            .store
            .tenant(&TenantId::parse("ghost").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn the_tenant_admin_key_and_the_operator_token_are_accepted() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    for token in [key.as_str(), t.operator_token.as_str()] {
        for (method, path, body) in admin_paths("acme") {
            let (status, answer) = send(&t, &method, &path, body.as_ref(), bearer(token)).await;
            assert_eq!(status, 200, "{method} {path}: {answer}");
            assert_eq!(
                answer.get("tenant").is_some(),
                path.ends_with("/install"),
                "{answer}"
            );
        }
    }
    assert_eq!(stored_namespace(&t, "acme").await, "changed");
}

#[tokio::test]
async fn install_status_shows_resources_and_token_health_but_never_a_token() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    let tenant = TenantId::parse("acme").unwrap();
    let ts = |at: jiff::Timestamp| serde_json::to_value(at).unwrap();
    // Reconciliation before its first schedule (product.md §10).
    let reconciliation = |status: &str| {
        json!({
            "interval_minutes": 60,
            "status": status,
            "missing_scopes": [],
            "last_scheduled_at": null,
            "next_due_at": null,
            "outbound": {"since": null, "last": null},
            "inbound": {"events_after": null, "last": null},
        })
    };

    // Registered, never installed: pending.
    let registered_at = t
        .app
        .store
        .tenant(&tenant)
        .await
        .unwrap()
        .unwrap()
        .created_at;
    let (status, body) = send(&t, &Method::GET, "/acme/api/v1/install", None, bearer(&key)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "tenant": "acme",
            "status": "pending",
            "klaviyo_account_id": null,
            "resources": {"data_sources": {}, "klaviyo_webhook_id": null, "omneo_webhooks": {}, "queues": []},
            "token": null,
            "last_error": null,
            "updated_at": ts(registered_at),
            "reconciliation": reconciliation("not_installed"),
        })
    );

    // Installed with resources and a past error.
    t.seed_tokens("acme", shared::store::InstallStatus::Installed)
        .await;
    // At the microsecond precision the stores keep.
    let at = jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond()).unwrap();
    let install = t
        .app
        .store
        .update_install(&tenant, &|install| {
            let mut install = install.expect("install");
            install.resources.data_sources = [("Omneo Dates".to_owned(), "01DS".to_owned())].into();
            install.resources.klaviyo_webhook_id = Some("01WH".into());
            install.resources.omneo_webhooks =
                [("profile.updated".to_owned(), "17".to_owned())].into();
            install.resources.queues =
                vec![shared::queue::QueueName::parse("acme-klaviyo-inbound").unwrap()];
            install.last_error = Some(shared::store::StepError {
                step: shared::store::InstallStep::OmneoWebhooks,
                message: "Omneo answered 503".into(),
                at,
            });
            Ok(install)
        })
        .await
        .unwrap();
    let tokens = install.tokens.clone().unwrap();
    let (status, body) = send(
        &t,
        &Method::GET,
        "/acme/api/v1/install",
        None,
        bearer(&t.operator_token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "tenant": "acme",
            "status": "installed",
            "klaviyo_account_id": t.klaviyo.options().account_id,
            "resources": {
                "data_sources": {"Omneo Dates": "01DS"},
                "klaviyo_webhook_id": "01WH",
                "omneo_webhooks": {"profile.updated": "17"},
                "queues": ["acme-klaviyo-inbound"],
            },
            "token": {"expires_at": ts(tokens.expires_at), "last_refreshed_at": null, "scopes": tokens.scopes},
            "last_error": {"step": "omneo_webhooks", "message": "Omneo answered 503", "at": ts(at)},
            "updated_at": ts(install.updated_at),
            "reconciliation": reconciliation("on"),
        })
    );
    let text = body.to_string();
    let keyring = &t.app.config.keyring;
    for (which, sealed) in [
        (TokenSecret::AccessToken, &tokens.access_token),
        (TokenSecret::RefreshToken, &tokens.refresh_token),
    ] {
        let plaintext = tokens.open(keyring, &install.tenant, which).unwrap();
        assert!(!text.contains(secrecy::ExposeSecret::expose_secret(&plaintext)));
        assert!(!text.contains(sealed.as_str()));
    }
}
