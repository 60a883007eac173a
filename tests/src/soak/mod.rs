//! The fault-injection soak (`make soak`; a short run inside `make test`): the whole system
//! under a mixed workload while everything around it misbehaves, then compared with an oracle.
//!
//! **The system** ([`system`]): both simulators; oauth-callback and the two receivers on one
//! socket; `inbound-task` and `outbound-task` as instances of their own; the local queue (Cloud
//! Tasks' look-alike: rate limits, backoffs scaled by [`system::BACKOFF_SCALE`], attempt limits,
//! pause); the memory store or the Firestore emulator ([`StoreChoice`]). Each tenant installs into
//! a Klaviyo account of its own ([`accounts`]), all reached at one URL as in production.
//!
//! **The run** ([`run`]):
//! 1. tenants are registered and installed; their customers are created in Omneo and synced to
//!    Klaviyo (identities written back) while nothing misbehaves;
//! 2. for [`Plan::duration`], the generators ([`workload`]) make Omneo profile edits, consent
//!    changes in Klaviyo (delivered in shuffled batches, some held back behind newer ones, some
//!    twice), Flow reward calls (each sent up to three times) and Omneo metric target calls
//!    (some twice), while both simulators answer about [`Plan::fault_rate`] of their API calls
//!    with a 429 (`Retry-After`), a 5xx, a slow answer or a dropped connection; meanwhile a
//!    backfill of the first tenant runs, every queue is paused and later resumed, and the
//!    outbound worker instance is killed and started again;
//! 3. the faults stop; the system settles (every delivery answered, every task done, the backfill
//!    over); each failure record is replayed through the failures API, and the system settles
//!    again;
//! 4. the oracle ([`oracle`]) compares both simulators with the [`ledger`]: each customer's
//!    Klaviyo first name and consent, and Omneo comms, equal the last change made; exactly one
//!    Omneo interaction per customer consent event of the tenant, one reward per Flow call, one
//!    Klaviyo event per metric call, one bulk import per profile, one Klaviyo profile per
//!    customer; and every task the queue gave up on had left a failure record.

pub mod accounts;
pub mod ledger;
pub mod oracle;
pub mod system;
pub mod workload;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use secrecy::ExposeSecret;
use serde_json::Value;
use shared::store::{FailureQuery, Severity};
use tokio::time::Instant;

use self::ledger::{Customer, Expected, Ledger, Sent};
use self::oracle::Found;
use self::system::System;
use crate::omneo::NewProfile;
use crate::sim::FaultRule;

/// Which store the system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// The in-memory store, shared by every instance.
    Memory,
    /// The Firestore emulator (`FIRESTORE_EMULATOR_HOST`), a connection per instance.
    Firestore,
}

impl fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memory => "memory",
            Self::Firestore => "Firestore emulator",
        })
    }
}

/// The size and shape of a soak.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store.
    pub store: StoreChoice,
    /// Tenants.
    pub tenants: usize,
    /// Omneo customers of each tenant.
    pub customers_per_tenant: u32,
    /// Omneo profile edits.
    pub omneo_changes: usize,
    /// Consent changes made in Klaviyo.
    pub consent_changes: usize,
    /// Flow reward calls (distinct keys; each sent up to three times).
    pub rewards: usize,
    /// Omneo metric target calls (distinct; some sent twice).
    pub metrics: usize,
    /// How long the generators run, faults on.
    pub duration: Duration,
    /// The share of simulator API calls that misbehave.
    pub fault_rate: f64,
    /// How long the system may take to settle afterwards: well beyond a lease an instance
    /// killed mid-task leaves held (`shared::job::WORK_LEASE`, 30 s, or a backfill chunk's
    /// `CHUNK_LEASE`, a minute), and the queue's backoffs.
    pub patience: Duration,
    /// The generators' seed.
    pub seed: u64,
}

impl Plan {
    /// `make soak`: 3 tenants of 60 customers, 1,000 Omneo edits and 1,000 Klaviyo consent
    /// changes over 2 minutes, 20 % faults.
    pub fn full(store: StoreChoice) -> Self {
        Self {
            store,
            tenants: 3,
            customers_per_tenant: 60,
            omneo_changes: 1000,
            consent_changes: 1000,
            rewards: 150,
            metrics: 100,
            duration: Duration::from_secs(120),
            fault_rate: 0.2,
            patience: Duration::from_secs(20 * 60),
            seed: 11,
        }
    }

