//! Tenant and install state (product.md §3): one trait, two implementations.
//!
//! [`MemoryStore`] serves local runs and fast tests; [`FirestoreStore`] is production. Both pass the
//! same conformance suite (`tests/integration/store.rs`), the Firestore one against Google's emulator.
//!
//! Every operation that reads before it writes runs as one transaction: create-if-absent fails with
//! [`StoreError::Conflict`] when the document exists, and the `update_*` methods are read-modify-write
//! with a [`Mutation`] closure that may be re-run on contention (so it must have no outside effects)
//! and may refuse with [`Abort`] — that is how compare-and-set conditions are expressed. Callers
//! refuse with a reason of their own type through [`dyn Store::update_tenant_or`] and
//! [`dyn Store::update_install_or`]. Counting a failure record's replay
//! ([`Store::mark_failure_retried`]) is the one other compare-and-set, on the replay count.
//!
//! Failure records are listed a page at a time ([`FailureQuery`], [`FailurePage`]), newest first,
//! filtered by task kind and severity, each page continuing after the previous page's
//! [`FailureCursor`].
//!
//! Both backends hold the [`Keyring`]: every tenant, install and OAuth state they write is first
//! re-sealed under the active key and bound to its place ([`SealedRecord`]), so a rotation
//! finishes by itself as records are written, and `POST /api/v1/keyring/reseal` finishes it for
//! the rest.

mod firestore;
mod memory;
mod records;
mod runs;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::firestore::FirestoreStore;
pub use self::memory::MemoryStore;
pub use self::records::*;
pub use self::runs::*;
use crate::api_error::ApiError;
use crate::crypto::Keyring;
use crate::domain::{OmneoProfileId, TenantId};
use crate::queue::{QueueName, TaskKind};

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A read-modify-write step: receives the current record (if any) and returns the record to write,
/// or [`Abort`] to leave the document untouched. It may run more than once.
pub type Mutation<'a, T> = &'a (dyn Fn(Option<T>) -> Result<T, Abort> + Send + Sync);

/// Returned by a [`Mutation`] to stop without writing; surfaces as [`StoreError::Aborted`]. Why it
/// refused is the caller's to keep: see [`dyn Store::update_tenant_or`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort;

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
    #[error("update aborted by its mutation")]
    Aborted,
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

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::unavailable(&error),
            _ => Self::internal(&error),
        }
    }
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

/// A page request over one tenant's [`Failure`] records, newest first: by `at`, then by `id`,
/// both descending (Firestore's order of `at desc, __name__ desc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureQuery {
    /// Only records of this task kind.
    pub kind: Option<TaskKind>,
    /// Only records of this severity.
    pub severity: Option<Severity>,
    /// Start after this record (the previous page's [`FailurePage::next`]); `None`: the newest.
    pub after: Option<FailureCursor>,
    /// At most this many records (0 gives an empty page).
    pub limit: usize,
}

impl FailureQuery {
    /// The first `limit` records, unfiltered.
    pub fn newest(limit: usize) -> Self {
        Self {
            kind: None,
            severity: None,
            after: None,
            limit,
        }
    }

    /// The equality filters of the listing's Firestore query, in index order: `tenant`, then
    /// `task_kind` and `severity` when asked for. The query orders by [`FAILURE_LISTING_ORDER`].
    pub fn equalities(&self, tenant: &TenantId) -> Vec<(&'static str, String)> {
        let mut equal = vec![("tenant", tenant.to_string())];
        if let Some(kind) = self.kind {
            equal.push(("task_kind", kind.as_str().to_owned()));
        }
        if let Some(severity) = self.severity {
            equal.push(("severity", severity.as_str().to_owned()));
        }
        equal
    }

    /// The composite index Firestore needs for this query's filters: its equality fields
    /// ascending, then [`FAILURE_LISTING_ORDER`].
    pub fn index(&self) -> CompositeIndex {
        let tenant = TenantId::parse("any").expect("a valid tenant id");
        let fields = self
            .equalities(&tenant)
            .into_iter()
            .map(|(field, _)| IndexField {
                field,
                descending: false,
            })
            .chain(FAILURE_LISTING_ORDER)
            .collect();
        CompositeIndex {
            collection: FAILURES,
            fields,
        }
    }

