//! The inbound worker: every row of the event → comms → interaction table, merging, echoes,
//! unknown profiles, redelivery, consent times and the master list.

use harness::klaviyo::{Channel, ConsentState, SystemEvent, topics};
use harness::omneo::{Comms, NewProfile};
use serde_json::json;
use shared::domain::TenantId;
use shared::store::IdempotencyKey;

use crate::pipeline::{Linked, Pipeline, customer};
use crate::support::StoreKind;

/// `Y-m-d H:i:s` in UTC: how Omneo keeps consent times.
fn omneo_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// The consent time demo profiles start with.
const DEMO_CONSENT_AT: &str = "2024-01-15 09:30:00";

/// One row of the table: the topic, how the profile starts, and what must follow.
struct Row {
    topic: &'static str,
    start: fn(&mut Comms),
    expect: fn(&Comms) -> bool,
    /// Which channel's consent time moves (`None`: neither).
    stamped: Option<&'static str>,
    signal: i8,
    action: &'static str,
    channel: &'static str,
}

fn subscribed_to_email(comms: &mut Comms) {
    comms.email_promo = Some(true);
    comms.email_optout = Some(false);
}

fn unsubscribed_from_email(comms: &mut Comms) {
    comms.email_promo = Some(false);
    comms.email_optout = Some(true);
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            topic: topics::BOUNCED_EMAIL,
            start: subscribed_to_email,
            expect: |c| c.email_bounced == Some(true) && c.email_promo == Some(true),
            stamped: None,
            signal: -1,
            action: "reach",
            channel: "email",
        },
        Row {
            topic: topics::MARKED_EMAIL_AS_SPAM,
            start: subscribed_to_email,
            expect: |c| c.email_promo == Some(false) && c.email_optout == Some(true),
            stamped: Some("email"),
            signal: -1,
            action: "feedback",
            channel: "email",
        },
        Row {
            topic: topics::SUBSCRIBED_TO_EMAIL,
            start: unsubscribed_from_email,
            expect: |c| c.email_promo == Some(true) && c.email_optout == Some(false),
            stamped: Some("email"),
            signal: 1,
            action: "disclose",
            channel: "email",
        },
        Row {
            topic: topics::SUBSCRIBED_TO_LIST,
            start: unsubscribed_from_email,
            expect: |c| c.email_promo == Some(true) && c.email_optout == Some(false),
            stamped: Some("email"),
            signal: 1,
            action: "disclose",
            channel: "email",
        },
        Row {
            topic: topics::UNSUBSCRIBED_FROM_EMAIL,
            start: subscribed_to_email,
            expect: |c| c.email_promo == Some(false) && c.email_optout == Some(false),
            stamped: Some("email"),
            signal: -1,
            action: "disclose",
            channel: "email",
        },
        Row {
            topic: topics::SUPPRESSED_FROM_EMAIL,
            start: subscribed_to_email,
            expect: |c| c.email_optout == Some(true) && c.email_promo == Some(true),
            stamped: Some("email"),
            signal: -1,
            action: "disclose",
            channel: "email",
        },
        Row {
            topic: topics::UNSUPPRESSED_FROM_EMAIL,
            start: |c| {
                c.email_promo = Some(true);
                c.email_optout = Some(true);
            },
            expect: |c| c.email_optout == Some(false),
            stamped: Some("email"),
            signal: 0,
            action: "disclose",
            channel: "email",
        },
        Row {
            topic: topics::SUBSCRIBED_TO_SMS,
            start: |c| {
                c.sms_promo = Some(false);
                c.sms_optout = Some(true);
            },
            expect: |c| c.sms_promo == Some(true) && c.sms_optout == Some(false),
            stamped: Some("sms"),
            signal: 1,
            action: "disclose",
            channel: "sms",
        },
        Row {
            topic: topics::UNSUBSCRIBED_FROM_SMS,
            start: |c| c.sms_promo = Some(true),
            expect: |c| c.sms_promo == Some(false),
            stamped: Some("sms"),
            signal: -1,
            action: "disclose",
            channel: "sms",
        },
        Row {
            topic: topics::FAILED_TO_DELIVER_SMS,
            start: |c| c.sms_promo = Some(true),
            expect: |c| c.sms_bounced == Some(true) && c.sms_promo == Some(true),
            stamped: None,
            signal: -1,
            action: "reach",
            channel: "sms",
        },
        Row {
            topic: topics::UNSUBSCRIBED_FROM_LIST,
            start: subscribed_to_email,
            expect: |c| c.email_promo == Some(true) && c.email_optout == Some(false),
            stamped: None,
            signal: 0,
            action: "disclose",
            channel: "email",
        },
    ]
}

