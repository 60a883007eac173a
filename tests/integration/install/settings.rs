//! `GET`/`PUT`/`PATCH /{tenant}/api/v1/settings` (product.md §2, §4): masking, merge vs replace,
//! validation that names the field and stores nothing, the master list check against Klaviyo,
//! `webhook_secret` rotation (stored first and pending until Klaviyo's webhook has it; the old
//! secret kept for 10 minutes after), and the queue settings (valid, reserved, fixed while
//! installed).

use std::time::Duration;

use harness::sim::FaultRule;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::install::settings_api::MASK;

use shared::klaviyo::models::NewWebhook;
use shared::store::{InstallStatus, Tenant, TenantSecret};

use crate::support::{TestApp, TestAppOptions};

const PATH: &str = "/acme/api/v1/settings";

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

async fn stored(t: &TestApp) -> Tenant {
    t.app.store.tenant(&acme()).await.unwrap().expect("tenant")
}

/// One of the tenant's secrets, opened.
fn open(t: &TestApp, tenant: &Tenant, which: TenantSecret) -> String {
    tenant
        .open(&t.app.config.keyring, which)
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// The secret the last `webhook_secret` change replaced, opened (even after its grace).
fn previous(t: &TestApp, tenant: &Tenant) -> String {
    let far_past = jiff::Timestamp::UNIX_EPOCH;
    tenant
        .previous_webhook_secret(&t.app.config.keyring, far_past)
        .unwrap()
        .expect("a previous secret")
        .expose_secret()
        .to_owned()
}

async fn call(t: &TestApp, method: Method, key: &str, body: Option<&Value>) -> (u16, Value) {
    let mut request = t.request(method, PATH, Some(key));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("settings request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// A Klaviyo system webhook made through the app's client, recorded as the install's webhook.
async fn seed_webhook(t: &TestApp, secret: &str) -> String {
    let token = t.app.tokens.access_token(&acme()).await.unwrap();
    let webhook = t
        .app
        .klaviyo
        .create_webhook(
            &token,
            &NewWebhook {
                name: "Omneo acme".into(),
                endpoint_url: format!("{}/acme/api/v1/webhooks/klaviyo/system", t.url)
                    .parse()
                    .unwrap(),
                secret_key: SecretString::from(secret.to_owned()),
                description: None,
                topics: vec!["event:klaviyo.bounced_email".into()],
            },
        )
        .await
        .expect("create webhook");
    let id = webhook.id.clone();
    t.app
        .store
        .update_install(&acme(), &|install| {
            let mut install = install.expect("install");
            install.resources.klaviyo_webhook_id = Some(id.clone());
            Ok(install)
        })
        .await
        .unwrap();
    webhook.id
}

fn sim_webhook_secret(t: &TestApp, id: &str) -> String {
    t.klaviyo
        .webhooks()
        .into_iter()
        .find(|w| w.id == id)
        .expect("webhook in the simulator")
        .secret_key
}

#[tokio::test]
async fn get_shows_the_settings_with_the_secrets_masked() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let registered = t.register("acme").await;
    let webhook_secret = open(&t, &stored(&t).await, TenantSecret::WebhookSecret);

    let response = t
        .request(Method::GET, PATH, Some(&registered.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(&webhook_secret), "webhook_secret leaked");
    assert!(
        !text.contains(&registered.omneo_signing_secret),
        "omneo_signing_secret leaked"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    let tail = |s: &str| s[s.len() - 4..].to_owned();
    assert_eq!(
        body,
        json!({
            "identity_handle": "klaviyo",
            "namespace": "klaviyo",
            "task_queue_name": null,
            "default_region": null,
            "phone_default_country": "AU",
            "master_list_id": null,
            "mappings": [],
            "exclude_logic": null,
            "on_profile_deleted": "unsubscribe",
            "coalesce_seconds": 5,
            "reconcile_interval_minutes": 60,
            "webhook_secret": format!("{MASK}{}", tail(&webhook_secret)),
            "omneo_signing_secret": format!("{MASK}{}", tail(&registered.omneo_signing_secret)),
        })
    );
}

#[tokio::test]
async fn bad_settings_name_the_field_and_store_nothing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let old_secret = open(&t, &stored(&t).await, TenantSecret::WebhookSecret);
    let webhook_id = seed_webhook(&t, &old_secret).await;
    let list = t.klaviyo.create_list("Everyone");
    // Some settings to keep, so "unchanged" means more than "still the defaults".
    let (status, _) = call(
        &t,
        Method::PATCH,
        &key,
        Some(
            &json!({"identity_handle": "loyalty-id", "master_list_id": list,
            "mappings": [{"source": "tier.name", "target": "properties.tier"}]}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let before = stored(&t).await;
    t.klaviyo.recorder().clear();

    let good_mapping = json!({"source": "tier.name", "target": "properties.tier"});
    let cases: Vec<(Method, Value, Option<&str>)> = vec![
        (
            Method::PATCH,
            json!({"exclude_logic": {"no_such_operator": [1, 2]}}),
            Some("exclude_logic"),
        ),
        (
            Method::PATCH,
            json!({"exclude_logic": "{\"==\": [1"}),
            Some("exclude_logic"),
        ),
        (
            Method::PATCH,
            json!({"exclude_logic": {"==": [1, 1], "!=": [1, 2]}}),
            Some("exclude_logic"),
        ),
        (
            Method::PUT,
            json!({"mappings": [good_mapping, {"source": "email", "target": "email"}]}),
            Some("mappings[1].target"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [{"source": "a", "target": "location.street"}]}),
            Some("mappings[0].target"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [{"source": "a", "target": "properties."}]}),
            Some("mappings[0].target"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [good_mapping, {"source": "", "target": "first_name"}]}),
            Some("mappings[1].source"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [{"source": "tier..name", "target": "first_name"}]}),
            Some("mappings[0].source"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [{"source": "a", "target": "title"}, {"source": "b", "target": "title"}]}),
            Some("mappings[1].target"),
        ),
        (
            Method::PATCH,
            json!({"mappings": [{"source": "a"}]}),
            Some("mappings[0].target"),
        ),
        (
            Method::PATCH,
            json!({"phone_default_country": "XX"}),
            Some("phone_default_country"),
        ),
        (
            Method::PATCH,
            json!({"phone_default_country": "Australia"}),
            Some("phone_default_country"),
        ),
        (
            Method::PATCH,
            json!({"master_list_id": "Nope42"}),
            Some("master_list_id"),
        ),
        (
            Method::PATCH,
            json!({"master_list_id": "../lists"}),
            Some("master_list_id"),
        ),
        (
            Method::PATCH,
            json!({"coalesce_seconds": 0}),
            Some("coalesce_seconds"),
        ),
        (
            Method::PATCH,
            json!({"coalesce_seconds": "five"}),
            Some("coalesce_seconds"),
        ),
        (
            Method::PATCH,
            json!({"reconcile_interval_minutes": 10_081}),
            Some("reconcile_interval_minutes"),
        ),
        (
            Method::PATCH,
            json!({"namespace": "Bad NS"}),
            Some("namespace"),
        ),
        (
            Method::PATCH,
            json!({"on_profile_deleted": "explode"}),
            Some("on_profile_deleted"),
        ),
        (Method::PUT, json!({"colour": "red"}), Some("colour")),
        (
            Method::PATCH,
            json!({"webhook_secret": "too-short"}),
            Some("webhook_secret"),
        ),
        (
            Method::PATCH,
            json!({"webhook_secret": null}),
            Some("webhook_secret"),
        ),
        (
            Method::PATCH,
            json!({"webhook_secret": format!("{MASK}abcd")}),
            Some("webhook_secret"),
        ),
        (
            Method::PATCH,
            json!({"omneo_signing_secret": "   "}),
            Some("omneo_signing_secret"),
        ),
        // A valid new secret does not survive an invalid field elsewhere (nor reach Klaviyo).
        (
            Method::PATCH,
            json!({"webhook_secret": "a-perfectly-good-new-secret-0123456789",
                "mappings": [{"source": "a", "target": "nope"}]}),
            Some("mappings[0].target"),
        ),
        (Method::PUT, json!([1, 2, 3]), None),
    ];
    assert!(cases.len() >= 10);
    for (method, body, field) in cases {
        let (status, error) = call(&t, method.clone(), &key, Some(&body)).await;
        assert_eq!(status, 400, "{method} {body}: {error}");
        assert_eq!(
            error["error"]["field"].as_str(),
            field,
            "{method} {body}: {error}"
        );
        assert_eq!(
            stored(&t).await,
            before,
            "{method} {body} changed the tenant"
        );
    }
    assert!(
        t.klaviyo
            .recorder()
            .matching("PATCH", "/api/webhooks")
            .is_empty(),
        "a refused write reached the Klaviyo webhook"
    );
    assert_eq!(sim_webhook_secret(&t, &webhook_id), old_secret);
}

#[tokio::test]
async fn patch_merges_and_put_replaces() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    let before = stored(&t).await;
    let mappings = json!([
        {"source": "tier.name", "target": "properties.tier"},
        {"source": "attributes.appearance.size_top", "target": "location.timezone"},
        {"source": "custom_attributes.prefs.colour", "target": "first_name"}
    ]);
    let rule = json!({"in": ["staff", {"var": "tags"}]});
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(
            &json!({"namespace": "loyalty", "mappings": mappings, "exclude_logic": rule,
            "phone_default_country": "NZ", "default_region": "12"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["namespace"], "loyalty");
    assert_eq!(body["exclude_logic"], rule);

    // A second PATCH keeps everything it does not name.
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"coalesce_seconds": 30})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["coalesce_seconds"], 30);
    assert_eq!(body["namespace"], "loyalty");
    assert_eq!(body["mappings"], mappings);
    assert_eq!(body["phone_default_country"], "NZ");
    let settings = stored(&t).await.settings;
    assert_eq!(
        settings.exclude_logic.as_deref(),
        Some(rule.to_string().as_str())
    );

    // A patched expression replaces the old one whole (no key-wise merge of operators);
    // `null` restores a default or unsets an option.
    let other_rule = json!({"==": [{"var": "email"}, "x@y.com"]});
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"exclude_logic": other_rule, "namespace": null, "default_region": null})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exclude_logic"], other_rule);
    assert_eq!(body["namespace"], "klaviyo");
    assert_eq!(body["default_region"], Value::Null);
    assert_eq!(body["coalesce_seconds"], 30);

    // GET → PUT of the same document (masked secrets included) changes nothing.
    let (status, shown) = call(&t, Method::GET, &key, None).await;
    assert_eq!(status, 200);
    let record = stored(&t).await;
    let (status, body) = call(&t, Method::PUT, &key, Some(&shown)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, shown);
    let after = stored(&t).await;
    assert_eq!(after.settings, record.settings);
    assert_eq!(after.webhook_secret, before.webhook_secret);
    assert_eq!(after.omneo_signing_secret, before.omneo_signing_secret);
    assert_eq!(after.previous_webhook_secret, None);

    // PUT replaces: what it leaves out goes back to the defaults; the secrets stay.
    let (status, body) = call(
        &t,
        Method::PUT,
        &key,
        Some(&json!({"coalesce_seconds": 10})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let settings = stored(&t).await.settings;
    assert_eq!(
        settings,
        shared::settings::Settings {
            coalesce_seconds: 10,
            ..Default::default()
        }
    );
    assert_eq!(body["webhook_secret"], shown["webhook_secret"]);

    // A new signing secret is stored sealed and never shown.
    let new_signing = "omneo-signing-secret-rotated-0001";
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"omneo_signing_secret": new_signing})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(new_signing));
    assert_eq!(body["omneo_signing_secret"], format!("{MASK}0001"));
    let record = stored(&t).await;
    assert_eq!(
        open(&t, &record, TenantSecret::OmneoSigningSecret),
        new_signing
    );
    assert!(
        !serde_json::to_string(&record)
            .unwrap()
            .contains(new_signing)
    );
}

