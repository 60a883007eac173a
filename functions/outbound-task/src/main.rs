//! `outbound-task`: serves [`shared::functions::outbound_task`] on Cloud Run (or AWS Lambda).

fn main() -> std::process::ExitCode {
    shared::runtime::run_function("outbound-task", shared::functions::outbound_task::router)
}
