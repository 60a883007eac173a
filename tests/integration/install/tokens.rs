//! The token provider (`shared::install::tokens`, product.md §5.6) against the Klaviyo simulator:
//! proactive refresh, refresh once on 401, single-flight refresh under concurrency (memory store
//! and Firestore emulator), refresh-token rotation on and off, `invalid_grant` →
//! `reauthorization_required` with fail-fast afterwards, and no plaintext token in the store or
//! the logs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::firestore::{FirestoreDb, FirestoreDbOptions};
use gcloud_sdk::google::firestore::v1::value::ValueType;
use gcloud_sdk::google_cloud_auth::credentials::anonymous;
use harness::klaviyo::KlaviyoSimOptions;
use harness::sim::FaultRule;
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use shared::access::tokens::{KlaviyoCallError, REFRESH_MARGIN, TokenError, TokenProvider};
use shared::config::{LogFormat, StoreConfig};
use shared::domain::TenantId;
use shared::klaviyo::oauth::OAuthError;
use shared::runtime::telemetry;
use shared::store::{Install, InstallStatus};
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

use crate::support::{LogBuffer, StoreKind, TestApp, TestAppOptions};

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

async fn spawn(store: StoreKind, klaviyo: KlaviyoSimOptions) -> TestApp {
    let t = TestApp::spawn(TestAppOptions {
        store,
        klaviyo: klaviyo.without_rate_limits(),
        ..TestAppOptions::default()
    })
    .await;
    t.register("acme").await;
    t.seed_tokens("acme", InstallStatus::Installed).await;
    t
}

async fn install(t: &TestApp) -> Install {
    t.app
        .store
        .install(&acme())
        .await
        .unwrap()
        .expect("install")
}

/// The stored tokens, opened: (access, refresh).
async fn plaintext_tokens(t: &TestApp) -> (String, String) {
    t.stored_tokens("acme").await
}

/// Makes the stored access token expire `in_` from now (without touching Klaviyo).
async fn expire_stored_token_in(t: &TestApp, in_: Duration) {
    let at = Timestamp::now() + SignedDuration::try_from(in_).unwrap();
    t.app
        .store
        .update_install(&acme(), &|install| {
            let mut install = install.expect("install");
            install.tokens.as_mut().expect("tokens").expires_at = at;
            Ok(install)
        })
        .await
        .unwrap();
}

fn refreshes(t: &TestApp) -> u32 {
    t.klaviyo.token_counts().refreshed
}

/// Calls to the token endpoint, successful or not.
fn token_endpoint_calls(t: &TestApp) -> usize {
    t.klaviyo.recorder().matching("POST", "/oauth/token").len()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_expiring_within_the_margin_is_refreshed_first() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    let (old_access, old_refresh) = plaintext_tokens(&t).await;
    expire_stored_token_in(&t, REFRESH_MARGIN - Duration::from_secs(20)).await;

    let before = Timestamp::now();
    let token = t.app.tokens.access_token(&acme()).await.unwrap();
    assert_eq!(refreshes(&t), 1);
    assert_eq!(token_endpoint_calls(&t), 1);
    assert_ne!(token.expose_secret(), old_access);

    let stored = install(&t).await;
    let tokens = stored.tokens.as_ref().unwrap();
    let (access, refresh) = plaintext_tokens(&t).await;
    assert_eq!(access, token.expose_secret());
    assert_ne!(refresh, old_refresh, "the rotated refresh token is stored");
    assert!(tokens.last_refreshed_at.is_some_and(|at| at >= before));
    assert!(tokens.expires_at > before + SignedDuration::from_mins(50));
    assert_eq!(stored.refresh_lease, None, "the lease is released");
    let document = serde_json::to_string(&stored).unwrap();
    for secret in [&old_access, &old_refresh, &access, &refresh] {
        assert!(
            !document.contains(secret.as_str()),
            "plaintext token stored"
        );
    }
    // The new token works.
    let account = t
        .app
        .tokens
        .call(&acme(), |token| {
            let app = t.app.clone();
            async move { app.klaviyo.account_id(&token).await }
        })
        .await
        .unwrap();
    assert_eq!(account, t.klaviyo.options().account_id);
    assert_eq!(refreshes(&t), 1);
}

