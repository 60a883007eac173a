//! The documents of product.md §3. Secrets are only ever held as [`Sealed`] values, each bound to
//! its place (`collection/document/field`, see [`crate::crypto`]); the records say where each of
//! theirs lives ([`SealedRecord`]) and open them with that place.
//!
//! Timestamps are stored as real Firestore timestamps (TTL policies need them), enums as strings or
//! internally tagged maps (externally tagged struct variants do not read back from Firestore).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{INSTALLS, OAUTH_STATES, TENANTS};
use crate::crypto::{CryptoError, Keyring, Sealed, SealedAt};
use crate::domain::{ConsentState, KlaviyoProfileId, OmneoProfileId, TenantId};
use crate::queue::{Direction, QueueName, TaskKind, TaskName};
use crate::settings::Settings;

/// A record holding sealed values: it names each one's place, so the store can re-seal them under
/// the active key whenever the record is written.
pub trait SealedRecord {
    /// Every sealed value of the record, with its place.
    fn sealed_values(&mut self) -> Vec<(SealedAt, &mut Sealed)>;
}

/// What re-sealing one record did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values now sealed under the active key and bound to their place.
    pub resealed: usize,
    /// Values that needed it but could not be opened (unknown key, corrupt, moved): left as they
    /// were.
    pub unreadable: usize,
}

/// Re-seals, in place, every value of `record` sealed under a retired key or not bound to its
/// place. Nothing else changes; values that cannot be opened are left (and counted).
pub fn reseal(record: &mut impl SealedRecord, keyring: &Keyring) -> Resealed {
    let mut outcome = Resealed::default();
    for (at, sealed) in record.sealed_values() {
        match keyring.reseal(sealed, &at) {
            Ok(Some(fresh)) => {
                *sealed = fresh;
                outcome.resealed += 1;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(place = %at, key_id = sealed.key_id(), %error, "a sealed value cannot be opened to re-seal it");
                outcome.unreadable += 1;
            }
        }
    }
    outcome
}

/// The key ids of the values of `record` that still need a re-seal (retired key or unbound), one
/// entry per value.
pub fn stale_key_ids<R: SealedRecord + Clone>(record: &R, keyring: &Keyring) -> Vec<String> {
    let mut copy = record.clone();
    copy.sealed_values()
        .into_iter()
        .filter(|(_, sealed)| keyring.needs_reseal(sealed))
        .map(|(_, sealed)| sealed.key_id().to_owned())
        .collect()
}

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
    /// Since when a `webhook_secret` change awaits Klaviyo (the system webhook's `secret_key` was
    /// not confirmed updated yet): meanwhile the previous secret stays accepted, and the next
    /// settings write or reprovisioning pushes the secret to Klaviyo.
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub webhook_secret_pending_since: Option<Timestamp>,
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

/// The always-present secrets of a tenant record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSecret {
    /// `omneo_api_token`.
    OmneoApiToken,
    /// `omneo_signing_secret`.
    OmneoSigningSecret,
    /// `webhook_secret`.
    WebhookSecret,
}

impl TenantSecret {
    /// The field it is stored in.
    pub fn field(self) -> &'static str {
        match self {
            Self::OmneoApiToken => "omneo_api_token",
            Self::OmneoSigningSecret => "omneo_signing_secret",
            Self::WebhookSecret => "webhook_secret",
        }
    }

    /// Its place in the record of `tenant`.
    pub fn at(self, tenant: &TenantId) -> SealedAt {
        SealedAt::new(TENANTS, tenant.as_str(), self.field())
    }

    /// Seals `secret` for this field of `tenant`'s record.
    pub fn seal(self, keyring: &Keyring, tenant: &TenantId, secret: &SecretString) -> Sealed {
        keyring.seal(secret, &self.at(tenant))
    }
}

/// Where the secret replaced by the last `webhook_secret` change is sealed.
const PREVIOUS_WEBHOOK_SECRET: &str = "previous_webhook_secret.secret";

