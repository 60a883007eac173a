//! The system under test of the soak: the simulators (a Klaviyo account per tenant, behind one
//! URL: [`KlaviyoAccounts`]; one Omneo), the front functions (oauth-callback and the two
//! receivers) on one socket, and each worker (`inbound-task`, `outbound-task`) as an
//! instance of its own that can be killed and started again.
//!
//! **Instances.** A worker instance is a tokio runtime of its own holding everything the
//! instance made: its [`App`] (HTTP pool, Klaviyo token cache; on Firestore its own connection),
//! its listener and every request it is serving. [`Worker::kill`] shuts that runtime down
//! without waiting: every request in flight stops wherever it was, mid-call to Klaviyo, Omneo or
//! the store, and the socket closes — what the rest of the system sees of a Cloud Run instance
//! killed by its host. The instance is in-process because the queue is: the local queue (the
//! Cloud Tasks look-alike, with its backoffs, pause and task names) lives in the soak's process
//! and delivers on its own runtime, so tasks outlive the instance that enqueued them, as Cloud
//! Tasks' do. A worker run as an OS process would have to bring a queue of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use shared::app::App;
use shared::config::Config;
use shared::crypto::{new_keyring_spec, random_secret};
use shared::domain::TenantId;
use shared::functions;
use shared::install::link;
use shared::install::registration::{self, Registration};
use shared::queue::{Direction, LocalQueue, Queue, TenantQueues};
use shared::runtime::http;
use shared::store::{Store, TenantSecret};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::StoreChoice;
use super::accounts::KlaviyoAccounts;
use crate::klaviyo::KlaviyoSim;
use crate::local_stack::{activate_omneo_webhooks, approve_install_link, loopback};
use crate::omneo::{OmneoSim, OmneoSimOptions, TenantSpec};

/// How much faster than Cloud Tasks' the local queue backs off (5 s → 300 s becomes
/// 0.5 s → 30 s): the attempt limits are the real ones, the run takes minutes, not hours.
pub const BACKOFF_SCALE: f64 = 0.1;
/// The soak tenants' coalescing window for Omneo profile changes, in seconds.
const COALESCE_SECONDS: u64 = 1;
/// The Klaviyo OAuth client id of the soak's app.
const CLIENT_ID: &str = "omneo-soak";
/// How long a killed instance's port may stay taken before a restart gives up.
const REBIND_PATIENCE: Duration = Duration::from_secs(10);

/// One registered, installed tenant.
pub struct SoakTenant {
    /// Its id (also its name at the Omneo simulator).
    pub id: TenantId,
    /// Its admin key.
    pub admin_key: SecretString,
    /// Its `webhook_secret` (Flow webhooks send it as `x-omneo-secret`).
    pub webhook_secret: SecretString,
}

/// Everything the soak runs against; see the module docs.
pub struct System {
    /// The simulated Klaviyo: an account per tenant.
    pub klaviyo: KlaviyoAccounts,
    /// The simulated Omneo (one tenant each).
    pub omneo: OmneoSim,
    /// The front's app: the admin API, and the state the oracle reads.
    pub app: Arc<App>,
    /// The queue every instance enqueues on.
    pub queue: LocalQueue,
    /// The front's base URL (oauth-callback, klaviyo-webhook, omneo-webhook).
    pub url: String,
    /// The tenants, installed, their Omneo webhooks on.
    pub tenants: Vec<SoakTenant>,
    /// `inbound-task`.
    pub inbound: Mutex<Worker>,
    /// `outbound-task`.
    pub outbound: Mutex<Worker>,
    front: JoinHandle<std::io::Result<()>>,
}

impl Drop for System {
    fn drop(&mut self) {
        self.front.abort();
    }
}

