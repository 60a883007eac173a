//! `make bench`, second part: how many signed webhooks the two receivers take in per second on
//! one core, each beside two references measured in the same run:
//!
//! - an empty axum `POST` handler served by the same server process, behind the same runtime
//!   layer, sent the same requests (what the receiver's own work costs on top of HTTP, the layer
//!   and the body read);
//! - a Node.js `http` receiver doing the same work the idiomatic way.
//!
//! **`omneo-webhook`** receiving signed Omneo profile deliveries. The bodies are [`PROFILES`]
//! demo profiles of the Omneo simulator (about 1.2 KB of JSON each), signed like Omneo signs
//! deliveries and sent round-robin by `tests/bench/ingest.lua`, so every profile recurs within
//! each coalescing window the way a burst of updates does. The Node.js receiver is
//! `tests/bench/node-receiver.js`: HMAC-SHA256 of the raw body checked with
//! `crypto.timingSafeEqual`, `JSON.parse`, a push onto an in-memory array as its "enqueue", 202.
//! A second instance of the Rust server at production's `info` (a JSON line per request, to
//! `/dev/null`) gives a fourth row, the receiver as production runs it.
//!
//! **`klaviyo-webhook`** receiving signed Klaviyo system-webhook batches
//! (`POST /{tenant}/api/v1/webhooks/klaviyo/system`) of 1 event and of [`BATCH_EVENTS`] events
//! (those spread over [`BATCH_PROFILES`] profiles, so one batch becomes that many tasks), built
//! like the Klaviyo simulator delivers them ([`harness::klaviyo::SystemEvent`],
//! [`harness::klaviyo::deliveries::sign`]): consent events of [`PROFILES`] profiles, signed over
//! body ‖ `Klaviyo-Timestamp`, sent round-robin by `tests/bench/ingest.lua`. A pool covers every
//! profile once (1,000 single-event batches, or 100 batches of 50) and recurs, so after its first
//! pass every batch is a redelivery whose tasks exist (answered 202 as duplicates, after all the
//! receiver's checks, the grouping and the task building) — the regime of the Omneo rows, where a
//! profile's task of the coalescing window exists. `meta.timestamp` must be within 5 minutes of now
//! when a batch arrives and the signature covers it, so the pool is made afresh (new events, new
//! `external_id`s) right before each target's warm-up and run, which together may last at most
//! [`MAX_KLAVIYO_RUN`]. The Node.js receiver is `tests/bench/node-klaviyo-receiver.js`: the HMAC
//! over body ‖ timestamp checked with `crypto.timingSafeEqual`, `JSON.parse`, the webhook id,
//! account and timestamp checks, the events grouped by profile, one task per profile pushed onto an
//! in-memory array, 202. Its array, like the Rust queue, takes a task name once, so both hold the
//! same few thousand tasks rather than Node's growing by every redelivery (and its garbage
//! collection with it).
//!
//! The Rust server is `bench-ingest-server` (next to this executable), one instance per function:
//! the real router on the memory store and the local queue, tenant [`TENANT`] installed (with
//! its Klaviyo account and system webhook), its queues paused so accepted tasks are held, not
//! dispatched. It logs at `warn`, so the comparison is about the work the receiver does. Every
//! server runs pinned to core 0 (`taskset`; idle while another is measured), the load generator
//! `wrk` to core 1, over loopback. Rounds interleave all the targets, each run after a short
//! warm-up; the tables show medians over the rounds, and the ratios are medians of each round's
//! ratio.
//!
//! Options: `--rounds N` (3), `--seconds S` per run (10), `--warmup S` (2), `--connections C`
//! (32), `--only omneo|klaviyo` (both). Exits non-zero when a target answered with an error
//! status (4xx, 5xx) or dropped connections: its figures would mean nothing.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use harness::klaviyo::{REVISION, SystemEvent, deliveries, topics};
use harness::omneo::{
    EVENT_HEADER, NewProfile, OmneoSim, OmneoSimOptions, SIGNATURE_HEADER, TenantSpec, sign,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// The tenant the deliveries are for.
const TENANT: &str = "bench";
/// How many distinct profiles the deliveries cycle through (Omneo's and Klaviyo's alike).
const PROFILES: u32 = 1000;
/// The core the servers run on.
const SERVER_CORE: &str = "0";
/// The core `wrk` runs on.
const LOAD_CORE: &str = "1";
/// How long a server may take to answer `GET /health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The receiver's throughput target against the empty handler (the issue's; for Klaviyo, with
/// single-event batches).
const EMPTY_HANDLER_TARGET: f64 = 0.65;
/// The receiver's throughput target against the Node.js receiver (the issue's).
const NODE_TARGET: f64 = 4.0;
/// The events of a large Klaviyo batch.
const BATCH_EVENTS: usize = 50;
/// The profiles a large Klaviyo batch's events are spread over (so: the tasks it becomes).
const BATCH_PROFILES: usize = 10;
/// The Klaviyo account the bench tenant authorised.
const KLAVIYO_ACCOUNT_ID: &str = "BeNcH1";
/// The list of the list topics' events.
const KLAVIYO_LIST_ID: &str = "BnChLs";
/// The longest a Klaviyo pool is sent for (warm-up and run): `meta.timestamp` must be within
/// 5 minutes of now when a batch arrives, and the pool is made just before the warm-up.
const MAX_KLAVIYO_RUN: Duration = Duration::from_secs(240);
/// The topics of the Klaviyo events, in turn (all acted on: each makes a task).
const KLAVIYO_TOPICS: [&str; 6] = [
    topics::UNSUBSCRIBED_FROM_EMAIL,
    topics::SUBSCRIBED_TO_EMAIL,
    topics::UNSUBSCRIBED_FROM_SMS,
    topics::SUBSCRIBED_TO_SMS,
    topics::SUBSCRIBED_TO_LIST,
    topics::UNSUBSCRIBED_FROM_LIST,
];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench-ingest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A receiver measured (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Omneo,
    Klaviyo,
}

/// How the load is generated.
struct Options {
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: u32,
    /// Only this receiver's rows (both when `None`).
    only: Option<Part>,
}

impl Options {
    fn from_args() -> anyhow::Result<Self> {
        let mut options = Self {
            rounds: 3,
            seconds: 10,
            warmup: 2,
            connections: 32,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            let number = || format!("{flag} takes a positive whole number, not {value:?}");
            match flag.as_str() {
                "--rounds" => options.rounds = value.parse().with_context(number)?,
                "--seconds" => options.seconds = value.parse().with_context(number)?,
                "--warmup" => options.warmup = value.parse().with_context(number)?,
                "--connections" => options.connections = value.parse().with_context(number)?,
                "--only" => {
                    options.only = Some(match value.as_str() {
                        "omneo" => Part::Omneo,
                        "klaviyo" => Part::Klaviyo,
                        _ => anyhow::bail!("--only takes omneo or klaviyo, not {value:?}"),
                    });
                }
                _ => anyhow::bail!(
                    "unknown option {flag} (--rounds, --seconds, --warmup, --connections, --only)"
                ),
            }
        }
        anyhow::ensure!(
            options.rounds > 0 && options.seconds > 0 && options.connections > 0,
            "--rounds, --seconds and --connections must be over 0"
        );
        anyhow::ensure!(
            !options.includes(Part::Klaviyo)
                || Duration::from_secs(options.warmup.saturating_add(options.seconds))
                    <= MAX_KLAVIYO_RUN,
            "--warmup plus --seconds may be at most {}s: a Klaviyo batch's meta.timestamp must be \
             within 5 minutes of its arrival (or use --only omneo)",
            MAX_KLAVIYO_RUN.as_secs()
        );
        Ok(options)
    }

    /// Whether `part`'s rows are measured.
    fn includes(&self, part: Part) -> bool {
        self.only.is_none_or(|only| only == part)
    }
}

/// What a target is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// The signed Omneo deliveries (`ingest.lua`).
    Omneo,
    /// Signed Klaviyo system-webhook batches of `events` events (`ingest.lua`), made afresh
    /// before each run.
    Klaviyo { events: usize },
}

