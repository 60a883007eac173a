//! The `klaviyo-webhook` function's routes (product.md §2): Klaviyo's system webhooks and the
//! three Flow webhooks, received by [`crate::receivers::klaviyo`].

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `klaviyo-webhook` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::receivers::klaviyo::routes(app)
}