/// A demo customer whose comms start as `start` says.
fn starting(n: u32, start: fn(&mut Comms)) -> NewProfile {
    let mut profile = customer(n);
    start(&mut profile.comms);
    profile
}

/// A system event of `topic` about a linked profile, happening now.
fn event(linked: &Linked, topic: &str) -> SystemEvent {
    let event = SystemEvent::new(topic, &linked.klaviyo_id, Some(&linked.email));
    if topic.ends_with("_list") {
        event.list_id("LsT001")
    } else {
        event
    }
}

async fn every_row_alone(store: StoreKind) {
    let o = Pipeline::start(store, json!({})).await;
    let rows = rows();
    let mut linked = Vec::new();
    for (n, row) in (1..).zip(&rows) {
        linked.push(o.linked(starting(n, row.start)).await);
    }
    for (row, linked) in rows.iter().zip(&linked) {
        let id = &linked.omneo.id;
        let updates_before = o.comms_updates(id);
        let sent = event(linked, row.topic);
        o.deliver(vec![sent.clone()]).await;
        let comms = o.t.omneo.comms(o.tenant, id).unwrap();
        assert!((row.expect)(&comms), "{}: {comms:?}", row.topic);
        let stamp = omneo_time(sent.datetime);
        let (email_at, sms_at) = match row.stamped {
            Some("email") => (stamp.as_str(), DEMO_CONSENT_AT),
            Some(_) => (DEMO_CONSENT_AT, stamp.as_str()),
            None => (DEMO_CONSENT_AT, DEMO_CONSENT_AT),
        };
        assert_eq!(
            comms.email_consent_updated_at.as_deref(),
            Some(email_at),
            "{}",
            row.topic
        );
        assert_eq!(
            comms.sms_consent_updated_at.as_deref(),
            Some(sms_at),
            "{}",
            row.topic
        );
        let expected_updates = usize::from(row.topic != topics::UNSUBSCRIBED_FROM_LIST);
        assert_eq!(
            o.comms_updates(id) - updates_before,
            expected_updates,
            "{}",
            row.topic
        );
        let interactions = o.interactions(id);
        assert_eq!(interactions.len(), 1, "{}: {interactions:?}", row.topic);
        let interaction = &interactions[0];
        assert_eq!(
            (
                interaction.signal,
                interaction.action.as_str(),
                interaction.channel.as_str()
            ),
            (row.signal, row.action, row.channel),
            "{}",
            row.topic
        );
        assert_eq!(interaction.namespace, "klaviyo");
        assert_eq!(interaction.interacted_at, stamp, "at the event's time");
        let meta = interaction.meta.as_ref().expect("meta");
        assert_eq!(meta["klaviyo_event_id"], sent.event_id.as_str());
        assert_eq!(meta["topic"], row.topic);
    }
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn every_row_of_the_table_alone() {
    every_row_alone(StoreKind::Memory).await;
}

#[tokio::test]
async fn every_row_of_the_table_alone_on_firestore() {
    every_row_alone(StoreKind::Firestore).await;
}

#[tokio::test]
async fn all_rows_in_one_batch_merge_per_profile() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let rows = rows();
    let mut linked = Vec::new();
    for (n, row) in (20..).zip(&rows) {
        linked.push(o.linked(starting(n, row.start)).await);
    }
    let delivered_before = o.t.queue.stats().delivered;
    let updates_before: Vec<usize> = linked
        .iter()
        .map(|l| o.comms_updates(&l.omneo.id))
        .collect();
    let events: Vec<SystemEvent> = rows
        .iter()
        .zip(&linked)
        .map(|(row, l)| event(l, row.topic))
        .collect();
    o.deliver(events).await;
    let updated = linked
        .iter()
        .zip(&updates_before)
        .filter(|(l, before)| o.comms_updates(&l.omneo.id) == **before + 1)
        .count();
    assert_eq!(
        updated,
        rows.len() - 1,
        "every row but one changes comms, once"
    );
    assert_eq!(
        o.t.queue.stats().delivered - delivered_before,
        (rows.len() + updated) as u64,
        "one inbound task per profile, and the outbound sync each comms update queues"
    );
    for (row, l) in rows.iter().zip(&linked) {
        let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
        assert!((row.expect)(&comms), "{}: {comms:?}", row.topic);
        let interactions = o.interactions(&l.omneo.id);
        assert_eq!(interactions.len(), 1, "{}", row.topic);
        assert_eq!(interactions[0].signal, row.signal, "{}", row.topic);
    }
}

