//! The `oauth-callback` function's routes (product.md §2): install start and OAuth callback,
//! provisioning, install status, settings, uninstall and tenant registration.

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `oauth-callback` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::install::routes().with_state(app)
}
