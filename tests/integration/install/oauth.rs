//! The install flow over real sockets (product.md §5.1–§5.3): install links, `/oauth/install`,
//! `/oauth/callback` against the Klaviyo simulator — and `KlaviyoOAuth` against a third-party
//! OAuth 2.0 server (npm `oauth2-mock-server`, started by `tests/emulators.sh`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use shared::config::KlaviyoConfig;
use shared::domain::TenantId;
use shared::install::link;
use shared::klaviyo::oauth::{KlaviyoOAuth, OAuthError, SCOPES, new_pkce_verifier};
use shared::store::{Install, InstallStatus, OAuthState, TokenSecret};
use url::Url;

use shared::config::LogFormat;
use shared::runtime::telemetry;
use tracing_subscriber::EnvFilter;

use crate::support::{
    LogBuffer, StoreKind, TestApp, TestAppOptions, authorize_url, hash, link_url, param, post_link,
};

/// Consumes the stored OAuth state of a `state` value (it must be there).
async fn take_state(t: &TestApp, state: &str) -> OAuthState {
    t.app
        .store
        .take_oauth_state(&hash(state))
        .await
        .unwrap()
        .expect("a stored state")
}

/// Stores a pending OAuth state of `acme` by hand, under `state_hash`.
async fn store_state(
    t: &TestApp,
    state_hash: String,
    verifier: &SecretString,
    expires_at: Timestamp,
) {
    let pkce_verifier = t
        .app
        .config
        .keyring
        .seal(verifier, &OAuthState::verifier_at(&state_hash));
    t.app
        .store
        .put_oauth_state(&OAuthState {
            state_hash,
            tenant: id("acme"),
            pkce_verifier,
            expires_at,
        })
        .await
        .unwrap();
}

fn id(tenant: &str) -> TenantId {
    TenantId::parse(tenant).unwrap()
}

/// GETs a URL on the app (e.g. the callback) and returns (status, HTML body), asserting HTML.
async fn page(t: &TestApp, url: &str) -> (u16, String) {
    let response = t.http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/html"),
        "{url}: {content_type}"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    (status, response.text().await.unwrap())
}

async fn install_record(t: &TestApp, tenant: &str) -> Option<Install> {
    t.app.store.install(&id(tenant)).await.unwrap()
}

/// Link → authorize → Allow → callback; returns the callback URL and its (status, page).
async fn install_through_klaviyo(
    t: &TestApp,
    tenant: &str,
    admin_key: &str,
) -> (String, u16, String) {
    let link = link_url(t, tenant, admin_key).await;
    let authorize = authorize_url(t, &link).await;
    let callback = t.klaviyo.approve(&authorize).await.unwrap().to_string();
    let (status, body) = page(t, &callback).await;
    (callback, status, body)
}

#[tokio::test]
async fn install_links_need_admin_auth_and_last_15_minutes() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    let globex = t.register("globex").await;

    assert_eq!(post_link(&t, "acme", None).await.status(), 401);
    assert_eq!(post_link(&t, "acme", Some("wrong")).await.status(), 401);
    assert_eq!(
        post_link(&t, "acme", Some(&globex.admin_key))
            .await
            .status(),
        401,
        "another tenant's key"
    );
    assert_eq!(
        post_link(&t, "nobody", Some(&acme.admin_key))
            .await
            .status(),
        401
    );
    assert_eq!(
        post_link(&t, "nobody", Some(&t.operator_token))
            .await
            .status(),
        404
    );
    assert_eq!(
        post_link(&t, "acme", Some(&t.operator_token))
            .await
            .status(),
        200
    );

    let before = Timestamp::now();
    let response = post_link(&t, "acme", Some(&acme.admin_key)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let url = body["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/oauth/install?tenant=acme&link=", t.url)),
        "{url}"
    );
    let expires_at: Timestamp = body["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_at.duration_since(before);
    assert!(
        lifetime > SignedDuration::from_secs(14 * 60)
            && lifetime <= SignedDuration::from_secs(15 * 60),
        "{lifetime:?}"
    );
    let token = param(url, "link").unwrap();
    assert_eq!(
        link::verify(&t.app.config.keyring, &id("acme"), &token, Timestamp::now()),
        Ok(())
    );
}

