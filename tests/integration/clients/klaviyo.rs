//! `KlaviyoClient` against `KlaviyoSim`.

use std::time::{Duration, Instant};

use harness::klaviyo::{
    Channel, ConsentState, KlaviyoSim, KlaviyoSimOptions, REVISION, RateLimits, SystemEvent, topics,
};
use harness::sim::FaultRule;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use shared::config::ApiRevision;
use shared::domain::{E164Phone, KlaviyoProfileId, KlaviyoTopic, OmneoProfileId};
use shared::klaviyo::KlaviyoClient;
use shared::klaviyo::models::{
    BulkImport, BulkImportJob, BulkJobStatus, Consent, DeletionTarget, EventProfile, EventQuery,
    ImportError, NewDataSource, NewEvent, NewWebhook, Patch, ProfileFilter, ProfileUpsert,
    SubscribeJob, Subscriber, UnsubscribeJob, Visibility, WebhookUpdate,
};
use shared::remote::{Disposition, ErrorKind, RetryPolicy};

use super::{fast_retries, http};

/// A simulator without rate limits (one test turns them on), a client, and a live token.
struct Setup {
    sim: KlaviyoSim,
    client: KlaviyoClient,
    token: SecretString,
}

async fn setup() -> Setup {
    setup_with(fast_retries(4)).await
}

async fn setup_with(retry: RetryPolicy) -> Setup {
    let sim = KlaviyoSim::start(KlaviyoSimOptions::default().without_rate_limits())
        .await
        .expect("the Klaviyo simulator starts");
    let token = SecretString::from(sim.grant_tokens().access_token);
    let client = client_of(&sim, REVISION, retry);
    Setup { sim, client, token }
}

fn client_of(sim: &KlaviyoSim, revision: &str, retry: RetryPolicy) -> KlaviyoClient {
    let revision = ApiRevision::parse(revision).expect("a valid revision");
    KlaviyoClient::new(http(), sim.url().parse().expect("a URL"), &revision, retry)
}

fn upsert(email: &str, external_id: &str) -> ProfileUpsert {
    ProfileUpsert {
        email: Patch::Set(email.into()),
        external_id: Patch::Set(OmneoProfileId::parse(external_id).unwrap()),
        first_name: Patch::Set("Ann".into()),
        ..ProfileUpsert::default()
    }
}

fn email_subscriber(email: &str) -> Subscriber {
    Subscriber {
        email: Some(email.into()),
        email_marketing: true,
        ..Subscriber::default()
    }
}

fn event(unique_id: Option<&str>, email: &str) -> NewEvent {
    let mut properties = Map::new();
    properties.insert("points".into(), json!(120));
    NewEvent {
        metric: "Omneo Points Earned".into(),
        properties,
        time: Some("2026-03-01T10:20:30Z".parse().unwrap()),
        value: Some(12.5),
        unique_id: unique_id.map(str::to_owned),
        profile: EventProfile::Email(email.into()),
    }
}

#[tokio::test]
async fn the_account_id_is_read_with_the_documented_headers() {
    let Setup { sim, client, token } = setup().await;
    assert_eq!(client.account_id(&token).await.unwrap(), "SimAcc");
    let calls = sim.recorder().matching("GET", "/api/accounts");
    let headers = &calls[0].headers;
    assert_eq!(headers.get("revision").map(String::as_str), Some(REVISION));
    assert_eq!(
        headers.get("accept").map(String::as_str),
        Some("application/vnd.api+json")
    );
}

