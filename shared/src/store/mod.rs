//! Tenant and install state (product.md §3): one trait, two implementations.
//!
//! [`MemoryStore`] serves local runs and fast tests; [`FirestoreStore`] is production. Both pass the
//! same conformance suite (`tests/integration/store.rs`), the Firestore one against Google's emulator.
//!
//! Every operation that reads before it writes runs as one transaction: create-if-absent fails with
//! [`StoreError::Conflict`] when the document exists, and the `update_*` methods are read-modify-write
//! with a [`Mutation`] closure that may be re-run on contention (so it must have no outside effects)
//! and may refuse with [`Abort`] — that is how compare-and-set conditions are expressed.

mod firestore;
mod memory;
mod records;

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::firestore::FirestoreStore;
pub use self::memory::MemoryStore;
pub use self::records::*;
use crate::domain::TenantId;

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A read-modify-write step: receives the current record (if any) and returns the record to write,
/// or [`Abort`] to leave the document untouched. It may run more than once.
pub type Mutation<'a, T> = &'a (dyn Fn(Option<T>) -> Result<T, Abort> + Send + Sync);

/// Returned by a [`Mutation`] to stop without writing; surfaces as [`StoreError::Aborted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort(pub String);

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create-if-absent found the document already there.
    #[error("{collection}/{id} already exists")]
    Conflict {
        /// Collection name.
        collection: &'static str,
        /// Document id.
        id: String,
    },
    /// A mutation refused to write (a compare-and-set condition did not hold).
    #[error("update aborted: {0}")]
    Aborted(String),
    /// A stored document could not be decoded.
    #[error("{collection}/{id} is unreadable: {reason}")]
    Corrupt {
        /// Collection name.
        collection: &'static str,
        /// Document id.
        id: String,
        /// Decoder message.
        reason: String,
    },
    /// The backend is unreachable or failed; callers answer 503 so the sender retries.
    #[error("store unavailable: {0:#}")]
    Unavailable(#[source] anyhow::Error),
}

/// The outcome of [`Store::claim`] on an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds the key until the lease ends; it must `complete` or `release` it.
    Acquired,
    /// Another worker holds an unexpired lease: retry later.
    InProgress,
    /// The work was already done: skip it.
    Done,
}

/// Tenant and install state, as the functions need it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The tenant record, if registered.
    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>>;
    /// Registers a tenant; [`StoreError::Conflict`] if it exists.
    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()>;
    /// Read-modify-write of a tenant record (the mutation sees `None` when absent).
    async fn update_tenant(
        &self,
        id: &TenantId,
        mutate: Mutation<'_, Tenant>,
    ) -> StoreResult<Tenant>;

    /// The install record, if any.
    async fn install(&self, tenant: &TenantId) -> StoreResult<Option<Install>>;
    /// Read-modify-write of an install record (the mutation sees `None` when absent).
    async fn update_install(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Install>,
    ) -> StoreResult<Install>;

    /// Stores a new OAuth state; [`StoreError::Conflict`] if the state value is taken.
    async fn put_oauth_state(&self, state: &OAuthState) -> StoreResult<()>;
    /// Consumes a state exactly once: returns it and deletes it in one transaction.
    /// Unknown, already consumed and expired states all give `None`.
    async fn take_oauth_state(&self, state: &str) -> StoreResult<Option<OAuthState>>;

    /// Claims an idempotency key for `lease`; see [`Claim`]. An expired lease can be re-claimed.
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> StoreResult<Claim>;
    /// Marks a claimed key done; it answers [`Claim::Done`] for `retain` (≥ 48 h in production).
    async fn complete(&self, key: &IdempotencyKey, retain: Duration) -> StoreResult<()>;
    /// Gives up a claim after a retryable failure so the next attempt can claim at once.
    async fn release(&self, key: &IdempotencyKey) -> StoreResult<()>;

    /// Records a permanent failure for review.
    async fn record_failure(&self, failure: &Failure) -> StoreResult<()>;
    /// The tenant's most recent failures, newest first.
    async fn failures(&self, tenant: &TenantId, limit: usize) -> StoreResult<Vec<Failure>>;

    /// What was last written to Klaviyo for one Omneo profile.
    async fn sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &str,
    ) -> StoreResult<Option<SyncState>>;
    /// Replaces the sync state of one profile.
    async fn put_sync_state(&self, state: &SyncState) -> StoreResult<()>;
    /// Forgets the sync state of one profile (absent is fine).
    async fn delete_sync_state(&self, tenant: &TenantId, omneo_profile_id: &str)
    -> StoreResult<()>;

    /// Binds a Klaviyo account to a tenant if unbound; returns the tenant it is bound to afterwards
    /// (the caller's tenant, or another one that got there first).
    async fn bind_klaviyo_account(
        &self,
        account_id: &str,
        tenant: &TenantId,
    ) -> StoreResult<TenantId>;
    /// The tenant a Klaviyo account is bound to.
    async fn klaviyo_account_tenant(&self, account_id: &str) -> StoreResult<Option<TenantId>>;
    /// Removes the binding if it belongs to `tenant` (used by uninstall).
    async fn unbind_klaviyo_account(&self, account_id: &str, tenant: &TenantId) -> StoreResult<()>;
}