    /// The variant inside `make test`: the same run, small (3 tenants of 5 customers, 12 s).
    pub fn short(store: StoreChoice) -> Self {
        Self {
            customers_per_tenant: 5,
            omneo_changes: 60,
            consent_changes: 40,
            rewards: 12,
            metrics: 8,
            duration: Duration::from_secs(12),
            patience: Duration::from_secs(4 * 60),
            ..Self::full(store)
        }
    }
}

/// What a soak did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan it ran.
    pub plan: Plan,
    /// What the generators sent.
    pub sent: Sent,
    /// What the oracle counted.
    pub found: Found,
    /// Queue attempts beyond each task's first (retries), during and after the faults.
    pub retried: u64,
    /// Tasks the queue completed.
    pub tasks: u64,
    /// Tasks the queue gave up on after their last attempt.
    pub given_up: u64,
    /// Failure records (severity `failed`) found and replayed.
    pub failed_and_recorded: usize,
    /// Warning records (the work was done with a caveat).
    pub warnings: usize,
    /// Simulator API calls during the faults, and how many of them misbehaved.
    pub calls: (usize, u64),
    /// Omneo comms updates and Klaviyo profile imports made.
    pub applied: (usize, usize),
    /// The first tenant's backfill run at the end, as `GET …/backfill` answers it.
    pub backfill: Value,
    /// Every difference from the oracle (empty when the soak passed).
    pub mismatches: Vec<String>,
    /// From start to the oracle's verdict.
    pub wall: Duration,
}

impl Report {
    /// Whether the final state equals the oracle's, with no duplicate and no unrecorded failure.
    pub fn passed(&self) -> bool {
        self.backfill["state"] == "completed"
            && self.mismatches.is_empty()
            && self.found.duplicates == 0
            && self.given_up as usize <= self.failed_and_recorded
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (plan, sent, found) = (&self.plan, &self.sent, &self.found);
        let (calls, faulted) = self.calls;
        let share = if calls == 0 {
            0.0
        } else {
            faulted as f64 * 100.0 / calls as f64
        };
        writeln!(
            f,
            "## Soak on the {} store: {} tenants, {} customers, {} s of faults\n",
            plan.store,
            plan.tenants,
            found.customers,
            plan.duration.as_secs()
        )?;
        writeln!(f, "| | count |\n|---|---|")?;
        let rows: [(&str, String); 19] = [
            ("sent: Omneo profile edits", sent.omneo_changes.to_string()),
            (
                "sent: consent changes in Klaviyo",
                sent.consent_changes.to_string(),
            ),
            (
                "sent: system-webhook deliveries (events in them, duplicated, held back, re-sent)",
                format!(
                    "{} ({}, {}, {}, {})",
                    sent.deliveries,
                    sent.events_delivered,
                    sent.duplicated_events,
                    sent.reordered_events,
                    sent.redeliveries
                ),
            ),
            (
                "sent: Flow reward calls (distinct)",
                format!("{} ({})", sent.reward_calls, plan.rewards),
            ),
            (
                "sent: metric target calls (distinct)",
                format!("{} ({})", sent.metric_calls, plan.metrics),
            ),
            (
                "faults: simulator API calls / misbehaved",
                format!("{calls} / {faulted} ({share:.1} %)"),
            ),
            (
                "chaos: backfill, queues paused and resumed, outbound-task killed",
                "yes".into(),
            ),
            (
                "applied: Klaviyo profile imports",
                self.applied.1.to_string(),
            ),
            (
                "applied: profiles in bulk import jobs (backfill)",
                found.bulk_imported.to_string(),
            ),
            ("applied: Omneo comms updates", self.applied.0.to_string()),
            (
                "applied: Omneo interactions",
                found.interactions.to_string(),
            ),
            ("applied: Omneo rewards", found.rewards.to_string()),
            ("applied: Klaviyo metric events", found.events.to_string()),
            (
                "tasks done / retried (queue attempts beyond the first)",
                format!("{} / {}", self.tasks, self.retried),
            ),
            (
                "failed and recorded (replayed) / given up by the queue",
                format!("{} / {}", self.failed_and_recorded, self.given_up),
            ),
            ("warnings recorded", self.warnings.to_string()),
            (
                "customers equal to the oracle (Klaviyo profile + consent, Omneo comms)",
                format!("{} / {}", found.customers_matching, found.customers),
            ),
            ("duplicates", found.duplicates.to_string()),
            ("wall time", format!("{:.1} s", self.wall.as_secs_f64())),
        ];
        for (what, count) in rows {
            writeln!(f, "| {what} | {count} |")?;
        }
        for mismatch in self.mismatches.iter().take(30) {
            writeln!(f, "MISMATCH {mismatch}")?;
        }
        if self.mismatches.len() > 30 {
            writeln!(f, "… and {} more", self.mismatches.len() - 30)?;
        }
        Ok(())
    }
}