impl System {
    /// Starts the simulators, the front and both workers over `store`, then registers and
    /// installs `tenants` tenants (`soak-1`, `soak-2`…) as their customers would.
    pub async fn start(store: StoreChoice, tenants: usize) -> anyhow::Result<Self> {
        let front_listener = TcpListener::bind(loopback(0)).await?;
        let url = format!("http://{}", front_listener.local_addr()?);
        let inbound_addr = reserve_port()?;
        let outbound_addr = reserve_port()?;

        let client_secret = random_secret(24);
        let klaviyo =
            KlaviyoAccounts::start(tenants, CLIENT_ID, client_secret.expose_secret()).await?;
        let omneo = OmneoSim::start(OmneoSimOptions::default()).await?;
        let api = klaviyo.url();
        let mut vars: HashMap<&'static str, String> = HashMap::from([
            ("KLAVIYO_AUTH_URL", format!("{api}/oauth/authorize")),
            ("KLAVIYO_TOKEN_URL", format!("{api}/oauth/token")),
            ("KLAVIYO_REVOKE_URL", format!("{api}/oauth/revoke")),
            ("KLAVIYO_API_URL", api.to_owned()),
            ("KLAVIYO_CLIENT_ID", CLIENT_ID.to_owned()),
            (
                "KLAVIYO_CLIENT_SECRET",
                client_secret.expose_secret().to_owned(),
            ),
            ("OMNEO_API_URL_TEMPLATE", omneo.api_url_template()),
        ]);
        vars.extend([
            ("PUBLIC_URL", url.clone()),
            ("INBOUND_TASK_URL", format!("http://{inbound_addr}")),
            ("OUTBOUND_TASK_URL", format!("http://{outbound_addr}")),
            ("QUEUE", "local".to_owned()),
            (
                "ENCRYPTION_KEY",
                new_keyring_spec("soak").expose_secret().to_owned(),
            ),
            (
                "OPERATOR_TOKEN",
                random_secret(24).expose_secret().to_owned(),
            ),
        ]);
        match store {
            StoreChoice::Memory => {
                vars.insert("STORE", "memory".to_owned());
            }
            StoreChoice::Firestore => {
                vars.insert("STORE", "firestore".to_owned());
                vars.insert(
                    "GOOGLE_CLOUD_PROJECT",
                    crate::emulators::firestore::unique_project_id(),
                );
                vars.insert(
                    "FIRESTORE_EMULATOR_HOST",
                    crate::emulators::firestore::emulator_host(),
                );
            }
        }
        let config = Config::from_env(&|name: &str| vars.get(name).cloned())?;
        let queue = LocalQueue::new(
            shared::app::task_targets(&config),
            shared::app::http_client()?,
        )
        .with_backoff_scale(BACKOFF_SCALE);
        let shared_queue: Arc<dyn Queue> = Arc::new(queue.clone());
        let app = App::from_config_with_queue(config.clone(), Some(shared_queue.clone())).await?;
        // Memory: one store for every instance (it is the process's memory); Firestore: each
        // instance connects on its own, as separate processes would.
        let shared_store = matches!(store, StoreChoice::Memory).then(|| app.store.clone());
        let worker = |direction, addr| Worker {
            direction,
            addr,
            config: config.clone(),
            store: shared_store.clone(),
            queue: shared_queue.clone(),
            runtime: None,
        };
        let mut inbound = worker(Direction::Inbound, inbound_addr);
        let mut outbound = worker(Direction::Outbound, outbound_addr);
        inbound.start().await?;
        outbound.start().await?;

        let routes = axum::Router::new()
            .merge(functions::oauth_callback::router(app.clone()))
            .merge(functions::klaviyo_webhook::router(app.clone()))
            .merge(functions::omneo_webhook::router(app.clone()));
        let front = tokio::spawn(http::serve(
            front_listener,
            http::wrap("soak-front", routes),
            std::future::pending(),
            http::DRAIN_TIMEOUT,
        ));

        let mut system = Self {
            klaviyo,
            omneo,
            app,
            queue,
            url,
            tenants: Vec::new(),
            inbound: Mutex::new(inbound),
            outbound: Mutex::new(outbound),
            front,
        };
        for index in 0..tenants {
            let tenant = system.install(index).await?;
            system.tenants.push(tenant);
        }
        Ok(system)
    }

    /// The Klaviyo account of tenant `index`.
    pub fn klaviyo_of(&self, index: usize) -> &KlaviyoSim {
        &self.klaviyo.sims[index]
    }

    /// Registers tenant `index` (`soak-{index + 1}`, and its Omneo tenant) with a short
    /// coalescing window, installs it into its Klaviyo account through its install link and the
    /// simulated consent page, and turns its Omneo webhooks on.
    async fn install(&self, index: usize) -> anyhow::Result<SoakTenant> {
        let name = format!("soak-{}", index + 1);
        let name = name.as_str();
        let id = TenantId::parse(name)?;
        let omneo_token = random_secret(24);
        let signing_secret = random_secret(24);
        self.omneo.add_tenant(TenantSpec::new(
            name,
            omneo_token.expose_secret(),
            &shared::settings::Settings::default().namespace,
            signing_secret.expose_secret(),
        ));
        let registered = registration::register(
            &self.app,
            &id,
            Registration {
                omneo_api_token: Some(omneo_token),
                omneo_signing_secret: Some(signing_secret),
                settings: Some(serde_json::json!({"coalesce_seconds": COALESCE_SECONDS})),
                ..Registration::default()
            },
        )
        .await?;
        let admin_key = registered
            .admin_key
            .context("a new tenant always gets an admin key")?;
        let issued = link::issue(&self.app.config.keyring, &id, jiff::Timestamp::now());
        let install_link = issued.url(&self.app.config.urls.oauth_callback, &id);
        self.klaviyo.authorizing(index);
        approve_install_link(self.klaviyo_of(index), install_link.as_str())
            .await
            .with_context(|| format!("installing {name}"))?;
        activate_omneo_webhooks(&self.app, &id).await?;
        let record = self
            .app
            .store
            .tenant(&id)
            .await?
            .context("a registered tenant")?;
        let webhook_secret = record.open(&self.app.config.keyring, TenantSecret::WebhookSecret)?;
        Ok(SoakTenant {
            id,
            admin_key,
            webhook_secret,
        })
    }

    /// Pauses (`true`) or resumes every tenant queue of both directions, as an operator pausing
    /// the Cloud Tasks queues would.
    pub async fn hold_queues(&self, paused: bool) -> anyhow::Result<()> {
        for tenant in &self.tenants {
            let record = self
                .app
                .store
                .tenant(&tenant.id)
                .await?
                .context("a registered tenant")?;
            let queues = TenantQueues::of(&tenant.id, &record.settings)?;
            for queue in [&queues.inbound, &queues.outbound] {
                if paused {
                    self.queue.pause(queue)?;
                } else {
                    self.queue.resume(queue)?;
                }
            }
        }
        Ok(())
    }
}