#[tokio::test]
async fn master_list_must_exist_in_klaviyo() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;

    // Not installed yet: the list cannot be checked, so it is refused.
    let list = t.klaviyo.create_list("Master");
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"master_list_id": list})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "master_list_id");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("install"),
        "{error}"
    );
    assert_eq!(stored(&t).await.settings.master_list_id, None);

    t.seed_tokens("acme", InstallStatus::Installed).await;
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"master_list_id": list})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["master_list_id"], list.as_str());
    assert_eq!(
        stored(&t).await.settings.master_list_id.as_deref(),
        Some(list.as_str())
    );
    assert_eq!(
        t.klaviyo
            .recorder()
            .matching("GET", &format!("/api/lists/{list}"))
            .len(),
        1
    );

    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"master_list_id": "XyZ123"})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "master_list_id");
    assert_eq!(
        stored(&t).await.settings.master_list_id.as_deref(),
        Some(list.as_str())
    );

    // Klaviyo down: 503, nothing stored.
    let second = t.klaviyo.create_list("Second");
    t.klaviyo
        .faults()
        .inject(FaultRule::status(&format!("/api/lists/{second}"), 503, 10));
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"master_list_id": second})),
    )
    .await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(
        stored(&t).await.settings.master_list_id.as_deref(),
        Some(list.as_str())
    );
}