#[tokio::test]
async fn a_fresh_token_is_not_refreshed() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    let (access, _) = plaintext_tokens(&t).await;
    expire_stored_token_in(&t, REFRESH_MARGIN + Duration::from_secs(120)).await;
    for _ in 0..3 {
        let token = t.app.tokens.access_token(&acme()).await.unwrap();
        assert_eq!(token.expose_secret(), access);
    }
    assert_eq!(refreshes(&t), 0);
    assert_eq!(token_endpoint_calls(&t), 0);
    assert_eq!(install(&t).await.tokens.unwrap().last_refreshed_at, None);
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    let (old_access, _) = plaintext_tokens(&t).await;
    t.klaviyo.expire_access_tokens();
    let attempts = AtomicUsize::new(0);
    let account = t
        .app
        .tokens
        .call(&acme(), |token| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let app = t.app.clone();
            async move { app.klaviyo.account_id(&token).await }
        })
        .await
        .expect("the retry with the refreshed token succeeds");
    assert_eq!(account, t.klaviyo.options().account_id);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(refreshes(&t), 1);
    let (access, _) = plaintext_tokens(&t).await;
    assert_ne!(access, old_access);
}

async fn concurrent_callers_refresh_once(store: StoreKind) {
    const CALLERS: usize = 8;
    let t = spawn(store, KlaviyoSimOptions::default()).await;

    // Proactive: eight callers find the token about to expire, each in its own instance (token
    // provider) over the shared store — only the store lease can keep them to one refresh.
    let instances: Vec<TokenProvider> = (0..CALLERS)
        .map(|_| {
            TokenProvider::new(
                t.app.store.clone(),
                t.app.config.keyring.clone(),
                t.app.oauth.clone(),
            )
        })
        .collect();
    expire_stored_token_in(&t, Duration::from_secs(5)).await;
    let mut callers = JoinSet::new();
    for tokens in instances {
        callers.spawn(async move { tokens.access_token(&acme()).await });
    }
    let tokens: Vec<SecretString> = callers
        .join_all()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every caller gets a token");
    assert_eq!(
        refreshes(&t),
        1,
        "{store:?}: proactive refresh ran more than once"
    );
    assert_eq!(token_endpoint_calls(&t), 1);
    let (stored, _) = plaintext_tokens(&t).await;
    for token in &tokens {
        assert_eq!(
            token.expose_secret(),
            stored,
            "{store:?}: a caller got another token"
        );
    }

    // Reactive: Klaviyo rejects the token; eight calls in one instance (the app's provider) get
    // a 401 and want a refresh.
    t.klaviyo.expire_access_tokens();
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let app = t.app.clone();
        callers.spawn(async move {
            app.tokens
                .call(&acme(), |token| {
                    let app = app.clone();
                    async move { app.klaviyo.account_id(&token).await }
                })
                .await
        });
    }
    for result in callers.join_all().await {
        assert_eq!(
            result.expect("every call succeeds after the refresh"),
            t.klaviyo.options().account_id
        );
    }
    assert_eq!(
        refreshes(&t),
        2,
        "{store:?}: the 401 refresh ran more than once"
    );
    assert_eq!(token_endpoint_calls(&t), 2);
    assert_eq!(install(&t).await.refresh_lease, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_refresh_once_on_the_memory_store() {
    concurrent_callers_refresh_once(StoreKind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_refresh_once_on_firestore() {
    concurrent_callers_refresh_once(StoreKind::Firestore).await;
}

#[tokio::test]
async fn with_rotation_the_new_refresh_token_is_stored_and_the_old_one_is_dead() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    let (_, old_refresh) = plaintext_tokens(&t).await;
    expire_stored_token_in(&t, Duration::ZERO).await;
    t.app.tokens.access_token(&acme()).await.unwrap();
    let (_, refresh) = plaintext_tokens(&t).await;
    assert_ne!(refresh, old_refresh);
    let old = t
        .app
        .oauth
        .refresh(&SecretString::from(old_refresh))
        .await
        .unwrap_err();
    assert!(matches!(old, OAuthError::InvalidGrant(_)), "{old:?}");
    // The stored one is the live one: the next refresh succeeds.
    expire_stored_token_in(&t, Duration::ZERO).await;
    t.app.tokens.access_token(&acme()).await.unwrap();
    assert_eq!(refreshes(&t), 2);
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays_valid() {
    let t = spawn(
        StoreKind::Memory,
        KlaviyoSimOptions {
            rotate_refresh_tokens: false,
            ..KlaviyoSimOptions::default()
        },
    )
    .await;
    let (old_access, old_refresh) = plaintext_tokens(&t).await;
    for round in 1..=2 {
        expire_stored_token_in(&t, Duration::ZERO).await;
        let token = t.app.tokens.access_token(&acme()).await.unwrap();
        assert_ne!(token.expose_secret(), old_access);
        let (_, refresh) = plaintext_tokens(&t).await;
        assert_eq!(refresh, old_refresh, "round {round}");
        assert_eq!(refreshes(&t), round);
    }
    assert!(
        t.app
            .oauth
            .refresh(&SecretString::from(old_refresh))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn invalid_grant_requires_reauthorization_and_later_calls_fail_fast() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    t.klaviyo.revoke_all();
    let error = t
        .app
        .tokens
        .call(&acme(), |token| {
            let app = t.app.clone();
            async move { app.klaviyo.account_id(&token).await }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_))
        ),
        "{error:?}"
    );
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::ReauthorizationRequired);
    assert_eq!(
        stored.history.last().unwrap().status,
        InstallStatus::ReauthorizationRequired
    );
    assert_eq!(stored.refresh_lease, None);

    // Later calls: no request reaches Klaviyo, the call itself never runs.
    let before = t.klaviyo.recorder().requests().len();
    let ran = AtomicUsize::new(0);
    for _ in 0..3 {
        let error = t
            .app
            .tokens
            .call(&acme(), |token| {
                ran.fetch_add(1, Ordering::SeqCst);
                let app = t.app.clone();
                async move { app.klaviyo.account_id(&token).await }
            })
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_))
        ));
        assert!(matches!(
            t.app.tokens.access_token(&acme()).await,
            Err(TokenError::ReauthorizationRequired(_))
        ));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(t.klaviyo.recorder().requests().len(), before);

    // The status endpoint shows it.
    let operator = t.operator_token.clone();
    let status: serde_json::Value = t
        .request(
            reqwest::Method::GET,
            "/acme/api/v1/install",
            Some(&operator),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "reauthorization_required");
}

