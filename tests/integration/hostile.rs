//! A catalogue of hostile requests against every public route (issue 11): bad, missing and
//! foreign signatures, stale and replayed Klaviyo deliveries, header/body mismatches, another
//! tenant's credentials, odd tenant ids, oversized, deeply nested, non-UTF-8 and non-JSON bodies,
//! huge headers, tampered OAuth states, open-redirect attempts, admin-key brute force and task
//! pushes without Cloud Tasks headers. Each row names its request and the exact status and error
//! code it gets; after each row the store (tenants, installs, failure records, backfill runs)
//! and the queue (its counters, and the pushes a recording `TaskReceiver` got) must be as before.
//! Every row runs; the mismatches are reported together, and a summary table is printed.

use harness::klaviyo::deliveries::sign as klaviyo_sign;
use harness::klaviyo::{SystemEvent, topics};
use harness::omneo::sign as omneo_sign;
use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::queue::LocalQueueStats;
use shared::store::{BackfillRun, Failure, FailureQuery, Install, Tenant, TenantSecret};

use crate::failures::{record, sync_failure};
use crate::inbound::{Handmade, SYSTEM};
use crate::pipeline::{Pipeline, install};
use crate::support::{TaskReceiver, TestApp, TestAppOptions, authorize_url, hash, link_url, param};

/// The installed tenant every row attacks.
const A: &str = "acme";
/// A second tenant, registered but not installed, whose credentials are tried on A's paths.
const B: &str = "beta";
/// Where open-redirect attempts point (URL-encoded).
const EVIL: &str = "https%3A%2F%2Fevil.example";
/// The id of A's one failure record.
const FAILURE_ID: &str = "hostile-failure-1";
/// Omneo's webhook, below a tenant.
const WEBHOOK: &str = "/api/v1/webhooks/omneo";
/// The Klaviyo targets, below a tenant.
const METRIC: &str = "/api/v1/targets/klaviyo/metric";
const UPSERT: &str = "/api/v1/targets/klaviyo/upsert-profile-data";
const RECORD: &str = "/api/v1/targets/klaviyo/data-source-record";
/// The codes of a refused credential.
const UNAUTHORIZED: &str = "unauthorized";
const SIGNATURE: &str = "invalid_signature";

/// Every admin route of a tenant (below `/{tenant}/api/v1/`), tried without credentials and
/// with B's key.
const ADMIN_ROUTES: &str = "GET install, DELETE install, POST install/link, \
    POST install/reprovision, GET settings, PATCH settings, PUT settings, GET failures, \
    POST failures/hostile-failure-1/retry, POST backfill, GET backfill, DELETE backfill";

/// One bad request and the answer it must get.
struct Row {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    status: u16,
    /// The JSON error's `code`; `None` for the install flow's HTML pages and redirects.
    code: Option<&'static str>,
    /// The JSON error's `field`, when the row checks it.
    field: Option<&'static str>,
    /// How the answer's `content-type` starts (empty for a redirect).
    content_type: &'static str,
    /// How many times the request is sent (every answer must match).
    times: usize,
}

fn row(name: impl Into<String>, method: Method, path: impl Into<String>) -> Row {
    Row {
        name: name.into(),
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        status: 0,
        code: None,
        field: None,
        content_type: "",
        times: 1,
    }
}

impl Row {
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn json(self, body: impl AsRef<[u8]>) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.body = body.as_ref().to_vec();
        self
    }

    /// A JSON error answer.
    fn error(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self.content_type = "application/json";
        self
    }

    /// A JSON error answer naming `field`.
    fn error_at(self, status: u16, code: &'static str, field: &'static str) -> Self {
        let mut row = self.error(status, code);
        row.field = Some(field);
        row
    }

    /// An HTML page (or a redirect) of the install flow.
    fn page(mut self, status: u16) -> Self {
        self.status = status;
        if status != 302 {
            self.content_type = "text/html";
        }
        self
    }

    /// 401 `invalid_signature` naming `header`.
    fn refused(self, header: &'static str) -> Self {
        self.error_at(401, SIGNATURE, header)
    }

    /// `X-Omneo-Hmac-SHA256: value`.
    fn omneo_hmac(self, value: impl AsRef<[u8]>) -> Self {
        self.header("x-omneo-hmac-sha256", value)
    }

    fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }
}

/// What was answered.
struct Answer {
    status: u16,
    code: Option<String>,
    field: Option<String>,
    location: Option<String>,
    content_type: String,
}

