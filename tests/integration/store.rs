//! Store conformance: every check is written once against `dyn Store` and runs on both backends,
//! `store::memory::<check>` on [`MemoryStore`] and `store::firestore::<check>` on [`FirestoreStore`]
//! against the Firestore emulator (each test in a project of its own). A few Firestore-only tests
//! at the end look at the raw documents.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ::firestore::{FirestoreDb, FirestoreDbOptions};
use gcloud_sdk::google::firestore::v1::value::ValueType;
use gcloud_sdk::google_cloud_auth::credentials::anonymous;
use harness::emulators::firestore::{emulator_host, unique_project_id};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use shared::crypto::Keyring;
use shared::domain::TenantId;
use shared::settings::Settings;
use shared::store::{
    Abort, Claim, ConsentSent, Failure, FirestoreStore, IdempotencyKey, Install, InstallStatus,
    MemoryStore, OAuthState, Store, StoreError, SyncState, Tenant,
};
use tokio::task::JoinSet;

/// How long a check waits for a lease or retention to run out before it gives up.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many writers race in the concurrency checks.
const RACERS: usize = 8;

/// Generates `memory::<check>` and `firestore::<check>` tests for every check named.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::memory_store()).await;
                }
            )*
        }

        mod firestore {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::firestore_store().await).await;
                }
            )*
        }
    };
}

conformance!(
    tenants_are_created_once_and_read_back,
    update_tenant_reads_modifies_and_writes,
    update_install_reads_modifies_and_writes,
    aborted_mutations_write_nothing,
    oauth_states_are_single_use,
    expired_oauth_states_are_absent,
    claims_follow_the_idempotency_lifecycle,
    expired_leases_and_done_markers_can_be_claimed_again,
    failures_come_newest_first_per_tenant,
    sync_state_is_put_read_and_deleted,
    klaviyo_accounts_bind_to_the_first_tenant,
    secrets_are_stored_sealed,
    racing_claims_acquire_exactly_once,
    racing_install_updates_lose_nothing,
    records_come_back_at_firestore_precision,
);

fn memory_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

async fn firestore_store() -> Arc<dyn Store> {
    Arc::new(firestore_store_in(&unique_project_id()).await)
}

async fn firestore_store_in(project_id: &str) -> FirestoreStore {
    FirestoreStore::connect(project_id, Some(&emulator_host()))
        .await
        .expect("connect to the Firestore emulator")
}

/// A client of the emulator that bypasses the store, to look at (or damage) raw documents.
async fn raw_db(project_id: &str) -> FirestoreDb {
    let options = FirestoreDbOptions::new(project_id.to_owned())
        .with_firebase_api_url(format!("http://{}", emulator_host()));
    FirestoreDb::with_options_auth(options, anonymous::Builder::new().build())
        .await
        .expect("connect to the Firestore emulator")
}

/// Now, at the microsecond precision Firestore keeps, so records compare equal after a round trip.
fn now() -> Timestamp {
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).expect("now is in range")
}

