//! `make bench`: a whole-tenant backfill through Klaviyo's bulk jobs beside the per-profile path.
//! The simulators run in this process, with Klaviyo's real per-endpoint limits (not time-scaled:
//! tier L 75/s and 750/min for profile import, search and subscriptions, tier M 10/s and 150/min
//! for the bulk import jobs); the extension runs as the `local` binary in a process of its own,
//! pointed at them, so its memory is measured alone.
//!
//! 1. A tenant is registered and installed through the extension's API and the simulated OAuth
//!    consent, its Omneo webhooks on.
//! 2. **The per-profile ceiling, measured**: [`LIVE_PROFILES`] customers are created in Omneo;
//!    each becomes a live sync and one `profile-import` call. Reported: the profiles synced in the
//!    first 60 s of imports (all of them are synced before the backfill starts).
//! 3. **The backfill**: [`PROFILES`] more customers are seeded straight into Omneo (no webhook:
//!    they existed before the install) and `POST /{tenant}/api/v1/backfill` runs. Reported:
//!    profiles per minute from the start to the run's end, beside the per-profile figure;
//!    profiles lost (an included profile not in Klaviyo) and imported twice (named by two import
//!    jobs); the extension process's peak RSS.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use harness::local_stack::{SimulatorOptions, approve_install_link, loopback, start_simulators};
use harness::omneo::{NewProfile, OmneoSim, OmneoSimOptions, TenantSpec};
use harness::process::peak_rss_mib;
use serde_json::{Value, json};

/// The tenant of the run.
const TENANT: &str = "bench";
/// Its Omneo API token and signing secret, as the simulated Omneo knows them.
const OMNEO_TOKEN: &str = "bench-omneo-api-token-0123456789";
const OMNEO_SIGNING_SECRET: &str = "bench-omneo-signing-secret-0123456789";
/// The extension's operator token.
const OPERATOR_TOKEN: &str = "bench-operator-token-0123456789";
/// Customers synced one at a time, to measure the per-profile path.
const LIVE_PROFILES: u32 = 1_500;
/// Customers backfilled.
const PROFILES: u32 = 100_000;
/// The endpoint that bounds the per-profile path.
const IMPORT: &str = "POST /api/profile-import";
/// Target: this many times the per-profile figure.
const TARGET_FACTOR: f64 = 20.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sims = start_simulators(
        &|_: &str| None::<String>,
        SimulatorOptions {
            klaviyo: KlaviyoSimOptions::default(),
            klaviyo_addr: loopback(0),
            omneo: OmneoSimOptions::default().tenant(TenantSpec::new(
                TENANT,
                OMNEO_TOKEN,
                "klaviyo",
                OMNEO_SIGNING_SECRET,
            )),
        },
    )
    .await?;
    let klaviyo = sims.klaviyo.context("the Klaviyo simulator")?;
    let omneo = sims.omneo.context("the Omneo simulator")?;
    let port = std::net::TcpListener::bind(loopback(0))?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let local = std::env::current_exe()?
        .parent()
        .context("the binaries' directory")?
        .join("local");
    let mut extension = tokio::process::Command::new(&local)
        .envs(sims.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PORT", port.to_string())
        .env("PUBLIC_URL", &base)
        .env("OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (cargo build --release first)", local.display()))?;
    let pid = extension.id().context("the extension's pid")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !harness::process::health_ok(port) {
        if Instant::now() > deadline {
            bail!("the extension did not answer /health");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let api = format!("{base}/{TENANT}/api/v1");
    install(&http, &api, &klaviyo, &omneo).await?;

    let per_profile = per_profile_ceiling(&klaviyo, &omneo).await?;

    let seeded = omneo.insert_profiles(
        TENANT,
        (0..PROFILES)
            .map(|n| NewProfile::demo(100_000 + n))
            .collect(),
    )?;
    let url = format!("{api}/backfill");
    let started = Instant::now();
    let answer = http
        .post(&url)
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({}))
        .send()
        .await?;
    if answer.status() != 202 {
        bail!("the backfill did not start: {}", answer.text().await?);
    }
    let run = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run: Value = http
            .get(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        if run["state"] != "running" {
            break run;
        }
        if started.elapsed() > Duration::from_secs(1_800) {
            bail!("the backfill did not end in 30 minutes: {run}");
        }
    };
    let wall = started.elapsed();
    let peak = peak_rss_mib(pid)?;
    extension.kill().await.ok();
    if run["state"] != "completed" {
        bail!("the backfill ended {}: {run}", run["state"]);
    }
    let read = run["counts"]["read"].as_u64().unwrap_or(0);
    let rate = read as f64 / wall.as_secs_f64() * 60.0;

    let mut jobs_per_profile: HashMap<String, usize> = HashMap::new();
    for job in klaviyo.bulk_jobs() {
        for id in job.profile_ids {
            *jobs_per_profile.entry(id).or_default() += 1;
        }
    }
    let twice = jobs_per_profile.values().filter(|&&n| n > 1).count();
    let by_external_id: HashMap<String, String> = klaviyo
        .profiles()
        .into_iter()
        .filter_map(|p| Some((p.external_id?, p.id)))
        .collect();
    let lost = seeded
        .iter()
        .filter(|p| {
            !p.email
                .as_deref()
                .unwrap_or_default()
                .contains("@example.com")
        })
        .filter(|p| !by_external_id.contains_key(&p.id))
        .count();

    println!("## Backfill (real Klaviyo limits, no time scaling)\n");
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| per-profile path (live sync, first 60 s of imports) | {per_profile} profiles/min | — |"
    );
    println!(
        "| backfill of {PROFILES} profiles | {read} read in {:.1} s = {rate:.0} profiles/min = {:.1}× the per-profile path | ≥ {TARGET_FACTOR}× |",
        wall.as_secs_f64(),
        rate / per_profile as f64
    );
    println!("| counts | {} | — |", run["counts"]);
    println!(
        "| bulk import jobs | {} | ≥ {} |",
        klaviyo.bulk_jobs().len(),
        PROFILES.div_ceil(10_000)
    );
    println!("| profiles lost | {lost} | 0 |");
    println!("| profiles imported twice | {twice} | 0 |");
    println!("| peak RSS of the extension process | {peak:.0} MiB | < 256 MiB |");
    Ok(())
}