#[tokio::test]
async fn data_sources_are_created_listed_across_pages_read_and_deleted() {
    let Setup { sim, client, token } = setup().await;
    // The default page holds 20: 23 span two pages, followed through links.next.
    let mut created = Vec::new();
    for n in 0..23 {
        let source = NewDataSource {
            title: format!("Omneo Source {n:02}"),
            visibility: Visibility::Private,
            description: Some(format!("source {n}")),
        };
        created.push(client.create_data_source(&token, &source).await.unwrap());
    }
    assert_eq!(created[0].kind, "data-source");
    assert_eq!(created[0].attributes.title, "Omneo Source 00");
    assert_eq!(created[0].attributes.visibility.as_deref(), Some("private"));

    let listed = client.data_sources(&token).await.unwrap();
    let ids = |sources: &[shared::klaviyo::models::DataSource]| -> Vec<String> {
        sources.iter().map(|s| s.id.clone()).collect()
    };
    assert_eq!(ids(&listed), ids(&created));
    let pages = sim.recorder().matching("GET", "/api/data-sources");
    assert_eq!(pages.len(), 2);
    assert!(
        pages[1].query.contains("page%5Bcursor%5D"),
        "{}",
        pages[1].query
    );

    let one = client
        .data_source(&token, &created[5].id)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(one.attributes.title, "Omneo Source 05");
    assert_eq!(one.attributes.description.as_deref(), Some("source 5"));

    client
        .delete_data_source(&token, &created[5].id)
        .await
        .unwrap();
    assert!(
        client
            .data_source(&token, &created[5].id)
            .await
            .unwrap()
            .is_none()
    );
    client
        .delete_data_source(&token, &created[5].id)
        .await
        .expect("an absent data source counts as deleted");
    assert_eq!(sim.data_sources().len(), 22);
}

#[tokio::test]
async fn webhooks_and_topics_round_trip() {
    let Setup { sim, client, token } = setup().await;
    let topics_listed = client.webhook_topics(&token).await.unwrap();
    let topic_ids: Vec<&str> = topics_listed.iter().map(|t| t.id.as_str()).collect();
    for wanted in [topics::BOUNCED_EMAIL, topics::UNSUBSCRIBED_FROM_EMAIL] {
        assert!(topic_ids.contains(&wanted), "{wanted} in {topic_ids:?}");
    }

    let new = NewWebhook {
        name: "Omneo acme".into(),
        endpoint_url: "http://127.0.0.1:9/acme/api/v1/webhooks/klaviyo"
            .parse()
            .unwrap(),
        secret_key: SecretString::from("whsec-acme"),
        description: Some("Consent changes for Omneo".into()),
        topics: vec![
            topics::BOUNCED_EMAIL.into(),
            topics::SUBSCRIBED_TO_EMAIL.into(),
        ],
    };
    let created = client.create_webhook(&token, &new).await.unwrap();
    assert_eq!(created.attributes.name, "Omneo acme");
    assert_eq!(
        created.attributes.endpoint_url.as_deref(),
        Some("http://127.0.0.1:9/*****"),
        "the path is masked"
    );
    assert_eq!(
        created.related_ids("webhook-topics"),
        [topics::BOUNCED_EMAIL, topics::SUBSCRIBED_TO_EMAIL]
    );
    let stored = &sim.webhooks()[0];
    assert_eq!(stored.secret_key, "whsec-acme");
    assert_eq!(
        stored.endpoint_url,
        "http://127.0.0.1:9/acme/api/v1/webhooks/klaviyo"
    );

    let update = WebhookUpdate {
        enabled: Some(false),
        topics: Some(vec![topics::UNSUBSCRIBED_FROM_EMAIL.into()]),
        ..WebhookUpdate::default()
    };
    let updated = client
        .update_webhook(&token, &created.id, &update)
        .await
        .unwrap();
    assert_eq!(updated.attributes.enabled, Some(false));
    assert_eq!(
        updated.related_ids("webhook-topics"),
        [topics::UNSUBSCRIBED_FROM_EMAIL]
    );
    assert_eq!(updated.attributes.name, "Omneo acme", "left alone");

    let read = client
        .webhook(&token, &created.id)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(read.attributes.enabled, Some(false));
    assert_eq!(
        read.related_ids("webhook-topics"),
        [topics::UNSUBSCRIBED_FROM_EMAIL]
    );
    let listed = client.webhooks(&token).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.name, "Omneo acme");

    client.delete_webhook(&token, &created.id).await.unwrap();
    assert!(sim.webhooks().is_empty());
    assert!(client.webhook(&token, &created.id).await.unwrap().is_none());
    client
        .delete_webhook(&token, &created.id)
        .await
        .expect("an absent webhook counts as deleted");
}

