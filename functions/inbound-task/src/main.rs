//! `inbound-task`: serves [`shared::functions::inbound_task`] on Cloud Run (or AWS Lambda).

fn main() -> std::process::ExitCode {
    shared::runtime::run_function("inbound-task", shared::functions::inbound_task::router)
}