    /// The composite indexes every filter combination of the listing needs: what production's
    /// Firestore must declare (`infra/firestore.tf`, checked by the infra tests).
    pub fn indexes() -> Vec<CompositeIndex> {
        let kind = Some(TaskKind::SyncProfile);
        let severity = Some(Severity::Failed);
        [
            (None, None),
            (kind, None),
            (None, severity),
            (kind, severity),
        ]
        .into_iter()
        .map(|(kind, severity)| {
            Self {
                kind,
                severity,
                ..Self::newest(1)
            }
            .index()
        })
        .collect()
    }

    /// Whether `failure` belongs to the page set of `tenant` this query walks: the tenant's, of
    /// the kind and severity asked for, and older than the cursor.
    fn admits(&self, tenant: &TenantId, failure: &Failure) -> bool {
        &failure.tenant == tenant
            && self.kind.is_none_or(|kind| failure.task_kind == kind)
            && self
                .severity
                .is_none_or(|severity| failure.severity == severity)
            && self
                .after
                .as_ref()
                .is_none_or(|after| &FailureCursor::of(failure) < after)
    }
}

/// The order of the failures listing: newest first, ties broken by document name.
pub const FAILURE_LISTING_ORDER: [IndexField; 2] = [
    IndexField {
        field: "at",
        descending: true,
    },
    IndexField {
        field: "__name__",
        descending: true,
    },
];

/// A Firestore composite index (query scope: collection) a query of the store needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompositeIndex {
    /// The collection queried.
    pub collection: &'static str,
    /// The fields, in order.
    pub fields: Vec<IndexField>,
}

/// One field of a Firestore composite index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexField {
    /// The field path (`__name__`: the document name).
    pub field: &'static str,
    /// Descending, else ascending.
    pub descending: bool,
}

/// A field a Firestore TTL policy deletes documents by: a real Timestamp in every record of the
/// collection. Firestore deletes expired documents only eventually, so readers check it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtlField {
    /// The collection.
    pub collection: &'static str,
    /// The Timestamp field.
    pub field: &'static str,
}

/// The TTL policies production's Firestore must declare (`infra/firestore.tf`, checked by the
/// infra tests): pending OAuth states and idempotency markers expire.
pub const TTL_FIELDS: [TtlField; 2] = [
    TtlField {
        collection: OAUTH_STATES,
        field: "expires_at",
    },
    TtlField {
        collection: PROCESSED,
        field: "expires_at",
    },
];

/// Where a page of failures ended: the `(at, id)` of its last record. Ordered like the records
/// it points at (a later `at` is greater; equal times compare by id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailureCursor {
    /// The record's time (microsecond precision, as stored).
    pub at: Timestamp,
    /// The record's id.
    pub id: String,
}

impl FailureCursor {
    /// The cursor just past `failure`.
    pub fn of(failure: &Failure) -> Self {
        Self {
            at: failure.at,
            id: failure.id.clone(),
        }
    }

    /// The cursor as the API hands it out: unpadded base64url of `{at in microseconds}:{id}`,
    /// opaque to callers.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.at.as_microsecond(), self.id))
    }

    /// Reads a cursor [`FailureCursor::encode`] made; anything else is `None`.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        let at = Timestamp::from_microsecond(micros.parse().ok()?).ok()?;
        (!id.is_empty()).then(|| Self {
            at,
            id: id.to_owned(),
        })
    }
}

/// One page of a [`FailureQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePage {
    /// The records, newest first.
    pub failures: Vec<Failure>,
    /// Where the next page starts; `None` when this page holds the last matching record.
    pub next: Option<FailureCursor>,
}

impl FailurePage {
    /// The page of `limit` records out of `newest_first`, the matching records in query order
    /// (the backends fetch `limit + 1`: one more than the page says whether there is a next).
    fn of(mut newest_first: Vec<Failure>, limit: usize) -> Self {
        let more = newest_first.len() > limit;
        newest_first.truncate(limit);
        let next = newest_first.last().filter(|_| more).map(FailureCursor::of);
        Self {
            failures: newest_first,
            next,
        }
    }
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