#[tokio::test]
async fn profile_import_creates_updates_and_types_duplicates() {
    let Setup { sim, client, token } = setup().await;
    let first = client
        .import_profile(&token, &upsert("ann@example.org", "omneo-ann"))
        .await
        .unwrap();
    assert!(first.created, "201 for a new profile");
    let again = ProfileUpsert {
        first_name: Patch::Set("Annie".into()),
        phone_number: Patch::Set(E164Phone::parse("+61412345678").unwrap()),
        ..upsert("ann@example.org", "omneo-ann")
    };
    let second = client.import_profile(&token, &again).await.unwrap();
    assert!(!second.created, "200 for an update");
    assert_eq!(second.id, first.id);
    let stored = sim.profile(first.id.as_str()).unwrap();
    assert_eq!(stored.first_name.as_deref(), Some("Annie"));
    assert_eq!(stored.phone_number.as_deref(), Some("+61412345678"));

    // Clearing: null clears, absent leaves.
    let clear = ProfileUpsert {
        id: Some(first.id.clone()),
        phone_number: Patch::Clear,
        ..ProfileUpsert::default()
    };
    client.import_profile(&token, &clear).await.unwrap();
    let stored = sim.profile(first.id.as_str()).unwrap();
    assert_eq!(stored.phone_number, None);
    assert_eq!(stored.first_name.as_deref(), Some("Annie"));

    // Identifiers of two different profiles: a typed 409 naming the other one.
    let bob = client
        .import_profile(&token, &upsert("bob@example.org", "omneo-bob"))
        .await
        .unwrap();
    let clash = upsert("ann@example.org", "omneo-bob");
    let error = client.import_profile(&token, &clash).await.unwrap_err();
    match &error.kind {
        ErrorKind::DuplicateProfile {
            duplicate_profile_id,
        } => assert_eq!(duplicate_profile_id, bob.id.as_str()),
        other => panic!("expected duplicate_profile, got {other:?}"),
    }
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(error.attempts, 1, "a duplicate is not retried");
}

#[tokio::test]
async fn profiles_are_read_with_subscriptions_and_searched() {
    let Setup { sim, client, token } = setup().await;
    let imported = client
        .import_profile(&token, &upsert("Cleo@Example.org", "omneo-cleo"))
        .await
        .unwrap();

    let profile = client
        .profile(&token, &imported.id)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        profile.attributes.email.as_deref(),
        Some("cleo@example.org")
    );
    assert_eq!(
        profile.attributes.external_id.as_deref(),
        Some("omneo-cleo")
    );
    let consent = profile
        .attributes
        .subscriptions
        .as_ref()
        .and_then(|s| s.email.as_ref())
        .and_then(|e| e.marketing.as_ref())
        .expect("subscriptions were asked for");
    assert_eq!(consent.consent, Consent::NeverSubscribed);
    assert!(
        client
            .profile(
                &token,
                &KlaviyoProfileId::parse("01JNOSUCHPROFILE0000000000").unwrap()
            )
            .await
            .unwrap()
            .is_none()
    );

    for filter in [
        ProfileFilter::ExternalId(OmneoProfileId::parse("omneo-cleo").unwrap()),
        ProfileFilter::Email("CLEO@example.org".into()),
    ] {
        let found = client.find_profiles(&token, &filter).await.unwrap();
        assert_eq!(found.len(), 1, "{filter:?}");
        assert_eq!(found[0].id, imported.id);
        assert!(found[0].attributes.subscriptions.is_some());
    }
    let quoted = ProfileFilter::Email("no \"such\" one@example.org".into());
    assert!(
        client
            .find_profiles(&token, &quoted)
            .await
            .unwrap()
            .is_empty()
    );
    let searches = sim.recorder().matching("GET", "/api/profiles");
    assert!(
        searches[2]
            .query
            .contains("additional-fields%5Bprofile%5D=subscriptions"),
        "{}",
        searches[2].query
    );
}

