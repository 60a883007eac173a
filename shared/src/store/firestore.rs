//! [`FirestoreStore`]: the production store, one Firestore document per record (product.md §3).
//!
//! Reads and plain writes are single calls. Every read-then-write reads its one document inside a
//! Firestore transaction, decides with the same step functions as [`super::MemoryStore`], and
//! commits the change in that transaction; when Firestore aborts it for contention, the whole
//! transaction (read and decision included) runs again.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use firestore::errors::FirestoreError;
use firestore::{
    FirestoreConsistencySelector, FirestoreDb, FirestoreDbOptions, FirestoreQueryCursor,
    FirestoreReference, FirestoreTimestamp, FirestoreTransaction, FirestoreWritePrecondition,
};
use futures_util::StreamExt as _;
use gcloud_sdk::google_cloud_auth::credentials::anonymous;
use jiff::Timestamp;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::{
    BACKFILLS, BackfillRun, Binding, Change, Claim, FAILURE_LISTING_ORDER, FAILURES, Failure,
    FailurePage, FailureQuery, INSTALLS, IdempotencyKey, Install, KLAVIYO_ACCOUNTS, Marker,
    Mutation, OAUTH_STATES, OAuthState, PROCESSED, QUEUE_NAMES, RECONCILIATIONS, Reconciliation,
    SYNC_STATE, Step, Store, StoreError, StoreResult, SyncState, TENANTS, Tenant, WRITE_BATCH,
    decode, mark_retried_step, plain_update_step, resealed, sync_state_id, take_state_step,
    update_step,
};
use crate::crypto::Keyring;
use crate::domain::{OmneoProfileId, TenantId};
use crate::queue::QueueName;

/// How many times a transaction runs before contention is reported as unavailability.
const TRANSACTION_ATTEMPTS: u32 = 12;
/// The first pause after an aborted transaction; it doubles (with jitter) up to the cap below.
const RETRY_BASE: Duration = Duration::from_millis(20);
/// The longest pause between two attempts of a transaction.
const RETRY_CAP: Duration = Duration::from_secs(1);

/// A [`Store`] on Google Cloud Firestore (native mode, default database).
#[derive(Clone)]
pub struct FirestoreStore {
    db: FirestoreDb,
    /// Re-seals secrets on every write.
    keyring: Keyring,
}

