//! `TestApp`: the real extension on a loopback socket, wired to fresh Klaviyo and Omneo
//! simulators (through the same `start_simulators` as the local stack), with the memory store or
//! the Firestore emulator (a unique project per app). `TaskReceiver`: a task handler on a socket
//! of its own that records every push, for the queue tests and for a `TestApp` whose tasks should
//! be looked at rather than run.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use harness::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use harness::local_stack::{SimulatorOptions, loopback, start_simulators};
use harness::omneo::{OmneoSim, OmneoSimOptions, TenantSpec};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use shared::app::App;
use shared::config::Config;
use shared::crypto::{new_keyring_spec, random_secret};
use shared::queue::{
    Enqueued, LocalQueue, Queue, QueueError, QueueName, QueueSettings, Task, TaskTargets, header,
};
use shared::store::{OAuthState, TenantSecret, TokenSecret};
use shared::worker::TaskRequest;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing_subscriber::fmt::MakeWriter;
use url::Url;

/// How long any expected delivery may take on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Which store the app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `MemoryStore`.
    Memory,
    /// `FirestoreStore` on the emulator of this test run.
    Firestore,
}

/// How to start a [`TestApp`].
pub struct TestAppOptions {
    /// The store backend.
    pub store: StoreKind,
    /// The Klaviyo simulator's behaviour (rate limits off by default here; turn them on per test).
    pub klaviyo: KlaviyoSimOptions,
    /// `ENCRYPTION_KEY` (default: a fresh key with id `test`).
    pub encryption_key: Option<String>,
    /// Where the queue pushes tasks (`INBOUND_TASK_URL` and `OUTBOUND_TASK_URL`; default: the
    /// app itself), e.g. a [`TaskReceiver`]'s base URL.
    pub task_target: Option<String>,
}

impl Default for TestAppOptions {
    fn default() -> Self {
        Self {
            store: StoreKind::Memory,
            klaviyo: KlaviyoSimOptions::default().without_rate_limits(),
            encryption_key: None,
            task_target: None,
        }
    }
}

/// Another instance of the extension a [`TestApp`] started (see [`TestApp::instance_with_key`]).
pub struct Instance {
    /// Its base URL.
    pub url: String,
    /// Its state.
    pub app: Arc<App>,
    server: JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A running extension (all five routers on one port) plus its simulators.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The app state (store, queue, token provider…), for assertions and seeding.
    pub app: Arc<App>,
    /// The simulated Klaviyo.
    pub klaviyo: KlaviyoSim,
    /// The simulated Omneo.
    pub omneo: OmneoSim,
    /// The operator token the app accepts.
    pub operator_token: String,
    /// A plain HTTP client that does not follow redirects.
    pub http: reqwest::Client,
    /// The in-process queue the app posts tasks through (retries 100× faster than Cloud Tasks').
    pub queue: LocalQueue,
    /// The configuration variables the app was started with.
    vars: HashMap<&'static str, String>,
    server: JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What `register` returns.
pub struct Registered {
    /// The tenant's admin key.
    pub admin_key: String,
    /// The Omneo API token the tenant was registered with (also known to the Omneo simulator).
    pub omneo_token: String,
    /// The Omneo signing secret.
    pub omneo_signing_secret: String,
}

impl TestApp {
    /// Starts the simulators and the app.
    pub async fn spawn(options: TestAppOptions) -> Self {
        let simulators = start_simulators(
            &|_: &str| None::<String>,
            SimulatorOptions {
                klaviyo: options.klaviyo,
                klaviyo_addr: loopback(0),
                omneo: OmneoSimOptions::default(),
            },
        )
        .await
        .expect("simulators");
        let klaviyo = simulators.klaviyo.expect("no Klaviyo URL is set");
        let omneo = simulators.omneo.expect("no Omneo URL is set");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let operator_token = random_secret(24).expose_secret().to_owned();
        let mut vars = simulators.vars;
        vars.extend([
            ("PUBLIC_URL", url.clone()),
            ("QUEUE", "local".to_owned()),
            (
                "ENCRYPTION_KEY",
                options
                    .encryption_key
                    .unwrap_or_else(|| new_keyring_spec("test").expose_secret().to_owned()),
            ),
            ("OPERATOR_TOKEN", operator_token.clone()),
        ]);
        if let Some(target) = options.task_target {
            vars.insert("INBOUND_TASK_URL", target.clone());
            vars.insert("OUTBOUND_TASK_URL", target);
        }
        match options.store {
            StoreKind::Memory => {
                vars.insert("STORE", "memory".into());
            }
            StoreKind::Firestore => {
                vars.insert("STORE", "firestore".into());
                vars.insert(
                    "GOOGLE_CLOUD_PROJECT",
                    harness::emulators::firestore::unique_project_id(),
                );
                vars.insert(
                    "FIRESTORE_EMULATOR_HOST",
                    harness::emulators::firestore::emulator_host(),
                );
            }
        }
        let (app, queue, server) = serve(&vars, listener).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            url,
            app,
            klaviyo,
            omneo,
            operator_token,
            http,
            queue,
            vars,
            server,
        }
    }