#[tokio::test]
async fn subscribe_then_unsubscribe_in_one_batch_ends_unsubscribed_in_one_update() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(40)).await;
    let before = o.comms_updates(&l.omneo.id);
    let t1 = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(20);
    let t2 = t1 + jiff::SignedDuration::from_secs(10);
    let subscribe = event(&l, topics::SUBSCRIBED_TO_EMAIL).at(t1);
    let unsubscribe = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL).at(t2);
    // Listed newest first: the worker merges by time, not by position.
    o.deliver(vec![unsubscribe, subscribe]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert_eq!(comms.email_promo, Some(false), "{comms:?}");
    assert!(!comms.email_subscribed());
    assert_eq!(
        comms.email_consent_updated_at.as_deref(),
        Some(omneo_time(t2).as_str())
    );
    assert_eq!(o.comms_updates(&l.omneo.id) - before, 1, "one comms update");
    let signals: Vec<i8> = o
        .interactions(&l.omneo.id)
        .iter()
        .map(|i| i.signal)
        .collect();
    assert_eq!(signals, [1, -1], "two interactions, oldest first");
}

#[tokio::test]
async fn unsubscribe_then_subscribe_ends_subscribed_whatever_the_listing_order() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let mut start = customer(41);
    unsubscribed_from_email(&mut start.comms);
    let l = o.linked(start).await;
    let t1 = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(20);
    let unsubscribe = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL).at(t1);
    let subscribe =
        event(&l, topics::SUBSCRIBED_TO_EMAIL).at(t1 + jiff::SignedDuration::from_secs(5));
    o.deliver(vec![subscribe, unsubscribe]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(comms.email_subscribed(), "{comms:?}");
}

/// Found by the soak: the same event twice in one delivery is applied once, and nothing fails.
#[tokio::test]
async fn an_event_twice_in_one_delivery_is_applied_once() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(43)).await;
    let before = o.comms_updates(&l.omneo.id);
    let unsubscribe = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL);
    o.deliver(vec![unsubscribe.clone(), unsubscribe]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(!comms.email_subscribed(), "{comms:?}");
    assert_eq!(o.comms_updates(&l.omneo.id), before + 1);
    assert_eq!(o.interactions(&l.omneo.id).len(), 1);
    assert!(o.failures().await.is_empty(), "{:?}", o.failures().await);
}