fn tenant_id(raw: &str) -> TenantId {
    TenantId::parse(raw).expect("valid tenant id")
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn tenant(id: &str, keyring: &Keyring) -> Tenant {
    let at = now();
    Tenant {
        id: tenant_id(id),
        omneo_api_url: format!("https://api.{id}.getomneo.com"),
        omneo_api_token: keyring.seal(&secret("omneo-token-plaintext")),
        omneo_signing_secret: keyring.seal(&secret("signing-secret-plaintext")),
        webhook_secret: keyring.seal(&secret("webhook-secret-plaintext")),
        previous_webhook_secret: None,
        admin_key_hash: "ab".repeat(32),
        settings: Settings::default(),
        created_at: at,
        updated_at: at,
    }
}

fn oauth_state(state: &str, tenant: &str, expires_at: Timestamp, keyring: &Keyring) -> OAuthState {
    OAuthState {
        state: state.to_owned(),
        tenant: tenant_id(tenant),
        pkce_verifier: keyring.seal(&secret("pkce-verifier-plaintext")),
        expires_at,
    }
}

fn key(tenant: &str, work: &str) -> IdempotencyKey {
    IdempotencyKey::new(&tenant_id(tenant), "test", &[work])
}

fn failure(id: &str, tenant: &str, at: Timestamp) -> Failure {
    Failure {
        id: id.to_owned(),
        tenant: tenant_id(tenant),
        queue: format!("{tenant}-outbound"),
        task_kind: "sync_profile".into(),
        task_name: format!("tasks/{id}"),
        payload: r#"{"profile_id":"p1","nested":[[1,2],[3]]}"#.into(),
        error: "Klaviyo answered 400".into(),
        attempts: 3,
        at,
    }
}

fn sync_state(tenant: &str, profile: &str, hash: &str) -> SyncState {
    SyncState {
        tenant: tenant_id(tenant),
        omneo_profile_id: profile.to_owned(),
        klaviyo_profile_id: Some(format!("K-{profile}")),
        payload_hash: hash.to_owned(),
        consent: ConsentSent {
            email: Some(true),
            sms: None,
        },
        updated_at: now(),
    }
}

/// Claims `key` until the claim is acquired, checking that nothing else is answered meanwhile.
async fn claim_once_expired(store: &dyn Store, key: &IdempotencyKey, while_waiting: Claim) {
    let deadline = tokio::time::Instant::now() + EXPIRY_TIMEOUT;
    loop {
        match store.claim(key, Duration::from_secs(3600)).await.unwrap() {
            Claim::Acquired => return,
            other => assert_eq!(other, while_waiting),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the marker never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tenants_are_created_once_and_read_back(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let acme = tenant("acme", &keyring);
    assert_eq!(store.tenant(&acme.id).await.unwrap(), None);

    store.create_tenant(&acme).await.unwrap();
    assert_eq!(store.tenant(&acme.id).await.unwrap(), Some(acme.clone()));

    let mut again = tenant("acme", &keyring);
    again.omneo_api_url = "https://elsewhere.example".into();
    match store.create_tenant(&again).await {
        Err(StoreError::Conflict { collection, id }) => {
            assert_eq!((collection, id.as_str()), ("tenants", "acme"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.tenant(&acme.id).await.unwrap(), Some(acme));
    assert_eq!(store.tenant(&tenant_id("other")).await.unwrap(), None);
}

async fn update_tenant_reads_modifies_and_writes(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let acme = tenant("acme", &keyring);

    let created = store
        .update_tenant(&acme.id, &|current| {
            assert_eq!(current, None, "an absent tenant is seen as None");
            Ok(acme.clone())
        })
        .await
        .unwrap();
    assert_eq!(created, acme);

    let changed = store
        .update_tenant(&acme.id, &|current| {
            let mut tenant = current.expect("the tenant exists now");
            tenant.omneo_api_url = "https://api.acme-au.getomneo.com".into();
            tenant.settings.coalesce_seconds = 42;
            Ok(tenant)
        })
        .await
        .unwrap();
    assert_eq!(changed.omneo_api_url, "https://api.acme-au.getomneo.com");
    assert_eq!(store.tenant(&acme.id).await.unwrap(), Some(changed));
}

async fn update_install_reads_modifies_and_writes(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    assert_eq!(store.install(&acme).await.unwrap(), None);
    let started = now();

    let pending = store
        .update_install(&acme, &|current| {
            assert_eq!(current, None, "an absent install is seen as None");
            Ok(Install::pending(acme.clone(), started))
        })
        .await
        .unwrap();
    assert_eq!(pending.status, InstallStatus::Pending);

    let later = now();
    let provisioning = store
        .update_install(&acme, &|current| {
            let mut install = current.expect("the install exists now");
            install.klaviyo_account_id = Some("KA1".into());
            install
                .resources
                .data_sources
                .insert("Omneo Profiles".into(), "ds-1".into());
            install.transition(
                InstallStatus::Provisioning,
                Some("oauth done".into()),
                later,
            );
            Ok(install)
        })
        .await
        .unwrap();
    let stored = store.install(&acme).await.unwrap().expect("stored");
    assert_eq!(stored, provisioning);
    assert_eq!(stored.status, InstallStatus::Provisioning);
    let statuses: Vec<InstallStatus> = stored.history.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [InstallStatus::Pending, InstallStatus::Provisioning]
    );
    assert_eq!(stored.history[1].at, later);
    assert_eq!(stored.resources.data_sources["Omneo Profiles"], "ds-1");
}

async fn aborted_mutations_write_nothing(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let acme = tenant("acme", &keyring);
    let refuse_tenant = |current: Option<Tenant>| -> Result<Tenant, Abort> {
        let _ = current;
        Err(Abort("tenant condition failed".into()))
    };

    // On an absent document: it stays absent.
    match store.update_tenant(&acme.id, &refuse_tenant).await {
        Err(StoreError::Aborted(reason)) => assert_eq!(reason, "tenant condition failed"),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(store.tenant(&acme.id).await.unwrap(), None);

    // On an existing document: it stays as it was, even though the mutation changed its copy.
    store.create_tenant(&acme).await.unwrap();
    let change_then_refuse = |current: Option<Tenant>| -> Result<Tenant, Abort> {
        let mut tenant = current.expect("exists");
        tenant.omneo_api_url = "https://changed.example".into();
        Err(Abort(format!("refused {}", tenant.omneo_api_url)))
    };
    assert!(matches!(
        store.update_tenant(&acme.id, &change_then_refuse).await,
        Err(StoreError::Aborted(reason)) if reason == "refused https://changed.example"
    ));
    assert_eq!(store.tenant(&acme.id).await.unwrap(), Some(acme.clone()));

    // The same for installs.
    let install = Install::pending(acme.id.clone(), now());
    store
        .update_install(&acme.id, &|_| Ok(install.clone()))
        .await
        .unwrap();
    let refuse_install = |current: Option<Install>| -> Result<Install, Abort> {
        let mut install = current.expect("exists");
        install.transition(InstallStatus::Installed, None, now());
        Err(Abort("not provisioning".into()))
    };
    assert!(matches!(
        store.update_install(&acme.id, &refuse_install).await,
        Err(StoreError::Aborted(reason)) if reason == "not provisioning"
    ));
    assert_eq!(store.install(&acme.id).await.unwrap(), Some(install));
    assert!(matches!(
        store
            .update_install(&tenant_id("nobody"), &|_| Err(Abort("no".into())))
            .await,
        Err(StoreError::Aborted(_))
    ));
    assert_eq!(store.install(&tenant_id("nobody")).await.unwrap(), None);
}

async fn oauth_states_are_single_use(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let expires = now() + Duration::from_secs(600);
    // A `/` and a `%` must not break the document path.
    for value in ["st-8f3a", "a/b%2Fc"] {
        let state = oauth_state(value, "acme", expires, &keyring);
        store.put_oauth_state(&state).await.unwrap();
        match store.put_oauth_state(&state).await {
            Err(StoreError::Conflict { collection, .. }) => assert_eq!(collection, "oauth_states"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(store.take_oauth_state(value).await.unwrap(), Some(state));
        assert_eq!(store.take_oauth_state(value).await.unwrap(), None);
    }
    assert_eq!(store.take_oauth_state("a/b/c").await.unwrap(), None);
    assert_eq!(store.take_oauth_state("never-issued").await.unwrap(), None);
}

async fn expired_oauth_states_are_absent(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let expired = oauth_state("old", "acme", now() - Duration::from_secs(1), &keyring);
    store.put_oauth_state(&expired).await.unwrap();
    assert_eq!(store.take_oauth_state("old").await.unwrap(), None);
    // Taking it also removed it, so the value can be issued again.
    let fresh = oauth_state("old", "acme", now() + Duration::from_secs(600), &keyring);
    store.put_oauth_state(&fresh).await.unwrap();
    assert_eq!(store.take_oauth_state("old").await.unwrap(), Some(fresh));
}

async fn claims_follow_the_idempotency_lifecycle(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(3600);
    let retain = Duration::from_secs(48 * 3600);

    let work = key("acme", "order-1");
    assert_eq!(store.claim(&work, lease).await.unwrap(), Claim::Acquired);
    assert_eq!(store.claim(&work, lease).await.unwrap(), Claim::InProgress);
    store.complete(&work, retain).await.unwrap();
    assert_eq!(store.claim(&work, lease).await.unwrap(), Claim::Done);
    // Releasing finished work does not make it claimable again.
    store.release(&work).await.unwrap();
    assert_eq!(store.claim(&work, lease).await.unwrap(), Claim::Done);

    let retried = key("acme", "order-2");
    assert_eq!(store.claim(&retried, lease).await.unwrap(), Claim::Acquired);
    store.release(&retried).await.unwrap();
    assert_eq!(store.claim(&retried, lease).await.unwrap(), Claim::Acquired);

    // Keys are per tenant, and releasing an unknown key is fine.
    assert_eq!(
        store.claim(&key("other", "order-1"), lease).await.unwrap(),
        Claim::Acquired
    );
    store.release(&key("acme", "never-claimed")).await.unwrap();
    assert_eq!(
        store
            .claim(&key("acme", "never-claimed"), lease)
            .await
            .unwrap(),
        Claim::Acquired
    );
}

async fn expired_leases_and_done_markers_can_be_claimed_again(store: Arc<dyn Store>) {
    let short = Duration::from_millis(300);
    let abandoned = key("acme", "abandoned");
    assert_eq!(
        store.claim(&abandoned, short).await.unwrap(),
        Claim::Acquired
    );
    claim_once_expired(store.as_ref(), &abandoned, Claim::InProgress).await;
    // The new claim holds its own (long) lease.
    assert_eq!(
        store
            .claim(&abandoned, Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::InProgress
    );

    let finished = key("acme", "finished");
    assert_eq!(
        store
            .claim(&finished, Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::Acquired
    );
    store.complete(&finished, short).await.unwrap();
    claim_once_expired(store.as_ref(), &finished, Claim::Done).await;
}

async fn failures_come_newest_first_per_tenant(store: Arc<dyn Store>) {
    let t0 = now();
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    // Recorded out of order.
    let middle = failure("f-2", "acme", at(1));
    let newest = failure("f-3", "acme", at(2));
    let oldest = failure("f-1", "acme", at(0));
    let elsewhere = failure("f-4", "other", at(5));
    for f in [&middle, &newest, &oldest, &elsewhere] {
        store.record_failure(f).await.unwrap();
    }

    let acme = tenant_id("acme");
    assert_eq!(
        store.failures(&acme, 10).await.unwrap(),
        [newest.clone(), middle.clone(), oldest]
    );
    assert_eq!(store.failures(&acme, 2).await.unwrap(), [newest, middle]);
    assert_eq!(store.failures(&acme, 0).await.unwrap(), []);
    assert_eq!(
        store.failures(&tenant_id("other"), 10).await.unwrap(),
        [elsewhere]
    );
    assert_eq!(store.failures(&tenant_id("nobody"), 10).await.unwrap(), []);
}

async fn sync_state_is_put_read_and_deleted(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    assert_eq!(store.sync_state(&acme, "p-1").await.unwrap(), None);

    let first = sync_state("acme", "p-1", "hash-1");
    store.put_sync_state(&first).await.unwrap();
    assert_eq!(store.sync_state(&acme, "p-1").await.unwrap(), Some(first));

    let replaced = sync_state("acme", "p-1", "hash-2");
    store.put_sync_state(&replaced).await.unwrap();
    assert_eq!(
        store.sync_state(&acme, "p-1").await.unwrap(),
        Some(replaced)
    );

    // Another tenant's profile with the same id, and an id with a `/`, are separate documents.
    let other = sync_state("other", "p-1", "hash-o");
    let slashed = sync_state("acme", "region/7", "hash-s");
    store.put_sync_state(&other).await.unwrap();
    store.put_sync_state(&slashed).await.unwrap();

    store.delete_sync_state(&acme, "p-1").await.unwrap();
    assert_eq!(store.sync_state(&acme, "p-1").await.unwrap(), None);
    store.delete_sync_state(&acme, "p-1").await.unwrap();
    assert_eq!(
        store.sync_state(&tenant_id("other"), "p-1").await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store.sync_state(&acme, "region/7").await.unwrap(),
        Some(slashed)
    );
}

async fn klaviyo_accounts_bind_to_the_first_tenant(store: Arc<dyn Store>) {
    let (acme, other) = (tenant_id("acme"), tenant_id("other"));
    assert_eq!(store.klaviyo_account_tenant("KA1").await.unwrap(), None);

    assert_eq!(
        store.bind_klaviyo_account("KA1", &acme).await.unwrap(),
        acme
    );
    assert_eq!(
        store.bind_klaviyo_account("KA1", &acme).await.unwrap(),
        acme
    );
    assert_eq!(
        store.bind_klaviyo_account("KA1", &other).await.unwrap(),
        acme
    );
    assert_eq!(
        store.klaviyo_account_tenant("KA1").await.unwrap(),
        Some(acme.clone())
    );

    // Only the owner can unbind.
    store.unbind_klaviyo_account("KA1", &other).await.unwrap();
    assert_eq!(
        store.klaviyo_account_tenant("KA1").await.unwrap(),
        Some(acme.clone())
    );
    store.unbind_klaviyo_account("KA1", &acme).await.unwrap();
    assert_eq!(store.klaviyo_account_tenant("KA1").await.unwrap(), None);
    store.unbind_klaviyo_account("KA1", &acme).await.unwrap();

    // Once free, the account can go to another tenant.
    assert_eq!(
        store.bind_klaviyo_account("KA1", &other).await.unwrap(),
        other
    );
    assert_eq!(
        store.klaviyo_account_tenant("KA1").await.unwrap(),
        Some(other)
    );
}

async fn secrets_are_stored_sealed(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let acme = tenant("acme", &keyring);
    store.create_tenant(&acme).await.unwrap();
    let stored = store.tenant(&acme.id).await.unwrap().expect("stored");
    for (sealed, plaintext) in [
        (&stored.omneo_api_token, "omneo-token-plaintext"),
        (&stored.omneo_signing_secret, "signing-secret-plaintext"),
        (&stored.webhook_secret, "webhook-secret-plaintext"),
    ] {
        assert!(!sealed.as_str().contains(plaintext));
        assert_eq!(sealed.key_id(), "k1");
        assert_eq!(keyring.open(sealed).unwrap().expose_secret(), plaintext);
    }

    let state = oauth_state("st-1", "acme", now() + Duration::from_secs(600), &keyring);
    store.put_oauth_state(&state).await.unwrap();
    let taken = store.take_oauth_state("st-1").await.unwrap().expect("live");
    assert!(!taken.pkce_verifier.as_str().contains("pkce-verifier"));
    assert_eq!(
        keyring.open(&taken.pkce_verifier).unwrap().expose_secret(),
        "pkce-verifier-plaintext"
    );
}

async fn racing_claims_acquire_exactly_once(store: Arc<dyn Store>) {
    let work = key("acme", "contended");
    let mut racers = JoinSet::new();
    for _ in 0..RACERS {
        let (store, work) = (store.clone(), work.clone());
        racers.spawn(async move { store.claim(&work, Duration::from_secs(3600)).await });
    }
    let outcomes: Vec<Claim> = racers
        .join_all()
        .await
        .into_iter()
        .map(|outcome| outcome.expect("claim"))
        .collect();
    let acquired = outcomes.iter().filter(|c| **c == Claim::Acquired).count();
    let in_progress = outcomes.iter().filter(|c| **c == Claim::InProgress).count();
    assert_eq!((acquired, in_progress), (1, RACERS - 1), "{outcomes:?}");
}

async fn racing_install_updates_lose_nothing(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    let started = now();
    store
        .update_install(&acme, &|_| Ok(Install::pending(acme.clone(), started)))
        .await
        .unwrap();

    let mut writers = JoinSet::new();
    for writer in 0..RACERS {
        let (store, acme) = (store.clone(), acme.clone());
        writers.spawn(async move {
            let reason = format!("writer-{writer}");
            store
                .update_install(&acme, &|current| {
                    let mut install = current.expect("exists");
                    install.transition(InstallStatus::Provisioning, Some(reason.clone()), now());
                    Ok(install)
                })
                .await
        });
    }
    for written in writers.join_all().await {
        written.expect("update_install");
    }

    let install = store.install(&acme).await.unwrap().expect("stored");
    let reasons: BTreeSet<String> = install
        .history
        .iter()
        .filter_map(|change| change.reason.clone())
        .collect();
    let expected: BTreeSet<String> = (0..RACERS).map(|w| format!("writer-{w}")).collect();
    assert_eq!(install.history.len(), 1 + RACERS);
    assert_eq!(reasons, expected);
}

async fn records_come_back_at_firestore_precision(store: Arc<dyn Store>) {
    let keyring = Keyring::generate("k1");
    let mut acme = tenant("acme", &keyring);
    acme.created_at = "2026-11-26T10:00:00.123456789Z".parse().unwrap();
    store.create_tenant(&acme).await.unwrap();
    let stored = store.tenant(&acme.id).await.unwrap().expect("stored");
    assert_eq!(
        stored.created_at,
        "2026-11-26T10:00:00.123456Z".parse::<Timestamp>().unwrap()
    );
}

/// A document of a field's raw Firestore value type.
fn field_type(doc: &gcloud_sdk::google::firestore::v1::Document, field: &str) -> ValueType {
    doc.fields
        .get(field)
        .and_then(|value| value.value_type.clone())
        .unwrap_or_else(|| panic!("{} has no field {field}", doc.name))
}

#[tokio::test]
async fn firestore_ttl_fields_are_real_timestamps() {
    let project = unique_project_id();
    let store = firestore_store_in(&project).await;
    let raw = raw_db(&project).await;
    let keyring = Keyring::generate("k1");
    let expires_at = now() + Duration::from_secs(600);
    store
        .put_oauth_state(&oauth_state("st-ttl", "acme", expires_at, &keyring))
        .await
        .unwrap();
    let work = key("acme", "ttl");
    store.claim(&work, Duration::from_secs(3600)).await.unwrap();

    let state_doc = raw
        .fluent()
        .select()
        .by_id_in("oauth_states")
        .one("st-ttl")
        .await
        .unwrap()
        .expect("state document");
    match field_type(&state_doc, "expires_at") {
        ValueType::TimestampValue(ts) => {
            assert_eq!(
                i128::from(ts.seconds) * 1_000_000 + i128::from(ts.nanos / 1000),
                i128::from(expires_at.as_microsecond())
            );
        }
        other => panic!("oauth_states.expires_at is stored as {other:?}"),
    }
    // Secrets are ciphertext in the document itself.
    match field_type(&state_doc, "pkce_verifier") {
        ValueType::StringValue(text) => assert!(text.starts_with("k1:") && !text.contains("pkce")),
        other => panic!("pkce_verifier is stored as {other:?}"),
    }

    let marker_doc = raw
        .fluent()
        .select()
        .by_id_in("processed")
        .one(work.as_str())
        .await
        .unwrap()
        .expect("marker document");
    assert!(matches!(
        field_type(&marker_doc, "expires_at"),
        ValueType::TimestampValue(_)
    ));
    assert_eq!(
        field_type(&marker_doc, "state"),
        ValueType::StringValue("in_progress".into())
    );
}

#[tokio::test]
async fn firestore_undecodable_documents_are_corrupt() {
    #[derive(Serialize, Deserialize)]
    struct NotATenant {
        id: i64,
    }

    let project = unique_project_id();
    let store = firestore_store_in(&project).await;
    raw_db(&project)
        .await
        .fluent()
        .update()
        .in_col("tenants")
        .document_id("acme")
        .object(&NotATenant { id: 42 })
        .execute::<NotATenant>()
        .await
        .unwrap();

    let acme = tenant_id("acme");
    for outcome in [
        store.tenant(&acme).await.map(drop),
        store
            .update_tenant(&acme, &|_| panic!("must not run on a corrupt document"))
            .await
            .map(drop),
    ] {
        match outcome {
            Err(StoreError::Corrupt { collection, id, .. }) => {
                assert_eq!((collection, id.as_str()), ("tenants", "acme"));
            }
            other => panic!("expected a corrupt document, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn firestore_unreachable_backend_is_unavailable() {
    // A backend that takes connections and hangs up on them at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    let store = FirestoreStore::connect(&unique_project_id(), Some(&address.to_string()))
        .await
        .expect("connect");
    match store.tenant(&tenant_id("acme")).await {
        Err(StoreError::Unavailable(err)) => {
            assert!(format!("{err:#}").contains("tenants/acme"), "{err:#}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}