/// Runs the soak `plan` describes (see the module docs) and reports it; an error when the system
/// could not be driven (a generator's call never accepted, no settling within the patience).
pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "soak ({}): {what} at {:.1} s",
            plan.store,
            started.elapsed().as_secs_f64()
        )
    };
    let system = Arc::new(System::start(plan.store, plan.tenants).await?);
    phase("tenants installed");
    let (customers, initial) = seed_customers(&system, &plan).await?;
    phase("customers synced; faults on");
    let customers = Arc::new(customers);
    let ledger = Arc::new(Ledger::new(initial));

    let before = system.queue.stats();
    let calls_before = api_calls(&system);
    inject_faults(&system, plan.fault_rate);
    let stop = Arc::new(tokio::sync::Notify::new());
    let seed = plan.seed;
    let deliveries = tokio::spawn(workload::klaviyo_deliveries(
        system.clone(),
        customers.clone(),
        ledger.clone(),
        stop.clone(),
        seed,
    ));
    let generators = [
        tokio::spawn(workload::omneo_edits(
            system.clone(),
            customers.clone(),
            ledger.clone(),
            plan.omneo_changes,
            plan.duration,
            seed + 1,
        )),
        tokio::spawn(workload::klaviyo_consent_changes(
            system.clone(),
            customers.clone(),
            ledger.clone(),
            plan.consent_changes,
            plan.duration,
            seed + 2,
        )),
        tokio::spawn(workload::flow_rewards(
            system.clone(),
            customers.clone(),
            ledger.clone(),
            plan.rewards,
            plan.duration,
            seed + 3,
        )),
        tokio::spawn(workload::metric_calls(
            system.clone(),
            customers.clone(),
            ledger.clone(),
            plan.metrics,
            plan.duration,
            seed + 4,
        )),
    ];
    chaos(&system, plan.duration).await?;
    for generator in generators {
        generator.await.context("a generator panicked")??;
    }
    let faulted = faults_fired(&system);
    let calls = api_calls(&system) - calls_before;
    all_faults(&system).for_each(crate::sim::Faults::clear);
    stop.notify_one();
    deliveries.await.context("the deliveries panicked")??;
    phase("faults off");

    settle(&system, plan.patience).await?;
    let (failed_and_recorded, warnings) = replay_failures(&system).await?;
    phase("settled; failure records replayed");
    settle(&system, plan.patience).await?;
    phase("settled again");

    let after = system.queue.stats();
    let backfill = latest_backfill(&system).await?;
    let book = ledger.book();
    let (found, mismatches) = oracle::compare(&system, &customers, &book);
    let applied = (
        system
            .omneo
            .recorder()
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.ends_with("/attributes/comms"))
            .count(),
        system
            .klaviyo
            .sims
            .iter()
            .map(|sim| sim.recorder().matching("POST", "/api/profile-import").len())
            .sum(),
    );
    let tasks = (after.delivered + after.given_up) - (before.delivered + before.given_up);
    Ok(Report {
        backfill,
        sent: book.sent,
        found,
        retried: (after.attempts - before.attempts).saturating_sub(tasks),
        tasks,
        given_up: after.given_up - before.given_up,
        failed_and_recorded,
        warnings,
        calls: (calls, faulted),
        applied,
        mismatches,
        wall: started.elapsed(),
        plan,
    })
}