// The collections of product.md §3.
const TENANTS: &str = "tenants";
const INSTALLS: &str = "installs";
const OAUTH_STATES: &str = "oauth_states";
const PROCESSED: &str = "processed";
const FAILURES: &str = "failures";
const SYNC_STATE: &str = "sync_state";
const KLAVIYO_ACCOUNTS: &str = "klaviyo_accounts";

/// The id of a profile's sync state document.
fn sync_state_id(tenant: &TenantId, omneo_profile_id: &str) -> String {
    format!("{tenant}:{omneo_profile_id}")
}

// What follows is the one statement of the semantics both backends share: every read-then-write is
// "read one document, decide (synchronously, maybe more than once), apply the decided change".

/// What a read-modify-write step does to the one document it read.
enum Change<T> {
    /// Leave the document as it is (absent stays absent).
    Keep,
    /// Write this value, replacing the whole document.
    Put(T),
    /// Delete the document.
    Delete,
}

/// The decision of a read-modify-write: the change to apply and the caller's answer.
type Step<T, R> = StoreResult<(Change<T>, R)>;

/// `update_*`: the mutation's record is written and returned; an [`Abort`] writes nothing.
fn update_step<T: Clone>(mutate: Mutation<'_, T>, current: Option<T>) -> Step<T, T> {
    let next = mutate(current).map_err(|Abort(reason)| StoreError::Aborted(reason))?;
    Ok((Change::Put(next.clone()), next))
}

/// `take_oauth_state`: any stored state is deleted; only a live one is returned.
fn take_state_step(
    current: Option<OAuthState>,
    now: Timestamp,
) -> Step<OAuthState, Option<OAuthState>> {
    Ok(match current {
        None => (Change::Keep, None),
        Some(state) => (Change::Delete, (state.expires_at > now).then_some(state)),
    })
}

/// `processed/{key}`: an idempotency marker. `expires_at` is a real timestamp a TTL policy deletes
/// by: the lease end while in progress, `now + retain` once done. Past it, the marker is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// In progress or done.
    state: MarkerState,
    /// When the marker stops counting.
    #[serde(with = "::firestore::serialize_as_timestamp")]
    expires_at: Timestamp,
}

/// The two states of a [`Marker`], stored as plain strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MarkerState {
    /// Someone holds the lease.
    InProgress,
    /// The work is done.
    Done,
}

impl Marker {
    /// A marker that answers [`Claim::Done`] for `retain`.
    fn done(now: Timestamp, retain: Duration) -> Self {
        Self {
            state: MarkerState::Done,
            expires_at: later(now, retain),
        }
    }

    /// The marker if it still counts at `now`.
    fn live(current: Option<Self>, now: Timestamp) -> Option<Self> {
        current.filter(|marker| marker.expires_at > now)
    }

    /// `claim`: a live marker answers for itself; otherwise the caller takes a fresh lease.
    fn claim_step(current: Option<Self>, now: Timestamp, lease: Duration) -> Step<Self, Claim> {
        Ok(match Self::live(current, now) {
            Some(Self {
                state: MarkerState::Done,
                ..
            }) => (Change::Keep, Claim::Done),
            Some(Self {
                state: MarkerState::InProgress,
                ..
            }) => (Change::Keep, Claim::InProgress),
            None => {
                let marker = Self {
                    state: MarkerState::InProgress,
                    expires_at: later(now, lease),
                };
                (Change::Put(marker), Claim::Acquired)
            }
        })
    }

    /// `release`: an in-progress marker goes; a done one stays done.
    fn release_step(current: Option<Self>) -> Step<Self, ()> {
        Ok(match current {
            Some(Self {
                state: MarkerState::InProgress,
                ..
            }) => (Change::Delete, ()),
            _ => (Change::Keep, ()),
        })
    }
}

/// `klaviyo_accounts/{account_id}`: the tenant an account is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AccountBinding {
    /// The owning tenant.
    tenant: TenantId,
}

impl AccountBinding {
    /// `bind_klaviyo_account`: the first binder wins.
    fn bind_step(current: Option<Self>, tenant: &TenantId) -> Step<Self, TenantId> {
        Ok(match current {
            Some(binding) => (Change::Keep, binding.tenant),
            None => {
                let binding = Self {
                    tenant: tenant.clone(),
                };
                (Change::Put(binding), tenant.clone())
            }
        })
    }

    /// `unbind_klaviyo_account`: only the owner removes the binding.
    fn unbind_step(current: Option<Self>, tenant: &TenantId) -> Step<Self, ()> {
        Ok(match current {
            Some(binding) if &binding.tenant == tenant => (Change::Delete, ()),
            _ => (Change::Keep, ()),
        })
    }
}

/// `now + duration`, saturating far in the future.
fn later(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_add(duration).unwrap_or(Timestamp::MAX)
}

/// Decodes a document into its record.
fn decode<T: serde::de::DeserializeOwned>(
    collection: &'static str,
    id: &str,
    doc: &gcloud_sdk::google::firestore::v1::Document,
) -> StoreResult<T> {
    ::firestore::FirestoreDb::deserialize_doc_to(doc).map_err(|err| StoreError::Corrupt {
        collection,
        id: id.to_owned(),
        reason: err.to_string(),
    })
}
