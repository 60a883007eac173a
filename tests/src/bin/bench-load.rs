//! `make load`: sustained ingest at more than ten times the expected peak on both receivers, with
//! the Firestore and Cloud Tasks emulators as their backends (run under `tests/emulators.sh`, which
//! exports their hosts), and proof that no request answered 202 is missing from the queue.
//!
//! **The peak we assume: [`EXPECTED_PEAK`] requests/s per receiver.** The heaviest legitimate
//! bursts are an Omneo bulk job rewriting a tenant's profiles (each change one signed
//! `profile.updated` delivery) and a Klaviyo campaign's unsubscribe wave (system-webhook batches).
//! The work behind them is paced far lower — the outbound queue dispatches 12/s, Klaviyo's steady
//! profile-import limit — so 20/s on each receiver is already a burst the workers take minutes to
//! drain; the load here is [`RATE`] requests/s, 12.5×.
//!
//! Each receiver is `bench-ingest-server` (`$BENCH_BACKEND=emulators`: the real router on the
//! Firestore emulator and the Cloud Tasks emulator, its tenant registered and installed there,
//! queues unpaused) in its own process, pinned to core 0; this process (the load and a task sink)
//! runs where the Makefile pins it, core 1. The emulators run where the scheduler puts them. The
//! load is open-loop: requests leave at a fixed rate whatever the answers, every one distinct (its
//! own Omneo profile, or its own Klaviyo profile in a one-event batch, signed as the senders sign
//! them). The queue pushes every task to the sink here, which records the profile each names.
//!
//! For each receiver, first an empty `POST /baseline` handler on the same server is loaded at the
//! same rate for `--baseline` seconds (default 30; the figure the receiver's is read against), then the receiver for
//! `--seconds` (default 120). Reported: requests/s achieved, p50/p99/max latency, answers other
//! than 202, the server's peak RSS, and the accepted profiles whose task never reached the sink
//! (which must be 0). Exits non-zero when a request failed or an accepted one is missing.
//!
//! Options: `--seconds S` (120), `--rate R` (250), `--baseline S` (30). The integration test
//! `load::a_short_load_on_the_emulators_loses_nothing` runs it for a few seconds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use harness::klaviyo::{REVISION, SystemEvent, deliveries, topics};
use harness::omneo::{EVENT_HEADER, SIGNATURE_HEADER, sign};
use harness::process::{free_port, health_ok, peak_rss_mib, terminate, wait_exit, wait_for};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// The requests/s per receiver we take as the expected peak (see the module docs).
const EXPECTED_PEAK: f64 = 20.0;
/// The load, requests/s per receiver.
const RATE: f64 = 250.0;
/// How long the empty handler is loaded, at the same rate, before each receiver (default).
const BASELINE_SECONDS: u64 = 30;
/// How long the queue may take to push every accepted task after the load ends (Omneo syncs are
/// scheduled at the end of their coalescing window).
const DRAIN: Duration = Duration::from_secs(180);
/// Requests in flight at most; beyond it the generator would stop being open-loop.
const MAX_IN_FLIGHT: usize = 2048;
/// The bench tenant (registered and installed by the server).
const TENANT: &str = "load";
const OMNEO_SIGNING_SECRET: &str = "load-omneo-signing-secret";
const KLAVIYO_WEBHOOK_SECRET: &str = "load-klaviyo-webhook-secret";
const KLAVIYO_ACCOUNT_ID: &str = "LoAd01";
/// Every profile id the load makes starts with this (alphanumeric, as Klaviyo ids are).
const PROFILE_PREFIX: &str = "LOAD";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One receiver under load.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Omneo,
    Klaviyo,
}

impl Receiver {
    fn function(self) -> &'static str {
        match self {
            Self::Omneo => "omneo-webhook",
            Self::Klaviyo => "klaviyo-webhook",
        }
    }

    fn path(self) -> String {
        match self {
            Self::Omneo => format!("/{TENANT}/api/v1/webhooks/omneo"),
            Self::Klaviyo => format!("/{TENANT}/api/v1/webhooks/klaviyo/system"),
        }
    }
}

/// What one load run saw.
struct Measured {
    sent: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    failures: usize,
    /// The profiles of the requests answered 202.
    accepted: Vec<String>,
}

impl Measured {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn row(&self, what: &str, extra: &str) -> String {
        format!(
            "| {what} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {extra} |",
            self.sent as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
            self.failures,
        )
    }
}

