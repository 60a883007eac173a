//! Profile sync flows: create, update, delete, exclusions, matching, consent, master list,
//! identity write-back, coalescing and write economy.

use harness::klaviyo::{Channel, ConsentState};
use harness::omneo::{CustomAttribute, ProfileType};
use serde_json::json;

use crate::pipeline::{Linked, Pipeline, customer};
use crate::support::StoreKind;

async fn create_update_delete(store: StoreKind) {
    let o = Pipeline::start(
        store,
        json!({"mappings": [{"source": "tier.name", "target": "properties.tier"}]}),
    )
    .await;
    let created = o.create(customer(1)).await;

    let k = o
        .klaviyo_profile(&created.id)
        .expect("a Klaviyo profile for the new customer");
    assert_eq!(k.email, created.email);
    assert_eq!(k.phone_number, created.mobile_phone);
    assert_eq!(k.first_name, created.first_name);
    assert_eq!(k.last_name, created.last_name);
    assert_eq!(
        k.location["city"],
        json!(created.address.as_ref().unwrap().city)
    );
    assert_eq!(
        k.location["region"],
        json!(created.address.as_ref().unwrap().state)
    );
    assert_eq!(
        k.properties["tier"],
        json!(created.tier.as_ref().unwrap().name)
    );
    assert_eq!(
        k.subscriptions.email_marketing.consent,
        ConsentState::Subscribed
    );
    assert_eq!(
        k.subscriptions
            .email_marketing
            .custom_method_detail
            .as_deref(),
        Some("omneo")
    );
    assert_eq!(
        k.subscriptions.sms_marketing.consent,
        ConsentState::NeverSubscribed
    );
    let identities = o.t.omneo.identities(o.tenant, &created.id);
    assert!(
        identities
            .iter()
            .any(|i| i.handle == "klaviyo" && i.identifier == k.id),
        "the Klaviyo id is written back: {identities:?}"
    );

    // An update changes Klaviyo; the identity is not written again.
    let identity_writes =
        o.t.omneo
            .recorder()
            .requests()
            .iter()
            .filter(|r| r.path.contains("/identities"))
            .count();
    o.edit(&created.id, |p| p.last_name = Some("Renamed".into()));
    o.settle().await;
    let k = o.klaviyo_profile(&created.id).unwrap();
    assert_eq!(k.last_name.as_deref(), Some("Renamed"));
    assert_eq!(o.klaviyo_calls("POST", "/api/profile-import"), 2);
    let identity_writes_after =
        o.t.omneo
            .recorder()
            .requests()
            .iter()
            .filter(|r| r.path.contains("/identities"))
            .count();
    assert_eq!(
        identity_writes_after, identity_writes,
        "the identity is written once"
    );

    // Deleting unsubscribes both channels (the default) and forgets the sync state.
    o.edit(&created.id, |p| p.attributes.comms.sms_promo = Some(true));
    o.settle().await;
    assert_eq!(
        o.klaviyo_profile(&created.id)
            .unwrap()
            .subscriptions
            .sms_marketing
            .consent,
        ConsentState::Subscribed
    );
    o.t.omneo.delete_profile(o.tenant, &created.id).unwrap();
    o.settle().await;
    let k = o.klaviyo_profile(&created.id).unwrap();
    assert_eq!(
        k.subscriptions.email_marketing.consent,
        ConsentState::Unsubscribed
    );
    assert_eq!(
        k.subscriptions.sms_marketing.consent,
        ConsentState::Unsubscribed
    );
    let tenant = shared::domain::TenantId::parse(o.tenant).unwrap();
    let omneo_id = shared::domain::OmneoProfileId::parse(created.id.clone()).unwrap();
    assert_eq!(
        o.t.app.store.sync_state(&tenant, &omneo_id).await.unwrap(),
        None
    );
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn a_profile_is_created_updated_and_deleted_in_klaviyo() {
    create_update_delete(StoreKind::Memory).await;
}

#[tokio::test]
async fn a_profile_is_created_updated_and_deleted_in_klaviyo_on_firestore() {
    create_update_delete(StoreKind::Firestore).await;
}

#[tokio::test]
async fn deletion_follows_the_tenants_policy() {
    let o = Pipeline::start(StoreKind::Memory, json!({"on_profile_deleted": "delete"})).await;
    let gone = o.create(customer(2)).await;
    let klaviyo_id = o.klaviyo_profile(&gone.id).unwrap().id;
    o.t.omneo.delete_profile(o.tenant, &gone.id).unwrap();
    o.settle().await;
    let jobs = o.t.klaviyo.deletion_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].value, klaviyo_id, "deleted by Klaviyo id: {jobs:?}");

    let o = Pipeline::start(StoreKind::Memory, json!({"on_profile_deleted": "ignore"})).await;
    let kept = o.create(customer(3)).await;
    let writes = o.klaviyo_writes();
    o.t.omneo.delete_profile(o.tenant, &kept.id).unwrap();
    o.settle().await;
    assert_eq!(o.klaviyo_writes(), writes, "ignore writes nothing");
}