#[tokio::test]
async fn a_choice_omneo_already_holds_moves_only_its_consent_time() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(42)).await;
    let before = o.comms_updates(&l.omneo.id);
    // Already subscribed: the choice is newer than Omneo's consent time, so only that time
    // moves (an older unsubscribe delivered later must not undo it); the interaction is recorded.
    let subscribe = event(&l, topics::SUBSCRIBED_TO_EMAIL);
    o.deliver(vec![subscribe.clone()]).await;
    assert_eq!(o.comms_updates(&l.omneo.id), before + 1, "one comms update");
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(comms.email_subscribed(), "{comms:?}");
    let stamped = omneo_time(subscribe.datetime);
    assert_eq!(
        comms.email_consent_updated_at.as_deref(),
        Some(stamped.as_str())
    );
    assert_eq!(
        comms.sms_consent_updated_at.as_deref(),
        Some(DEMO_CONSENT_AT)
    );
    assert_eq!(o.interactions(&l.omneo.id).len(), 1);
    // An older unsubscribe delivered after it changes nothing.
    let older = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL)
        .at(subscribe.datetime - jiff::SignedDuration::from_secs(5));
    o.deliver(vec![older]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(comms.email_subscribed(), "{comms:?}");
    assert_eq!(o.comms_updates(&l.omneo.id), before + 1, "no comms update");
    // A bounce changes comms but no consent time.
    o.deliver(vec![event(&l, topics::BOUNCED_EMAIL)]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert_eq!(comms.email_bounced, Some(true));
    assert_eq!(
        comms.email_consent_updated_at.as_deref(),
        Some(stamped.as_str())
    );
    assert_eq!(o.comms_updates(&l.omneo.id), before + 2);
}

#[tokio::test]
async fn consent_times_are_utc_whatever_the_event_offset() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(43)).await;
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(3);
    let sent = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL).at(at);
    // The same instant written in Sydney's standard time (+10:00).
    let mut made = super::Handmade::of(&o, &[sent]);
    let sydney = at
        .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(10)))
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    made.body["data"][0]["payload"]["data"]["attributes"]["datetime"] = json!(sydney);
    assert!(
        !sydney.ends_with('Z') && !sydney.ends_with("+00:00"),
        "{sydney}"
    );
    let response = made.send_signed_with(&o, &o.webhook_secret()).await;
    assert_eq!(response.status(), 202);
    o.settle().await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert_eq!(
        comms.email_consent_updated_at.as_deref(),
        Some(omneo_time(at).as_str()),
        "Y-m-d H:i:s in UTC"
    );
}

#[tokio::test]
async fn echoes_of_our_own_changes_are_dropped() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(44)).await;
    let before = o.comms_updates(&l.omneo.id);
    let delivered_before = o.t.queue.stats().delivered;
    let echo = event(&l, topics::UNSUBSCRIBED_FROM_EMAIL).custom_method_detail(Some("omneo"));
    o.deliver(vec![echo]).await;
    assert_eq!(o.comms_updates(&l.omneo.id), before, "no update");
    assert!(o.interactions(&l.omneo.id).is_empty(), "no interaction");
    assert_eq!(o.t.queue.stats().delivered, delivered_before, "no task");
    assert!(
        o.t.omneo
            .comms(o.tenant, &l.omneo.id)
            .unwrap()
            .email_subscribed()
    );
    // The sync's own subscribe was delivered by `linked` and dropped the same way.
    assert!(o.t.klaviyo.pending_events().is_empty());
}

#[tokio::test]
async fn an_unknown_profile_is_skipped_and_never_created() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(45)).await;
    let profiles_before = o.t.omneo.profiles(o.tenant).len();
    let stranger = SystemEvent::new(
        topics::UNSUBSCRIBED_FROM_EMAIL,
        "01JSTRANGER0000000000000000",
        Some("stranger@shop.test"),
    );
    o.deliver(vec![stranger, event(&l, topics::BOUNCED_EMAIL)])
        .await;
    assert_eq!(o.t.omneo.profiles(o.tenant).len(), profiles_before);
    assert_eq!(
        o.t.omneo.interactions(o.tenant).len(),
        1,
        "only the known one"
    );
    assert!(o.failures().await.is_empty(), "a skip is no failure");
}

