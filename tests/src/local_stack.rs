//! The local stack behind `make dev`, and the simulator wiring it shares with the integration
//! tests' `TestApp`.
//!
//! [`start_simulators`] is the one rule both follow: a Klaviyo simulator starts only when none of
//! `KLAVIYO_AUTH_URL`, `KLAVIYO_TOKEN_URL`, `KLAVIYO_REVOKE_URL`, `KLAVIYO_API_URL` is set, an
//! Omneo simulator only when `OMNEO_API_URL_TEMPLATE` is not, and the variables it returns point
//! the app at the simulators it started.
//!
//! [`LocalStack`] is the whole system in one process: the five routers on one port, the memory
//! store, the in-process Cloud Tasks look-alike, those simulators, and a demo tenant registered
//! through the same code as `PUT /{tenant}/api/v1/tenant`. Unlike the simulators, this module uses
//! the `shared` crate: it runs the real app.
//!
//! The guide it prints is a walk-through with this run's URLs, ids and keys: install the demo
//! tenant, then (with the Omneo simulator) watch an Omneo edit reach Klaviyo in four curl commands
//! — turn the tenant's Omneo webhooks on, edit the first demo customer, see it in the simulated
//! Klaviyo, see the Klaviyo id written back to Omneo — and the way back, Klaviyo → Omneo: the
//! same customer unsubscribes on Klaviyo's side (the Klaviyo simulator's consent route), Klaviyo
//! delivers its system events, and Omneo's comms and interactions show it; then a Klaviyo Flow
//! webhook (with the demo tenant's `webhook_secret`, printed) issues a reward that Omneo lists.
//! `tests/integration/local_stack.rs` runs those commands as printed.
//!
//! Besides the five functions' routes, the stack serves `GET /openapi.json`: `docs/openapi.json`,
//! the OpenAPI 3.1 reference of every route (the guide points at it).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use shared::app::App;
use shared::config::{Config, Env};
use shared::crypto::{new_keyring_spec, random_secret};
use shared::domain::TenantId;
use shared::install::link;
use shared::install::registration::{self, Registration};
use shared::runtime::http;
use shared::settings::Settings;
use shared::store::TenantSecret;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use crate::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use crate::omneo::{OmneoSim, OmneoSimOptions, Profile, TenantSpec};

/// The demo tenant the local stack registers.
pub const DEMO_TENANT: &str = "demo";
/// How many customers the simulated Omneo starts with for the demo tenant.
pub const DEMO_PROFILES: u32 = 5;
/// The first name the guide's sync walk-through gives the first demo customer (no demo customer
/// is called that, so the edit always changes something).
const NEW_FIRST_NAME: &str = "Robin";
/// The reward definition of the guide's Flow webhook call (the demo's seeded rewards use `1`).
const FLOW_REWARD_DEFINITION: &str = "klaviyo-vip";
/// The amount of that reward.
const FLOW_REWARD_AMOUNT: u32 = 25;
/// Its `idempotency_key`: sent again, the call issues nothing more.
const FLOW_REWARD_KEY: &str = "guide-reward-1";
/// The Klaviyo OAuth client id the local stack's simulator and app share (unless
/// `KLAVIYO_CLIENT_ID` is set).
pub const DEV_CLIENT_ID: &str = "omneo-local";
/// The Klaviyo OAuth client secret the local stack's simulator and app share (unless
/// `KLAVIYO_CLIENT_SECRET` is set).
const DEV_CLIENT_SECRET: &str = "omneo-local-secret";
/// The variables that point the app at Klaviyo; setting any of them means "no Klaviyo simulator".
const KLAVIYO_URL_VARS: [&str; 4] = [
    "KLAVIYO_AUTH_URL",
    "KLAVIYO_TOKEN_URL",
    "KLAVIYO_REVOKE_URL",
    "KLAVIYO_API_URL",
];
/// The variable that points the app at Omneo; setting it means "no Omneo simulator".
const OMNEO_URL_VAR: &str = "OMNEO_API_URL_TEMPLATE";
/// Where the stack serves [`OPENAPI_DOCUMENT`].
const OPENAPI_PATH: &str = "/openapi.json";
/// `docs/openapi.json`: the OpenAPI 3.1 document of every route the five functions serve.
const OPENAPI_DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// How to start the simulators [`start_simulators`] finds needed.
pub struct SimulatorOptions {
    /// The Klaviyo simulator's behaviour. `KLAVIYO_CLIENT_ID` / `KLAVIYO_CLIENT_SECRET`, when the
    /// environment sets them, replace its client credentials, so the app and the simulator agree.
    pub klaviyo: KlaviyoSimOptions,
    /// Where the Klaviyo simulator listens (port 0: a free one).
    pub klaviyo_addr: SocketAddr,
    /// The Omneo simulator's address and tenants.
    pub omneo: OmneoSimOptions,
}