#[tokio::test]
async fn excluded_profiles_never_reach_klaviyo() {
    let o = Pipeline::start(
        StoreKind::Memory,
        json!({"exclude_logic": {"in": ["no-sync", {"var": "tags"}]}}),
    )
    .await;
    let mut example = customer(10);
    example.email = Some("someone@example.com".into());
    let mut staff = customer(11);
    staff.email = Some("staff-profile-7@shop.test".into());
    let mut dependant = customer(12);
    dependant.profile_type = ProfileType::Dependant;
    let mut tagged = customer(13);
    tagged.tags = vec!["no-sync".into()];
    for new in [example, staff, dependant, tagged] {
        o.create(new).await;
    }
    assert_eq!(o.klaviyo_writes(), 0, "{:?}", o.t.klaviyo.profiles());
    assert!(o.t.klaviyo.profiles().is_empty());
    // The rule is the tenant's: a profile it does not match is synced.
    o.create(customer(14)).await;
    assert_eq!(o.t.klaviyo.profiles().len(), 1);
}

#[tokio::test]
async fn matching_goes_identity_then_external_id_then_email() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    // By email: a Klaviyo profile that only shares the email is updated, not duplicated.
    let by_email = customer(20);
    let existing =
        o.t.klaviyo
            .seed_profile(json!({"email": by_email.email, "first_name": "Old"}))
            .unwrap();
    let created = o.create(by_email).await;
    assert_eq!(
        o.klaviyo_profile(&created.id).unwrap().id,
        existing,
        "matched by email"
    );

    // By external_id: a profile excluded at first (so never synced) has a Klaviyo twin that only
    // shares the Omneo id; once it may sync, that twin is updated.
    let mut late = customer(21);
    late.profile_type = ProfileType::Dependant;
    let created = o.create(late).await;
    assert!(o.klaviyo_profile(&created.id).is_none());
    let twin =
        o.t.klaviyo
            .seed_profile(json!({"external_id": created.id, "email": "twin.21@example.org"}))
            .unwrap();
    o.edit(&created.id, |p| p.profile_type = ProfileType::Active);
    o.settle().await;
    let k = o.klaviyo_profile(&created.id).unwrap();
    assert_eq!(k.id, twin, "matched by external_id");
    assert_eq!(k.email, created.email);

    // By identity: the stored identity wins when neither external id nor email match.
    let holder =
        o.t.klaviyo
            .seed_profile(json!({"email": "old.22@example.org"}))
            .unwrap();
    let mut by_identity = customer(22);
    by_identity
        .identities
        .push(("klaviyo".into(), holder.clone()));
    let created = o.create(by_identity).await;
    let k = o.klaviyo_profile(&created.id).unwrap();
    assert_eq!(k.id, holder, "matched by identity");
    assert_eq!(k.email, created.email);
    assert_eq!(o.t.klaviyo.profiles().len(), 3, "no profile was duplicated");
}

#[tokio::test]
async fn consent_is_written_only_on_a_difference_and_sms_needs_a_phone() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let mut no_phone = customer(30);
    no_phone.mobile_phone = None;
    no_phone.comms.sms_promo = Some(true);
    let created = o.create(no_phone).await;
    let k = o.klaviyo_profile(&created.id).unwrap();
    assert_eq!(
        k.subscriptions.email_marketing.consent,
        ConsentState::Subscribed
    );
    assert_eq!(
        k.subscriptions.sms_marketing.consent,
        ConsentState::NeverSubscribed,
        "no phone, no SMS"
    );
    assert_eq!(
        o.klaviyo_calls("POST", "/api/profile-subscription-bulk-create-jobs"),
        1
    );

    // Opting out of email unsubscribes; bouncing keeps it unsubscribed without another call.
    o.edit(&created.id, |p| {
        p.attributes.comms.email_optout = Some(true)
    });
    o.settle().await;
    assert_eq!(
        o.klaviyo_profile(&created.id)
            .unwrap()
            .subscriptions
            .email_marketing
            .consent,
        ConsentState::Unsubscribed
    );
    assert_eq!(
        o.klaviyo_calls("POST", "/api/profile-subscription-bulk-delete-jobs"),
        1
    );
    o.edit(&created.id, |p| {
        p.attributes.comms.email_bounced = Some(true)
    });
    o.settle().await;
    assert_eq!(
        o.klaviyo_calls("POST", "/api/profile-subscription-bulk-delete-jobs"),
        1
    );
}

