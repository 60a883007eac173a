//! `make bench`: cold start (exec → first 200 on `GET /health`) and idle RSS of each function
//! binary, beside the same figures for a minimal axum hello-world built in the same run.
//!
//! Rounds interleave the binaries so machine noise spreads evenly over them. Run from a release
//! build: the binaries are looked up next to this executable.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::process;

const BINARIES: [&str; 6] = [
    "hello-baseline",
    "oauth-callback",
    "klaviyo-webhook",
    "omneo-webhook",
    "inbound-task",
    "outbound-task",
];
const ROUNDS: usize = 15;
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> anyhow::Result<()> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no exe dir"))?;
    let mut starts: Vec<Vec<Duration>> = vec![Vec::new(); BINARIES.len()];
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); BINARIES.len()];
    for _ in 0..ROUNDS {
        for (i, name) in BINARIES.iter().enumerate() {
            let (start, kib) = measure(&dir.join(name))?;
            starts[i].push(start);
            rss[i].push(kib);
        }
    }
    println!(
        "cold start = exec → first 200 on GET /health; idle RSS after 300 ms; {ROUNDS} rounds, interleaved\n"
    );
    println!("| binary | start median | start p90 | start min | idle RSS median |");
    println!("|---|---|---|---|---|");
    for (i, name) in BINARIES.iter().enumerate() {
        let s = &mut starts[i];
        s.sort();
        let r = &mut rss[i];
        r.sort();
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB |",
            ms(s[s.len() / 2]),
            ms(s[s.len() * 9 / 10]),
            ms(s[0]),
            r[r.len() / 2] as f64 / 1024.0
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts one binary, polls `/health` until it answers 200, reads its RSS, stops it.
fn measure(binary: &Path) -> anyhow::Result<(Duration, u64)> {
    let port = process::free_port()?;
    let began = Instant::now();
    let mut child = process::function_command(binary, port)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    process::wait_for(&mut child, began + START_TIMEOUT, || {
        process::health_ok(port).then_some(())
    })
    .with_context(|| format!("{} on GET /health", binary.display()))?;
    let started = began.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let kib = rss_kib(child.id())?;
    child.kill()?;
    child.wait()?;
    Ok((started, kib))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}