impl FirestoreStore {
    /// A store on `project_id`'s Firestore. With `emulator_host` (`host:port`, no scheme) it talks
    /// plain HTTP/2 to that emulator and looks up no credentials; without, it uses the Application
    /// Default Credentials (on Cloud Run: the service account). The channel opens lazily, so an
    /// unreachable backend shows as [`StoreError::Unavailable`] on the first call. Secrets are
    /// re-sealed under `keyring`'s active key on every write.
    pub async fn connect(
        project_id: &str,
        emulator_host: Option<&str>,
        keyring: Keyring,
    ) -> anyhow::Result<Self> {
        let options = FirestoreDbOptions::new(project_id.to_owned());
        let db = match emulator_host {
            Some(host) => {
                let options = options.with_firebase_api_url(format!("http://{host}"));
                FirestoreDb::with_options_auth(options, anonymous::Builder::new().build())
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to the Firestore emulator at {host} (project {project_id})"
                        )
                    })?
            }
            None => FirestoreDb::with_options(options)
                .await
                .with_context(|| format!("connecting to Firestore (project {project_id})"))?,
        };
        Ok(Self { db, keyring })
    }

    /// The document, decoded, if it exists.
    async fn get<T: DeserializeOwned>(
        &self,
        collection: &'static str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let id = doc_id(id);
        let doc = self
            .db
            .fluent()
            .select()
            .by_id_in(collection)
            .one(id.as_ref())
            .await
            .map_err(|err| unavailable(err, "reading", collection, &id))?;
        doc.map(|doc| decode(collection, &id, &doc)).transpose()
    }

    /// Writes the whole document, under `precondition` if any.
    async fn put<T: Serialize + DeserializeOwned + Send + Sync>(
        &self,
        collection: &'static str,
        id: &str,
        value: &T,
        precondition: Option<FirestoreWritePrecondition>,
    ) -> StoreResult<()> {
        let id = doc_id(id);
        let update = self.db.fluent().update().in_col(collection);
        let update = match precondition {
            Some(precondition) => update.precondition(precondition),
            None => update,
        };
        update
            .document_id(id.as_ref())
            .object(value)
            .execute::<IgnoredAny>()
            .await
            .map(drop)
            .map_err(|err| match err {
                FirestoreError::DataConflictError(_) => StoreError::Conflict {
                    collection,
                    id: id.clone().into_owned(),
                },
                err => unavailable(err, "writing", collection, &id),
            })
    }

    /// Writes the document if there is none with that id, else [`StoreError::Conflict`].
    async fn create<T: Serialize + DeserializeOwned + Send + Sync>(
        &self,
        collection: &'static str,
        id: &str,
        value: &T,
    ) -> StoreResult<()> {
        let absent = FirestoreWritePrecondition::Exists(false);
        self.put(collection, id, value, Some(absent)).await
    }

    /// Deletes the document; an absent one is fine.
    async fn delete(&self, collection: &'static str, id: &str) -> StoreResult<()> {
        let id = doc_id(id);
        self.db
            .fluent()
            .delete()
            .from(collection)
            .document_id(id.as_ref())
            .execute()
            .await
            .map_err(|err| unavailable(err, "deleting", collection, &id))
    }

    /// Reads one document in a transaction, lets `decide` choose the change, and commits it;
    /// re-runs everything while Firestore aborts the transaction for contention.
    async fn read_modify_write<T, R>(
        &self,
        collection: &'static str,
        id: &str,
        decide: impl Fn(Option<T>) -> Step<T, R> + Send + Sync,
    ) -> StoreResult<R>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        R: Send,
    {
        let id = doc_id(id);
        let mut pause = RETRY_BASE;
        let mut attempt = 1;
        loop {
            match self.transaction_attempt(collection, &id, &decide).await {
                Ok(outcome) => return outcome,
                Err(err) if is_contention(&err) && attempt < TRANSACTION_ATTEMPTS => {
                    // Jitter, so racing writers do not retry in lockstep.
                    tokio::time::sleep(pause.mul_f64(rand::random_range(0.5..1.5))).await;
                    pause = (pause * 2).min(RETRY_CAP);
                    attempt += 1;
                }
                Err(err) => return Err(unavailable(err, "updating", collection, &id)),
            }
        }
    }

    /// One run of [`Self::read_modify_write`]. The outer error is Firestore's (the transaction
    /// is rolled back); the inner result is the store's answer (committed when `Ok`).
    async fn transaction_attempt<T, R>(
        &self,
        collection: &'static str,
        id: &str,
        decide: &(impl Fn(Option<T>) -> Step<T, R> + Send + Sync),
    ) -> Result<StoreResult<R>, FirestoreError>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        R: Send,
    {
        let mut transaction = self.db.begin_transaction().await?;
        let in_transaction =
            self.db
                .clone_with_consistency_selector(FirestoreConsistencySelector::Transaction(
                    transaction.transaction_id().clone(),
                ));
        let staged = stage(&in_transaction, &mut transaction, collection, id, decide).await;
        match staged {
            Ok(Ok(answer)) => {
                transaction.commit().await?;
                Ok(Ok(answer))
            }
            refused_or_failed => {
                // Releases the read lock now rather than when the transaction times out; a
                // failed rollback changes nothing for the caller.
                transaction.rollback().await.ok();
                refused_or_failed
            }
        }
    }
}