/// The simulators started for the URL groups left unset, and the variables pointing at them.
pub struct Simulators {
    /// The Klaviyo simulator, when no `KLAVIYO_*_URL` was set.
    pub klaviyo: Option<KlaviyoSim>,
    /// The Omneo simulator, when `OMNEO_API_URL_TEMPLATE` was not set.
    pub omneo: Option<OmneoSim>,
    /// The four `KLAVIYO_*_URL` variables and the client credentials the Klaviyo simulator accepts
    /// (when it runs), and `OMNEO_API_URL_TEMPLATE` (when the Omneo simulator runs).
    pub vars: HashMap<&'static str, String>,
}

/// Starts a simulator for each group of URLs `env` leaves unset (see the module docs).
pub async fn start_simulators(
    env: &dyn Env,
    options: SimulatorOptions,
) -> anyhow::Result<Simulators> {
    let mut vars = HashMap::new();
    let klaviyo = if KLAVIYO_URL_VARS.iter().all(|name| env.var(name).is_none()) {
        let mut sim_options = options.klaviyo;
        if let Some(id) = env.var("KLAVIYO_CLIENT_ID") {
            sim_options.client_id = id;
        }
        if let Some(secret) = env.var("KLAVIYO_CLIENT_SECRET") {
            sim_options.client_secret = secret;
        }
        let sim = KlaviyoSim::start_on(sim_options, options.klaviyo_addr)
            .await
            .context("starting the Klaviyo simulator")?;
        let credentials = sim.options();
        vars.extend([
            ("KLAVIYO_AUTH_URL", format!("{}/oauth/authorize", sim.url())),
            ("KLAVIYO_TOKEN_URL", format!("{}/oauth/token", sim.url())),
            ("KLAVIYO_REVOKE_URL", format!("{}/oauth/revoke", sim.url())),
            ("KLAVIYO_API_URL", sim.url().to_owned()),
            ("KLAVIYO_CLIENT_ID", credentials.client_id),
            ("KLAVIYO_CLIENT_SECRET", credentials.client_secret),
        ]);
        Some(sim)
    } else {
        None
    };
    let omneo = if env.var(OMNEO_URL_VAR).is_none() {
        let sim = OmneoSim::start(options.omneo)
            .await
            .context("starting the Omneo simulator")?;
        vars.insert(OMNEO_URL_VAR, sim.api_url_template());
        Some(sim)
    } else {
        None
    };
    Ok(Simulators {
        klaviyo,
        omneo,
        vars,
    })
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A variable source with local defaults behind it; `PORT` is the port actually bound.
struct LocalEnv<'a> {
    env: &'a dyn Env,
    port: u16,
    defaults: HashMap<&'static str, String>,
}

impl Env for LocalEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        if name == "PORT" {
            return Some(self.port.to_string());
        }
        self.env
            .var(name)
            .or_else(|| self.defaults.get(name).cloned())
    }
}

/// The running local stack: the app serving on its port, the simulators it started, and the demo
/// tenant. The server stops when this is dropped (abruptly) or through [`LocalStack::run_until`]
/// (gracefully).
pub struct LocalStack {
    /// The app's base URL for local use, `http://localhost:{port}`.
    pub url: String,
    /// The app state (configuration, store, queue…).
    pub app: Arc<App>,
    /// The Klaviyo simulator, unless a `KLAVIYO_*_URL` variable was set.
    pub klaviyo: Option<KlaviyoSim>,
    /// The Omneo simulator (serving the demo tenant), unless `OMNEO_API_URL_TEMPLATE` was set.
    pub omneo: Option<OmneoSim>,
    /// The demo tenant's admin key (generated here, shown once in the guide).
    pub admin_key: SecretString,
    /// A ready-to-open install link for the demo tenant (valid 15 minutes).
    pub install_link: Url,
    /// What `make dev` prints: where everything is, and how to install the demo tenant. It never
    /// contains a secret that came from the environment.
    pub guide: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    reconciler: JoinHandle<()>,
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.server.abort();
        self.reconciler.abort();
    }
}

