//! The Klaviyo simulator over real sockets: OAuth with PKCE, the API guard, rate limits, faults,
//! paging, profiles, consent jobs, bulk profile import jobs, webhooks and signed deliveries.
//! PKCE and HMAC are computed here independently of the simulator.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use harness::klaviyo::{
    BulkPace, BulkStatus, Channel, ConsentState, KlaviyoSim, KlaviyoSimOptions, SystemEvent,
    TokenSet, topics,
};
use harness::sim::FaultRule;
use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";
const SCOPE: &str = "accounts:read profiles:read profiles:write lists:read lists:write \
                     subscriptions:read subscriptions:write events:write webhooks:read webhooks:write";

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A PKCE pair computed here: (verifier, base64url(SHA-256(verifier))).
fn pkce(seed: char) -> (String, String) {
    let verifier: String = std::iter::repeat_n(seed, 50).collect::<String>() + "-._~";
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn authorize_url(sim: &KlaviyoSim, challenge: &str, state: &str) -> String {
    authorize_url_for(sim, challenge, state, SCOPE)
}

fn authorize_url_for(sim: &KlaviyoSim, challenge: &str, state: &str, scope: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", sim.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &sim.options().client_id)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge_method", "S256")
        .append_pair("code_challenge", challenge);
    url.into()
}

fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Authorizes (clicking Allow) and returns the code.
async fn code_for(sim: &KlaviyoSim, challenge: &str) -> String {
    let callback = sim
        .approve(&authorize_url(sim, challenge, "st-1"))
        .await
        .unwrap();
    assert_eq!(query_param(&callback, "state").as_deref(), Some("st-1"));
    query_param(&callback, "code").expect("a code")
}

fn basic(id: &str, secret: &str) -> String {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
    )
}

