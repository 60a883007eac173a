//! Test harness: simulators of Klaviyo and Omneo, the local stack of `make dev` (built on them),
//! launchers for the Firestore and Cloud Tasks emulators, and helpers the integration tests share.
//!
//! The simulators (`klaviyo`, `omneo`, `sim`) are independent implementations of the wire formats
//! in `klaviyo.md` and `omneo.md`: they do not use the `shared` crate, so a bug in our clients
//! cannot hide behind the same bug in the fake. `local_stack` runs the real app (`shared`) against
//! them, and holds the simulator wiring the integration tests' `TestApp` uses too. `process` runs a
//! function's release binary as Cloud Run would (the benchmarks, `image-check`); `image` checks the
//! `Dockerfile` against the workspace's function crates; `soak` is the fault-injection soak
//! (`make soak`, and its short variant in the tests); `fuzzing` holds the bodies of the fuzz
//! targets in `tests/fuzz` (`make fuzz`), which the integration test `fuzz_corpus` runs too.

pub mod emulators;
pub mod fuzzing;
pub mod image;
pub mod klaviyo;
pub mod local_stack;
pub mod omneo;
pub mod process;
pub mod sim;
pub mod soak;
