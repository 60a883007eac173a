//! The `inbound-task` function's routes (product.md §2): `POST /tasks/inbound`, the Klaviyo →
//! Omneo worker of [`crate::inbound`].

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `inbound-task` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::inbound::routes(app)
}
