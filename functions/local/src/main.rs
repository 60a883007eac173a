//! `local`: the whole system in one process for development (`make dev`).
//!
//! All five routers on one port (`PORT`, default 8080), the in-memory store, the in-process Cloud
//! Tasks look-alike, and simulators of Klaviyo and Omneo on the next two ports — each simulator only
//! when its URLs are not configured, so `KLAVIYO_*_URL` / `OMNEO_API_URL_TEMPLATE` point the stack
//! at a real Klaviyo test account or at someone else's fakes. A demo tenant is seeded on both sides.
//! Every variable of product.md §9 can still be set; the ones left unset get local defaults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use harness::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use harness::omneo::{OmneoSim, OmneoSimOptions, TenantSpec};
use secrecy::{ExposeSecret, SecretString};
use shared::app::App;
use shared::config::{Config, Env, ProcessEnv};
use shared::crypto::{new_keyring_spec, random_secret};
use shared::domain::TenantId;
use shared::install::link::{self, InstallLink};
use shared::install::registration::{self, Registration};
use shared::settings::Settings;

/// The demo tenant seeded on both sides.
const DEMO_TENANT: &str = "demo";
/// How many customers the simulated Omneo starts with.
const DEMO_PROFILES: u32 = 5;
/// The Klaviyo OAuth app credentials the simulator and the functions share locally.
const DEV_CLIENT_ID: &str = "omneo-local";
const DEV_CLIENT_SECRET: &str = "omneo-local-secret";
const KLAVIYO_URL_VARS: [&str; 4] = [
    "KLAVIYO_AUTH_URL",
    "KLAVIYO_TOKEN_URL",
    "KLAVIYO_REVOKE_URL",
    "KLAVIYO_API_URL",
];

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("local: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The process environment, with local defaults for whatever it leaves unset.
struct LocalEnv(HashMap<&'static str, String>);

impl Env for LocalEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).or_else(|| self.0.get(name).cloned())
    }
}

/// The simulators this run started (each `None` when configuration points elsewhere).
struct Simulators {
    klaviyo: Option<KlaviyoSim>,
    omneo: Option<OmneoSim>,
}

async fn run() -> anyhow::Result<()> {
    let port: u16 = match ProcessEnv.var("PORT") {
        Some(raw) => raw.parse().context("invalid environment variable PORT")?,
        None => 8080,
    };
    let omneo_token = random_secret(24);
    let omneo_signing_secret = random_secret(24);
    let settings = Settings::default();

    let mut defaults = HashMap::from([
        ("PORT", port.to_string()),
        ("PUBLIC_URL", format!("http://localhost:{port}")),
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
        ("KLAVIYO_CLIENT_ID", DEV_CLIENT_ID.to_owned()),
        ("KLAVIYO_CLIENT_SECRET", DEV_CLIENT_SECRET.to_owned()),
    ]);
    let simulators = start_simulators(
        port,
        &settings,
        &omneo_token,
        &omneo_signing_secret,
        &mut defaults,
    )
    .await?;
    let env = LocalEnv(defaults);
    let config = Config::from_env(&env).map_err(|e| anyhow::anyhow!("{e}"))?;
    shared::runtime::telemetry::init(config.log_format, None)?;

    let app = App::from_config(config).await?;
    let tenant = TenantId::parse(DEMO_TENANT)?;
    let admin_key = seed_demo_tenant(&app, &tenant, &omneo_token, &omneo_signing_secret).await?;
    let install_link = link::issue(&app.config.keyring, &tenant, jiff::Timestamp::now());
    if let Some(omneo) = &simulators.omneo {
        omneo.seed_demo_profiles(DEMO_TENANT, DEMO_PROFILES)?;
    }
    print_guide(&app.config, &env, &simulators, &admin_key, &install_link);
    shared::runtime::serve_app("local", app, shared::functions::all).await
}