#[tokio::test]
async fn a_valid_link_redirects_to_klaviyo_with_state_scopes_and_pkce_s256() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    let link = link_url(&t, "acme", &acme.admin_key).await;
    let started = Timestamp::now();
    let authorize = authorize_url(&t, &link).await;

    assert!(
        authorize.starts_with(&format!("{}/oauth/authorize?", t.klaviyo.url())),
        "{authorize}"
    );
    let get = |name| param(&authorize, name);
    assert_eq!(get("response_type").as_deref(), Some("code"));
    assert_eq!(get("client_id"), Some(t.klaviyo.options().client_id));
    assert_eq!(
        get("redirect_uri"),
        Some(format!("{}/oauth/callback", t.url))
    );
    assert_eq!(get("scope"), Some(SCOPES.join(" ")));
    assert_eq!(get("code_challenge_method").as_deref(), Some("S256"));
    let state = get("state").unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(&state).unwrap().len(),
        32,
        "256-bit state"
    );

    // The store knows the state only by its SHA-256: the value itself is no key.
    assert_eq!(t.app.store.take_oauth_state(&state).await.unwrap(), None);
    assert_eq!(hash(&state).len(), 64);

    // The stored state: this tenant, 10 minutes, and the verifier whose S256 challenge was sent.
    let stored = take_state(&t, &state).await;
    assert_eq!(stored.tenant, id("acme"));
    let lifetime = stored.expires_at.duration_since(started);
    assert!(
        lifetime > SignedDuration::from_secs(9 * 60)
            && lifetime <= SignedDuration::from_secs(10 * 60 + 5),
        "{lifetime:?}"
    );
    let verifier = stored.open_verifier(&t.app.config.keyring).unwrap();
    assert!(
        !serde_json::to_string(&stored)
            .unwrap()
            .contains(verifier.expose_secret())
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()));
    assert_eq!(get("code_challenge"), Some(challenge));

    // Two visits, two different states.
    let again = authorize_url(&t, &link).await;
    assert_ne!(param(&again, "state"), Some(state));
}

#[tokio::test]
async fn missing_invalid_expired_and_other_tenant_links_get_the_cx_manager_page() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    t.register("globex").await;
    let good = param(&link_url(&t, "acme", &acme.admin_key).await, "link").unwrap();
    let keyring = &t.app.config.keyring;
    let expired = link::issue(
        keyring,
        &id("acme"),
        Timestamp::now() - SignedDuration::from_secs(16 * 60),
    )
    .token;
    let (expiry, tag) = good.split_once('.').unwrap();
    let extended = format!("{}.{tag}", expiry.parse::<i64>().unwrap() + 3600);
    let unregistered = link::issue(keyring, &id("initech"), Timestamp::now()).token;

    let cases: Vec<(String, u16)> = vec![
        (String::new(), 400),
        ("?tenant=acme".into(), 400),
        (format!("?link={good}"), 400),
        ("?tenant=acme&link=".into(), 400),
        ("?tenant=acme&link=garbage".into(), 403),
        (format!("?tenant=globex&link={good}"), 403),
        (format!("?tenant=acme&link={expired}"), 403),
        (format!("?tenant=acme&link={extended}"), 403),
        (format!("?tenant=ACME%21&link={good}"), 403),
        (format!("?tenant=initech&link={unregistered}"), 403),
    ];
    for (query, expected) in cases {
        let (status, body) = page(&t, &format!("{}/oauth/install{query}", t.url)).await;
        assert_eq!(status, expected, "{query}");
        assert!(body.contains("CX Manager"), "{query}: {body}");
        assert!(body.contains("Extensions"), "{query}: {body}");
    }
    assert!(
        t.klaviyo.recorder().requests().is_empty(),
        "nothing reached Klaviyo"
    );
}

