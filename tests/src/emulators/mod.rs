//! Launchers for Google's Firestore emulator and the Cloud Tasks emulator: each starts the real
//! process on a free port, waits until it accepts connections, and kills it on drop.

pub mod cloud_tasks;
pub mod firestore;