/// A free loopback port, for an instance that binds it later.
fn reserve_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(loopback(0))?;
    Ok(listener.local_addr()?)
}

/// One worker function: its address, and its running instance (see the module docs).
pub struct Worker {
    direction: Direction,
    addr: SocketAddr,
    config: Config,
    /// The store every instance shares (memory); `None`: each instance connects (Firestore).
    store: Option<Arc<dyn Store>>,
    queue: Arc<dyn Queue>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Worker {
    /// Starts an instance: a runtime of its own, an [`App`] built in it, serving the worker's
    /// routes on its address. Returns once it listens.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.runtime.is_none(), "the instance is already running");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{}-task", self.direction.as_str()))
            .enable_all()
            .build()?;
        let listener = bind_again(self.addr).await?;
        let (config, store, queue, direction) = (
            self.config.clone(),
            self.store.clone(),
            self.queue.clone(),
            self.direction,
        );
        let (ready, started) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let app = match instance_app(config, store, queue).await {
                Ok(app) => app,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let (name, routes) = match direction {
                Direction::Inbound => ("inbound-task", functions::inbound_task::router(app)),
                Direction::Outbound => ("outbound-task", functions::outbound_task::router(app)),
            };
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = ready.send(Err(error.into()));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let _ = http::serve(
                listener,
                http::wrap(name, routes),
                std::future::pending(),
                http::DRAIN_TIMEOUT,
            )
            .await;
        });
        self.runtime = Some(runtime);
        started
            .await
            .context("the instance stopped while starting")?
    }

    /// Kills the instance: its runtime stops at once, every request it was serving with it.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An instance's app: the shared store (memory) or a connection of its own (Firestore).
async fn instance_app(
    config: Config,
    store: Option<Arc<dyn Store>>,
    queue: Arc<dyn Queue>,
) -> anyhow::Result<Arc<App>> {
    match store {
        Some(store) => Ok(App::new(config, store, queue, shared::app::http_client()?)),
        None => App::from_config_with_queue(config, Some(queue)).await,
    }
}

/// Binds `addr` again, waiting while a killed instance's socket is still being closed.
async fn bind_again(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + REBIND_PATIENCE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => {
                listener.set_nonblocking(true)?;
                return Ok(listener);
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(error).with_context(|| format!("binding {addr} again"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