/// Reads the document through `db` (bound to `transaction`), decides, and queues the change.
async fn stage<T, R>(
    db: &FirestoreDb,
    transaction: &mut FirestoreTransaction<'_>,
    collection: &'static str,
    id: &str,
    decide: &(impl Fn(Option<T>) -> Step<T, R> + Send + Sync),
) -> Result<StoreResult<R>, FirestoreError>
where
    T: Serialize + DeserializeOwned + Send + Sync,
{
    let doc = db.fluent().select().by_id_in(collection).one(id).await?;
    let current = match doc.map(|doc| decode(collection, id, &doc)).transpose() {
        Ok(current) => current,
        Err(corrupt) => return Ok(Err(corrupt)),
    };
    let (change, answer) = match decide(current) {
        Ok(decided) => decided,
        Err(refused) => return Ok(Err(refused)),
    };
    match change {
        Change::Keep => {}
        Change::Put(value) => {
            db.fluent()
                .update()
                .in_col(collection)
                .document_id(id)
                .object(&value)
                .add_to_transaction(transaction)?;
        }
        Change::Delete => {
            db.fluent()
                .delete()
                .from(collection)
                .document_id(id)
                .add_to_transaction(transaction)?;
        }
    }
    Ok(Ok(answer))
}

/// Firestore aborted the transaction because another one touched the same document.
fn is_contention(err: &FirestoreError) -> bool {
    matches!(err, FirestoreError::DatabaseError(db_err) if db_err.public.code == "Aborted")
}

/// A document id for `raw`: `/` would split the path, so it (and `%`, to stay unambiguous) is
/// percent-escaped. Ids of our own making (tenant ids, hashes) pass unchanged.
fn doc_id(raw: &str) -> Cow<'_, str> {
    if raw.contains(['/', '%']) {
        Cow::Owned(raw.replace('%', "%25").replace('/', "%2F"))
    } else {
        Cow::Borrowed(raw)
    }
}

/// A backend or transport failure while `doing` something to `collection/id`.
fn unavailable(err: FirestoreError, doing: &str, collection: &str, id: &str) -> StoreError {
    StoreError::Unavailable(anyhow!(err).context(format!("{doing} {collection}/{id} in Firestore")))
}

