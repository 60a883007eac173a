//! The right to provision or uninstall one tenant, held across instances.

use std::time::Duration;

use crate::app::App;
use crate::domain::TenantId;
use crate::store::{Claim, IdempotencyKey, StoreError};

/// Why the install lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else holds it.
    #[error("another provisioning or uninstall of the tenant holds the lease")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The right to provision or uninstall one tenant: a `processed/{tenant}:install:…` marker claimed
/// in a store transaction (see [`crate::store::Store::claim`]) by one holder, so a concurrent run
/// on any instance is refused instead of racing creates, and a run whose lease lapsed cannot give
/// away the lease of the run that took it over.
pub struct InstallLease {
    key: IdempotencyKey,
    holder: String,
}

impl InstallLease {
    /// How long a lease lasts when its holder never gives it back (an instance died mid-run).
    /// Generous: a run takes seconds, but each remote call may retry for up to two minutes.
    pub const DURATION: Duration = Duration::from_secs(15 * 60);

    /// Takes the tenant's lease, or [`LeaseError::Busy`].
    pub async fn acquire(app: &App, tenant: &TenantId) -> Result<Self, LeaseError> {
        let key = IdempotencyKey::new(tenant, "install", &["lease"]);
        let holder = uuid::Uuid::new_v4().to_string();
        match app.store.claim(&key, &holder, Self::DURATION).await? {
            Claim::Acquired => Ok(Self { key, holder }),
            // The key is never completed, so `Done` cannot be seen; refuse rather than run unheld.
            Claim::InProgress | Claim::Done => Err(LeaseError::Busy),
        }
    }

    /// Gives the lease back if it is still ours (best effort: it lapses by itself anyway).
    pub async fn release(self, app: &App) {
        if let Err(error) = app.store.release(&self.key, &self.holder).await {
            tracing::warn!(%error, "could not release the install lease; it lapses by itself");
        }
    }
}
