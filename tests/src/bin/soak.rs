//! `make soak`: the fault-injection soak at full size (`harness::soak::Plan::full`), first on
//! the memory store, then on the Firestore emulator. Prints each run's totals and exits non-zero
//! when a run differs from its oracle.
//!
//! Options, to chase a finding: `--short` runs `Plan::short` (the size inside `make test`);
//! `--store memory|firestore` runs one store only; `--seed N` changes the generators' seed.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use harness::soak::{self, Plan, StoreChoice};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let mut plan: fn(StoreChoice) -> Plan = Plan::full;
    let mut stores = vec![StoreChoice::Memory, StoreChoice::Firestore];
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => plan = Plan::short,
            "--store" => {
                stores = match args.next().as_deref() {
                    Some("memory") => vec![StoreChoice::Memory],
                    Some("firestore") => vec![StoreChoice::Firestore],
                    other => bail!("--store takes memory or firestore, not {other:?}"),
                }
            }
            "--seed" => {
                let value = args.next().context("--seed takes a number")?;
                seed = Some(value.parse().context("--seed takes a number")?);
            }
            other => bail!("unknown option {other:?} (--short, --store, --seed)"),
        }
    }
    let mut passed = true;
    for store in stores {
        let mut plan = plan(store);
        plan.seed = seed.unwrap_or(plan.seed);
        let report = soak::run(plan).await?;
        println!("{report}");
        passed &= report.passed();
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
