//! The state every handler receives: configuration plus the store and queue backends it selects.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{Config, QueueConfig, StoreConfig};
use crate::install::tokens::TokenProvider;
use crate::klaviyo::KlaviyoClient;
use crate::klaviyo::oauth::KlaviyoOAuth;
use crate::omneo::OmneoClient;
use crate::queue::{CloudTasksQueue, LocalQueue, Queue, TaskTargets};
use crate::remote::RetryPolicy;
use crate::store::{FirestoreStore, MemoryStore, Store, Tenant};

/// Shared application state, cheap to clone behind an [`Arc`].
pub struct App {
    /// The configuration read at start.
    pub config: Config,
    /// Tenant and install state.
    pub store: Arc<dyn Store>,
    /// Task queues.
    pub queue: Arc<dyn Queue>,
    /// The HTTP client for remote APIs (one connection pool per process).
    pub http: reqwest::Client,
    /// The Klaviyo OAuth app.
    pub oauth: KlaviyoOAuth,
    /// Klaviyo access tokens per tenant.
    pub tokens: TokenProvider,
    /// The Klaviyo REST client (tokens are passed per call).
    pub klaviyo: KlaviyoClient,
}

impl App {
    /// State over explicit backends (tests and the local stack choose their own).
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        http: reqwest::Client,
    ) -> Arc<Self> {
        let oauth = KlaviyoOAuth::new(&config.klaviyo, &config.redirect_uri(), http.clone());
        let tokens = TokenProvider::new(store.clone(), config.keyring.clone(), oauth.clone());
        let klaviyo = KlaviyoClient::new(
            http.clone(),
            config.klaviyo.api_url.clone(),
            config.klaviyo.revision.clone(),
            RetryPolicy::default(),
        );
        Arc::new(Self {
            config,
            store,
            queue,
            http,
            oauth,
            tokens,
            klaviyo,
        })
    }

    /// An Omneo client for the tenant (its base URL and its sealed API token).
    pub fn omneo(&self, tenant: &Tenant) -> anyhow::Result<OmneoClient> {
        let token = self
            .config
            .keyring
            .open(&tenant.omneo_api_token)
            .context("cannot open the tenant's Omneo API token")?;
        let base = url::Url::parse(&tenant.omneo_api_url).context("the tenant's Omneo API URL")?;
        Ok(OmneoClient::new(
            self.http.clone(),
            base,
            token,
            RetryPolicy::default(),
        ))
    }

    /// Builds the backends the configuration names: memory or Firestore, local queue or Cloud Tasks.
    pub async fn from_config(config: Config) -> anyhow::Result<Arc<Self>> {
        let http = http_client()?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::Firestore {
                project,
                emulator_host,
            } => Arc::new(
                FirestoreStore::connect(project, emulator_host.as_deref())
                    .await
                    .context("cannot connect to Firestore")?,
            ),
        };
        let targets = task_targets(&config);
        let queue: Arc<dyn Queue> = match &config.queue {
            QueueConfig::Local => Arc::new(LocalQueue::new(targets, http.clone())),
            QueueConfig::CloudTasks {
                project,
                location,
                emulator_host,
                invoker_service_account,
            } => Arc::new(
                CloudTasksQueue::connect(
                    project,
                    location,
                    emulator_host.as_deref(),
                    invoker_service_account.clone(),
                    targets,
                )
                .await
                .context("cannot connect to Cloud Tasks")?,
            ),
        };
        Ok(Self::new(config, store, queue, http))
    }
}

/// Where tasks are pushed: the two task functions' public URLs.
pub fn task_targets(config: &Config) -> TaskTargets {
    TaskTargets {
        inbound: config.urls.inbound_task.clone(),
        outbound: config.urls.outbound_task.clone(),
    }
}

/// The process-wide HTTP client: bounded connect time, rustls, no proxy discovery.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!(
            "omneo-klaviyo-extension/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .context("cannot build the HTTP client")
}
