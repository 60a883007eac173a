//! The Omneo simulator over real sockets: auth, Laravel shapes, profiles, comms, identities,
//! webhooks with signed deliveries and the loop guard, activity, ID tokens, data-source lists and
//! injected faults. Signatures and JWTs are checked here independently of the simulator's code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use harness::omneo::{
    NewBenefit, NewProfile, NewReward, NewWebhook, OmneoSim, OmneoSimOptions, Profile, TenantSpec,
};
use harness::sim::{FaultRule, SimServer};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const TENANT: &str = "acme";
const TOKEN: &str = "acme-klaviyo-token";
const NAMESPACE: &str = "klaviyo";
const CRM_TOKEN: &str = "acme-crm-token";
const SECRET: &str = "acme-signing-secret";

async fn start() -> OmneoSim {
    let spec = TenantSpec::new(TENANT, TOKEN, NAMESPACE, SECRET).token(CRM_TOKEN, "crm");
    OmneoSim::start(OmneoSimOptions::default().tenant(spec))
        .await
        .expect("simulator starts")
}

/// A JSON client of one tenant with one token.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(sim: &OmneoSim, token: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: sim.api_url(TENANT),
            token: token.into(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the simulator");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, headers, json)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call(reqwest::Method::GET, path, None).await;
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self.call(reqwest::Method::POST, path, Some(body)).await;
        (status, body)
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        (status, body)
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call(reqwest::Method::DELETE, path, None).await;
        (status, body)
    }
}

/// A request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A real HTTP receiver (webhook endpoint / target) that records what it gets.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    _server: SimServer,
}

impl Receiver {
    /// Answers every POST with `status` and `{"ok":…}`.
    async fn start(status: StatusCode) -> Self {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let app = Router::new()
            .route(
                "/{*path}",
                post(
                    move |State(hits): State<Arc<Mutex<Vec<Hit>>>>,
                          uri: Uri,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        hits.lock().unwrap().push(Hit {
                            path: uri.path().to_owned(),
                            headers,
                            body,
                        });
                        (status, axum::Json(json!({ "ok": status.is_success() })))
                    },
                ),
            )
            .with_state(hits.clone());
        let server = SimServer::spawn(app, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self {
            url: server.url.clone(),
            hits,
            _server: server,
        }
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }
}

/// Independent check of `X-Omneo-Hmac-SHA256`.
fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn is_laravel_datetime(text: &str) -> bool {
    text.len() == 19
        && text.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == ' ',
            13 | 16 => c == ':',
            _ => c.is_ascii_digit(),
        })
}

fn seed(sim: &OmneoSim, n: u32) -> Profile {
    sim.seed_profile(TENANT, NewProfile::demo(n)).unwrap()
}

#[tokio::test]
async fn unknown_tenant_or_wrong_token_is_401_with_a_message() {
    let sim = start().await;
    sim.add_tenant(TenantSpec::new(
        "globex",
        "globex-token",
        "klaviyo",
        "globex-secret",
    ));
    let client = reqwest::Client::new();
    let cases = [
        (format!("{}/api/v3/profiles", sim.api_url(TENANT)), None),
        (
            format!("{}/api/v3/profiles", sim.api_url(TENANT)),
            Some("wrong"),
        ),
        (
            format!("{}/api/v3/profiles", sim.api_url(TENANT)),
            Some("globex-token"),
        ),
        (
            format!("{}/api/v3/profiles", sim.api_url("initech")),
            Some(TOKEN),
        ),
        (
            format!("{}/id/api/v1/auth/token", sim.api_url(TENANT)),
            Some("wrong"),
        ),
    ];
    for (url, token) in cases {
        let mut request = client.get(&url);
        if url.ends_with("auth/token") {
            request = client.post(&url).json(&json!({"id": "x"}));
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{url} with {token:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"message": "Unauthenticated."}));
    }
    let globex = Api {
        client,
        base: sim.api_url("globex"),
        token: "globex-token".into(),
    };
    assert_eq!(globex.get("/api/v3/profiles").await.0, StatusCode::OK);
}

#[tokio::test]
async fn profiles_read_filter_and_page_in_laravel_shapes() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profiles: Vec<Profile> = (1..=3).map(|n| seed(&sim, n)).collect();

    let (status, body) = api
        .get(&format!("/api/v3/profiles/{}", profiles[0].id))
        .await;
    assert_eq!(status, StatusCode::OK);
    let profile = &body["data"];
    assert_eq!(profile["id"], profiles[0].id.as_str());
    assert!(uuid::Uuid::parse_str(profile["id"].as_str().unwrap()).is_ok());
    assert!(profile["mobile_phone"].as_str().unwrap().starts_with("+61"));
    assert_eq!(profile["profile_type"], "active");
    assert!(profile["address"]["city"].is_string());
    assert!(
        profile["custom_attributes"].is_array(),
        "list form: {profile}"
    );
    assert!(profile["attributes"]["comms"]["email_promo"].is_boolean());
    assert!(profile["tier"]["handle"].is_string());
    assert!(is_laravel_datetime(profile["created_at"].as_str().unwrap()));
    assert!(is_laravel_datetime(profile["updated_at"].as_str().unwrap()));

    let (status, body) = api
        .get("/api/v3/profiles?page[size]=2&page[number]=2")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["id"], profiles[2].id.as_str());
    assert_eq!(body["meta"]["current_page"], 2);
    assert_eq!(body["meta"]["last_page"], 2);
    assert_eq!(body["meta"]["per_page"], 2);
    assert_eq!(body["meta"]["total"], 3);
    assert!(
        body["links"]["prev"]
            .as_str()
            .unwrap()
            .contains("page%5Bnumber%5D=1")
    );
    assert!(body["links"]["next"].is_null());

    let email = profiles[1].email.clone().unwrap();
    let (status, body) = api
        .get(&format!(
            "/api/v3/profiles?filter[email]={}",
            email.to_uppercase()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["meta"]["total"], 1);
    assert_eq!(body["data"][0]["id"], profiles[1].id.as_str());

    let (status, body) = api
        .get(&format!("/api/v3/profiles/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());

    let (status, body) = api.get("/api/v3/profiles?page[size]=zero").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["page[size]"].is_array());
}

/// `text` (`YYYY-MM-DD HH:MM:SS`, UTC) as a timestamp, for seeding a history.
fn utc(text: &str) -> jiff::Timestamp {
    format!("{}Z", text.replace(' ', "T"))
        .parse()
        .expect("a UTC date-time")
}

/// Demo customers `numbers`, created at `created_at` (and not updated since).
fn created_at(numbers: std::ops::RangeInclusive<u32>, created_at: &str) -> Vec<NewProfile> {
    numbers
        .map(|n| NewProfile {
            created_at: Some(utc(created_at)),
            ..NewProfile::demo(n)
        })
        .collect()
}

fn ids(profiles: &[Profile]) -> Vec<String> {
    profiles.iter().map(|p| p.id.clone()).collect()
}

fn ids_of(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["id"].as_str().expect("an id").to_owned())
        .collect()
}

