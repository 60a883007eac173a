//! The documents of product.md §3. Secrets are only ever held as [`Sealed`] values.
//!
//! Timestamps are stored as real Firestore timestamps (TTL policies need them), enums as strings or
//! internally tagged maps (externally tagged struct variants do not read back from Firestore).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::Sealed;
use crate::domain::TenantId;
use crate::settings::Settings;

/// `tenants/{tenant}`: who the tenant is and how to reach its Omneo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant id (also the document id).
    pub id: TenantId,
    /// Omneo API base URL (`https://api.{tenant}.getomneo.com` unless overridden).
    pub omneo_api_url: String,
    /// Omneo API token.
    pub omneo_api_token: Sealed,
    /// Key of Omneo's `X-Omneo-Hmac-SHA256` signatures.
    pub omneo_signing_secret: Sealed,
    /// Shared secret of Klaviyo Flow webhooks (`x-omneo-secret`) and the system webhook's `secret_key`.
    pub webhook_secret: Sealed,
    /// The secret replaced by the last `webhook_secret` change, still accepted until it expires.
    pub previous_webhook_secret: Option<RetiredSecret>,
    /// SHA-256 (hex) of the tenant admin key; the key itself is never stored.
    pub admin_key_hash: String,
    /// The tenant's settings (product.md §4).
    pub settings: Settings,
    /// When the tenant was registered.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub created_at: Timestamp,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

/// A replaced secret and the end of its grace period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredSecret {
    /// The old secret.
    pub secret: Sealed,
    /// Until when it is still accepted.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub accepted_until: Timestamp,
}

/// Where an install is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStatus {
    /// Registered, never installed (or install started but not completed).
    Pending,
    /// OAuth done, resources being created.
    Provisioning,
    /// Every provisioning step succeeded.
    Installed,
    /// A provisioning step failed; `last_error` names it; `reprovision` resumes.
    Failed,
    /// Klaviyo refused the refresh token: the customer must install again.
    ReauthorizationRequired,
    /// Uninstalled through the admin API.
    Uninstalled,
}

/// `installs/{tenant}`: the Klaviyo side of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Install {
    /// The tenant id (also the document id).
    pub tenant: TenantId,
    /// Current status.
    pub status: InstallStatus,
    /// The Klaviyo account the tenant authorised.
    pub klaviyo_account_id: Option<String>,
    /// OAuth tokens, sealed.
    pub tokens: Option<OAuthTokens>,
    /// Who may refresh the tokens right now (single-flight across instances).
    pub refresh_lease: Option<Lease>,
    /// What provisioning created or found.
    pub resources: Resources,
    /// The last failure and the step it happened at.
    pub last_error: Option<StepError>,
    /// Every status change, oldest first.
    pub history: Vec<StatusChange>,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

impl Install {
    /// A fresh `pending` install record.
    pub fn pending(tenant: TenantId, now: Timestamp) -> Self {
        Self {
            tenant,
            status: InstallStatus::Pending,
            klaviyo_account_id: None,
            tokens: None,
            refresh_lease: None,
            resources: Resources::default(),
            last_error: None,
            history: vec![StatusChange {
                status: InstallStatus::Pending,
                at: now,
                reason: None,
            }],
            updated_at: now,
        }
    }

    /// Moves to `status`, appending to the history.
    pub fn transition(&mut self, status: InstallStatus, reason: Option<String>, now: Timestamp) {
        self.status = status;
        self.history.push(StatusChange {
            status,
            at: now,
            reason,
        });
        self.updated_at = now;
    }
}

/// Klaviyo OAuth tokens of one install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthTokens {
    /// Access token (about an hour).
    pub access_token: Sealed,
    /// Refresh token (always the latest one Klaviyo returned).
    pub refresh_token: Sealed,
    /// When the access token expires.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expires_at: Timestamp,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// When the tokens were last refreshed (`None`: straight from the code exchange).
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub last_refreshed_at: Option<Timestamp>,
}

/// A time-limited exclusive right, e.g. to refresh a tenant's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// An id of the holder (instance + request).
    pub holder: String,
    /// When the lease lapses by itself.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub until: Timestamp,
}

/// Resources provisioning created or reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Klaviyo data source ids by title.
    pub data_sources: BTreeMap<String, String>,
    /// The Klaviyo system webhook id.
    pub klaviyo_webhook_id: Option<String>,
    /// Omneo webhook ids by trigger.
    pub omneo_webhooks: BTreeMap<String, String>,
    /// The Cloud Tasks queue names.
    pub queues: Vec<String>,
}

/// A failure at a named step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The step, e.g. `data_sources`.
    pub step: String,
    /// What went wrong, for humans.
    pub message: String,
    /// When.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
}

/// One entry of an install's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The new status.
    pub status: InstallStatus,
    /// When.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    /// Why, when there is more to say than the status.
    pub reason: Option<String>,
}

/// `oauth_states/{state}`: one pending authorization, consumed exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthState {
    /// The random `state` value (also the document id).
    pub state: String,
    /// The tenant being installed.
    pub tenant: TenantId,
    /// The PKCE verifier, sealed.
    pub pkce_verifier: Sealed,
    /// Expiry (10 minutes; a Firestore TTL policy deletes it eventually).
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expires_at: Timestamp,
}

/// The id of a `processed/{key}` idempotency marker: tenant plus a hash of what identifies the work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A key for `parts` of work of `scope` (e.g. `flow-reward`) in a tenant. The parts are hashed,
    /// so any text (with `/` or of any length) makes a valid document id.
    pub fn new(tenant: &TenantId, scope: &str, parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Self(format!(
            "{tenant}:{scope}:{}",
            hex::encode(hasher.finalize())
        ))
    }

    /// The document id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `failures/{id}`: a task that will not succeed, kept for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Unique id (also the document id).
    pub id: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The queue the task came from.
    pub queue: String,
    /// Task kind, e.g. `sync_profile`.
    pub task_kind: String,
    /// Cloud Tasks task name.
    pub task_name: String,
    /// The task payload as JSON text (JSON may hold nested arrays, which Firestore does not).
    pub payload: String,
    /// What went wrong.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was recorded.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
}

/// `sync_state/{tenant}:{omneo profile id}`: what was last written to Klaviyo for a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The tenant.
    pub tenant: TenantId,
    /// The Omneo profile id.
    pub omneo_profile_id: String,
    /// The Klaviyo profile id it maps to.
    pub klaviyo_profile_id: Option<String>,
    /// SHA-256 (hex) of the last mapped payload written successfully.
    pub payload_hash: String,
    /// The consent last sent to Klaviyo.
    pub consent: ConsentSent,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

/// Marketing consent last sent per channel (`None`: never sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentSent {
    /// Email marketing subscribed.
    pub email: Option<bool>,
    /// SMS marketing subscribed.
    pub sms: Option<bool>,
}
