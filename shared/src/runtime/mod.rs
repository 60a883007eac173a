//! Running a function: configuration, telemetry, then serving its router on Cloud Run (a port,
//! with graceful shutdown on SIGTERM) or on AWS Lambda (the runtime API) — platform.md.
//!
//! | module | concern |
//! |---|---|
//! | [`telemetry`] | JSON log lines for Cloud Logging (severity, trace) or pretty ones |
//! | [`http`] | `/health`, request spans, the 256 KiB body limit, JSON fallbacks, graceful serving |
//! | [`lambda`] | serving the same router through the Lambda runtime API |

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;

use crate::app::App;
use crate::config::{Config, QueueConfig, StoreConfig};

pub mod http;
pub mod lambda;
pub mod telemetry;

/// Exit status when the configuration is unusable.
const EXIT_CONFIG: u8 = 2;

/// A function binary's whole `main`: reads [`Config`] from the environment (a problem is printed as
/// one line on stderr, exit code 2), installs telemetry, builds the [`App`] (failure is logged,
/// exit code 1) and serves `router` wrapped by [`http::wrap`] until shut down (exit code 0).
pub fn run_function(name: &'static str, router: fn(Arc<App>) -> Router) -> ExitCode {
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = telemetry::init(config.log_format, google_cloud_project(&config)) {
        eprintln!("{name}: {e:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let app = App::from_config(config).await;
        let result = match app {
            Ok(app) => serve_app(name, app, router).await,
            Err(e) => Err(e.context("cannot build the application")),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(
                    function = name,
                    error = format!("{e:#}"),
                    "function stopped"
                );
                ExitCode::FAILURE
            }
        }
    })
}

/// Serves a built app: its router, wrapped by [`http::wrap`], on `app.config.listen_addr()` or on
/// AWS Lambda (see [`serve_function`]).
pub async fn serve_app(
    name: &'static str,
    app: Arc<App>,
    router: fn(Arc<App>) -> Router,
) -> anyhow::Result<()> {
    let addr = app.config.listen_addr();
    serve_function(name, router(app), addr).await
}

/// Serves `routes`, wrapped by [`http::wrap`]: through the Lambda runtime API when
/// `AWS_LAMBDA_RUNTIME_API` is set, else on `addr` until SIGTERM or Ctrl-C, draining in-flight
/// requests for at most [`http::DRAIN_TIMEOUT`]. Logs `listening` with the bound `address`.
pub async fn serve_function(
    name: &'static str,
    routes: Router,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let router = http::wrap(name, routes);
    if lambda::is_lambda() {
        tracing::info!(
            function = name,
            "serving through the AWS Lambda runtime API"
        );
        return lambda::serve(router).await;
    }
    let shutdown = http::shutdown_signal().context("cannot install the signal handlers")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let address = listener.local_addr().context("the bound address")?;
    tracing::info!(function = name, %address, "listening");
    http::serve(listener, router, shutdown, http::DRAIN_TIMEOUT)
        .await
        .context("the server failed")?;
    tracing::info!(function = name, "stopped");
    Ok(())
}

/// The Google Cloud project the store or queue uses, which the log trace field names.
fn google_cloud_project(config: &Config) -> Option<String> {
    match (&config.store, &config.queue) {
        (StoreConfig::Firestore { project, .. }, _)
        | (_, QueueConfig::CloudTasks { project, .. }) => Some(project.clone()),
        _ => None,
    }
}
