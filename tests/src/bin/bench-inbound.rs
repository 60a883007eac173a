//! `make bench`: Klaviyo → Omneo write economy and pace, on the local stack with the simulated
//! Klaviyo delivering signed system webhooks to `klaviyo-webhook`.
//!
//! **Write economy.** [`PROFILES`] customers are created in the simulated Omneo and synced to
//! Klaviyo. One delivery then carries [`EVENTS_PER_PROFILE`] consent events for each (50 events
//! over 10 profiles), every profile's comms changing. Counted: Omneo writes — comms updates
//! (target one per profile whose comms changed) and interactions (target one per event) — and
//! the same for the delivery sent again byte for byte and with new `external_id`s (target 0).
//!
//! **Pace.** [`PACE_BATCHES`] deliveries of 50 events (5 per profile, over 10 profiles each), back
//! to back: how many profile tasks per second the inbound queue completed, beside its configured
//! dispatch rate (the baseline: the pace the queue allows Omneo to be written at).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use harness::klaviyo::{KlaviyoSim, SystemEvent, topics};
use harness::local_stack::{DEMO_TENANT, LocalStack};
use harness::omneo::{NewProfile, OmneoSim};
use shared::queue::{Direction, QueueSettings};

/// Profiles of the write-economy delivery.
const PROFILES: u32 = 10;
/// Events per profile in a delivery.
const EVENTS_PER_PROFILE: usize = TOPICS.len();
/// The events of each profile, oldest first: every one changes email or SMS consent, bounces,
/// or (the last) changes nothing in comms.
const TOPICS: [&str; 5] = [
    topics::SUBSCRIBED_TO_LIST,
    topics::BOUNCED_EMAIL,
    topics::UNSUBSCRIBED_FROM_EMAIL,
    topics::UNSUBSCRIBED_FROM_SMS,
    topics::UNSUBSCRIBED_FROM_LIST,
];
/// Deliveries of the pace run.
const PACE_BATCHES: u32 = 40;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stack = LocalStack::start_installed().await?;
    let klaviyo = stack.klaviyo.as_ref().context("the Klaviyo simulator")?;
    let omneo = stack.omneo.as_ref().context("the Omneo simulator")?;
    economy(klaviyo, omneo).await?;
    pace(klaviyo, omneo).await
}

/// A customer synced to Klaviyo: Omneo id, Klaviyo id, email.
struct Linked {
    omneo_id: String,
    klaviyo_id: String,
    email: String,
}

