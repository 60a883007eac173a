//! The `oauth-callback` function's routes (product.md §2): install start and OAuth callback,
//! provisioning, install status, settings, uninstall, tenant registration, the failure
//! records (list, replay) and backfill runs (start, progress, cancel).

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `oauth-callback` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::install::routes()
        .merge(crate::failures::routes())
        .merge(crate::backfill_api::routes())
        .with_state(app)
}