#[tokio::test]
async fn changing_the_webhook_secret_updates_klaviyo_and_keeps_the_old_one_for_ten_minutes() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let before = stored(&t).await;
    let old_secret = open(&t, &before, TenantSecret::WebhookSecret);
    let webhook_id = seed_webhook(&t, &old_secret).await;
    let now = jiff::Timestamp::now();

    // Klaviyo refuses the update: 502, and the store says so — the new secret is stored but
    // pending, and the old one stays accepted (Klaviyo still signs with it) however long it takes.
    let new_secret = "the-new-webhook-secret-2f9c1d7e5a";
    t.klaviyo
        .faults()
        .inject(FaultRule::status(&format!("/api/webhooks/{webhook_id}"), 400, 1).method("PATCH"));
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"webhook_secret": new_secret})),
    )
    .await;
    assert_eq!(status, 502, "{error}");
    assert!(!error.to_string().contains(new_secret));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stored"),
        "{error}"
    );
    assert_eq!(sim_webhook_secret(&t, &webhook_id), old_secret);
    let pending = stored(&t).await;
    assert_eq!(open(&t, &pending, TenantSecret::WebhookSecret), new_secret);
    assert!(pending.webhook_secret_pending_since.is_some());
    let an_hour_later = now + jiff::SignedDuration::from_hours(1);
    assert_eq!(
        pending
            .previous_webhook_secret(&t.app.config.keyring, an_hour_later)
            .unwrap()
            .map(|s| s.expose_secret().to_owned()),
        Some(old_secret.clone()),
        "while pending, the old secret is accepted past the grace period"
    );

    // Klaviyo unavailable (every retry): 503, still pending.
    t.klaviyo
        .faults()
        .inject(FaultRule::status(&format!("/api/webhooks/{webhook_id}"), 503, 10).method("PATCH"));
    let (status, error) = call(&t, Method::PATCH, &key, Some(&json!({}))).await;
    assert_eq!(status, 503, "{error}");
    assert!(stored(&t).await.webhook_secret_pending_since.is_some());
    assert_eq!(sim_webhook_secret(&t, &webhook_id), old_secret);
    t.klaviyo.faults().clear();

    // The next settings write repairs it: Klaviyo gets the secret, the change is confirmed, and the
    // old secret is accepted for ten minutes from now.
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"webhook_secret": new_secret})),
    )
    .await;
    let confirmed_at = jiff::Timestamp::now();
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains(new_secret));
    assert_eq!(body["webhook_secret"], format!("{MASK}7e5a"));
    assert_eq!(sim_webhook_secret(&t, &webhook_id), new_secret);

    let after = stored(&t).await;
    assert_eq!(after.webhook_secret_pending_since, None);
    assert_eq!(open(&t, &after, TenantSecret::WebhookSecret), new_secret);
    let document = serde_json::to_string(&after).unwrap();
    assert!(!document.contains(new_secret) && !document.contains(&old_secret));
    assert_eq!(previous(&t, &after), old_secret);
    let accepted_until = after
        .previous_webhook_secret
        .as_ref()
        .expect("previous secret kept")
        .accepted_until;
    let grace = Tenant::PREVIOUS_WEBHOOK_SECRET_GRACE;
    let slack = jiff::SignedDuration::from_secs(30);
    assert!(
        accepted_until > confirmed_at + grace - slack && accepted_until <= confirmed_at + grace,
        "accepted until {accepted_until}"
    );
    assert_eq!(grace, jiff::SignedDuration::from_mins(10));
    assert!(
        after
            .previous_webhook_secret(&t.app.config.keyring, confirmed_at + grace)
            .unwrap()
            .is_none(),
        "confirmed, the old secret expires after the grace period"
    );

    // Sending the masked value back changes nothing and does not call Klaviyo.
    t.klaviyo.recorder().clear();
    let (status, _) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"webhook_secret": body["webhook_secret"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        t.klaviyo
            .recorder()
            .matching("PATCH", "/api/webhooks")
            .is_empty()
    );
    assert_eq!(stored(&t).await.webhook_secret, after.webhook_secret);
}

