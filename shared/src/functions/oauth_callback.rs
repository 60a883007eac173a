//! The `oauth-callback` function's routes (product.md §2): install start and OAuth callback,
//! provisioning, install status, settings, uninstall, tenant registration, and the failure
//! records (list, replay).

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `oauth-callback` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::install::routes()
        .merge(crate::failures::routes())
        .with_state(app)
}
