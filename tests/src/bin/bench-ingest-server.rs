//! The server of `make bench`'s ingest benchmark (`bench-ingest` starts it pinned to one core):
//! one function's router — `omneo-webhook`, or `klaviyo-webhook` when `$BENCH_FUNCTION` says so —
//! beside an empty `POST /baseline` handler, in one process, behind the runtime layer production
//! serves every function with (`/health`, request spans and their log lines, the body limit,
//! graceful shutdown).
//!
//! By default the app runs on the memory store and the local queue. With `$BENCH_BACKEND=emulators`
//! (`make load`'s `bench-load`) it runs on the Firestore emulator (`$FIRESTORE_EMULATOR_HOST`,
//! project `$BENCH_PROJECT`) and the Cloud Tasks emulator (`$CLOUD_TASKS_EMULATOR_HOST`), whose
//! queues are not paused: they push every task to `$BENCH_TASK_TARGET`. Either way one tenant is
//! registered and installed:
//! `$BENCH_TENANT`, whose Omneo signing secret is `$BENCH_OMNEO_SIGNING_SECRET` and whose shared
//! `webhook_secret` (the key of Klaviyo's system-webhook signatures) is
//! `$BENCH_KLAVIYO_WEBHOOK_SECRET`. Its install record holds what provisioning would have stored:
//! the Klaviyo account `$BENCH_KLAVIYO_ACCOUNT_ID` and the system webhook
//! `$BENCH_KLAVIYO_WEBHOOK_ID`. Its two queues are ensured with their production settings and
//! paused, so the accepted tasks are held rather than dispatched and dispatching does not compete
//! with the receiver for the core. It listens on `127.0.0.1:$PORT` until SIGTERM, then prints the
//! queue's counters on stderr as `pending=… attempts=…`. Logs go to stdout as in production
//! (`RUST_LOG`, default `info`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::post;
use secrecy::{ExposeSecret, SecretString};
use shared::app::{App, http_client, task_targets};
use shared::config::{Config, QueueConfig};
use shared::crypto::{new_keyring_spec, random_secret};
use shared::domain::TenantId;
use shared::install::registration::{self, Registration};
use shared::queue::{LocalQueue, QueueSettings, TenantQueues};
use shared::runtime::{serve_function, telemetry};
use shared::store::{Abort, Install, InstallStatus, MemoryStore, TenantSecret};

/// The function whose router is served (`$BENCH_FUNCTION`).
#[derive(Clone, Copy)]
enum Function {
    OmneoWebhook,
    KlaviyoWebhook,
}

impl Function {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "omneo-webhook" => Ok(Self::OmneoWebhook),
            "klaviyo-webhook" => Ok(Self::KlaviyoWebhook),
            _ => anyhow::bail!("BENCH_FUNCTION is omneo-webhook or klaviyo-webhook, not {name:?}"),
        }
    }
}

/// The tenant the deliveries are for, and its secrets and Klaviyo ids.
struct BenchTenant {
    id: TenantId,
    omneo_signing_secret: SecretString,
    webhook_secret: SecretString,
    klaviyo_account_id: String,
    klaviyo_webhook_id: String,
}

fn main() -> anyhow::Result<()> {
    let port: u16 = required("PORT")?.parse().context("PORT is not a port")?;
    let function = match std::env::var("BENCH_FUNCTION") {
        Ok(name) => Function::parse(&name)?,
        Err(_) => Function::OmneoWebhook,
    };
    let tenant = BenchTenant {
        id: TenantId::parse(required("BENCH_TENANT")?).context("BENCH_TENANT")?,
        omneo_signing_secret: SecretString::from(required("BENCH_OMNEO_SIGNING_SECRET")?),
        webhook_secret: SecretString::from(required("BENCH_KLAVIYO_WEBHOOK_SECRET")?),
        klaviyo_account_id: required("BENCH_KLAVIYO_ACCOUNT_ID")?,
        klaviyo_webhook_id: required("BENCH_KLAVIYO_WEBHOOK_ID")?,
    };
    let backend = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("emulators") => Backend::Emulators {
            project: required("BENCH_PROJECT")?,
            task_target: required("BENCH_TASK_TARGET")?,
        },
        Ok("memory") | Err(_) => Backend::Memory,
        Ok(other) => anyhow::bail!("BENCH_BACKEND is memory or emulators, not {other:?}"),
    };
    let config = config(port, &backend)?;
    telemetry::init(config.log_format, None)?;
    // The runtime production's `run_function` builds: one worker per core this process may use.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("the async runtime")?
        .block_on(serve(config, function, tenant))
}

/// Where the app keeps its state and its tasks.
enum Backend {
    /// The memory store and the local queue, paused.
    Memory,
    /// The Firestore and Cloud Tasks emulators (their hosts from the environment); tasks are
    /// pushed to `task_target`.
    Emulators {
        /// The Firestore project (one per server, so servers do not share a tenant).
        project: String,
        /// The base URL both task paths are pushed to.
        task_target: String,
    },
}

fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} must be set"))
}

