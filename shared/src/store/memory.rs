//! [`MemoryStore`]: the store in process memory, for local runs and fast tests.
//!
//! Every operation holds one mutex for its whole read-decide-write, which is what a Firestore
//! transaction guarantees; the decisions themselves are the ones [`super::FirestoreStore`] makes.
//! Records are stored as Firestore would read them back (through its serde, so timestamps keep
//! microseconds and a record that would not decode from Firestore does not decode here either).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::anyhow;
use async_trait::async_trait;
use firestore::FirestoreDb;
use gcloud_sdk::google::firestore::v1::Value;
use gcloud_sdk::google::firestore::v1::value::ValueType;
use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BACKFILLS, BackfillRun, Binding, Change, Claim, FAILURES, Failure, FailureCursor, FailurePage,
    FailureQuery, INSTALLS, IdempotencyKey, Install, KLAVIYO_ACCOUNTS, Marker, Mutation,
    OAUTH_STATES, OAuthState, PROCESSED, QUEUE_NAMES, RECONCILIATIONS, Reconciliation, SYNC_STATE,
    Step, Store, StoreError, StoreResult, SyncState, TENANTS, Tenant, WRITE_BATCH, decode,
    mark_retried_step, plain_update_step, resealed, sync_state_id, take_state_step, update_step,
};
use crate::crypto::Keyring;
use crate::domain::{OmneoProfileId, TenantId};
use crate::queue::QueueName;

/// The collections, keyed like the Firestore documents.
#[derive(Default)]
struct Collections {
    tenants: HashMap<TenantId, Tenant>,
    installs: HashMap<TenantId, Install>,
    oauth_states: HashMap<String, OAuthState>,
    processed: HashMap<String, Marker>,
    failures: HashMap<String, Failure>,
    sync_state: HashMap<String, SyncState>,
    backfills: HashMap<TenantId, BackfillRun>,
    reconciliations: HashMap<TenantId, Reconciliation>,
    klaviyo_accounts: HashMap<String, Binding>,
    queue_names: HashMap<QueueName, Binding>,
}

/// A [`Store`] held in process memory; each clone of an `Arc` of it sees the same data.
pub struct MemoryStore {
    collections: Mutex<Collections>,
    /// Re-seals secrets on every write.
    keyring: Keyring,
}

