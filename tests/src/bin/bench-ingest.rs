//! `make bench`, second part: how many signed Omneo profile webhooks `omneo-webhook` takes in per
//! second on one core, beside two references measured in the same run:
//!
//! - an empty axum `POST` handler served by the same server process, behind the same runtime
//!   layer (what the receiver's own work costs on top of HTTP, the layer and the body read);
//! - a Node.js `http` receiver doing the same work the idiomatic way (`tests/bench/node-receiver.js`:
//!   HMAC-SHA256 of the raw body checked with `crypto.timingSafeEqual`, `JSON.parse`, a push onto
//!   an in-memory array as its "enqueue", 202).
//!
//! The Rust server is `bench-ingest-server` (next to this executable): the real router on the
//! memory store and the local queue, tenant [`TENANT`] installed, its queues paused so accepted
//! tasks are held, not dispatched. It logs at `warn`, so the comparison is about the work the
//! receiver does; a second instance at production's `info` (a JSON line per request, to
//! `/dev/null`) gives a fourth row, the receiver as production runs it. Every server runs pinned
//! to core 0 (`taskset`; idle while another is measured), the load generator `wrk` to core 1,
//! over loopback. The bodies are [`PROFILES`] demo profiles of the Omneo simulator (about 1.2 KB
//! of JSON each), signed like Omneo signs deliveries and sent round-robin by
//! `tests/bench/ingest.lua`, so every profile recurs within each coalescing window the way a burst
//! of updates does. Rounds interleave the targets, each run after a short warm-up; the table shows
//! medians over the rounds, and the ratios are medians of each round's ratio.
//!
//! Options: `--rounds N` (3), `--seconds S` per run (10), `--warmup S` (2), `--connections C` (32).
//! Exits non-zero when a target answered with an error status (4xx, 5xx) or dropped connections:
//! its figures would mean nothing.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::omneo::{
    EVENT_HEADER, NewProfile, OmneoSim, OmneoSimOptions, SIGNATURE_HEADER, TenantSpec, sign,
};
use secrecy::ExposeSecret;

/// The tenant the deliveries are for.
const TENANT: &str = "bench";
/// How many distinct profiles the deliveries cycle through.
const PROFILES: u32 = 1000;
/// The core the servers run on.
const SERVER_CORE: &str = "0";
/// The core `wrk` runs on.
const LOAD_CORE: &str = "1";
/// How long a server may take to answer `GET /health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The receiver's throughput target against the empty handler (the issue's).
const EMPTY_HANDLER_TARGET: f64 = 0.65;
/// The receiver's throughput target against the Node.js receiver (the issue's).
const NODE_TARGET: f64 = 4.0;

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

/// How the load is generated.
struct Options {
    rounds: usize,
    seconds: u64,
    warmup: u64,
    connections: u32,
}

impl Options {
    fn from_args() -> anyhow::Result<Self> {
        let mut options = Self {
            rounds: 3,
            seconds: 10,
            warmup: 2,
            connections: 32,
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
                _ => anyhow::bail!(
                    "unknown option {flag} (--rounds, --seconds, --warmup, --connections)"
                ),
            }
        }
        anyhow::ensure!(
            options.rounds > 0 && options.seconds > 0 && options.connections > 0,
            "--rounds, --seconds and --connections must be over 0"
        );
        Ok(options)
    }
}