#[tokio::test]
async fn a_webhook_secret_change_racing_another_write_leaves_store_and_klaviyo_agreeing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let old_secret = open(&t, &stored(&t).await, TenantSecret::WebhookSecret);
    let webhook_id = seed_webhook(&t, &old_secret).await;

    // Klaviyo is slow to take the new secret; meanwhile another settings write lands.
    t.klaviyo.faults().inject(
        FaultRule::slow(
            &format!("/api/webhooks/{webhook_id}"),
            Duration::from_millis(800),
            1,
        )
        .method("PATCH"),
    );
    let new_secret = "racing-webhook-secret-7c4e2a9b1f";
    let change_body = json!({"webhook_secret": new_secret});
    let change = call(&t, Method::PATCH, &key, Some(&change_body));
    let other = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(
            &t,
            Method::PATCH,
            &key,
            Some(&json!({"phone_default_country": "NZ"})),
        )
        .await
    };
    let ((status, body), (other_status, other_body)) = tokio::join!(change, other);
    assert_eq!(status, 200, "{body}");
    assert!(
        other_status == 200 || other_status == 409,
        "{other_status}: {other_body}"
    );
    // Whatever the interleaving, Klaviyo signs with the secret the store holds, and nothing is
    // left pending.
    let record = stored(&t).await;
    assert_eq!(
        sim_webhook_secret(&t, &webhook_id),
        open(&t, &record, TenantSecret::WebhookSecret)
    );
    assert_eq!(open(&t, &record, TenantSecret::WebhookSecret), new_secret);
    assert_eq!(record.webhook_secret_pending_since, None);
}

