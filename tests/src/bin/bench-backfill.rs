//! `make bench`: a whole-tenant backfill through Klaviyo's bulk jobs beside the per-profile path,
//! on the local stack, the simulated Klaviyo enforcing its real per-endpoint limits (time not
//! scaled: tier L 75/s and 750/min for profile import, search and subscriptions, tier M 10/s and
//! 150/min for the bulk import jobs).
//!
//! 1. **The per-profile ceiling, measured**: [`LIVE_PROFILES`] customers are created in Omneo with
//!    the demo tenant's webhooks on; each becomes a live sync and one `profile-import` call.
//!    Reported: the profiles synced in the first 60 s of imports.
//! 2. **The backfill**: [`PROFILES`] more customers are seeded straight into Omneo (no webhook: they
//!    existed before the install) and `POST /demo/api/v1/backfill` runs. Reported: profiles per
//!    minute from the start to the run's end, beside the per-profile figure; profiles lost (an
//!    included profile not in Klaviyo) and imported twice (named by two import jobs); the peak
//!    RSS of this process — which also holds both simulators and every profile on each side, so
//!    it bounds the extension's from above.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::klaviyo::{KlaviyoSim, RateLimits};
use harness::local_stack::{DEMO_TENANT, LocalStack};
use harness::omneo::NewProfile;
use serde_json::Value;

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
    let stack = LocalStack::start_installed().await?;
    let klaviyo = stack.klaviyo.as_ref().context("the Klaviyo simulator")?;
    let omneo = stack.omneo.as_ref().context("the Omneo simulator")?;
    klaviyo.set_rate_limits(RateLimits::default());
    let http = reqwest::Client::new();
    let api = format!("{}/{DEMO_TENANT}/api/v1", stack.url);
    let operator = stack.app.config.operator_token.clone();
    let bearer = secrecy::ExposeSecret::expose_secret(&operator).to_owned();
    // No scheduled reconciliation run competes with the measured one.
    let settings = http
        .patch(format!("{api}/settings"))
        .bearer_auth(&bearer)
        .json(&serde_json::json!({"reconcile_interval_minutes": 0}))
        .send()
        .await?;
    if !settings.status().is_success() {
        bail!(
            "reconciliation could not be turned off: {}",
            settings.text().await?
        );
    }

    let per_profile = per_profile_ceiling(klaviyo, omneo).await?;

    let seeded = omneo.insert_profiles(
        DEMO_TENANT,
        (0..PROFILES)
            .map(|n| NewProfile::demo(100_000 + n))
            .collect(),
    )?;
    let url = format!("{api}/backfill");
    let started = Instant::now();
    let answer = http
        .post(&url)
        .bearer_auth(&bearer)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    if answer.status() != 202 {
        bail!("the backfill did not start: {}", answer.text().await?);
    }
    let run = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let run: Value = http
            .get(&url)
            .bearer_auth(&bearer)
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
    println!(
        "| peak RSS of the bench process (extension + both simulators) | {:.0} MiB | < 256 MiB (extension) |",
        peak_rss_mib()?
    );
    Ok(())
}

/// Creates [`LIVE_PROFILES`] customers with webhooks on and counts the live syncs' imports in
/// the first 60 s after the first one.
async fn per_profile_ceiling(
    klaviyo: &KlaviyoSim,
    omneo: &harness::omneo::OmneoSim,
) -> anyhow::Result<usize> {
    let verdicts_before = klaviyo.rate_verdicts().len();
    for n in 0..LIVE_PROFILES {
        omneo.seed_profile(DEMO_TENANT, NewProfile::demo(10_000 + n))?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let imports: Vec<Instant> = klaviyo.rate_verdicts()[verdicts_before..]
            .iter()
            .filter(|v| v.endpoint == IMPORT && !v.throttled)
            .map(|v| v.at)
            .collect();
        // Every live sync done (so none competes with the backfill), and a minute measured.
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

/// This process's peak resident set (`VmHWM`), in MiB.
fn peak_rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("a VmHWM value")?
        .parse()?;
    Ok(kib / 1024.0)
}
