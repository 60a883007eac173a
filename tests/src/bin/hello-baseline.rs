//! The benchmark baseline: the smallest axum server answering `GET /health` on `$PORT`.
//! `make bench` measures it beside the function binaries so their figures can be read against it.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
    let router = Router::new().route("/health", get(|| async { "ok" }));
    axum::serve(listener, router).await
}