/// Starts the simulators whose URLs are not configured and points the defaults at them.
async fn start_simulators(
    port: u16,
    settings: &Settings,
    omneo_token: &SecretString,
    omneo_signing_secret: &SecretString,
    defaults: &mut HashMap<&'static str, String>,
) -> anyhow::Result<Simulators> {
    let klaviyo = if KLAVIYO_URL_VARS
        .iter()
        .all(|name| ProcessEnv.var(name).is_none())
    {
        let options = KlaviyoSimOptions {
            client_id: ProcessEnv
                .var("KLAVIYO_CLIENT_ID")
                .unwrap_or_else(|| DEV_CLIENT_ID.into()),
            client_secret: ProcessEnv
                .var("KLAVIYO_CLIENT_SECRET")
                .unwrap_or_else(|| DEV_CLIENT_SECRET.into()),
            ..KlaviyoSimOptions::default()
        };
        let sim = KlaviyoSim::start_on(options, loopback(port.wrapping_add(1)))
            .await
            .context("Klaviyo simulator")?;
        defaults.insert("KLAVIYO_AUTH_URL", format!("{}/oauth/authorize", sim.url()));
        defaults.insert("KLAVIYO_TOKEN_URL", format!("{}/oauth/token", sim.url()));
        defaults.insert("KLAVIYO_REVOKE_URL", format!("{}/oauth/revoke", sim.url()));
        defaults.insert("KLAVIYO_API_URL", sim.url().to_owned());
        Some(sim)
    } else {
        None
    };
    let omneo = if ProcessEnv.var("OMNEO_API_URL_TEMPLATE").is_none() {
        let demo = TenantSpec::new(
            DEMO_TENANT,
            omneo_token.expose_secret(),
            &settings.namespace,
            omneo_signing_secret.expose_secret(),
        );
        let options = OmneoSimOptions::default()
            .at(loopback(port.wrapping_add(2)))
            .tenant(demo);
        let sim = OmneoSim::start(options).await.context("Omneo simulator")?;
        defaults.insert("OMNEO_API_URL_TEMPLATE", sim.api_url_template());
        Some(sim)
    } else {
        None
    };
    Ok(Simulators { klaviyo, omneo })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Registers the demo tenant through the same code as `PUT /{tenant}/api/v1/tenant` and returns
/// its admin key (shown once, like registration does).
async fn seed_demo_tenant(
    app: &Arc<App>,
    tenant: &TenantId,
    omneo_token: &SecretString,
    omneo_signing_secret: &SecretString,
) -> anyhow::Result<SecretString> {
    let request = Registration {
        omneo_api_token: Some(omneo_token.expose_secret().to_owned()),
        omneo_signing_secret: Some(omneo_signing_secret.expose_secret().to_owned()),
        ..Registration::default()
    };
    let registered = registration::register(app, tenant, request)
        .await
        .map_err(|e| anyhow::anyhow!("seeding the demo tenant: {e}"))?;
    registered
        .admin_key
        .context("a new tenant always gets an admin key")
}

fn print_guide(
    config: &Config,
    env: &LocalEnv,
    simulators: &Simulators,
    admin_key: &SecretString,
    install_link: &InstallLink,
) {
    let base = format!("http://localhost:{}", config.port);
    let operator = env.var("OPERATOR_TOKEN").unwrap_or_default();
    let klaviyo = simulators.klaviyo.as_ref().map_or_else(
        || format!("{} (configured)", config.klaviyo.api_url),
        |sim| {
            format!(
                "{} (simulator: OAuth consent page, /api/*, /_sim/requests, /_sim/faults)",
                sim.url()
            )
        },
    );
    let omneo = simulators.omneo.as_ref().map_or_else(
        || format!("{} (configured)", config.omneo_api_url_template),
        |sim| format!("{}/{DEMO_TENANT} (simulator: /api/v3/*, /id/api/v1/*; control at {}/_sim/requests)", sim.url(), sim.url()),
    );
    println!(
        "
Omneo ⇄ Klaviyo extension — local stack
  functions    {base}  (oauth-callback, klaviyo-webhook, omneo-webhook, inbound-task, outbound-task)
  Klaviyo      {klaviyo}
  Omneo        {omneo}
  demo tenant  `{DEMO_TENANT}` with {DEMO_PROFILES} Omneo customers, registered, not installed yet
  admin key    {admin}   (shown once; the store keeps only its hash)
  operator     {operator}

Install the demo tenant as CX Manager would — open this link (valid until {expires}) in a browser,
click Allow on the simulated Klaviyo consent page, and watch provisioning finish:
  {install_url}
A fresh link:     curl -X POST -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install/link
Install status:   curl -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install
Settings:         curl -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/settings
Uninstall:        curl -X DELETE -H 'Authorization: Bearer {admin}' {base}/{DEMO_TENANT}/api/v1/install

Watch and poke the simulators:
  curl {base}/health
  curl {omneo_requests}/_sim/requests          # every call the extension made to the simulated Omneo
  curl {klaviyo_requests}/_sim/requests        # … and to the simulated Klaviyo
  curl -X POST {klaviyo_requests}/_sim/faults -d '{{\"path\":\"/api/profile-import\",\"status\":429,\"retry_after\":2,\"count\":3}}' -H 'content-type: application/json'
",
        admin = admin_key.expose_secret(),
        expires = install_link.expires_at,
        install_url = install_link.url(&config.urls.oauth_callback, &TenantId::parse(DEMO_TENANT).expect("demo tenant id")),
        omneo_requests = simulators.omneo.as_ref().map_or("<omneo>", |s| s.url()),
        klaviyo_requests = simulators.klaviyo.as_ref().map_or("<klaviyo>", |s| s.url()),
    );
}
