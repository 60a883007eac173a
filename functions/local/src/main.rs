//! `local`: the whole system in one process for development (`make dev`) — a thin `main` over
//! [`harness::local_stack::LocalStack`], which documents what runs and which variables it reads.

use std::process::ExitCode;

use anyhow::Context as _;
use harness::local_stack::LocalStack;
use shared::config::ProcessEnv;

fn main() -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let stack = LocalStack::start(&ProcessEnv, |config| {
        shared::runtime::telemetry::init(config.log_format, None)
    })
    .await?;
    println!("{}", stack.guide);
    stack
        .run_until(shared::runtime::http::shutdown_signal()?)
        .await
}