/// Customer `n`, subscribed to SMS in Omneo, synced and linked.
async fn linked_sms_subscriber(o: &Pipeline, n: u32) -> Linked {
    let mut sms = customer(n);
    sms.comms.sms_promo = Some(true);
    o.linked(sms).await
}

/// The customer replies STOP: Klaviyo unsubscribes them from SMS (its system event pending).
fn unsubscribe_from_sms_in_klaviyo(o: &Pipeline, l: &Linked) {
    o.t.klaviyo
        .change_consent(
            &l.klaviyo_id,
            Channel::Sms,
            ConsentState::Unsubscribed,
            "SMS",
        )
        .unwrap();
}

/// Klaviyo's SMS marketing consent of a linked customer.
fn klaviyo_sms_consent(o: &Pipeline, l: &Linked) -> ConsentState {
    o.klaviyo_profile(&l.omneo.id)
        .unwrap()
        .subscriptions
        .sms_marketing
        .consent
}

/// Found by the soak: a customer unsubscribed in Klaviyo, and a sync of an unrelated Omneo edit
/// ran before that change reached Omneo. It must not subscribe them again: a channel Omneo has
/// not changed since it was last sent is Klaviyo's change on its way to Omneo.
#[tokio::test]
async fn a_change_made_in_klaviyo_is_not_undone_by_a_sync_before_it_reaches_omneo() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = linked_sms_subscriber(&o, 31).await;
    let sms_consent = || klaviyo_sms_consent(&o, &l);
    assert_eq!(sms_consent(), ConsentState::Subscribed);
    let subscribes = || o.klaviyo_calls("POST", "/api/profile-subscription-bulk-create-jobs");
    let subscribes_before = subscribes();
    unsubscribe_from_sms_in_klaviyo(&o, &l);
    o.edit(&l.omneo.id, |p| p.first_name = Some("Again".into()));
    o.settle().await;
    assert_eq!(
        o.klaviyo_profile(&l.omneo.id)
            .unwrap()
            .first_name
            .as_deref(),
        Some("Again")
    );
    assert_eq!(
        sms_consent(),
        ConsentState::Unsubscribed,
        "the customer's choice stays"
    );
    assert_eq!(subscribes(), subscribes_before, "no subscribe sent");

    // The change reaches Omneo; the sync it queues finds Klaviyo equal and writes nothing.
    for delivery in o.t.klaviyo.deliver_pending().await.unwrap() {
        assert_eq!(delivery.status, Some(202), "{delivery:?}");
    }
    o.settle().await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(!comms.sms_subscribed(), "{comms:?}");
    assert_eq!(sms_consent(), ConsentState::Unsubscribed);
    assert_eq!(subscribes(), subscribes_before);

    // A change made in Omneo still wins: it is sent.
    o.edit(&l.omneo.id, |p| {
        p.attributes.comms.sms_promo = Some(true);
        p.attributes.comms.sms_optout = Some(false);
    });
    o.settle().await;
    assert_eq!(sms_consent(), ConsentState::Subscribed);
    assert_eq!(subscribes(), subscribes_before + 1);
}