    /// The tenant's stored Klaviyo tokens, opened: (access, refresh).
    pub async fn stored_tokens(&self, tenant: &str) -> (String, String) {
        let tenant = shared::domain::TenantId::parse(tenant).expect("tenant id");
        let install = self.app.store.install(&tenant).await.unwrap();
        let tokens = install.and_then(|i| i.tokens).expect("stored tokens");
        let open = |which| {
            tokens
                .open(&self.app.config.keyring, &tenant, which)
                .expect("a token of this keyring")
                .expose_secret()
                .to_owned()
        };
        (
            open(TokenSecret::AccessToken),
            open(TokenSecret::RefreshToken),
        )
    }

    /// One of the tenant's stored secrets (e.g. its `webhook_secret`), opened.
    pub async fn tenant_secret(&self, tenant: &str, which: TenantSecret) -> String {
        let tenant = shared::domain::TenantId::parse(tenant).expect("tenant id");
        let record = self.app.store.tenant(&tenant).await.unwrap();
        record
            .expect("a registered tenant")
            .open(&self.app.config.keyring, which)
            .expect("a secret of this keyring")
            .expose_secret()
            .to_owned()
    }

    /// Another instance of the extension over the same store (Firestore: the same project) and
    /// simulators, configured alike but with `ENCRYPTION_KEY` = `key` — what a redeploy with a
    /// rotated keyring starts.
    pub async fn instance_with_key(&self, key: &str) -> Instance {
        let mut vars = self.vars.clone();
        vars.insert("ENCRYPTION_KEY", key.to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (app, _, server) = serve(&vars, listener).await;
        Instance { url, app, server }
    }

    /// Another instance serving `app` (e.g. this app's store and configuration over another
    /// queue backend) on a socket of its own.
    pub async fn instance_of(&self, app: Arc<App>) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = serve_app(app.clone(), listener);
        Instance { url, app, server }
    }

    /// This app's store and configuration over another queue backend.
    pub fn with_queue(&self, queue: Arc<dyn Queue>) -> Arc<App> {
        App::new(
            self.app.config.clone(),
            self.app.store.clone(),
            queue,
            self.app.http.clone(),
        )
    }

    /// Registers `tenant` through the admin API (and on the Omneo simulator, with the same token).
    pub async fn register(&self, tenant: &str) -> Registered {
        let omneo_token = random_secret(18).expose_secret().to_owned();
        let omneo_signing_secret = random_secret(18).expose_secret().to_owned();
        self.omneo.add_tenant(TenantSpec::new(
            tenant,
            &omneo_token,
            "klaviyo",
            &omneo_signing_secret,
        ));
        let response = self
            .put_tenant(tenant, &json!({"omneo_api_token": omneo_token, "omneo_signing_secret": omneo_signing_secret}))
            .await;
        assert_eq!(response.status(), 201, "registering {tenant}");
        let body: Value = response.json().await.expect("registration body");
        let admin_key = body["admin_key"].as_str().expect("admin_key").to_owned();
        Registered {
            admin_key,
            omneo_token,
            omneo_signing_secret,
        }
    }

