//! `oauth-callback`: serves [`shared::functions::oauth_callback`] on Cloud Run (or AWS Lambda).

fn main() -> std::process::ExitCode {
    shared::runtime::run_function("oauth-callback", shared::functions::oauth_callback::router)
}
