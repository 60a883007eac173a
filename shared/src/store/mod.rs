//! Tenant and install state (product.md §3): one trait, two implementations.
//!
//! [`MemoryStore`] serves local runs and fast tests; [`FirestoreStore`] is production. Both pass the
//! same conformance suite (`tests/integration/store.rs`), the Firestore one against Google's emulator.
//!
//! Every operation that reads before it writes runs as one transaction: create-if-absent fails with
//! [`StoreError::Conflict`] when the document exists, and the `update_*` methods are read-modify-write
//! with a [`Mutation`] closure that may be re-run on contention (so it must have no outside effects)
//! and may refuse with [`Abort`] — that is how compare-and-set conditions are expressed.

// mod firestore;
// mod memory;
mod records;

use std::time::Duration;

use async_trait::async_trait;

// pub use self::firestore::FirestoreStore;
// pub use self::memory::MemoryStore;
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