/// The other side of the race: Omneo's older consent was written to Klaviyo while the
/// customer's newer change was on its way (here made directly in the simulator). When the
/// customer's change lands in Omneo, the sync its comms update queues — Omneo changed since SMS
/// was last sent — writes it to Klaviyo.
#[tokio::test]
async fn an_inbound_comms_update_queues_the_sync_that_repairs_klaviyo() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = linked_sms_subscriber(&o, 32).await;
    let sms_consent = || klaviyo_sms_consent(&o, &l);
    // The customer unsubscribes in Klaviyo, and Omneo's subscribed is written over it (as a
    // sync that read Omneo just before would have).
    unsubscribe_from_sms_in_klaviyo(&o, &l);
    let unsubscribe = o.t.klaviyo.drop_pending();
    o.t.klaviyo
        .change_consent(&l.klaviyo_id, Channel::Sms, ConsentState::Subscribed, "API")
        .unwrap();
    o.t.klaviyo.drop_pending();
    assert_eq!(sms_consent(), ConsentState::Subscribed);
    let unsubscribes = || o.klaviyo_calls("POST", "/api/profile-subscription-bulk-delete-jobs");
    let unsubscribes_before = unsubscribes();
    o.deliver(unsubscribe).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(!comms.sms_subscribed(), "{comms:?}");
    assert_eq!(sms_consent(), ConsentState::Unsubscribed, "repaired");
    assert_eq!(unsubscribes(), unsubscribes_before + 1);
}

#[tokio::test]
async fn the_master_list_rides_on_every_email_subscribe() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let list = o.t.klaviyo.create_list("Master");
    let response =
        o.t.request(
            reqwest::Method::PATCH,
            "/acme/api/v1/settings",
            Some(&o.registered.admin_key),
        )
        .json(&json!({"master_list_id": list}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let subscribed = o.create(customer(40)).await;
    let mut not_subscribed = customer(41);
    not_subscribed.comms.email_promo = Some(false);
    let unsubscribed = o.create(not_subscribed).await;
    let members = o.t.klaviyo.list_members(&list);
    let id = |omneo: &str| o.klaviyo_profile(omneo).unwrap().id;
    assert_eq!(members, vec![id(&subscribed.id)]);
    // Becoming subscribed joins the list in the same call.
    o.edit(&unsubscribed.id, |p| {
        p.attributes.comms.email_promo = Some(true)
    });
    o.settle().await;
    assert_eq!(o.t.klaviyo.list_members(&list).len(), 2);

    // Without a master list nothing joins any list.
    let plain = Pipeline::start(StoreKind::Memory, json!({})).await;
    let other = plain.t.klaviyo.create_list("Other");
    plain.create(customer(42)).await;
    assert!(plain.t.klaviyo.list_members(&other).is_empty());
}

#[tokio::test]
async fn twenty_updates_in_a_window_make_one_import_and_the_last_value_wins() {
    let o = Pipeline::start(StoreKind::Memory, json!({"coalesce_seconds": 3})).await;
    let created = o.create(customer(50)).await;
    let imports = o.klaviyo_calls("POST", "/api/profile-import");
    assert_eq!(imports, 1);
    // Start right after a bucket boundary so all 20 land in one 3-second window.
    let now = jiff::Timestamp::now();
    let into = now.as_millisecond().rem_euclid(3000);
    tokio::time::sleep(std::time::Duration::from_millis((3000 - into + 50) as u64)).await;
    for n in 1..=20 {
        o.edit(&created.id, |p| p.first_name = Some(format!("Name{n}")));
    }
    o.settle().await;
    assert_eq!(o.klaviyo_calls("POST", "/api/profile-import"), imports + 1);
    assert_eq!(
        o.klaviyo_profile(&created.id)
            .unwrap()
            .first_name
            .as_deref(),
        Some("Name20")
    );

    // A change that maps to nothing Klaviyo sees writes nothing.
    let writes = o.klaviyo_writes();
    o.edit(&created.id, |p| {
        p.custom_attributes.push(CustomAttribute {
            namespace: "pos".into(),
            handle: "till".into(),
            kind: "string".into(),
            value: json!("7"),
        });
    });
    o.settle().await;
    assert_eq!(o.klaviyo_writes(), writes, "a no-op change writes nothing");
}

#[tokio::test]
async fn upsert_profile_data_syncs_at_once() {
    let o = Pipeline::start(StoreKind::Memory, json!({"coalesce_seconds": 300})).await;
    // With a five-minute window a webhook sync waits; the target does not.
    let created = o.t.omneo.seed_profile(o.tenant, customer(60)).unwrap();
    o.t.omneo.settle().await;
    let url = format!(
        "{}/{}/api/v1/targets/klaviyo/upsert-profile-data",
        o.t.url, o.tenant
    );
    let delivery =
        o.t.omneo
            .send_target_call(o.tenant, &url, &json!({"profile_id": created.id}))
            .await
            .unwrap();
    assert_eq!(delivery.outcome.status(), Some(202), "{delivery:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while o.klaviyo_profile(&created.id).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the target synced at once"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