async fn happy_path_then_replay(store: StoreKind) {
    let t = TestApp::spawn(TestAppOptions {
        store,
        ..TestAppOptions::default()
    })
    .await;
    let acme = t.register("acme").await;
    let (callback, status, body) = install_through_klaviyo(&t, "acme", &acme.admin_key).await;
    let code = param(&callback, "code").unwrap();

    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Klaviyo is connected"), "{body}");
    assert!(!body.contains(&code));

    let install = install_record(&t, "acme").await.expect("install record");
    assert_eq!(
        install.status,
        InstallStatus::Installed,
        "{:?}",
        install.last_error
    );
    assert_every_resource_once(&t, "acme", &install);
    assert!(
        install
            .history
            .iter()
            .any(|change| change.status == InstallStatus::Provisioning)
    );
    let account = t.klaviyo.options().account_id;
    assert_eq!(
        install.klaviyo_account_id.as_deref(),
        Some(account.as_str())
    );
    assert_eq!(
        t.app.store.klaviyo_account_tenant(&account).await.unwrap(),
        Some(id("acme"))
    );
    assert_eq!(t.klaviyo.token_counts().issued, 1);

    // Tokens are sealed, open to working tokens, and appear nowhere in plaintext.
    let tokens = install.tokens.clone().expect("tokens");
    let keyring = &t.app.config.keyring;
    let access = tokens
        .open(keyring, &id("acme"), TokenSecret::AccessToken)
        .unwrap();
    let refresh = tokens
        .open(keyring, &id("acme"), TokenSecret::RefreshToken)
        .unwrap();
    let document = serde_json::to_string(&install).unwrap();
    for secret in [access.expose_secret(), refresh.expose_secret()] {
        assert!(!document.contains(secret), "plaintext token in the store");
        assert!(!body.contains(secret), "token on the page");
    }
    assert_eq!(t.app.klaviyo.account_id(&access).await.unwrap(), account);
    assert_eq!(tokens.scopes.len(), SCOPES.len());
    assert!(tokens.expires_at > Timestamp::now() + SignedDuration::from_secs(3000));

    // Replaying the same callback: 400 page, nothing changed, no second exchange.
    let before = install_record(&t, "acme").await;
    let (status, body) = page(&t, &callback).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("expired or was already used"), "{body}");
    assert_eq!(install_record(&t, "acme").await, before);
    assert_eq!(t.klaviyo.token_counts().issued, 1);
}

/// Every resource of product.md §5.4 exists exactly once in the simulators and is recorded.
fn assert_every_resource_once(t: &TestApp, tenant: &str, install: &Install) {
    let mut titles: Vec<String> = t
        .klaviyo
        .data_sources()
        .into_iter()
        .map(|d| d.title)
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "Omneo Addresses",
            "Omneo Benefits",
            "Omneo Connections",
            "Omneo Dates",
            "Omneo Lists",
            "Omneo Rewards"
        ]
    );
    assert_eq!(install.resources.data_sources.len(), 6);
    let webhooks = t.klaviyo.webhooks();
    assert_eq!(webhooks.len(), 1);
    assert_eq!(webhooks[0].name, format!("Omneo {tenant}"));
    assert_eq!(
        install.resources.klaviyo_webhook_id.as_deref(),
        Some(webhooks[0].id.as_str())
    );
    let omneo = t.omneo.webhooks(tenant);
    let mut triggers: Vec<&str> = omneo.iter().map(|w| w.trigger.as_str()).collect();
    triggers.sort();
    assert_eq!(
        triggers,
        ["profile.created", "profile.deleted", "profile.updated"]
    );
    assert!(
        omneo
            .iter()
            .all(|w| !w.is_active && w.namespace == "klaviyo")
    );
    assert_eq!(install.resources.omneo_webhooks.len(), 3);
    assert_eq!(install.resources.queues.len(), 2);
}

#[tokio::test]
async fn a_full_install_under_klaviyos_real_rate_limits_reaches_installed() {
    let t = TestApp::spawn(TestAppOptions {
        klaviyo: harness::klaviyo::KlaviyoSimOptions::default(),
        ..TestAppOptions::default()
    })
    .await;
    let acme = t.register("acme").await;
    let started = std::time::Instant::now();
    let (_, status, body) = install_through_klaviyo(&t, "acme", &acme.admin_key).await;
    // A figure for the install notes, not an assertion: `--nocapture` shows it.
    eprintln!(
        "full install (link → installed) under real rate limits: {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "{body}");
    let install = install_record(&t, "acme").await.expect("install record");
    assert_eq!(
        install.status,
        InstallStatus::Installed,
        "{:?}",
        install.last_error
    );
    assert_every_resource_once(&t, "acme", &install);
}

#[tokio::test]
async fn callback_stores_sealed_tokens_binds_the_account_and_refuses_a_replay() {
    happy_path_then_replay(StoreKind::Memory).await;
}

#[tokio::test]
async fn callback_on_firestore_stores_sealed_tokens_and_refuses_a_replay() {
    happy_path_then_replay(StoreKind::Firestore).await;
}

#[tokio::test]
async fn unknown_or_missing_state_is_refused_and_changes_nothing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    t.register("acme").await;
    for query in [
        "?code=abc&state=never-issued",
        "?code=abc",
        "?state=never-issued",
        "",
    ] {
        let (status, body) = page(&t, &format!("{}/oauth/callback{query}", t.url)).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.contains("CX Manager"), "{query}: {body}");
    }
    assert_eq!(install_record(&t, "acme").await, None);
    assert_eq!(t.klaviyo.token_counts().issued, 0);
}

