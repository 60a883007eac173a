//! The soak's generators: Omneo profile edits, consent changes made in Klaviyo (delivered in
//! batches, duplicated and reordered), Flow reward calls and Omneo metric target calls. Each
//! writes what it did into the [`Ledger`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::time::Instant;

use super::ledger::{Customer, Ledger};
use super::system::System;
use crate::klaviyo::{Channel, ConsentState, KlaviyoSim, SystemEvent};

/// Two consent changes of one customer are at least this far apart: Omneo keeps consent times to
/// the second, so changes in one second could not be told apart by their time.
const CONSENT_SPACING: Duration = Duration::from_millis(1100);
/// How often the simulated Klaviyo delivers what its outbox holds.
const DELIVERY_ROUND: Duration = Duration::from_millis(700);
/// The largest batch of one delivery.
const MAX_BATCH: usize = 40;
/// The share of events delivered a second time, in a later round.
const DUPLICATE_SHARE: f64 = 0.1;
/// The share of events held back a round, so newer events arrive before them.
const REORDER_SHARE: f64 = 0.15;
/// How many times a Flow call is sent at most (Klaviyo retries Flow webhooks).
const MAX_FLOW_REPEATS: u32 = 3;
/// How long a generator waits before sending again what was not accepted.
const RESEND_PAUSE: Duration = Duration::from_millis(200);
/// How many times a call that was not accepted is sent again before the soak fails.
const MAX_RESENDS: u32 = 50;

/// The name the `i`-th Omneo edit gives its customer.
pub fn edited_name(i: usize) -> String {
    format!("Soak{i}")
}

