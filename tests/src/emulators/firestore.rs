//! The Firestore emulator the test run shares.
//!
//! `make test` starts one emulator for the whole run (`tests/emulators.sh`) and exports its address
//! as `FIRESTORE_EMULATOR_HOST`; tests isolate themselves from each other by project id.

/// The variable that names the emulator's `host:port`.
const HOST_VARIABLE: &str = "FIRESTORE_EMULATOR_HOST";

/// The shared emulator's `host:port` (no scheme).
///
/// # Panics
/// When the emulator was not started, with a message that says how to start it.
pub fn emulator_host() -> String {
    match std::env::var(HOST_VARIABLE) {
        Ok(host) if !host.trim().is_empty() => host.trim().to_owned(),
        _ => panic!(
            "{HOST_VARIABLE} is not set: run the tests with `make test`, which starts the emulators (tests/emulators.sh)"
        ),
    }
}

/// A project id no other test uses (`test-<uuid>`): the emulator keeps one database per project,
/// so a test in its own project sees only its own documents.
pub fn unique_project_id() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}