#[tokio::test]
async fn an_expired_state_is_refused_before_any_exchange() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    t.register("acme").await;
    let verifier = new_pkce_verifier();
    let state = "expired-state-0123456789abcdefghijklmnopqrs";
    let expired = Timestamp::now() - SignedDuration::from_secs(1);
    store_state(&t, hash(state), &verifier, expired).await;
    let authorize = t.app.oauth.authorize_url(state, &verifier);
    let callback = t.klaviyo.approve(authorize.as_str()).await.unwrap();
    let (status, body) = page(&t, callback.as_str()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("expired or was already used"), "{body}");
    assert_eq!(install_record(&t, "acme").await, None);
    assert_eq!(t.klaviyo.token_counts().issued, 0, "no code exchange");
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused_by_klaviyo_and_changes_nothing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let before = install_record(&t, "acme").await;

    let authorize = authorize_url(&t, &link_url(&t, "acme", &acme.admin_key).await).await;
    let state = param(&authorize, "state").unwrap();
    // Swap the stored verifier for another one: the challenge Klaviyo holds no longer matches.
    let mut stored = take_state(&t, &state).await;
    stored.pkce_verifier = t.app.config.keyring.seal(
        &new_pkce_verifier(),
        &OAuthState::verifier_at(&stored.state_hash),
    );
    t.app.store.put_oauth_state(&stored).await.unwrap();

    let callback = t.klaviyo.approve(&authorize).await.unwrap();
    let (status, body) = page(&t, callback.as_str()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("The authorization expired or was already used"),
        "{body}"
    );
    assert!(
        body.contains("start again from CX Manager")
            || body.contains("Start again from CX Manager")
    );
    assert_eq!(install_record(&t, "acme").await, before, "status unchanged");
    let token_requests = t
        .klaviyo
        .recorder()
        .requests()
        .into_iter()
        .filter(|r| r.path == "/oauth/token")
        .count();
    assert_eq!(token_requests, 1, "the exchange was tried once and refused");
    assert_eq!(t.klaviyo.token_counts().issued, 1, "only the seeded grant");
}

#[tokio::test]
async fn access_denied_shows_cancelled_consumes_the_state_and_changes_nothing() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let before = install_record(&t, "acme").await;

    let authorize = authorize_url(&t, &link_url(&t, "acme", &acme.admin_key).await).await;
    let callback = t.klaviyo.deny(&authorize).await.unwrap();
    assert_eq!(
        param(callback.as_str(), "error").as_deref(),
        Some("access_denied")
    );
    let (status, body) = page(&t, callback.as_str()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Install cancelled"), "{body}");
    assert_eq!(install_record(&t, "acme").await, before, "status unchanged");
    let state = param(&authorize, "state").unwrap();
    assert_eq!(
        t.app.store.take_oauth_state(&hash(&state)).await.unwrap(),
        None,
        "the state was consumed"
    );
}

#[tokio::test]
async fn one_klaviyo_account_cannot_serve_two_tenants() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    let globex = t.register("globex").await;
    install_through_klaviyo(&t, "acme", &acme.admin_key).await;
    let acme_before = install_record(&t, "acme").await;

    let (_, status, body) = install_through_klaviyo(&t, "globex", &globex.admin_key).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("already connected to another Omneo account"),
        "{body}"
    );
    assert!(!body.contains("acme"), "the other tenant is not named");
    assert_eq!(install_record(&t, "globex").await, None);
    assert_eq!(install_record(&t, "acme").await, acme_before);
    let account = t.klaviyo.options().account_id;
    assert_eq!(
        t.app.store.klaviyo_account_tenant(&account).await.unwrap(),
        Some(id("acme"))
    );
    let counts = t.klaviyo.token_counts();
    assert_eq!(counts.issued, 2);
    assert_eq!(counts.revoked, 1, "the refused install's grant was revoked");
}

