//! The failure records' admin API over real sockets (product.md §10, "Failures"): admin auth,
//! listing newest first with pages and filters, 400s naming the parameter, and replay — the task
//! reaches the tenant's current queue with its kind, payload and tenant, a tenant not installed is
//! refused, overlapping replays enqueue one task and count once, an unavailable queue counts
//! nothing. The tasks go to a [`TaskReceiver`] that records them instead of running them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::Method;
use serde_json::{Value, json};
use shared::domain::TenantId;
use shared::install::provision::provision;
use shared::queue::{
    Direction, Enqueued, Queue, QueueError, QueueName, QueueSettings, Task, TaskKind, TaskName,
    header,
};
use shared::store::{Failure, InstallStatus, Severity};
use tokio::sync::Barrier;

use crate::support::{DownQueue, PATIENCE, StoreKind, TaskReceiver, TestApp, TestAppOptions};

/// A test app whose tasks go to a fresh [`TaskReceiver`].
async fn spawn(store: StoreKind) -> (TestApp, TaskReceiver) {
    let receiver = TaskReceiver::start(0).await;
    let t = TestApp::spawn(TestAppOptions {
        store,
        task_target: Some(receiver.base.to_string()),
        ..TestAppOptions::default()
    })
    .await;
    (t, receiver)
}