impl Api {
    /// Every page of `GET /profiles?{query}` by `page[size]`=`size`, following `links.next`;
    /// answers the ids in the order served, and the pages' sizes.
    async fn page_through(&self, query: &str, size: u32) -> (Vec<String>, Vec<usize>) {
        let mut ids = Vec::new();
        let mut sizes = Vec::new();
        let mut next = Some(format!(
            "{}/api/v3/profiles?page[size]={size}&{query}",
            self.base
        ));
        while let Some(url) = next {
            let path = url.strip_prefix(&self.base).expect("links point here");
            let (status, body) = self.get(path).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            let page = ids_of(&body);
            sizes.push(page.len());
            ids.extend(page);
            next = body["links"]["next"].as_str().map(str::to_owned);
        }
        (ids, sizes)
    }
}

#[tokio::test]
async fn profiles_page_by_hundreds_with_laravel_meta_and_links() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let seeded = sim
        .insert_profiles(TENANT, (1..=250).map(NewProfile::demo).collect())
        .unwrap();
    assert_eq!(sim.profiles(TENANT).len(), 250);

    for (number, size) in [(1, 100), (2, 100), (3, 50), (4, 0)] {
        let (status, body) = api
            .get(&format!(
                "/api/v3/profiles?page[size]=100&page[number]={number}&sort=created_at"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        let first = (number - 1) * 100;
        assert_eq!(
            ids_of(&body),
            ids(&seeded[first.min(250)..(first + size).min(250)])
        );
        assert_eq!(body["meta"]["current_page"], number);
        assert_eq!(body["meta"]["last_page"], 3);
        assert_eq!(body["meta"]["per_page"], 100);
        assert_eq!(body["meta"]["total"], 250);
        assert_eq!(
            body["links"]["prev"].is_null(),
            number == 1,
            "page {number}"
        );
        assert_eq!(
            body["links"]["next"].is_null(),
            number >= 3,
            "page {number}"
        );
        assert!(
            body["links"]["last"]
                .as_str()
                .unwrap()
                .contains("page%5Bnumber%5D=3")
        );
    }

    let (served, sizes) = api.page_through("sort=created_at", 100).await;
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(served, ids(&seeded), "each profile once, in creation order");
}

#[tokio::test]
async fn sorting_by_a_date_is_stable_under_ties_in_both_directions() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    // 60 profiles over three seconds, out of order, twenty in each second.
    let seconds = [
        "2026-03-01 10:00:02",
        "2026-03-01 10:00:00",
        "2026-03-01 10:00:01",
    ];
    let news = (1..=60)
        .map(|n| NewProfile {
            created_at: Some(utc(seconds[n as usize % 3])),
            ..NewProfile::demo(n)
        })
        .collect();
    let seeded = sim.insert_profiles(TENANT, news).unwrap();
    let mut ascending = seeded.clone();
    ascending.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    let mut descending = seeded.clone();
    descending.sort_by(|a, b| b.created_at.cmp(&a.created_at));

    for (query, expected) in [
        ("sort=created_at", &ascending),
        ("sort=-created_at", &descending),
        ("sort=updated_at", &ascending),
        ("", &seeded),
    ] {
        let (first, _) = api.page_through(query, 7).await;
        let (again, sizes) = api.page_through(query, 7).await;
        assert_eq!(first, ids(expected), "{query:?}: ties in creation order");
        assert_eq!(first, again, "{query:?}: the same order every time");
        assert_eq!(sizes.len(), 9, "{query:?}");
    }

    // A write moves a profile to the end of `sort=updated_at`: why a backfill that writes
    // back pages by `created_at`.
    let (status, _) = api
        .post(
            &format!("/api/v3/profiles/{}/identities", ascending[0].id),
            json!({"handle": "klaviyo", "identifier": "01KLAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (by_updated, _) = api.page_through("sort=updated_at", 7).await;
    assert_eq!(by_updated.last(), Some(&ascending[0].id));
    let (by_created, _) = api.page_through("sort=created_at", 7).await;
    assert_eq!(by_created, ids(&ascending), "created_at does not move");
}

#[tokio::test]
async fn date_filters_select_by_updated_and_created_at_and_combine() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let old = sim
        .insert_profiles(TENANT, created_at(1..=5, "2025-01-01 00:00:00"))
        .unwrap();
    let mid = sim
        .insert_profiles(TENANT, created_at(6..=10, "2026-06-01 12:00:00"))
        .unwrap();
    let new = sim
        .insert_profiles(TENANT, created_at(11..=15, "2026-11-30 10:00:00"))
        .unwrap();
    let joined =
        |groups: &[&[Profile]]| -> Vec<String> { groups.iter().flat_map(|g| ids(g)).collect() };

    for (query, expected) in [
        (
            "filter[updated_at][gte]=2026-06-01T12:00:00Z",
            joined(&[&mid, &new]),
        ),
        (
            "filter[updated_at][gte]=2026-06-01 12:00:01",
            joined(&[&new]),
        ),
        (
            "filter[updated_at][gt]=2026-06-01 12:00:00",
            joined(&[&new]),
        ),
        (
            "filter[updated_at][lte]=2026-06-01 12:00:00",
            joined(&[&old, &mid]),
        ),
        (
            "filter[updated_at][lt]=2026-06-01T14:00:00%2B02:00",
            joined(&[&old]),
        ),
        (
            "filter[created_at][eq]=2026-06-01 12:00:00",
            joined(&[&mid]),
        ),
        (
            "filter[created_at][ne]=2026-06-01 12:00:00",
            joined(&[&old, &new]),
        ),
        (
            "filter[created_at][in]=2025-01-01 00:00:00,2026-11-30T10:00:00Z",
            joined(&[&old, &new]),
        ),
        (
            "filter[updated_at][gte]=2026-01-01&filter[created_at][lt]=2026-11-30 10:00:00",
            joined(&[&mid]),
        ),
        (
            &format!(
                "filter[updated_at][gte]=2026-01-01&filter[email]={}",
                mid[2].email.as_deref().unwrap()
            ),
            joined(&[&mid[2..3]]),
        ),
    ] {
        let (served, _) = api
            .page_through(&format!("sort=created_at&{query}"), 100)
            .await;
        assert_eq!(served, expected, "{query}");
    }

    // An incremental run sees a profile whose identity was written since.
    let since = "filter[updated_at][gte]=2026-11-30 10:00:00";
    let (status, _) = api
        .put(
            &format!("/api/v3/profiles/{}/identities/shopify", old[0].id),
            json!({"identifier": "42"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (served, _) = api.page_through(since, 100).await;
    assert_eq!(served, joined(&[&old[..1], &new]));
    let (status, body) = api.get(&format!("/api/v3/profiles?{since}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["meta"]["total"], 6);
}

#[tokio::test]
async fn every_write_to_a_profile_bumps_its_updated_at() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let long_ago = "2020-01-01 00:00:00";
    let seeded = sim
        .insert_profiles(TENANT, created_at(1..=7, long_ago))
        .unwrap();
    let before = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let profile = |n: usize| format!("/api/v3/profiles/{}", seeded[n].id);
    let shopify = |n: usize| seeded[n].identities[0].identifier.clone();

    let writes = [
        api.post(
            &format!("{}/identities", profile(0)),
            json!({"handle": "klaviyo", "identifier": "01KLAV"}),
        )
        .await,
        api.put(
            &format!("{}/identities/shopify", profile(1)),
            json!({"identifier": "42"}),
        )
        .await,
        api.delete(&format!("{}/identities/shopify", profile(2)))
            .await,
        api.put(
            &format!("{}/attributes/comms", profile(3)),
            json!({"sms_optout": true}),
        )
        .await,
        api.put(&profile(4), json!({"first_name": "Olive"})).await,
        // No-op writes change nothing, so they bump nothing.
        api.put(
            &format!("{}/identities/shopify", profile(5)),
            json!({"identifier": shopify(5)}),
        )
        .await,
        api.put(
            &format!("{}/attributes/comms", profile(6)),
            json!({"email_promo": seeded[6].attributes.comms.email_promo}),
        )
        .await,
    ];
    for (n, (status, body)) in writes.iter().enumerate() {
        assert!(status.is_success(), "write {n}: {status} {body}");
    }

    for (n, seeded) in seeded.iter().enumerate() {
        let stored = sim.profile(TENANT, &seeded.id).unwrap();
        assert_eq!(stored.created_at, long_ago, "profile {n}");
        if n < 5 {
            assert!(
                stored.updated_at >= before,
                "profile {n}: {}",
                stored.updated_at
            );
            assert!(is_laravel_datetime(&stored.updated_at));
        } else {
            assert_eq!(stored.updated_at, long_ago, "profile {n} was not changed");
        }
    }
    let (served, _) = api
        .page_through(&format!("filter[updated_at][gt]={long_ago}"), 100)
        .await;
    assert_eq!(served, ids(&seeded[..5]));
}

#[tokio::test]
async fn bad_page_sizes_sorts_and_filters_are_422_naming_them() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    sim.insert_profiles(TENANT, vec![NewProfile::demo(1)])
        .unwrap();
    let (status, body) = api.get("/api/v3/profiles?page[size]=100").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["meta"]["per_page"], 100);

    for (query, field) in [
        ("page[size]=101", "page[size]"),
        ("sort=email", "sort"),
        ("sort=created", "sort"),
        (
            "filter[updated_at][gte]=yesterday",
            "filter[updated_at][gte]",
        ),
        (
            "filter[created_at][lt]=2026-13-01",
            "filter[created_at][lt]",
        ),
        (
            "filter[updated_at][after]=2026-01-01",
            "filter[updated_at][after]",
        ),
    ] {
        let (status, body) = api.get(&format!("/api/v3/profiles?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let errors = body["errors"].as_object().expect("errors");
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            [field],
            "{query}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(field),
            "{query}: {body}"
        );
    }
}

#[tokio::test]
async fn inserting_profiles_is_all_or_none_also_at_scale() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    sim.seed_profile(TENANT, NewProfile::demo(1)).unwrap();
    let clash = sim
        .insert_profiles(
            TENANT,
            vec![
                NewProfile::demo(2),
                NewProfile::demo(3),
                NewProfile::demo(2),
            ],
        )
        .unwrap_err();
    let message = format!("{clash:#}");
    assert!(message.contains("2.email"), "{message}");
    assert!(message.contains("2.mobile_phone"), "{message}");
    let clash = sim
        .insert_profiles(TENANT, vec![NewProfile::demo(1)])
        .unwrap_err();
    assert!(format!("{clash:#}").contains("0.email"), "{clash:#}");
    assert_eq!(sim.profiles(TENANT).len(), 1, "all or none");

    let news = (2..=100_000).map(NewProfile::demo).collect();
    let inserted = sim.insert_profiles(TENANT, news).unwrap();
    assert_eq!(inserted.len(), 99_999);
    let (status, body) = api
        .get("/api/v3/profiles?page[size]=100&page[number]=1000&sort=created_at")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["meta"]["total"], 100_000);
    assert_eq!(body["meta"]["last_page"], 1000);
    assert_eq!(ids_of(&body), ids(&inserted[99_899..]));
}

#[tokio::test]
async fn profile_update_is_partial_and_email_and_mobile_are_unique() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let a = seed(&sim, 1);
    let b = seed(&sim, 2);
    let path = format!("/api/v3/profiles/{}", a.id);

    let (status, body) = api
        .put(
            &path,
            json!({"first_name": "Olive", "custom_attributes": {"crm": {"score": 7}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["first_name"], "Olive");
    assert_eq!(
        body["data"]["last_name"],
        a.last_name.clone().unwrap().as_str()
    );
    assert_eq!(body["data"]["email"], a.email.clone().unwrap().as_str());
    let attributes = body["data"]["custom_attributes"].as_array().unwrap();
    assert!(
        attributes
            .contains(&json!({"namespace":"crm","handle":"score","type":"integer","value":7}))
    );
    assert_eq!(attributes.len(), a.custom_attributes.len() + 1);

    let (status, body) = api.put(&path, json!({"email": b.email})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"]["email"][0],
        "The email has already been taken."
    );
    assert!(body["message"].is_string());

    let (status, body) = api
        .put(&path, json!({"mobile_phone": b.mobile_phone}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["mobile_phone"].is_array());

    let (status, body) = api
        .put(
            &path,
            json!({"mobile_phone": "0412 345 678", "profile_type": "vip"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["mobile_phone"].is_array());
    assert!(body["errors"]["profile_type"].is_array());

    let stored = sim.profile(TENANT, &a.id).unwrap();
    assert_eq!(stored.first_name.as_deref(), Some("Olive"));
    assert_eq!(stored.email, a.email);
}

#[tokio::test]
async fn comms_read_and_partial_update_accept_both_date_formats() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profile = seed(&sim, 1);
    let path = format!("/api/v3/profiles/{}/attributes/comms", profile.id);

    let (status, body) = api.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    for channel in ["email", "sms", "push", "phone", "post"] {
        for flag in ["promo", "optout", "bounced"] {
            assert!(
                body["data"].get(format!("{channel}_{flag}")).is_some(),
                "{channel}_{flag}"
            );
        }
    }

    let (status, body) = api
        .put(
            &path,
            json!({"email_promo": false, "sms_optout": null, "email_consent_updated_at": "2024-05-01T12:00:00Z",
                   "sms_consent_updated_at": "2024-05-02 08:30:00"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["email_promo"], false);
    assert_eq!(
        body["data"]["email_consent_updated_at"],
        "2024-05-01 12:00:00"
    );
    assert_eq!(
        body["data"]["sms_consent_updated_at"],
        "2024-05-02 08:30:00"
    );
    let comms = sim.comms(TENANT, &profile.id).unwrap();
    assert_eq!(comms.email_promo, Some(false));
    assert_eq!(comms.sms_optout, None);
    assert_eq!(comms.sms_promo, profile.attributes.comms.sms_promo);
    assert!(!comms.email_subscribed());

    let (status, body) = api
        .put(
            &path,
            json!({"email_bounced": "yes", "sms_consent_updated_at": "soon"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["email_bounced"].is_array());
    assert!(body["errors"]["sms_consent_updated_at"].is_array());
}

#[tokio::test]
async fn identities_upsert_by_put_then_post_and_search_id_finds_them() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let a = seed(&sim, 1);
    let b = seed(&sim, 2);
    let identities = format!("/api/v3/profiles/{}/identities", a.id);

    let (status, body) = api
        .put(
            &format!("{identities}/klaviyo"),
            json!({"identifier": "01KLAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    let (status, body) = api
        .post(
            &identities,
            json!({"handle": "klaviyo", "identifier": "01KLAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["data"]["identifier"], "01KLAV");

    let (status, body) = api
        .post(
            "/api/v3/profiles/search-id",
            json!({"type": "klaviyo", "id": "01KLAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["id"], a.id.as_str());

    let (status, _) = api
        .put(
            &format!("{identities}/klaviyo"),
            json!({"identifier": "01NEW"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .post(
            "/api/v3/profiles/search-id",
            json!({"type": "klaviyo", "id": "01KLAV"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = api
        .post("/api/v3/profiles/search-id", json!({"type": "klaviyo"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["id"].is_array());

    // (handle, identifier) is unique across profiles, on POST and PUT alike.
    let (status, body) = api
        .post(
            &format!("/api/v3/profiles/{}/identities", b.id),
            json!({"handle": "klaviyo", "identifier": "01NEW"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"]["identifier"][0],
        "The identifier has already been taken."
    );
    let shopify = &b.identities[0];
    let (status, _) = api
        .put(
            &format!("{identities}/shopify"),
            json!({"identifier": shopify.identifier}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = api.get(&identities).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (status, body) = api.delete(&format!("{identities}/klaviyo")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(sim.identities(TENANT, &a.id).len(), 1);
    let (status, _) = api.delete(&format!("{identities}/klaviyo")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn webhooks_crud_and_namespace_filter() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let url = "https://ext.example.net/acme/api/v1/webhooks/omneo";
    let mut ids = Vec::new();
    for trigger in ["profile.created", "profile.updated"] {
        let (status, body) = api
            .post(
                "/api/v3/webhooks",
                json!({"trigger": trigger, "url": url, "namespace": "klaviyo", "is_active": false}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body["data"]["is_active"], false);
        ids.push(body["data"]["id"].as_u64().unwrap());
    }
    let (status, _) = api
        .post("/api/v3/webhooks", json!({"trigger": "profile.updated", "url": "https://crm.example.net/hook", "namespace": "crm", "is_active": true, "queue": "default"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = api
        .post("/api/v3/webhooks", json!({"trigger": "profile.created", "url": url, "namespace": "other", "is_active": true}))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "(trigger, url) is unique"
    );
    assert!(body["errors"]["trigger"].is_array());
    let (status, body) = api
        .post(
            "/api/v3/webhooks",
            json!({"trigger": "profile.deleted", "url": "not a url"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["namespace"].is_array());
    assert!(body["errors"]["url"].is_array());

    let (status, body) = api.get("/api/v3/webhooks?filter[namespace]=klaviyo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["meta"]["total"], 2);
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["namespace"] == "klaviyo")
    );

    let (status, body) = api
        .put(
            &format!("/api/v3/webhooks/{}", ids[1]),
            json!({"is_active": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["is_active"], true);
    assert_eq!(body["data"]["url"], url);
    assert_eq!(body["data"]["trigger"], "profile.updated");

    let (status, _) = api.delete(&format!("/api/v3/webhooks/{}", ids[0])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.get(&format!("/api/v3/webhooks/{}", ids[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let webhooks = sim.webhooks(TENANT);
    assert_eq!(webhooks.len(), 2);
    assert!(webhooks.iter().any(|w| w.id == ids[1] && w.is_active));
}

#[tokio::test]
async fn a_profile_change_is_delivered_signed_to_a_real_receiver() {
    let sim = start().await;
    let receiver = Receiver::start(StatusCode::ACCEPTED).await;
    let hook_url = format!("{}/acme/api/v1/webhooks/omneo", receiver.url);
    sim.add_webhook(TENANT, NewWebhook::new("profile.updated", &hook_url, "crm"))
        .unwrap();
    let profile = seed(&sim, 1);
    let api = Api::new(&sim, TOKEN);

    let (status, _) = api
        .put(
            &format!("/api/v3/profiles/{}", profile.id),
            json!({"last_name": "Nguyen-Smith"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    sim.settle().await;

    let hits = receiver.hits("/acme/api/v1/webhooks/omneo");
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.headers["x-omneo-event"], "profile.updated");
    assert_eq!(
        hit.headers["x-omneo-hmac-sha256"].to_str().unwrap(),
        hmac_hex(SECRET, &hit.body),
        "lowercase hex HMAC-SHA256 of the raw body with the tenant secret"
    );
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert!(body.get("data").is_none(), "no envelope");
    assert_eq!(body["id"], profile.id.as_str());
    assert_eq!(body["last_name"], "Nguyen-Smith");

    let deliveries = sim.deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome.status(), Some(202));
    assert_eq!(deliveries[0].event.as_deref(), Some("profile.updated"));
    assert_eq!(deliveries[0].json()["id"], profile.id.as_str());

    // An unchanged PUT changes nothing, so nothing is delivered.
    api.put(
        &format!("/api/v3/profiles/{}", profile.id),
        json!({"last_name": "Nguyen-Smith"}),
    )
    .await;
    assert_eq!(sim.deliveries().len(), 1);
}

#[tokio::test]
async fn loop_guard_skips_the_changing_namespace_and_inactive_webhooks_get_nothing() {
    let sim = start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    let hook = |name: &str| format!("{}/{name}", receiver.url);
    sim.add_webhook(
        TENANT,
        NewWebhook::new("profile.updated", &hook("klaviyo"), NAMESPACE),
    )
    .unwrap();
    sim.add_webhook(
        TENANT,
        NewWebhook::new("profile.updated", &hook("crm"), "crm"),
    )
    .unwrap();
    sim.add_webhook(
        TENANT,
        NewWebhook {
            is_active: false,
            ..NewWebhook::new("profile.updated", &hook("crm-off"), "crm")
        },
    )
    .unwrap();
    sim.add_webhook(
        TENANT,
        NewWebhook::new("profile.created", &hook("created"), NAMESPACE),
    )
    .unwrap();
    let profile = seed(&sim, 1);
    let klaviyo = Api::new(&sim, TOKEN);
    let crm = Api::new(&sim, CRM_TOKEN);

    // A change made with the klaviyo token reaches crm only.
    let comms = format!("/api/v3/profiles/{}/attributes/comms", profile.id);
    assert_eq!(
        klaviyo.put(&comms, json!({"email_bounced": true})).await.0,
        StatusCode::OK
    );
    // A change made with the crm token reaches klaviyo only.
    let identities = format!("/api/v3/profiles/{}/identities", profile.id);
    assert_eq!(
        crm.post(&identities, json!({"handle": "pos", "identifier": "POS-1"}))
            .await
            .0,
        StatusCode::CREATED
    );
    // A CX Manager edit reaches both.
    sim.edit_profile(TENANT, &profile.id, |p| p.first_name = Some("Liv".into()))
        .unwrap();
    sim.settle().await;

    assert_eq!(
        receiver.hits("/created").len(),
        1,
        "seeding fires profile.created"
    );
    // Deliveries run concurrently: identify each by what it carries, not by arrival order.
    let first_names = |path: &str| {
        let mut names: Vec<String> = receiver
            .hits(path)
            .iter()
            .map(|h| serde_json::from_slice::<Value>(&h.body).unwrap()["first_name"].to_string())
            .collect();
        names.sort();
        names
    };
    let before = json!(profile.first_name).to_string();
    let mut expected = vec![before, json!("Liv").to_string()];
    expected.sort();
    assert_eq!(
        first_names("/crm"),
        expected,
        "the klaviyo change and the CX edit"
    );
    assert_eq!(
        first_names("/klaviyo"),
        expected,
        "the crm change and the CX edit"
    );
    let bounced = receiver.hits("/crm").iter().any(|h| {
        serde_json::from_slice::<Value>(&h.body).unwrap()["attributes"]["comms"]["email_bounced"]
            == true
    });
    assert!(bounced);
    assert!(receiver.hits("/crm-off").is_empty());
    let deliveries = sim.deliveries();
    assert_eq!(deliveries.len(), 5);
    assert!(deliveries.iter().all(|d| d.outcome.status() == Some(200)));
}

#[tokio::test]
async fn deleting_a_profile_delivers_profile_deleted_and_the_profile_is_gone() {
    let sim = start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    sim.add_webhook(
        TENANT,
        NewWebhook::new(
            "profile.deleted",
            &format!("{}/deleted", receiver.url),
            NAMESPACE,
        ),
    )
    .unwrap();
    let profile = seed(&sim, 4);
    sim.delete_profile(TENANT, &profile.id).unwrap();
    sim.settle().await;
    let hits = receiver.hits("/deleted");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].headers["x-omneo-event"], "profile.deleted");
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["id"], profile.id.as_str());
    assert_eq!(body["profile_type"], "deleted");
    let api = Api::new(&sim, TOKEN);
    assert_eq!(
        api.get(&format!("/api/v3/profiles/{}", profile.id)).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn target_calls_are_signed_and_record_the_receivers_answer() {
    let sim = start().await;
    let receiver = Receiver::start(StatusCode::BAD_REQUEST).await;
    let url = format!("{}/acme/api/v1/targets/klaviyo/metric", receiver.url);
    let delivery = sim
        .send_target_call(TENANT, &url, &json!({"data": {"type": "event"}}))
        .await
        .unwrap();
    assert_eq!(delivery.outcome.status(), Some(400));
    assert_eq!(delivery.webhook_id, None);
    let hits = receiver.hits("/acme/api/v1/targets/klaviyo/metric");
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].headers["x-omneo-hmac-sha256"].to_str().unwrap(),
        hmac_hex(SECRET, &hits[0].body)
    );
    assert!(hits[0].headers.get("x-omneo-event").is_none());
    assert_eq!(
        serde_json::from_slice::<Value>(&hits[0].body).unwrap(),
        json!({"data": {"type": "event"}})
    );
}

#[tokio::test]
async fn id_tokens_are_jwts_naming_the_profile() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profile = seed(&sim, 1);
    let shopify = profile.identities[0].identifier.clone();

    for body in [
        json!({"id": profile.id}),
        json!({"id": shopify, "id_handle": "shopify"}),
    ] {
        let before = jiff::Timestamp::now().as_second();
        let (status, response) = api.post("/id/api/v1/auth/token", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = response["data"]["token"].as_str().unwrap();
        let exp = response["data"]["exp"].as_i64().unwrap();
        assert!(exp >= before + 3600 && exp <= jiff::Timestamp::now().as_second() + 3600);

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["pid"], profile.id.as_str());
        assert_eq!(claims["exp"], exp);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
        assert_eq!(sim.decode_id_token(TENANT, token).unwrap().pid, profile.id);
    }
    assert_eq!(sim.id_tokens(TENANT).len(), 2);

    let (status, body) = api
        .post("/id/api/v1/auth/token", json!({"id": "nobody"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    let (status, _) = api
        .post(
            "/id/api/v1/auth/token",
            json!({"id": profile.id, "id_handle": "shopify"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "with id_handle, id is an identifier"
    );
    let (status, _) = api.post("/id/api/v1/auth/token", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn interactions_validate_enums_and_rewards_and_benefits_are_issued() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profile = seed(&sim, 1);

    let valid = json!({"identifier": {"id": profile.identities[0].identifier, "handle": "shopify"},
        "action": "disclose", "channel": "email", "signal": -1, "name": "Unsubscribed from email",
        "namespace": "klaviyo", "interacted_at": "2024-06-01T10:00:00Z", "meta": {"event_id": "e1"}});
    let (status, body) = api.post("/api/v3/interactions", valid.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["data"]["profile_id"], profile.id.as_str());
    assert_eq!(body["data"]["interacted_at"], "2024-06-01 10:00:00");

    for (field, value) in [
        ("action", json!("wave")),
        ("channel", json!("fax")),
        ("signal", json!(2)),
    ] {
        let mut invalid = valid.clone();
        invalid[field] = value;
        let (status, body) = api.post("/api/v3/interactions", invalid).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert_eq!(
            body["errors"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [field]
        );
        assert!(body["message"].as_str().unwrap().contains(field));
    }
    let (status, body) = api
        .post("/api/v3/interactions", json!({"action": "reach", "channel": "sms", "signal": 0, "name": "x", "namespace": "klaviyo"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["profile_id"].is_array());
    assert_eq!(sim.interactions(TENANT).len(), 1);
    assert_eq!(sim.interactions(TENANT)[0].signal, -1);

    let (status, body) = api
        .post("/api/v3/rewards", json!({"profile_id": profile.id, "reward_definition_id": 12, "value_initial": 15,
            "value_remaining": 15, "expires_at": "2030-01-01", "external_id": "flow-1", "meta": {"source": "klaviyo"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["data"]["expires_at"], "2030-01-01 00:00:00");
    let (status, body) = api
        .post(
            "/api/v3/rewards",
            json!({"profile_id": "nobody", "reward_definition_id": 12}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["value_initial"].is_array());
    assert_eq!(sim.rewards(TENANT).len(), 1);
    assert_eq!(
        sim.profile(TENANT, &profile.id).unwrap().reward_balance,
        15.0
    );

    let (status, _) = api
        .post(
            "/api/v3/benefits",
            json!({"profile_id": profile.id, "benefit_definition_id": "vip-lounge"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api
        .post("/api/v3/benefits", json!({"profile_id": profile.id}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["errors"]["benefit_definition_id"].is_array());
    assert_eq!(
        sim.benefits(TENANT)[0].benefit_definition_id,
        json!("vip-lounge")
    );
}

#[tokio::test]
async fn the_six_data_source_lists_answer_from_the_seeded_profile() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profile = sim.seed_demo_profiles(TENANT, 2).unwrap().remove(1);
    let base = format!("/api/v3/profiles/{}", profile.id);
    let city = profile.address.clone().unwrap().city.unwrap();
    for (part, key, expected) in [
        ("/attributes/dates", "handle", "birthday"),
        ("/connections", "relationship", "child"),
        ("/rewards", "external_id", "welcome-2"),
        ("/addresses", "city", city.as_str()),
        ("/benefits", "external_id", "birthday-2"),
        ("/lists", "handle", "newsletter"),
    ] {
        let (status, body) = api.get(&format!("{base}{part}")).await;
        assert_eq!(status, StatusCode::OK, "{part}");
        assert_eq!(body["data"][0][key], expected, "{part}: {body}");
    }
    assert_eq!(profile.reward_balance, 10.0);
    let (status, _) = api.get("/api/v3/profiles/nobody/lists").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn injected_faults_answer_omneo_errors_with_retry_after() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let profile = seed(&sim, 1);
    let path = format!("/api/v3/profiles/{}", profile.id);
    sim.faults().inject(
        FaultRule::status(&format!("/{TENANT}/api/v3/profiles"), 429, 1)
            .method("GET")
            .retry_after(3),
    );
    let (status, headers, body) = api.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(body, json!({"message": "Too Many Attempts."}));
    assert_eq!(
        api.get(&path).await.0,
        StatusCode::OK,
        "the fault is used up"
    );

    // Through the control API, as `make dev` users do.
    let control = reqwest::Client::new();
    let response = control
        .post(format!("{}/_sim/faults", sim.url()))
        .json(&json!({"path": format!("/{TENANT}/api/v3/profiles"), "method": "PUT", "count": 1, "status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = api.put(&path, json!({"first_name": "X"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["message"].is_string());
    assert_eq!(
        sim.profile(TENANT, &profile.id).unwrap().first_name,
        profile.first_name
    );

    let puts = sim
        .recorder()
        .matching("PUT", &format!("/{TENANT}/api/v3/profiles/"));
    assert_eq!(puts.len(), 1);
    assert!(puts[0].headers["authorization"].starts_with("Bearer "));
    assert_eq!(puts[0].json(), json!({"first_name": "X"}));
}

/// A call to the simulator's `/_sim` control API (no token); answers (status, content type, JSON).
async fn control(
    sim: &OmneoSim,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", sim.url()));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test]
async fn control_routes_switch_webhooks_on_and_edit_profiles_as_cx_manager() {
    let sim = start().await;
    let receiver = Receiver::start(StatusCode::OK).await;
    let hook = |name: &str| format!("{}/{name}", receiver.url);
    for (trigger, name, namespace) in [
        ("profile.updated", "klaviyo", NAMESPACE),
        ("profile.updated", "crm", "crm"),
        ("profile.created", "created", NAMESPACE),
    ] {
        sim.add_webhook(
            TENANT,
            NewWebhook {
                is_active: false,
                ..NewWebhook::new(trigger, &hook(name), namespace)
            },
        )
        .unwrap();
    }
    let profile = seed(&sim, 1);
    let other = seed(&sim, 2);
    let tenant = format!("/_sim/tenants/{TENANT}");
    let one = format!("{tenant}/profiles/{}", profile.id);

    // The CX Manager toggle: every webhook on, whatever its namespace or trigger.
    let (status, content_type, body) = control(
        &sim,
        reqwest::Method::POST,
        &format!("{tenant}/webhooks/activate"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    let webhooks = sim.webhooks(TENANT);
    assert_eq!(webhooks.len(), 3);
    assert!(webhooks.iter().all(|w| w.is_active));
    assert_eq!(body["data"], serde_json::to_value(&webhooks).unwrap());

    // The profiles, and one with its identities and comms.
    let (status, _, body) = control(
        &sim,
        reqwest::Method::GET,
        &format!("{tenant}/profiles"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [profile.id.as_str(), other.id.as_str()]);
    let (status, _, body) = control(&sim, reqwest::Method::GET, &one, None).await;
    assert_eq!(status, StatusCode::OK);
    let current = sim.profile(TENANT, &profile.id).unwrap();
    assert_eq!(body["data"], serde_json::to_value(&current).unwrap());
    assert_eq!(body["data"]["identities"][0]["handle"], "shopify");
    assert_eq!(body["data"]["attributes"]["comms"]["sms_promo"], false);

    // An edit: partial, comms merged, delivered signed to both namespaces' profile.updated.
    let edit = json!({"first_name": "Liv", "comms": {"sms_promo": true}});
    let (status, _, body) = control(&sim, reqwest::Method::PATCH, &one, Some(edit.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let edited = sim.profile(TENANT, &profile.id).unwrap();
    assert_eq!(body["data"], serde_json::to_value(&edited).unwrap());
    assert_eq!(edited.first_name.as_deref(), Some("Liv"));
    assert_eq!(edited.last_name, profile.last_name);
    assert_eq!(edited.attributes.comms.sms_promo, Some(true));
    assert_eq!(
        edited.attributes.comms.email_promo,
        Some(true),
        "comms merged"
    );
    sim.settle().await;
    for name in ["klaviyo", "crm"] {
        let hits = receiver.hits(&format!("/{name}"));
        assert_eq!(hits.len(), 1, "{name}");
        assert_eq!(hits[0].headers["x-omneo-event"], "profile.updated");
        assert_eq!(
            hits[0].headers["x-omneo-hmac-sha256"].to_str().unwrap(),
            hmac_hex(SECRET, &hits[0].body)
        );
        let delivered: Value = serde_json::from_slice(&hits[0].body).unwrap();
        assert_eq!(delivered["first_name"], "Liv");
        assert_eq!(delivered["attributes"]["comms"]["sms_promo"], true);
    }
    assert!(receiver.hits("/created").is_empty());
    // The same edit again changes nothing, so nothing is delivered.
    control(&sim, reqwest::Method::PATCH, &one, Some(edit)).await;
    sim.settle().await;
    assert_eq!(sim.deliveries().len(), 2);

    // Bad edits: Laravel's 422 naming every field, and nothing changes.
    let bad = json!({
        "email": other.email,
        "mobile_phone": "0412 345 678",
        "tier": "gold",
        "comms": {"sms_promo": "yes", "sms_promox": true},
    });
    let (status, _, body) = control(&sim, reqwest::Method::PATCH, &one, Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let mut fields: Vec<&str> = body["errors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "comms.sms_promo",
            "comms.sms_promox",
            "email",
            "mobile_phone",
            "tier"
        ]
    );
    assert_eq!(
        body["errors"]["email"][0],
        "The email has already been taken."
    );
    assert!(body["message"].is_string());
    let (status, _, body) = control(
        &sim,
        reqwest::Method::PATCH,
        &one,
        Some(json!({"comms": true})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"]["comms"][0],
        "The comms field must be an object."
    );
    assert_eq!(sim.profile(TENANT, &profile.id).unwrap(), edited);
    assert_eq!(sim.deliveries().len(), 2);

    // Unknown tenant or profile: Omneo's 404.
    let (status, _, body) = control(
        &sim,
        reqwest::Method::POST,
        "/_sim/tenants/initech/webhooks/activate",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"message": "Tenant not found."}));
    let (status, _, body) = control(
        &sim,
        reqwest::Method::PATCH,
        &format!("{tenant}/profiles/nobody"),
        Some(json!({"first_name": "X"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"message": "Profile not found."}));

    // Control calls are not API calls: nothing was recorded.
    assert!(sim.recorder().requests().is_empty());
}

#[tokio::test]
async fn control_routes_list_the_tenants_interactions_rewards_and_benefits() {
    let sim = start().await;
    let api = Api::new(&sim, TOKEN);
    let tenant = format!("/_sim/tenants/{TENANT}");
    let lists = ["interactions", "rewards", "benefits"];

    // Nothing written yet: empty lists in the envelope.
    for list in lists {
        let (status, content_type, body) = control(
            &sim,
            reqwest::Method::GET,
            &format!("{tenant}/{list}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}: {body}");
        assert_eq!(content_type, "application/json");
        assert_eq!(body, json!({"data": []}), "{list}");
    }

    // Written through the API (as the extension does) and seeded (as the demo tenant is).
    let profile = seed(&sim, 1);
    let other = seed(&sim, 2);
    let (status, _) = api
        .post(
            "/api/v3/interactions",
            json!({"profile_id": profile.id, "action": "disclose",
            "channel": "email", "signal": -1, "name": "Klaviyo: unsubscribed from email marketing",
            "namespace": NAMESPACE}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api
        .post(
            "/api/v3/interactions",
            json!({"profile_id": other.id, "action": "reach",
            "channel": "sms", "signal": 0, "name": "x", "namespace": NAMESPACE}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api
        .post(
            "/api/v3/rewards",
            json!({"profile_id": profile.id, "reward_definition_id": "vip",
            "value_initial": 25, "value_remaining": 25, "external_id": "flow-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    sim.issue_reward(
        TENANT,
        NewReward {
            profile_id: other.id.clone(),
            reward_definition_id: json!(1),
            value_initial: 10.0,
            value_remaining: 10.0,
            expires_at: None,
            external_id: Some("welcome-2".into()),
            meta: None,
            region_id: None,
        },
    )
    .unwrap();
    sim.issue_benefit(
        TENANT,
        NewBenefit {
            profile_id: other.id.clone(),
            benefit_definition_id: json!(1),
            issued_at: None,
            expires_at: None,
            external_id: None,
            meta: None,
        },
    )
    .unwrap();
    let (status, _) = api
        .post(
            "/api/v3/benefits",
            json!({"profile_id": other.id, "benefit_definition_id": "vip-lounge"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Each list is the simulator's, in order, every entry naming its profile.
    let (_, _, interactions) = control(
        &sim,
        reqwest::Method::GET,
        &format!("{tenant}/interactions"),
        None,
    )
    .await;
    assert_eq!(
        interactions["data"],
        serde_json::to_value(sim.interactions(TENANT)).unwrap()
    );
    let shown = &interactions["data"][0];
    assert_eq!(shown["profile_id"], profile.id.as_str());
    assert_eq!(shown["signal"], -1);
    assert_eq!(shown["action"], "disclose");
    assert_eq!(shown["namespace"], NAMESPACE);
    assert_eq!(interactions["data"][1]["profile_id"], other.id.as_str());

    let (_, _, rewards) = control(
        &sim,
        reqwest::Method::GET,
        &format!("{tenant}/rewards"),
        None,
    )
    .await;
    assert_eq!(
        rewards["data"],
        serde_json::to_value(sim.rewards(TENANT)).unwrap()
    );
    assert_eq!(rewards["data"].as_array().map(Vec::len), Some(2));
    let reward = &rewards["data"][0];
    assert_eq!(reward["profile_id"], profile.id.as_str());
    assert_eq!(reward["reward_definition_id"], "vip");
    assert_eq!(reward["value_initial"], 25.0);
    assert_eq!(reward["value_remaining"], 25.0);
    assert_eq!(reward["external_id"], "flow-1");
    assert_eq!(
        rewards["data"][1]["profile_id"],
        other.id.as_str(),
        "seeded"
    );

    let (_, _, benefits) = control(
        &sim,
        reqwest::Method::GET,
        &format!("{tenant}/benefits"),
        None,
    )
    .await;
    assert_eq!(
        benefits["data"],
        serde_json::to_value(sim.benefits(TENANT)).unwrap()
    );
    let definitions: Vec<&Value> = benefits["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["benefit_definition_id"])
        .collect();
    assert_eq!(definitions, [&json!(1), &json!("vip-lounge")]);

    // Read-only, Omneo's 404 for an unknown tenant, and not recorded as API calls.
    for list in lists {
        let (status, _, body) = control(
            &sim,
            reqwest::Method::GET,
            &format!("/_sim/tenants/initech/{list}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{list}");
        assert_eq!(body, json!({"message": "Tenant not found."}));
        let response = reqwest::Client::new()
            .post(format!("{}{tenant}/{list}", sim.url()))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "{list} is read-only");
    }
    assert_eq!(sim.interactions(TENANT).len(), 2);
    assert!(
        sim.recorder()
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/_sim")),
        "control calls are not recorded"
    );
}