#[tokio::test]
async fn klaviyo_errors_are_named_and_escaped() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;
    let attack = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let error_redirect = |state: &str| {
        let mut url = Url::parse(&format!("{}/oauth/callback", t.url)).unwrap();
        url.query_pairs_mut()
            .append_pair("error", "server_error<b>")
            .append_pair("error_description", attack)
            .append_pair("state", state);
        url
    };

    // A forged redirect (no state of ours): the code is named, the description is not shown.
    let (status, body) = page(&t, error_redirect("whatever").as_str()).await;
    assert_eq!(status, 400);
    assert!(body.contains("server_error&lt;b&gt;"), "{body}");
    assert!(!body.contains("<script>"), "{body}");
    assert!(!body.contains("<img"), "{body}");
    assert!(!body.contains("<b>"), "{body}");
    assert!(
        !body.contains("alert"),
        "a forged description is not shown: {body}"
    );

    // A real state, consumed: Klaviyo's description is shown, escaped.
    let authorize = authorize_url(&t, &link_url(&t, "acme", &acme.admin_key).await).await;
    let state = param(&authorize, "state").unwrap();
    let (status, body) = page(&t, error_redirect(&state).as_str()).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img"),
        "{body}"
    );
    assert!(!body.contains("<script>"), "{body}");
    assert_eq!(
        t.app.store.take_oauth_state(&hash(&state)).await.unwrap(),
        None,
        "the state was consumed"
    );

    // Query parameters of /oauth/install are never echoed.
    let (_, body) = page(
        &t,
        &format!(
            "{}/oauth/install?tenant=%3Cscript%3E&link=%3Cscript%3E",
            t.url
        ),
    )
    .await;
    assert!(!body.contains("<script>"), "{body}");
}

// ---- interop with a third-party OAuth 2.0 server ----