/// How often the local stack's reconciliation timer sweeps (Cloud Scheduler's job in production).
pub const RECONCILE_TICK: std::time::Duration = std::time::Duration::from_secs(60);

/// The local stand-in for the Cloud Scheduler job: a sweep every [`RECONCILE_TICK`].
async fn reconcile_timer(app: Arc<App>) {
    let mut tick = tokio::time::interval(RECONCILE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = shared::reconcile::sweep(&app, jiff::Timestamp::now()).await {
            tracing::warn!(error = %error, "the reconciliation sweep failed");
        }
    }
}

impl LocalStack {
    /// Starts the stack from `env` (the process environment for `make dev`, a map in tests):
    ///
    /// - listens on `0.0.0.0:PORT` (default 8080) and starts the simulators whose URLs are unset
    ///   ([`start_simulators`]) on `PORT+1` (Klaviyo) and `PORT+2` (Omneo) — or, with `PORT=0`,
    ///   everything on free ports;
    /// - reads the configuration from `env`, with local defaults for what it leaves unset
    ///   (memory store, local queue, pretty logs, a fresh `ENCRYPTION_KEY` and `OPERATOR_TOKEN`,
    ///   and `PUBLIC_URL=http://localhost:{port}`), then calls `on_config` with it (`make dev`
    ///   installs its log subscriber there) before building the app;
    /// - registers the demo tenant, seeds its Omneo customers, and starts serving.
    pub async fn start(
        env: &dyn Env,
        on_config: impl FnOnce(&Config) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let requested: u16 = match env.var("PORT") {
            Some(raw) => raw.parse().context("invalid environment variable PORT")?,
            None => shared::config::defaults::PORT,
        };
        let (klaviyo_addr, omneo_addr) = simulator_addrs(requested)?;
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], requested)))
            .await
            .with_context(|| format!("cannot listen on port {requested}"))?;
        let port = listener.local_addr().context("the bound address")?.port();
        let url = format!("http://localhost:{port}");

        let settings = Settings::default();
        let omneo_token = random_secret(24);
        let omneo_signing_secret = random_secret(24);
        let demo = TenantSpec::new(
            DEMO_TENANT,
            omneo_token.expose_secret(),
            &settings.namespace,
            omneo_signing_secret.expose_secret(),
        );
        let simulators = start_simulators(
            env,
            SimulatorOptions {
                klaviyo: KlaviyoSimOptions {
                    client_id: DEV_CLIENT_ID.into(),
                    client_secret: DEV_CLIENT_SECRET.into(),
                    ..KlaviyoSimOptions::default()
                },
                klaviyo_addr,
                omneo: OmneoSimOptions::default().at(omneo_addr).tenant(demo),
            },
        )
        .await?;

        let mut defaults = simulators.vars;
        defaults.extend([
            ("PUBLIC_URL", url.clone()),
            ("STORE", "memory".to_owned()),
            ("QUEUE", "local".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            (
                "ENCRYPTION_KEY",
                new_keyring_spec("local").expose_secret().to_owned(),
            ),
            (
                "OPERATOR_TOKEN",
                random_secret(24).expose_secret().to_owned(),
            ),
        ]);
        let config = Config::from_env(&LocalEnv {
            env,
            port,
            defaults,
        })?;
        on_config(&config)?;
        let app = App::from_config(config).await?;

        let tenant = TenantId::parse(DEMO_TENANT)?;
        let admin_key = register_demo_tenant(&app, &tenant, omneo_token, omneo_signing_secret)
            .await
            .context("registering the demo tenant")?;
        let webhook_secret = app
            .store
            .tenant(&tenant)
            .await?
            .context("the demo tenant was just registered")?
            .open(&app.config.keyring, TenantSecret::WebhookSecret)
            .context("opening the demo tenant's webhook secret")?;
        let customers = match &simulators.omneo {
            Some(omneo) => omneo
                .seed_demo_profiles(DEMO_TENANT, DEMO_PROFILES)
                .context("seeding the demo tenant's Omneo customers")?,
            None => Vec::new(),
        };
        let issued = link::issue(&app.config.keyring, &tenant, jiff::Timestamp::now());
        let install_link = issued.url(&app.config.urls.oauth_callback, &tenant);

        let guide = Guide {
            url: &url,
            config: &app.config,
            operator_token_from_env: env.var("OPERATOR_TOKEN").is_some(),
            klaviyo: simulators.klaviyo.as_ref(),
            omneo: simulators.omneo.as_ref(),
            admin_key: &admin_key,
            webhook_secret: &webhook_secret,
            install_link: &install_link,
            expires_at: issued.expires_at,
            settings: &settings,
            customer: customers.first(),
        }
        .text();

        let (shutdown, signal) = oneshot::channel::<()>();
        let routes = shared::functions::all(app.clone()).route(
            OPENAPI_PATH,
            get(|| async { ([(CONTENT_TYPE, "application/json")], OPENAPI_DOCUMENT) }),
        );
        let router = http::wrap("local", routes);
        tracing::info!(function = "local", address = %listener.local_addr()?, "listening");
        let server = tokio::spawn(http::serve(
            listener,
            router,
            async move {
                let _ = signal.await;
            },
            http::DRAIN_TIMEOUT,
        ));
        let reconciler = tokio::spawn(reconcile_timer(app.clone()));
        Ok(Self {
            url,
            app,
            klaviyo: simulators.klaviyo,
            omneo: simulators.omneo,
            admin_key,
            install_link,
            guide,
            shutdown: Some(shutdown),
            server,
            reconciler,
        })
    }

    /// The stack on free ports with both simulators and the demo tenant installed and its Omneo
    /// webhooks on: the benchmarks' starting point.
    pub async fn start_installed() -> anyhow::Result<Self> {
        let stack = Self::start(
            &|name: &str| (name == "PORT").then(|| "0".to_owned()),
            |_| Ok(()),
        )
        .await
        .context("starting the local stack")?;
        stack.install_demo().await?;
        Ok(stack)
    }

    /// Installs the demo tenant as its customer would — follows the install link, clicks Allow at
    /// the simulated Klaviyo — and turns its Omneo webhooks on, as CX Manager's toggle does.
    async fn install_demo(&self) -> anyhow::Result<()> {
        let klaviyo = self.klaviyo.as_ref().context("the Klaviyo simulator")?;
        approve_install_link(klaviyo, self.install_link.as_str()).await?;
        activate_omneo_webhooks(&self.app, &TenantId::parse(DEMO_TENANT)?).await
    }

    /// Serves until `signal` completes, then stops accepting connections and drains in-flight
    /// requests (for at most [`http::DRAIN_TIMEOUT`]). An error when the server fails first.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            ended = &mut self.server => {
                ended.context("the server task")?.context("the server failed")?;
                anyhow::bail!("the server stopped on its own");
            }
            () = signal => {}
        }
        self.reconciler.abort();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.server)
            .await
            .context("the server task")?
            .context("the server failed")?;
        tracing::info!(function = "local", "stopped");
        Ok(())
    }
}

