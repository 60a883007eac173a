//! Test harness: simulators of Klaviyo and Omneo (also run by `make dev`), launchers for the
//! Firestore and Cloud Tasks emulators, and helpers the integration tests share.
//!
//! The simulators are independent implementations of the wire formats in `klaviyo.md` and
//! `omneo.md`: they do not use the `shared` crate, so a bug in our clients cannot hide behind the
//! same bug in the fake.

pub mod emulators;
pub mod klaviyo;
pub mod omneo;
pub mod sim;