/// One thing the load is sent to.
struct Target {
    name: &'static str,
    port: u16,
    path: String,
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
    // The bodies file is the only thing written there.
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

fn measure(
    options: &Options,
    exe_dir: &Path,
    bench_dir: &Path,
    work_dir: &Path,
) -> anyhow::Result<bool> {
    let secret = shared::crypto::random_secret(32);
    let secret = secret.expose_secret();
    let bodies = signed_bodies(secret).context("building the signed deliveries")?;
    let mean_body = bodies.iter().map(|(_, body)| body.len()).sum::<usize>() / bodies.len();
    let bodies_file = work_dir.join("bodies.tsv");
    let mut lines = String::new();
    for (signature, body) in &bodies {
        writeln!(lines, "{signature}\t{body}")?;
    }
    std::fs::write(&bodies_file, lines)?;

    let env = [
        ("BENCH_TENANT", TENANT),
        ("BENCH_OMNEO_SIGNING_SECRET", secret),
    ];
    let server = exe_dir.join("bench-ingest-server");
    let mut quiet = Server::start(
        "bench-ingest-server (RUST_LOG=warn)",
        &server,
        &[],
        &[&env[..], &[("RUST_LOG", "warn")]].concat(),
    )?;
    let mut logging = Server::start(
        "bench-ingest-server (RUST_LOG=info)",
        &server,
        &[],
        &[&env[..], &[("RUST_LOG", "info")]].concat(),
    )?;
    let mut node = Server::start(
        "node",
        Path::new("node"),
        &[bench_dir.join("node-receiver.js")],
        &env,
    )?;

    let webhook_path = format!("/{TENANT}/api/v1/webhooks/omneo");
    let targets = [
        Target {
            name: "empty axum handler (same process)",
            port: quiet.port,
            path: "/baseline".to_owned(),
        },
        Target {
            name: "omneo-webhook receiver",
            port: quiet.port,
            path: webhook_path.clone(),
        },
        Target {
            name: "omneo-webhook receiver, request logs on",
            port: logging.port,
            path: webhook_path.clone(),
        },
        Target {
            name: "Node.js http receiver",
            port: node.port,
            path: webhook_path,
        },
    ];
    let (signature, body) = &bodies[0];
    for target in &targets {
        let (status, answer) = post(target.port, &target.path, signature, body)?;
        println!(
            "{}: POST {} → {status} {}",
            target.name,
            target.path,
            answer.trim()
        );
    }
    println!();

    let script = bench_dir.join("ingest.lua");
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 1..=options.rounds {
        for (target, target_runs) in targets.iter().zip(&mut runs) {
            if options.warmup > 0 {
                wrk(options, options.warmup, &script, &bodies_file, target)?;
            }
            let run = wrk(options, options.seconds, &script, &bodies_file, target)?;
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
    let quiet_report = quiet.stop()?;
    let logging_report = logging.stop()?;
    let node_report = node.stop()?;

    println!(
        "ingest: signed Omneo `profile.updated` deliveries of {PROFILES} demo profiles ({mean_body} B \
         of JSON on average) sent round-robin; wrk -t1 -c{} -d{}s (after a {} s warm-up) on core \
         {LOAD_CORE}, servers on core {SERVER_CORE}, loopback; {} interleaved rounds, medians; the \
         Rust server logs at warn (no line per request) unless its row says otherwise\n",
        options.connections, options.seconds, options.warmup, options.rounds
    );
    println!("| target | req/s | p50 | p99 | × empty handler |");
    println!("|---|---|---|---|---|");
    let [baseline, receiver, receiver_logging, node_runs] = &runs[..] else {
        unreachable!("one list of runs per target");
    };
    for (target, target_runs) in targets.iter().zip(&runs) {
        let failures: u64 = target_runs.iter().map(|run| run.failures).sum();
        let invalid = if failures > 0 {
            " (not valid: errors)"
        } else {
            ""
        };
        println!(
            "| {}{invalid} | {:.0} | {:.2} ms | {:.2} ms | {:.2} |",
            target.name,
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

/// One `wrk` run of `seconds` against `target`, pinned to [`LOAD_CORE`].
fn wrk(
    options: &Options,
    seconds: u64,
    script: &Path,
    bodies: &Path,
    target: &Target,
) -> anyhow::Result<Run> {
    let output = Command::new("taskset")
        .args(["-c", LOAD_CORE, "wrk", "-t1"])
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout=5s")
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{}{}", target.port, target.path))
        .arg("--")
        .arg(bodies)
        .arg(&target.path)
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

/// One signed delivery of `body` to `path`, on a fresh connection: the status and the answer.
fn post(port: u16, path: &str, signature: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{EVENT_HEADER}: profile.updated\r\n\
         {SIGNATURE_HEADER}: {signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
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
        while !harness::bench::health_ok(port) {
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