async fn send(t: &TestApp, row: &Row) -> Answer {
    let mut request = t
        .http
        .request(row.method.clone(), format!("{}{}", t.url, row.path))
        .body(row.body.clone());
    for (name, value) in &row.headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", row.name));
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
    };
    let location = header("location");
    let content_type = header("content-type").unwrap_or_default();
    let status = response.status().as_u16();
    let body: Value = if content_type.starts_with("application/json") {
        response.json().await.unwrap()
    } else {
        Value::Null
    };
    let text = |pointer| {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Answer {
        status,
        code: text("/error/code"),
        field: text("/error/field"),
        location,
        content_type,
    }
}

/// What a row must leave as it was: the store, and the queue (its counters and the pushes the
/// task receiver got).
#[derive(Debug, PartialEq)]
struct Snapshot {
    store: StoreSnapshot,
    queue: (LocalQueueStats, usize),
}

/// Every tenant's records.
#[derive(Debug, PartialEq)]
struct StoreSnapshot {
    tenant_ids: Vec<TenantId>,
    tenants: Vec<Option<Tenant>>,
    installs: Vec<Option<Install>>,
    failures: Vec<Vec<Failure>>,
    backfills: Vec<Option<BackfillRun>>,
}

async fn snapshot(t: &TestApp, receiver: &TaskReceiver) -> Snapshot {
    let store = &t.app.store;
    let mut tenant_ids = store.tenant_ids().await.unwrap();
    tenant_ids.sort();
    let (mut tenants, mut installs, mut failures, mut backfills) = (vec![], vec![], vec![], vec![]);
    for id in &tenant_ids {
        tenants.push(store.tenant(id).await.unwrap());
        installs.push(store.install(id).await.unwrap());
        let page = store.failures(id, &FailureQuery::newest(1000)).await;
        failures.push(page.unwrap().failures);
        backfills.push(store.backfill(id).await.unwrap());
    }
    Snapshot {
        store: StoreSnapshot {
            tenant_ids,
            tenants,
            installs,
            failures,
            backfills,
        },
        queue: (t.queue.stats(), receiver.deliveries().len()),
    }
}

