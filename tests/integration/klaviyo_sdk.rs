//! The Klaviyo simulator checked by a client nobody here wrote: Klaviyo's official Python SDK
//! (PyPI `klaviyo-api`, pinned in `tests/klaviyo-sdk/requirements.txt`, installed into `.venv` by
//! `make venv`) deserialises every response into models generated from Klaviyo's OpenAPI schemas.
//! `tests/klaviyo-sdk/conformance.py` calls every endpoint the simulator serves through it; a
//! response the SDK cannot parse, or a request the SDK writes that the simulator refuses, fails.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use harness::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use harness::sim::SimServer;

/// The repository root (the harness crate lives in `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The venv's Python (`$VENV`, as the Makefile and `tests/emulators.sh` name it, else `.venv`).
fn venv_python() -> PathBuf {
    let root = repo_root();
    let venv = std::env::var_os("VENV").map_or_else(|| root.join(".venv"), |v| root.join(v));
    let python = venv.join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run `make venv` (it installs the pinned Klaviyo SDK)",
        python.display()
    );
    python
}

/// Runs the conformance script against `base_url` (it exits 1 naming every failed call, and
/// says `make venv` when the SDK is missing or not the pinned version).
async fn conformance(base_url: &str, access_token: &str) -> Output {
    let script = repo_root().join("tests/klaviyo-sdk/conformance.py");
    let run = tokio::process::Command::new(venv_python())
        .arg(&script)
        .arg(base_url)
        .arg(access_token)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the conformance script finished within 120 s")
        .expect("the conformance script started")
}

/// The script's stdout and stderr, for assertion messages.
fn transcript(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn every_simulator_endpoint_answers_in_klaviyos_schema() {
    // Rate limits are tested elsewhere; here a 429 would only make the check flaky.
    let sim = KlaviyoSim::start(KlaviyoSimOptions::default().without_rate_limits())
        .await
        .unwrap();
    sim.create_list("Omneo Members");
    let token = sim.grant_tokens().access_token;

    let started = Instant::now();
    let output = conformance(sim.url(), &token).await;
    let transcript = transcript(&output);
    assert!(
        output.status.success(),
        "the Klaviyo SDK rejected the simulator ({}):\n{transcript}",
        output.status
    );
    eprintln!("{transcript}conformance took {:?}", started.elapsed());

    // Every endpoint the simulator serves was called, so one added later must be added to the
    // script too.
    let requests = sim.recorder().requests();
    let uncalled: Vec<String> = sim
        .endpoints()
        .iter()
        .filter(|e| !requests.iter().any(|r| e.matches(&r.method, &r.path)))
        .map(ToString::to_string)
        .collect();
    assert!(
        uncalled.is_empty(),
        "tests/klaviyo-sdk/conformance.py does not call {uncalled:?}"
    );
}

#[tokio::test]
async fn the_sdk_rejects_a_response_outside_klaviyos_schema() {
    // Every call answers an account collection whose account lacks `attributes` and `links`.
    let body = r#"{"data":[{"type":"account","id":"A1"}],"links":{"self":"http://x/"}}"#;
    let stub = Router::new().fallback(move || async move {
        ([(header::CONTENT_TYPE, "application/vnd.api+json")], body)
    });
    let server = SimServer::spawn(stub, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();

    let output = conformance(&server.url, "any-token").await;
    let transcript = transcript(&output);
    assert_eq!(output.status.code(), Some(1), "{transcript}");
    let accounts = transcript
        .lines()
        .find(|l| l.contains("get_accounts"))
        .unwrap_or_default();
    assert!(
        accounts.starts_with("FAIL") && accounts.contains("not in Klaviyo's schema"),
        "get_accounts should fail on the missing members:\n{transcript}"
    );
}
