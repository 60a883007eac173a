//! `omneo-webhook`: serves [`shared::functions::omneo_webhook`] on Cloud Run (or AWS Lambda).

fn main() -> std::process::ExitCode {
    shared::runtime::run_function("omneo-webhook", shared::functions::omneo_webhook::router)
}
