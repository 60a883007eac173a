//! Serving a router on AWS Lambda (behind API Gateway HTTP/REST APIs or an ALB) instead of binding a
//! port: the runtime polls the Lambda runtime API for events and hands each to the router as an
//! HTTP request.

use axum::Router;

/// The variable the Lambda platform sets to the runtime API's `host:port`; its presence means the
/// process runs on Lambda.
pub const RUNTIME_API_VAR: &str = "AWS_LAMBDA_RUNTIME_API";

/// Whether the process runs on AWS Lambda (`AWS_LAMBDA_RUNTIME_API` is set).
pub fn is_lambda() -> bool {
    std::env::var_os(RUNTIME_API_VAR).is_some_and(|v| !v.is_empty())
}

/// Serves `router` through the Lambda runtime API until the platform stops the process. Needs the
/// variables Lambda sets: `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`,
/// `AWS_LAMBDA_FUNCTION_VERSION`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
pub async fn serve(router: Router) -> anyhow::Result<()> {
    // lambda_runtime panics on a missing variable; name it in an error instead.
    for name in [
        RUNTIME_API_VAR,
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    ] {
        if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
            anyhow::bail!("missing environment variable {name} (set by AWS Lambda)");
        }
    }
    lambda_http::run(router)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}