#[tokio::test]
async fn profiles_are_found_by_external_ids_100_at_a_time_with_subscriptions() {
    let Setup { sim, client, token } = setup().await;
    let ids: Vec<OmneoProfileId> = (0..105)
        .map(|i| OmneoProfileId::parse(format!("omneo-{i}")).unwrap())
        .collect();
    for id in &ids {
        sim.seed_profile(json!({"email": format!("{id}@example.org"), "external_id": id.as_str()}))
            .unwrap();
    }
    sim.seed_profile(json!({"email": "other@example.org", "external_id": "omneo-other"}))
        .unwrap();
    let subscribed = sim.profile_by_email("omneo-3@example.org").unwrap();
    sim.change_consent(
        &subscribed.id,
        Channel::Email,
        ConsentState::Subscribed,
        "API",
    )
    .unwrap();

    let few = [
        ids[3].clone(),
        ids[7].clone(),
        OmneoProfileId::parse("omneo-nobody").unwrap(),
    ];
    let found = client
        .find_profiles_by_external_ids(&token, &few)
        .await
        .unwrap();
    let mut external_ids: Vec<&str> = found
        .iter()
        .map(|p| p.attributes.external_id.as_deref().unwrap())
        .collect();
    external_ids.sort_unstable();
    assert_eq!(external_ids, ["omneo-3", "omneo-7"]);
    let consent = found
        .iter()
        .find(|p| p.id.as_str() == subscribed.id)
        .and_then(|p| {
            p.attributes
                .subscriptions
                .as_ref()?
                .email
                .as_ref()?
                .marketing
                .as_ref()
        })
        .expect("subscriptions were asked for");
    assert_eq!(consent.consent, Consent::Subscribed);
    let search = &sim.recorder().matching("GET", "/api/profiles")[0];
    let query: Vec<(String, String)> = url::form_urlencoded::parse(search.query.as_bytes())
        .into_owned()
        .collect();
    let value = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        value("filter"),
        Some(r#"any(external_id,["omneo-3","omneo-7","omneo-nobody"])"#)
    );
    assert_eq!(value("page[size]"), Some("100"));
    assert_eq!(value("additional-fields[profile]"), Some("subscriptions"));

    // 105 ids: two searches, 100 then 5.
    let before = sim.recorder().matching("GET", "/api/profiles").len();
    let all = client
        .find_profiles_by_external_ids(&token, &ids)
        .await
        .unwrap();
    assert_eq!(all.len(), 105);
    assert!(
        all.iter()
            .all(|p| p.attributes.external_id.as_deref() != Some("omneo-other"))
    );
    assert_eq!(
        sim.recorder().matching("GET", "/api/profiles").len(),
        before + 2
    );
    assert!(
        client
            .find_profiles_by_external_ids(&token, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        sim.recorder().matching("GET", "/api/profiles").len(),
        before + 2,
        "no ids, no call"
    );
}

/// Polls a bulk import job until it is complete.
async fn completed(client: &KlaviyoClient, token: &SecretString, id: &str) -> BulkImportJob {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = client.bulk_import_job(token, id).await.unwrap();
        if job.status == BulkJobStatus::Complete {
            return job;
        }
        assert!(Instant::now() < deadline, "still {:?}", job.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bulk_import_runs_to_complete_and_its_errors_name_their_profiles() {
    let Setup { sim, client, token } = setup().await;
    let list = sim.create_list("Backfill");
    client
        .import_profile(&token, &upsert("dee@example.org", "omneo-dee"))
        .await
        .unwrap();
    client
        .import_profile(&token, &upsert("eve@example.org", "omneo-eve"))
        .await
        .unwrap();
    let job = BulkImport {
        profiles: vec![
            upsert("new0@example.org", "omneo-new0"),
            ProfileUpsert {
                email: Patch::Set("not-an-email".into()),
                ..ProfileUpsert::default()
            },
            upsert("new2@example.org", "omneo-new2"),
            // Dee's email with Eve's id: identifiers of two profiles.
            upsert("dee@example.org", "omneo-eve"),
        ],
        list_ids: vec![list.clone()],
    };
    let created = client.create_bulk_import(&token, &job).await.unwrap();
    assert_eq!(created.status, BulkJobStatus::Queued);
    assert_eq!(created.total_count, 4);
    let sent = sim
        .recorder()
        .matching("POST", "/api/profile-bulk-import-jobs");
    assert_eq!(sent[0].json(), job.to_document());

    let done = completed(&client, &token, &created.id).await;
    assert_eq!(done.id, created.id);
    assert_eq!((done.completed_count, done.failed_count), (2, 2));
    let errors = client
        .bulk_import_errors(&token, &created.id)
        .await
        .unwrap();
    let indices: Vec<Option<usize>> = errors.iter().map(ImportError::profile_index).collect();
    assert_eq!(indices, [Some(1), Some(3)]);
    assert_eq!(errors[0].code, "invalid");
    assert_eq!(errors[1].code, "duplicate_profile");
    for (error, index) in errors.iter().zip([1, 3]) {
        assert_eq!(
            error.original_payload.as_ref(),
            Some(&job.profiles[index].to_resource())
        );
    }
    assert_eq!(sim.list_members(&list).len(), 2);
    assert!(sim.profile_by_email("new2@example.org").is_some());

    // An unknown outcome is not repeated: a second job would import again.
    sim.faults()
        .inject(FaultRule::status("/api/profile-bulk-import-jobs", 503, 1).method("POST"));
    let error = client.create_bulk_import(&token, &job).await.unwrap_err();
    assert!(error.may_have_been_processed());
    assert_eq!(error.attempts, 1);
    assert_eq!(sim.bulk_jobs().len(), 1);
}

#[tokio::test]
async fn metrics_name_the_topics_and_need_their_scope() {
    let Setup { sim, client, token } = setup().await;
    let metrics = client.metrics(&token).await.unwrap();
    assert_eq!(metrics.len(), topics::ALL.len());
    assert!(metrics.iter().all(|m| {
        m.kind == "metric"
            && m.attributes
                .integration
                .as_ref()
                .is_some_and(|i| i.key == "klaviyo" && i.name == "Klaviyo")
    }));
    for topic in KlaviyoTopic::ALL {
        let named: Vec<_> = metrics
            .iter()
            .filter(|m| KlaviyoTopic::from_metric_name(&m.attributes.name) == Some(topic))
            .collect();
        assert_eq!(named.len(), 1, "{topic:?}");
    }

    // A tenant that installed before the extension asked for metrics:read.
    sim.withhold_scopes(&["metrics:read"]);
    let old = SecretString::from(sim.grant_tokens().access_token);
    let error = client.metrics(&old).await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(error.disposition(), Disposition::Permanent);
}

#[tokio::test]
async fn events_are_paged_by_metric_after_a_time_following_next() {
    let Setup { sim, client, token } = setup().await;
    let profile = sim
        .seed_profile(json!({"email": "rec@example.org"}))
        .unwrap();
    let metric_id = client
        .metrics(&token)
        .await
        .unwrap()
        .into_iter()
        .find(|m| {
            KlaviyoTopic::from_metric_name(&m.attributes.name)
                == Some(KlaviyoTopic::UnsubscribedFromEmailMarketing)
        })
        .expect("the metric")
        .id;
    let base: jiff::Timestamp = "2020-06-01T00:00:00Z".parse().unwrap();
    let at = |millis: i64| base + jiff::SignedDuration::from_millis(millis);
    let event = |topic: &str, millis: i64| {
        SystemEvent::new(topic, &profile, Some("rec@example.org"))
            .method("PREFERENCE_PAGE")
            .at(at(millis))
    };
    let hour = 3_600_000;
    // Four within the window and one in `after`'s own second (after is counted in whole
    // seconds); one before, and one of another metric.
    let wanted: Vec<SystemEvent> = [300, hour, 2 * hour, 3 * hour, 4 * hour]
        .into_iter()
        .map(|ms| event(topics::UNSUBSCRIBED_FROM_EMAIL, ms))
        .collect();
    let mut logged = wanted.clone();
    logged.push(event(topics::UNSUBSCRIBED_FROM_EMAIL, -1_000));
    logged.push(event(topics::SUBSCRIBED_TO_EMAIL, 2 * hour));
    logged.reverse();
    sim.deliver(logged).await.unwrap();

    let query = EventQuery {
        metric_id,
        after: at(900),
        page_size: 2,
    };
    let (mut seen, mut pages, mut next) = (Vec::new(), 0, None::<String>);
    loop {
        let page = client
            .events_page(&token, &query, next.as_deref())
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.events);
        next = page.next;
        if next.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    let expected: Vec<&str> = wanted.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, expected, "each once, oldest first");
    let (whose, email, consent) = seen
        .remove(0)
        .consent_event(KlaviyoTopic::UnsubscribedFromEmailMarketing);
    assert_eq!(whose.as_str(), profile);
    assert_eq!(email.as_deref(), Some("rec@example.org"));
    assert_eq!(consent.at, at(300));
    assert_eq!(consent.method.as_deref(), Some("PREFERENCE_PAGE"));

    let first = &sim.recorder().matching("GET", "/api/events")[0];
    let sent: Vec<(String, String)> = url::form_urlencoded::parse(first.query.as_bytes())
        .into_owned()
        .collect();
    let pairs: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("filter", query.filter().as_str()),
            ("sort", "datetime"),
            ("page[size]", "2")
        ]
    );

    // A next link elsewhere is refused before any call: the token stays home.
    let calls = sim.recorder().matching("GET", "/api/events").len();
    let error = client
        .events_page(
            &token,
            &query,
            Some("https://elsewhere.example/api/events?page%5Bcursor%5D=x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind, ErrorKind::InvalidRequest(_)),
        "{error}"
    );
    assert_eq!(error.attempts, 0);
    assert_eq!(sim.recorder().matching("GET", "/api/events").len(), calls);
}

#[tokio::test]
async fn subscribe_and_unsubscribe_jobs_are_read_back_as_consent_and_membership() {
    let Setup { sim, client, token } = setup().await;
    let list_id = sim.create_list("Newsletter");
    let list = client.list(&token, &list_id).await.unwrap().expect("found");
    assert_eq!(list.id, list_id);
    assert_eq!(list.attributes.name, "Newsletter");
    assert!(client.list(&token, "NoList").await.unwrap().is_none());

    let dan = client
        .import_profile(&token, &upsert("dan@example.org", "omneo-dan"))
        .await
        .unwrap();
    assert!(
        !client
            .list_has_email(&token, &list_id, "dan@example.org")
            .await
            .unwrap()
    );

    let subscribe = SubscribeJob {
        subscribers: vec![email_subscriber("dan@example.org")],
        list_id: Some(list_id.clone()),
        custom_source: Some("omneo".into()),
        historical_import: false,
    };
    client.subscribe(&token, &subscribe).await.unwrap();
    assert!(
        client
            .list_has_email(&token, &list_id, "DAN@example.org")
            .await
            .unwrap()
    );
    let profile = client.profile(&token, &dan.id).await.unwrap().unwrap();
    let marketing = profile
        .attributes
        .subscriptions
        .and_then(|s| s.email)
        .and_then(|e| e.marketing)
        .unwrap();
    assert_eq!(marketing.consent, Consent::Subscribed);
    assert_eq!(marketing.custom_method_detail.as_deref(), Some("omneo"));

    // Without a list: a global unsubscribe.
    let unsubscribe = UnsubscribeJob {
        subscribers: vec![email_subscriber("dan@example.org")],
        list_id: None,
        custom_source: Some("omneo".into()),
    };
    client.unsubscribe(&token, &unsubscribe).await.unwrap();
    let profile = client.profile(&token, &dan.id).await.unwrap().unwrap();
    let marketing = profile
        .attributes
        .subscriptions
        .and_then(|s| s.email)
        .and_then(|e| e.marketing)
        .unwrap();
    assert_eq!(marketing.consent, Consent::Unsubscribed);
    assert_eq!(marketing.custom_method_detail.as_deref(), Some("omneo"));
    assert_eq!(
        sim.consent(dan.id.as_str())
            .unwrap()
            .email_marketing
            .consent,
        ConsentState::Unsubscribed
    );

    // Consent given earlier, imported historically: a brand-new email and phone become a
    // subscribed profile without a list.
    let historical = SubscribeJob {
        subscribers: vec![Subscriber {
            email: Some("ivy@example.org".into()),
            phone_number: Some(E164Phone::parse("+61412000111").unwrap()),
            email_marketing: true,
            sms_marketing: true,
            consented_at: Some("2025-06-01T08:00:00Z".parse().unwrap()),
        }],
        list_id: None,
        custom_source: Some("omneo".into()),
        historical_import: true,
    };
    client.subscribe(&token, &historical).await.unwrap();
    let found = client
        .find_profiles(&token, &ProfileFilter::Email("ivy@example.org".into()))
        .await
        .unwrap();
    let subscriptions = found[0].attributes.subscriptions.clone().unwrap();
    let email = subscriptions.email.and_then(|e| e.marketing).unwrap();
    let sms = subscriptions.sms.and_then(|s| s.marketing).unwrap();
    assert_eq!(email.consent, Consent::Subscribed);
    assert_eq!(sms.consent, Consent::Subscribed);
    let stored = sim.consent(found[0].id.as_str()).unwrap();
    let at: jiff::Timestamp = "2025-06-01T08:00:00Z".parse().unwrap();
    assert_eq!(stored.email_marketing.consent_timestamp, Some(at));
    assert_eq!(stored.sms_marketing.consent_timestamp, Some(at));
}

#[tokio::test]
async fn events_dedupe_on_unique_id_and_records_and_deletions_go_through() {
    let Setup { sim, client, token } = setup().await;
    let with_id = event(Some("points-1"), "eve@example.org");
    client.create_event(&token, &with_id).await.unwrap();
    client.create_event(&token, &with_id).await.unwrap();
    let without_id = event(None, "eve@example.org");
    client.create_event(&token, &without_id).await.unwrap();
    client.create_event(&token, &without_id).await.unwrap();
    let events = sim.events();
    assert_eq!(
        events.len(),
        3,
        "the repeat with a unique_id is deduplicated"
    );
    assert_eq!(events[0].metric, "Omneo Points Earned");
    assert_eq!(events[0].unique_id, "points-1");
    assert_eq!(events[0].value, Some(12.5));
    assert_eq!(events[0].properties.get("points"), Some(&json!(120)));
    assert_eq!(
        events[0].time,
        "2026-03-01T10:20:30Z".parse::<jiff::Timestamp>().unwrap()
    );
    let eve = sim
        .profile_by_email("eve@example.org")
        .expect("created by the event");
    assert!(events.iter().all(|e| e.profile_id == eve.id));
    let by_id = NewEvent {
        profile: EventProfile::Id(KlaviyoProfileId::parse(eve.id.clone()).unwrap()),
        ..event(Some("points-2"), "unused@example.org")
    };
    client.create_event(&token, &by_id).await.unwrap();
    assert_eq!(sim.events().len(), 4);

    let source = client
        .create_data_source(
            &token,
            &NewDataSource {
                title: "Omneo Rewards".into(),
                visibility: Visibility::Private,
                description: None,
            },
        )
        .await
        .unwrap();
    let record = json!({"id": "reward-1", "profile_email": "eve@example.org", "value": 10});
    client
        .create_data_source_record(&token, &source.id, &record)
        .await
        .unwrap();
    let bulk: Vec<Value> = (2..=4)
        .map(|n| json!({"id": format!("reward-{n}"), "value": n}))
        .collect();
    client
        .create_data_source_records(&token, &source.id, &bulk)
        .await
        .unwrap();
    let stored: Vec<Value> = sim
        .records(&source.id)
        .into_iter()
        .map(|r| Value::Object(r.record))
        .collect();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[0], record);
    assert_eq!(&stored[1..], bulk.as_slice());

    client
        .request_deletion(&token, &DeletionTarget::Email("eve@example.org".into()))
        .await
        .unwrap();
    assert!(sim.profile_by_email("eve@example.org").is_none());
    let jobs = sim.deletion_jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].identifier, "email");
    assert_eq!(jobs[0].deleted_profile_id.as_deref(), Some(eve.id.as_str()));
}