/// Makes `count` Omneo profile edits spread over `over`, each a new first name.
pub async fn omneo_edits(
    system: Arc<System>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    count: usize,
    over: Duration,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pause = over.div_f64(count.max(1) as f64);
    for i in 0..count {
        let index = rng.random_range(0..customers.len());
        let customer = &customers[index];
        let name = edited_name(i);
        system
            .omneo
            .edit_profile(&customer.tenant_id, &customer.omneo_id, |profile| {
                profile.first_name = Some(name.clone());
            })?;
        {
            let mut book = ledger.book();
            book.expected[index].first_name = Some(name);
            book.sent.omneo_changes += 1;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Makes `count` consent changes in Klaviyo spread over `over`: a customer (not changed in the
/// last [`CONSENT_SPACING`]) flips one channel from what Klaviyo holds now.
pub async fn klaviyo_consent_changes(
    system: Arc<System>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    count: usize,
    over: Duration,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pause = over.div_f64(count.max(1) as f64);
    let mut made = 0;
    while made < count {
        let index = rng.random_range(0..customers.len());
        let recently = ledger.book().consent_changed_at[index]
            .is_some_and(|at| at.elapsed() < CONSENT_SPACING);
        if recently {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let customer = &customers[index];
        let channel = if rng.random_bool(0.6) {
            Channel::Email
        } else {
            Channel::Sms
        };
        let klaviyo = system.klaviyo_of(customer.tenant);
        let profile = klaviyo
            .profile(&customer.klaviyo_id)
            .context("a synced customer's Klaviyo profile")?;
        let now = match channel {
            Channel::Email => &profile.subscriptions.email_marketing,
            Channel::Sms => &profile.subscriptions.sms_marketing,
        };
        let subscribe = now.consent != ConsentState::Subscribed;
        let state = if subscribe {
            ConsentState::Subscribed
        } else {
            ConsentState::Unsubscribed
        };
        klaviyo.change_consent(&customer.klaviyo_id, channel, state, "PREFERENCE_PAGE")?;
        {
            let mut book = ledger.book();
            match channel {
                Channel::Email => book.expected[index].email = subscribe,
                Channel::Sms => book.expected[index].sms = subscribe,
            }
            book.consent_changed_at[index] = Some(Instant::now());
            book.sent.consent_changes += 1;
        }
        made += 1;
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// The simulated Klaviyo accounts' deliveries: every [`DELIVERY_ROUND`] each account's outbox
/// (customers' changes and the echoes of ours) is taken, shuffled, some events held back a round,
/// some repeated in a later round, and delivered in batches to the account's webhook (its
/// tenant's), sending again what was not answered 202. Runs until `stop` is set and nothing is
/// left to deliver.
pub async fn klaviyo_deliveries(
    system: Arc<System>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    stop: Arc<tokio::sync::Notify>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let accounts = system.klaviyo.sims.len();
    let mut later: Vec<Vec<SystemEvent>> = vec![Vec::new(); accounts];
    let mut stopping = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DELIVERY_ROUND) => {}
            () = stop.notified(), if !stopping => stopping = true,
        }
        for (account, later) in later.iter_mut().enumerate() {
            let klaviyo = system.klaviyo_of(account);
            let fresh = klaviyo.drop_pending();
            record_customer_events(&customers, &ledger, account, &fresh);
            let round = shuffled_round(&mut rng, later, fresh, &ledger, stopping);
            deliver_round(klaviyo, &ledger, &mut rng, round).await?;
        }
        let drained = later.iter().all(Vec::is_empty)
            && system
                .klaviyo
                .sims
                .iter()
                .all(|sim| sim.pending_events().is_empty());
        if stopping && drained {
            return Ok(());
        }
    }
}

/// The events of one round: those held back last round, then the fresh ones shuffled among
/// them, less those held back or repeated for the next (none once `stopping`).
fn shuffled_round(
    rng: &mut StdRng,
    later: &mut Vec<SystemEvent>,
    fresh: Vec<SystemEvent>,
    ledger: &Ledger,
    stopping: bool,
) -> Vec<SystemEvent> {
    let mut round = std::mem::take(later);
    for event in fresh {
        if !stopping && rng.random_bool(DUPLICATE_SHARE) {
            later.push(event.clone());
            ledger.book().sent.duplicated_events += 1;
        }
        if !stopping && rng.random_bool(REORDER_SHARE) {
            later.push(event);
            ledger.book().sent.reordered_events += 1;
        } else {
            round.push(event);
        }
    }
    round.shuffle(rng);
    round
}

/// Delivers `round` in batches of random sizes.
async fn deliver_round(
    klaviyo: &KlaviyoSim,
    ledger: &Ledger,
    rng: &mut StdRng,
    mut round: Vec<SystemEvent>,
) -> anyhow::Result<()> {
    while !round.is_empty() {
        let size = rng.random_range(1..=MAX_BATCH).min(round.len());
        let batch: Vec<SystemEvent> = round.drain(..size).collect();
        deliver(klaviyo, ledger, batch).await?;
    }
    Ok(())
}

/// Notes the events of customers' own changes (not echoes of ours) in the account of tenant
/// `account`.
fn record_customer_events(
    customers: &[Customer],
    ledger: &Ledger,
    account: usize,
    events: &[SystemEvent],
) {
    let mut book = ledger.book();
    for event in events {
        if event.custom_method_detail.is_some() {
            continue;
        }
        let ours = |c: &&Customer| c.tenant == account && c.klaviyo_id == event.profile_id;
        if customers.iter().any(|c| ours(&c)) {
            book.consent_events
                .entry(account)
                .or_default()
                .insert(event.event_id.clone());
        }
    }
}

/// Delivers one batch to every webhook, and sends again each delivery not answered 202.
async fn deliver(
    klaviyo: &KlaviyoSim,
    ledger: &Ledger,
    batch: Vec<SystemEvent>,
) -> anyhow::Result<()> {
    for delivery in klaviyo.deliver(batch).await? {
        {
            let mut book = ledger.book();
            book.sent.deliveries += 1;
            book.sent.events_delivered += delivery.events.len() as u64;
        }
        let mut status = delivery.status;
        let mut resends = 0;
        while status != Some(202) {
            anyhow::ensure!(
                resends < MAX_RESENDS,
                "a delivery to {} was answered {status:?} {resends} times",
                delivery.endpoint_url
            );
            tokio::time::sleep(RESEND_PAUSE).await;
            status = klaviyo.redeliver(&delivery).await.ok();
            ledger.book().sent.redeliveries += 1;
            resends += 1;
        }
    }
    Ok(())
}

/// Makes `count` Flow reward calls spread over `over`, each sent 1 to [`MAX_FLOW_REPEATS`]
/// times with its `idempotency_key`, as Klaviyo's Flow retries would.
pub async fn flow_rewards(
    system: Arc<System>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    count: usize,
    over: Duration,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pause = over.div_f64(count.max(1) as f64);
    let http = reqwest::Client::new();
    for i in 0..count {
        let index = rng.random_range(0..customers.len());
        let customer = &customers[index];
        let tenant = &system.tenants[customer.tenant];
        let key = format!("soak-reward-{i}");
        let body = json!({
            "person_id": customer.klaviyo_id,
            "data": {"reward_definition_id": "soak", "amount": 5},
            "idempotency_key": key,
        });
        let url = format!(
            "{}/{}/api/v1/webhooks/klaviyo/rewards",
            system.url, customer.tenant_id
        );
        for _ in 0..rng.random_range(1..=MAX_FLOW_REPEATS) {
            until_accepted("a reward call", || async {
                let answer = http
                    .post(&url)
                    .header("x-omneo-secret", tenant.webhook_secret.expose_secret())
                    .json(&body)
                    .send()
                    .await;
                ledger.book().sent.reward_calls += 1;
                answer.ok().map(|a| a.status().as_u16())
            })
            .await?;
        }
        ledger.book().rewards.entry(index).or_default().insert(key);
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Makes `count` metric target calls spread over `over`, as Omneo reactions would, each sent
/// once or twice with the same body (Omneo's retry): each must become one Klaviyo event.
pub async fn metric_calls(
    system: Arc<System>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    count: usize,
    over: Duration,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pause = over.div_f64(count.max(1) as f64);
    for i in 0..count as u64 {
        let customer = &customers[rng.random_range(0..customers.len())];
        let body = json!({"data": {"type": "event", "attributes": {
            "properties": {"soak_metric": i},
            "metric": {"data": {"type": "metric", "attributes": {"name": METRIC_NAME}}},
            "profile": {"data": {"type": "profile", "id": customer.klaviyo_id}}}}});
        let url = format!(
            "{}/{}/api/v1/targets/klaviyo/metric",
            system.url, customer.tenant_id
        );
        for _ in 0..rng.random_range(1..=2) {
            until_accepted("a metric call", || async {
                let delivery = system
                    .omneo
                    .send_target_call(&customer.tenant_id, &url, &body)
                    .await
                    .ok()?;
                ledger.book().sent.metric_calls += 1;
                delivery.outcome.status()
            })
            .await?;
        }
        ledger.book().metrics.insert(i);
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Makes a call with `send` (its status, `None` without an answer) until it is answered 202,
/// at most [`MAX_RESENDS`] more times, [`RESEND_PAUSE`] apart, as the remote's retries would.
async fn until_accepted<F, Fut>(what: &str, mut send: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<u16>>,
{
    let mut resends = 0;
    loop {
        let status = send().await;
        if status == Some(202) {
            return Ok(());
        }
        anyhow::ensure!(resends < MAX_RESENDS, "{what} was answered {status:?}");
        resends += 1;
        tokio::time::sleep(RESEND_PAUSE).await;
    }
}

/// The Klaviyo metric the soak's target calls name.
pub const METRIC_NAME: &str = "Soak Points";
