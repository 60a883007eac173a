//! `make bench`: Omneo → Klaviyo quota efficiency and write economy, on the local stack with the
//! simulated Klaviyo enforcing its real per-endpoint rate limits.
//!
//! **Quota efficiency.** The demo tenant is installed, its Omneo webhooks enabled, and
//! [`PROFILES`] new customers are created in the simulated Omneo at once. Every one becomes a
//! webhook, a coalesced task and a sync; the profile import (`POST /api/profile-import`, tier L:
//! 750 per 60 s) is the call that bounds the rate. Time is scaled by [`SCALE`]: the simulator's
//! limits are multiplied by it and so is the outbound queue's dispatch rate and concurrency (the
//! ratio between them — what this measures — is the production one), so the run takes about
//! 2,000 / (12 × 4) ≈ 42 s instead of three minutes. Reported: the import rate achieved between
//! 10 % and 90 % of the profiles, as a share of the allowed steady rate (target ≥ 90 %); the
//! share of all Klaviyo calls answered 429 (target ≤ 1 %); profiles lost (target 0).
//!
//! **Write economy.** Klaviyo writes (imports, subscription jobs, events, records, deletions) per
//! profile change: one change, a burst of 20 changes inside one coalescing window, and a change
//! to a field nothing maps (targets 1, 1, 0).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::klaviyo::{KlaviyoSim, RateLimits};
use harness::local_stack::{DEMO_TENANT, LocalStack};
use harness::omneo::{CustomAttribute, NewProfile, OmneoSim};
use serde_json::json;
use shared::domain::TenantId;
use shared::queue::{Direction, QueueSettings};

/// New customers in the quota run.
const PROFILES: u32 = 2_000;
/// Time scale of the quota run (rate limits and queue rate alike).
const SCALE: f64 = 4.0;
/// The endpoint whose quota bounds the sync rate.
const IMPORT: &str = "POST /api/profile-import";
/// The write endpoints of the write economy.
const WRITES: [&str; 6] = [
    "/api/profile-import",
    "/api/profile-subscription-bulk-create-jobs",
    "/api/profile-subscription-bulk-delete-jobs",
    "/api/events",
    "/api/data-source-record-create-jobs",
    "/api/data-privacy-deletion-jobs",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = LocalStack::start_installed().await?;
    let klaviyo = stack.klaviyo.as_ref().context("the Klaviyo simulator")?;
    let omneo = stack.omneo.as_ref().context("the Omneo simulator")?;
    quota(&stack, klaviyo, omneo).await?;
    economy(klaviyo, omneo).await
}