// ---------------------------------------------------------------------------------------------
// No plaintext token in the store or the logs.

/// Refreshes proactively, on a 401, and into `invalid_grant`, with every log line captured;
/// returns every token plaintext seen along the way and the logs.
async fn refresh_everything_with_logs_captured(t: &TestApp) -> (Vec<String>, String) {
    let logs = LogBuffer::default();
    let subscriber =
        telemetry::subscriber(LogFormat::Json, None, EnvFilter::new("trace"), logs.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut seen = Vec::new();
    let (access, refresh) = plaintext_tokens(t).await;
    seen.extend([access, refresh]);

    expire_stored_token_in(t, Duration::ZERO).await;
    t.app.tokens.access_token(&acme()).await.unwrap();
    let (access, refresh) = plaintext_tokens(t).await;
    seen.extend([access, refresh]);

    t.klaviyo.expire_access_tokens();
    t.app
        .tokens
        .call(&acme(), |token| {
            let app = t.app.clone();
            async move { app.klaviyo.account_id(&token).await }
        })
        .await
        .unwrap();
    let (access, refresh) = plaintext_tokens(t).await;
    seen.extend([access, refresh]);

    t.klaviyo.revoke_all();
    expire_stored_token_in(t, Duration::ZERO).await;
    assert!(t.app.tokens.access_token(&acme()).await.is_err());
    (seen, logs.text())
}

fn assert_no_plaintext(haystack: &str, tokens: &[String], what: &str) {
    for token in tokens {
        assert!(
            !haystack.contains(token.as_str()),
            "a plaintext token appears in {what}"
        );
    }
}

#[tokio::test]
async fn tokens_never_appear_in_the_stored_install_or_the_logs() {
    let t = spawn(StoreKind::Memory, KlaviyoSimOptions::default()).await;
    let (tokens, logs) = refresh_everything_with_logs_captured(&t).await;
    assert!(
        logs.contains("refreshed the Klaviyo access token")
            && logs.contains("reauthorization required"),
        "the refreshes were not logged at all: {logs}"
    );
    assert_no_plaintext(&logs, &tokens, "the logs");
    let document = serde_json::to_string(&install(&t).await).unwrap();
    assert_no_plaintext(&document, &tokens, "the install record");
}

#[tokio::test]
async fn tokens_never_appear_in_the_raw_firestore_document_or_the_logs() {
    let t = spawn(StoreKind::Firestore, KlaviyoSimOptions::default()).await;
    let (tokens, logs) = refresh_everything_with_logs_captured(&t).await;
    assert!(
        logs.contains("refreshed the Klaviyo access token"),
        "{logs}"
    );
    assert_no_plaintext(&logs, &tokens, "the logs");

    let StoreConfig::Firestore {
        project,
        emulator_host,
    } = &t.app.config.store
    else {
        panic!("the app does not run on Firestore");
    };
    let options = FirestoreDbOptions::new(project.clone()).with_firebase_api_url(format!(
        "http://{}",
        emulator_host.as_deref().expect("emulator host")
    ));
    let raw = FirestoreDb::with_options_auth(options, anonymous::Builder::new().build())
        .await
        .expect("connect to the Firestore emulator");
    let document = raw
        .fluent()
        .select()
        .by_id_in("installs")
        .one("acme")
        .await
        .unwrap()
        .expect("the install document");
    assert_no_plaintext(&format!("{document:?}"), &tokens, "the Firestore document");
    let tokens_field = &document.fields["tokens"];
    let Some(ValueType::MapValue(map)) = &tokens_field.value_type else {
        panic!("tokens is stored as {tokens_field:?}");
    };
    for field in ["access_token", "refresh_token"] {
        match &map.fields[field].value_type {
            Some(ValueType::StringValue(sealed)) => {
                assert!(sealed.starts_with("test."), "{field} is not sealed")
            }
            other => panic!("{field} is stored as {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refreshes racing each other, a reinstall and an uninstall, with a slow token endpoint.

/// How long one token call may take in these tests (the lease is three of them).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Another instance of the extension: its own token provider over the same store.
fn instance(t: &TestApp) -> TokenProvider {
    TokenProvider::new(
        t.app.store.clone(),
        t.app.config.keyring.clone(),
        t.app.oauth.clone().with_call_timeout(CALL_TIMEOUT),
    )
}

/// Waits until some refresher holds the lease on the install.
async fn lease_taken(t: &TestApp) {
    for _ in 0..200 {
        if install(t).await.refresh_lease.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nobody took the refresh lease");
}

/// Lets the current lease lapse, as if its holder had been paused for longer than the lease.
async fn lapse_the_lease(t: &TestApp) {
    let past = Timestamp::now() - SignedDuration::from_secs(1);
    t.app
        .store
        .update_install(&acme(), &|install| {
            let mut install = install.expect("install");
            install.refresh_lease.as_mut().expect("a lease").until = past;
            Ok(install)
        })
        .await
        .unwrap();
}

/// Waits until the simulator has handled `n` successful refreshes.
async fn refreshed_at_klaviyo(t: &TestApp, n: u32) {
    for _ in 0..200 {
        if refreshes(t) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("Klaviyo never handled refresh number {n}");
}

/// A call that Klaviyo answers 401 the first time (so the provider refreshes reactively, whatever
/// the stored expiry says), and that returns the token it was given the second time.
async fn call_with_a_401_first(tokens: &TokenProvider) -> Result<SecretString, KlaviyoCallError> {
    let calls = AtomicUsize::new(0);
    tokens
        .call(&acme(), |token| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err(shared::remote::RemoteError {
                        service: shared::remote::Service::Klaviyo,
                        call: "GET /api/accounts".into(),
                        attempts: 1,
                        kind: shared::remote::ErrorKind::Unauthorized {
                            service: shared::remote::Service::Klaviyo,
                        },
                    })
                } else {
                    Ok(token)
                }
            }
        })
        .await
}

async fn a_slow_refresh_keeps_its_lease_and_the_others_wait(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let (a, b) = (instance(&t), instance(&t));
    assert!(
        a.lease() >= CALL_TIMEOUT * 2,
        "a lease of {:?} must clearly outlast a call of {CALL_TIMEOUT:?}",
        a.lease()
    );
    expire_stored_token_in(&t, Duration::ZERO).await;
    // The token endpoint takes most of the call's timeout to answer.
    t.klaviyo.faults().inject(FaultRule::slow_answer(
        "/oauth/token",
        Duration::from_millis(2200),
        1,
    ));
    let first = tokio::spawn(async move { a.access_token(&acme()).await });
    lease_taken(&t).await;
    let second = b
        .access_token(&acme())
        .await
        .expect("the second waits, then reuses");
    let first = first.await.unwrap().expect("the slow refresh succeeds");
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(
        refreshes(&t),
        1,
        "{store:?}: the refresh token was spent once"
    );
    assert_eq!(token_endpoint_calls(&t), 1);
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::Installed);
    assert_eq!(stored.refresh_lease, None);
}

async fn a_lapsed_refresher_that_spent_the_token_first_keeps_the_install(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let (a, b) = (instance(&t), instance(&t));
    expire_stored_token_in(&t, Duration::ZERO).await;
    // A's refresh is handled at once (the token rotates) but its answer is slow to come back…
    t.klaviyo.faults().inject(FaultRule::slow_answer(
        "/oauth/token",
        Duration::from_millis(1500),
        1,
    ));
    let first = tokio::spawn(async move { a.access_token(&acme()).await });
    lease_taken(&t).await;
    refreshed_at_klaviyo(&t, 1).await;
    // … and meanwhile its lease lapses: B takes over and spends the token A already spent.
    lapse_the_lease(&t).await;
    let second = b.access_token(&acme()).await;
    assert!(
        matches!(second, Err(TokenError::Busy(_))),
        "{store:?}: B must ask to retry, not end the install: {second:?}"
    );
    assert_ne!(
        install(&t).await.status,
        InstallStatus::ReauthorizationRequired
    );

    let first = first.await.unwrap().expect("A stores the live grant");
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::Installed, "{store:?}");
    assert!(
        stored
            .history
            .iter()
            .all(|change| change.status != InstallStatus::ReauthorizationRequired),
        "{store:?}: the install was never marked for reauthorization"
    );
    assert_eq!(stored.refresh_lease, None);
    let (access, refresh) = plaintext_tokens(&t).await;
    assert_eq!(access, first.expose_secret());
    assert!(t.klaviyo.refresh_token_is_live(&refresh));
    // B's retry gets A's token without another refresh.
    let retried = instance(&t).access_token(&acme()).await.unwrap();
    assert_eq!(retried.expose_secret(), access);
    assert_eq!(refreshes(&t), 1);
}

async fn invalid_grant_for_a_replaced_token_keeps_the_install(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let (a, b) = (instance(&t), instance(&t));
    expire_stored_token_in(&t, Duration::ZERO).await;
    // A's refresh is slow to reach Klaviyo; its lease lapses, B refreshes first.
    t.klaviyo.faults().inject(FaultRule::slow(
        "/oauth/token",
        Duration::from_millis(1200),
        1,
    ));
    let first = tokio::spawn(async move { a.access_token(&acme()).await });
    lease_taken(&t).await;
    lapse_the_lease(&t).await;
    let second = b.access_token(&acme()).await.expect("B refreshes");
    // A's request then reaches Klaviyo with the rotated-away token: invalid_grant — for a token
    // that is no longer the stored one.
    let first = first.await.unwrap().expect("A gets the token B stored");
    assert_eq!(first.expose_secret(), second.expose_secret(), "{store:?}");
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::Installed, "{store:?}");
    assert_eq!(refreshes(&t), 1);
    assert_eq!(
        token_endpoint_calls(&t),
        2,
        "A's call was refused, not repeated"
    );
    let (_, refresh) = plaintext_tokens(&t).await;
    assert!(t.klaviyo.refresh_token_is_live(&refresh));
}

async fn a_refresh_finishing_after_a_reinstall_keeps_the_new_tokens(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let a = instance(&t);
    expire_stored_token_in(&t, Duration::ZERO).await;
    t.klaviyo.faults().inject(FaultRule::slow_answer(
        "/oauth/token",
        Duration::from_millis(1200),
        1,
    ));
    let refreshing = tokio::spawn(async move { a.access_token(&acme()).await });
    lease_taken(&t).await;
    // The customer installs again meanwhile: a new grant replaces the tokens.
    t.seed_tokens("acme", InstallStatus::Installed).await;
    let reinstalled = plaintext_tokens(&t).await;

    let got = refreshing
        .await
        .unwrap()
        .expect("the refresh hands out a token");
    assert_eq!(
        plaintext_tokens(&t).await,
        reinstalled,
        "{store:?}: the old grant overwrote the reinstall's tokens"
    );
    assert_eq!(
        got.expose_secret(),
        reinstalled.0,
        "the caller gets the new install's token"
    );
    assert_eq!(install(&t).await.status, InstallStatus::Installed);
}

async fn a_refresh_finishing_after_an_uninstall_revokes_its_grant(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let a = instance(&t);
    assert_eq!(t.klaviyo.live_grants(), 1);
    // A refreshes after a 401, and Klaviyo is slow to answer the refresh it has already made.
    t.klaviyo.faults().inject(FaultRule::slow_answer(
        "/oauth/token",
        Duration::from_millis(1500),
        1,
    ));
    let refreshing = tokio::spawn(async move { call_with_a_401_first(&a).await });
    lease_taken(&t).await;
    refreshed_at_klaviyo(&t, 1).await;
    // The tenant uninstalls meanwhile.
    let operator = t.operator_token.clone();
    let response = t
        .request(
            reqwest::Method::DELETE,
            "/acme/api/v1/install",
            Some(&operator),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let result = refreshing.await.unwrap();
    assert!(
        matches!(
            result,
            Err(KlaviyoCallError::Token(TokenError::NotInstalled(_)))
        ),
        "{store:?}: {result:?}"
    );
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::Uninstalled);
    assert_eq!(
        stored.tokens, None,
        "{store:?}: the old grant was written back"
    );
    assert_eq!(
        t.klaviyo.live_grants(),
        0,
        "{store:?}: the grant the late refresh obtained was left alive"
    );
}

async fn an_uninstall_racing_a_refresh_revokes_the_grant_the_refresh_stored(store: StoreKind) {
    let t = spawn(store, KlaviyoSimOptions::default()).await;
    let a = instance(&t);
    // The uninstall's revocation is slow to reach Klaviyo; a refresh lands in between.
    t.klaviyo.faults().inject(FaultRule::slow(
        "/oauth/revoke",
        Duration::from_millis(1200),
        1,
    ));
    let operator = t.operator_token.clone();
    let uninstall = t
        .request(
            reqwest::Method::DELETE,
            "/acme/api/v1/install",
            Some(&operator),
        )
        .send();
    let refresh = async {
        // Once the uninstall is waiting on its revocation, the refresh runs to completion.
        for _ in 0..200 {
            if !t
                .klaviyo
                .recorder()
                .matching("POST", "/oauth/revoke")
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        call_with_a_401_first(&a).await
    };
    let (response, refreshed) = tokio::join!(uninstall, refresh);
    let response = response.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    refreshed.expect("the refresh finished before the uninstall cleared the tokens");
    assert_eq!(refreshes(&t), 1);
    let stored = install(&t).await;
    assert_eq!(stored.status, InstallStatus::Uninstalled);
    assert_eq!(stored.tokens, None);
    assert_eq!(
        t.klaviyo.live_grants(),
        0,
        "{store:?}: the refreshed grant outlived the uninstall"
    );
    assert_eq!(
        t.klaviyo.recorder().matching("POST", "/oauth/revoke").len(),
        2,
        "the revoked token, then the one the refresh stored"
    );
}

/// Each race, on the memory store and on the Firestore emulator.
macro_rules! on_both_stores {
    ($($race:ident),* $(,)?) => {
        mod races {
            $(
                pub mod $race {
                    use crate::support::StoreKind;

                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn memory() {
                        super::super::$race(StoreKind::Memory).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn firestore() {
                        super::super::$race(StoreKind::Firestore).await;
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    a_slow_refresh_keeps_its_lease_and_the_others_wait,
    a_lapsed_refresher_that_spent_the_token_first_keeps_the_install,
    invalid_grant_for_a_replaced_token_keeps_the_install,
    a_refresh_finishing_after_a_reinstall_keeps_the_new_tokens,
    a_refresh_finishing_after_an_uninstall_revokes_its_grant,
    an_uninstall_racing_a_refresh_revokes_the_grant_the_refresh_stored,
);
