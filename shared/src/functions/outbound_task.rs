//! The `outbound-task` function's routes (product.md §2).

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `outbound-task` serves.
pub fn router(app: Arc<App>) -> Router {
    Router::new().with_state(app)
}