/// `POST /oauth/token` with the app's credentials; returns (status, JSON).
async fn token_call(sim: &KlaviyoSim, secret: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = client()
        .post(format!("{}/oauth/token", sim.url()))
        .header("authorization", basic(&sim.options().client_id, secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn exchange(sim: &KlaviyoSim, code: &str, verifier: &str) -> (StatusCode, Value) {
    let secret = sim.options().client_secret;
    token_call(
        sim,
        &secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await
}

async fn refresh(sim: &KlaviyoSim, refresh_token: &str) -> (StatusCode, Value) {
    let secret = sim.options().client_secret;
    token_call(
        sim,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// An API response: status, headers, JSON body (`Null` when empty).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn error_code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or_default()
    }
}

async fn call(
    sim: &KlaviyoSim,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", sim.url())
    };
    let mut request = client()
        .request(method, url)
        .bearer_auth(token)
        .header("revision", "2026-07-15")
        .header("accept", "application/vnd.api+json");
    if let Some(body) = body {
        request = request
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn start(options: KlaviyoSimOptions) -> (KlaviyoSim, TokenSet) {
    let sim = KlaviyoSim::start(options).await.unwrap();
    let tokens = sim.grant_tokens();
    (sim, tokens)
}

fn no_limits() -> KlaviyoSimOptions {
    KlaviyoSimOptions::default()
        .redirect_uri(REDIRECT)
        .without_rate_limits()
}

fn import_body(attributes: Value) -> Value {
    json!({"data": {"type": "profile", "attributes": attributes}})
}

// ---- OAuth ----

#[tokio::test]
async fn pkce_code_exchange_checks_verifier_and_single_use() {
    let sim = KlaviyoSim::start(no_limits()).await.unwrap();
    let (verifier, challenge) = pkce('a');
    let (wrong_verifier, _) = pkce('b');

    let code = code_for(&sim, &challenge).await;
    let (status, body) = exchange(&sim, &code, &wrong_verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    let code = code_for(&sim, &challenge).await;
    let (status, body) = exchange(&sim, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], SCOPE);
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    let (status, body) = exchange(&sim, &code, &verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    let accounts = call(&sim, &access, Method::GET, "/api/accounts", None).await;
    assert_eq!(accounts.status, StatusCode::OK);
    assert_eq!(accounts.body["data"][0]["id"], sim.options().account_id);
    assert_eq!(sim.token_counts().issued, 1);

    // A malformed verifier is a malformed request.
    let code = code_for(&sim, &challenge).await;
    let (status, body) = exchange(&sim, &code, "short").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn authorize_page_deny_and_unregistered_redirects() {
    let sim = KlaviyoSim::start(no_limits()).await.unwrap();
    let (_, challenge) = pkce('c');
    let url = authorize_url(&sim, &challenge, "st-9");

    let page = client().get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"allow\"") && html.contains("approve=true"));
    assert!(html.contains("id=\"deny\"") && html.contains("approve=false"));

    let denied = sim.deny(&url).await.unwrap();
    assert!(denied.as_str().starts_with(REDIRECT));
    assert_eq!(
        query_param(&denied, "error").as_deref(),
        Some("access_denied")
    );
    assert!(query_param(&denied, "error_description").is_some());
    assert_eq!(query_param(&denied, "state").as_deref(), Some("st-9"));
    assert_eq!(query_param(&denied, "code"), None);

    let elsewhere = url.replace("127.0.0.1%3A9", "127.0.0.1%3A10");
    let response = client().get(&elsewhere).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(sim.approve(&elsewhere).await.is_err());

    let plain = url.replace("code_challenge_method=S256", "code_challenge_method=plain");
    let rejected = sim.approve(&plain).await.unwrap();
    assert_eq!(
        query_param(&rejected, "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn client_authentication_and_grant_types() {
    let options = KlaviyoSimOptions {
        client_id: "app id:1".into(),
        client_secret: "s3cr/t+x%y".into(),
        ..no_limits()
    };
    let sim = KlaviyoSim::start(options).await.unwrap();
    let (verifier, challenge) = pkce('d');

    let code = code_for(&sim, &challenge).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", REDIRECT),
    ];
    let (status, body) = token_call(&sim, "wrong", &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client");

    let unauthenticated = client()
        .post(format!("{}/oauth/token", sim.url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        unauthenticated.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );

    // Percent-encoded credentials (as the oauth2 crate sends them) are accepted.
    let (status, body) = token_call(&sim, "s3cr/t+x%y", &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = token_call(&sim, "s3cr/t+x%y", &[("grant_type", "password")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unsupported_grant_type");
    let (_, body) = token_call(&sim, "s3cr/t+x%y", &[("code", "x")]).await;
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn refresh_rotates_when_configured() {
    let (sim, tokens) = start(no_limits()).await;
    let (status, first) = refresh(&sim, &tokens.refresh_token).await;
    assert_eq!(status, StatusCode::OK);
    let rotated = first["refresh_token"].as_str().unwrap();
    assert_ne!(rotated, tokens.refresh_token);
    assert_ne!(first["access_token"], tokens.access_token);
    let (status, body) = refresh(&sim, &tokens.refresh_token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let (status, _) = refresh(&sim, rotated).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.token_counts().refreshed, 2);
}

#[tokio::test]
async fn refresh_reissues_the_same_token_without_rotation() {
    let options = KlaviyoSimOptions {
        rotate_refresh_tokens: false,
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    for _ in 0..2 {
        let (status, body) = refresh(&sim, &tokens.refresh_token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["refresh_token"], tokens.refresh_token);
    }
}

#[tokio::test]
async fn revoked_tokens_are_dead() {
    let (sim, tokens) = start(no_limits()).await;
    let response = client()
        .post(format!("{}/oauth/revoke", sim.url()))
        .header(
            "authorization",
            basic(&sim.options().client_id, &sim.options().client_secret),
        )
        .form(&[
            ("token", tokens.refresh_token.as_str()),
            ("token_type_hint", "refresh_token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, body) = refresh(&sim, &tokens.refresh_token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
    let answer = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // "The customer uninstalled": everything dies, with no notification.
    let other = sim.grant_tokens();
    sim.revoke_all();
    let (_, body) = refresh(&sim, &other.refresh_token).await;
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(sim.token_counts().revoked, 2);
}

// ---- API guard, rate limits, faults ----

#[tokio::test]
async fn api_requires_revision_and_a_live_token() {
    let (sim, tokens) = start(no_limits()).await;
    let response = client()
        .get(format!("{}/api/accounts", sim.url()))
        .bearer_auth(&tokens.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "invalid");
    assert_eq!(body["errors"][0]["status"], 400);
    assert!(body["errors"][0]["id"].is_string());

    let unknown = call(&sim, "nope", Method::GET, "/api/accounts", None).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.error_code(), "authentication_failed");

    sim.expire_access_tokens();
    let expired = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    let (_, fresh) = refresh(&sim, &tokens.refresh_token).await;
    let again = call(
        &sim,
        fresh["access_token"].as_str().unwrap(),
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_throttles_then_recovers() {
    let (sim, tokens) = start(KlaviyoSimOptions::default()).await;
    let mut throttled = None;
    // XS allows 1/s and 15/min: a 429 must come within 16 calls however slow the machine is.
    for _ in 0..16 {
        let answer = call(
            &sim,
            &tokens.access_token,
            Method::GET,
            "/api/accounts",
            None,
        )
        .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(answer);
            break;
        }
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["ratelimit-limit"], "1, 1;w=1, 15;w=60");
        assert!(answer.headers.contains_key("ratelimit-remaining"));
        assert!(answer.headers.contains_key("ratelimit-reset"));
    }
    let throttled = throttled.expect("a 429");
    assert_eq!(throttled.error_code(), "throttled");
    assert!(!throttled.headers.contains_key("ratelimit-remaining"));
    let retry_after: u64 = throttled.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let recovered = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(recovered.status, StatusCode::OK);

    // Another endpoint has its own counter; switched off, nothing is throttled.
    let other = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/webhook-topics",
        None,
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    sim.set_rate_limits(harness::klaviyo::RateLimits {
        enabled: false,
        scale: 1.0,
    });
    for _ in 0..3 {
        let answer = call(
            &sim,
            &tokens.access_token,
            Method::GET,
            "/api/accounts",
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn injected_faults_answer_klaviyo_errors() {
    let (sim, tokens) = start(no_limits()).await;
    sim.faults()
        .inject(FaultRule::status("/api/profiles", 503, 2).method("GET"));
    for _ in 0..2 {
        let answer = call(
            &sim,
            &tokens.access_token,
            Method::GET,
            "/api/profiles",
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.body["errors"][0]["status"], 503);
    }
    let ok = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/profiles",
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);

    // Through the control API, as a `make dev` user would.
    let added = client()
        .post(format!("{}/_sim/faults", sim.url()))
        .json(&json!({"path": "/api/events", "status": 429, "retry_after": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::NO_CONTENT);
    let throttled = call(
        &sim,
        &tokens.access_token,
        Method::POST,
        "/api/events",
        Some(json!({})),
    )
    .await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.error_code(), "throttled");
    assert_eq!(throttled.headers["retry-after"], "7");

    sim.faults().inject(FaultRule::slow(
        "/api/accounts",
        Duration::from_millis(300),
        1,
    ));
    let started = Instant::now();
    let slow = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(slow.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let recorded = sim.recorder().matching("GET", "/api/profiles");
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].headers["revision"], "2026-07-15");
}

// ---- Profiles and paging ----

#[tokio::test]
async fn paging_follows_links_next() {
    let (sim, tokens) = start(no_limits()).await;
    for i in 0..45 {
        sim.seed_profile(json!({"email": format!("p{i}@example.test")}))
            .unwrap();
    }
    let mut next = Some(format!("{}/api/profiles?page[size]=20", sim.url()));
    let (mut seen, mut pages) = (Vec::new(), 0);
    while let Some(url) = next {
        let page = call(&sim, &tokens.access_token, Method::GET, &url, None).await;
        assert_eq!(page.status, StatusCode::OK);
        if pages == 0 {
            assert!(page.body["links"]["prev"].is_null());
        } else {
            assert!(page.body["links"]["prev"].is_string());
        }
        seen.extend(
            page.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].clone()),
        );
        next = page.body["links"]["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 3);
    seen.dedup();
    assert_eq!(seen.len(), 45);
    assert!(
        seen.iter()
            .all(|id| id.as_str().is_some_and(|s| s.len() == 26))
    );
    let too_big = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/profiles?page[size]=101",
        None,
    )
    .await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn profile_import_upserts_and_detects_duplicates() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let created = call(&sim, token, Method::POST, "/api/profile-import", Some(import_body(json!({
        "email": "Ann@Example.test", "first_name": "Ann", "last_name": "Lee", "external_id": "omneo-1",
        "location": {"city": "Melbourne"}, "properties": {"tier": "gold"}
    })))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["data"]["id"].as_str().unwrap().to_owned();

    let updated = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-import",
        Some(import_body(json!({
            "email": "ann@example.test", "first_name": null, "properties": {"tier": "silver"}
        }))),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["data"]["id"], id);
    let attributes = &updated.body["data"]["attributes"];
    assert!(attributes["first_name"].is_null(), "null clears");
    assert_eq!(attributes["last_name"], "Lee", "absent leaves");
    assert_eq!(attributes["location"]["city"], "Melbourne");
    assert_eq!(attributes["properties"]["tier"], "silver");

    let other = sim
        .seed_profile(json!({"phone_number": "+61400000001"}))
        .unwrap();
    let conflict = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-import",
        Some(import_body(json!({
            "email": "ann@example.test", "phone_number": "+61400000001"
        }))),
    )
    .await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.error_code(), "duplicate_profile");
    assert_eq!(
        conflict.body["errors"][0]["meta"]["duplicate_profile_id"],
        other
    );

    let bad_phone = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-import",
        Some(import_body(json!({
            "email": "bob@example.test", "phone_number": "0400 000 000"
        }))),
    )
    .await;
    assert_eq!(bad_phone.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_phone.body["errors"][0]["source"]["pointer"],
        "/data/attributes/phone_number"
    );

    let search = call(
        &sim,
        token,
        Method::GET,
        "/api/profiles?filter=equals(external_id,\"omneo-1\")",
        None,
    )
    .await;
    assert_eq!(search.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(search.body["data"][0]["id"], id);
    let any = call(
        &sim,
        token,
        Method::GET,
        "/api/profiles?filter=any(email,[\"ann@example.test\",\"nobody@example.test\"])",
        None,
    )
    .await;
    assert_eq!(any.body["data"].as_array().unwrap().len(), 1);

    let got = call(
        &sim,
        token,
        Method::GET,
        &format!("/api/profiles/{id}?additional-fields[profile]=subscriptions"),
        None,
    )
    .await;
    assert_eq!(
        got.body["data"]["attributes"]["subscriptions"]["email"]["marketing"]["consent"],
        "NEVER_SUBSCRIBED"
    );
    let missing = call(
        &sim,
        token,
        Method::GET,
        "/api/profiles/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "not_found");
}

// ---- Consent, events, deletion, data sources ----

fn subscribe_job(kind: &str, list: Option<&str>, profiles: Value, historical: bool) -> Value {
    let mut body = json!({"data": {"type": kind, "attributes": {
        "custom_source": "omneo", "historical_import": historical, "profiles": {"data": profiles}
    }}});
    if let Some(list) = list {
        body["data"]["relationships"] = json!({"list": {"data": {"type": "list", "id": list}}});
    }
    body
}

fn email_consent(email: &str, consent: &str) -> Value {
    json!({"type": "profile", "attributes": {"email": email,
        "subscriptions": {"email": {"marketing": {"consent": consent}}}}})
}

#[tokio::test]
async fn subscription_jobs_apply_consent_and_the_list_trap() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let list = sim.create_list("Master");
    assert_eq!(list.len(), 6);

    let job = subscribe_job(
        "profile-subscription-bulk-create-job",
        Some(&list),
        json!([email_consent("member@example.test", "SUBSCRIBED")]),
        false,
    );
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        Some(job),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(answer.body.is_null());
    let member = sim.profile_by_email("member@example.test").unwrap();
    assert_eq!(
        member.subscriptions.email_marketing.consent,
        ConsentState::Subscribed
    );
    assert_eq!(
        member
            .subscriptions
            .email_marketing
            .custom_method_detail
            .as_deref(),
        Some("omneo")
    );
    assert_eq!(sim.list_members(&list), vec![member.id.clone()]);
    let membership = call(
        &sim,
        token,
        Method::GET,
        &format!(
            "/api/lists/{list}/relationships/profiles?filter=equals(email,\"member@example.test\")"
        ),
        None,
    )
    .await;
    assert_eq!(membership.body["data"][0]["id"], member.id);

    // Without a list or historical import, a brand-new email does not become a profile.
    let job = subscribe_job(
        "profile-subscription-bulk-create-job",
        None,
        json!([email_consent("ghost@example.test", "SUBSCRIBED")]),
        false,
    );
    call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        Some(job),
    )
    .await;
    assert!(sim.profile_by_email("ghost@example.test").is_none());

    // Historical imports need consented_at.
    let job = subscribe_job(
        "profile-subscription-bulk-create-job",
        None,
        json!([email_consent("old@example.test", "SUBSCRIBED")]),
        true,
    );
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        Some(job),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    // The trap: a list-scoped unsubscribe removes members from the list but globally
    // unsubscribes everyone else.
    let outsider = sim
        .seed_profile(json!({"email": "outsider@example.test"}))
        .unwrap();
    sim.change_consent(&outsider, Channel::Email, ConsentState::Subscribed, "FORM")
        .unwrap();
    let job = subscribe_job(
        "profile-subscription-bulk-delete-job",
        Some(&list),
        json!([
            email_consent("member@example.test", "UNSUBSCRIBED"),
            email_consent("outsider@example.test", "UNSUBSCRIBED"),
        ]),
        false,
    );
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-delete-jobs",
        Some(job),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(sim.list_members(&list).is_empty());
    assert_eq!(
        sim.consent(&member.id).unwrap().email_marketing.consent,
        ConsentState::Subscribed
    );
    assert_eq!(
        sim.consent(&outsider).unwrap().email_marketing.consent,
        ConsentState::Unsubscribed
    );

    let topics_queued: Vec<String> = sim.pending_events().into_iter().map(|e| e.topic).collect();
    assert_eq!(
        topics_queued,
        vec![
            topics::SUBSCRIBED_TO_EMAIL,
            topics::SUBSCRIBED_TO_LIST,
            topics::SUBSCRIBED_TO_EMAIL,
            topics::UNSUBSCRIBED_FROM_LIST,
            topics::UNSUBSCRIBED_FROM_EMAIL,
        ]
    );
}

#[tokio::test]
async fn events_dedupe_and_deletion_needs_one_identifier() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let event = json!({"data": {"type": "event", "attributes": {
        "properties": {"points": 5}, "unique_id": "u-1",
        "metric": {"data": {"type": "metric", "attributes": {"name": "Reward Earned"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": "e@example.test"}}}
    }}});
    for _ in 0..2 {
        let answer = call(
            &sim,
            token,
            Method::POST,
            "/api/events",
            Some(event.clone()),
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
    }
    assert_eq!(sim.events().len(), 1);
    let profile = sim.profile_by_email("e@example.test").unwrap();
    assert_eq!(sim.events()[0].profile_id, profile.id);

    let both = json!({"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": {
        "type": "profile", "id": profile.id, "attributes": {"email": "e@example.test"}}}}}});
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/data-privacy-deletion-jobs",
        Some(both),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let one = json!({"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {"data": {
        "type": "profile", "attributes": {"email": "e@example.test"}}}}}});
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/data-privacy-deletion-jobs",
        Some(one),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(sim.profile(&profile.id).is_none());
    assert_eq!(
        sim.deletion_jobs()[0].deleted_profile_id.as_deref(),
        Some(profile.id.as_str())
    );
}

#[tokio::test]
async fn data_sources_and_records() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let source = json!({"data": {"type": "data-source", "attributes": {
        "title": "Omneo Rewards", "visibility": "private", "description": "loyalty"}}});
    let created = call(
        &sim,
        token,
        Method::POST,
        "/api/data-sources",
        Some(source.clone()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["data"]["id"].as_str().unwrap().to_owned();
    let duplicate = call(&sim, token, Method::POST, "/api/data-sources", Some(source)).await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);

    let record = |r: Value| json!({"type": "data-source-record", "attributes": {"record": r}});
    let relationships = json!({"data-source": {"data": {"type": "data-source", "id": id}}});
    let one = json!({"data": {"type": "data-source-record-create-job",
        "attributes": {"data-source-record": {"data": record(json!({"id": "r1"}))}},
        "relationships": relationships}});
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/data-source-record-create-jobs",
        Some(one),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let bulk = json!({"data": {"type": "data-source-record-bulk-create-job",
        "attributes": {"data-source-records": {"data": [record(json!({"id": "r2"})), record(json!({"id": "r3"}))]}},
        "relationships": relationships}});
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/data-source-record-bulk-create-jobs",
        Some(bulk),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let ids: Vec<Value> = sim
        .records(&id)
        .into_iter()
        .map(|r| r.record["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("r1"), json!("r2"), json!("r3")]);

    let too_many: Vec<Value> = (0..501).map(|i| record(json!({"id": i}))).collect();
    let bulk = json!({"data": {"type": "data-source-record-bulk-create-job",
        "attributes": {"data-source-records": {"data": too_many}}, "relationships": relationships}});
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/data-source-record-bulk-create-jobs",
        Some(bulk),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);

    let listed = call(&sim, token, Method::GET, "/api/data-sources", None).await;
    assert_eq!(
        listed.body["data"][0]["attributes"]["title"],
        "Omneo Rewards"
    );
    let deleted = call(
        &sim,
        token,
        Method::DELETE,
        &format!("/api/data-sources/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
}

// ---- Webhooks and deliveries ----

fn webhook_body(name: &str, url: &str, topic_ids: &[&str]) -> Value {
    let topics: Vec<Value> = topic_ids
        .iter()
        .map(|t| json!({"type": "webhook-topic", "id": t}))
        .collect();
    json!({"data": {"type": "webhook",
        "attributes": {"name": name, "endpoint_url": url, "secret_key": "whsec-test-1"},
        "relationships": {"webhook-topics": {"data": topics}}}})
}

#[tokio::test]
async fn webhooks_are_masked_capped_and_patched() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let topic_list = call(&sim, token, Method::GET, "/api/webhook-topics", None).await;
    assert!(
        topic_list.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == topics::UNSUBSCRIBED_FROM_EMAIL)
    );

    let created = call(
        &sim,
        token,
        Method::POST,
        "/api/webhooks",
        Some(webhook_body(
            "Omneo t1",
            "https://hooks.example.test/t1/api/v1/webhooks/klaviyo/system",
            &[topics::BOUNCED_EMAIL],
        )),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let attributes = &created.body["data"]["attributes"];
    assert_eq!(
        attributes["endpoint_url"],
        "https://hooks.example.test/*****"
    );
    assert!(attributes.get("secret_key").is_none());
    assert!(!created.body.to_string().contains("whsec-test-1"));
    let id = created.body["data"]["id"].as_str().unwrap().to_owned();

    let insecure = call(
        &sim,
        token,
        Method::POST,
        "/api/webhooks",
        Some(webhook_body(
            "x",
            "http://hooks.example.test/x",
            &[topics::BOUNCED_EMAIL],
        )),
    )
    .await;
    assert_eq!(insecure.status, StatusCode::BAD_REQUEST);

    let patch = json!({"data": {"type": "webhook", "id": id, "attributes": {"enabled": false},
        "relationships": {"webhook-topics": {"data": [
            {"type": "webhook-topic", "id": topics::SUBSCRIBED_TO_EMAIL},
            {"type": "webhook-topic", "id": topics::UNSUBSCRIBED_FROM_EMAIL}]}}}});
    let patched = call(
        &sim,
        token,
        Method::PATCH,
        &format!("/api/webhooks/{id}"),
        Some(patch),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["data"]["attributes"]["enabled"], false);
    assert_eq!(
        patched.body["data"]["relationships"]["webhook-topics"]["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        sim.webhooks()[0].topics,
        vec![topics::SUBSCRIBED_TO_EMAIL, topics::UNSUBSCRIBED_FROM_EMAIL]
    );

    for i in 1..10 {
        let answer = call(
            &sim,
            token,
            Method::POST,
            "/api/webhooks",
            Some(webhook_body(
                &format!("w{i}"),
                "https://hooks.example.test/w",
                &[topics::BOUNCED_EMAIL],
            )),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let eleventh = call(
        &sim,
        token,
        Method::POST,
        "/api/webhooks",
        Some(webhook_body(
            "w10",
            "https://hooks.example.test/w",
            &[topics::BOUNCED_EMAIL],
        )),
    )
    .await;
    assert_eq!(eleventh.status, StatusCode::BAD_REQUEST);
    let listed = call(&sim, token, Method::GET, "/api/webhooks", None).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 10);
    assert!(
        listed.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["attributes"]["endpoint_url"] == "https://hooks.example.test/*****")
    );

    let deleted = call(
        &sim,
        token,
        Method::DELETE,
        &format!("/api/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = call(
        &sim,
        token,
        Method::GET,
        &format!("/api/webhooks/{id}"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A real receiver that records every delivery and answers 200.
async fn receiver() -> (String, Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push((headers, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, received, handle)
}

#[tokio::test]
async fn deliveries_are_batched_and_signed() {
    let options = KlaviyoSimOptions {
        delivery_timestamp_skew: jiff::SignedDuration::from_hours(-2),
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    let token = tokens.access_token.as_str();
    let (url, received, server) = receiver().await;
    let created = call(
        &sim,
        token,
        Method::POST,
        "/api/webhooks",
        Some(webhook_body(
            "Omneo t1",
            &url,
            &[
                topics::SUBSCRIBED_TO_EMAIL,
                topics::SUBSCRIBED_TO_LIST,
                topics::UNSUBSCRIBED_FROM_EMAIL,
            ],
        )),
    )
    .await;
    let webhook_id = created.body["data"]["id"].as_str().unwrap().to_owned();
    let list = sim.create_list("Master");

    let job = subscribe_job(
        "profile-subscription-bulk-create-job",
        Some(&list),
        json!([
            email_consent("a@example.test", "SUBSCRIBED"),
            email_consent("b@example.test", "SUBSCRIBED"),
        ]),
        false,
    );
    call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        Some(job),
    )
    .await;
    let deliveries = sim.deliver_pending().await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, Some(200));
    assert!(sim.pending_events().is_empty());

    let (headers, body) = received.lock().unwrap()[0].clone();
    let timestamp = headers["klaviyo-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-test-1").unwrap();
    mac.update(&body);
    mac.update(timestamp.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(headers["klaviyo-signature"].to_str().unwrap(), expected);
    assert_eq!(headers["klaviyo-webhook-id"].to_str().unwrap(), webhook_id);
    let sent = httpdate::parse_http_date(timestamp).unwrap();
    let behind = std::time::SystemTime::now().duration_since(sent).unwrap();
    assert!(
        behind > Duration::from_secs(2 * 3600 - 300),
        "the header is skewed"
    );

    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["meta"]["klaviyo_account_id"], sim.options().account_id);
    assert_eq!(body["meta"]["klaviyo_webhook_id"], webhook_id);
    let meta_time: jiff::Timestamp = body["meta"]["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(
        (jiff::Timestamp::now() - meta_time).get_seconds().abs() < 300,
        "meta.timestamp is accurate"
    );
    let entries = body["data"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "two profiles × (email + list)");
    let email_event = entries
        .iter()
        .find(|e| e["topic"] == topics::SUBSCRIBED_TO_EMAIL)
        .unwrap();
    let event = &email_event["payload"]["data"];
    let properties = &event["attributes"]["event_properties"];
    assert_eq!(properties["custom_method_detail"], "omneo");
    assert_eq!(properties["method"], "API");
    assert!(
        properties["email_address"]
            .as_str()
            .unwrap()
            .ends_with("@example.test")
    );
    assert!(event["attributes"]["datetime"].is_string());
    assert!(event["relationships"]["profile"]["data"]["id"].is_string());
    let list_event = entries
        .iter()
        .find(|e| e["topic"] == topics::SUBSCRIBED_TO_LIST)
        .unwrap();
    assert_eq!(
        list_event["payload"]["data"]["attributes"]["event_properties"]["list_id"],
        list
    );
    let external_ids: std::collections::HashSet<&str> = entries
        .iter()
        .map(|e| e["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(external_ids.len(), 4);

    // A Klaviyo-side change, delivered explicitly; topics the webhook lacks are not sent.
    let profile = sim.profile_by_email("a@example.test").unwrap();
    let deliveries = sim
        .deliver(vec![
            SystemEvent::new(
                topics::UNSUBSCRIBED_FROM_EMAIL,
                &profile.id,
                Some("a@example.test"),
            )
            .method("PREFERENCE_PAGE"),
            SystemEvent::new(topics::BOUNCED_EMAIL, &profile.id, Some("a@example.test")),
        ])
        .await
        .unwrap();
    assert_eq!(deliveries[0].events.len(), 1);
    assert_eq!(sim.redeliver(&deliveries[0]).await.unwrap(), 200);
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    assert_eq!(
        received[1].1, received[2].1,
        "a redelivery is byte for byte"
    );
    server.abort();
}

// ---- The `/_sim` look at the account ----

/// `GET {sim}{path}` without a token or revision; answers (status, content type, JSON).
async fn control_get(sim: &KlaviyoSim, path: &str) -> (StatusCode, String, Value) {
    let response = client()
        .get(format!("{}{path}", sim.url()))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test]
async fn control_routes_show_profiles_with_consent_and_lists_and_the_events() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let list = sim.create_list("Master");
    let job = subscribe_job(
        "profile-subscription-bulk-create-job",
        Some(&list),
        json!([{"type": "profile", "attributes": {"email": "member@example.test",
            "phone_number": "+61412345678",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}},
                              "sms": {"marketing": {"consent": "SUBSCRIBED"}}}}}]),
        false,
    );
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        Some(job),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let other = sim
        .seed_profile(json!({"email": "other@example.test", "first_name": "Ola"}))
        .unwrap();
    let event = json!({"data": {"type": "event", "attributes": {
        "properties": {"points": 5},
        "metric": {"data": {"type": "metric", "attributes": {"name": "Reward Earned"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": "other@example.test"}}}
    }}});
    let answer = call(&sim, token, Method::POST, "/api/events", Some(event)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let member = sim.profile_by_email("member@example.test").unwrap();

    // Every profile, oldest first, with its consent per channel and its lists; no token needed.
    let (status, content_type, profiles) = control_get(&sim, "/_sim/profiles").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/json");
    let ids: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [member.id.as_str(), other.as_str()]);
    let shown = &profiles[0];
    assert_eq!(shown["email"], "member@example.test");
    assert_eq!(shown["phone_number"], "+61412345678");
    assert_eq!(shown["lists"], json!([list]));
    for channel in ["email_marketing", "sms_marketing"] {
        let consent = &shown["subscriptions"][channel];
        assert_eq!(consent["consent"], "SUBSCRIBED", "{channel}: {shown:#}");
        assert_eq!(consent["custom_method_detail"], "omneo", "{channel}");
    }
    assert_eq!(
        shown["subscriptions"]["sms_transactional"]["consent"],
        "NEVER_SUBSCRIBED"
    );
    assert_eq!(profiles[1]["first_name"], "Ola");
    assert_eq!(profiles[1]["lists"], json!([]));

    // One profile; an unknown id is Klaviyo's 404.
    let (status, _, one) = control_get(&sim, &format!("/_sim/profiles/{}", member.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&one, shown);
    let (status, _, missing) = control_get(&sim, "/_sim/profiles/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["errors"][0]["code"], "not_found");

    // The events accepted.
    let (status, _, events) = control_get(&sim, "/_sim/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["metric"], "Reward Earned");
    assert_eq!(events[0]["profile_id"], other.as_str());
    assert_eq!(events[0]["properties"], json!({"points": 5}));

    // Not API endpoints: neither recorded nor listed (the SDK conformance check ignores them).
    assert!(
        sim.recorder()
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/_sim")),
        "control calls are not recorded"
    );
    assert!(
        sim.endpoints().iter().all(|e| e.path.starts_with("/api/")),
        "{:?}",
        sim.endpoints()
    );
}

/// `POST {sim}{path}` with a raw body, without a token or revision; answers (status, JSON),
/// checking the content type.
async fn control_post(sim: &KlaviyoSim, path: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().post(format!("{}{path}", sim.url()));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    // The simulator's own shapes as plain JSON; errors are Klaviyo's, JSON:API.
    let expected = if status.is_success() {
        "application/json"
    } else {
        "application/vnd.api+json"
    };
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        expected,
        "{path}: {status}"
    );
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn control_routes_change_consent_on_klaviyos_side_and_deliver_the_outbox() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let (url, received, server) = receiver().await;
    let mut webhook_ids = Vec::new();
    for (name, endpoint) in [
        ("Omneo t1", url.as_str()),
        ("Gone", "http://127.0.0.1:9/hook"),
    ] {
        let topics: &[&str] = if name == "Gone" {
            &[topics::UNSUBSCRIBED_FROM_EMAIL]
        } else {
            &[topics::UNSUBSCRIBED_FROM_EMAIL, topics::SUBSCRIBED_TO_SMS]
        };
        let created = call(
            &sim,
            token,
            Method::POST,
            "/api/webhooks",
            Some(webhook_body(name, endpoint, topics)),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        webhook_ids.push(created.body["data"]["id"].as_str().unwrap().to_owned());
    }
    let id = sim
        .seed_profile(json!({"email": "ada@example.test", "phone_number": "+61412345678"}))
        .unwrap();
    let consent =
        |channel: &str, state: &str| format!(r#"{{"channel":"{channel}","consent":"{state}"}}"#);

    // An unsubscribe by id: the method defaults to the preference page; the event is queued.
    let path = format!("/_sim/profiles/{id}/consent");
    let (status, pending) =
        control_post(&sim, &path, Some(&consent("email", "UNSUBSCRIBED"))).await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    let stored = sim.consent(&id).unwrap().email_marketing;
    assert_eq!(stored.consent, ConsentState::Unsubscribed);
    assert_eq!(stored.method.as_deref(), Some("PREFERENCE_PAGE"));
    let outbox = sim.pending_events();
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        pending,
        json!([{
            "topic": topics::UNSUBSCRIBED_FROM_EMAIL,
            "event_id": outbox[0].event_id,
            "profile_id": id,
            "email": "ada@example.test",
            "method": "PREFERENCE_PAGE",
            "custom_method_detail": null
        }])
    );

    // By email (case-insensitive), with a method; the answer is the whole outbox.
    let (status, pending) = control_post(
        &sim,
        "/_sim/profiles/ADA@example.test/consent",
        Some(r#"{"channel":"sms","consent":"SUBSCRIBED","method":"API"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pending}");
    assert_eq!(pending.as_array().map(Vec::len), Some(2), "{pending}");
    assert_eq!(pending[1]["topic"], topics::SUBSCRIBED_TO_SMS);
    assert_eq!(pending[1]["method"], "API");
    assert_eq!(
        sim.consent(&id).unwrap().sms_marketing.consent,
        ConsentState::Subscribed
    );
    // No change, no event; a change no webhook subscribes to is queued all the same.
    let (status, pending) =
        control_post(&sim, &path, Some(&consent("email", "UNSUBSCRIBED"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending.as_array().map(Vec::len), Some(2), "{pending}");
    sim.change_consent(&id, Channel::Sms, ConsentState::Unsubscribed, "API")
        .unwrap();
    assert_eq!(sim.pending_events().len(), 3);

    // Bad bodies: Klaviyo's 400 pointing at the member; nothing changes.
    for (body, pointer) in [
        ("not json", "/"),
        (r#"["email"]"#, "/"),
        (r#"{"channel":"fax","consent":"UNSUBSCRIBED"}"#, "/channel"),
        (r#"{"consent":"UNSUBSCRIBED"}"#, "/channel"),
        (
            r#"{"channel":"email","consent":"unsubscribed"}"#,
            "/consent",
        ),
        (r#"{"channel":"email"}"#, "/consent"),
        (
            r#"{"channel":"email","consent":"SUBSCRIBED","method":" "}"#,
            "/method",
        ),
        (
            r#"{"channel":"email","consent":"SUBSCRIBED","method":7}"#,
            "/method",
        ),
        (
            r#"{"channel":"email","consent":"SUBSCRIBED","list":"x"}"#,
            "/list",
        ),
    ] {
        let (status, error) = control_post(&sim, &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["errors"][0]["code"], "invalid", "{body}");
        assert_eq!(error["errors"][0]["source"]["pointer"], pointer, "{body}");
    }
    assert_eq!(
        sim.consent(&id).unwrap().email_marketing.consent,
        ConsentState::Unsubscribed
    );
    assert_eq!(sim.pending_events().len(), 3);

    // An unknown profile, by id or email: Klaviyo's 404.
    for unknown in ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "nobody@example.test"] {
        let (status, error) = control_post(
            &sim,
            &format!("/_sim/profiles/{unknown}/consent"),
            Some(&consent("email", "SUBSCRIBED")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {error}");
        assert_eq!(error["errors"][0]["code"], "not_found");
        assert_eq!(
            error["errors"][0]["detail"],
            format!("Profile {unknown} not found.")
        );
    }
    // The profile page takes the email too.
    let (status, _, shown) = control_get(&sim, "/_sim/profiles/ada@example.test").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(
        shown["subscriptions"]["email_marketing"]["consent"],
        "UNSUBSCRIBED"
    );

    // Deliver: one signed POST per webhook with the events of its topics, and each answer.
    let (status, deliveries) = control_post(&sim, "/_sim/deliver", None).await;
    assert_eq!(status, StatusCode::OK, "{deliveries}");
    assert!(sim.pending_events().is_empty(), "the outbox is drained");
    let deliveries = deliveries.as_array().unwrap();
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    let delivered = &deliveries[0];
    assert_eq!(delivered["webhook_id"], webhook_ids[0].as_str());
    assert_eq!(delivered["endpoint_url"], url.as_str());
    assert_eq!(delivered["status"], 200);
    assert_eq!(delivered["error"], Value::Null);
    let topics_sent: Vec<&str> = delivered["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics_sent,
        [topics::UNSUBSCRIBED_FROM_EMAIL, topics::SUBSCRIBED_TO_SMS],
        "not the SMS unsubscribe, which the webhook does not take"
    );
    assert!(
        delivered["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["profile_id"] == id.as_str() && e["event_id"].is_string())
    );
    let failed = &deliveries[1];
    assert_eq!(failed["webhook_id"], webhook_ids[1].as_str());
    assert_eq!(failed["status"], Value::Null);
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains(webhook_ids[1].as_str())),
        "{failed}"
    );
    assert_eq!(failed["events"].as_array().map(Vec::len), Some(1));

    // What the receiver got is what the answer says, signed with the webhook's secret.
    let (headers, body) = received.lock().unwrap()[0].clone();
    let timestamp = headers["klaviyo-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec-test-1").unwrap();
    mac.update(&body);
    mac.update(timestamp.as_bytes());
    assert_eq!(
        headers["klaviyo-signature"].to_str().unwrap(),
        hex::encode(mac.finalize().into_bytes())
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    let event_ids: Vec<&Value> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["data"]["id"])
        .collect();
    let answered: Vec<&Value> = delivered["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    assert_eq!(event_ids, answered);
    assert_eq!(
        body["data"][0]["payload"]["data"]["attributes"]["event_properties"]["method"],
        "PREFERENCE_PAGE"
    );

    // Nothing left: an empty list, and nothing sent.
    let (status, deliveries) = control_post(&sim, "/_sim/deliver", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deliveries, json!([]));
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(
        sim.recorder()
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/_sim")),
        "control calls are not recorded"
    );
    server.abort();
}

// ---- Bulk profile import ----

fn bulk_profile(attributes: Value) -> Value {
    json!({"type": "profile", "attributes": attributes})
}

fn bulk_job(profiles: Vec<Value>, lists: &[&str]) -> Value {
    let mut body = json!({"data": {"type": "profile-bulk-import-job",
        "attributes": {"profiles": {"data": profiles}}}});
    if !lists.is_empty() {
        let lists: Vec<Value> = lists
            .iter()
            .map(|id| json!({"type": "list", "id": id}))
            .collect();
        body["data"]["relationships"] = json!({"lists": {"data": lists}});
    }
    body
}

/// Submits a job (202); returns its id.
async fn submit_bulk(sim: &KlaviyoSim, token: &str, body: Value) -> String {
    let answer = call(
        sim,
        token,
        Method::POST,
        "/api/profile-bulk-import-jobs",
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    answer.body["data"]["id"].as_str().unwrap().to_owned()
}

/// The job's attributes.
async fn bulk_status(sim: &KlaviyoSim, token: &str, id: &str) -> Value {
    let answer = call(
        sim,
        token,
        Method::GET,
        &format!("/api/profile-bulk-import-jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["data"]["type"], "profile-bulk-import-job");
    answer.body["data"]["attributes"].clone()
}

/// Every item of a cursor-paged collection, following `links.next`; and how many pages.
async fn all_pages(sim: &KlaviyoSim, token: &str, first: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages) = (Vec::new(), 0);
    let mut next = Some(first.to_owned());
    while let Some(url) = next {
        let page = call(sim, token, Method::GET, &url, None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        items.extend(page.body["data"].as_array().unwrap().iter().cloned());
        next = page.body["links"]["next"].as_str().map(str::to_owned);
        pages += 1;
    }
    (items, pages)
}

fn timestamp(value: &Value) -> jiff::Timestamp {
    value.as_str().expect("a timestamp").parse().unwrap()
}

#[tokio::test]
async fn bulk_import_runs_queued_processing_complete_and_upserts_without_clearing() {
    // Queued for an hour until the test lets it run.
    let options = KlaviyoSimOptions {
        bulk_pace: BulkPace {
            start_after: Duration::from_secs(3600),
            profiles_per_second: 5_000.0,
        },
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    let token = tokens.access_token.as_str();
    let existing = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-import",
        Some(import_body(json!({
            "email": "ann@example.test", "first_name": "Ann", "last_name": "Lee",
            "properties": {"tier": "silver", "store": "Richmond"}
        }))),
    )
    .await;
    assert_eq!(existing.status, StatusCode::CREATED);
    let ann = existing.body["data"]["id"].as_str().unwrap().to_owned();
    let list = sim.create_list("Backfill");

    let mut profiles = vec![bulk_profile(json!({
        "email": "ANN@example.test", "first_name": null, "last_name": "Li",
        "properties": {"tier": "gold", "store": null}
    }))];
    profiles.extend((0..8).map(|i| {
        bulk_profile(json!({
            "email": format!("new{i}@example.test"), "external_id": format!("omneo-{i}"),
            "first_name": format!("New {i}"), "location": {"city": "Melbourne"}
        }))
    }));
    let bad_email = bulk_profile(json!({"email": "not-an-email", "first_name": "Bad"}));
    profiles.push(bad_email.clone());
    profiles.push(bulk_profile(json!({"first_name": "Nobody"})));
    let answer = call(
        &sim,
        token,
        Method::POST,
        "/api/profile-bulk-import-jobs",
        Some(bulk_job(profiles, &[&list])),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["data"]["id"].as_str().unwrap().to_owned();
    let accepted = &answer.body["data"]["attributes"];
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["total_count"], 11);
    assert_eq!(accepted["completed_count"], 0);
    assert_eq!(accepted["failed_count"], 0);
    assert!(accepted["started_at"].is_null() && accepted["completed_at"].is_null());
    assert!(timestamp(&accepted["expires_at"]) > timestamp(&accepted["created_at"]));
    assert_eq!(
        answer.body["data"]["relationships"]["lists"]["data"][0]["id"],
        list
    );

    let queued = bulk_status(&sim, token, &id).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(sim.profiles().len(), 1, "nothing processed while queued");

    // Four profiles a second: processing for ~2.75 s.
    sim.set_bulk_pace(BulkPace {
        start_after: Duration::ZERO,
        profiles_per_second: 4.0,
    });
    let processing = bulk_status(&sim, token, &id).await;
    assert_eq!(processing["status"], "processing");
    assert!(processing["started_at"].is_string());
    assert!(processing["completed_count"].as_u64().unwrap() < 11);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_partial = false;
    let done = loop {
        let status = bulk_status(&sim, token, &id).await;
        let processed =
            status["completed_count"].as_u64().unwrap() + status["failed_count"].as_u64().unwrap();
        if status["status"] == "complete" {
            assert_eq!(processed, 11);
            break status;
        }
        assert_eq!(status["status"], "processing");
        seen_partial |= processed > 0;
        assert!(
            Instant::now() < deadline,
            "the job did not complete: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen_partial, "profiles are processed over time");
    assert_eq!(done["completed_count"], 9);
    assert_eq!(done["failed_count"], 2);
    let (created, started, completed) = (
        timestamp(&done["created_at"]),
        timestamp(&done["started_at"]),
        timestamp(&done["completed_at"]),
    );
    assert!(created <= started && started < completed);
    assert!(completed.duration_since(started) >= jiff::SignedDuration::from_secs(2));

    // Null leaves, a value replaces, absent leaves; map members alike.
    let ann_now = sim.profile(&ann).unwrap();
    assert_eq!(
        ann_now.first_name.as_deref(),
        Some("Ann"),
        "null does not clear"
    );
    assert_eq!(ann_now.last_name.as_deref(), Some("Li"));
    assert_eq!(ann_now.properties["tier"], "gold");
    assert_eq!(ann_now.properties["store"], "Richmond");
    let new3 = sim.profile_by_email("new3@example.test").unwrap();
    assert_eq!(new3.external_id.as_deref(), Some("omneo-3"));
    assert_eq!(new3.first_name.as_deref(), Some("New 3"));
    assert_eq!(new3.location["city"], "Melbourne");
    assert_eq!(sim.profiles().len(), 9);

    let (errors, _) = all_pages(
        &sim,
        token,
        &format!("/api/profile-bulk-import-jobs/{id}/import-errors"),
    )
    .await;
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["type"], "import-error");
    let invalid = &errors[0]["attributes"];
    assert_eq!(invalid["code"], "invalid");
    // Pointers into the job's document: the tenth profile's email, the eleventh profile's
    // attributes (it has no identifier).
    assert_eq!(
        invalid["source"]["pointer"],
        "/data/attributes/profiles/data/9/attributes/email"
    );
    assert_eq!(invalid["original_payload"], bad_email);
    assert!(invalid["title"].is_string() && invalid["detail"].is_string());
    assert_eq!(
        errors[1]["attributes"]["source"]["pointer"],
        "/data/attributes/profiles/data/10/attributes"
    );

    let (ids, _) = all_pages(
        &sim,
        token,
        &format!("/api/profile-bulk-import-jobs/{id}/relationships/profiles"),
    )
    .await;
    let ids: Vec<&str> = ids
        .iter()
        .map(|p| {
            assert_eq!(p["type"], "profile");
            p["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids[0], ann, "created or updated, in order");
    let mut expected: Vec<String> = sim.profiles().into_iter().map(|p| p.id).collect();
    let mut got: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);

    // Processed profiles joined the list; consent is untouched.
    let mut members = sim.list_members(&list);
    members.sort();
    assert_eq!(members, expected);
    assert!(
        sim.profiles()
            .iter()
            .all(|p| p.subscriptions == Default::default())
    );
    assert!(sim.pending_events().is_empty());

    let jobs = sim.bulk_jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, BulkStatus::Complete);
    assert_eq!(jobs[0].errors.len(), 2);
}

#[tokio::test]
async fn bulk_import_can_stall_and_finish_at_once() {
    let options = KlaviyoSimOptions {
        bulk_pace: BulkPace::stalled(),
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    let token = tokens.access_token.as_str();
    let profiles = (0..5)
        .map(|i| bulk_profile(json!({"email": format!("s{i}@example.test")})))
        .collect();
    let id = submit_bulk(&sim, token, bulk_job(profiles, &[])).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stalled = bulk_status(&sim, token, &id).await;
    assert_eq!(stalled["status"], "processing");
    assert_eq!(stalled["completed_count"], 0);
    assert!(sim.profiles().is_empty());

    sim.set_bulk_pace(BulkPace::instant());
    let job = sim.bulk_job(&id).unwrap();
    assert_eq!(job.status, BulkStatus::Complete);
    assert_eq!(job.completed_count, 5);
    assert_eq!(sim.profiles().len(), 5);

    // At the instant pace a new job is complete as soon as it is accepted.
    let again = submit_bulk(
        &sim,
        token,
        bulk_job(
            vec![bulk_profile(json!({"phone_number": "+61400000009"}))],
            &[],
        ),
    )
    .await;
    assert_eq!(bulk_status(&sim, token, &again).await["status"], "complete");
}

#[tokio::test]
async fn bulk_import_pages_its_errors_and_profiles_and_enforces_its_limits() {
    let options = KlaviyoSimOptions {
        bulk_pace: BulkPace::instant(),
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    let token = tokens.access_token.as_str();
    let bulk_paths = [
        "/api/profile-bulk-import-jobs",
        "/api/profile-bulk-import-jobs/{id}",
        "/api/profile-bulk-import-jobs/{id}/import-errors",
        "/api/profile-bulk-import-jobs/{id}/relationships/profiles",
    ];
    for path in bulk_paths {
        assert!(
            sim.endpoints().iter().any(|e| e.path == path),
            "{path} is listed"
        );
    }

    let mut profiles: Vec<Value> = (0..45)
        .map(|i| bulk_profile(json!({"email": format!("ok{i}@example.test")})))
        .collect();
    profiles.extend((0..25).map(|i| bulk_profile(json!({"email": format!("bad {i}@x")}))));
    let id = submit_bulk(&sim, token, bulk_job(profiles, &[])).await;
    let (errors, pages) = all_pages(
        &sim,
        token,
        &format!(
            "{}/api/profile-bulk-import-jobs/{id}/import-errors?page[size]=10",
            sim.url()
        ),
    )
    .await;
    assert_eq!((errors.len(), pages), (25, 3));
    assert_eq!(
        errors[24]["attributes"]["original_payload"]["attributes"]["email"],
        "bad 24@x"
    );
    assert_eq!(
        errors[24]["attributes"]["source"]["pointer"],
        "/data/attributes/profiles/data/69/attributes/email"
    );
    let (ids, pages) = all_pages(
        &sim,
        token,
        &format!(
            "{}/api/profile-bulk-import-jobs/{id}/relationships/profiles?page[size]=20",
            sim.url()
        ),
    )
    .await;
    assert_eq!((ids.len(), pages), (45, 3));
    let too_big_page = call(
        &sim,
        token,
        Method::GET,
        &format!("/api/profile-bulk-import-jobs/{id}/import-errors?page[size]=101"),
        None,
    )
    .await;
    assert_eq!(too_big_page.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        too_big_page.body["errors"][0]["source"]["parameter"],
        "page[size]"
    );

    // Unknown jobs are 404 on every read.
    for suffix in ["", "/import-errors", "/relationships/profiles"] {
        let missing = call(
            &sim,
            token,
            Method::GET,
            &format!("/api/profile-bulk-import-jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV{suffix}"),
            None,
        )
        .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{suffix}");
        assert_eq!(missing.error_code(), "not_found");
    }

    let post = |body: Value| {
        call(
            &sim,
            token,
            Method::POST,
            "/api/profile-bulk-import-jobs",
            Some(body),
        )
    };
    let pointer = |answer: &Answer| answer.body["errors"][0]["source"]["pointer"].clone();

    // 10,001 profiles: 400 naming the profiles.
    let too_many = (0..10_001)
        .map(|i| bulk_profile(json!({"email": format!("m{i}@example.test")})))
        .collect();
    let answer = post(bulk_job(too_many, &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid");
    assert_eq!(pointer(&answer), "/data/attributes/profiles/data");
    let none = post(bulk_job(Vec::new(), &[])).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);

    // Over 5 MB: 413 (60 profiles of ~90 KB each, every one under the per-profile limit).
    let blob = "x".repeat(90 * 1024);
    let heavy = (0..60)
        .map(|i| {
            bulk_profile(
                json!({"email": format!("h{i}@example.test"), "properties": {"blob": blob}}),
            )
        })
        .collect();
    let answer = post(bulk_job(heavy, &[])).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), "request_too_large");
    assert_eq!(pointer(&answer), "/data");

    // One profile over 100 KB: 413 naming it.
    let big_one = vec![
        bulk_profile(json!({"email": "fine@example.test"})),
        bulk_profile(
            json!({"email": "big@example.test", "properties": {"blob": "y".repeat(101 * 1024)}}),
        ),
    ];
    let answer = post(bulk_job(big_one, &[])).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(pointer(&answer), "/data/attributes/profiles/data/1");

    // The wrong type and an unknown list are 400s pointing at them.
    let wrong_type = post(bulk_job(
        vec![json!({"type": "person", "attributes": {"email": "t@example.test"}})],
        &[],
    ))
    .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        pointer(&wrong_type),
        "/data/attributes/profiles/data/0/type"
    );
    let no_list = post(bulk_job(
        vec![bulk_profile(json!({"email": "l@example.test"}))],
        &["NoSuch"],
    ))
    .await;
    assert_eq!(no_list.status, StatusCode::BAD_REQUEST);
    assert_eq!(pointer(&no_list), "/data/relationships/lists/data/0/id");
    assert_eq!(sim.bulk_jobs().len(), 1, "refused jobs are not kept");

    // Naming lists takes lists:write as well as profiles:write.
    let (verifier, challenge) = pkce('b');
    let url = authorize_url_for(&sim, &challenge, "st-1", "profiles:read profiles:write");
    let callback = sim.approve(&url).await.unwrap();
    let code = query_param(&callback, "code").unwrap();
    let (status, narrow) = exchange(&sim, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK);
    let narrow = narrow["access_token"].as_str().unwrap();
    let list = sim.create_list("Backfill");
    let profile = || vec![bulk_profile(json!({"email": "n@example.test"}))];
    let with_list = call(
        &sim,
        narrow,
        Method::POST,
        "/api/profile-bulk-import-jobs",
        Some(bulk_job(profile(), &[&list])),
    )
    .await;
    assert_eq!(with_list.status, StatusCode::FORBIDDEN);
    assert_eq!(with_list.error_code(), "permission_denied");
    submit_bulk(&sim, narrow, bulk_job(profile(), &[])).await;
    assert!(sim.list_members(&list).is_empty());
}

#[tokio::test]
async fn bulk_import_reads_are_rate_limited_at_10_per_second() {
    let options = KlaviyoSimOptions {
        bulk_pace: BulkPace::instant(),
        ..KlaviyoSimOptions::default()
    };
    let (sim, tokens) = start(options).await;
    let token = tokens.access_token.as_str();
    let id = submit_bulk(
        &sim,
        token,
        bulk_job(vec![bulk_profile(json!({"email": "r@example.test"}))], &[]),
    )
    .await;
    let path = format!("/api/profile-bulk-import-jobs/{id}");
    let started = Instant::now();
    let mut allowed = 0;
    // M allows 10/s and 150/min: a 429 must come within 151 calls however slow the machine is.
    let throttled = loop {
        let answer = call(&sim, token, Method::GET, &path, None).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break answer;
        }
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["ratelimit-limit"], "10, 10;w=1, 150;w=60");
        allowed += 1;
        assert!(allowed <= 150, "no 429 after 150 calls");
    };
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(allowed, 10, "the 11th call in a second is refused");
    }
    assert_eq!(throttled.error_code(), "throttled");
    let retry_after: u64 = throttled.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    // The other bulk endpoints have their own counters.
    let errors = call(
        &sim,
        token,
        Method::GET,
        &format!("{path}/import-errors"),
        None,
    )
    .await;
    assert_eq!(errors.status, StatusCode::OK);
    assert_eq!(errors.headers["ratelimit-limit"], "10, 10;w=1, 150;w=60");
}

// ---- Events and metrics (reconciliation) ----

/// `GET /api/metrics`: every metric's id by name.
async fn metric_ids(sim: &KlaviyoSim, token: &str) -> std::collections::HashMap<String, String> {
    let (metrics, pages) = all_pages(sim, token, &format!("{}/api/metrics", sim.url())).await;
    assert_eq!(pages, 1);
    metrics
        .iter()
        .map(|m| {
            let name = m["attributes"]["name"].as_str().unwrap().to_owned();
            (name, m["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn metrics_are_klaviyos_own_one_per_topic() {
    let (sim, tokens) = start(no_limits()).await;
    let answer = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/metrics",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body["links"]["next"].is_null());
    let metrics = answer.body["data"].as_array().unwrap();
    assert_eq!(metrics.len(), topics::ALL.len());
    for metric in metrics {
        assert_eq!(metric["type"], "metric");
        assert_eq!(metric["id"].as_str().unwrap().len(), 6);
        assert_eq!(metric["attributes"]["integration"]["key"], "klaviyo");
        assert_eq!(metric["attributes"]["integration"]["name"], "Klaviyo");
        assert!(metric["attributes"]["created"].is_string());
        assert!(metric["links"]["self"].is_string());
    }
    let ids = metric_ids(&sim, &tokens.access_token).await;
    for name in [
        "Subscribed to Email Marketing",
        "Unsubscribed from Email Marketing",
        "Bounced Email",
        "Dropped Email",
        "Failed to Deliver SMS",
        "Marked Email as Spam",
        "Subscribed to SMS Marketing",
        "Unsubscribed from SMS Marketing",
        "Subscribed to List",
        "Unsubscribed from List",
        "Manually Suppressed from Email Marketing",
        "Manually Unsuppressed from Email Marketing",
    ] {
        assert!(ids.contains_key(name), "{name} is missing from {ids:?}");
    }
    // The ids events carry in relationships.metric.
    let bounce = SystemEvent::new(topics::BOUNCED_EMAIL, "P1", None).payload();
    assert_eq!(
        bounce["relationships"]["metric"]["data"]["id"],
        ids["Bounced Email"].as_str()
    );
}

#[tokio::test]
async fn events_are_logged_and_read_back_by_metric_and_time_in_pages() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let ids = metric_ids(&sim, token).await;
    let subscribed = &ids["Subscribed to Email Marketing"];
    let profile = sim
        .seed_profile(json!({"email": "log@example.test"}))
        .unwrap();

    // A consent change queues its event; it is readable before (and whether or not) it is
    // delivered.
    sim.change_consent(
        &profile,
        Channel::Email,
        ConsentState::Subscribed,
        "PREFERENCE_PAGE",
    )
    .unwrap();
    let queued = sim.pending_events();
    assert_eq!(queued.len(), 1);
    let filter = format!(r#"equals(metric_id,"{subscribed}")"#);
    let answer = call(
        &sim,
        token,
        Method::GET,
        &format!("/api/events?filter={filter}"),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let read = &answer.body["data"].as_array().unwrap()[..];
    assert_eq!(read.len(), 1);
    let expected = queued[0].payload();
    assert_eq!(read[0]["id"], expected["id"]);
    assert_eq!(
        read[0]["attributes"]["datetime"],
        expected["attributes"]["datetime"]
    );
    assert_eq!(
        read[0]["attributes"]["event_properties"],
        expected["attributes"]["event_properties"]
    );
    assert_eq!(read[0]["relationships"], expected["relationships"]);
    assert!(read[0]["links"]["self"].is_string());
    assert!(answer.body["links"]["next"].is_null());

    // Events delivered directly are logged too (once), whatever their order or datetime.
    let base: jiff::Timestamp = "2020-11-30T00:00:00Z".parse().unwrap();
    let at = |hours: i64| base + jiff::SignedDuration::from_hours(hours);
    let event = |topic: &str, hours: i64| {
        SystemEvent::new(topic, &profile, Some("log@example.test")).at(at(hours))
    };
    let window: Vec<SystemEvent> = [3, 1, 5, 2, 4]
        .into_iter()
        .map(|h| event(topics::SUBSCRIBED_TO_EMAIL, h))
        .collect();
    let mut delivered = window.clone();
    delivered.extend([
        event(topics::SUBSCRIBED_TO_EMAIL, 0),
        event(topics::SUBSCRIBED_TO_EMAIL, 30),
        event(topics::UNSUBSCRIBED_FROM_EMAIL, 2),
    ]);
    sim.deliver(delivered.clone()).await.unwrap();
    sim.deliver(delivered).await.unwrap();

    let first = format!(
        "/api/events?filter={filter},greater-than(datetime,2020-11-30T00:00:00Z),\
         less-than(datetime,2020-12-01T00:00:00Z)&sort=datetime&page[size]=2"
    );
    let page = call(&sim, token, Method::GET, &first, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body["links"]["prev"].is_null());
    let mut seen: Vec<Value> = page.body["data"].as_array().unwrap().clone();
    // Logged while the reader pages, before its position: it does not shift the pages.
    sim.deliver(vec![
        event(topics::SUBSCRIBED_TO_EMAIL, 1).at(at(1) - jiff::SignedDuration::from_mins(30)),
    ])
    .await
    .unwrap();
    let next = page.body["links"]["next"].as_str().unwrap();
    let (rest, pages) = all_pages(&sim, token, next).await;
    assert_eq!(pages, 2);
    seen.extend(rest);
    let mut window = window;
    window.sort_by_key(|e| e.datetime);
    let expected: Vec<&str> = window.iter().map(|e| e.event_id.as_str()).collect();
    let got: Vec<&str> = seen.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, expected, "each event once, in datetime order");

    // Newest first; greater-or-equal takes the boundary.
    let newest = call(
        &sim,
        token,
        Method::GET,
        &format!(
            "/api/events?filter={filter},greater-or-equal(datetime,2020-11-30T00:00:00Z),\
             less-than(datetime,2020-12-01T00:00:00Z)&sort=-datetime"
        ),
        None,
    )
    .await;
    let newest: Vec<jiff::Timestamp> = newest.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| timestamp(&e["attributes"]["datetime"]))
        .collect();
    assert_eq!(newest.len(), 7, "five, the boundary and the late one");
    assert_eq!(newest[0], at(5));
    assert_eq!(newest[6], base);
    assert!(newest.windows(2).all(|w| w[0] >= w[1]));
}

#[tokio::test]
async fn a_dropped_delivery_is_lost_but_its_event_stays_readable() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    let (url, received, server) = receiver().await;
    let created = call(
        &sim,
        token,
        Method::POST,
        "/api/webhooks",
        Some(webhook_body(
            "Omneo t1",
            &url,
            &[topics::UNSUBSCRIBED_FROM_EMAIL],
        )),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let profile = sim
        .seed_profile(json!({"email": "lost@example.test"}))
        .unwrap();
    sim.change_consent(
        &profile,
        Channel::Email,
        ConsentState::Unsubscribed,
        "PREFERENCE_PAGE",
    )
    .unwrap();

    let dropped = sim.drop_pending();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].topic, topics::UNSUBSCRIBED_FROM_EMAIL);
    assert!(sim.pending_events().is_empty());
    assert!(sim.deliver_pending().await.unwrap().is_empty());
    assert!(received.lock().unwrap().is_empty(), "nothing was delivered");

    let unsubscribed = &metric_ids(&sim, token).await["Unsubscribed from Email Marketing"];
    let answer = call(
        &sim,
        token,
        Method::GET,
        &format!(r#"/api/events?filter=equals(metric_id,"{unsubscribed}")"#),
        None,
    )
    .await;
    let events = answer.body["data"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], dropped[0].event_id.as_str());
    assert_eq!(
        events[0]["relationships"]["profile"]["data"]["id"],
        profile.as_str()
    );
    assert_eq!(
        events[0]["attributes"]["event_properties"]["method"],
        "PREFERENCE_PAGE"
    );
    server.abort();
}

#[tokio::test]
async fn withheld_scopes_are_not_granted_and_their_reads_are_refused() {
    let options = KlaviyoSimOptions {
        withheld_scopes: vec!["events:read".into(), "metrics:read".into()],
        ..no_limits()
    };
    let (sim, tokens) = start(options).await;
    assert!(!tokens.scope.split(' ').any(|s| s == "events:read"));
    assert!(tokens.scope.split(' ').any(|s| s == "accounts:read"));
    for path in ["/api/events", "/api/metrics"] {
        let refused = call(&sim, &tokens.access_token, Method::GET, path, None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(refused.error_code(), "permission_denied");
    }
    let accounts = call(
        &sim,
        &tokens.access_token,
        Method::GET,
        "/api/accounts",
        None,
    )
    .await;
    assert_eq!(accounts.status, StatusCode::OK);

    // Through the OAuth dance: asked for, granted without the withheld one, and a refresh
    // keeps the grant's scopes.
    sim.withhold_scopes(&["metrics:read"]);
    let (verifier, challenge) = pkce('c');
    let asked = format!("{SCOPE} events:read metrics:read");
    let callback = sim
        .approve(&authorize_url_for(&sim, &challenge, "st-1", &asked))
        .await
        .unwrap();
    let code = query_param(&callback, "code").unwrap();
    let (status, granted) = exchange(&sim, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{granted}");
    let scope = granted["scope"].as_str().unwrap();
    assert!(scope.split(' ').any(|s| s == "events:read"), "{scope}");
    assert!(!scope.split(' ').any(|s| s == "metrics:read"), "{scope}");
    let token = granted["access_token"].as_str().unwrap();
    let events = call(&sim, token, Method::GET, "/api/events", None).await;
    assert_eq!(events.status, StatusCode::OK);
    let metrics = call(&sim, token, Method::GET, "/api/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::FORBIDDEN);
    let (_, refreshed) = refresh(&sim, granted["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed["scope"], scope);
}

#[tokio::test]
async fn event_reads_validate_filter_sort_page_size_and_revision() {
    let (sim, tokens) = start(no_limits()).await;
    let token = tokens.access_token.as_str();
    for (query, parameter) in [
        (
            r#"filter=greater-than(datetime,"2026-11-30T00:00:00Z")"#,
            "filter",
        ),
        ("filter=greater-than(datetime,yesterday)", "filter"),
        (r#"filter=equals(email,"a@b.co")"#, "filter"),
        (
            "filter=less-or-equal(datetime,2026-11-30T00:00:00Z)",
            "filter",
        ),
        ("sort=timestamp", "sort"),
        ("page[size]=1001", "page[size]"),
        ("page[size]=0", "page[size]"),
        ("page[cursor]=garbage", "page[cursor]"),
    ] {
        let answer = call(
            &sim,
            token,
            Method::GET,
            &format!("/api/events?{query}"),
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.error_code(), "invalid", "{query}");
        assert_eq!(
            answer.body["errors"][0]["source"]["parameter"], parameter,
            "{query}"
        );
    }
    let largest = call(
        &sim,
        token,
        Method::GET,
        "/api/events?page[size]=1000",
        None,
    )
    .await;
    assert_eq!(largest.status, StatusCode::OK);
    for path in ["/api/events", "/api/metrics"] {
        let response = client()
            .get(format!("{}{path}", sim.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["source"]["parameter"], "revision");
    }
}