fn run() -> anyhow::Result<bool> {
    let mut seconds = 120u64;
    let mut rate = RATE;
    let mut baseline_seconds = BASELINE_SECONDS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => seconds = value.parse()?,
            "--rate" => rate = value.parse()?,
            "--baseline" => baseline_seconds = value.parse()?,
            _ => anyhow::bail!("unknown option {arg} (--seconds S, --rate R, --baseline S)"),
        }
    }
    for host in ["FIRESTORE_EMULATOR_HOST", "CLOUD_TASKS_EMULATOR_HOST"] {
        std::env::var(host)
            .with_context(|| format!("{host} is not set: run under tests/emulators.sh"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let sink = runtime.block_on(start_sink(delivered.clone()))?;
    println!(
        "load: {rate:.0} requests/s per receiver = {:.1}× the assumed peak of {EXPECTED_PEAK:.0}/s, {seconds} s each, \
         after {} s on the empty handler; Firestore and Cloud Tasks emulators",
        rate / EXPECTED_PEAK,
        baseline_seconds
    );
    println!();
    println!(
        "| target | requests/s | p50 ms | p99 ms | max ms | not 202 | peak RSS / accepted missing from the queue |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut all_good = true;
    for receiver in [Receiver::Omneo, Receiver::Klaviyo] {
        let mut server = start_server(receiver, sink)?;
        let base = format!("http://127.0.0.1:{}", server.port);
        let baseline = runtime.block_on(load(
            &base,
            None,
            rate,
            Duration::from_secs(baseline_seconds),
        ))?;
        println!("{}", baseline.row("empty handler (same server)", ""));
        let measured = runtime.block_on(load(
            &base,
            Some(receiver),
            rate,
            Duration::from_secs(seconds),
        ))?;
        let peak = peak_rss_mib(server.child.id())?;
        let missing = runtime.block_on(missing(&measured.accepted, &delivered));
        println!(
            "{}",
            measured.row(
                receiver.function(),
                &format!(
                    "{peak:.0} MiB / {} of {}",
                    missing.len(),
                    measured.accepted.len()
                )
            )
        );
        if !missing.is_empty() {
            eprintln!(
                "missing from the queue: {:?}",
                &missing[..missing.len().min(10)]
            );
        }
        all_good &= measured.failures == 0 && baseline.failures == 0 && missing.is_empty();
        server.stop()?;
    }
    Ok(all_good)
}

/// A running `bench-ingest-server`.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn stop(&mut self) -> anyhow::Result<()> {
        terminate(&self.child)?;
        wait_exit(&mut self.child, Duration::from_secs(15))?;
        Ok(())
    }
}

fn start_server(receiver: Receiver, sink: SocketAddr) -> anyhow::Result<Server> {
    let exe_dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("the executable's directory")?
        .to_path_buf();
    let port = free_port()?;
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe_dir.join("bench-ingest-server"))
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("BENCH_FUNCTION", receiver.function())
        .env("BENCH_BACKEND", "emulators")
        .env(
            "BENCH_PROJECT",
            format!(
                "load-{}-{}",
                receiver.function(),
                ulid::Ulid::new().to_string().to_lowercase()
            ),
        )
        .env("BENCH_TASK_TARGET", format!("http://{sink}"))
        .env("BENCH_TENANT", TENANT)
        .env("BENCH_OMNEO_SIGNING_SECRET", OMNEO_SIGNING_SECRET)
        .env("BENCH_KLAVIYO_WEBHOOK_SECRET", KLAVIYO_WEBHOOK_SECRET)
        .env("BENCH_KLAVIYO_WEBHOOK_ID", webhook_id())
        .env("BENCH_KLAVIYO_ACCOUNT_ID", KLAVIYO_ACCOUNT_ID)
        .stdout(Stdio::null())
        .spawn()
        .context("starting bench-ingest-server (build it: make load does)")?;
    wait_for(&mut child, Instant::now() + Duration::from_secs(60), || {
        health_ok(port).then_some(())
    })
    .with_context(|| format!("{} on the emulators", receiver.function()))?;
    Ok(Server { child, port })
}

/// The bench tenant's Klaviyo system webhook id (one per process run).
fn webhook_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| ulid::Ulid::new().to_string()).clone()
}