/// Registers the tenant, installs it through the install link and the simulated consent page,
/// and turns its Omneo webhooks on (reconciliation off, so no scheduled run competes).
async fn install(
    http: &reqwest::Client,
    api: &str,
    klaviyo: &KlaviyoSim,
    omneo: &OmneoSim,
) -> anyhow::Result<()> {
    let registered = http
        .put(format!("{api}/tenant"))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({
            "omneo_api_token": OMNEO_TOKEN,
            "omneo_signing_secret": OMNEO_SIGNING_SECRET,
            "omneo_api_url": omneo.api_url(TENANT),
            "settings": {"reconcile_interval_minutes": 0},
        }))
        .send()
        .await?;
    if !registered.status().is_success() {
        bail!("registration failed: {}", registered.text().await?);
    }
    let link: Value = http
        .post(format!("{api}/install/link"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let link = link["url"].as_str().context("an install link")?;
    approve_install_link(klaviyo, link).await?;
    for webhook in omneo.webhooks(TENANT) {
        http.put(format!(
            "{}/api/v3/webhooks/{}",
            omneo.api_url(TENANT),
            webhook.id
        ))
        .bearer_auth(OMNEO_TOKEN)
        .json(&json!({"is_active": true}))
        .send()
        .await?
        .error_for_status()?;
    }
    Ok(())
}

/// Creates [`LIVE_PROFILES`] customers with webhooks on and counts the live syncs' imports in
/// the first 60 s after the first one, once every live sync is done.
async fn per_profile_ceiling(klaviyo: &KlaviyoSim, omneo: &OmneoSim) -> anyhow::Result<usize> {
    let verdicts_before = klaviyo.rate_verdicts().len();
    for n in 0..LIVE_PROFILES {
        omneo.seed_profile(TENANT, NewProfile::demo(10_000 + n))?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let imports: Vec<Instant> = klaviyo.rate_verdicts()[verdicts_before..]
            .iter()
            .filter(|v| v.endpoint == IMPORT && !v.throttled)
            .map(|v| v.at)
            .collect();
        if let Some(first) = imports.first()
            && first.elapsed() > Duration::from_secs(61)
            && imports.len() >= LIVE_PROFILES as usize
        {
            let window = *first + Duration::from_secs(60);
            return Ok(imports.iter().filter(|&&at| at < window).count());
        }
        if Instant::now() > deadline {
            bail!("the live syncs did not finish in five minutes");
        }
    }
}