#[async_trait]
impl Store for FirestoreStore {
    async fn tenant(&self, id: &TenantId) -> StoreResult<Option<Tenant>> {
        self.get(TENANTS, id.as_str()).await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> StoreResult<()> {
        let tenant = resealed(tenant, &self.keyring);
        self.create(TENANTS, tenant.id.as_str(), &tenant).await
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        mutate: Mutation<'_, Tenant>,
    ) -> StoreResult<Tenant> {
        self.read_modify_write(TENANTS, id.as_str(), |current| {
            update_step(mutate, current, &self.keyring)
        })
        .await
    }

    async fn install(&self, tenant: &TenantId) -> StoreResult<Option<Install>> {
        self.get(INSTALLS, tenant.as_str()).await
    }

    async fn update_install(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Install>,
    ) -> StoreResult<Install> {
        self.read_modify_write(INSTALLS, tenant.as_str(), |current| {
            update_step(mutate, current, &self.keyring)
        })
        .await
    }

    async fn tenant_ids(&self) -> StoreResult<Vec<TenantId>> {
        let docs = self
            .db
            .fluent()
            .select()
            .fields(["id"])
            .from(TENANTS)
            .query()
            .await
            .map_err(|err| unavailable(err, "listing", TENANTS, "*"))?;
        let mut ids = docs
            .iter()
            .map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default();
                TenantId::parse(id).map_err(|e| StoreError::Corrupt {
                    collection: TENANTS,
                    id: id.to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> StoreResult<()> {
        let state = resealed(state, &self.keyring);
        self.create(OAUTH_STATES, &state.state_hash, &state).await
    }

    async fn take_oauth_state(&self, state_hash: &str) -> StoreResult<Option<OAuthState>> {
        self.read_modify_write(OAUTH_STATES, state_hash, |current| {
            take_state_step(current, Timestamp::now())
        })
        .await
    }

    async fn live_oauth_states(&self) -> StoreResult<Vec<OAuthState>> {
        let docs = self
            .db
            .fluent()
            .select()
            .from(OAUTH_STATES)
            .query()
            .await
            .map_err(|err| unavailable(err, "listing", OAUTH_STATES, "*"))?;
        let now = Timestamp::now();
        let states = docs
            .iter()
            .map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default();
                decode::<OAuthState>(OAUTH_STATES, id, doc)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // A TTL policy deletes expired states only eventually.
        Ok(states.into_iter().filter(|s| s.expires_at > now).collect())
    }

    async fn claim(
        &self,
        key: &IdempotencyKey,
        holder: &str,
        lease: Duration,
    ) -> StoreResult<Claim> {
        self.read_modify_write(PROCESSED, key.as_str(), |current| {
            Marker::claim_step(current, holder, Timestamp::now(), lease)
        })
        .await
    }

    async fn complete(&self, key: &IdempotencyKey, retain: Duration) -> StoreResult<()> {
        let marker = Marker::done(Timestamp::now(), retain);
        self.put(PROCESSED, key.as_str(), &marker, None).await
    }

    async fn release(&self, key: &IdempotencyKey, holder: &str) -> StoreResult<()> {
        self.read_modify_write(PROCESSED, key.as_str(), |current| {
            Marker::release_step(current, holder)
        })
        .await
    }

    async fn record_failure(&self, failure: &Failure) -> StoreResult<()> {
        self.put(FAILURES, &failure.id, failure, None).await
    }

    /// One structured query: [`FailureQuery::equalities`], ordered by [`FAILURE_LISTING_ORDER`]
    /// (`at desc, __name__ desc`), starting after the cursor's `(at, document)`. Production needs
    /// the composite index [`FailureQuery::index`] of each filter combination (`infra/firestore.tf`).
    async fn failures(&self, tenant: &TenantId, query: &FailureQuery) -> StoreResult<FailurePage> {
        if query.limit == 0 {
            // A zero limit would mean "no limit" to Firestore.
            return Ok(FailurePage::of(Vec::new(), 0));
        }
        // One more than the page, to know whether another page follows.
        let fetch = u32::try_from(query.limit.saturating_add(1)).unwrap_or(u32::MAX);
        let select = self
            .db
            .fluent()
            .select()
            .from(FAILURES)
            .filter(|q| {
                q.for_all(
                    query
                        .equalities(tenant)
                        .into_iter()
                        .map(|(field, value)| q.field(field).eq(value)),
                )
            })
            .order(|o| {
                o.fields(FAILURE_LISTING_ORDER.map(|order| {
                    let field = o.field(order.field);
                    if order.descending {
                        field.desc()
                    } else {
                        field.asc()
                    }
                }))
            })
            .limit(fetch);
        let select = match &query.after {
            Some(after) => select.start_at(FirestoreQueryCursor::AfterValue(vec![
                FirestoreTimestamp(after.at).into(),
                FirestoreReference(format!(
                    "{}/{FAILURES}/{}",
                    self.db.get_documents_path(),
                    doc_id(&after.id)
                ))
                .into(),
            ])),
            None => select,
        };
        let docs = select
            .query()
            .await
            .map_err(|err| unavailable(err, "querying", FAILURES, &format!("?tenant={tenant}")))?;
        let newest_first = docs
            .iter()
            .map(|doc| {
                let id = doc.name.rsplit('/').next().unwrap_or_default();
                decode(FAILURES, id, doc)
            })
            .collect::<StoreResult<Vec<Failure>>>()?;
        Ok(FailurePage::of(newest_first, query.limit))
    }

    async fn failure(&self, tenant: &TenantId, id: &str) -> StoreResult<Option<Failure>> {
        let failure: Option<Failure> = self.get(FAILURES, id).await?;
        Ok(failure.filter(|failure| &failure.tenant == tenant))
    }

    async fn mark_failure_retried(
        &self,
        tenant: &TenantId,
        id: &str,
        expected_retries: u32,
        at: Timestamp,
    ) -> StoreResult<Option<Failure>> {
        self.read_modify_write(FAILURES, id, |current| {
            mark_retried_step(current, tenant, expected_retries, at)
        })
        .await
    }

    async fn sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<Option<SyncState>> {
        self.get(SYNC_STATE, &sync_state_id(tenant, omneo_profile_id))
            .await
    }

    async fn put_sync_state(&self, state: &SyncState) -> StoreResult<()> {
        let id = sync_state_id(&state.tenant, &state.omneo_profile_id);
        self.put(SYNC_STATE, &id, state, None).await
    }

    async fn sync_states(
        &self,
        tenant: &TenantId,
        omneo_profile_ids: &[OmneoProfileId],
    ) -> StoreResult<Vec<SyncState>> {
        let ids: Vec<String> = omneo_profile_ids
            .iter()
            .map(|id| doc_id(&sync_state_id(tenant, id)).into_owned())
            .collect();
        let mut states = Vec::with_capacity(ids.len());
        for batch in ids.chunks(WRITE_BATCH) {
            let docs: Vec<(String, Option<_>)> = self
                .db
                .fluent()
                .select()
                .by_id_in(SYNC_STATE)
                .batch(batch)
                .await
                .map_err(|err| unavailable(err, "reading", SYNC_STATE, "(batch)"))?
                .collect()
                .await;
            for (id, doc) in docs {
                if let Some(doc) = doc {
                    states.push(decode(SYNC_STATE, &id, &doc)?);
                }
            }
        }
        Ok(states)
    }

    async fn put_sync_states(&self, states: &[SyncState]) -> StoreResult<()> {
        // One commit per batch: atomic, and (unlike BatchWrite) open to the emulator's
        // unauthenticated callers.
        for batch in states.chunks(WRITE_BATCH) {
            let failed = |err| unavailable(err, "writing", SYNC_STATE, "(batch)");
            let mut transaction = self.db.begin_transaction().await.map_err(failed)?;
            for state in batch {
                let id = sync_state_id(&state.tenant, &state.omneo_profile_id);
                self.db
                    .fluent()
                    .update()
                    .in_col(SYNC_STATE)
                    .document_id(doc_id(&id).as_ref())
                    .object(state)
                    .add_to_transaction(&mut transaction)
                    .map_err(|err| unavailable(err, "writing", SYNC_STATE, &id))?;
            }
            transaction.commit().await.map_err(failed)?;
        }
        Ok(())
    }

    async fn delete_sync_state(
        &self,
        tenant: &TenantId,
        omneo_profile_id: &OmneoProfileId,
    ) -> StoreResult<()> {
        self.delete(SYNC_STATE, &sync_state_id(tenant, omneo_profile_id))
            .await
    }

    async fn bind_klaviyo_account(
        &self,
        account_id: &str,
        tenant: &TenantId,
    ) -> StoreResult<TenantId> {
        self.read_modify_write(KLAVIYO_ACCOUNTS, account_id, |current| {
            Binding::bind_step(current, tenant)
        })
        .await
    }

    async fn klaviyo_account_tenant(&self, account_id: &str) -> StoreResult<Option<TenantId>> {
        let binding: Option<Binding> = self.get(KLAVIYO_ACCOUNTS, account_id).await?;
        Ok(binding.map(|binding| binding.tenant))
    }

    async fn unbind_klaviyo_account(&self, account_id: &str, tenant: &TenantId) -> StoreResult<()> {
        self.read_modify_write(KLAVIYO_ACCOUNTS, account_id, |current| {
            Binding::unbind_step(current, tenant)
        })
        .await
    }

    async fn backfill(&self, tenant: &TenantId) -> StoreResult<Option<BackfillRun>> {
        self.get(BACKFILLS, tenant.as_str()).await
    }

    async fn update_backfill(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, BackfillRun>,
    ) -> StoreResult<BackfillRun> {
        self.read_modify_write(BACKFILLS, tenant.as_str(), |current| {
            plain_update_step(mutate, current)
        })
        .await
    }

    async fn reconciliation(&self, tenant: &TenantId) -> StoreResult<Option<Reconciliation>> {
        self.get(RECONCILIATIONS, tenant.as_str()).await
    }

    async fn update_reconciliation(
        &self,
        tenant: &TenantId,
        mutate: Mutation<'_, Reconciliation>,
    ) -> StoreResult<Reconciliation> {
        self.read_modify_write(RECONCILIATIONS, tenant.as_str(), |current| {
            plain_update_step(mutate, current)
        })
        .await
    }

    async fn reserve_queue_name(
        &self,
        name: &QueueName,
        tenant: &TenantId,
    ) -> StoreResult<TenantId> {
        self.read_modify_write(QUEUE_NAMES, name.as_str(), |current| {
            Binding::bind_step(current, tenant)
        })
        .await
    }
}