/// Loads `base` at `rate` requests/s for `duration`: the receiver's path with distinct signed
/// deliveries, or the empty handler with a small body when `receiver` is `None`.
async fn load(
    base: &str,
    receiver: Option<Receiver>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()?;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut handles = Vec::new();
    let mut n = 0u64;
    let run = ulid::Ulid::new().to_string();
    while started.elapsed() < duration {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let profile = format!("{PROFILE_PREFIX}{run}{n}");
        let request = match receiver {
            None => client.post(format!("{base}/baseline")).body("{}"),
            Some(Receiver::Omneo) => omneo_delivery(&client, base, &profile),
            Some(Receiver::Klaviyo) => klaviyo_delivery(&client, base, &profile),
        };
        handles.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = request.send().await.map(|r| r.status().as_u16());
            drop(permit);
            (profile, status, sent.elapsed())
        }));
        n += 1;
    }
    let mut measured = Measured {
        sent: handles.len(),
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(handles.len()),
        failures: 0,
        accepted: Vec::new(),
    };
    for handle in handles {
        let (profile, status, latency) = handle.await?;
        measured.latencies.push(latency);
        match status {
            Ok(202) => measured.accepted.push(profile),
            _ => measured.failures += 1,
        }
    }
    measured.elapsed = started.elapsed();
    if receiver.is_none() {
        measured.accepted.clear();
    }
    Ok(measured)
}

/// A signed Omneo `profile.updated` delivery of a profile of its own.
fn omneo_delivery(client: &reqwest::Client, base: &str, profile: &str) -> reqwest::RequestBuilder {
    let body =
        json!({"id": profile, "email": format!("{profile}@example.com"), "first_name": "Load"})
            .to_string();
    client
        .post(format!("{base}{}", Receiver::Omneo.path()))
        .header(EVENT_HEADER, "profile.updated")
        .header(
            SIGNATURE_HEADER,
            sign(OMNEO_SIGNING_SECRET, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
}

/// A signed Klaviyo system-webhook batch of one unsubscribe by a profile of its own.
fn klaviyo_delivery(
    client: &reqwest::Client,
    base: &str,
    profile: &str,
) -> reqwest::RequestBuilder {
    let email = format!("{profile}@example.com");
    let event = SystemEvent::new(topics::UNSUBSCRIBED_FROM_EMAIL, profile, Some(&email));
    let body = json!({
        "data": [{
            "topic": event.topic,
            "external_id": event.external_id,
            "payload": {"data": event.payload()}
        }],
        "meta": {
            "klaviyo_account_id": KLAVIYO_ACCOUNT_ID,
            "klaviyo_webhook_id": webhook_id(),
            "timestamp": jiff::Timestamp::now(),
            "version": REVISION
        }
    })
    .to_string();
    let timestamp = httpdate::fmt_http_date(SystemTime::now());
    let signature = deliveries::sign(KLAVIYO_WEBHOOK_SECRET, body.as_bytes(), &timestamp);
    client
        .post(format!("{base}{}", Receiver::Klaviyo.path()))
        .header("Klaviyo-Webhook-Id", webhook_id())
        .header("Klaviyo-Timestamp", timestamp)
        .header("Klaviyo-Signature", signature)
        .header("content-type", "application/json")
        .body(body)
}

/// The task sink: every pushed task answers 200 and leaves the load profiles it names.
async fn start_sink(delivered: Arc<Mutex<HashSet<String>>>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new().fallback(record).with_state(delivered);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

async fn record(State(delivered): State<Arc<Mutex<HashSet<String>>>>, body: Bytes) -> &'static str {
    if let Ok(task) = serde_json::from_slice::<Value>(&body) {
        let mut profiles = Vec::new();
        collect_profiles(&task, &mut profiles);
        delivered.lock().unwrap().extend(profiles);
    }
    "ok"
}

/// Every string of `value` that is a load profile id.
fn collect_profiles(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) if text.starts_with(PROFILE_PREFIX) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| collect_profiles(item, out)),
        Value::Object(fields) => fields.values().for_each(|item| collect_profiles(item, out)),
        _ => {}
    }
}

/// The accepted profiles whose task has not reached the sink within [`DRAIN`].
async fn missing(accepted: &[String], delivered: &Mutex<HashSet<String>>) -> Vec<String> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let missing: Vec<String> = {
            let delivered = delivered.lock().unwrap();
            accepted
                .iter()
                .filter(|profile| !delivered.contains(*profile))
                .cloned()
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
