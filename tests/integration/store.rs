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
use shared::crypto::{Keyring, Sealed};
use shared::domain::{ConsentState, KlaviyoProfileId, OmneoProfileId, TenantId};
use shared::queue::{QueueName, TaskKind, TaskName};
use shared::settings::Settings;
use shared::store::{
    Abort, BackfillRun, Claim, ConsentSent, Failure, FailureCursor, FailureQuery, FirestoreStore,
    IdempotencyKey, Install, InstallStatus, MemoryStore, OAuthState, OAuthTokens, ReconcileResult,
    ReconcileStatus, Reconciliation, RunCounts, RunState, RunTrigger, Severity, Store, StoreError,
    SyncState, Tenant, TenantSecret, TokenSecret,
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
    a_holder_claiming_again_keeps_its_lease_alive,
    failures_come_newest_first_per_tenant,
    failure_pages_cover_every_record_once,
    failures_filter_by_kind_and_severity,
    failures_are_read_by_tenant_and_id,
    failure_replays_are_counted_by_compare_and_set,
    racing_replay_marks_count_once,
    sync_state_is_put_read_and_deleted,
    klaviyo_accounts_bind_to_the_first_tenant,
    secrets_are_stored_sealed,
    racing_claims_acquire_exactly_once,
    racing_install_updates_lose_nothing,
    records_come_back_at_firestore_precision,
    released_claims_stay_with_whoever_holds_them,
    tenant_ids_list_every_registered_tenant,
    live_oauth_states_are_listed_until_they_expire,
    queue_names_are_reserved_by_the_first_tenant,
    writes_reseal_under_the_active_key,
    install_history_is_bounded,
    sync_states_are_written_and_read_in_batches,
    backfill_runs_are_updated_by_compare_and_set,
    racing_chunk_completions_all_count,
    reconciliation_records_are_read_modified_and_written,
);

/// The key `k0` that [`keyring`] retired.
const RETIRED_K0: &str = "k0:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// The keyring of the conformance checks: the stores below re-seal with it, and the checks seal
/// and open with it. Its active key `k1` replaced `k0`, which still opens old values.
fn keyring() -> Keyring {
    Keyring::parse(&format!(
        "k1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=,{RETIRED_K0}"
    ))
    .expect("test keyring")
}

fn memory_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(keyring()))
}

async fn firestore_store() -> Arc<dyn Store> {
    Arc::new(firestore_store_in(&unique_project_id(), keyring()).await)
}

async fn firestore_store_in(project_id: &str, keyring: Keyring) -> FirestoreStore {
    FirestoreStore::connect(project_id, Some(&emulator_host()), keyring)
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
    let tenant = tenant_id(id);
    let seal = |which: TenantSecret, text: &str| which.seal(keyring, &tenant, &secret(text));
    Tenant {
        omneo_api_url: format!("https://api.{id}.getomneo.com"),
        omneo_api_token: seal(TenantSecret::OmneoApiToken, "omneo-token-plaintext"),
        omneo_signing_secret: seal(TenantSecret::OmneoSigningSecret, "signing-secret-plaintext"),
        webhook_secret: seal(TenantSecret::WebhookSecret, "webhook-secret-plaintext"),
        id: tenant,
        previous_webhook_secret: None,
        webhook_secret_pending_since: None,
        admin_key_hash: "ab".repeat(32),
        settings: Settings::default(),
        created_at: at,
        updated_at: at,
    }
}

fn oauth_state(hash: &str, tenant: &str, expires_at: Timestamp, keyring: &Keyring) -> OAuthState {
    OAuthState {
        state_hash: hash.to_owned(),
        tenant: tenant_id(tenant),
        pkce_verifier: keyring.seal(
            &secret("pkce-verifier-plaintext"),
            &OAuthState::verifier_at(hash),
        ),
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
        queue: QueueName::parse(&format!("{tenant}-klaviyo-outbound")).unwrap(),
        task_kind: TaskKind::SyncProfile,
        task_name: TaskName::from_parts(&["tasks", id]),
        payload: r#"{"profile_id":"p1","nested":[[1,2],[3]]}"#.into(),
        profile: Some("p1".into()),
        step: Some("import_profile".into()),
        severity: Severity::Failed,
        error: "Klaviyo answered 400".into(),
        attempts: 3,
        at,
        retries: 0,
        retried_at: None,
    }
}

fn profile_id(raw: &str) -> OmneoProfileId {
    OmneoProfileId::parse(raw).expect("valid Omneo profile id")
}

