//! What every function's HTTP surface shares (product.md §2): `GET /health`, a request span per
//! request, the 256 KiB body limit, JSON 404/405 fallbacks, and serving with graceful shutdown.
//!
//! Request spans name the method and the *matched* route (`/{tenant}/api/v1/install`), never the raw
//! URI: query strings carry OAuth `code`/`state`. Headers and bodies are never logged.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;
use tracing::{Instrument, field};

use super::telemetry::TraceContext;
use crate::api_error::{ApiError, ErrorCode};

pub use crate::api_error::BODY_LIMIT_BYTES;

/// How long in-flight requests may take to finish after the shutdown signal. Cloud Run kills the
/// instance 10 s after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Wraps a function's routes with what every binary shares: `GET /health` answering
/// `{"status": "ok", "function": name, "version": …}`, a request span, the body limit and JSON
/// 404/405 fallbacks in the [`ApiError`] format.
pub fn wrap(name: &'static str, routes: Router) -> Router {
    let health = serde_json::json!({
        "status": "ok",
        "function": name,
        "version": env!("CARGO_PKG_VERSION"),
    });
    routes
        .route("/health", get(move || async move { axum::Json(health) }))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn(request_span))
}

/// Runs the request inside a `request` span (method, matched route, trace) and logs its end with
/// the status and latency. A pushed task's handler records its `queue` and `queue_delay_ms` on
/// the span ([`crate::job`]): the log-based queue-delay alert reads them from that last line.
async fn request_span(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let trace = TraceContext::from_headers(request.headers());
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path,
        trace_id = field::Empty,
        span_id = field::Empty,
        status = field::Empty,
        latency_ms = field::Empty,
        queue = field::Empty,
        queue_delay_ms = field::Empty,
    );
    if let Some(trace) = trace {
        span.record("trace_id", trace.trace_id);
        if let Some(span_id) = trace.span_id {
            span.record("span_id", span_id);
        }
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    span.in_scope(|| {
        if status >= 500 {
            tracing::error!("request failed");
        } else {
            tracing::info!("request finished");
        }
    });
    response
}

/// Reads the body up to [`BODY_LIMIT_BYTES`] (handlers buffer it anyway, to verify signatures),
/// answering 413 in the JSON error format beyond it — whether the size is announced or streamed.
async fn limit_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let announced = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT_BYTES as u64) {
        return ApiError::body_too_large().into_response();
    }
    let bytes = match Limited::new(body, BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return ApiError::body_too_large().into_response(),
        Err(e) => {
            tracing::info!(error = %e, "could not read the request body");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidBody,
                "could not read the request body",
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting connections and
/// lets in-flight requests finish for at most `drain` before returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = fired_tx.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    let deadline = async move {
        match fired_rx.await {
            Ok(()) => tokio::time::sleep(drain).await,
            // The server ended without a shutdown signal: let its own result speak.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server.into_future() => result,
        () = deadline => {
            tracing::warn!(drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX),
                "in-flight requests still running after the drain timeout; abandoning them");
            Ok(())
        }
    }
}

/// Completes on SIGTERM (Cloud Run scaling down) or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when the future is first polled, so no signal is missed in between.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown signal received");
    })
}