impl Tenant {
    /// Opens one of the tenant's secrets.
    pub fn open(
        &self,
        keyring: &Keyring,
        which: TenantSecret,
    ) -> Result<SecretString, CryptoError> {
        let sealed = match which {
            TenantSecret::OmneoApiToken => &self.omneo_api_token,
            TenantSecret::OmneoSigningSecret => &self.omneo_signing_secret,
            TenantSecret::WebhookSecret => &self.webhook_secret,
        };
        keyring.open(sealed, &which.at(&self.id))
    }

    /// How long a replaced `webhook_secret` is still accepted once Klaviyo has the new one
    /// (product.md §4).
    pub const PREVIOUS_WEBHOOK_SECRET_GRACE: SignedDuration = SignedDuration::from_mins(10);

    /// Retires the current `webhook_secret` and installs `new`, pending until Klaviyo confirms it
    /// ([`Tenant::confirm_webhook_secret`]); the old one is accepted until then and for
    /// [`Tenant::PREVIOUS_WEBHOOK_SECRET_GRACE`] after.
    pub fn rotate_webhook_secret(
        &mut self,
        keyring: &Keyring,
        new: &SecretString,
        now: Timestamp,
    ) -> Result<(), CryptoError> {
        let old = self.open(keyring, TenantSecret::WebhookSecret)?;
        let at = SealedAt::new(TENANTS, self.id.as_str(), PREVIOUS_WEBHOOK_SECRET);
        self.previous_webhook_secret = Some(RetiredSecret {
            secret: keyring.seal(&old, &at),
            accepted_until: now + Self::PREVIOUS_WEBHOOK_SECRET_GRACE,
        });
        self.webhook_secret = TenantSecret::WebhookSecret.seal(keyring, &self.id, new);
        self.webhook_secret_pending_since = Some(now);
        Ok(())
    }

    /// Klaviyo holds the current `webhook_secret`: the change is no longer pending, and the
    /// previous secret is accepted for the grace period from now.
    pub fn confirm_webhook_secret(&mut self, now: Timestamp) {
        if self.webhook_secret_pending_since.take().is_some()
            && let Some(previous) = &mut self.previous_webhook_secret
        {
            previous.accepted_until = previous
                .accepted_until
                .max(now + Self::PREVIOUS_WEBHOOK_SECRET_GRACE);
        }
    }

    /// The previous `webhook_secret`, while it is still accepted at `now` (always while the
    /// change is pending: Klaviyo may still sign with it).
    pub fn previous_webhook_secret(
        &self,
        keyring: &Keyring,
        now: Timestamp,
    ) -> Result<Option<SecretString>, CryptoError> {
        let pending = self.webhook_secret_pending_since.is_some();
        let Some(previous) = self
            .previous_webhook_secret
            .as_ref()
            .filter(|p| pending || p.accepted_until > now)
        else {
            return Ok(None);
        };
        let at = SealedAt::new(TENANTS, self.id.as_str(), PREVIOUS_WEBHOOK_SECRET);
        keyring.open(&previous.secret, &at).map(Some)
    }
}

impl SealedRecord for Tenant {
    fn sealed_values(&mut self) -> Vec<(SealedAt, &mut Sealed)> {
        let id = self.id.clone();
        let mut values = vec![
            (
                TenantSecret::OmneoApiToken.at(&id),
                &mut self.omneo_api_token,
            ),
            (
                TenantSecret::OmneoSigningSecret.at(&id),
                &mut self.omneo_signing_secret,
            ),
            (
                TenantSecret::WebhookSecret.at(&id),
                &mut self.webhook_secret,
            ),
        ];
        if let Some(previous) = &mut self.previous_webhook_secret {
            let at = SealedAt::new(TENANTS, id.as_str(), PREVIOUS_WEBHOOK_SECRET);
            values.push((at, &mut previous.secret));
        }
        values
    }
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

impl InstallStatus {
    /// The status as stored and shown, e.g. `reauthorization_required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Installed => "installed",
            Self::Failed => "failed",
            Self::ReauthorizationRequired => "reauthorization_required",
            Self::Uninstalled => "uninstalled",
        }
    }
}