/// The simulators' addresses: `PORT+1` and `PORT+2`, or free ports when `PORT` is 0.
fn simulator_addrs(port: u16) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    if port == 0 {
        return Ok((loopback(0), loopback(0)));
    }
    match (port.checked_add(1), port.checked_add(2)) {
        (Some(klaviyo), Some(omneo)) => Ok((loopback(klaviyo), loopback(omneo))),
        _ => anyhow::bail!("PORT {port} leaves no room for the simulators on PORT+1 and PORT+2"),
    }
}

/// Turns on every Omneo webhook provisioning registered for `tenant` (inactive until then), as
/// CX Manager's toggle does.
pub async fn activate_omneo_webhooks(app: &App, tenant: &TenantId) -> anyhow::Result<()> {
    let record = app
        .store
        .tenant(tenant)
        .await?
        .context("a registered tenant")?;
    let client = app.omneo(&record)?;
    for webhook in client.webhooks(&record.settings.namespace).await? {
        let update = shared::omneo::models::WebhookUpdate {
            is_active: Some(true),
            ..Default::default()
        };
        client.update_webhook(&webhook.id, &update).await?;
    }
    Ok(())
}

/// Follows an install link as the customer's browser does: our redirect to Klaviyo's authorize
/// page, Allow on the simulated consent page, then our callback page, which must answer 2xx.
pub async fn approve_install_link(klaviyo: &KlaviyoSim, link: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let authorize = http.get(link).send().await?;
    let authorize = authorize
        .headers()
        .get("location")
        .context("the install link redirects")?
        .to_str()?
        .to_owned();
    let callback = klaviyo.approve(&authorize).await?;
    let page = http.get(callback.as_str()).send().await?;
    anyhow::ensure!(
        page.status().is_success(),
        "the OAuth callback answered {}",
        page.status()
    );
    Ok(())
}