#[tokio::test]
async fn a_profile_is_found_by_email_when_it_has_no_identity() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(46)).await;
    // A Klaviyo profile id Omneo does not know, with the profile's email.
    let by_email = SystemEvent::new(
        topics::UNSUBSCRIBED_FROM_EMAIL,
        "01JOTHERID00000000000000000",
        Some(&l.email),
    );
    o.deliver(vec![by_email]).await;
    assert!(
        !o.t.omneo
            .comms(o.tenant, &l.omneo.id)
            .unwrap()
            .email_subscribed()
    );
    assert_eq!(o.interactions(&l.omneo.id).len(), 1);
}

#[tokio::test]
async fn a_redelivered_batch_changes_nothing() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(47)).await;
    let events = vec![
        event(&l, topics::UNSUBSCRIBED_FROM_EMAIL),
        event(&l, topics::UNSUBSCRIBED_FROM_SMS),
    ];
    let delivery = o.deliver(events.clone()).await;
    let updates = o.comms_updates(&l.omneo.id);
    assert_eq!(o.interactions(&l.omneo.id).len(), 2);
    // Byte for byte again: the same task name, nothing new.
    assert_eq!(o.t.klaviyo.redeliver(&delivery).await.unwrap(), 202);
    o.settle().await;
    // The same events in a new delivery with new external ids: a new task, whose events are
    // already done.
    let renamed: Vec<SystemEvent> = events
        .into_iter()
        .map(|mut e| {
            e.external_id = format!("{}-again", e.external_id);
            e
        })
        .collect();
    o.deliver(renamed).await;
    assert_eq!(
        o.comms_updates(&l.omneo.id),
        updates,
        "no second comms update"
    );
    assert_eq!(o.interactions(&l.omneo.id).len(), 2, "no new interaction");
    let tenant = TenantId::parse(o.tenant).unwrap();
    let marker = IdempotencyKey::new(&tenant, "klaviyo-event", &[&delivery.events[0].event_id]);
    assert_eq!(
        o.t.app
            .store
            .claim(&marker, "probe", std::time::Duration::from_secs(1))
            .await
            .unwrap(),
        shared::store::Claim::Done,
        "the event is marked done"
    );
}

#[tokio::test]
async fn a_late_event_never_undoes_a_newer_choice() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let l = o.linked(customer(48)).await;
    let now = jiff::Timestamp::now();
    o.deliver(vec![event(&l, topics::UNSUBSCRIBED_FROM_EMAIL).at(now)])
        .await;
    let late = event(&l, topics::SUBSCRIBED_TO_EMAIL).at(now - jiff::SignedDuration::from_mins(2));
    o.deliver(vec![late]).await;
    let comms = o.t.omneo.comms(o.tenant, &l.omneo.id).unwrap();
    assert!(!comms.email_subscribed(), "{comms:?}");
    assert_eq!(o.interactions(&l.omneo.id).len(), 2, "both are recorded");
}

