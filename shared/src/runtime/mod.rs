//! SKELETON STUB — replaced by the runtime work.

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// SKELETON STUB.
pub fn run_function(name: &'static str, router: fn(Arc<App>) -> Router) -> ExitCode {
    let _ = (name, router);
    ExitCode::FAILURE
}