/// One thing the load is sent to.
struct Target {
    name: &'static str,
    port: u16,
    path: String,
    load: Load,
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// Answers with an error status (4xx, 5xx), and connections that failed.
    failures: u64,
}

fn run() -> anyhow::Result<bool> {
    let options = Options::from_args()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    anyhow::ensure!(
        cores >= 2,
        "needs 2 cores (server on core {SERVER_CORE}, wrk on core {LOAD_CORE}); this process may use {cores}"
    );
    for tool in ["taskset", "wrk", "node"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        anyhow::ensure!(
            found,
            "{tool} is not installed (`make bench` installs wrk: apt-get install wrk)"
        );
    }
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("the directory of this executable")?;
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let work_dir = std::env::temp_dir().join(format!("bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let result = measure(&options, &exe_dir, &bench_dir, &work_dir);
    // The bodies files are the only things written there.
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

/// The rows of one receiver: its targets' places in the list of targets, and the servers to
/// stop (and report on) once the rounds are done.
struct PartRows {
    targets: Range<usize>,
    servers: Vec<Server>,
}

fn measure(
    options: &Options,
    exe_dir: &Path,
    bench_dir: &Path,
    work_dir: &Path,
) -> anyhow::Result<bool> {
    let secret = shared::crypto::random_secret(32);
    let secret = secret.expose_secret();
    let klaviyo_secret = shared::crypto::random_secret(32);
    let klaviyo = KlaviyoPool::new(klaviyo_secret.expose_secret());
    let env = [
        ("BENCH_TENANT", TENANT),
        ("BENCH_OMNEO_SIGNING_SECRET", secret),
        ("BENCH_KLAVIYO_WEBHOOK_SECRET", klaviyo.secret.as_str()),
        ("BENCH_KLAVIYO_WEBHOOK_ID", klaviyo.webhook_id.as_str()),
        ("BENCH_KLAVIYO_ACCOUNT_ID", KLAVIYO_ACCOUNT_ID),
    ];
    let server = exe_dir.join("bench-ingest-server");
    let mut targets = Vec::new();

    let bodies_file = work_dir.join("bodies.tsv");
    let mut mean_body = 0;
    let omneo = if options.includes(Part::Omneo) {
        let bodies = signed_bodies(secret).context("building the signed deliveries")?;
        mean_body = bodies.iter().map(|(_, body)| body.len()).sum::<usize>() / bodies.len();
        let mut lines = String::new();
        for (signature, body) in &bodies {
            writeln!(
                lines,
                "{EVENT_HEADER}: profile.updated\t{SIGNATURE_HEADER}: {signature}\t{body}"
            )?;
        }
        std::fs::write(&bodies_file, lines)?;

        let env = [&env[..], &[("BENCH_FUNCTION", "omneo-webhook")]].concat();
        let quiet = Server::start(
            "bench-ingest-server (RUST_LOG=warn)",
            &server,
            &[],
            &[&env[..], &[("RUST_LOG", "warn")]].concat(),
        )?;
        let logging = Server::start(
            "bench-ingest-server (RUST_LOG=info)",
            &server,
            &[],
            &[&env[..], &[("RUST_LOG", "info")]].concat(),
        )?;
        let node = Server::start(
            "node",
            Path::new("node"),
            &[bench_dir.join("node-receiver.js")],
            &env,
        )?;

        let webhook_path = format!("/{TENANT}/api/v1/webhooks/omneo");
        let first = targets.len();
        targets.extend([
            Target {
                name: "empty axum handler (same process)",
                port: quiet.port,
                path: "/baseline".to_owned(),
                load: Load::Omneo,
            },
            Target {
                name: "omneo-webhook receiver",
                port: quiet.port,
                path: webhook_path.clone(),
                load: Load::Omneo,
            },
            Target {
                name: "omneo-webhook receiver, request logs on",
                port: logging.port,
                path: webhook_path.clone(),
                load: Load::Omneo,
            },
            Target {
                name: "Node.js http receiver",
                port: node.port,
                path: webhook_path,
                load: Load::Omneo,
            },
        ]);
        let (signature, body) = &bodies[0];
        for target in &targets[first..] {
            let (status, answer) = post(
                target.port,
                &target.path,
                &[
                    (EVENT_HEADER, "profile.updated"),
                    (SIGNATURE_HEADER, signature),
                ],
                body,
            )?;
            println!(
                "{}: POST {} → {status} {}",
                target.name,
                target.path,
                answer.body.trim()
            );
        }
        Some(PartRows {
            targets: first..targets.len(),
            servers: vec![quiet, logging, node],
        })
    } else {
        None
    };

    let klaviyo_rows = if options.includes(Part::Klaviyo) {
        let env = [&env[..], &[("BENCH_FUNCTION", "klaviyo-webhook")]].concat();
        let quiet = Server::start(
            "bench-ingest-server klaviyo-webhook (RUST_LOG=warn)",
            &server,
            &[],
            &[&env[..], &[("RUST_LOG", "warn")]].concat(),
        )?;
        let node = Server::start(
            "node (klaviyo)",
            Path::new("node"),
            &[bench_dir.join("node-klaviyo-receiver.js")],
            &env,
        )?;
        let webhook_path = format!("/{TENANT}/api/v1/webhooks/klaviyo/system");
        let first = targets.len();
        for (events, [baseline, receiver, node_receiver]) in [
            (
                1,
                [
                    "empty axum handler (same process), 1-event batches",
                    "klaviyo-webhook receiver, 1-event batches",
                    "Node.js http receiver, 1-event batches",
                ],
            ),
            (
                BATCH_EVENTS,
                [
                    "empty axum handler (same process), 50-event batches",
                    "klaviyo-webhook receiver, 50-event batches",
                    "Node.js http receiver, 50-event batches",
                ],
            ),
        ] {
            let load = Load::Klaviyo { events };
            targets.extend([
                Target {
                    name: baseline,
                    port: quiet.port,
                    path: "/baseline".to_owned(),
                    load,
                },
                Target {
                    name: receiver,
                    port: quiet.port,
                    path: webhook_path.clone(),
                    load,
                },
                Target {
                    name: node_receiver,
                    port: node.port,
                    path: webhook_path.clone(),
                    load,
                },
            ]);
        }
        for target in &targets[first..] {
            let Load::Klaviyo { events } = target.load else {
                unreachable!("the Klaviyo targets are sent Klaviyo batches");
            };
            let (signature, timestamp, body) = klaviyo.batch(0, events);
            let (status, answer) = post(
                target.port,
                &target.path,
                &[
                    ("Klaviyo-Webhook-Id", &klaviyo.webhook_id),
                    ("Klaviyo-Timestamp", &timestamp),
                    ("Klaviyo-Signature", &signature),
                ],
                &body,
            )?;
            println!(
                "{}: POST {} ({} B) → {status}{}{} {}",
                target.name,
                target.path,
                body.len(),
                answer
                    .header("x-task-status")
                    .map(|value| format!(", x-task-status {value}"))
                    .unwrap_or_default(),
                answer
                    .header("x-task-count")
                    .map(|value| format!(", x-task-count {value}"))
                    .unwrap_or_default(),
                answer.body.trim()
            );
            anyhow::ensure!(
                status == 202,
                "{} answered a signed {events}-event batch {status}, not 202: {}",
                target.name,
                answer.body.trim()
            );
        }
        Some(PartRows {
            targets: first..targets.len(),
            servers: vec![quiet, node],
        })
    } else {
        None
    };
    println!();

    let script = bench_dir.join("ingest.lua");
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 1..=options.rounds {
        for (target, target_runs) in targets.iter().zip(&mut runs) {
            let load = match target.load {
                Load::Omneo => WrkLoad {
                    script: &script,
                    args: vec![
                        bodies_file.clone().into_os_string(),
                        target.path.clone().into(),
                    ],
                },
                Load::Klaviyo { events } => {
                    // Made now: the batches' meta.timestamp must be recent when they arrive.
                    let file = work_dir.join(format!("klaviyo-{events}.tsv"));
                    klaviyo
                        .write_pool(events, &file)
                        .context("building the signed Klaviyo batches")?;
                    WrkLoad {
                        script: &script,
                        args: vec![file.into_os_string(), target.path.clone().into()],
                    }
                }
            };
            if options.warmup > 0 {
                wrk(options, options.warmup, &load, target)?;
            }
            let run = wrk(options, options.seconds, &load, target)?;
            eprintln!(
                "round {round}/{}: {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms{}",
                options.rounds,
                target.name,
                run.requests_per_second,
                run.p50_us / 1000.0,
                run.p99_us / 1000.0,
                failures_note(run.failures)
            );
            target_runs.push(run);
        }
    }

    if let Some(mut rows) = omneo {
        let [quiet, logging, node] = &mut rows.servers[..] else {
            unreachable!("three Omneo servers");
        };
        let quiet_report = quiet.stop()?;
        let logging_report = logging.stop()?;
        let node_report = node.stop()?;
        let targets = &targets[rows.targets.clone()];
        let runs = &runs[rows.targets];

        println!(
            "ingest: signed Omneo `profile.updated` deliveries of {PROFILES} demo profiles \
             ({mean_body} B of JSON on average) sent round-robin; wrk -t1 -c{} -d{}s (after a {} s \
             warm-up) on core {LOAD_CORE}, servers on core {SERVER_CORE}, loopback; {} interleaved \
             rounds, medians; the Rust server logs at warn (no line per request) unless its row \
             says otherwise\n",
            options.connections, options.seconds, options.warmup, options.rounds
        );
        println!("| target | req/s | p50 | p99 | × empty handler |");
        println!("|---|---|---|---|---|");
        let [baseline, receiver, receiver_logging, node_runs] = runs else {
            unreachable!("one list of runs per target");
        };
        for (target, target_runs) in targets.iter().zip(runs) {
            println!(
                "| {}{} | {:.0} | {:.2} ms | {:.2} ms | {:.2} |",
                target.name,
                invalid_note(target_runs),
                median(target_runs.iter().map(|run| run.requests_per_second)),
                median(target_runs.iter().map(|run| run.p50_us)) / 1000.0,
                median(target_runs.iter().map(|run| run.p99_us)) / 1000.0,
                throughput_ratio(target_runs, baseline),
            );
        }
        let over_empty = throughput_ratio(receiver, baseline);
        let over_node = throughput_ratio(receiver, node_runs);
        println!();
        println!(
            "receiver ÷ empty handler: {over_empty:.2} (target ≥ {EMPTY_HANDLER_TARGET}: {})",
            verdict(over_empty >= EMPTY_HANDLER_TARGET)
        );
        println!(
            "receiver ÷ Node.js: {over_node:.2}× (target ≥ {NODE_TARGET}×: {})",
            verdict(over_node >= NODE_TARGET)
        );
        println!(
            "receiver with production's request logs (RUST_LOG=info, one JSON line per request) ÷ \
             without: {:.2}",
            throughput_ratio(receiver_logging, receiver)
        );
        println!(
            "accepted tasks held: Rust servers' paused queues {quiet_report} and {logging_report}; \
             Node.js array {node_report}"
        );
    }

    if let Some(mut rows) = klaviyo_rows {
        let [quiet, node] = &mut rows.servers[..] else {
            unreachable!("two Klaviyo servers");
        };
        let quiet_report = quiet.stop()?;
        let node_report = node.stop()?;
        let targets = &targets[rows.targets.clone()];
        let runs = &runs[rows.targets];
        if options.includes(Part::Omneo) {
            println!();
        }
        println!(
            "ingest: signed Klaviyo system-webhook batches (POST …/webhooks/klaviyo/system) of 1 \
             event ({} B) and of {BATCH_EVENTS} events over {BATCH_PROFILES} profiles ({} B), \
             consent events of {PROFILES} profiles, each pool made afresh before its run and sent \
             round-robin (after a pass, batches recur: their tasks exist); wrk -t1 -c{} -d{}s \
             (after a {} s warm-up) on core {LOAD_CORE}, servers on core {SERVER_CORE}, loopback; \
             {} interleaved rounds, medians; the Rust server logs at warn; × empty handler: \
             against the empty handler sent the same batches\n",
            klaviyo.batch(0, 1).2.len(),
            klaviyo.batch(0, BATCH_EVENTS).2.len(),
            options.connections,
            options.seconds,
            options.warmup,
            options.rounds
        );
        println!("| target | req/s | events/s | p50 | p99 | × empty handler |");
        println!("|---|---|---|---|---|---|");
        for (targets, runs) in targets.chunks(3).zip(runs.chunks(3)) {
            let baseline = &runs[0];
            for (row, (target, target_runs)) in targets.iter().zip(runs).enumerate() {
                let Load::Klaviyo { events } = target.load else {
                    unreachable!("the Klaviyo targets are sent Klaviyo batches");
                };
                let requests = median(target_runs.iter().map(|run| run.requests_per_second));
                // The empty handler takes the batches in but handles no event.
                let events_per_second = if row == 0 {
                    "—".to_owned()
                } else {
                    format!("{:.0}", requests * events as f64)
                };
                println!(
                    "| {}{} | {requests:.0} | {events_per_second} | {:.2} ms | {:.2} ms | {:.2} |",
                    target.name,
                    invalid_note(target_runs),
                    median(target_runs.iter().map(|run| run.p50_us)) / 1000.0,
                    median(target_runs.iter().map(|run| run.p99_us)) / 1000.0,
                    throughput_ratio(target_runs, baseline),
                );
            }
        }
        let [
            single_baseline,
            single,
            single_node,
            batch_baseline,
            batch,
            batch_node,
        ] = runs
        else {
            unreachable!("one list of runs per target");
        };
        let single_over_empty = throughput_ratio(single, single_baseline);
        let single_over_node = throughput_ratio(single, single_node);
        let batch_over_node = throughput_ratio(batch, batch_node);
        println!();
        println!(
            "klaviyo-webhook ÷ empty handler, 1-event batches: {single_over_empty:.2} (target ≥ \
             {EMPTY_HANDLER_TARGET}: {})",
            verdict(single_over_empty >= EMPTY_HANDLER_TARGET)
        );
        println!(
            "klaviyo-webhook ÷ empty handler, {BATCH_EVENTS}-event batches: {:.2} (no target)",
            throughput_ratio(batch, batch_baseline)
        );
        println!(
            "klaviyo-webhook ÷ Node.js, 1-event batches: {single_over_node:.2}× (target ≥ \
             {NODE_TARGET}×: {})",
            verdict(single_over_node >= NODE_TARGET)
        );
        println!(
            "klaviyo-webhook ÷ Node.js, {BATCH_EVENTS}-event batches: {batch_over_node:.2}× \
             (target ≥ {NODE_TARGET}×: {})",
            verdict(batch_over_node >= NODE_TARGET)
        );
        println!(
            "accepted tasks held: Rust server's paused queues {quiet_report}; Node.js array \
             {node_report}"
        );
    }

    let mut valid = true;
    for (target, target_runs) in targets.iter().zip(&runs) {
        let failures: u64 = target_runs.iter().map(|run| run.failures).sum();
        if failures > 0 {
            valid = false;
            eprintln!(
                "bench-ingest: {} answered {failures} requests with an error status or failed \
                 them: its figures are not a measurement",
                target.name
            );
        }
    }
    Ok(valid)
}

/// The note after a target's name when some of its requests failed.
fn invalid_note(runs: &[Run]) -> &'static str {
    if runs.iter().any(|run| run.failures > 0) {
        " (not valid: errors)"
    } else {
        ""
    }
}

/// The median over the rounds of `runs`' throughput divided by `reference`'s in the same round.
fn throughput_ratio(runs: &[Run], reference: &[Run]) -> f64 {
    median(
        runs.iter()
            .zip(reference)
            .map(|(run, reference)| run.requests_per_second / reference.requests_per_second),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn failures_note(failures: u64) -> String {
    if failures == 0 {
        String::new()
    } else {
        format!(" ({failures} failed or non-2xx)")
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

/// [`PROFILES`] demo profiles as the Omneo simulator stores (and delivers) them, each with its
/// `X-Omneo-Hmac-SHA256` under `secret`: (signature, body).
fn signed_bodies(secret: &str) -> anyhow::Result<Vec<(String, String)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sim = OmneoSim::start(OmneoSimOptions::default().tenant(TenantSpec::new(
            TENANT,
            "bench-omneo-token",
            "klaviyo",
            secret,
        )))
        .await?;
        (1..=PROFILES)
            .map(|n| {
                let profile = sim.seed_profile(TENANT, NewProfile::demo(n))?;
                let body = serde_json::to_string(&profile)?;
                Ok((sign(secret, body.as_bytes()), body))
            })
            .collect()
    })
}

/// Klaviyo system-webhook batches for the bench tenant, as the Klaviyo simulator delivers them
/// (`harness::klaviyo::deliveries`): its webhook's secret and id, and [`PROFILES`] profiles.
struct KlaviyoPool {
    /// The webhook's `secret_key` (the tenant's `webhook_secret`).
    secret: String,
    /// The webhook's id (`Klaviyo-Webhook-Id`, `meta.klaviyo_webhook_id`).
    webhook_id: String,
    /// Klaviyo profile ids and emails.
    profiles: Vec<(String, String)>,
}

impl KlaviyoPool {
    fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            webhook_id: ulid::Ulid::new().to_string(),
            profiles: (1..=PROFILES)
                .map(|n| {
                    (
                        ulid::Ulid::new().to_string(),
                        format!("bench-{n}@example.com"),
                    )
                })
                .collect(),
        }
    }

    /// How many profiles a batch of `events` events is spread over.
    fn profiles_per_batch(events: usize) -> usize {
        events.clamp(1, BATCH_PROFILES)
    }

    /// The `index`th batch of `events` new events, made now and signed: its events are about
    /// the next [`Self::profiles_per_batch`] profiles, in turn; (signature, timestamp, body).
    fn batch(&self, index: usize, events: usize) -> (String, String, String) {
        let spread = Self::profiles_per_batch(events);
        let data: Vec<Value> = (0..events)
            .map(|k| {
                let profile = (index * spread + k % spread) % self.profiles.len();
                let (profile, email) = &self.profiles[profile];
                let topic = KLAVIYO_TOPICS[(index * events + k) % KLAVIYO_TOPICS.len()];
                let mut event = SystemEvent::new(topic, profile, Some(email));
                if topic.contains("_list") {
                    event = event.list_id(KLAVIYO_LIST_ID);
                }
                json!({
                    "topic": event.topic,
                    "external_id": event.external_id,
                    "payload": {"data": event.payload()}
                })
            })
            .collect();
        let body = json!({
            "data": data,
            "meta": {
                "klaviyo_account_id": KLAVIYO_ACCOUNT_ID,
                "klaviyo_webhook_id": self.webhook_id,
                "timestamp": jiff::Timestamp::now(),
                "version": REVISION
            }
        })
        .to_string();
        let timestamp = httpdate::fmt_http_date(SystemTime::now());
        let signature = deliveries::sign(&self.secret, body.as_bytes(), &timestamp);
        (signature, timestamp, body)
    }

    /// Writes a pool of batches of `events` events covering every profile once to `file`, one
    /// request a line: its headers, then its body, tab-separated (`ingest.lua`'s input).
    fn write_pool(&self, events: usize, file: &Path) -> anyhow::Result<()> {
        let batches = self.profiles.len() / Self::profiles_per_batch(events);
        let mut lines = String::new();
        for index in 0..batches {
            let (signature, timestamp, body) = self.batch(index, events);
            writeln!(
                lines,
                "Klaviyo-Webhook-Id: {}\tKlaviyo-Timestamp: {timestamp}\tKlaviyo-Signature: {signature}\t{body}",
                self.webhook_id
            )?;
        }
        std::fs::write(file, lines)?;
        Ok(())
    }
}

/// The wrk script a target is loaded with, and its arguments.
struct WrkLoad<'a> {
    script: &'a Path,
    args: Vec<std::ffi::OsString>,
}