    /// Every registered tenant's id (key rotation walks them).
    async fn tenant_ids(&self) -> StoreResult<Vec<TenantId>>;

    /// Stores a new OAuth state; [`StoreError::Conflict`] if the state hash is taken.
    async fn put_oauth_state(&self, state: &OAuthState) -> StoreResult<()>;
    /// Consumes a state exactly once, by the hash of its value: returns it and deletes it in one
    /// transaction. Unknown, already consumed and expired states all give `None`.
    async fn take_oauth_state(&self, state_hash: &str) -> StoreResult<Option<OAuthState>>;
    /// Every stored OAuth state not yet expired (key rotation counts them).
    async fn live_oauth_states(&self) -> StoreResult<Vec<OAuthState>>;

    /// Claims an idempotency key for `holder` for `lease`; see [`Claim`]. An expired lease can be
    /// re-claimed (by anyone); the holder of a live lease claiming again extends it to `lease`
    /// from now (how long work keeps its lease alive).
    async fn claim(
        &self,
        key: &IdempotencyKey,
        holder: &str,
        lease: Duration,
    ) -> StoreResult<Claim>;
    /// Marks a claimed key done; it answers [`Claim::Done`] for `retain` (≥ 48 h in production).
    async fn complete(&self, key: &IdempotencyKey, retain: Duration) -> StoreResult<()>;
    /// Gives up `holder`'s claim (after a retryable failure, or at the end of a lease's work) so the
    /// next attempt can claim at once. A claim that lapsed and was taken by someone else stays
    /// theirs.
    async fn release(&self, key: &IdempotencyKey, holder: &str) -> StoreResult<()>;

    /// Records a permanent failure for review.
    async fn record_failure(&self, failure: &Failure) -> StoreResult<()>;
    /// One page of the tenant's failure records, newest first (see [`FailureQuery`]).
    async fn failures(&self, tenant: &TenantId, query: &FailureQuery) -> StoreResult<FailurePage>;
    /// The tenant's failure record `id`; `None` when absent or another tenant's.
    async fn failure(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<Failure>>;
    /// Counts a replay of the tenant's failure record `id`, compare-and-set: when its `retries`
    /// is still `expected_retries`, sets it one higher and `retried_at` to `at`, in one
    /// transaction, and returns the record as written. `None` when the tenant has no such record;
    /// [`StoreError::Aborted`] when `retries` moved on (another replay counted first).
    async fn mark_failure_retried(
        &self,
        tenant: &TenantId,
        id: &str,
        expected_retries: u32,
        at: Timestamp,
    ) -> StoreResult<Option<Failure>>;

    /// What was last written to Klaviyo for one Omneo profile.
    async fn sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<Option<SyncState>>;
    /// Replaces the sync state of one profile.
    async fn put_sync_state(&self, state: &SyncState) -> StoreResult<()>;
    /// The sync states of many profiles of one tenant, in one round trip where the backend
    /// allows (profiles without one are left out; order not kept).
    async fn sync_states(
        &self,
        tenant: &TenantId,
        omneo_profile_ids: &[OmneoProfileId],
    ) -> StoreResult<Vec<SyncState>>;
    /// Replaces the sync states of many profiles, in batches (each batch atomic).
    async fn put_sync_states(&self, states: &[SyncState]) -> StoreResult<()>;
    /// Forgets the sync state of one profile (absent is fine).
    async fn delete_sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<()>;

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

    /// The tenant's latest backfill run.
    async fn backfill(&self, tenant: &TenantId) -> StoreResult<Option<BackfillRun>>;
    /// Read-modify-write of the tenant's backfill run (the mutation sees `None` when absent).
    async fn update_backfill(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, BackfillRun>,
    ) -> StoreResult<BackfillRun>;

    /// The tenant's reconciliation record.
    async fn reconciliation(&self, tenant: &TenantId) -> StoreResult<Option<Reconciliation>>;
    /// Read-modify-write of the tenant's reconciliation record (the mutation sees `None` when
    /// absent).
    async fn update_reconciliation(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Reconciliation>,
    ) -> StoreResult<Reconciliation>;

    /// Reserves a Cloud Tasks queue name for a tenant if nobody holds it; returns the tenant that
    /// holds it afterwards (the caller's, or another one that got there first). Reservations are
    /// never released: a queue outlives an uninstall, and its name must not pass to another tenant.
    async fn reserve_queue_name(
        &self,
        name: &QueueName,
        tenant: &TenantId,
    ) -> StoreResult<TenantId>;
}

/// Keeps the reason a typed mutation refused, across the re-runs of a transaction.
struct Refusal<E>(Mutex<Option<E>>);

impl<E> Refusal<E> {
    fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Passes a run's decision on, keeping its refusal (the last run's refusal is the one that
    /// ended the update).
    fn keep<T>(&self, decided: Result<T, E>) -> Result<T, Abort> {
        decided.map_err(|reason| {
            *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
            Abort
        })
    }