/// Registers the demo tenant through the same code as `PUT /{tenant}/api/v1/tenant` and returns
/// its admin key.
async fn register_demo_tenant(
    app: &App,
    tenant: &TenantId,
    omneo_token: SecretString,
    omneo_signing_secret: SecretString,
) -> anyhow::Result<SecretString> {
    let request = Registration {
        omneo_api_token: Some(omneo_token.clone()),
        omneo_signing_secret: Some(omneo_signing_secret.clone()),
        ..Registration::default()
    };
    registration::register(app, tenant, request)
        .await?
        .admin_key
        .context("a new tenant always gets an admin key")
}

/// What the guide is written from.
struct Guide<'a> {
    url: &'a str,
    config: &'a Config,
    operator_token_from_env: bool,
    klaviyo: Option<&'a KlaviyoSim>,
    omneo: Option<&'a OmneoSim>,
    admin_key: &'a SecretString,
    /// The demo tenant's `webhook_secret` (generated at registration; Flow webhooks send it).
    webhook_secret: &'a SecretString,
    install_link: &'a Url,
    expires_at: jiff::Timestamp,
    /// The demo tenant's settings (identity handle, coalescing window).
    settings: &'a Settings,
    /// The demo customer the sync walk-through edits (none without the Omneo simulator).
    customer: Option<&'a Profile>,
}