#[tokio::test]
async fn a_webhook_secret_change_before_install_only_changes_the_stored_secret() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    let old = open(&t, &stored(&t).await, TenantSecret::WebhookSecret);
    let new_secret = "pre-install-webhook-secret-000000";
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"webhook_secret": new_secret})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let record = stored(&t).await;
    assert_eq!(open(&t, &record, TenantSecret::WebhookSecret), new_secret);
    assert_eq!(previous(&t, &record), old);
    assert!(t.klaviyo.recorder().requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The settings that name the queues: `namespace` and `task_queue_name`.

/// The tenant's queue names reserved in the store, as another tenant would see them.
async fn reserved_by(t: &TestApp, name: &str) -> TenantId {
    let queue = shared::queue::QueueName::parse(name).unwrap();
    let nobody = TenantId::parse("nobody").unwrap();
    t.app
        .store
        .reserve_queue_name(&queue, &nobody)
        .await
        .unwrap()
}

#[tokio::test]
async fn queue_settings_are_fixed_while_the_tenant_is_installed() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let before = stored(&t).await;
    for (body, field) in [
        (json!({"namespace": "loyalty"}), "namespace"),
        (json!({"task_queue_name": "acme-eu"}), "task_queue_name"),
    ] {
        let (status, error) = call(&t, Method::PATCH, &key, Some(&body)).await;
        assert_eq!(status, 409, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("uninstall"),
            "{error}"
        );
        assert_eq!(stored(&t).await, before, "nothing stored");
    }
    // Other settings still change.
    let (status, _) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"coalesce_seconds": 9})),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn queue_names_are_reserved_for_their_tenant_and_never_shared() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    // Registration reserves the default names.
    let key = t.register("acme").await.admin_key;
    t.register("acme-au").await;
    assert_eq!(reserved_by(&t, "acme-klaviyo-outbound").await, acme());
    assert_eq!(
        reserved_by(&t, "acme-au-klaviyo-inbound").await,
        TenantId::parse("acme-au").unwrap()
    );

    // `acme` + namespace `au-klaviyo` would name `acme-au`'s queues: refused, nothing stored.
    let before = stored(&t).await;
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"namespace": "au-klaviyo"})),
    )
    .await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["field"], "namespace");
    assert_eq!(stored(&t).await, before);

    // A prefix that is not the tenant's own is refused outright.
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"task_queue_name": "acme-au"})),
    )
    .await;
    assert_eq!(status, 409, "acme-au-klaviyo-* is taken: {error}");
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"task_queue_name": "globex"})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "task_queue_name");

    // Longer than Cloud Tasks allows: refused naming the field.
    let long = format!("acme-{}", "q".repeat(58));
    let (status, error) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"task_queue_name": long, "namespace": "n".repeat(40)})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["field"], "task_queue_name");

    // A free name of the tenant's own is taken and reserved.
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"task_queue_name": "acme-eu"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reserved_by(&t, "acme-eu-klaviyo-inbound").await, acme());
}