    /// `PUT /{tenant}/api/v1/tenant` with the operator token.
    pub async fn put_tenant(&self, tenant: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(format!("{}/{tenant}/api/v1/tenant", self.url))
            .bearer_auth(&self.operator_token)
            .json(body)
            .send()
            .await
            .expect("PUT tenant")
    }

    /// A request to `path` on the app with `bearer` (none when `None`).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.url));
        match bearer {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }
}

impl TestApp {
    /// Gives `tenant` (registered) Klaviyo tokens straight from the simulator, as if the OAuth
    /// callback had just stored them, with the install in `status` and no resources yet.
    pub async fn seed_tokens(&self, tenant: &str, status: shared::store::InstallStatus) {
        let granted = self.klaviyo.grant_tokens();
        let keyring = &self.app.config.keyring;
        let now = jiff::Timestamp::now();
        let tenant_id = shared::domain::TenantId::parse(tenant).expect("tenant id");
        let seal = |which: TokenSecret, token: &str| {
            which.seal(keyring, &tenant_id, &SecretString::from(token))
        };
        let tokens = shared::store::OAuthTokens {
            access_token: seal(TokenSecret::AccessToken, &granted.access_token),
            refresh_token: seal(TokenSecret::RefreshToken, &granted.refresh_token),
            expires_at: shared::access::tokens::expiry(
                now,
                Duration::from_secs(granted.expires_in),
            ),
            scopes: granted.scope.split(' ').map(str::to_owned).collect(),
            last_refreshed_at: None,
        };
        let account = self.klaviyo.options().account_id;
        self.app
            .store
            .update_install(&tenant_id, &|current| {
                let mut install = current
                    .unwrap_or_else(|| shared::store::Install::pending(tenant_id.clone(), now));
                install.tokens = Some(tokens.clone());
                install.klaviyo_account_id = Some(account.clone());
                install.transition(status, Some("seeded by the test".into()), now);
                Ok(install)
            })
            .await
            .expect("seeding tokens");
    }
}

/// Builds the app from `vars` (with a local queue whose retries run 100× faster) and serves all
/// five routers on `listener`.
async fn serve(
    vars: &HashMap<&'static str, String>,
    listener: TcpListener,
) -> (Arc<App>, LocalQueue, JoinHandle<()>) {
    let config =
        Config::from_env(&|name: &str| vars.get(name).cloned()).expect("test configuration");
    let queue = LocalQueue::new(
        shared::app::task_targets(&config),
        shared::app::http_client().expect("HTTP client"),
    )
    .with_backoff_scale(0.01);
    let app = App::from_config_with_queue(config, Some(Arc::new(queue.clone())))
        .await
        .expect("app");
    let server = serve_app(app.clone(), listener);
    (app, queue, server)
}

/// Serves all five routers over `app` on `listener`.
fn serve_app(app: Arc<App>, listener: TcpListener) -> JoinHandle<()> {
    let router = shared::runtime::http::wrap("test", shared::functions::all(app));
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("test server");
    })
}

/// One push a [`TaskReceiver`] got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The request path, e.g. `/tasks/outbound`.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// When it arrived (monotonic).
    pub at: Instant,
    /// When it arrived (wall clock).
    pub wall: jiff::Timestamp,
}