impl std::fmt::Display for InstallStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The latest status changes (at most [`Install::HISTORY_LIMIT`]), oldest first.
    pub history: Vec<StatusChange>,
    /// Last change.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub updated_at: Timestamp,
}

impl Install {
    /// How many status changes the history keeps (the oldest go first), so a tenant that
    /// reinstalls for years keeps a document far below Firestore's 1 MiB.
    pub const HISTORY_LIMIT: usize = 50;

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

    /// Moves to `status`, appending to the history (and dropping its oldest entries beyond
    /// [`Install::HISTORY_LIMIT`]).
    pub fn transition(&mut self, status: InstallStatus, reason: Option<String>, now: Timestamp) {
        self.status = status;
        self.history.push(StatusChange {
            status,
            at: now,
            reason,
        });
        let excess = self.history.len().saturating_sub(Self::HISTORY_LIMIT);
        self.history.drain(..excess);
        self.updated_at = now;
    }

    /// The queue of `direction` provisioning ensured, where receivers enqueue (`None` before
    /// provisioning reached its queues step).
    pub fn queue(&self, direction: Direction) -> Option<&QueueName> {
        self.resources
            .queues
            .iter()
            .find(|queue| queue.direction() == Some(direction))
    }
}

impl SealedRecord for Install {
    fn sealed_values(&mut self) -> Vec<(SealedAt, &mut Sealed)> {
        let tenant = self.tenant.clone();
        match &mut self.tokens {
            Some(tokens) => vec![
                (
                    TokenSecret::AccessToken.at(&tenant),
                    &mut tokens.access_token,
                ),
                (
                    TokenSecret::RefreshToken.at(&tenant),
                    &mut tokens.refresh_token,
                ),
            ],
            None => Vec::new(),
        }
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

/// The two sealed tokens of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSecret {
    /// `tokens.access_token`.
    AccessToken,
    /// `tokens.refresh_token`.
    RefreshToken,
}

impl TokenSecret {
    /// Its place in the install record of `tenant`.
    pub fn at(self, tenant: &TenantId) -> SealedAt {
        let field = match self {
            Self::AccessToken => "tokens.access_token",
            Self::RefreshToken => "tokens.refresh_token",
        };
        SealedAt::new(INSTALLS, tenant.as_str(), field)
    }

    /// Seals `token` for this field of `tenant`'s install record.
    pub fn seal(self, keyring: &Keyring, tenant: &TenantId, token: &SecretString) -> Sealed {
        keyring.seal(token, &self.at(tenant))
    }
}

impl OAuthTokens {
    /// Opens one of the tokens of `tenant`'s install.
    pub fn open(
        &self,
        keyring: &Keyring,
        tenant: &TenantId,
        which: TokenSecret,
    ) -> Result<SecretString, CryptoError> {
        let sealed = match which {
            TokenSecret::AccessToken => &self.access_token,
            TokenSecret::RefreshToken => &self.refresh_token,
        };
        keyring.open(sealed, &which.at(tenant))
    }
}

/// A time-limited exclusive right, e.g. to refresh a tenant's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// An id of the holder (instance + request).
    pub holder: String,
    /// When the lease lapses by itself.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub until: Timestamp,
    /// The holder's refresh was refused (`invalid_grant`) after it took over a lapsed lease: it
    /// did not end the install, because the lapsed holder may still store a live grant; the next
    /// holder may.
    #[serde(default)]
    pub refused_grant: bool,
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
    /// The Cloud Tasks queues.
    pub queues: Vec<QueueName>,
}

/// Where an install operation was when it failed: a provisioning step (product.md §5.4), or the
/// moments before and after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStep {
    /// Before any step ran (checking the install may be provisioned).
    Start,
    /// The six Klaviyo data sources.
    DataSources,
    /// The Klaviyo system webhook.
    KlaviyoWebhook,
    /// The three Omneo webhooks.
    OmneoWebhooks,
    /// The two Cloud Tasks queues.
    Queues,
    /// After every step succeeded, recording `installed`.
    Finish,
}