async fn quota(stack: &LocalStack, klaviyo: &KlaviyoSim, omneo: &OmneoSim) -> anyhow::Result<()> {
    let tenant = TenantId::parse(DEMO_TENANT)?;
    let install = stack
        .app
        .store
        .install(&tenant)
        .await?
        .context("the install")?;
    let queue = install
        .queue(Direction::Outbound)
        .context("the outbound queue")?;
    let production = QueueSettings::for_direction(Direction::Outbound);
    let scaled = QueueSettings {
        max_dispatches_per_second: production.max_dispatches_per_second * SCALE,
        max_concurrent_dispatches: (f64::from(production.max_concurrent_dispatches) * SCALE) as u32,
        ..production.clone()
    };
    stack.app.queue.ensure_queue(queue, &scaled).await?;
    klaviyo.set_rate_limits(RateLimits {
        enabled: true,
        scale: SCALE,
    });
    let verdicts_before = klaviyo.rate_verdicts().len();
    let profiles_before = klaviyo.profiles().len();
    let started = Instant::now();
    for n in 0..PROFILES {
        omneo.seed_profile(DEMO_TENANT, NewProfile::demo(1_000 + n))?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while klaviyo.profiles().len() < profiles_before + PROFILES as usize {
        if Instant::now() > deadline {
            bail!(
                "only {} of {PROFILES} profiles arrived",
                klaviyo.profiles().len() - profiles_before
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed();
    let verdicts = &klaviyo.rate_verdicts()[verdicts_before..];
    let imports: Vec<Instant> = verdicts
        .iter()
        .filter(|v| v.endpoint == IMPORT && !v.throttled)
        .map(|v| v.at)
        .collect();
    let throttled = verdicts.iter().filter(|v| v.throttled).count();
    let (low, high) = (imports.len() / 10, imports.len() * 9 / 10);
    let span = imports[high].duration_since(imports[low]).as_secs_f64();
    let achieved = (high - low) as f64 / span;
    let allowed = shared::queue::KLAVIYO_PROFILE_IMPORT_STEADY.per_second() * SCALE;
    let lost = PROFILES as usize + profiles_before - klaviyo.profiles().len();
    println!("## Quota efficiency (time scale ×{SCALE}: limits and queue rate alike)\n");
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| profiles synced | {PROFILES} in {:.1} s | all |",
        wall.as_secs_f64()
    );
    println!(
        "| profile-import rate (10–90 %) | {achieved:.1}/s of {allowed:.1}/s allowed = {:.1} % | ≥ 90 % |",
        100.0 * achieved / allowed
    );
    println!(
        "| Klaviyo calls answered 429 | {throttled} of {} = {:.2} % | ≤ 1 % |",
        verdicts.len(),
        100.0 * throttled as f64 / verdicts.len() as f64
    );
    println!("| profiles lost | {lost} | 0 |\n");
    klaviyo.set_rate_limits(RateLimits::default());
    Ok(())
}

/// Waits until the Klaviyo profile of `email` has `first_name`.
async fn until_first_name(
    klaviyo: &KlaviyoSim,
    email: &str,
    first_name: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let profile = klaviyo.profile_by_email(email);
        if profile.and_then(|p| p.first_name).as_deref() == Some(first_name) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{email} never became {first_name}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn writes(klaviyo: &KlaviyoSim) -> usize {
    WRITES
        .iter()
        .map(|path| klaviyo.recorder().matching("POST", path).len())
        .sum()
}

/// Reads of one Klaviyo profile by id: each sync task reads its profile once.
fn reads_of(klaviyo: &KlaviyoSim, id: &str) -> usize {
    klaviyo
        .recorder()
        .matching("GET", &format!("/api/profiles/{id}"))
        .len()
}

async fn economy(klaviyo: &KlaviyoSim, omneo: &OmneoSim) -> anyhow::Result<()> {
    // Settled: the quota run's tasks are done when every profile arrived; leave the window.
    let window = Duration::from_secs(u64::from(
        shared::settings::Settings::default().coalesce_seconds,
    ));
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let profile = omneo
        .profiles(DEMO_TENANT)
        .into_iter()
        .nth(10)
        .context("a demo profile")?;
    let email = profile.email.clone().context("an email")?;
    let klaviyo_id = klaviyo.profile_by_email(&email).context("synced")?.id;

    let before = writes(klaviyo);
    omneo.edit_profile(DEMO_TENANT, &profile.id, |p| {
        p.first_name = Some("Once".into())
    })?;
    until_first_name(klaviyo, &email, "Once").await?;
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let one = writes(klaviyo) - before;

    // Start just after a window boundary, so the burst falls inside one window.
    let window_ms = window.as_millis() as i64;
    let into = jiff::Timestamp::now()
        .as_millisecond()
        .rem_euclid(window_ms);
    tokio::time::sleep(Duration::from_millis((window_ms - into + 100) as u64)).await;
    let before = writes(klaviyo);
    for n in 1..=20 {
        omneo.edit_profile(DEMO_TENANT, &profile.id, |p| {
            p.first_name = Some(format!("Burst{n}"))
        })?;
    }
    until_first_name(klaviyo, &email, "Burst20").await?;
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let burst = writes(klaviyo) - before;

    let before = writes(klaviyo);
    let reads = reads_of(klaviyo, &klaviyo_id);
    omneo.edit_profile(DEMO_TENANT, &profile.id, |p| {
        p.custom_attributes.push(CustomAttribute {
            namespace: "pos".into(),
            handle: "till".into(),
            kind: "string".into(),
            value: json!("7"),
        });
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reads_of(klaviyo, &klaviyo_id) == reads {
        if Instant::now() > deadline {
            bail!("the no-op change was never synced");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let noop = writes(klaviyo) - before;

    println!("## Write economy (Klaviyo writes per profile change)\n");
    println!("| change | writes | target |");
    println!("|---|---|---|");
    println!("| one change | {one} | 1 |");
    println!("| a burst of 20 in one window | {burst} | 1 |");
    println!("| a change nothing maps | {noop} | 0 |");
    Ok(())
}
