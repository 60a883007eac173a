//! The short variant of `make load` (`tests/src/bin/bench-load.rs`): both receivers on the
//! Firestore and Cloud Tasks emulators of this test run, a few seconds of distinct signed
//! deliveries each; it fails when a request is not answered 202 or an accepted one never reaches
//! the queue's push target. The figures come from `make load`, not from here.

use std::process::Command;

#[test]
fn a_short_load_on_the_emulators_loses_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench-load"))
        .args(["--seconds", "3", "--rate", "40", "--baseline", "1"])
        .output()
        .expect("bench-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench-load failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for function in ["omneo-webhook", "klaviyo-webhook"] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(&format!("| {function} |")))
            .unwrap_or_else(|| panic!("no {function} row in:\n{stdout}"));
        assert!(
            row.contains("/ 0 of "),
            "an accepted delivery is missing: {row}"
        );
        assert!(!row.contains("/ 0 of 0 |"), "nothing was accepted: {row}");
    }
}