/// A local configuration built the way the tests build theirs: memory store, local queue, fresh
/// keys, the app's own address as every function's URL — or, on the emulators, their store and
/// queue with the tasks pushed to the task target.
fn config(port: u16, backend: &Backend) -> anyhow::Result<Config> {
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("KLAVIYO_CLIENT_ID", "bench".to_owned()),
        ("KLAVIYO_CLIENT_SECRET", "bench-secret".to_owned()),
        ("STORE", "memory".to_owned()),
        ("QUEUE", "local".to_owned()),
        (
            "ENCRYPTION_KEY",
            new_keyring_spec("bench").expose_secret().to_owned(),
        ),
        (
            "OPERATOR_TOKEN",
            random_secret(24).expose_secret().to_owned(),
        ),
    ]);
    if let Backend::Emulators {
        project,
        task_target,
    } = backend
    {
        vars.extend([
            ("STORE", "firestore".to_owned()),
            ("GOOGLE_CLOUD_PROJECT", project.clone()),
            (
                "FIRESTORE_EMULATOR_HOST",
                required("FIRESTORE_EMULATOR_HOST")?,
            ),
            ("QUEUE", "cloud-tasks".to_owned()),
            ("CLOUD_TASKS_LOCATION", "local".to_owned()),
            (
                "CLOUD_TASKS_EMULATOR_HOST",
                required("CLOUD_TASKS_EMULATOR_HOST")?,
            ),
            ("INBOUND_TASK_URL", task_target.clone()),
            ("OUTBOUND_TASK_URL", task_target.clone()),
        ]);
    }
    Ok(Config::from_env(&|name: &str| vars.get(name).cloned())?)
}

async fn serve(config: Config, function: Function, tenant: BenchTenant) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], config.listen_addr().port()));
    let local = match config.queue {
        QueueConfig::Local => Some(LocalQueue::new(task_targets(&config), http_client()?)),
        QueueConfig::CloudTasks { .. } => None,
    };
    let app = match &local {
        Some(queue) => {
            let store = Arc::new(MemoryStore::new(config.keyring.clone()));
            App::new(config, store, Arc::new(queue.clone()), http_client()?)
        }
        None => App::from_config(config).await?,
    };
    install_tenant(&app, local.as_ref(), tenant).await?;

    let (name, routes) = match function {
        Function::OmneoWebhook => (
            "omneo-webhook",
            shared::functions::omneo_webhook::router(app),
        ),
        Function::KlaviyoWebhook => (
            "klaviyo-webhook",
            shared::functions::klaviyo_webhook::router(app),
        ),
    };
    let routes = routes.route("/baseline", post(|| async { StatusCode::ACCEPTED }));
    serve_function(name, routes, addr).await?;

    if let Some(queue) = local {
        let stats = queue.stats();
        eprintln!("pending={} attempts={}", stats.pending, stats.attempts);
    }
    Ok(())
}

/// Registers the tenant (through the same code as `PUT /{tenant}/api/v1/tenant`), gives it the
/// bench's `webhook_secret` (registration generates one), and records it installed with its
/// Klaviyo account, its system webhook and its two queues, which are ensured (and, on the local
/// queue `paused`, paused).
async fn install_tenant(
    app: &App,
    paused: Option<&LocalQueue>,
    bench: BenchTenant,
) -> anyhow::Result<()> {
    let tenant = &bench.id;
    let registration = Registration {
        omneo_api_token: Some(random_secret(24)),
        omneo_signing_secret: Some(bench.omneo_signing_secret),
        ..Registration::default()
    };
    registration::register(app, tenant, registration)
        .await
        .map_err(|error| anyhow::anyhow!("registering {tenant}: {}", error.message))?;
    let registered = app
        .store
        .tenant(tenant)
        .await?
        .context("the tenant just registered")?;
    let webhook_secret =
        TenantSecret::WebhookSecret.seal(&app.config.keyring, tenant, &bench.webhook_secret);
    app.store
        .update_tenant(tenant, &|current| {
            let mut record = current.ok_or(Abort)?;
            record.webhook_secret = webhook_secret.clone();
            Ok(record)
        })
        .await?;
    let queues = TenantQueues::of(tenant, &registered.settings)?;
    for name in queues.both() {
        let direction = name
            .direction()
            .context("tenant queue names end with their direction")?;
        app.queue
            .ensure_queue(name, &QueueSettings::for_direction(direction))
            .await?;
        if let Some(queue) = paused {
            queue.pause(name)?;
        }
    }
    let names: Vec<_> = queues.both().into_iter().cloned().collect();
    let now = jiff::Timestamp::now();
    app.store
        .update_install(tenant, &|current| {
            let mut install = current.unwrap_or_else(|| Install::pending(tenant.clone(), now));
            install.resources.queues = names.clone();
            install.resources.klaviyo_webhook_id = Some(bench.klaviyo_webhook_id.clone());
            install.klaviyo_account_id = Some(bench.klaviyo_account_id.clone());
            install.transition(InstallStatus::Installed, Some("bench".into()), now);
            Ok(install)
        })
        .await?;
    Ok(())
}