    /// The outcome of the update: the record, the refusal, or the store's error.
    fn outcome<T>(self, result: StoreResult<T>) -> StoreResult<Result<T, E>> {
        match result {
            Ok(record) => Ok(Ok(record)),
            Err(StoreError::Aborted) => {
                let reason = self
                    .0
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(Err(reason.expect("an aborted update kept its refusal")))
            }
            Err(other) => Err(other),
        }
    }
}

impl dyn Store {
    /// Read-modify-write of a tenant record whose mutation may refuse with a reason of type `E`:
    /// `Ok(Ok(record))` written, `Ok(Err(reason))` refused (nothing written), `Err` the store failed.
    pub async fn update_tenant_or<E: Send>(
        &self,
        id: &TenantId,
        mutate: impl Fn(Option<Tenant>) -> Result<Tenant, E> + Send + Sync,
    ) -> StoreResult<Result<Tenant, E>> {
        let refusal = Refusal::new();
        let result = self
            .update_tenant(id, &|current| refusal.keep(mutate(current)))
            .await;
        refusal.outcome(result)
    }

    /// Read-modify-write of an install record whose mutation may refuse with a reason of type
    /// `E` (see [`dyn Store::update_tenant_or`]).
    pub async fn update_install_or<E: Send>(
        &self,
        tenant: &TenantId,
        mutate: impl Fn(Option<Install>) -> Result<Install, E> + Send + Sync,
    ) -> StoreResult<Result<Install, E>> {
        let refusal = Refusal::new();
        let result = self
            .update_install(tenant, &|current| refusal.keep(mutate(current)))
            .await;
        refusal.outcome(result)
    }

    /// Read-modify-write of a backfill run whose mutation may refuse with a reason of type `E`
    /// (see [`dyn Store::update_tenant_or`]).
    pub async fn update_backfill_or<E: Send>(
        &self,
        tenant: &TenantId,
        mutate: impl Fn(Option<BackfillRun>) -> Result<BackfillRun, E> + Send + Sync,
    ) -> StoreResult<Result<BackfillRun, E>> {
        let refusal = Refusal::new();
        let result = self
            .update_backfill(tenant, &|current| refusal.keep(mutate(current)))
            .await;
        refusal.outcome(result)
    }

