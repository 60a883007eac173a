//! One router per Cloud Run function. Paths never collide, so [`all`] can merge the five for the
//! local stack; the runtime adds `GET /health`, request spans, the body limit and JSON fallbacks.

use std::sync::Arc;

use axum::Router;

use crate::app::App;

pub mod inbound_task;
pub mod klaviyo_webhook;
pub mod oauth_callback;
pub mod omneo_webhook;
pub mod outbound_task;

/// The routes of all five functions, as the local stack serves them on one port.
pub fn all(app: Arc<App>) -> Router {
    Router::new()
        .merge(oauth_callback::router(app.clone()))
        .merge(klaviyo_webhook::router(app.clone()))
        .merge(omneo_webhook::router(app.clone()))
        .merge(inbound_task::router(app.clone()))
        .merge(outbound_task::router(app))
}