/// `master_list_id` set to a new list of the simulated Klaviyo; the list id.
async fn with_master_list() -> (Pipeline, String) {
    let t = crate::support::TestApp::spawn(crate::support::TestAppOptions {
        klaviyo: harness::klaviyo::KlaviyoSimOptions::default().without_rate_limits(),
        ..crate::support::TestAppOptions::default()
    })
    .await;
    let list = t.klaviyo.create_list("Newsletter");
    let registered = crate::pipeline::install(&t, "acme", json!({})).await;
    // A master list is checked against Klaviyo, so it is set once installed.
    let response = t
        .request(
            reqwest::Method::PATCH,
            "/acme/api/v1/settings",
            Some(&registered.admin_key),
        )
        .json(&json!({"master_list_id": list}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let o = Pipeline {
        t,
        tenant: "acme",
        registered,
    };
    (o, list)
}

const SUBSCRIBE_JOBS: &str = "/api/profile-subscription-bulk-create-jobs";

#[tokio::test]
async fn a_subscriber_outside_the_master_list_joins_it_once() {
    let (o, list) = with_master_list().await;
    let mut start = customer(50);
    unsubscribed_from_email(&mut start.comms);
    let l = o.linked(start).await;
    assert!(!o.t.klaviyo.list_members(&list).contains(&l.klaviyo_id));
    // The customer subscribes on Klaviyo's side (a sign-up form), outside the list.
    o.t.klaviyo
        .change_consent(
            &l.klaviyo_id,
            Channel::Email,
            ConsentState::Subscribed,
            "SIGNUP_FORM",
        )
        .unwrap();
    let before = o.klaviyo_calls("POST", SUBSCRIBE_JOBS);
    for delivery in o.t.klaviyo.deliver_pending().await.unwrap() {
        assert_eq!(delivery.status, Some(202));
    }
    o.settle().await;
    assert!(
        o.t.omneo
            .comms(o.tenant, &l.omneo.id)
            .unwrap()
            .email_subscribed()
    );
    assert!(o.t.klaviyo.list_members(&list).contains(&l.klaviyo_id));
    assert_eq!(o.klaviyo_calls("POST", SUBSCRIBE_JOBS) - before, 1);
    // Its echo (custom_source omneo) changes nothing and subscribes nothing.
    for delivery in o.t.klaviyo.deliver_pending().await.unwrap() {
        assert_eq!(delivery.status, Some(202));
    }
    o.settle().await;
    assert_eq!(o.klaviyo_calls("POST", SUBSCRIBE_JOBS) - before, 1);
    assert_eq!(o.interactions(&l.omneo.id).len(), 1);
}

#[tokio::test]
async fn a_subscriber_already_in_the_master_list_is_left_alone() {
    let (o, list) = with_master_list().await;
    let l = o.linked(customer(51)).await;
    assert!(
        o.t.klaviyo.list_members(&list).contains(&l.klaviyo_id),
        "the sync joined it"
    );
    let before = o.klaviyo_calls("POST", SUBSCRIBE_JOBS);
    let checks_before =
        o.klaviyo_calls("GET", &format!("/api/lists/{list}/relationships/profiles"));
    o.deliver(vec![event(&l, topics::SUBSCRIBED_TO_EMAIL)])
        .await;
    assert_eq!(
        o.klaviyo_calls("POST", SUBSCRIBE_JOBS),
        before,
        "no subscribe"
    );
    assert_eq!(
        o.klaviyo_calls("GET", &format!("/api/lists/{list}/relationships/profiles"))
            - checks_before,
        1,
        "one membership check"
    );
}

#[tokio::test]
async fn without_a_master_list_nothing_is_checked() {
    let o = Pipeline::start(StoreKind::Memory, json!({})).await;
    let mut start = customer(52);
    unsubscribed_from_email(&mut start.comms);
    let l = o.linked(start).await;
    let calls = |o: &Pipeline| {
        [
            o.klaviyo_calls("POST", SUBSCRIBE_JOBS),
            o.klaviyo_calls("GET", "/api/lists/"),
            o.klaviyo_calls("GET", "/api/profiles/"),
        ]
    };
    let before = calls(&o);
    o.t.klaviyo
        .change_consent(
            &l.klaviyo_id,
            Channel::Email,
            ConsentState::Subscribed,
            "PREFERENCE_PAGE",
        )
        .unwrap();
    o.deliver(o.t.klaviyo.drop_pending()).await;
    assert!(
        o.t.omneo
            .comms(o.tenant, &l.omneo.id)
            .unwrap()
            .email_subscribed()
    );
    let [subscribes, list_checks, reads] = calls(&o);
    assert_eq!(
        [subscribes, list_checks],
        [before[0], before[1]],
        "no subscribe, no list check"
    );
    assert_eq!(
        reads - before[2],
        1,
        "one re-read: the outbound sync the comms update queued, which finds Klaviyo equal"
    );
}
