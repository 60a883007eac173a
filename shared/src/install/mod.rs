//! Install (product.md §3–§5): tenant registration, the admin API, Klaviyo OAuth, provisioning on
//! both sides, settings, status, uninstall and key rotation — everything behind the
//! `oauth-callback` function.
//!
//! | module | concern |
//! |---|---|
//! | [`admin`] | operator / admin-key authentication of the admin API |
//! | [`registration`] | `PUT /{tenant}/api/v1/tenant` |
//! | [`settings_api`] | `GET`/`PUT`/`PATCH /{tenant}/api/v1/settings` |
//! | [`status`] | `GET /{tenant}/api/v1/install` |
//! | [`link`] | signed, short-lived install links |
//! | [`flow`] | `POST …/install/link`, `GET /oauth/install`, `GET /oauth/callback` |
//! | [`pages`] | the HTML pages a browser sees during install |
//! | [`provision`] | idempotent, resumable provisioning, one module per step; `POST …/install/reprovision` |
//! | [`uninstall`] | `DELETE /{tenant}/api/v1/install` |
//! | [`lease`] | the per-tenant lease provisioning and uninstall hold |
//! | [`failure`] | why a remote-facing step failed, cause kept |
//! | [`keyring`] | `GET /api/v1/keyring`, `POST /api/v1/keyring/reseal` (operator): key rotation |

use std::sync::Arc;

use axum::Router;

use crate::app::App;

pub mod admin;
pub mod failure;
pub mod flow;
pub mod keyring;
pub mod lease;
pub mod link;
pub mod pages;
pub mod provision;
pub mod registration;
pub mod settings_api;
pub mod status;
pub mod uninstall;

/// Every route of the `oauth-callback` function.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .merge(registration::routes())
        .merge(settings_api::routes())
        .merge(status::routes())
        .merge(flow::routes())
        .merge(provision::routes())
        .merge(uninstall::routes())
        .merge(keyring::routes())
}
