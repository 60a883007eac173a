//! Key rotation that can finish (operator): see how many sealed values still need the active
//! key, and re-seal every record under it, so a retired key can be dropped from `ENCRYPTION_KEY`.
//!
//! - `GET /api/v1/keyring` → the report below, changing nothing.
//! - `POST /api/v1/keyring/reseal` → re-seals every tenant and install record that holds a value
//!   sealed under a retired key or not bound to its place (each record in its own store
//!   transaction, so it is safe while the functions run), then answers the report.
//!
//! The report: `{"active_key_id", "key_ids", "tenants", "installs", "resealed", "unreadable",
//! "remaining": {"total", "by_key": {key id: count}}, "pending_oauth_states": {"total",
//! "under_old_keys"}}`. `remaining.total == 0` means no stored tenant or install value needs a
//! retired key any more. Pending OAuth states are not re-sealed: they live 10 minutes, so wait that
//! long after rotating before dropping the old key. `unreadable` counts values no key of the ring
//! opens (they stay as they are and keep `remaining` above zero). The full procedure is in
//! `docs/operations.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::admin::Operator;
use crate::api_error::ApiError;
use crate::app::App;
use crate::crypto::Keyring;
use crate::store::{SealedRecord, stale_key_ids};

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v1/keyring", get(show))
        .route("/api/v1/keyring/reseal", post(reseal_all))
}

/// What the keyring routes answer.
#[derive(Debug, Default, Serialize)]
pub struct KeyringReport {
    /// The key new values are sealed under.
    pub active_key_id: String,
    /// Every key of `ENCRYPTION_KEY`, the active one first.
    pub key_ids: Vec<String>,
    /// Tenant records looked at.
    pub tenants: usize,
    /// Install records looked at.
    pub installs: usize,
    /// Values re-sealed by this call.
    pub resealed: usize,
    /// Values that needed a re-seal but no key of the ring opens.
    pub unreadable: usize,
    /// Values of tenant and install records still needing a re-seal.
    pub remaining: Remaining,
    /// OAuth states waiting for their callback (they expire within 10 minutes).
    pub pending_oauth_states: PendingStates,
}

/// Values still needing a re-seal, by the key they are sealed under.
#[derive(Debug, Default, Serialize)]
pub struct Remaining {
    /// All of them.
    pub total: usize,
    /// Per key id.
    pub by_key: BTreeMap<String, usize>,
}

/// The OAuth states waiting for their callback.
#[derive(Debug, Default, Serialize)]
pub struct PendingStates {
    /// How many.
    pub total: usize,
    /// How many hold a value that needs a key other than the active one.
    pub under_old_keys: usize,
}

impl Remaining {
    fn add<R: SealedRecord + Clone>(&mut self, record: &R, keyring: &Keyring) {
        for key_id in stale_key_ids(record, keyring) {
            self.total += 1;
            *self.by_key.entry(key_id).or_default() += 1;
        }
    }
}

/// The report, re-sealing first when `write` is set.
pub async fn report(app: &App, write: bool) -> Result<KeyringReport, ApiError> {
    let keyring = &app.config.keyring;
    let mut report = KeyringReport {
        active_key_id: keyring.active_key_id().to_owned(),
        key_ids: keyring.key_ids().into_iter().map(str::to_owned).collect(),
        ..KeyringReport::default()
    };
    for id in app.store.tenant_ids().await? {
        let tenant = app.store.tenant(&id).await?;
        let before = stale_count(tenant.as_ref(), keyring);
        let tenant = if write && before > 0 {
            // The store re-seals every record it writes: writing the record unchanged is the
            // re-seal, in a transaction of its own.
            app.store
                .update_tenant_or(&id, |current| current.ok_or(()))
                .await?
                .ok()
        } else {
            tenant
        };
        report.tally(before, tenant.as_ref(), write, keyring);
        report.tenants += usize::from(tenant.is_some());

        let install = app.store.install(&id).await?;
        let before = stale_count(install.as_ref(), keyring);
        let install = if write && before > 0 {
            app.store
                .update_install_or(&id, |current| current.ok_or(()))
                .await?
                .ok()
        } else {
            install
        };
        report.tally(before, install.as_ref(), write, keyring);
        report.installs += usize::from(install.is_some());
    }
    for state in app.store.live_oauth_states().await? {
        report.pending_oauth_states.total += 1;
        if !stale_key_ids(&state, keyring).is_empty() {
            report.pending_oauth_states.under_old_keys += 1;
        }
    }
    Ok(report)
}

/// How many values of the record need a re-seal.
fn stale_count<R: SealedRecord + Clone>(record: Option<&R>, keyring: &Keyring) -> usize {
    record.map_or(0, |r| stale_key_ids(r, keyring).len())
}

impl KeyringReport {
    /// Counts one record: `before` stale values before this call, `record` as it is now.
    fn tally<R: SealedRecord + Clone>(
        &mut self,
        before: usize,
        record: Option<&R>,
        written: bool,
        keyring: &Keyring,
    ) {
        let after = stale_count(record, keyring);
        if written && before > 0 {
            self.resealed += before.saturating_sub(after);
            // What a write could not re-seal no key of the ring opens.
            self.unreadable += after;
        }
        if let Some(record) = record {
            self.remaining.add(record, keyring);
        }
    }
}

/// `GET /api/v1/keyring`.
async fn show(State(app): State<Arc<App>>, _: Operator) -> Result<Json<KeyringReport>, ApiError> {
    Ok(Json(report(&app, false).await?))
}

/// `POST /api/v1/keyring/reseal`.
async fn reseal_all(
    State(app): State<Arc<App>>,
    _: Operator,
) -> Result<Json<KeyringReport>, ApiError> {
    let report = report(&app, true).await?;
    tracing::info!(
        resealed = report.resealed,
        remaining = report.remaining.total,
        unreadable = report.unreadable,
        "re-sealed the stored secrets under the active key"
    );
    Ok(Json(report))
}