fn sync_state(tenant: &str, profile: &str, hash: &str) -> SyncState {
    SyncState {
        tenant: tenant_id(tenant),
        omneo_profile_id: profile_id(profile),
        klaviyo_profile_id: Some(
            KlaviyoProfileId::parse(format!("K{}", profile.replace('-', ""))).unwrap(),
        ),
        payload_hash: hash.to_owned(),
        consent: ConsentSent {
            email: Some(ConsentState::Subscribed),
            sms: None,
        },
        updated_at: now(),
    }
}

/// Claims `key` until the claim is acquired, checking that nothing else is answered meanwhile.
async fn claim_once_expired(store: &dyn Store, key: &IdempotencyKey, while_waiting: Claim) {
    let deadline = tokio::time::Instant::now() + EXPIRY_TIMEOUT;
    loop {
        match store
            .claim(key, "waiter", Duration::from_secs(3600))
            .await
            .unwrap()
        {
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
    let keyring = keyring();
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
    let keyring = keyring();
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
    let keyring = keyring();
    let acme = tenant("acme", &keyring);
    let refuse_tenant = |current: Option<Tenant>| -> Result<Tenant, Abort> {
        let _ = current;
        Err(Abort)
    };

    // On an absent document: it stays absent.
    assert!(matches!(
        store.update_tenant(&acme.id, &refuse_tenant).await,
        Err(StoreError::Aborted)
    ));
    assert_eq!(store.tenant(&acme.id).await.unwrap(), None);

    // On an existing document: it stays as it was, even though the mutation changed its copy; the
    // typed form hands the mutation's reason back.
    store.create_tenant(&acme).await.unwrap();
    let refused = store
        .update_tenant_or(&acme.id, |current| {
            let mut tenant = current.expect("exists");
            tenant.omneo_api_url = "https://changed.example".into();
            Err(format!("refused {}", tenant.omneo_api_url))
        })
        .await
        .unwrap();
    assert_eq!(refused, Err("refused https://changed.example".to_owned()));
    assert_eq!(store.tenant(&acme.id).await.unwrap(), Some(acme.clone()));

    // The same for installs.
    let install = Install::pending(acme.id.clone(), now());
    store
        .update_install(&acme.id, &|_| Ok(install.clone()))
        .await
        .unwrap();
    let refused = store
        .update_install_or(&acme.id, |current| {
            let mut install = current.expect("exists");
            install.transition(InstallStatus::Installed, None, now());
            Err("not provisioning")
        })
        .await
        .unwrap();
    assert_eq!(refused, Err("not provisioning"));
    assert_eq!(store.install(&acme.id).await.unwrap(), Some(install));
    assert!(matches!(
        store
            .update_install_or(&tenant_id("nobody"), |_| Err("no"))
            .await,
        Ok(Err("no"))
    ));
    assert_eq!(store.install(&tenant_id("nobody")).await.unwrap(), None);
}

async fn oauth_states_are_single_use(store: Arc<dyn Store>) {
    let keyring = keyring();
    let expires = now() + Duration::from_secs(600);
    // State hashes are hex, but a `/` and a `%` must not break the document path either.
    for value in ["8f3a9c", "a/b%2Fc"] {
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
    let keyring = keyring();
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
    assert_eq!(
        store.claim(&work, "a", lease).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(&work, "b", lease).await.unwrap(),
        Claim::InProgress
    );
    store.complete(&work, retain).await.unwrap();
    assert_eq!(store.claim(&work, "b", lease).await.unwrap(), Claim::Done);
    // Releasing finished work does not make it claimable again.
    store.release(&work, "a").await.unwrap();
    assert_eq!(store.claim(&work, "b", lease).await.unwrap(), Claim::Done);

    let retried = key("acme", "order-2");
    assert_eq!(
        store.claim(&retried, "a", lease).await.unwrap(),
        Claim::Acquired
    );
    store.release(&retried, "a").await.unwrap();
    assert_eq!(
        store.claim(&retried, "b", lease).await.unwrap(),
        Claim::Acquired
    );

    // Keys are per tenant, and releasing an unknown key is fine.
    assert_eq!(
        store
            .claim(&key("other", "order-1"), "a", lease)
            .await
            .unwrap(),
        Claim::Acquired
    );
    store
        .release(&key("acme", "never-claimed"), "a")
        .await
        .unwrap();
    assert_eq!(
        store
            .claim(&key("acme", "never-claimed"), "a", lease)
            .await
            .unwrap(),
        Claim::Acquired
    );
}

async fn expired_leases_and_done_markers_can_be_claimed_again(store: Arc<dyn Store>) {
    let short = Duration::from_millis(300);
    let abandoned = key("acme", "abandoned");
    assert_eq!(
        store.claim(&abandoned, "first", short).await.unwrap(),
        Claim::Acquired
    );
    claim_once_expired(store.as_ref(), &abandoned, Claim::InProgress).await;
    // The new claim holds its own (long) lease.
    assert_eq!(
        store
            .claim(&abandoned, "third", Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::InProgress
    );

    let finished = key("acme", "finished");
    assert_eq!(
        store
            .claim(&finished, "first", Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::Acquired
    );
    store.complete(&finished, short).await.unwrap();
    claim_once_expired(store.as_ref(), &finished, Claim::Done).await;
}

async fn a_holder_claiming_again_keeps_its_lease_alive(store: Arc<dyn Store>) {
    let short = Duration::from_millis(400);
    let busy = key("acme", "busy");
    assert_eq!(
        store.claim(&busy, "worker", short).await.unwrap(),
        Claim::Acquired
    );
    // Renewed every 100 ms for three leases' time: nobody else gets it meanwhile.
    let until = tokio::time::Instant::now() + short * 3;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.claim(&busy, "worker", short).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(
            store.claim(&busy, "other", short).await.unwrap(),
            Claim::InProgress
        );
    }
    // Left to lapse, it goes to the next claimant; its old holder then finds it taken.
    claim_once_expired(store.as_ref(), &busy, Claim::InProgress).await;
    assert_eq!(
        store.claim(&busy, "worker", short).await.unwrap(),
        Claim::InProgress
    );
    // A finished key is not revived by its old holder.
    store
        .complete(&busy, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        store.claim(&busy, "waiter", short).await.unwrap(),
        Claim::Done
    );
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
    let page = |limit| {
        let (store, acme) = (store.clone(), acme.clone());
        async move {
            store
                .failures(&acme, &FailureQuery::newest(limit))
                .await
                .unwrap()
        }
    };
    let all = page(10).await;
    assert_eq!(all.failures, [newest.clone(), middle.clone(), oldest]);
    assert_eq!(all.next, None, "the page holds the last record");
    let first = page(2).await;
    assert_eq!(first.failures, [newest, middle.clone()]);
    assert_eq!(first.next, Some(FailureCursor::of(&middle)));
    assert_eq!(page(0).await.failures, []);
    let other = store
        .failures(&tenant_id("other"), &FailureQuery::newest(10))
        .await
        .unwrap();
    assert_eq!(other.failures, [elsewhere]);
    let nobody = store
        .failures(&tenant_id("nobody"), &FailureQuery::newest(10))
        .await
        .unwrap();
    assert_eq!((nobody.failures, nobody.next), (vec![], None));
}

/// acme's seven records (three share a time, two another) and two of another tenant at the same
/// times, one with an id that sorts among acme's: `(id, tenant, seconds after t0, kind,
/// severity)`.
const PAGED: [(&str, &str, u64, TaskKind, Severity); 9] = [
    ("a-1", "acme", 0, TaskKind::SyncProfile, Severity::Failed),
    ("a-2", "acme", 1, TaskKind::KlaviyoEvents, Severity::Warning),
    ("a-3", "acme", 1, TaskKind::SyncProfile, Severity::Failed),
    ("a-4", "acme", 1, TaskKind::KlaviyoEvents, Severity::Failed),
    ("a-5", "acme", 2, TaskKind::SyncProfile, Severity::Warning),
    ("a-6", "acme", 3, TaskKind::KlaviyoEvents, Severity::Failed),
    ("a-7", "acme", 3, TaskKind::SyncProfile, Severity::Failed),
    ("a-30", "other", 1, TaskKind::SyncProfile, Severity::Failed),
    ("b-1", "other", 3, TaskKind::KlaviyoEvents, Severity::Failed),
];

/// Records [`PAGED`] (in an order of its own) and returns t0.
async fn record_paged(store: &dyn Store) -> Timestamp {
    let t0 = now();
    for (id, tenant, seconds, kind, severity) in PAGED.iter().rev() {
        let mut record = failure(id, tenant, t0 + Duration::from_secs(*seconds));
        record.task_kind = *kind;
        record.severity = *severity;
        store.record_failure(&record).await.unwrap();
    }
    t0
}

/// The ids of acme's pages of `query` (its `after` and `limit` replaced), page after page by their
/// cursors; each page but the last must be full and name the next.
async fn walk(store: &dyn Store, query: &FailureQuery, limit: usize) -> Vec<String> {
    let acme = tenant_id("acme");
    let mut ids = Vec::new();
    let mut after = None;
    for _ in 0..PAGED.len() + 1 {
        let page = store
            .failures(
                &acme,
                &FailureQuery {
                    after,
                    limit,
                    ..query.clone()
                },
            )
            .await
            .unwrap();
        assert!(page.failures.len() <= limit, "limit {limit}");
        ids.extend(page.failures.iter().map(|f| f.id.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(
                    page.failures.len(),
                    limit,
                    "only a full page has a next one"
                );
                assert_eq!(
                    Some(&next),
                    page.failures.last().map(FailureCursor::of).as_ref()
                );
                after = Some(next);
            }
            None => return ids,
        }
    }
    panic!("more pages than records: {ids:?}");
}

async fn failure_pages_cover_every_record_once(store: Arc<dyn Store>) {
    let t0 = record_paged(store.as_ref()).await;
    let newest_first = ["a-7", "a-6", "a-5", "a-4", "a-3", "a-2", "a-1"];
    for limit in [1, 2, 3, 6, 7, 8, 200] {
        let ids = walk(store.as_ref(), &FailureQuery::newest(0), limit).await;
        assert_eq!(ids, newest_first, "pages of {limit}");
    }
    // A cursor is a position, not a record: one between records (here, another tenant's id)
    // continues with the next older record of the tenant.
    let between = FailureCursor {
        at: t0 + Duration::from_secs(1),
        id: "a-30".into(),
    };
    let rest = store
        .failures(
            &tenant_id("acme"),
            &FailureQuery {
                after: Some(between),
                ..FailureQuery::newest(10)
            },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = rest.failures.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["a-3", "a-2", "a-1"]);
}

async fn failures_filter_by_kind_and_severity(store: Arc<dyn Store>) {
    record_paged(store.as_ref()).await;
    let query = |kind, severity| FailureQuery {
        kind,
        severity,
        ..FailureQuery::newest(0)
    };
    for limit in [1, 2, 10] {
        let cases = [
            (
                query(Some(TaskKind::SyncProfile), None),
                vec!["a-7", "a-5", "a-3", "a-1"],
            ),
            (
                query(Some(TaskKind::KlaviyoEvents), None),
                vec!["a-6", "a-4", "a-2"],
            ),
            (query(None, Some(Severity::Warning)), vec!["a-5", "a-2"]),
            (
                query(None, Some(Severity::Failed)),
                vec!["a-7", "a-6", "a-4", "a-3", "a-1"],
            ),
            (
                query(Some(TaskKind::SyncProfile), Some(Severity::Failed)),
                vec!["a-7", "a-3", "a-1"],
            ),
            (query(Some(TaskKind::FlowAction), None), vec![]),
        ];
        for (query, expected) in cases {
            let ids = walk(store.as_ref(), &query, limit).await;
            assert_eq!(ids, expected, "{query:?}, pages of {limit}");
        }
    }
}

async fn failures_are_read_by_tenant_and_id(store: Arc<dyn Store>) {
    let recorded = failure("acme-klaviyo-outbound:t1", "acme", now());
    store.record_failure(&recorded).await.unwrap();
    let acme = tenant_id("acme");
    assert_eq!(
        store.failure(&acme, &recorded.id).await.unwrap(),
        Some(recorded.clone())
    );
    assert_eq!(
        store
            .failure(&tenant_id("other"), &recorded.id)
            .await
            .unwrap(),
        None,
        "another tenant's record"
    );
    assert_eq!(store.failure(&acme, "missing").await.unwrap(), None);
}

async fn failure_replays_are_counted_by_compare_and_set(store: Arc<dyn Store>) {
    let recorded = failure("f-1", "acme", now());
    store.record_failure(&recorded).await.unwrap();
    let acme = tenant_id("acme");
    let first_at = now();
    let marked = store
        .mark_failure_retried(&acme, "f-1", 0, first_at)
        .await
        .unwrap()
        .expect("acme's record");
    assert_eq!((marked.retries, marked.retried_at), (1, Some(first_at)));
    assert_eq!(
        Failure {
            retries: 0,
            retried_at: None,
            ..marked.clone()
        },
        recorded,
        "nothing else changes"
    );
    assert_eq!(
        store.failure(&acme, "f-1").await.unwrap(),
        Some(marked.clone())
    );

    // A replay that read the record before that mark is refused and writes nothing.
    let stale = store
        .mark_failure_retried(&acme, "f-1", 0, now() + Duration::from_secs(5))
        .await;
    assert!(matches!(stale, Err(StoreError::Aborted)), "{stale:?}");
    assert_eq!(store.failure(&acme, "f-1").await.unwrap(), Some(marked));

    let second_at = now() + Duration::from_secs(10);
    let again = store
        .mark_failure_retried(&acme, "f-1", 1, second_at)
        .await
        .unwrap()
        .expect("acme's record");
    assert_eq!((again.retries, again.retried_at), (2, Some(second_at)));

    // Another tenant's record, or none, is not there to mark.
    let other = tenant_id("other");
    assert_eq!(
        store
            .mark_failure_retried(&other, "f-1", 2, now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .mark_failure_retried(&acme, "missing", 0, now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.failure(&acme, "f-1").await.unwrap(), Some(again));
    assert_eq!(store.failure(&acme, "missing").await.unwrap(), None);
}

async fn racing_replay_marks_count_once(store: Arc<dyn Store>) {
    store
        .record_failure(&failure("f-1", "acme", now()))
        .await
        .unwrap();
    let mut racers = JoinSet::new();
    for _ in 0..RACERS {
        let store = store.clone();
        racers.spawn(async move {
            store
                .mark_failure_retried(&tenant_id("acme"), "f-1", 0, now())
                .await
        });
    }
    let outcomes = racers.join_all().await;
    let marked = outcomes.iter().filter(|o| matches!(o, Ok(Some(_)))).count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::Aborted)))
        .count();
    assert_eq!((marked, refused), (1, RACERS - 1), "{outcomes:?}");
    let stored = store.failure(&tenant_id("acme"), "f-1").await.unwrap();
    assert_eq!(stored.map(|f| f.retries), Some(1));
}

async fn sync_state_is_put_read_and_deleted(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    let p1 = profile_id("p-1");
    assert_eq!(store.sync_state(&acme, &p1).await.unwrap(), None);

    let first = sync_state("acme", "p-1", "hash-1");
    store.put_sync_state(&first).await.unwrap();
    assert_eq!(store.sync_state(&acme, &p1).await.unwrap(), Some(first));

    let replaced = sync_state("acme", "p-1", "hash-2");
    store.put_sync_state(&replaced).await.unwrap();
    assert_eq!(store.sync_state(&acme, &p1).await.unwrap(), Some(replaced));

    // Another tenant's profile with the same id, and another profile, are separate documents.
    let other = sync_state("other", "p-1", "hash-o");
    let second = sync_state("acme", "region-7", "hash-s");
    store.put_sync_state(&other).await.unwrap();
    store.put_sync_state(&second).await.unwrap();

    store.delete_sync_state(&acme, &p1).await.unwrap();
    assert_eq!(store.sync_state(&acme, &p1).await.unwrap(), None);
    store.delete_sync_state(&acme, &p1).await.unwrap();
    assert_eq!(
        store.sync_state(&tenant_id("other"), &p1).await.unwrap(),
        Some(other)
    );
    assert_eq!(
        store
            .sync_state(&acme, &profile_id("region-7"))
            .await
            .unwrap(),
        Some(second)
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
    let keyring = keyring();
    let acme = tenant("acme", &keyring);
    store.create_tenant(&acme).await.unwrap();
    let stored = store.tenant(&acme.id).await.unwrap().expect("stored");
    for (which, sealed, plaintext) in [
        (
            TenantSecret::OmneoApiToken,
            &stored.omneo_api_token,
            "omneo-token-plaintext",
        ),
        (
            TenantSecret::OmneoSigningSecret,
            &stored.omneo_signing_secret,
            "signing-secret-plaintext",
        ),
        (
            TenantSecret::WebhookSecret,
            &stored.webhook_secret,
            "webhook-secret-plaintext",
        ),
    ] {
        assert!(!sealed.as_str().contains(plaintext));
        assert_eq!(sealed.key_id(), "k1");
        assert!(sealed.is_bound());
        assert_eq!(
            stored.open(&keyring, which).unwrap().expose_secret(),
            plaintext
        );
    }
    // Bound to its place: the same ciphertext does not open as another field or tenant's.
    assert!(
        keyring
            .open(
                &stored.omneo_api_token,
                &TenantSecret::WebhookSecret.at(&acme.id)
            )
            .is_err()
    );
    assert!(
        keyring
            .open(
                &stored.omneo_api_token,
                &TenantSecret::OmneoApiToken.at(&tenant_id("globex"))
            )
            .is_err()
    );

    let state = oauth_state("5e1f", "acme", now() + Duration::from_secs(600), &keyring);
    store.put_oauth_state(&state).await.unwrap();
    let taken = store.take_oauth_state("5e1f").await.unwrap().expect("live");
    assert!(!taken.pkce_verifier.as_str().contains("pkce-verifier"));
    assert_eq!(
        taken.open_verifier(&keyring).unwrap().expose_secret(),
        "pkce-verifier-plaintext"
    );
}

async fn racing_claims_acquire_exactly_once(store: Arc<dyn Store>) {
    let work = key("acme", "contended");
    let mut racers = JoinSet::new();
    for _ in 0..RACERS {
        let (store, work) = (store.clone(), work.clone());
        racers.spawn(async move {
            let holder = uuid::Uuid::new_v4().to_string();
            store.claim(&work, &holder, Duration::from_secs(3600)).await
        });
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
    let keyring = keyring();
    let mut acme = tenant("acme", &keyring);
    acme.created_at = "2026-11-26T10:00:00.123456789Z".parse().unwrap();
    store.create_tenant(&acme).await.unwrap();
    let stored = store.tenant(&acme.id).await.unwrap().expect("stored");
    assert_eq!(
        stored.created_at,
        "2026-11-26T10:00:00.123456Z".parse::<Timestamp>().unwrap()
    );
}

async fn released_claims_stay_with_whoever_holds_them(store: Arc<dyn Store>) {
    let work = key("acme", "lapsed");
    let short = Duration::from_millis(300);
    assert_eq!(
        store.claim(&work, "first", short).await.unwrap(),
        Claim::Acquired
    );
    // The first holder's lease lapses; a second holder takes the key over.
    claim_once_expired(store.as_ref(), &work, Claim::InProgress).await;
    // `claim_once_expired` acquired it as "waiter": the first holder's late release is a no-op.
    store.release(&work, "first").await.unwrap();
    assert_eq!(
        store
            .claim(&work, "third", Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::InProgress,
        "a release by a former holder must not free the current holder's claim"
    );
    store.release(&work, "waiter").await.unwrap();
    assert_eq!(
        store
            .claim(&work, "third", Duration::from_secs(3600))
            .await
            .unwrap(),
        Claim::Acquired
    );
}

async fn tenant_ids_list_every_registered_tenant(store: Arc<dyn Store>) {
    assert!(store.tenant_ids().await.unwrap().is_empty());
    let keyring = keyring();
    for id in ["globex", "acme", "initech"] {
        store.create_tenant(&tenant(id, &keyring)).await.unwrap();
    }
    assert_eq!(
        store.tenant_ids().await.unwrap(),
        [tenant_id("acme"), tenant_id("globex"), tenant_id("initech")]
    );
}

async fn live_oauth_states_are_listed_until_they_expire(store: Arc<dyn Store>) {
    let keyring = keyring();
    let live = oauth_state("aa01", "acme", now() + Duration::from_secs(600), &keyring);
    let expired = oauth_state("aa02", "acme", now() - Duration::from_secs(1), &keyring);
    store.put_oauth_state(&live).await.unwrap();
    store.put_oauth_state(&expired).await.unwrap();
    assert_eq!(store.live_oauth_states().await.unwrap(), [live]);
    store.take_oauth_state("aa01").await.unwrap();
    assert!(store.live_oauth_states().await.unwrap().is_empty());
}

async fn queue_names_are_reserved_by_the_first_tenant(store: Arc<dyn Store>) {
    let (acme, other) = (tenant_id("acme"), tenant_id("acme-au"));
    let name = QueueName::parse("acme-au-klaviyo-inbound").unwrap();
    assert_eq!(store.reserve_queue_name(&name, &acme).await.unwrap(), acme);
    assert_eq!(store.reserve_queue_name(&name, &acme).await.unwrap(), acme);
    assert_eq!(store.reserve_queue_name(&name, &other).await.unwrap(), acme);
    let own = QueueName::parse("acme-au-klaviyo-outbound").unwrap();
    assert_eq!(store.reserve_queue_name(&own, &other).await.unwrap(), other);
}

async fn writes_reseal_under_the_active_key(store: Arc<dyn Store>) {
    // Records written with a retired key (or before values were bound to their place) come back
    // from the store under its active key — here `k1`, which retired `k0`.
    let retired = Keyring::parse(RETIRED_K0).unwrap();
    let acme = tenant("acme", &retired);
    assert_eq!(acme.omneo_api_token.key_id(), "k0");
    store.create_tenant(&acme).await.unwrap();
    let stored = store.tenant(&acme.id).await.unwrap().expect("stored");
    let current = keyring();
    for which in [
        TenantSecret::OmneoApiToken,
        TenantSecret::OmneoSigningSecret,
        TenantSecret::WebhookSecret,
    ] {
        let sealed: &Sealed = match which {
            TenantSecret::OmneoApiToken => &stored.omneo_api_token,
            TenantSecret::OmneoSigningSecret => &stored.omneo_signing_secret,
            TenantSecret::WebhookSecret => &stored.webhook_secret,
        };
        assert_eq!(sealed.key_id(), "k1", "{which:?}");
        assert!(stored.open(&current, which).is_ok());
    }

    // An install's tokens are re-sealed on every update too.
    let install = {
        let mut install = Install::pending(acme.id.clone(), now());
        install.tokens = Some(OAuthTokens {
            access_token: TokenSecret::AccessToken.seal(&retired, &acme.id, &secret("access")),
            refresh_token: TokenSecret::RefreshToken.seal(&retired, &acme.id, &secret("refresh")),
            expires_at: now(),
            scopes: Vec::new(),
            last_refreshed_at: None,
        });
        install
    };
    let written = store
        .update_install(&acme.id, &|_| Ok(install.clone()))
        .await
        .unwrap();
    let tokens = written.tokens.expect("tokens");
    assert_eq!(tokens.refresh_token.key_id(), "k1");
    assert_eq!(
        tokens
            .open(&current, &acme.id, TokenSecret::RefreshToken)
            .unwrap()
            .expose_secret(),
        "refresh"
    );
    // A value the store's keyring cannot open is left as it was (and the write still happens).
    let stranger = Keyring::parse("k9:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=").unwrap();
    let mut foreign = tenant("globex", &stranger);
    foreign.omneo_api_url = "https://globex.example".into();
    store.create_tenant(&foreign).await.unwrap();
    let kept = store.tenant(&foreign.id).await.unwrap().expect("stored");
    assert_eq!(kept.omneo_api_token, foreign.omneo_api_token);
}

async fn install_history_is_bounded(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    store
        .update_install(&acme, &|_| Ok(Install::pending(acme.clone(), now())))
        .await
        .unwrap();
    for round in 0..(Install::HISTORY_LIMIT + 7) {
        store
            .update_install(&acme, &|current| {
                let mut install = current.expect("exists");
                install.transition(InstallStatus::Failed, Some(format!("round {round}")), now());
                Ok(install)
            })
            .await
            .unwrap();
    }
    let install = store.install(&acme).await.unwrap().expect("stored");
    assert_eq!(install.history.len(), Install::HISTORY_LIMIT);
    let last_round = Install::HISTORY_LIMIT + 6;
    assert_eq!(
        install.history.last().unwrap().reason.as_deref(),
        Some(format!("round {last_round}").as_str()),
        "the newest entries are kept"
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
    let store = firestore_store_in(&project, keyring()).await;
    let raw = raw_db(&project).await;
    let expires_at = now() + Duration::from_secs(600);
    store
        .put_oauth_state(&oauth_state("77aa", "acme", expires_at, &keyring()))
        .await
        .unwrap();
    let work = key("acme", "ttl");
    store
        .claim(&work, "ttl", Duration::from_secs(3600))
        .await
        .unwrap();

    let state_doc = raw
        .fluent()
        .select()
        .by_id_in("oauth_states")
        .one("77aa")
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
        ValueType::StringValue(text) => assert!(text.starts_with("k1.") && !text.contains("pkce")),
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
    let store = firestore_store_in(&project, keyring()).await;
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
    let store =
        FirestoreStore::connect(&unique_project_id(), Some(&address.to_string()), keyring())
            .await
            .expect("connect");
    match store.tenant(&tenant_id("acme")).await {
        Err(StoreError::Unavailable(err)) => {
            assert!(format!("{err:#}").contains("tenants/acme"), "{err:#}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

async fn sync_states_are_written_and_read_in_batches(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    // More than one Firestore write batch (500).
    let mut states: Vec<SyncState> = (0..603)
        .map(|n| sync_state("acme", &format!("p-{n}"), &format!("hash-{n}")))
        .collect();
    states.push(sync_state("acme", "p-last", "hash-last"));
    store.put_sync_states(&states).await.unwrap();
    store
        .put_sync_state(&sync_state("other", "p-1", "other"))
        .await
        .unwrap();

    let mut wanted: Vec<OmneoProfileId> =
        states.iter().map(|s| s.omneo_profile_id.clone()).collect();
    wanted.push(profile_id("p-absent"));
    let mut read = store.sync_states(&acme, &wanted).await.unwrap();
    read.sort_by(|a, b| a.omneo_profile_id.cmp(&b.omneo_profile_id));
    let mut expected = states.clone();
    expected.sort_by(|a, b| a.omneo_profile_id.cmp(&b.omneo_profile_id));
    assert_eq!(read.len(), expected.len(), "absent profiles are left out");
    assert_eq!(read, expected);
    // One at a time reads the same documents; another tenant's stay its own.
    assert_eq!(
        store
            .sync_state(&acme, &profile_id("p-last"))
            .await
            .unwrap(),
        states.last().cloned()
    );
    let others = store
        .sync_states(&tenant_id("other"), &[profile_id("p-1"), profile_id("p-2")])
        .await
        .unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].payload_hash, "other");
}

fn backfill_run(tenant: &TenantId, id: &str) -> BackfillRun {
    BackfillRun {
        tenant: tenant.clone(),
        id: id.to_owned(),
        trigger: RunTrigger::Admin,
        since: Some("2026-11-01T00:00:00Z".parse().unwrap()),
        dry_run: false,
        state: RunState::Running,
        started_at: now(),
        finished_at: None,
        total: None,
        pages_per_chunk: 0,
        listing_done: false,
        chunks: Default::default(),
        counts: RunCounts::default(),
        errors: Vec::new(),
        failure: None,
    }
}

async fn backfill_runs_are_updated_by_compare_and_set(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    assert_eq!(store.backfill(&acme).await.unwrap(), None);
    let start = |id: &'static str| {
        let acme = acme.clone();
        move |current: Option<BackfillRun>| match current {
            Some(run) if run.state == RunState::Running => Err(Abort),
            _ => Ok(backfill_run(&acme, id)),
        }
    };
    let first = store.update_backfill(&acme, &start("run-1")).await.unwrap();
    assert_eq!(store.backfill(&acme).await.unwrap(), Some(first.clone()));
    // A second start while one runs is refused and writes nothing.
    assert!(matches!(
        store.update_backfill(&acme, &start("run-2")).await,
        Err(StoreError::Aborted)
    ));
    let checkpointed = store
        .update_backfill(&acme, &|current| {
            let mut run = current.expect("exists");
            run.chunk_mut(1).pages = 4;
            run.chunk_mut(1).import_jobs.push("job-1".into());
            run.total = Some(1_000);
            Ok(run)
        })
        .await
        .unwrap();
    let stored = store.backfill(&acme).await.unwrap().expect("stored");
    assert_eq!(stored, checkpointed);
    assert_eq!(stored.chunk(1).unwrap().import_jobs, ["job-1"]);
    assert_eq!(stored.since, first.since);
    // A finished run can be replaced by the next.
    store
        .update_backfill(&acme, &|current| {
            let mut run = current.expect("exists");
            run.state = RunState::Completed;
            run.finished_at = Some(now());
            Ok(run)
        })
        .await
        .unwrap();
    let second = store.update_backfill(&acme, &start("run-2")).await.unwrap();
    assert_eq!(second.id, "run-2");
    assert_eq!(store.backfill(&tenant_id("other")).await.unwrap(), None);
}

async fn racing_chunk_completions_all_count(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    store
        .update_backfill(&acme, &|_| Ok(backfill_run(&acme, "run-1")))
        .await
        .unwrap();
    let mut writers = JoinSet::new();
    for chunk in 0..RACERS {
        let (store, acme) = (store.clone(), acme.clone());
        writers.spawn(async move {
            store
                .update_backfill(&acme, &|current| {
                    let mut run = current.expect("exists");
                    let first_page = u32::try_from(chunk).unwrap() * 10 + 1;
                    if run.chunk(first_page).is_some_and(|c| c.done) {
                        return Err(Abort);
                    }
                    run.chunk_mut(first_page).done = true;
                    run.counts.add(&RunCounts {
                        read: 100,
                        imported: 90,
                        excluded: 10,
                        ..RunCounts::default()
                    });
                    Ok(run)
                })
                .await
        });
    }
    for written in writers.join_all().await {
        written.expect("update_backfill");
    }
    let run = store.backfill(&acme).await.unwrap().expect("stored");
    let racers = u64::try_from(RACERS).unwrap();
    assert_eq!(run.counts.read, 100 * racers);
    assert_eq!(run.counts.imported, 90 * racers);
    assert_eq!(run.chunks.values().filter(|c| c.done).count(), RACERS);
}

async fn reconciliation_records_are_read_modified_and_written(store: Arc<dyn Store>) {
    let acme = tenant_id("acme");
    assert_eq!(store.reconciliation(&acme).await.unwrap(), None);
    let scheduled = now();
    let due = |at: Timestamp| {
        let acme = acme.clone();
        move |current: Option<Reconciliation>| {
            let mut record = current.unwrap_or_else(|| Reconciliation::new(acme.clone()));
            if record.last_scheduled_at.is_some_and(|last| last >= at) {
                return Err(Abort);
            }
            record.last_scheduled_at = Some(at);
            Ok(record)
        }
    };
    store
        .update_reconciliation(&acme, &due(scheduled))
        .await
        .unwrap();
    assert!(matches!(
        store.update_reconciliation(&acme, &due(scheduled)).await,
        Err(StoreError::Aborted)
    ));
    let written = store
        .update_reconciliation(&acme, &|current| {
            let mut record = current.expect("exists");
            record.events_after = Some("2026-11-30T00:00:00Z".parse().unwrap());
            record.inbound = Some(ReconcileResult {
                at: scheduled,
                status: ReconcileStatus::ReauthorizationRequired,
                message: "missing scopes: events:read".into(),
                run_id: None,
                events: Some(0),
            });
            Ok(record)
        })
        .await
        .unwrap();
    assert_eq!(
        store.reconciliation(&acme).await.unwrap(),
        Some(written.clone())
    );
    assert_eq!(written.last_scheduled_at, Some(scheduled));
    assert_eq!(
        store.reconciliation(&tenant_id("other")).await.unwrap(),
        None
    );
}