impl InstallStep {
    /// The name as recorded and shown, e.g. `data_sources`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::DataSources => "data_sources",
            Self::KlaviyoWebhook => "klaviyo_webhook",
            Self::OmneoWebhooks => "omneo_webhooks",
            Self::Queues => "queues",
            Self::Finish => "finish",
        }
    }
}

impl std::fmt::Display for InstallStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure at a named step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The step.
    pub step: InstallStep,
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

/// `oauth_states/{SHA-256(state)}`: one pending authorization, consumed exactly once. The `state`
/// value itself is never stored: its hash is the document id, so reading the store does not give
/// anyone a state to complete an install with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuthState {
    /// Lowercase hex SHA-256 of the `state` value (also the document id).
    pub state_hash: String,
    /// The tenant being installed.
    pub tenant: TenantId,
    /// The PKCE verifier, sealed.
    pub pkce_verifier: Sealed,
    /// Expiry (10 minutes; a Firestore TTL policy deletes it eventually).
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub expires_at: Timestamp,
}

impl OAuthState {
    /// The document id of a `state` value: its SHA-256, lowercase hex.
    pub fn hash(state: &SecretString) -> String {
        crate::crypto::digest_hex(state)
    }

    /// Where the PKCE verifier of the state with this hash is sealed.
    pub fn verifier_at(state_hash: &str) -> SealedAt {
        SealedAt::new(OAUTH_STATES, state_hash, "pkce_verifier")
    }

    /// Opens the PKCE verifier.
    pub fn open_verifier(&self, keyring: &Keyring) -> Result<SecretString, CryptoError> {
        keyring.open(&self.pkce_verifier, &Self::verifier_at(&self.state_hash))
    }
}

impl SealedRecord for OAuthState {
    fn sealed_values(&mut self) -> Vec<(SealedAt, &mut Sealed)> {
        vec![(Self::verifier_at(&self.state_hash), &mut self.pkce_verifier)]
    }
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

/// `failures/{id}`: a task that will not succeed, or a warning a task left, kept for review and
/// replay (product.md §8, §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Unique id (also the document id).
    pub id: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The queue the task came from.
    pub queue: QueueName,
    /// What the task was to do.
    pub task_kind: TaskKind,
    /// Cloud Tasks task name.
    pub task_name: TaskName,
    /// The task's payload as JSON text (JSON may hold nested arrays, which Firestore does not).
    pub payload: String,
    /// The profile the task was about (an Omneo id, a Klaviyo id or an email), when it names one.
    #[serde(default)]
    pub profile: Option<String>,
    /// The step of the task that failed (e.g. `import_profile`), when known.
    #[serde(default)]
    pub step: Option<String>,
    /// A failure (the task ended without doing its work) or a warning (it did, with a caveat).
    #[serde(default)]
    pub severity: Severity,
    /// What went wrong.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was recorded.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    /// How many times an operator re-enqueued the task from this record.
    #[serde(default)]
    pub retries: u32,
    /// When it was last re-enqueued.
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub retried_at: Option<Timestamp>,
}

/// How bad a [`Failure`] record is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The task's work was not done.
    #[default]
    Failed,
    /// The work was done with a caveat worth a look (e.g. a data conflict: a phone left out).
    Warning,
}

impl Severity {
    /// The name as stored and as the failures API filters by it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Warning => "warning",
        }
    }
}

/// `sync_state/{tenant}:{omneo profile id}`: what was last written to Klaviyo for a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The tenant.
    pub tenant: TenantId,
    /// The Omneo profile id.
    pub omneo_profile_id: OmneoProfileId,
    /// The Klaviyo profile id it maps to.
    pub klaviyo_profile_id: Option<KlaviyoProfileId>,
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
    /// Email marketing.
    pub email: Option<ConsentState>,
    /// SMS marketing.
    pub sms: Option<ConsentState>,
}