/// `n` nested JSON arrays.
fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// A JSON document over the 256 KiB body limit.
fn oversized() -> Vec<u8> {
    format!(r#"{{"id":"p-1","pad":"{}"}}"#, "x".repeat(300 * 1024)).into_bytes()
}

/// Bytes that are not UTF-8, inside what would otherwise be a JSON string.
const NOT_UTF8: &[u8] = b"{\"id\":\"\xff\xfe\xc3\x28\"}";

/// A Klaviyo system-webhook delivery as rows send it.
struct System {
    webhook_id: String,
    timestamp: String,
    body: String,
}

impl System {
    fn of(made: &Handmade) -> Self {
        Self {
            webhook_id: made.webhook_id.clone(),
            timestamp: made.timestamp.clone(),
            body: made.body.to_string(),
        }
    }

    /// A row POSTing `body` to `tenant`'s system webhook with these headers and `signature`.
    fn row(&self, name: &str, tenant: &str, body: &[u8], signature: Option<&str>) -> Row {
        let mut row = row(name, Method::POST, format!("/{tenant}{SYSTEM}"))
            .json(body)
            .header("klaviyo-webhook-id", &self.webhook_id)
            .header("klaviyo-timestamp", &self.timestamp);
        if let Some(signature) = signature {
            row = row.header("klaviyo-signature", signature);
        }
        row
    }

    /// [`System::row`] with its own body, signed with `secret`.
    fn signed_row(&self, name: &str, tenant: &str, secret: &str) -> Row {
        self.row(
            name,
            tenant,
            self.body.as_bytes(),
            Some(&self.signed(secret)),
        )
    }

    fn signed(&self, secret: &str) -> String {
        klaviyo_sign(secret, self.body.as_bytes(), &self.timestamp)
    }
}

/// What is wrong with `answer` to `row`, if anything.
fn check(row: &Row, answer: &Answer, authorize_base: &str, app_url: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    if answer.status != row.status {
        wrong.push(format!("status {}, expected {}", answer.status, row.status));
    }
    if answer.code.as_deref() != row.code {
        wrong.push(format!("code {:?}, expected {:?}", answer.code, row.code));
    }
    if row.field.is_some() && answer.field.as_deref() != row.field {
        wrong.push(format!(
            "field {:?}, expected {:?}",
            answer.field, row.field
        ));
    }
    if !answer.content_type.starts_with(row.content_type) {
        let (got, wanted) = (&answer.content_type, row.content_type);
        wrong.push(format!("content-type {got:?}, expected {wanted:?}"));
    }
    // Never a redirect anywhere but Klaviyo's authorize URL, back to our own callback.
    match &answer.location {
        Some(location) => {
            let callback = format!("{app_url}/oauth/callback");
            let back_to_us = param(location, "redirect_uri").is_some_and(|uri| uri == callback);
            if !location.starts_with(authorize_base) || !back_to_us || row.status != 302 {
                wrong.push(format!("redirects to {location}"));
            }
        }
        None if row.status == 302 => wrong.push("no Location".to_owned()),
        None => {}
    }
    wrong
}

/// Why a part of the snapshot that `expected` to change (or not) did not (or did).
fn changed<T: PartialEq + std::fmt::Debug>(what: &str, before: &T, after: &T) -> Option<String> {
    (before != after).then(|| format!("{what}\nbefore: {before:?}\nafter: {after:?}"))
}

/// Each admin route of A without credentials and with B's admin key: 401 `unauthorized`.
fn foreign_credentials(b_key: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for route in ADMIN_ROUTES.split(", ") {
        let (method, tail) = route.split_once(' ').unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let path = format!("/{A}/api/v1/{tail}");
        let request = |who: &str| {
            row(format!("{route}: {who}"), method.clone(), path.clone())
                .json(r#"{"coalesce_seconds": 9}"#)
        };
        rows.push(request("no credentials").error(401, UNAUTHORIZED));
        rows.push(
            request("B's admin key")
                .bearer(b_key)
                .error(401, UNAUTHORIZED),
        );
    }
    rows
}

/// What the odd-tenant rows send.
struct OddTenantCredentials<'a> {
    a_key: &'a str,
    operator: &'a str,
    a_signing: &'a str,
    a_secret: &'a str,
    system: &'a System,
}

/// Each odd tenant id on an admin route (with A's key: 401; with the operator token: 400
/// naming `tenant`) and on the receivers with A's valid credentials (404 `not_found`, also for a
/// segment that does not decode to text).
fn odd_tenants(c: &OddTenantCredentials<'_>) -> Vec<Row> {
    let long = "a".repeat(64);
    let odd = [
        ("..%2F", "..%2Facme"),
        ("%00", "acme%00"),
        ("uppercase", "ACME"),
        ("64 characters", long.as_str()),
        ("unicode", "acm%C3%A9"),
        ("a dot", "acme.evil"),
        ("invalid UTF-8", "acme%FF"),
    ];
    let profile = br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-666666666666"}"#;
    let mut rows = Vec::new();
    for (what, tenant) in odd {
        let receiver = |row: Row| row.error(404, "not_found");
        rows.extend([
            row(
                format!("odd tenant ({what}): install status, A's key"),
                Method::GET,
                format!("/{tenant}/api/v1/install"),
            )
            .bearer(c.a_key)
            .error(401, "unauthorized"),
            row(
                format!("odd tenant ({what}): settings, operator"),
                Method::GET,
                format!("/{tenant}/api/v1/settings"),
            )
            .bearer(c.operator)
            .error_at(400, "invalid_field", "tenant"),
            receiver(
                row(
                    format!("odd tenant ({what}): omneo webhook, A's signature"),
                    Method::POST,
                    format!("/{tenant}/api/v1/webhooks/omneo"),
                )
                .json(profile)
                .header("x-omneo-event", "profile.updated")
                .omneo_hmac(omneo_sign(c.a_signing, profile)),
            ),
            receiver(c.system.signed_row(
                &format!("odd tenant ({what}): klaviyo system, A's signature"),
                tenant,
                c.a_secret,
            )),
        ]);
    }
    rows
}

#[tokio::test]
async fn hostile_requests_get_their_exact_answers() {
    let receiver = TaskReceiver::start(0).await;
    let t = TestApp::spawn(TestAppOptions {
        task_target: Some(receiver.base.to_string()),
        ..TestAppOptions::default()
    })
    .await;
    let a = install(&t, A, json!({})).await;
    let b = t.register(B).await;
    let o = Pipeline {
        t,
        tenant: A,
        registered: a,
    };
    let t = &o.t;
    let a_key = o.registered.admin_key.clone();
    let a_signing = o.registered.omneo_signing_secret.clone();
    let a_secret = o.webhook_secret();
    let b_secret = t.tenant_secret(B, TenantSecret::WebhookSecret).await;
    let operator = t.operator_token.clone();
    record(
        t,
        &[sync_failure(FAILURE_ID, A, "p-hostile", Timestamp::now())],
    )
    .await;

    // The install flow's material: links of both tenants, a live state with its approved code,
    // a state of B's install, and a state already used (cancelled in Klaviyo).
    let a_link_url = link_url(t, A, &a_key).await;
    let a_link = param(&a_link_url, "link").unwrap();
    let b_link = param(&link_url(t, B, &b.admin_key).await, "link").unwrap();
    let live_authorize = authorize_url(t, &a_link_url).await;
    let live_state = param(&live_authorize, "state").unwrap();
    let live_code = param(
        t.klaviyo.approve(&live_authorize).await.unwrap().as_str(),
        "code",
    )
    .unwrap();
    let b_state = param(
        &authorize_url(t, &link_url(t, B, &b.admin_key).await).await,
        "state",
    )
    .unwrap();
    let used_authorize = authorize_url(t, &link_url(t, A, &a_key).await).await;
    let used_state = param(&used_authorize, "state").unwrap();
    let cancelled = t.klaviyo.deny(&used_authorize).await.unwrap();
    assert_eq!(t.http.get(cancelled).send().await.unwrap().status(), 200);
    let mut tampered_state = live_state.clone();
    let last = if tampered_state.ends_with('A') {
        "B"
    } else {
        "A"
    };
    tampered_state.replace_range(tampered_state.len() - 1.., last);
    let tampered = format!("code={live_code}&state={tampered_state}");
    let authorize_base = t.app.config.klaviyo.auth_url.to_string();

    // A genuine Klaviyo delivery of A, and its stale, future and foreign variants.
    let event = SystemEvent::new(
        topics::UNSUBSCRIBED_FROM_EMAIL,
        "01JH0STILEPR0FILE000000000",
        Some("hostile@shop.test"),
    );
    let genuine = System::of(&Handmade::of(&o, std::slice::from_ref(&event)));
    let aged = |minutes: i64| {
        let mut made = Handmade::of(&o, std::slice::from_ref(&event));
        made.body["meta"]["timestamp"] =
            json!(Timestamp::now() + SignedDuration::from_mins(minutes));
        System::of(&made)
    };
    let (stale, future) = (aged(-6), aged(6));
    let mut header_mismatch = System::of(&Handmade::of(&o, std::slice::from_ref(&event)));
    header_mismatch.webhook_id = "01JOTHERWEBHOOK".into();
    let mut retimed = System::of(&Handmade::of(&o, std::slice::from_ref(&event)));
    retimed.timestamp = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    let nested_json = nested(10_000);
    let huge = "a".repeat(64 * 1024);
    let big = oversized();

    let admin = |name: &str, method: Method, tail: &str| row(name, method, format!("/{A}{tail}"));
    let as_a = |name: &str, method: Method, tail: &str| admin(name, method, tail).bearer(&a_key);
    let settings = |name: &str, method: Method| as_a(name, method, "/api/v1/settings");
    let start_backfill = |name: &str| as_a(name, Method::POST, "/api/v1/backfill");
    let retry =
        |name: &str, id: &str| as_a(name, Method::POST, &format!("/api/v1/failures/{id}/retry"));
    let register = |name: &str, tenant: &str| {
        row(name, Method::PUT, format!("/{tenant}/api/v1/tenant")).bearer(&operator)
    };
    let omneo = |name: &str, path: &str, body: &[u8]| {
        row(name, Method::POST, format!("/{A}{path}"))
            .json(body)
            .header("x-omneo-event", "profile.updated")
    };
    let signed = |name: &str, path: &str, body: &[u8]| {
        omneo(name, path, body).omneo_hmac(omneo_sign(&a_signing, body))
    };
    let flow = |name: &str, action: &str, body: &[u8]| {
        row(
            name,
            Method::POST,
            format!("/{A}/api/v1/webhooks/klaviyo/{action}"),
        )
        .json(body)
    };
    let flow_as_a = |name: &str, action: &str, body: &[u8]| {
        flow(name, action, body).header("x-omneo-secret", &a_secret)
    };
    let reward = json!({
        "person_id": "01JH0STILEPR0FILE000000000",
        "data": {"reward_definition_id": "r-1", "amount": 5},
    })
    .to_string();
    let mut reward_not_utf8 = reward.clone().into_bytes();
    reward_not_utf8.pop();
    reward_not_utf8.extend_from_slice(b",\"note\":\"\xff\xfe\"}");
    let metric = json!({"data": {"type": "event", "attributes": {
        "metric": {"data": {"type": "metric", "attributes": {"name": "Hostile"}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": "hostile@shop.test"}}},
        "properties": {},
    }}})
    .to_string();
    let record_call =
        json!({"data_source": "rewards", "record": {"id": "r-1", "email": "hostile@shop.test"}})
            .to_string();
    let profile = br#"{"id":"7b0d2a52-3f7e-4c55-9e0e-555555555555"}"#;
    let reward_traversal = reward.replace("01JH0STILEPR0FILE000000000", "../../admin");
    let record_traversal = record_call.replace(r#""rewards""#, r#""../../x""#);
    let task = json!({"tenant": A, "kind": "sync_profile", "payload": {"profile_id": "p-1"}});
    let task = task.to_string();

    let mut rows = odd_tenants(&OddTenantCredentials {
        a_key: &a_key,
        operator: &operator,
        a_signing: &a_signing,
        a_secret: &a_secret,
        system: &genuine,
    });
    rows.extend(foreign_credentials(&b.admin_key));
    // Each Omneo route, signed: a deep, a non-UTF-8 and an oversized body.
    let routes = [
        ("omneo webhook", WEBHOOK),
        ("target metric", METRIC),
        ("target upsert-profile-data", UPSERT),
        ("target data-source-record", RECORD),
    ];
    for (route, path) in routes {
        let bodies = [
            (
                "10,000 nested arrays",
                nested_json.as_bytes(),
                400,
                "invalid_json",
            ),
            ("invalid UTF-8", NOT_UTF8, 400, "invalid_json"),
            ("> 256 KiB", &big, 413, "payload_too_large"),
        ];
        for (what, body, status, code) in bodies {
            rows.push(signed(&format!("{route}: {what}"), path, body).error(status, code));
        }
    }
    // Klaviyo deliveries signed with a secret, refused for the header or `meta` field named.
    let deliveries = [
        (
            "B's webhook secret",
            &genuine,
            A,
            &b_secret,
            "klaviyo-signature",
        ),
        (
            "A's delivery on B's path",
            &genuine,
            B,
            &a_secret,
            "klaviyo-signature",
        ),
        (
            "replayed 6 minutes late",
            &stale,
            A,
            &a_secret,
            "meta.timestamp",
        ),
        (
            "6 minutes in the future",
            &future,
            A,
            &a_secret,
            "meta.timestamp",
        ),
        (
            "webhook id header is not meta's",
            &header_mismatch,
            A,
            &a_secret,
            "klaviyo-webhook-id",
        ),
    ];
    for (name, delivery, tenant, secret, field) in deliveries {
        let name = format!("klaviyo system: {name}");
        rows.push(delivery.signed_row(&name, tenant, secret).refused(field));
    }
    rows.extend([
        // oauth-callback: the admin API.
        admin(
            "install status: A's key as Basic",
            Method::GET,
            "/api/v1/install",
        )
        .header("authorization", format!("Basic {a_key}"))
        .error(401, UNAUTHORIZED),
        admin(
            "install status: 64 KiB bearer",
            Method::GET,
            "/api/v1/install",
        )
        .bearer(&huge)
        .error(401, UNAUTHORIZED),
        admin(
            "admin brute force: 30 wrong keys",
            Method::GET,
            "/api/v1/install",
        )
        .bearer("wrong-admin-key-0123456789abcdef")
        .times(30)
        .error(401, UNAUTHORIZED),
        settings("settings PATCH: text/plain", Method::PATCH)
            .header("content-type", "text/plain")
            .body(r#"{"coalesce_seconds": 9}"#)
            .error_at(415, "unsupported_media_type", "content-type"),
        settings("settings PUT: no content type", Method::PUT)
            .body(r#"{"coalesce_seconds": 9}"#)
            .error_at(415, "unsupported_media_type", "content-type"),
        settings("settings PATCH: 10,000 nested arrays", Method::PATCH)
            .json(&nested_json)
            .error(400, "invalid_json"),
        settings("settings PATCH: invalid UTF-8", Method::PATCH)
            .json(NOT_UTF8)
            .error(400, "invalid_json"),
        settings("settings PATCH: > 256 KiB", Method::PATCH)
            .json(oversized())
            .error(413, "payload_too_large"),
        as_a("tenant PUT: A's admin key", Method::PUT, "/api/v1/tenant")
            .json(r#"{"rotate_admin_key": true}"#)
            .error(401, UNAUTHORIZED),
        register("tenant PUT: uppercase id, operator", "ACME")
            .json(r#"{"omneo_api_token": "t", "omneo_signing_secret": "s"}"#)
            .error_at(400, "invalid_field", "tenant"),
        register("tenant PUT: ..%2Fbeta, operator", "..%2Fbeta")
            .json(r#"{"omneo_api_token": "t", "omneo_signing_secret": "s"}"#)
            .error_at(400, "invalid_field", "tenant"),
        register("tenant PUT: text/plain, operator", "gamma")
            .header("content-type", "text/plain")
            .body(r#"{"omneo_api_token": "t", "omneo_signing_secret": "s"}"#)
            .error_at(415, "unsupported_media_type", "content-type"),
        register("tenant PUT: 10,000 nested arrays, operator", "gamma")
            .json(&nested_json)
            .error_at(400, "invalid_field", "[0]"),
        as_a(
            "failures: limit=abc",
            Method::GET,
            "/api/v1/failures?limit=abc",
        )
        .error_at(400, "invalid_field", "limit"),
        retry("failure retry: unknown id", "no-such-failure").error(404, "not_found"),
        retry("failure retry: ..%2F id", "..%2F..%2Fbeta%2Fx").error(404, "not_found"),
        start_backfill("backfill start: since=yesterday")
            .json(r#"{"since": "yesterday"}"#)
            .error_at(400, "invalid_field", "since"),
        start_backfill("backfill start: 10,000 nested arrays")
            .json(&nested_json)
            .error(400, "invalid_json"),
        start_backfill("backfill start: invalid UTF-8")
            .json(NOT_UTF8)
            .error(400, "invalid_json"),
        // serde would take a JSON array as the body's fields in order: `[since, dry_run]`.
        start_backfill("backfill start: a JSON array body [null, true]")
            .json("[null, true]")
            .error(400, "invalid_json"),
        as_a(
            "backfill cancel: none running",
            Method::DELETE,
            "/api/v1/backfill",
        )
        .error(404, "not_found"),
        row(
            "backfill progress: unicode tenant, A's key",
            Method::GET,
            "/acm%C3%A9/api/v1/backfill",
        )
        .bearer(&a_key)
        .error(401, UNAUTHORIZED),
        row("keyring: no credentials", Method::GET, "/api/v1/keyring").error(401, UNAUTHORIZED),
        row("keyring: A's admin key", Method::GET, "/api/v1/keyring")
            .bearer(&a_key)
            .error(401, UNAUTHORIZED),
        row("keyring: POST", Method::POST, "/api/v1/keyring")
            .bearer(&operator)
            .error(405, "method_not_allowed"),
        // oauth-callback: the install flow (HTML pages, and redirects only to Klaviyo).
        row(
            "oauth install: redirect_uri and return_to to evil.example",
            Method::GET,
            format!("/oauth/install?tenant={A}&link={a_link}&redirect_uri={EVIL}&return_to={EVIL}"),
        )
        .page(302),
        row(
            "oauth install: B's link on A",
            Method::GET,
            format!("/oauth/install?tenant={A}&link={b_link}"),
        )
        .page(403),
        row(
            "oauth install: A's link on B",
            Method::GET,
            format!("/oauth/install?tenant={B}&link={a_link}"),
        )
        .page(403),
        row(
            "oauth install: ..%2Facme tenant",
            Method::GET,
            format!("/oauth/install?tenant=..%2F{A}&link={a_link}"),
        )
        .page(403),
        row(
            "oauth install: return_to without a link",
            Method::GET,
            format!("/oauth/install?return_to={EVIL}"),
        )
        .page(400),
        row(
            "oauth callback: modified state",
            Method::GET,
            format!("/oauth/callback?{tampered}"),
        )
        .page(400),
        row(
            "oauth callback: missing code",
            Method::GET,
            format!("/oauth/callback?state={live_state}"),
        )
        .page(400),
        row(
            "oauth callback: reused state",
            Method::GET,
            format!("/oauth/callback?code={live_code}&state={used_state}"),
        )
        .page(400),
        row(
            "oauth callback: state of B's install with A's code",
            Method::GET,
            format!("/oauth/callback?code={live_code}&state={b_state}"),
        )
        .page(400),
        row(
            "oauth callback: redirect_uri to evil.example",
            Method::GET,
            format!("/oauth/callback?{tampered}&redirect_uri={EVIL}&return_to={EVIL}"),
        )
        .page(400),
        row(
            "oauth callback: forged error without a live state",
            Method::GET,
            concat!(
                "/oauth/callback?error=server_error",
                "&error_description=%3Cscript%3Ego%3C%2Fscript%3E&state=forged"
            ),
        )
        .page(400),
        row(
            "oauth callback: 32 KiB state",
            Method::GET,
            format!(
                "/oauth/callback?code={live_code}&state={}",
                &huge[..32 * 1024]
            ),
        )
        .page(400),
        // klaviyo-webhook: system webhooks.
        genuine
            .row(
                "klaviyo system: no signature",
                A,
                genuine.body.as_bytes(),
                None,
            )
            .refused("klaviyo-signature"),
        genuine
            .row(
                "klaviyo system: wrong secret",
                A,
                genuine.body.as_bytes(),
                Some(&genuine.signed("not-the-secret")),
            )
            .refused("klaviyo-signature"),
        genuine
            .row(
                "klaviyo system: signature not hex",
                A,
                genuine.body.as_bytes(),
                Some("zz"),
            )
            .refused("klaviyo-signature"),
        genuine
            .row(
                "klaviyo system: 64 KiB signature",
                A,
                genuine.body.as_bytes(),
                Some(&huge),
            )
            .refused("klaviyo-signature"),
        genuine
            .row(
                "klaviyo system: signature over another body",
                A,
                genuine
                    .body
                    .replace("hostile@shop.test", "evil@shop.test")
                    .as_bytes(),
                Some(&genuine.signed(&a_secret)),
            )
            .refused("klaviyo-signature"),
        retimed
            .row(
                "klaviyo system: timestamp header not the signed one",
                A,
                genuine.body.as_bytes(),
                Some(&genuine.signed(&a_secret)),
            )
            .refused("klaviyo-signature"),
        genuine
            .row(
                "klaviyo system: 10,000 nested arrays, signed",
                A,
                nested_json.as_bytes(),
                Some(&klaviyo_sign(
                    &a_secret,
                    nested_json.as_bytes(),
                    &genuine.timestamp,
                )),
            )
            .error(400, "invalid_json"),
        genuine
            .row(
                "klaviyo system: invalid UTF-8, signed",
                A,
                NOT_UTF8,
                Some(&klaviyo_sign(&a_secret, NOT_UTF8, &genuine.timestamp)),
            )
            .error(400, "invalid_json"),
        genuine
            .row(
                "klaviyo system: > 256 KiB",
                A,
                &oversized(),
                Some(&genuine.signed(&a_secret)),
            )
            .error(413, "payload_too_large"),
        // klaviyo-webhook: Flow webhooks.
        flow(
            "klaviyo rewards: no x-omneo-secret",
            "rewards",
            reward.as_bytes(),
        )
        .refused("x-omneo-secret"),
        flow(
            "klaviyo rewards: B's webhook secret",
            "rewards",
            reward.as_bytes(),
        )
        .header("x-omneo-secret", &b_secret)
        .refused("x-omneo-secret"),
        flow(
            "klaviyo benefits: A's secret with a suffix",
            "benefits",
            reward.as_bytes(),
        )
        .header("x-omneo-secret", format!("{a_secret}x"))
        .refused("x-omneo-secret"),
        flow(
            "klaviyo interactions: A's Omneo signature instead",
            "interactions",
            reward.as_bytes(),
        )
        .omneo_hmac(omneo_sign(&a_signing, reward.as_bytes()))
        .refused("x-omneo-secret"),
        flow_as_a(
            "klaviyo rewards: person_id ../../admin",
            "rewards",
            reward_traversal.as_bytes(),
        )
        .error_at(400, "invalid_field", "person_id"),
        flow_as_a(
            "klaviyo rewards: 10,000 nested arrays",
            "rewards",
            nested_json.as_bytes(),
        )
        .error(400, "invalid_json"),
        flow_as_a("klaviyo benefits: invalid UTF-8", "benefits", NOT_UTF8)
            .error(400, "invalid_json"),
        // serde skips an ignored field's string without reading its bytes.
        flow_as_a(
            "klaviyo rewards: invalid UTF-8 in an ignored field",
            "rewards",
            &reward_not_utf8,
        )
        .error(400, "invalid_json"),
        flow_as_a(
            "klaviyo interactions: > 256 KiB",
            "interactions",
            &oversized(),
        )
        .error(413, "payload_too_large"),
        row(
            "klaviyo rewards: %00 tenant",
            Method::POST,
            "/acme%00/api/v1/webhooks/klaviyo/rewards",
        )
        .json(&reward)
        .header("x-omneo-secret", &a_secret)
        .error(404, "not_found"),
        // omneo-webhook: Omneo's webhooks.
        omneo("omneo webhook: no signature", WEBHOOK, profile).refused("x-omneo-hmac-sha256"),
        omneo("omneo webhook: B's signing secret", WEBHOOK, profile)
            .omneo_hmac(omneo_sign(&b.omneo_signing_secret, profile))
            .refused("x-omneo-hmac-sha256"),
        omneo(
            "omneo webhook: signature over another body",
            WEBHOOK,
            profile,
        )
        .omneo_hmac(omneo_sign(&a_signing, br#"{"id":"p-2"}"#))
        .refused("x-omneo-hmac-sha256"),
        omneo(
            "omneo webhook: A's webhook secret instead",
            WEBHOOK,
            profile,
        )
        .header("x-omneo-secret", &a_secret)
        .refused("x-omneo-hmac-sha256"),
        omneo("omneo webhook: 64 KiB signature", WEBHOOK, profile)
            .omneo_hmac(&huge)
            .refused("x-omneo-hmac-sha256"),
        signed(
            "omneo webhook: id ../../etc/passwd",
            WEBHOOK,
            br#"{"id":"../../etc/passwd"}"#,
        )
        .error_at(400, "invalid_field", "id"),
        // omneo-webhook: the Klaviyo targets.
        omneo("target metric: no credentials", METRIC, metric.as_bytes())
            .refused("x-omneo-hmac-sha256"),
        omneo(
            "target metric: B's webhook secret",
            METRIC,
            metric.as_bytes(),
        )
        .header("x-omneo-secret", &b_secret)
        .refused("x-omneo-secret"),
        signed(
            "target metric: withToken=evil",
            &format!("{METRIC}?withToken=https%3A%2F%2Fevil.example"),
            metric.as_bytes(),
        )
        .error_at(400, "invalid_field", "withToken"),
        omneo(
            "target upsert-profile-data: B's signing secret",
            UPSERT,
            profile,
        )
        .omneo_hmac(omneo_sign(&b.omneo_signing_secret, profile))
        .refused("x-omneo-hmac-sha256"),
        omneo(
            "target data-source-record: signature over another body",
            RECORD,
            record_call.as_bytes(),
        )
        .omneo_hmac(omneo_sign(&a_signing, profile))
        .refused("x-omneo-hmac-sha256"),
        signed(
            "target data-source-record: data_source ../../x",
            RECORD,
            record_traversal.as_bytes(),
        )
        .error_at(400, "invalid_field", "data_source"),
        // The task endpoints, without Cloud Tasks headers.
        row(
            "task inbound: no Cloud Tasks headers",
            Method::POST,
            "/tasks/inbound",
        )
        .json("{}")
        .error_at(400, "invalid_field", "X-CloudTasks-QueueName"),
        row(
            "task outbound: no Cloud Tasks headers",
            Method::POST,
            "/tasks/outbound",
        )
        .json(&task)
        .error_at(400, "invalid_field", "X-CloudTasks-QueueName"),
    ]);

    // Every row runs; the mismatches are reported together.
    let mut summary = Vec::new();
    let mut mismatches = Vec::new();
    for row in &rows {
        let before = snapshot(t, &receiver).await;
        for attempt in 0..row.times {
            let answer = send(t, row).await;
            let name = format!("{} (#{attempt})", row.name);
            mismatches.extend(
                check(row, &answer, &authorize_base, &t.url)
                    .into_iter()
                    .map(|why| format!("{name}: {why}")),
            );
            if attempt == 0 {
                let code = answer.code.clone().unwrap_or_else(|| {
                    match answer.content_type.split(';').next() {
                        Some("") | None => "(no body)".to_owned(),
                        Some(content_type) => format!("({content_type})"),
                    }
                });
                summary.push((row.name.clone(), answer.status, code, answer.field));
            }
        }
        let after = snapshot(t, &receiver).await;
        let store = changed("store written", &before.store, &after.store);
        let queue = changed("enqueued", &before.queue, &after.queue);
        mismatches.extend(
            [store, queue]
                .into_iter()
                .flatten()
                .map(|why| format!("{}: {why}", row.name)),
        );
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // After the brute force the right key still works, and no tampering consumed the live state.
    let status = t
        .request(Method::GET, &format!("/{A}/api/v1/install"), Some(&a_key))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "A's admin key after 30 wrong ones");
    let live = t.app.store.take_oauth_state(&hash(&live_state)).await;
    assert!(live.unwrap().is_some(), "the live state is still there");

    assert!(rows.len() >= 40, "{} rows", rows.len());
    println!("{:<62} {:>6}  {:<24} field", "row", "status", "code");
    for (name, status, code, field) in &summary {
        println!(
            "{name:<62} {status:>6}  {:<24} {}",
            code,
            field.as_deref().unwrap_or("")
        );
    }
    println!("{} rows", summary.len());
}
