//! The install as a person clicks it, in Debian's headless Chromium (`.ci/run` installs the
//! `chromium` package; `tests/browser/install-flow.mjs` drives it with playwright-core): the
//! install link → the Klaviyo simulator's consent page → Allow → our success page; Deny → our
//! "cancelled" page; an expired link → our help page. Each page is checked for its status, text
//! and protective headers; the screenshots stay under `target/browser/` for review.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::image::workspace_root;
use harness::local_stack::DEMO_TENANT;
use secrecy::ExposeSecret;
use serde_json::Value;
use shared::domain::TenantId;
use shared::install::link;

use crate::local_stack::start;

/// Debian's Chromium (override with `CHROMIUM`).
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Where the screenshots go: `target/browser/` (or under `CARGO_TARGET_DIR`).
fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("browser")
}

/// Runs the browser script (blocking, on its own thread) and parses what it printed.
async fn drive(input: Value) -> Value {
    let script = workspace_root().join("tests/browser/install-flow.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(input.to_string())
            .output()
            .expect("node runs (Node.js is installed by .ci/run)")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the browser script failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The headers every page of ours carries.
fn assert_protected(page: &Value) {
    let headers = &page["headers"];
    assert_eq!(headers["cache-control"], "no-store", "{page}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{page}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{page}");
    assert_eq!(
        headers["content-security-policy"], "default-src 'none'; style-src 'unsafe-inline'",
        "{page}"
    );
    assert!(
        headers["content-type"]
            .as_str()
            .is_some_and(|t| t.starts_with("text/html")),
        "{page}"
    );
}

fn assert_screenshot(page: &Value) {
    let path = page["screenshot"].as_str().expect("a screenshot path");
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1_000,
        "{path} is not a real screenshot ({} bytes)",
        png.len()
    );
}

#[tokio::test]
async fn a_person_installs_cancels_and_meets_an_expired_link_in_chromium() {
    assert!(
        std::path::Path::new(&chromium()).exists(),
        "{} is missing: install Debian's chromium package (.ci/run does)",
        chromium()
    );
    let stack = start(&[]).await;
    let klaviyo = stack.klaviyo.as_ref().expect("the Klaviyo simulator").url();
    let tenant = TenantId::parse(DEMO_TENANT).unwrap();
    let config = &stack.app.config;
    let now = jiff::Timestamp::now();
    let fresh = link::issue(&config.keyring, &tenant, now);
    let expired = link::issue(
        &config.keyring,
        &tenant,
        now - link::LIFETIME - Duration::from_secs(60),
    );
    let result = drive(serde_json::json!({
        "chromium": chromium(),
        "screenshots": screenshots(),
        "deny": fresh.url(&config.urls.oauth_callback, &tenant).as_str(),
        "allow": stack.install_link.as_str(),
        "expired": expired.url(&config.urls.oauth_callback, &tenant).as_str(),
    }))
    .await;

    // Deny: Klaviyo's consent page, then ours saying nothing was installed.
    let [consent, cancelled] = [&result["deny"][0], &result["deny"][1]];
    assert!(
        consent["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{klaviyo}/oauth/authorize?"))),
        "{consent}"
    );
    assert_eq!(consent["status"], 200, "{consent}");
    assert!(
        consent["heading"]
            .as_str()
            .is_some_and(|h| h.contains("Allow this app")),
        "{consent}"
    );
    assert_eq!(cancelled["status"], 200, "{cancelled}");
    assert_eq!(cancelled["heading"], "Install cancelled", "{cancelled}");
    assert!(
        cancelled["text"]
            .as_str()
            .is_some_and(|t| t.contains("nothing was installed or changed")),
        "{cancelled}"
    );
    assert_protected(cancelled);

    // Allow: the same consent page, then ours saying Klaviyo is connected — and it is.
    let [consent, connected] = [&result["allow"][0], &result["allow"][1]];
    assert_eq!(consent["status"], 200, "{consent}");
    assert_eq!(connected["status"], 200, "{connected}");
    assert_eq!(connected["heading"], "Klaviyo is connected", "{connected}");
    assert_eq!(
        connected["title"], "Klaviyo is connected · Omneo for Klaviyo",
        "{connected}"
    );
    assert_protected(connected);
    let status: Value = reqwest::Client::new()
        .get(format!("{}/{DEMO_TENANT}/api/v1/install", stack.url))
        .bearer_auth(stack.admin_key.expose_secret())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "installed", "{status}");

    // An expired link: our help page, 403, no redirect to Klaviyo.
    let help = &result["expired"][0];
    assert_eq!(help["status"], 403, "{help}");
    assert_eq!(help["heading"], "This install link is not valid", "{help}");
    assert!(
        help["url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&format!("{}/oauth/install?", stack.url))),
        "{help}"
    );
    assert_protected(help);

    for flow in ["deny", "allow", "expired"] {
        for page in result[flow].as_array().unwrap() {
            assert_screenshot(page);
        }
    }
}
