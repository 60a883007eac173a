//! Why a remote-facing install step failed, with its cause kept: what provisioning and uninstall
//! report, and what a caller can act on ([`StepFailure::disposition`]).

use crate::access::KlaviyoCallError;
use crate::app::OmneoAccessError;
use crate::crypto::CryptoError;
use crate::domain::TenantId;
use crate::klaviyo::oauth::OAuthError;
use crate::queue::{QueueError, QueueName};
use crate::remote::{Disposition, RemoteError};
use crate::settings::InvalidSetting;
use crate::store::StoreError;

/// Why one step of provisioning or uninstall failed.
#[derive(Debug, thiserror::Error)]
pub enum StepFailure {
    /// A Klaviyo call failed (or no token could be had for it).
    #[error(transparent)]
    Klaviyo(#[from] KlaviyoCallError),
    /// An Omneo call failed.
    #[error(transparent)]
    Omneo(#[from] RemoteError),
    /// No Omneo client could be built for the tenant.
    #[error(transparent)]
    OmneoAccess(#[from] OmneoAccessError),
    /// Klaviyo's revocation endpoint failed.
    #[error("Klaviyo's revocation endpoint failed")]
    Revoke(#[source] OAuthError),
    /// A stored secret of the tenant cannot be opened.
    #[error("a stored secret of the tenant cannot be opened")]
    Sealed(#[source] CryptoError),
    /// The queue service failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The tenant's queue settings do not give valid queue names.
    #[error("the queue settings are invalid: {0}")]
    QueueSettings(#[source] InvalidSetting),
    /// A queue name is reserved by another tenant.
    #[error("queue {name} is reserved by another tenant ({owner})")]
    QueueTaken {
        /// The name.
        name: QueueName,
        /// Who holds it.
        owner: TenantId,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StepFailure {
    /// Whether calling again may help (a retryable remote answer, an outage) or not.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Klaviyo(error) => error.disposition(),
            Self::Omneo(error) => error.disposition(),
            Self::Revoke(OAuthError::Unavailable { .. })
            | Self::Queue(QueueError::Unavailable(_) | QueueError::QueueNotFound(_))
            | Self::Store(StoreError::Unavailable(_)) => Disposition::Retryable,
            Self::OmneoAccess(_)
            | Self::Revoke(_)
            | Self::Sealed(_)
            | Self::Queue(_)
            | Self::QueueSettings(_)
            | Self::QueueTaken { .. }
            | Self::Store(_) => Disposition::Permanent,
        }
    }
}
