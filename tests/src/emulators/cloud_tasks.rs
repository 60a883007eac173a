//! The Cloud Tasks emulator (PyPI `gcloud-tasks-emulator`) shared by the whole test run.
//!
//! `tests/emulators.sh` (run by `make test`) starts one emulator and exports its address as
//! `CLOUD_TASKS_EMULATOR_HOST`; tests isolate themselves with unique project and queue names.

/// The variable carrying the emulator's `host:port`.
pub const EMULATOR_HOST_VAR: &str = "CLOUD_TASKS_EMULATOR_HOST";

/// The running emulator's `host:port`.
///
/// # Panics
/// When `CLOUD_TASKS_EMULATOR_HOST` is unset or empty, with a one-line hint.
pub fn emulator_host() -> String {
    match std::env::var(EMULATOR_HOST_VAR) {
        Ok(host) if !host.trim().is_empty() => host.trim().to_owned(),
        _ => panic!(
            "{EMULATOR_HOST_VAR} is not set: run the tests with `make test` (tests/emulators.sh starts the Cloud Tasks emulator and exports it)"
        ),
    }
}