#[tokio::test]
async fn an_unknown_or_revoked_token_asks_for_reauthorization() {
    let Setup { sim, client, token } = setup().await;
    let unknown = SecretString::from("pk_unknown_access_token");
    let error = client.account_id(&unknown).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Reauthorize);
    assert_eq!(error.attempts, 1, "a 401 is not retried");
    assert!(!error.to_string().contains("pk_unknown"), "{error}");

    client.account_id(&token).await.unwrap();
    sim.revoke_all();
    let error = client.account_id(&token).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Reauthorize);
}

#[tokio::test]
async fn invalid_inputs_are_permanent_and_point_at_the_field() {
    let Setup { sim, client, token } = setup().await;
    let bad_email = ProfileUpsert {
        email: Patch::Set("not-an-email".into()),
        ..ProfileUpsert::default()
    };
    let error = client.import_profile(&token, &bad_email).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(error.attempts, 1);
    let problem = &error.problems()[0];
    assert_eq!(problem.code.as_deref(), Some("invalid"));
    assert_eq!(problem.field.as_deref(), Some("/data/attributes/email"));

    let no_identifier = ProfileUpsert {
        first_name: Patch::Set("Nobody".into()),
        ..ProfileUpsert::default()
    };
    let error = client
        .import_profile(&token, &no_identifier)
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(
        error.problems()[0].field.as_deref(),
        Some("/data/attributes")
    );

    let source = NewDataSource {
        title: "Omneo Dates".into(),
        visibility: Visibility::Shared,
        description: None,
    };
    client.create_data_source(&token, &source).await.unwrap();
    let error = client
        .create_data_source(&token, &source)
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(
        error.problems()[0].field.as_deref(),
        Some("/data/attributes/title")
    );

    let error = client
        .create_data_source_record(&token, "01JNOSUCHSOURCE00000000000", &json!({"id": "x"}))
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(
        error.problems()[0].field.as_deref(),
        Some("/data/relationships/data-source/data/id")
    );

    // A missing revision is a 400 naming the parameter (our client cannot send one without: it
    // takes a parsed revision, so this request is made by hand).
    let unrevised = http()
        .get(format!("{}/api/accounts", sim.url()))
        .bearer_auth(token.expose_secret())
        .header("accept", "application/vnd.api+json")
        .send()
        .await
        .unwrap();
    assert_eq!(unrevised.status(), 400);
    let body: Value = unrevised.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["source"]["parameter"], "revision",
        "{body}"
    );
}

