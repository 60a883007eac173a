//! `klaviyo-webhook`: serves [`shared::functions::klaviyo_webhook`] on Cloud Run (or AWS Lambda).

fn main() -> std::process::ExitCode {
    shared::runtime::run_function(
        "klaviyo-webhook",
        shared::functions::klaviyo_webhook::router,
    )
}