/// Creates each tenant's customers in Omneo (their sync starts at once), waits until every one
/// is in Klaviyo with its identity written back, and delivers the echoes of those syncs.
/// Returns the customers and their state as seeded.
async fn seed_customers(
    system: &System,
    plan: &Plan,
) -> anyhow::Result<(Vec<Customer>, Vec<Expected>)> {
    let mut seeded = Vec::new();
    for (index, tenant) in system.tenants.iter().enumerate() {
        for k in 0..plan.customers_per_tenant {
            let n = u32::try_from(index)? * 10_000 + k + 1;
            let profile = system
                .omneo
                .seed_profile(tenant.id.as_str(), NewProfile::demo(n))?;
            let expected = Expected {
                first_name: profile.first_name.clone(),
                email: true,
                sms: n.is_multiple_of(2),
            };
            seeded.push((index, tenant.id.to_string(), profile.id, expected));
        }
    }
    let deadline = Instant::now() + plan.patience;
    let mut customers = Vec::new();
    let mut initial = Vec::new();
    for (tenant, tenant_id, omneo_id, expected) in seeded {
        let klaviyo_id = loop {
            let identity = system
                .omneo
                .identities(&tenant_id, &omneo_id)
                .into_iter()
                .find(|i| i.handle == "klaviyo");
            if let Some(identity) = identity {
                break identity.identifier;
            }
            if Instant::now() > deadline {
                bail!("{tenant_id}/{omneo_id} was never synced to Klaviyo");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        customers.push(Customer {
            tenant,
            tenant_id,
            omneo_id,
            klaviyo_id,
        });
        initial.push(expected);
    }
    settle(system, plan.patience).await?;
    Ok((customers, initial))
}

/// The simulators' API calls so far (Klaviyo's `/api/…`, every Omneo call).
fn api_calls(system: &System) -> usize {
    let klaviyo: usize = system
        .klaviyo
        .sims
        .iter()
        .map(|sim| {
            let requests = sim.recorder().requests();
            requests
                .iter()
                .filter(|r| r.path.starts_with("/api/"))
                .count()
        })
        .sum();
    klaviyo + system.omneo.recorder().requests().len()
}

/// How many uses of each fault kind a soak rule starts with: more than any run makes.
const FAULT_BUDGET: u32 = 1_000_000;

/// Both simulators misbehave on about `rate` of their API calls: 30 % of those answer 429 with
/// `Retry-After: 1`, 25 % a 503, 25 % come 0.3 s late, 20 % lose their connection.
fn inject_faults(system: &System, rate: f64) {
    // Rules are tried in order, each firing with its own chance: later ones see only the calls
    // the earlier ones let through, so their chances are raised to keep the shares.
    let shares = [0.30, 0.25, 0.25, 0.20];
    let mut left = 1.0;
    let mut chances = [0.0; 4];
    for (chance, share) in chances.iter_mut().zip(shares) {
        *chance = rate * share / left;
        left -= rate * share;
    }
    for faults in all_faults(system) {
        // Klaviyo's OAuth endpoints are spared: a failed refresh is its own test elsewhere.
        let path = if std::ptr::eq(faults, system.omneo.faults()) {
            "/"
        } else {
            "/api/"
        };
        faults.inject(
            FaultRule::status(path, 429, FAULT_BUDGET)
                .retry_after(1)
                .probability(chances[0]),
        );
        faults.inject(FaultRule::status(path, 503, FAULT_BUDGET).probability(chances[1]));
        faults.inject(
            FaultRule::slow(path, Duration::from_millis(300), FAULT_BUDGET).probability(chances[2]),
        );
        faults.inject(FaultRule::dropped(path, FAULT_BUDGET).probability(chances[3]));
    }
}

/// How many calls the fault rules affected so far.
fn faults_fired(system: &System) -> u64 {
    all_faults(system)
        .flat_map(|faults| faults.rules())
        .map(|rule| u64::from(FAULT_BUDGET - rule.count))
        .sum()
}

/// The fault rules of every simulator.
fn all_faults(system: &System) -> impl Iterator<Item = &crate::sim::Faults> {
    let klaviyo = system.klaviyo.sims.iter().map(|sim| sim.faults());
    klaviyo.chain([system.omneo.faults()])
}

/// What happens around the workload over `duration`: at a quarter a backfill of the first tenant
/// starts; from 40 % to 50 % every queue is paused; at 60 % the outbound worker instance is
/// killed and, 3 s later, started again.
async fn chaos(system: &System, duration: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let at = |share: f64| tokio::time::sleep_until(start + duration.mul_f64(share));
    at(0.25).await;
    start_backfill(system).await?;
    at(0.4).await;
    system.hold_queues(true).await?;
    at(0.5).await;
    system.hold_queues(false).await?;
    at(0.6).await;
    let mut outbound = system.outbound.lock().await;
    outbound.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    outbound.start().await?;
    Ok(())
}

/// `POST /{tenant}/api/v1/backfill` for the first tenant: a full run, expected 202.
async fn start_backfill(system: &System) -> anyhow::Result<()> {
    let tenant = system.tenants.first().context("a tenant")?;
    let answer = reqwest::Client::new()
        .post(format!("{}/{}/api/v1/backfill", system.url, tenant.id))
        .bearer_auth(tenant.admin_key.expose_secret())
        .json(&serde_json::json!({}))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status() == 202,
        "backfill answered {}",
        answer.status()
    );
    Ok(())
}

/// The first tenant's latest backfill run (`GET …/backfill`; `null` before the first).
async fn latest_backfill(system: &System) -> anyhow::Result<Value> {
    let tenant = system.tenants.first().context("a tenant")?;
    let answer = reqwest::Client::new()
        .get(format!("{}/{}/api/v1/backfill", system.url, tenant.id))
        .bearer_auth(tenant.admin_key.expose_secret())
        .send()
        .await?;
    if answer.status() == 404 {
        return Ok(Value::Null);
    }
    Ok(answer.json().await?)
}

/// Waits until nothing moves: every Omneo delivery answered, the Klaviyo outbox delivered, no
/// task pending, no backfill running — twice in a row, as delivering echoes makes tasks.
async fn settle(system: &System, patience: Duration) -> anyhow::Result<()> {
    let mut seen = String::from("nothing yet");
    let settled = async {
        let mut quiet = 0;
        while quiet < 2 {
            seen = "waiting for Omneo's deliveries".into();
            system.omneo.settle().await;
            seen = format!("waiting for the queue: {:?}", system.queue.stats());
            system.queue.idle().await;
            let mut pending = Vec::new();
            for sim in &system.klaviyo.sims {
                pending.extend(sim.deliver_pending().await?);
            }
            for delivery in &pending {
                anyhow::ensure!(
                    delivery.status == Some(202),
                    "a settling delivery was answered {:?}",
                    delivery.status
                );
            }
            let running = latest_backfill(system).await?["state"] == "running";
            seen = format!(
                "{} deliveries, a backfill running: {running}",
                pending.len()
            );
            if pending.is_empty() && !running && system.queue.stats().pending == 0 {
                quiet += 1;
            } else {
                quiet = 0;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(patience, settled).await;
    outcome
        .with_context(|| format!("the system did not settle within {patience:?}; last: {seen}"))?
}

/// Replays every failure record (severity `failed`) through `POST …/failures/{id}/retry`,
/// naming each on stderr; the number replayed and the number of warnings.
async fn replay_failures(system: &System) -> anyhow::Result<(usize, usize)> {
    let http = reqwest::Client::new();
    let (mut failed, mut warnings) = (0, 0);
    for tenant in &system.tenants {
        let page = system
            .app
            .store
            .failures(&tenant.id, &FailureQuery::newest(1000))
            .await?;
        for failure in page.failures {
            if failure.severity == Severity::Warning {
                warnings += 1;
                continue;
            }
            failed += 1;
            eprintln!(
                "soak: replaying failure {} of {} ({:?} task, step {}, {} attempts): {}",
                failure.id,
                tenant.id,
                failure.task_kind,
                failure.step.as_deref().unwrap_or("-"),
                failure.attempts,
                failure.error
            );
            let answer = http
                .post(format!(
                    "{}/{}/api/v1/failures/{}/retry",
                    system.url, tenant.id, failure.id
                ))
                .bearer_auth(tenant.admin_key.expose_secret())
                .send()
                .await?;
            anyhow::ensure!(
                answer.status() == 202,
                "replaying {} answered {}",
                failure.id,
                answer.status()
            );
        }
    }
    Ok((failed, warnings))
}