#[tokio::test]
async fn real_rate_limits_are_waited_out_per_retry_after() {
    let Setup { sim, client, token } = setup().await;
    // `GET /api/accounts` is tier XS: one call per second.
    sim.set_rate_limits(RateLimits {
        enabled: true,
        scale: 1.0,
    });
    // Two calls at once: one gets through, the other is throttled and waits its Retry-After.
    let started = Instant::now();
    let (first, second) = tokio::join!(client.account_id(&token), client.account_id(&token));
    assert_eq!(first.unwrap(), "SimAcc");
    assert_eq!(second.unwrap(), "SimAcc");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the 429's Retry-After was honoured"
    );
    let calls = sim.recorder().matching("GET", "/api/accounts");
    assert!(calls.len() >= 3, "one call was throttled at least once");
}

#[tokio::test]
async fn a_retry_after_longer_than_the_policy_allows_is_handed_to_the_task_layer() {
    let Setup { sim, client, token } = setup().await;
    sim.faults()
        .inject(FaultRule::status("/api/accounts", 429, 1).retry_after(30));
    let error = client.account_id(&token).await.unwrap_err();
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(30))
    );
    assert_eq!(error.attempts, 1);
}

#[tokio::test]
async fn server_errors_are_retried_for_idempotent_calls_only() {
    let Setup { sim, client, token } = setup().await;
    sim.faults()
        .inject(FaultRule::status("/api/profile-import", 503, 2));
    let imported = client
        .import_profile(&token, &upsert("fay@example.org", "omneo-fay"))
        .await
        .unwrap();
    assert!(imported.created);
    assert_eq!(
        sim.recorder().matching("POST", "/api/profile-import").len(),
        3
    );

    // A data source create after a 5xx may exist already: not repeated in-call.
    sim.faults()
        .inject(FaultRule::status("/api/data-sources", 503, 1).method("POST"));
    let source = NewDataSource {
        title: "Omneo Lists".into(),
        visibility: Visibility::Private,
        description: None,
    };
    let error = client
        .create_data_source(&token, &source)
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert!(error.may_have_been_processed());
    assert_eq!(
        sim.recorder().matching("POST", "/api/data-sources").len(),
        1
    );

    // An event without a unique_id is not repeated either; with one it is.
    sim.faults()
        .inject(FaultRule::status("/api/events", 503, 1));
    let error = client
        .create_event(&token, &event(None, "fay@example.org"))
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retryable);
    sim.faults()
        .inject(FaultRule::status("/api/events", 503, 1));
    client
        .create_event(&token, &event(Some("fay-1"), "fay@example.org"))
        .await
        .unwrap();
    assert_eq!(sim.recorder().matching("POST", "/api/events").len(), 3);
    assert_eq!(sim.events().len(), 1);
}

#[tokio::test]
async fn exhausted_retries_come_back_retryable() {
    let Setup { sim, client, token } = setup_with(fast_retries(3)).await;
    sim.faults()
        .inject(FaultRule::status("/api/profiles", 503, 10));
    let error = client
        .find_profiles(&token, &ProfileFilter::Email("gus@example.org".into()))
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert_eq!(error.attempts, 3);
    assert_eq!(sim.recorder().matching("GET", "/api/profiles").len(), 3);
    assert!(
        !error.to_string().contains("gus@example.org"),
        "the query (an email) stays out of the error: {error}"
    );
}
