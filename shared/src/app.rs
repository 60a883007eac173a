//! The state every handler receives: configuration plus the store and queue backends it selects.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::access::TokenProvider;
use crate::config::{Config, QueueConfig, StoreConfig};
use crate::crypto::CryptoError;
use crate::klaviyo::KlaviyoClient;
use crate::klaviyo::oauth::KlaviyoOAuth;
use crate::omneo::{InsecureUrl, OmneoClient, check_base_url};
use crate::queue::{CloudTasksQueue, LocalQueue, Queue, TaskTargets};
use crate::remote::RetryPolicy;
use crate::store::{FirestoreStore, MemoryStore, Store, Tenant, TenantSecret};

/// Why an Omneo client for a tenant could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OmneoAccessError {
    /// The tenant's API token cannot be opened.
    #[error("cannot open the tenant's Omneo API token")]
    Token(#[source] CryptoError),
    /// The tenant's Omneo API URL is not a URL.
    #[error("the tenant's Omneo API URL is not a URL")]
    Url(#[source] url::ParseError),
    /// The tenant's Omneo API URL breaks the outbound HTTP policy.
    #[error("the tenant's Omneo API URL is refused")]
    Insecure(#[source] InsecureUrl),
}

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
            &config.klaviyo.revision,
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
    pub fn omneo(&self, tenant: &Tenant) -> Result<OmneoClient, OmneoAccessError> {
        let token = tenant
            .open(&self.config.keyring, TenantSecret::OmneoApiToken)
            .map_err(OmneoAccessError::Token)?;
        let base = url::Url::parse(&tenant.omneo_api_url).map_err(OmneoAccessError::Url)?;
        check_base_url(&base).map_err(OmneoAccessError::Insecure)?;
        Ok(OmneoClient::new(
            self.http.clone(),
            base,
            token,
            RetryPolicy::default(),
        ))
    }

    /// Builds the backends the configuration names: memory or Firestore, local queue or Cloud Tasks.
    pub async fn from_config(config: Config) -> anyhow::Result<Arc<Self>> {
        Self::from_config_with_queue(config, None).await
    }

    /// Like [`App::from_config`], but with `queue` instead of the configured one when given (tests
    /// keep a handle on their [`LocalQueue`] to wait for it).
    pub async fn from_config_with_queue(
        config: Config,
        queue: Option<Arc<dyn Queue>>,
    ) -> anyhow::Result<Arc<Self>> {
        let http = http_client()?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Memory => Arc::new(MemoryStore::new(config.keyring.clone())),
            StoreConfig::Firestore {
                project,
                emulator_host,
            } => Arc::new(
                FirestoreStore::connect(project, emulator_host.as_deref(), config.keyring.clone())
                    .await
                    .context("cannot connect to Firestore")?,
            ),
        };
        let targets = task_targets(&config);
        let queue: Arc<dyn Queue> = match (queue, &config.queue) {
            (Some(queue), _) => queue,
            (None, queue_config) => match queue_config {
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
            },
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

/// The process-wide HTTP client of the outbound HTTP policy: bounded connect time, rustls, and no
/// redirects (a 3xx from Klaviyo or Omneo is an answer, never a reason to send the bearer token
/// elsewhere). Answer sizes are capped where bodies are read ([`crate::remote::read_capped`]), and
/// an Omneo base URL must be https unless it is a loopback address ([`check_base_url`]).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!(
            "omneo-klaviyo-extension/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .context("cannot build the HTTP client")
}
