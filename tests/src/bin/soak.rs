//! `make soak`: the fault-injection soak at full size (`harness::soak::Plan::full`), first on
//! the memory store, then on the Firestore emulator. Prints each run's totals and exits non-zero
//! when a run differs from its oracle.

use std::process::ExitCode;

use harness::soak::{self, Plan, StoreChoice};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut passed = true;
    for store in [StoreChoice::Memory, StoreChoice::Firestore] {
        let report = soak::run(Plan::full(store)).await?;
        println!("{report}");
        passed &= report.passed();
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