impl Delivery {
    /// The `X-CloudTasks-*` headers, parsed.
    pub fn task(&self) -> TaskRequest {
        TaskRequest::from_headers(&self.headers).expect("Cloud Tasks headers")
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

struct Recorder {
    log: Mutex<Vec<Delivery>>,
    /// Attempts of each task answered 503 before the receiver answers 200.
    fail_first: usize,
    /// How long each push is held before it is answered.
    hold: Duration,
    /// Pushes being held right now.
    in_flight: AtomicUsize,
    /// The most pushes ever held at once.
    max_in_flight: AtomicUsize,
}

/// A task handler on 127.0.0.1:0 (`POST /tasks/{direction}`) recording what it receives.
pub struct TaskReceiver {
    /// Its base URL.
    pub base: Url,
    recorder: Arc<Recorder>,
}

impl TaskReceiver {
    /// Starts a receiver that answers the first `fail_first` attempts of each task with 503,
    /// then 200.
    pub async fn start(fail_first: usize) -> Self {
        Self::holding(fail_first, Duration::ZERO).await
    }

    /// A receiver that holds each push for `hold` before answering, counting how many it holds.
    pub async fn holding(fail_first: usize, hold: Duration) -> Self {
        let recorder = Arc::new(Recorder {
            log: Mutex::new(Vec::new()),
            fail_first,
            hold,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/tasks/{direction}", post(record))
            .with_state(Arc::clone(&recorder));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: Url::parse(&base).unwrap(),
            recorder,
        }
    }

    /// Both directions' tasks to this receiver.
    pub fn targets(&self) -> TaskTargets {
        TaskTargets {
            inbound: self.base.clone(),
            outbound: self.base.clone(),
        }
    }

    /// Every push so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.recorder.log.lock().unwrap().clone()
    }

    /// The most pushes the receiver was holding at once.
    pub fn max_in_flight(&self) -> usize {
        self.recorder.max_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` pushes arrived; all of them.
    pub async fn wait_for(&self, count: usize) -> Vec<Delivery> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let deliveries = self.deliveries();
            if deliveries.len() >= count {
                return deliveries;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} deliveries within {PATIENCE:?}, got {}",
                deliveries.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(recorder): State<Arc<Recorder>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let held = recorder.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    recorder.max_in_flight.fetch_max(held, Ordering::SeqCst);
    let earlier = {
        let mut log = recorder.log.lock().unwrap();
        let name = headers.get(header::TASK_NAME).cloned();
        let earlier = log
            .iter()
            .filter(|d| d.headers.get(header::TASK_NAME) == name.as_ref())
            .count();
        log.push(Delivery {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
            wall: jiff::Timestamp::now(),
        });
        earlier
    };
    tokio::time::sleep(recorder.hold).await;
    recorder.in_flight.fetch_sub(1, Ordering::SeqCst);
    if earlier < recorder.fail_first {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Log output captured in memory.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, each of which must be one JSON object.
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(value.is_object(), "{line}");
                value
            })
            .collect()
    }
}

/// A queue that is down: every enqueue fails as unavailable.
pub struct DownQueue;

#[async_trait::async_trait]
impl Queue for DownQueue {
    async fn enqueue(&self, _: &Task) -> Result<Enqueued, QueueError> {
        Err(QueueError::Unavailable(anyhow::anyhow!(
            "injected: Cloud Tasks is down"
        )))
    }

    async fn ensure_queue(&self, _: &QueueName, _: &QueueSettings) -> Result<(), QueueError> {
        panic!("no test creates queues through a queue that is down")
    }
}

/// The store's id of an OAuth `state` value: its SHA-256.
pub fn hash(state: &str) -> String {
    OAuthState::hash(&SecretString::from(state))
}

/// `POST /{tenant}/api/v1/install/link` with `bearer`.
pub async fn post_link(t: &TestApp, tenant: &str, bearer: Option<&str>) -> reqwest::Response {
    t.request(
        Method::POST,
        &format!("/{tenant}/api/v1/install/link"),
        bearer,
    )
    .send()
    .await
    .unwrap()
}

/// A fresh install link URL for a registered tenant.
pub async fn link_url(t: &TestApp, tenant: &str, admin_key: &str) -> String {
    let response = post_link(t, tenant, Some(admin_key)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["url"].as_str().unwrap().to_owned()
}

/// Visits an install link and returns the authorize URL it redirects to (asserting the 302).
pub async fn authorize_url(t: &TestApp, link: &str) -> String {
    let response = t.http.get(link).send().await.unwrap();
    assert_eq!(response.status(), 302, "install link → 302");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The `state` parameter of an authorize or callback URL.
pub fn param(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