impl Guide<'_> {
    fn text(&self) -> String {
        let base = self.url;
        let admin = self.admin_key.expose_secret();
        let klaviyo = self.klaviyo.map_or_else(
            || format!("{} (configured)", self.config.klaviyo.api_url),
            |sim| {
                format!(
                    "{} (simulator: OAuth consent page, /api/*; control at /_sim/…)",
                    sim.url()
                )
            },
        );
        let omneo = self.omneo.map_or_else(
            || format!("{} (configured)", self.config.omneo_api_url_template),
            |sim| {
                format!(
                    "{}/{DEMO_TENANT} (simulator: /api/v3/*, /id/api/v1/*; control at {}/_sim/…)",
                    sim.url(),
                    sim.url()
                )
            },
        );
        // A token from the environment is never echoed: stdout ends up in whatever collects it.
        let operator = if self.operator_token_from_env {
            "from OPERATOR_TOKEN (not shown)".to_owned()
        } else {
            format!(
                "{}   (generated for this run; set OPERATOR_TOKEN to choose one)",
                self.config.operator_token.expose_secret()
            )
        };
        let mut text = format!(
            "
Omneo ⇄ Klaviyo extension — local stack
  functions    {base}  (oauth-callback, klaviyo-webhook, omneo-webhook, inbound-task, outbound-task)
  API          {base}{OPENAPI_PATH}  (OpenAPI 3.1 reference of every route: docs/openapi.json)
  Klaviyo      {klaviyo}
  Omneo        {omneo}
  demo tenant  `{DEMO_TENANT}` with {DEMO_PROFILES} Omneo customers, registered, not installed yet
  admin key    {admin}   (shown once; the store keeps only its hash)
  operator     {operator}

Install the demo tenant as CX Manager would — open this link (valid until {expires}) in a browser,
click Allow on the Klaviyo consent page, and watch provisioning finish:
  {link}
A fresh link:     curl -X POST -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install/link
Install status:   curl -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install
Settings:         curl -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/settings
Uninstall:        curl -X DELETE -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install
Queue settings:   curl -X PATCH -H 'Authorization: Bearer {admin}' -H 'content-type: application/json' \
                    -d '{{\"namespace\":\"loyalty\"}}' {base}/{DEMO_TENANT}/api/v1/settings
                  (reserved per tenant; 409 while installed — uninstall first)
Sealed secrets:   curl -H 'Authorization: Bearer <operator>' {base}/api/v1/keyring
                  (key rotation: redeploy with ENCRYPTION_KEY=new:…,old:…, then
                   curl -X POST -H 'Authorization: Bearer <operator>' {base}/api/v1/keyring/reseal —
                   docs/operations.md)
",
            expires = self.expires_at,
            link = self.install_link,
        );
        if let (Some(omneo), Some(customer)) = (self.omneo, self.customer) {
            self.write_sync(&mut text, omneo, customer);
            if let Some(email) = &customer.email {
                self.write_inbound(&mut text, omneo, customer, email);
            }
        }
        self.write_backfill(&mut text);
        let _ = write!(
            text,
            "
Watch and poke:
  curl {base}/health
"
        );
        if let Some(sim) = self.omneo {
            let _ = writeln!(
                text,
                "  curl {}/_sim/requests        # every call the extension made to the simulated Omneo",
                sim.url()
            );
        }
        if let Some(sim) = self.klaviyo {
            let _ = writeln!(
                text,
                "  curl {url}/_sim/requests        # … and to the simulated Klaviyo
  curl -X POST {url}/_sim/faults -d '{{\"path\":\"/api/profile-import\",\"status\":429,\"retry_after\":2,\"count\":3}}' -H 'content-type: application/json'",
                url = sim.url()
            );
        }
        text
    }

    /// The section "Sync Omneo → Klaviyo": four numbered steps, one curl command each (one line,
    /// so they paste as they are; the integration test runs them as printed).
    fn write_sync(&self, text: &mut String, omneo: &OmneoSim, customer: &Profile) {
        let tenant_url = format!("{}/_sim/tenants/{DEMO_TENANT}", omneo.url());
        let profile_url = format!("{tenant_url}/profiles/{}", customer.id);
        let name = [&customer.first_name, &customer.last_name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let coalesce = self.settings.coalesce_seconds;
        let handle = &self.settings.identity_handle;
        let _ = write!(
            text,
            "
Sync Omneo → Klaviyo (after installing) — with the demo customer {name}, {id}:
  1. Turn the tenant's Omneo webhooks on (the install creates them off; CX Manager has the toggle):
     curl -X POST {tenant_url}/webhooks/activate
  2. Edit the customer as CX Manager would — a new first name, SMS marketing on:
     curl -X PATCH -H 'content-type: application/json' -d '{{\"first_name\":\"{NEW_FIRST_NAME}\",\"comms\":{{\"sms_promo\":true}}}}' {profile_url}
",
            id = customer.id,
        );
        match self.klaviyo {
            Some(klaviyo) => {
                let _ = write!(
                    text,
                    "  3. After ~{coalesce} s (coalesce_seconds) the profile is in Klaviyo, its consent with custom_method_detail omneo:
     curl {}/_sim/profiles
",
                    klaviyo.url()
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "  3. After ~{coalesce} s (coalesce_seconds) the profile is in the Klaviyo account at {}.",
                    self.config.klaviyo.api_url
                );
            }
        }
        let _ = write!(
            text,
            "  4. The Klaviyo profile id is written back to Omneo as the identity `{handle}`:
     curl {profile_url}
"
        );
    }

    /// The section "Backfill and reconciliation": start a backfill of every customer through
    /// Klaviyo's bulk jobs, watch its progress, turn reconciliation to every minute and read its
    /// state in the install status. One one-line curl command per step, which the integration
    /// test runs as printed.
    fn write_backfill(&self, text: &mut String) {
        let base = self.url;
        let admin = self.admin_key.expose_secret();
        let api = format!("{base}/{DEMO_TENANT}/api/v1");
        let _ = write!(
            text,
            "
Backfill and reconciliation (once installed) — every customer through Klaviyo's bulk jobs:
  1. Start a backfill (202; {{\"since\": \"<RFC 3339>\"}} for the recently updated only, {{\"dry_run\": true}} to count):
     curl -X POST -H 'Authorization: Bearer {admin}' -H 'content-type: application/json' -d '{{}}' {api}/backfill
  2. Its progress: state, counts (read, excluded, imported, subscribed, unchanged, failed), rate, ETA, errors:
     curl -H 'Authorization: Bearer {admin}' {api}/backfill
  3. Reconcile every minute instead of every hour (this stack's timer sweeps each minute; 0 turns it off):
     curl -X PATCH -H 'Authorization: Bearer {admin}' -H 'content-type: application/json' -d '{{\"reconcile_interval_minutes\":1}}' {api}/settings
  4. Within a minute the install status shows it: \"reconciliation\" with its cursors and each direction's last result:
     curl -H 'Authorization: Bearer {admin}' {api}/install
  Cancel a running backfill: curl -X DELETE -H 'Authorization: Bearer {admin}' {api}/backfill
"
        );
    }

    /// The section "Sync Klaviyo → Omneo", after "Sync Omneo → Klaviyo" (whose customer it
    /// uses): the customer unsubscribes on Klaviyo's side and Klaviyo delivers (with the Klaviyo
    /// simulator; otherwise one line says what to do in the Klaviyo account), Omneo's comms and
    /// interactions show it, and a Flow webhook issues a reward Omneo lists. Numbered steps, one
    /// one-line curl command each, which the integration test runs as printed.
    fn write_inbound(&self, text: &mut String, omneo: &OmneoSim, customer: &Profile, email: &str) {
        let base = self.url;
        let tenant_url = format!("{}/_sim/tenants/{DEMO_TENANT}", omneo.url());
        let profile_url = format!("{tenant_url}/profiles/{}", customer.id);
        let secret = self.webhook_secret.expose_secret();
        let mut step = 0;
        let mut next = || {
            step += 1;
            step
        };
        let _ = writeln!(
            text,
            "
Sync Klaviyo → Omneo (after the sync above) — the same customer, {email}:"
        );
        match self.klaviyo {
            Some(klaviyo) => {
                let profile = format!("{}/_sim/profiles/{email}", klaviyo.url());
                let _ = write!(
                    text,
                    "  {}. Unsubscribe them from email marketing on Klaviyo's side, as on its preference page (queues a system event):
     curl -X POST -H 'content-type: application/json' -d '{{\"channel\":\"email\",\"consent\":\"UNSUBSCRIBED\",\"method\":\"PREFERENCE_PAGE\"}}' {profile}/consent
  {}. Klaviyo delivers its pending system events, signed, to the tenant's webhook (the sync's own changes come too and are ignored; 202 = enqueued):
     curl -X POST {}/_sim/deliver
",
                    next(),
                    next(),
                    klaviyo.url()
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "  {}. Unsubscribe them from email marketing in the Klaviyo account at {} (its system webhook must reach this stack: a public PUBLIC_URL).",
                    next(),
                    self.config.klaviyo.api_url
                );
            }
        }
        let _ = write!(
            text,
            "  {}. A moment later (the inbound queue) Omneo has it: comms email_promo false, email_consent_updated_at now:
     curl {profile_url}
  {}. … and one interaction recording it (action disclose, channel email, signal -1):
     curl {tenant_url}/interactions
  {}. A Klaviyo Flow webhook issues a reward (x-omneo-secret is the tenant's webhook_secret; answers 202, no body; sent again with this idempotency_key, it issues nothing more):
     curl -X POST -H 'content-type: application/json' -H 'x-omneo-secret: {secret}' -d '{{\"email\":\"{email}\",\"data\":{{\"reward_definition_id\":\"{FLOW_REWARD_DEFINITION}\",\"amount\":{FLOW_REWARD_AMOUNT}}},\"idempotency_key\":\"{FLOW_REWARD_KEY}\"}}' {base}/{DEMO_TENANT}/api/v1/webhooks/klaviyo/rewards
  {}. A moment later Omneo lists it after the demo's welcome rewards: value_initial = value_remaining = {FLOW_REWARD_AMOUNT}:
     curl {tenant_url}/rewards
",
            next(),
            next(),
            next(),
            next()
        );
    }
}