/// A variable `tests/emulators.sh` exports for the interop server.
fn interop_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test` (tests/emulators.sh starts the OAuth interop server)")
    })
}

/// `KlaviyoOAuth` pointed at the interop server with `client_secret`.
fn interop_client(client_secret: &str) -> KlaviyoOAuth {
    let base = Url::parse(&interop_env("OAUTH_INTEROP_URL")).unwrap();
    let endpoint = |path: &str| base.join(path).unwrap();
    let config = KlaviyoConfig {
        client_id: interop_env("OAUTH_INTEROP_CLIENT_ID"),
        client_secret: SecretString::from(client_secret.to_owned()),
        auth_url: endpoint("/authorize"),
        token_url: endpoint("/token"),
        revoke_url: endpoint("/revoke"),
        api_url: base.clone(),
        revision: shared::config::ApiRevision::parse("2026-07-15").unwrap(),
    };
    let redirect = Url::parse("http://127.0.0.1:9/oauth/callback").unwrap();
    KlaviyoOAuth::new(&config, &redirect, reqwest::Client::new())
}

/// Follows the server's authorize redirect (no browser: it approves at once) and returns the code.
async fn interop_code(oauth: &KlaviyoOAuth, state: &str, verifier: &SecretString) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let authorize = oauth.authorize_url(state, verifier);
    let response = http.get(authorize.as_str()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 302, "authorize → redirect");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("http://127.0.0.1:9/oauth/callback?"),
        "{location}"
    );
    assert_eq!(param(&location, "state").as_deref(), Some(state));
    param(&location, "code").expect("code in the redirect")
}

#[tokio::test]
async fn klaviyo_oauth_interoperates_with_a_third_party_oauth_server() {
    let secret = interop_env("OAUTH_INTEROP_CLIENT_SECRET");
    let oauth = interop_client(&secret);

    // Code exchange with PKCE S256, Basic client auth and the redirect URI.
    let verifier = new_pkce_verifier();
    let code = interop_code(&oauth, "interop-state-1", &verifier).await;
    let grant = oauth.exchange_code(&code, &verifier).await.unwrap();
    assert!(!grant.access_token.expose_secret().is_empty());
    assert!(grant.expires_in.as_secs() > 0);
    let first_refresh = grant.refresh_token.expect("a refresh token");

    // Refresh (Basic auth again); the server rotates, and the old refresh token is dead.
    let refreshed = oauth.refresh(&first_refresh).await.unwrap();
    assert!(!refreshed.access_token.expose_secret().is_empty());
    let second_refresh = refreshed.refresh_token.expect("a rotated refresh token");
    assert_ne!(
        second_refresh.expose_secret(),
        first_refresh.expose_secret()
    );
    assert!(
        matches!(
            oauth.refresh(&first_refresh).await,
            Err(OAuthError::InvalidGrant(_))
        ),
        "a rotated-away refresh token is refused"
    );

    // A code exchanged with the wrong verifier is refused by the server's PKCE check.
    let code = interop_code(&oauth, "interop-state-2", &new_pkce_verifier()).await;
    match oauth.exchange_code(&code, &new_pkce_verifier()).await {
        Err(OAuthError::Rejected { code, description }) => {
            assert_eq!(code, "invalid_request");
            assert!(description.contains("code_verifier"), "{description}");
        }
        other => panic!("wrong verifier accepted: {other:?}"),
    }

    // A wrong client secret is refused (invalid_client).
    let verifier = new_pkce_verifier();
    let code = interop_code(&oauth, "interop-state-3", &verifier).await;
    match interop_client("not-the-secret")
        .exchange_code(&code, &verifier)
        .await
    {
        Err(OAuthError::Rejected { code, .. }) => assert_eq!(code, "invalid_client"),
        other => panic!("wrong client secret accepted: {other:?}"),
    }

    // Revocation is accepted.
    oauth.revoke(&second_refresh).await.unwrap();
}

#[tokio::test]
async fn states_not_of_our_shape_are_refused_without_touching_the_store() {
    let t = TestApp::spawn(TestAppOptions::default()).await;
    t.register("acme").await;
    // Documents keyed by the malformed values themselves and by their hashes: whichever the
    // callback looked up, it would consume one.
    let malformed = [
        "short".to_owned(),
        "x".repeat(44),
        format!("{}/", "a".repeat(42)),
        format!("{}%", "a".repeat(42)),
    ];
    let expires_at = Timestamp::now() + SignedDuration::from_mins(10);
    for value in &malformed {
        for key in [value.clone(), hash(value)] {
            store_state(&t, key, &new_pkce_verifier(), expires_at).await;
        }
    }
    for value in &malformed {
        let mut url = Url::parse(&format!("{}/oauth/callback", t.url)).unwrap();
        url.query_pairs_mut()
            .append_pair("code", "some-code")
            .append_pair("state", value);
        let (status, body) = page(&t, url.as_str()).await;
        assert_eq!(status, 400, "{value}: {body}");
        assert!(!body.contains(value.as_str()), "the state is not echoed");
    }
    for value in &malformed {
        for key in [value.clone(), hash(value)] {
            assert!(
                t.app.store.take_oauth_state(&key).await.unwrap().is_some(),
                "{value}: the store was touched"
            );
        }
    }
    assert_eq!(t.klaviyo.token_counts().issued, 0, "no code exchange");
}

#[tokio::test]
async fn a_state_never_appears_in_the_logs_or_a_page() {
    let logs = LogBuffer::default();
    let subscriber =
        telemetry::subscriber(LogFormat::Json, None, EnvFilter::new("trace"), logs.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let t = TestApp::spawn(TestAppOptions::default()).await;
    let acme = t.register("acme").await;

    // A full install, a replay of its callback, an error redirect and an unknown state.
    let link = link_url(&t, "acme", &acme.admin_key).await;
    let authorize = authorize_url(&t, &link).await;
    let state = param(&authorize, "state").unwrap();
    let callback = t.klaviyo.approve(&authorize).await.unwrap().to_string();
    let mut pages = Vec::new();
    for url in [callback.clone(), callback] {
        pages.push(page(&t, &url).await.1);
    }
    let second = authorize_url(&t, &link_url(&t, "acme", &acme.admin_key).await).await;
    let second_state = param(&second, "state").unwrap();
    let denied = t.klaviyo.deny(&second).await.unwrap();
    pages.push(page(&t, denied.as_str()).await.1);
    let unknown = "u".repeat(43);
    pages.push(
        page(
            &t,
            &format!("{}/oauth/callback?code=c&state={unknown}", t.url),
        )
        .await
        .1,
    );

    let text = logs.text();
    assert!(
        text.contains("install complete"),
        "the install was logged: {text}"
    );
    for value in [&state, &second_state, &unknown] {
        assert!(
            !text.contains(value.as_str()),
            "a state value is in the logs"
        );
        for body in &pages {
            assert!(!body.contains(value.as_str()), "a state value is on a page");
        }
    }
}
