//! The `omneo-webhook` function's routes (product.md §2): Omneo's profile webhooks and the
//! Klaviyo targets, received by [`crate::receivers::omneo`].

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `omneo-webhook` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::receivers::omneo::routes(app)
}