/// Creates `count` customers from demo number `first` (email and SMS subscribed), waits for
/// their sync, and delivers the sync's own echoes.
async fn customers(
    klaviyo: &KlaviyoSim,
    omneo: &OmneoSim,
    first: u32,
    count: u32,
) -> anyhow::Result<Vec<Linked>> {
    let mut created = Vec::new();
    for n in first..first + count {
        let mut new = NewProfile::demo(n);
        new.comms.sms_promo = Some(true);
        created.push(omneo.seed_profile(DEMO_TENANT, new)?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut linked = Vec::new();
    for profile in created {
        let email = profile.email.clone().context("an email")?;
        let klaviyo_id = loop {
            let identity = omneo
                .identities(DEMO_TENANT, &profile.id)
                .into_iter()
                .find(|i| i.handle == "klaviyo");
            if let Some(identity) = identity {
                break identity.identifier;
            }
            if Instant::now() > deadline {
                bail!("{email} was never synced to Klaviyo");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        linked.push(Linked {
            omneo_id: profile.id,
            klaviyo_id,
            email,
        });
    }
    for delivery in klaviyo.deliver_pending().await? {
        if delivery.status != Some(202) {
            bail!("the echo delivery was answered {:?}", delivery.status);
        }
    }
    Ok(linked)
}

/// [`TOPICS`] for each profile, a second apart.
fn events(linked: &[Linked]) -> Vec<SystemEvent> {
    let now = jiff::Timestamp::now();
    let step = jiff::SignedDuration::from_secs(1);
    let mut events = Vec::new();
    for profile in linked {
        let mut at = now - step * 10;
        for topic in TOPICS {
            let mut event = SystemEvent::new(topic, &profile.klaviyo_id, Some(&profile.email));
            if topic.ends_with("_list") {
                event = event.list_id("LsT001");
            }
            events.push(event.at(at));
            at += step;
        }
    }
    events
}

/// Omneo writes so far: comms updates and interactions.
fn omneo_writes(omneo: &OmneoSim) -> (usize, usize) {
    let comms = omneo
        .recorder()
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/attributes/comms"))
        .count();
    let interactions = omneo
        .recorder()
        .matching("POST", &interactions_path())
        .len();
    (comms, interactions)
}

fn interactions_path() -> String {
    format!("/{DEMO_TENANT}/api/v3/interactions")
}

/// Waits until the simulated Omneo holds `count` interactions of the demo tenant.
async fn until_interactions(omneo: &OmneoSim, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while omneo.interactions(DEMO_TENANT).len() < count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} interactions arrived",
                omneo.interactions(DEMO_TENANT).len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Delivers `events` in one batch; the delivery (status checked).
async fn deliver(
    klaviyo: &KlaviyoSim,
    events: Vec<SystemEvent>,
) -> anyhow::Result<harness::klaviyo::Delivery> {
    let mut deliveries = klaviyo.deliver(events).await?;
    let delivery = deliveries.pop().context("a webhook")?;
    if delivery.status != Some(202) {
        bail!("the delivery was answered {:?}", delivery.status);
    }
    Ok(delivery)
}

async fn economy(klaviyo: &KlaviyoSim, omneo: &OmneoSim) -> anyhow::Result<()> {
    let linked = customers(klaviyo, omneo, 3_000, PROFILES).await?;
    let quiet = Duration::from_secs(2);
    tokio::time::sleep(quiet).await;
    let interactions_before = omneo.interactions(DEMO_TENANT).len();
    let before = omneo_writes(omneo);
    let sent = events(&linked);
    let total = sent.len();
    let delivery = deliver(klaviyo, sent.clone()).await?;
    until_interactions(omneo, interactions_before + total).await?;
    tokio::time::sleep(quiet).await;
    let first = omneo_writes(omneo);
    let changed = linked
        .iter()
        .filter(|l| {
            omneo
                .comms(DEMO_TENANT, &l.omneo_id)
                .is_some_and(|c| !c.email_subscribed() && !c.sms_subscribed())
        })
        .count();

    let status = klaviyo.redeliver(&delivery).await?;
    if status != 202 {
        bail!("the redelivery was answered {status}");
    }
    let renamed: Vec<SystemEvent> = sent
        .into_iter()
        .map(|mut e| {
            e.external_id = format!("{}-again", e.external_id);
            e
        })
        .collect();
    deliver(klaviyo, renamed).await?;
    tokio::time::sleep(quiet * 2).await;
    let again = omneo_writes(omneo);

    println!(
        "## Write economy (Omneo writes for {total} events over {PROFILES} profiles, one delivery)\n"
    );
    println!("| delivery | comms updates | interactions | target |");
    println!("|---|---|---|---|");
    println!(
        "| first ({changed} of {PROFILES} profiles' comms changed) | {} | {} | {PROFILES} and {total} |",
        first.0 - before.0,
        first.1 - before.1
    );
    println!(
        "| the same again, byte for byte, then with new external ids | {} | {} | 0 and 0 |\n",
        again.0 - first.0,
        again.1 - first.1
    );
    Ok(())
}

async fn pace(klaviyo: &KlaviyoSim, omneo: &OmneoSim) -> anyhow::Result<()> {
    let linked = customers(klaviyo, omneo, 4_000, PROFILES * PACE_BATCHES).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interactions_before = omneo.interactions(DEMO_TENANT).len();
    let batches: Vec<Vec<SystemEvent>> = linked.chunks(PROFILES as usize).map(events).collect();
    let total: usize = batches.iter().map(Vec::len).sum();
    let started = Instant::now();
    for batch in batches {
        deliver(klaviyo, batch).await?;
    }
    let accepted = started.elapsed();
    until_interactions(omneo, interactions_before + total).await?;
    let wall = started.elapsed();
    let tasks = linked.len() as f64;
    let allowed = QueueSettings::for_direction(Direction::Inbound).max_dispatches_per_second;
    println!(
        "## Pace ({PACE_BATCHES} deliveries of {} events back to back: {total} events, {} profile tasks)\n",
        PROFILES as usize * EVENTS_PER_PROFILE,
        linked.len()
    );
    println!("| figure | value | baseline |");
    println!("|---|---|---|");
    println!(
        "| deliveries accepted (202) | all {PACE_BATCHES} in {:.2} s | — |",
        accepted.as_secs_f64()
    );
    println!(
        "| profile tasks done | {:.1}/s ({total} events in {:.1} s) | the inbound queue dispatches {allowed:.0}/s |",
        tasks / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    Ok(())
}
