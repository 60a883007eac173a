//! Where the emulators of this test run are. `tests/emulators.sh` (run by `make test`) starts one
//! Firestore emulator and one Cloud Tasks emulator for the whole run and exports their addresses;
//! these modules read them, and tests isolate themselves with unique project and queue names.

pub mod cloud_tasks;
pub mod firestore;