/// Registers `name` and provisions it through the simulators: installed, with both queues.
async fn installed(t: &TestApp, name: &str) -> String {
    let admin_key = t.register(name).await.admin_key;
    t.seed_tokens(name, InstallStatus::Provisioning).await;
    let install = provision(&t.app, &tenant(name))
        .await
        .expect("provisioning");
    assert_eq!(install.status, InstallStatus::Installed);
    admin_key
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// The queue of `direction` the tenant's install uses now.
async fn current_queue(t: &TestApp, name: &str, direction: Direction) -> QueueName {
    let install = t.app.store.install(&tenant(name)).await.unwrap();
    install
        .and_then(|install| install.queue(direction).cloned())
        .expect("a provisioned queue")
}

/// Now, at the microsecond precision the store keeps.
fn now() -> Timestamp {
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap()
}

/// A failure record of a `sync_profile` task of `tenant` about `profile`, from a queue the
/// tenant no longer uses.
pub(crate) fn sync_failure(id: &str, tenant_name: &str, profile: &str, at: Timestamp) -> Failure {
    Failure {
        id: id.to_owned(),
        tenant: tenant(tenant_name),
        queue: QueueName::parse(&format!("{tenant_name}-old-outbound")).unwrap(),
        task_kind: TaskKind::SyncProfile,
        task_name: TaskName::from_parts(&["original", id]),
        payload: json!({ "profile_id": profile }).to_string(),
        profile: Some(profile.to_owned()),
        step: Some("write_profile".into()),
        severity: Severity::Failed,
        error: "Klaviyo answered 400: invalid phone".into(),
        attempts: 1,
        at,
        retries: 0,
        retried_at: None,
    }
}

/// A failure record of a `klaviyo_events` (inbound) task.
fn events_failure(id: &str, tenant_name: &str, at: Timestamp) -> Failure {
    Failure {
        id: id.to_owned(),
        tenant: tenant(tenant_name),
        queue: QueueName::parse(&format!("{tenant_name}-klaviyo-inbound")).unwrap(),
        task_kind: TaskKind::KlaviyoEvents,
        task_name: TaskName::from_parts(&["original", id]),
        payload: json!({
            "klaviyo_profile_id": "01KPROFILE",
            "events": [{"id": "01KEVENT", "topic": "event:klaviyo.unsubscribed_from_email_marketing", "at": "2026-12-01T10:00:00Z"}],
        })
        .to_string(),
        profile: Some("01KPROFILE".into()),
        step: Some("update_comms".into()),
        severity: Severity::Warning,
        error: "phone left out: taken by another profile".into(),
        attempts: 3,
        at,
        retries: 0,
        retried_at: None,
    }
}

pub(crate) async fn record(t: &TestApp, failures: &[Failure]) {
    for failure in failures {
        t.app.store.record_failure(failure).await.unwrap();
    }
}

/// `method path` on the app with `bearer`: the status and the JSON body (`null` if none).
async fn call(t: &TestApp, method: Method, path: &str, bearer: Option<&str>) -> (u16, Value) {
    call_at(&t.url, t, method, path, bearer).await
}

/// `method path` on the instance at `base`.
async fn call_at(
    base: &str,
    t: &TestApp,
    method: Method,
    path: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut request = t.http.request(method, format!("{base}{path}"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The ids of a listing answer.
fn ids(body: &Value) -> Vec<String> {
    body["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every page of `GET /{tenant}/api/v1/failures?{filter}&limit={limit}`, following
/// `next_cursor`: the ids in order.
async fn walk(
    t: &TestApp,
    tenant_name: &str,
    key: &str,
    filter: &str,
    limit: usize,
) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/{tenant_name}/api/v1/failures?{filter}&limit={limit}&cursor={cursor}");
        let (status, body) = call(t, Method::GET, &path, Some(key)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = ids(&body);
        assert!(page.len() <= limit, "{path}");
        all.extend(page);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => {
                assert_eq!(body["next_cursor"], Value::Null);
                return all;
            }
        }
        assert!(all.len() < 100, "pages without end: {all:?}");
    }
}

fn list_path(tenant_name: &str) -> String {
    format!("/{tenant_name}/api/v1/failures")
}

fn retry_path(tenant_name: &str, id: &str) -> String {
    format!("/{tenant_name}/api/v1/failures/{id}/retry")
}

#[tokio::test]
async fn both_routes_need_the_tenants_admin_credentials() {
    let (t, receiver) = spawn(StoreKind::Memory).await;
    let acme = t.register("acme").await.admin_key;
    let other = t.register("other").await.admin_key;
    record(&t, &[sync_failure("f-1", "acme", "p-1", now())]).await;
    for (method, path) in [
        (Method::GET, list_path("acme")),
        (Method::POST, retry_path("acme", "f-1")),
    ] {
        for bearer in [None, Some("wrong-token-wrong-token"), Some(other.as_str())] {
            let (status, body) = call(&t, method.clone(), &path, bearer).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // An unknown tenant: 401 to all but the operator, who learns it is not there.
    for (method, path) in [
        (Method::GET, list_path("ghost")),
        (Method::POST, retry_path("ghost", "f-1")),
    ] {
        for bearer in [None, Some(acme.as_str())] {
            let (status, _) = call(&t, method.clone(), &path, bearer).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}");
        }
        let (status, body) = call(&t, method.clone(), &path, Some(&t.operator_token)).await;
        assert_eq!(status, 404, "{method} {path} as the operator: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    // The operator token works like the admin key.
    let (status, body) = call(&t, Method::GET, &list_path("acme"), Some(&t.operator_token)).await;
    assert_eq!((status, ids(&body)), (200, vec!["f-1".to_owned()]));
    let stored = t.app.store.failure(&tenant("acme"), "f-1").await.unwrap();
    assert_eq!(
        stored.map(|f| f.retries),
        Some(0),
        "no refused call counted"
    );
    assert!(receiver.deliveries().is_empty());
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters() {
    let (t, _receiver) = spawn(StoreKind::Memory).await;
    let key = t.register("acme").await.admin_key;
    t.register("other").await;
    let t0 = now();
    let at = |seconds| t0 + Duration::from_secs(seconds);
    record(
        &t,
        &[
            sync_failure("f-1", "acme", "p-1", at(0)),
            events_failure("f-2", "acme", at(1)),
            sync_failure("f-3", "acme", "p-3", at(1)),
            events_failure("f-4", "acme", at(1)),
            sync_failure("f-5", "acme", "p-5", at(2)),
            sync_failure("f-35", "other", "p-9", at(1)),
        ],
    )
    .await;

    let newest_first = ["f-5", "f-4", "f-3", "f-2", "f-1"];
    for limit in [1, 2, 5, 200] {
        assert_eq!(
            walk(&t, "acme", &key, "", limit).await,
            newest_first,
            "{limit}"
        );
    }
    assert_eq!(
        walk(&t, "acme", &key, "kind=klaviyo_events", 1).await,
        ["f-4", "f-2"]
    );
    assert_eq!(
        walk(&t, "acme", &key, "kind=sync_profile", 2).await,
        ["f-5", "f-3", "f-1"]
    );
    assert_eq!(
        walk(&t, "acme", &key, "severity=warning", 1).await,
        ["f-4", "f-2"]
    );
    assert_eq!(
        walk(&t, "acme", &key, "kind=sync_profile&severity=warning", 3).await,
        Vec::<String>::new()
    );

    // One record, field by field.
    let (_, body) = call(
        &t,
        Method::GET,
        &format!("{}?kind=klaviyo_events&limit=1", list_path("acme")),
        Some(&key),
    )
    .await;
    let recorded = events_failure("f-4", "acme", at(1));
    assert_eq!(
        body["failures"][0],
        json!({
            "id": "f-4",
            "task_kind": "klaviyo_events",
            "profile": "01KPROFILE",
            "step": "update_comms",
            "severity": "warning",
            "error": "phone left out: taken by another profile",
            "attempts": 3,
            "at": at(1).to_string(),
            "retries": 0,
            "retried_at": null,
            "queue": "acme-klaviyo-inbound",
            "task_name": recorded.task_name.as_str(),
            "payload": {
                "klaviyo_profile_id": "01KPROFILE",
                "events": [{"id": "01KEVENT", "topic": "event:klaviyo.unsubscribed_from_email_marketing", "at": "2026-12-01T10:00:00Z"}],
            },
        })
    );
    assert!(body["next_cursor"].is_string());
}

#[tokio::test]
async fn the_default_page_holds_fifty() {
    let (t, _receiver) = spawn(StoreKind::Memory).await;
    let key = t.register("acme").await.admin_key;
    let t0 = now();
    let failures: Vec<Failure> = (0..51)
        .map(|i| {
            sync_failure(
                &format!("f-{i:02}"),
                "acme",
                "p-1",
                t0 + Duration::from_secs(i),
            )
        })
        .collect();
    record(&t, &failures).await;
    let (status, first) = call(&t, Method::GET, &list_path("acme"), Some(&key)).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&first).len(), 50);
    assert_eq!(ids(&first)[0], "f-50");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let path = format!("{}?cursor={cursor}", list_path("acme"));
    let (_, rest) = call(&t, Method::GET, &path, Some(&key)).await;
    assert_eq!(ids(&rest), ["f-00"]);
    assert_eq!(rest["next_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_them() {
    let (t, _receiver) = spawn(StoreKind::Memory).await;
    let key = t.register("acme").await.admin_key;
    for (query, field) in [
        ("kind=teleport", "kind"),
        ("severity=fatal", "severity"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=many", "limit"),
        ("cursor=forged", "cursor"),
        ("cursor=MTI6", "cursor"),
        ("kind=sync_profile&kind=flow_action", "kind"),
        ("order=asc", "order"),
    ] {
        let path = format!("{}?{query}", list_path("acme"));
        let (status, body) = call(&t, Method::GET, &path, Some(&key)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
}

#[tokio::test]
async fn a_record_whose_task_format_changed_is_409_and_left_unmarked() {
    let (t, _receiver) = spawn(StoreKind::Memory).await;
    let key = installed(&t, "acme").await;
    let mut old = events_failure("f-old", "acme", now());
    // What an earlier version recorded: events as raw JSON, before they were typed.
    old.payload =
        json!({"klaviyo_profile_id": "01KPROFILE", "events": [{"type": "event"}]}).to_string();
    record(&t, &[old]).await;
    let (status, body) = call(&t, Method::POST, &retry_path("acme", "f-old"), Some(&key)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot be replayed"), "{message}");
    let stored = t.app.store.failure(&tenant("acme"), "f-old").await.unwrap();
    assert_eq!(stored.expect("kept").retries, 0, "not counted");
}

/// Retries one `sync_profile` and one `klaviyo_events` record of an installed tenant, then the
/// first again: each replay reaches the tenant's current queue of its direction with the original
/// kind, payload and the tenant, and is counted on the record.
async fn retry_enqueues_the_recorded_task_and_counts_it(store: StoreKind) {
    let (t, receiver) = spawn(store).await;
    let key = installed(&t, "acme").await;
    let sync = sync_failure("f-sync", "acme", "p-1", now());
    let events = events_failure("f-events", "acme", now());
    record(&t, &[sync.clone(), events.clone()]).await;

    let before = now();
    let (status, answer) = call(&t, Method::POST, &retry_path("acme", "f-sync"), Some(&key)).await;
    assert_eq!(status, 202, "{answer}");
    let task_name = answer["task_name"].as_str().expect("task_name").to_owned();
    assert_eq!(answer["failure"]["id"], "f-sync");
    assert_eq!(answer["failure"]["retries"], 1);
    let retried_at: Timestamp = answer["failure"]["retried_at"]
        .as_str()
        .expect("retried_at")
        .parse()
        .unwrap();
    assert!(retried_at >= before, "{retried_at} is now");
    let stored = t
        .app
        .store
        .failure(&tenant("acme"), "f-sync")
        .await
        .unwrap();
    let stored = stored.expect("the record stays");
    assert_eq!((stored.retries, stored.retried_at), (1, Some(retried_at)));

    let (status, answer) = call(
        &t,
        Method::POST,
        &retry_path("acme", "f-events"),
        Some(&key),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let events_task = answer["task_name"].as_str().expect("task_name").to_owned();

    let deliveries = receiver.wait_for(2).await;
    let by_name = |name: &str| {
        deliveries
            .iter()
            .find(|d| d.header(header::TASK_NAME) == Some(name))
            .unwrap_or_else(|| panic!("no task {name}: {deliveries:?}"))
            .clone()
    };
    let pushed = by_name(&task_name);
    assert_eq!(pushed.path, "/tasks/outbound");
    assert_eq!(
        pushed.task().queue,
        current_queue(&t, "acme", Direction::Outbound).await,
        "the tenant's current queue, not the recorded one"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&pushed.body).unwrap(),
        json!({"tenant": "acme", "kind": "sync_profile", "payload": {"profile_id": "p-1"}})
    );
    let pushed = by_name(&events_task);
    assert_eq!(pushed.path, "/tasks/inbound");
    assert_eq!(
        pushed.task().queue,
        current_queue(&t, "acme", Direction::Inbound).await
    );
    let body: Value = serde_json::from_slice(&pushed.body).unwrap();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["kind"], "klaviyo_events");
    assert_eq!(
        body["payload"],
        serde_json::from_str::<Value>(&events.payload).unwrap()
    );

    // A later retry is another replay, under another name.
    let (status, again) = call(&t, Method::POST, &retry_path("acme", "f-sync"), Some(&key)).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["failure"]["retries"], 2);
    assert_ne!(again["task_name"], task_name.as_str());
    let deliveries = receiver.wait_for(3).await;
    assert_eq!(deliveries.len(), 3);

    // The listing shows the counts.
    let (_, listed) = call(&t, Method::GET, &list_path("acme"), Some(&key)).await;
    let retries: Vec<(String, u64)> = listed["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["retries"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        retries,
        [("f-events".to_owned(), 1), ("f-sync".to_owned(), 2)]
    );
}

#[tokio::test]
async fn retry_enqueues_the_recorded_task_and_counts_it_on_memory() {
    retry_enqueues_the_recorded_task_and_counts_it(StoreKind::Memory).await;
}

#[tokio::test]
async fn retry_enqueues_the_recorded_task_and_counts_it_on_firestore() {
    retry_enqueues_the_recorded_task_and_counts_it(StoreKind::Firestore).await;
}

#[tokio::test]
async fn unknown_and_other_tenants_records_are_404() {
    let (t, receiver) = spawn(StoreKind::Memory).await;
    let key = installed(&t, "acme").await;
    t.register("other").await;
    record(&t, &[sync_failure("theirs", "other", "p-1", now())]).await;
    for id in ["theirs", "missing"] {
        for bearer in [key.as_str(), t.operator_token.as_str()] {
            let (status, body) =
                call(&t, Method::POST, &retry_path("acme", id), Some(bearer)).await;
            assert_eq!(status, 404, "{id}: {body}");
            assert_eq!(body["error"]["code"], "not_found");
        }
    }
    let theirs = t
        .app
        .store
        .failure(&tenant("other"), "theirs")
        .await
        .unwrap();
    assert_eq!(theirs.map(|f| f.retries), Some(0));
    assert!(receiver.deliveries().is_empty());
}

#[tokio::test]
async fn retry_needs_an_installed_tenant() {
    let (t, receiver) = spawn(StoreKind::Memory).await;
    let key = t.register("acme").await.admin_key;
    record(&t, &[sync_failure("f-1", "acme", "p-1", now())]).await;
    let path = retry_path("acme", "f-1");

    let (status, body) = call(&t, Method::POST, &path, Some(&key)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_installed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("never installed"), "{message}");

    for status_now in [InstallStatus::Failed, InstallStatus::Uninstalled] {
        t.seed_tokens("acme", status_now).await;
        let (status, body) = call(&t, Method::POST, &path, Some(&key)).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "not_installed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(status_now.as_str()), "{message}");
    }
    let stored = t.app.store.failure(&tenant("acme"), "f-1").await.unwrap();
    assert_eq!(stored.map(|f| f.retries), Some(0));
    assert!(receiver.deliveries().is_empty());
}

/// A queue that holds every enqueue until `barrier` is full, then delegates, keeping what the
/// queue answered.
struct GatedQueue {
    inner: Arc<dyn Queue>,
    barrier: Barrier,
    answers: Mutex<Vec<Enqueued>>,
}

#[async_trait]
impl Queue for GatedQueue {
    async fn enqueue(&self, task: &Task) -> Result<Enqueued, QueueError> {
        self.barrier.wait().await;
        let answer = self.inner.enqueue(task).await?;
        self.answers.lock().unwrap().push(answer);
        Ok(answer)
    }

    async fn ensure_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(), QueueError> {
        self.inner.ensure_queue(queue, settings).await
    }
}

#[tokio::test]
async fn overlapping_retries_enqueue_one_task_and_count_once() {
    let (t, receiver) = spawn(StoreKind::Memory).await;
    let key = installed(&t, "acme").await;
    record(&t, &[sync_failure("f-1", "acme", "p-1", now())]).await;
    // Both requests have read the record before either enqueues: the double click of a slow
    // network, made certain.
    let gated = Arc::new(GatedQueue {
        inner: t.app.queue.clone(),
        barrier: Barrier::new(2),
        answers: Mutex::default(),
    });
    let instance = t.instance_of(t.with_queue(gated.clone())).await;
    let path = retry_path("acme", "f-1");
    let (first, second) = tokio::join!(
        call_at(&instance.url, &t, Method::POST, &path, Some(&key)),
        call_at(&instance.url, &t, Method::POST, &path, Some(&key)),
    );
    for (status, body) in [&first, &second] {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["failure"]["retries"], 1, "{body}");
    }
    assert_eq!(first.1["task_name"], second.1["task_name"]);
    let mut answers = gated.answers.lock().unwrap().clone();
    answers.sort_by_key(|answer| *answer == Enqueued::AlreadyExists);
    assert_eq!(answers, [Enqueued::Created, Enqueued::AlreadyExists]);
    let stored = t.app.store.failure(&tenant("acme"), "f-1").await.unwrap();
    assert_eq!(stored.map(|f| f.retries), Some(1));
    tokio::time::timeout(PATIENCE, t.queue.idle())
        .await
        .expect("the queue goes idle");
    assert_eq!(t.queue.stats().delivered, 1, "one task ran");
    assert_eq!(receiver.deliveries().len(), 1);
}

#[tokio::test]
async fn a_queue_outage_is_a_503_and_counts_nothing() {
    let (t, receiver) = spawn(StoreKind::Memory).await;
    let key = installed(&t, "acme").await;
    record(&t, &[sync_failure("f-1", "acme", "p-1", now())]).await;
    let down = t.instance_of(t.with_queue(Arc::new(DownQueue))).await;
    let path = retry_path("acme", "f-1");
    let (status, body) = call_at(&down.url, &t, Method::POST, &path, Some(&key)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let stored = t.app.store.failure(&tenant("acme"), "f-1").await.unwrap();
    assert_eq!(stored.map(|f| (f.retries, f.retried_at)), Some((0, None)));

    // Once the queue is back, the same call replays.
    let (status, body) = call(&t, Method::POST, &path, Some(&key)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["failure"]["retries"], 1);
    assert_eq!(receiver.wait_for(1).await.len(), 1);
}
