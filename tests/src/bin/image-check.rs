//! `make image-check`: the container image, without a Docker engine. Checks the `Dockerfile`
//! against the workspace (`harness::image::check`), then runs each function's release binary —
//! what the Dockerfile copies — as Cloud Run would: on a free `PORT`, `GET /health` must answer
//! 200 naming the function in time, SIGTERM must end it with status 0, and without
//! `OPERATOR_TOKEN` it must exit non-zero with one line on stderr naming the variable.
//!
//! The environment is production's minus the cloud: `STORE=memory` and `QUEUE=local`, since no
//! Firestore or Cloud Tasks is reachable here (`make test` runs both against their emulators).
//! The binaries are read from `$CARGO_TARGET_DIR/release` (default `target/release`), unrebuilt.
//! Prints one line per check and exits non-zero when any failed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use harness::image::{self, Check};
use harness::process;

/// How long a function may take to answer its first `GET /health`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a function may take to exit after SIGTERM: Cloud Run sends SIGKILL 10 s later.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The required variable left out to see a configuration failure.
const LEFT_OUT: &str = "OPERATOR_TOKEN";

fn main() -> anyhow::Result<ExitCode> {
    let root = image::workspace_root();
    let functions = image::function_crates(root)?;
    let dockerfile_path = root.join("Dockerfile");
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("release");
    println!(
        "image-check: {} against {} function crates; binaries from {}, run with STORE=memory QUEUE=local (no cloud here)",
        dockerfile_path.display(),
        functions.len(),
        release.display()
    );
    let mut failed = 0;
    let mut passed = 0;
    let mut report = |check: Check| {
        println!("{check}");
        if check.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    };
    image::check(&dockerfile, &functions)
        .into_iter()
        .for_each(&mut report);
    for name in &functions {
        let binary = release.join(name);
        if !binary.is_file() {
            report(Check::new(
                format!("{name}: release binary {}", binary.display()),
                Some("not found (cargo build --release first)".into()),
            ));
            continue;
        }
        let (health, stop) = serve_and_stop(&binary, name);
        report(outcome(
            format!("{name}: GET /health answers 200 naming the function within {START_TIMEOUT:?}"),
            health,
        ));
        report(outcome(
            format!("{name}: SIGTERM ends it with status 0 within {STOP_TIMEOUT:?}"),
            stop,
        ));
        report(outcome(
            format!("{name}: without {LEFT_OUT} it exits non-zero, one stderr line naming it"),
            missing_variable(&binary),
        ));
    }
    println!("image-check: {passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A check of `what` from a step's result: its detail on success, its error chain on failure.
fn outcome(what: String, result: anyhow::Result<String>) -> Check {
    match result {
        Ok(detail) => Check::new(format!("{what} ({detail})"), None),
        Err(e) => Check::new(what, Some(format!("{e:#}"))),
    }
}

/// Starts `binary`, waits for its health answer, then stops it with SIGTERM: the outcome of each
/// half.
fn serve_and_stop(binary: &Path, name: &str) -> (anyhow::Result<String>, anyhow::Result<String>) {
    let started = process::free_port().and_then(|port| {
        let child = process::function_command(binary, port)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok((port, child))
    });
    let (port, mut child) = match started {
        Ok(started) => started,
        Err(e) => return (Err(e.into()), Err(anyhow::anyhow!("not started"))),
    };
    let began = Instant::now();
    let health = process::wait_for(&mut child, began + START_TIMEOUT, || {
        process::health_body(port)
    })
    .and_then(|body| {
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        anyhow::ensure!(
            answer["status"] == "ok" && answer["function"] == name,
            "it answered {body}"
        );
        Ok(format!(
            "{body} in {:.1} ms",
            began.elapsed().as_secs_f64() * 1e3
        ))
    });
    let stop = match child.try_wait() {
        Ok(None) => stop(&mut child),
        _ => Err(anyhow::anyhow!("not running")),
    };
    let _ = child.kill();
    let _ = child.wait();
    let health = health.map_err(|e| anyhow::anyhow!("{e:#}; stderr {:?}", stderr_of(&mut child)));
    (health, stop)
}

/// SIGTERM, then the exit status, which must be 0.
fn stop(child: &mut Child) -> anyhow::Result<String> {
    let began = Instant::now();
    process::terminate(child)?;
    let status = process::wait_exit(child, STOP_TIMEOUT)?;
    anyhow::ensure!(status.success(), "{status}, stderr {:?}", stderr_of(child));
    Ok(format!(
        "{status} after {:.1} ms",
        began.elapsed().as_secs_f64() * 1e3
    ))
}

/// Runs `binary` without [`LEFT_OUT`]: it must exit non-zero with one stderr line naming it.
fn missing_variable(binary: &Path) -> anyhow::Result<String> {
    let mut child = process::function_command(binary, process::free_port()?)
        .env_remove(LEFT_OUT)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = process::wait_exit(&mut child, START_TIMEOUT)?;
    let stderr = stderr_of(&mut child);
    anyhow::ensure!(!status.success(), "{status}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [line] if line.contains(LEFT_OUT) => Ok(format!("{status}, stderr {line:?}")),
        _ => anyhow::bail!("{status}, stderr {stderr:?}"),
    }
}

/// What the (exited) child wrote on stderr.
fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text.trim().to_owned()
}
