//! SKELETON STUB — replaced by the install work.

use std::sync::Arc;

use axum::Router;

use crate::app::App;
use crate::domain::TenantId;
use crate::store::Install;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
#[error("provisioning failed at {step}: {message}")]
pub struct ProvisionError {
    /// The step.
    pub step: String,
    /// What went wrong.
    pub message: String,
}

/// Provisions every resource of the tenant (SKELETON STUB).
pub async fn provision(app: &App, tenant: &TenantId) -> Result<Install, ProvisionError> {
    let _ = (app, tenant);
    Err(ProvisionError {
        step: "skeleton".into(),
        message: "not written yet".into(),
    })
}