#[tokio::test]
async fn changed_queue_settings_take_effect_at_the_next_install() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let key = t.register("acme").await.admin_key;
    t.seed_tokens("acme", InstallStatus::Provisioning).await;
    let installed = shared::install::provision::provision(&t.app, &acme())
        .await
        .expect("provisioning");
    let queue = |install: &shared::store::Install, direction| {
        install
            .queue(direction)
            .map(|q| q.as_str().to_owned())
            .expect("a queue")
    };
    use shared::queue::Direction::{Inbound, Outbound};
    assert_eq!(queue(&installed, Outbound), "acme-klaviyo-outbound");

    // Uninstall, change the namespace, install again: the receivers' queues follow.
    let operator = t.operator_token.clone();
    let response = t
        .request(Method::DELETE, "/acme/api/v1/install", Some(&operator))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = call(
        &t,
        Method::PATCH,
        &key,
        Some(&json!({"namespace": "loyalty"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    t.seed_tokens("acme", InstallStatus::Provisioning).await;
    let reinstalled = shared::install::provision::provision(&t.app, &acme())
        .await
        .expect("provisioning again");
    assert_eq!(queue(&reinstalled, Inbound), "acme-loyalty-inbound");
    assert_eq!(queue(&reinstalled, Outbound), "acme-loyalty-outbound");
    // Both exist: a task is accepted on each.
    for direction in [Inbound, Outbound] {
        let task = shared::queue::Task {
            queue: reinstalled.queue(direction).unwrap().clone(),
            direction,
            envelope: shared::queue::TaskEnvelope {
                tenant: acme(),
                work: shared::queue::Work::SyncProfile(shared::queue::SyncProfile {
                    profile_id: shared::domain::OmneoProfileId::parse("p-1").unwrap(),
                }),
            },
            name: shared::queue::TaskName::from_parts(&["probe", direction.as_str()]),
            schedule_at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)),
        };
        t.app.queue.enqueue(&task).await.expect("the queue exists");
    }
}
