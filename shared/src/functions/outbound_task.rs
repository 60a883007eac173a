//! The `outbound-task` function's routes (product.md §2): `POST /tasks/outbound`, the Omneo →
//! Klaviyo worker of [`crate::outbound`], and `POST /tasks/reconcile`, the reconciliation
//! schedule's sweep ([`crate::reconcile`]; Cloud Scheduler calls it).

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The routes `outbound-task` serves.
pub fn router(app: Arc<App>) -> Router {
    crate::outbound::routes(app.clone()).merge(crate::reconcile::routes(app))
}