/// One `wrk` run of `seconds` against `target`, pinned to [`LOAD_CORE`].
fn wrk(
    options: &Options,
    seconds: u64,
    load: &WrkLoad<'_>,
    target: &Target,
) -> anyhow::Result<Run> {
    let output = Command::new("taskset")
        .args(["-c", LOAD_CORE, "wrk", "-t1"])
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout=5s")
        .arg("-s")
        .arg(load.script)
        .arg(format!("http://127.0.0.1:{}{}", target.port, target.path))
        .arg("--")
        .args(&load.args)
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk against {} failed ({}): {}{}",
        target.name,
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("BENCH "))
        .with_context(|| format!("no BENCH line in wrk's output: {stdout}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse::<f64>()
            .with_context(|| format!("{name} in {line:?}"))
    };
    let requests = field("requests")?;
    let duration_us = field("duration_us")?;
    anyhow::ensure!(duration_us > 0.0, "wrk ran for no time: {line:?}");
    Ok(Run {
        requests_per_second: requests / (duration_us / 1e6),
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        failures: (field("non2xx")? + field("socket_errors")?) as u64,
    })
}

/// An HTTP answer: its head's header lines and its body.
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One JSON `body` POSTed to `path` with `headers`, on a fresh connection: the status and the
/// answer.
fn post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, Answer)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n"
    );
    for (name, value) in headers {
        write!(request, "{name}: {value}\r\n")?;
    }
    write!(request, "Content-Length: {}\r\n\r\n{body}", body.len())?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        status,
        Answer {
            head: head.to_owned(),
            body: body.to_owned(),
        },
    ))
}

/// A server process pinned to [`SERVER_CORE`]; killed if dropped before [`Server::stop`].
struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `program args…` on a free port (`PORT`) with only `env` (and `PATH`), and waits for
    /// its `GET /health` to answer 200.
    fn start(
        name: &'static str,
        program: &Path,
        args: &[PathBuf],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("taskset")
            .args(["-c", SERVER_CORE])
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Self { name, child, port };
        let began = Instant::now();
        while !harness::process::health_ok(port) {
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("{name} exited with {status}: {}", server.stderr());
            }
            anyhow::ensure!(
                began.elapsed() < START_TIMEOUT,
                "{name} did not answer GET /health within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Sends SIGTERM, waits for the exit and returns the last line the server wrote on stderr.
    fn stop(&mut self) -> anyhow::Result<String> {
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(terminated.success(), "could not signal {}", self.name);
        let began = Instant::now();
        while self.child.try_wait()?.is_none() {
            anyhow::ensure!(
                began.elapsed() < STOP_TIMEOUT,
                "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let stderr = self.stderr();
        Ok(stderr.lines().last().unwrap_or("(no report)").to_owned())
    }

    /// What the (exited) server wrote on stderr.
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