    /// Read-modify-write of a reconciliation record whose mutation may refuse with a reason of
    /// type `E` (see [`dyn Store::update_tenant_or`]).
    pub async fn update_reconciliation_or<E: Send>(
        &self,
        tenant: &TenantId,
        mutate: impl Fn(Option<Reconciliation>) -> Result<Reconciliation, E> + Send + Sync,
    ) -> StoreResult<Result<Reconciliation, E>> {
        let refusal = Refusal::new();
        let result = self
            .update_reconciliation(tenant, &|current| refusal.keep(mutate(current)))
            .await;
        refusal.outcome(result)
    }
}

// The collections of product.md §3.
const TENANTS: &str = "tenants";
const INSTALLS: &str = "installs";
const OAUTH_STATES: &str = "oauth_states";
const PROCESSED: &str = "processed";
const FAILURES: &str = "failures";
const SYNC_STATE: &str = "sync_state";
const KLAVIYO_ACCOUNTS: &str = "klaviyo_accounts";
const QUEUE_NAMES: &str = "queue_names";
const BACKFILLS: &str = "backfills";
const RECONCILIATIONS: &str = "reconciliations";

/// How many writes one Firestore batch takes.
const WRITE_BATCH: usize = 500;

/// The id of a profile's sync state document.
fn sync_state_id(tenant: &TenantId, omneo_profile_id: &OmneoProfileId) -> String {
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

/// `update_*`: the mutation's record is re-sealed and written, and returned; an [`Abort`] writes
/// nothing.
fn update_step<T: SealedRecord + Clone>(
    mutate: Mutation<'_, T>,
    current: Option<T>,
    keyring: &Keyring,
) -> Step<T, T> {
    let mut next = mutate(current).map_err(|Abort| StoreError::Aborted)?;
    reseal(&mut next, keyring);
    Ok((Change::Put(next.clone()), next))
}

/// `update_*` of a record without sealed values: the mutation's record is written and returned;
/// an [`Abort`] writes nothing.
fn plain_update_step<T: Clone>(mutate: Mutation<'_, T>, current: Option<T>) -> Step<T, T> {
    let next = mutate(current).map_err(|Abort| StoreError::Aborted)?;
    Ok((Change::Put(next.clone()), next))
}

/// A record about to be created, re-sealed like every write.
fn resealed<T: SealedRecord + Clone>(record: &T, keyring: &Keyring) -> T {
    let mut record = record.clone();
    reseal(&mut record, keyring);
    record
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

/// `mark_failure_retried`: the tenant's record is counted if nobody counted it since it was read.
fn mark_retried_step(
    current: Option<Failure>,
    tenant: &TenantId,
    expected_retries: u32,
    at: Timestamp,
) -> Step<Failure, Option<Failure>> {
    match current {
        Some(failure) if &failure.tenant == tenant => {
            if failure.retries != expected_retries {
                return Err(StoreError::Aborted);
            }
            let marked = Failure {
                retries: expected_retries.saturating_add(1),
                retried_at: Some(at),
                ..failure
            };
            Ok((Change::Put(marked.clone()), Some(marked)))
        }
        _ => Ok((Change::Keep, None)),
    }
}

/// `processed/{key}`: an idempotency marker. `expires_at` is a real timestamp a TTL policy deletes
/// by: the lease end while in progress, `now + retain` once done. Past it, the marker is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    /// In progress or done.
    state: MarkerState,
    /// Who claimed it (empty once done).
    #[serde(default)]
    holder: String,
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
            holder: String::new(),
            expires_at: later(now, retain),
        }
    }

    /// The marker if it still counts at `now`.
    fn live(current: Option<Self>, now: Timestamp) -> Option<Self> {
        current.filter(|marker| marker.expires_at > now)
    }

    /// `claim`: a live marker answers for itself, except that its own holder's lease is extended;
    /// otherwise the caller takes a fresh lease.
    fn claim_step(
        current: Option<Self>,
        holder: &str,
        now: Timestamp,
        lease: Duration,
    ) -> Step<Self, Claim> {
        Ok(match Self::live(current, now) {
            Some(Self {
                state: MarkerState::Done,
                ..
            }) => (Change::Keep, Claim::Done),
            Some(Self {
                state: MarkerState::InProgress,
                holder: current,
                ..
            }) if current != holder => (Change::Keep, Claim::InProgress),
            Some(_) | None => {
                let marker = Self {
                    state: MarkerState::InProgress,
                    holder: holder.to_owned(),
                    expires_at: later(now, lease),
                };
                (Change::Put(marker), Claim::Acquired)
            }
        })
    }

    /// `release`: an in-progress marker of `holder` goes; a done one, or another holder's, stays.
    fn release_step(current: Option<Self>, holder: &str) -> Step<Self, ()> {
        Ok(match current {
            Some(Self {
                state: MarkerState::InProgress,
                holder: current,
                ..
            }) if current == holder => (Change::Delete, ()),
            _ => (Change::Keep, ()),
        })
    }
}

/// `klaviyo_accounts/{account_id}` and `queue_names/{name}`: the tenant a Klaviyo account or a
/// queue name is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Binding {
    /// The owning tenant.
    tenant: TenantId,
}

impl Binding {
    /// `bind_klaviyo_account`, `reserve_queue_name`: the first binder wins.
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