impl MemoryStore {
    /// An empty store that re-seals secrets under `keyring`'s active key on every write.
    pub fn new(keyring: Keyring) -> Self {
        Self {
            collections: Mutex::default(),
            keyring,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Collections> {
        // A panic can only happen inside a decision, before anything is written, so the data
        // behind a poisoned lock is still consistent.
        self.collections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `value` as Firestore would read it back after writing it to `collection/id`.
fn as_stored<T: Serialize + DeserializeOwned>(
    collection: &'static str,
    id: &str,
    value: &T,
) -> StoreResult<T> {
    let mut doc =
        FirestoreDb::serialize_to_doc(format!("{collection}/{id}"), value).map_err(|err| {
            StoreError::Unavailable(anyhow!(err).context(format!("encoding {collection}/{id}")))
        })?;
    doc.fields.values_mut().for_each(keep_microseconds);
    decode(collection, id, &doc)
}

/// Cuts every timestamp in `value` to microseconds, as Firestore does on write.
fn keep_microseconds(value: &mut Value) {
    match &mut value.value_type {
        Some(ValueType::TimestampValue(timestamp)) => timestamp.nanos -= timestamp.nanos % 1_000,
        Some(ValueType::MapValue(map)) => map.fields.values_mut().for_each(keep_microseconds),
        Some(ValueType::ArrayValue(array)) => array.values.iter_mut().for_each(keep_microseconds),
        _ => {}
    }
}

/// Applies one read-modify-write decision to the entry at `key` (document `collection/id`).
fn read_modify_write<K: Eq + Hash, T: Clone + Serialize + DeserializeOwned, R>(
    map: &mut HashMap<K, T>,
    (collection, id): (&'static str, &str),
    key: K,
    decide: impl FnOnce(Option<T>) -> Step<T, R>,
) -> StoreResult<R> {
    let (change, answer) = decide(map.get(&key).cloned())?;
    match change {
        Change::Keep => {}
        Change::Put(value) => {
            map.insert(key, as_stored(collection, id, &value)?);
        }
        Change::Delete => {
            map.remove(&key);
        }
    }
    Ok(answer)
}

/// Writes `value` at `key` (document `collection/id`), replacing what was there.
fn put<K: Eq + Hash, T: Serialize + DeserializeOwned>(
    map: &mut HashMap<K, T>,
    (collection, id): (&'static str, &str),
    key: K,
    value: &T,
) -> StoreResult<()> {
    map.insert(key, as_stored(collection, id, value)?);
    Ok(())
}

/// Writes `value` at `key` unless it is taken.
fn create<K: Eq + Hash, T: Serialize + DeserializeOwned>(
    map: &mut HashMap<K, T>,
    (collection, id): (&'static str, &str),
    key: K,
    value: &T,
) -> StoreResult<()> {
    if map.contains_key(&key) {
        return Err(StoreError::Conflict {
            collection,
            id: id.to_owned(),
        });
    }
    put(map, (collection, id), key, value)
}

#[async_trait]
impl Store for MemoryStore {
    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        Ok(self.lock().tenants.get(id).cloned())
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let at = (TENANTS, tenant.id.as_str());
        let tenant = resealed(tenant, &self.keyring);
        create(&mut self.lock().tenants, at, tenant.id.clone(), &tenant)
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        mutate: Mutation<'_, Tenant>,
    ) -> StoreResult<Tenant> {
        let at = (TENANTS, id.as_str());
        read_modify_write(&mut self.lock().tenants, at, id.clone(), |current| {
            update_step(mutate, current, &self.keyring)
        })
    }

    async fn install(&self, tenant: &TenantId) -> StoreResult<Option<Install>> {
        Ok(self.lock().installs.get(tenant).cloned())
    }

    async fn update_install(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Install>,
    ) -> StoreResult<Install> {
        let at = (INSTALLS, tenant.as_str());
        read_modify_write(&mut self.lock().installs, at, tenant.clone(), |current| {
            update_step(mutate, current, &self.keyring)
        })
    }

    async fn tenant_ids(&self) -> StoreResult<Vec<TenantId>> {
        let mut ids: Vec<TenantId> = self.lock().tenants.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> StoreResult<()> {
        let at = (OAUTH_STATES, state.state_hash.as_str());
        let state = resealed(state, &self.keyring);
        create(
            &mut self.lock().oauth_states,
            at,
            state.state_hash.clone(),
            &state,
        )
    }

    async fn take_oauth_state(&self, state_hash: &str) -> StoreResult<Option<OAuthState>> {
        let at = (OAUTH_STATES, state_hash);
        read_modify_write(
            &mut self.lock().oauth_states,
            at,
            state_hash.to_owned(),
            |current| take_state_step(current, Timestamp::now()),
        )
    }

    async fn live_oauth_states(&self) -> StoreResult<Vec<OAuthState>> {
        let now = Timestamp::now();
        Ok(self
            .lock()
            .oauth_states
            .values()
            .filter(|state| state.expires_at > now)
            .cloned()
            .collect())
    }

    async fn claim(
        &self,
        key: &IdempotencyKey,
        holder: &str,
        lease: Duration,
    ) -> StoreResult<Claim> {
        let at = (PROCESSED, key.as_str());
        read_modify_write(
            &mut self.lock().processed,
            at,
            key.as_str().to_owned(),
            |current| Marker::claim_step(current, holder, Timestamp::now(), lease),
        )
    }

    async fn complete(&self, key: &IdempotencyKey, retain: Duration) -> StoreResult<()> {
        let marker = Marker::done(Timestamp::now(), retain);
        let at = (PROCESSED, key.as_str());
        put(
            &mut self.lock().processed,
            at,
            key.as_str().to_owned(),
            &marker,
        )
    }

    async fn release(&self, key: &IdempotencyKey, holder: &str) -> StoreResult<()> {
        let at = (PROCESSED, key.as_str());
        read_modify_write(
            &mut self.lock().processed,
            at,
            key.as_str().to_owned(),
            |current| Marker::release_step(current, holder),
        )
    }

    async fn record_failure(&self, failure: &Failure) -> StoreResult<()> {
        let at = (FAILURES, failure.id.as_str());
        put(&mut self.lock().failures, at, failure.id.clone(), failure)
    }

    async fn failures(&self, tenant: &TenantId, query: &FailureQuery) -> StoreResult<FailurePage> {
        let mut matching: Vec<Failure> = self
            .lock()
            .failures
            .values()
            .filter(|failure| query.admits(tenant, failure))
            .cloned()
            .collect();
        // Firestore's order: by time, then by document id, both descending.
        matching.sort_by_cached_key(|failure| std::cmp::Reverse(FailureCursor::of(failure)));
        Ok(FailurePage::of(matching, query.limit))
    }

    async fn failure(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<Failure>> {
        Ok(self
            .lock()
            .failures
            .get(id)
            .filter(|failure| &failure.tenant == tenant)
            .cloned())
    }

    async fn mark_failure_retried(
        &self,
        tenant: &TenantId,
        id: &str,
        expected_retries: u32,
        at: Timestamp,
    ) -> StoreResult<Option<Failure>> {
        read_modify_write(
            &mut self.lock().failures,
            (FAILURES, id),
            id.to_owned(),
            |current| mark_retried_step(current, tenant, expected_retries, at),
        )
    }

    async fn sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<Option<SyncState>> {
        let id = sync_state_id(tenant, omneo_profile_id);
        Ok(self.lock().sync_state.get(&id).cloned())
    }

    async fn put_sync_state(&self, state: &SyncState) -> StoreResult<()> {
        let id = sync_state_id(&state.tenant, &state.omneo_profile_id);
        put(
            &mut self.lock().sync_state,
            (SYNC_STATE, &id),
            id.clone(),
            state,
        )
    }

    async fn sync_states(
        &self,
        tenant: &TenantId,
        omneo_profile_ids: &[OmneoProfileId],
    ) -> StoreResult<Vec<SyncState>> {
        let collections = self.lock();
        Ok(omneo_profile_ids
            .iter()
            .filter_map(|id| {
                collections
                    .sync_state
                    .get(&sync_state_id(tenant, id))
                    .cloned()
            })
            .collect())
    }

    async fn put_sync_states(&self, states: &[SyncState]) -> StoreResult<()> {
        for batch in states.chunks(WRITE_BATCH) {
            let stored = batch
                .iter()
                .map(|state| {
                    let id = sync_state_id(&state.tenant, &state.omneo_profile_id);
                    let stored = as_stored(SYNC_STATE, &id, state)?;
                    Ok((id, stored))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            self.lock().sync_state.extend(stored);
        }
        Ok(())
    }

    async fn delete_sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<()> {
        let id = sync_state_id(tenant, omneo_profile_id);
        self.lock().sync_state.remove(&id);
        Ok(())
    }

    async fn bind_klaviyo_account(
        &self,
        account_id: &str,
        tenant: &TenantId,
    ) -> StoreResult<TenantId> {
        let at = (KLAVIYO_ACCOUNTS, account_id);
        read_modify_write(
            &mut self.lock().klaviyo_accounts,
            at,
            account_id.to_owned(),
            |current| Binding::bind_step(current, tenant),
        )
    }

    async fn klaviyo_account_tenant(&self, account_id: &str) -> StoreResult<Option<TenantId>> {
        Ok(self
            .lock()
            .klaviyo_accounts
            .get(account_id)
            .map(|binding| binding.tenant.clone()))
    }

    async fn unbind_klaviyo_account(&self, account_id: &str, tenant: &TenantId) -> StoreResult<()> {
        let at = (KLAVIYO_ACCOUNTS, account_id);
        read_modify_write(
            &mut self.lock().klaviyo_accounts,
            at,
            account_id.to_owned(),
            |current| Binding::unbind_step(current, tenant),
        )
    }

    async fn backfill(&self, tenant: &TenantId) -> StoreResult<Option<BackfillRun>> {
        Ok(self.lock().backfills.get(tenant).cloned())
    }

    async fn update_backfill(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, BackfillRun>,
    ) -> StoreResult<BackfillRun> {
        let at = (BACKFILLS, tenant.as_str());
        read_modify_write(&mut self.lock().backfills, at, tenant.clone(), |current| {
            plain_update_step(mutate, current)
        })
    }

    async fn reconciliation(&self, tenant: &TenantId) -> StoreResult<Option<Reconciliation>> {
        Ok(self.lock().reconciliations.get(tenant).cloned())
    }

    async fn update_reconciliation(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Reconciliation>,
    ) -> StoreResult<Reconciliation> {
        let at = (RECONCILIATIONS, tenant.as_str());
        read_modify_write(
            &mut self.lock().reconciliations,
            at,
            tenant.clone(),
            |current| plain_update_step(mutate, current),
        )
    }

    async fn reserve_queue_name(
        &self,
        name: &QueueName,
        tenant: &TenantId,
    ) -> StoreResult<TenantId> {
        let at = (QUEUE_NAMES, name.as_str());
        read_modify_write(&mut self.lock().queue_names, at, name.clone(), |current| {
            Binding::bind_step(current, tenant)
        })
    }
}
