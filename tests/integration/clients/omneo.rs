//! `OmneoClient` against `OmneoSim`.

use std::time::{Duration, Instant};

use harness::omneo::{NewProfile, OmneoSim, OmneoSimOptions, TenantSpec};
use harness::sim::FaultRule;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use shared::domain::OmneoProfileId;
use shared::omneo::OmneoClient;
use shared::omneo::models::{
    Comms, InteractionAction, InteractionChannel, InteractionProfile, NewBenefit, NewInteraction,
    NewReward, NewWebhook, OmneoTime, ProfileListing, ProfileUpdate, Signal, WebhookUpdate,
};
use shared::remote::{Disposition, ErrorKind, RetryPolicy, Service};

use super::{fast_retries, http};

const TENANT: &str = "acme";
const TOKEN: &str = "acme-klaviyo-token";
const NAMESPACE: &str = "klaviyo";
const SECRET: &str = "acme-signing-secret";

/// The Admin API path prefix of the tenant, as the simulator records it.
const ADMIN: &str = "/acme/api/v3";

async fn start() -> OmneoSim {
    let spec = TenantSpec::new(TENANT, TOKEN, NAMESPACE, SECRET).token("acme-crm-token", "crm");
    OmneoSim::start(OmneoSimOptions::default().tenant(spec))
        .await
        .expect("the Omneo simulator starts")
}

fn client_with(sim: &OmneoSim, token: &str, retry: RetryPolicy) -> OmneoClient {
    OmneoClient::new(
        http(),
        sim.api_url(TENANT).parse().expect("a URL"),
        SecretString::from(token),
        retry,
    )
}

/// An Omneo profile id as the client takes it (the simulator deals in plain strings).
fn pid(raw: &str) -> OmneoProfileId {
    OmneoProfileId::parse(raw).expect("a valid Omneo profile id")
}

fn client(sim: &OmneoSim) -> OmneoClient {
    client_with(sim, TOKEN, fast_retries(4))
}

fn interaction(profile: InteractionProfile, name: &str) -> NewInteraction {
    NewInteraction {
        profile,
        action: InteractionAction::Disclose,
        channel: InteractionChannel::Email,
        signal: Signal::Negative,
        name: name.into(),
        namespace: NAMESPACE.into(),
        interacted_at: OmneoTime::parse("2026-03-01 10:20:30"),
        meta: Some(json!({"source": "klaviyo"})),
    }
}

#[tokio::test]
async fn profiles_are_read_found_and_updated() {
    let sim = start().await;
    let seeded = sim.seed_profile(TENANT, NewProfile::demo(1)).unwrap();
    let shopify_id = seeded.identities[0].identifier.clone();
    let client = client(&sim);

    let profile = client
        .profile(&pid(&seeded.id))
        .await
        .unwrap()
        .expect("found");
    assert_eq!(profile.id.as_str(), seeded.id);
    assert_eq!(profile.email, seeded.email);
    assert_eq!(profile.first_name, seeded.first_name);
    assert_eq!(profile.mobile_phone, seeded.mobile_phone);
    assert_eq!(profile.identity("shopify"), Some(shopify_id.as_str()));
    assert_eq!(profile.comms.as_ref().unwrap().email_promo, Some(true));
    assert_eq!(
        profile.address.as_ref().unwrap().country.as_deref(),
        Some("AU")
    );
    assert_eq!(profile.custom_attributes.len(), 2);
    assert!(profile.updated_at.is_some());
    assert!(
        client
            .profile(&pid("no-such-profile"))
            .await
            .unwrap()
            .is_none(),
        "a 404 reads as absent"
    );

    let email = seeded.email.clone().unwrap();
    let by_email = client
        .find_profiles_by_email(&email.to_uppercase())
        .await
        .unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].id.as_str(), seeded.id);
    assert!(
        client
            .find_profiles_by_email("nobody@example.org")
            .await
            .unwrap()
            .is_empty()
    );

    let by_identity = client
        .find_profile_by_identity("shopify", &shopify_id)
        .await
        .unwrap()
        .expect("found by identity");
    assert_eq!(by_identity.id.as_str(), seeded.id);
    assert!(
        client
            .find_profile_by_identity("shopify", "0")
            .await
            .unwrap()
            .is_none()
    );

    let update = ProfileUpdate {
        first_name: Some("Olive".into()),
        ..ProfileUpdate::default()
    };
    let updated = client
        .update_profile(&pid(&seeded.id), &update)
        .await
        .unwrap();
    assert_eq!(updated.first_name.as_deref(), Some("Olive"));
    assert_eq!(updated.last_name, seeded.last_name, "a partial update");
    let stored = sim.profile(TENANT, &seeded.id).unwrap();
    assert_eq!(stored.first_name.as_deref(), Some("Olive"));
    let put = sim
        .recorder()
        .matching("PUT", &format!("{ADMIN}/profiles/{}", seeded.id));
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].json(), json!({"first_name": "Olive"}));
    assert_eq!(
        put[0].headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        put[0].headers.get("accept").map(String::as_str),
        Some("application/json")
    );
}

#[tokio::test]
async fn profiles_are_paged_by_created_at_each_once_while_identities_are_written_back() {
    let sim = start().await;
    let long_ago: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
    let news = (1..=250)
        .map(|n| NewProfile {
            created_at: Some(long_ago),
            ..NewProfile::demo(n)
        })
        .collect();
    let seeded: Vec<String> = sim
        .insert_profiles(TENANT, news)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let client = client(&sim);
    let since = jiff::Timestamp::now();

    // A backfill: each page read, then every fifth profile's klaviyo identity written back
    // (which bumps its updated_at) before the next page is read.
    let mut served = Vec::new();
    let mut sizes = Vec::new();
    for number in 1.. {
        let listing = ProfileListing {
            page: number,
            size: ProfileListing::MAX_SIZE,
            updated_since: None,
        };
        let page = client.profiles_page(&listing).await.unwrap();
        assert_eq!(page.meta.current_page, Some(u64::from(number)));
        assert_eq!(page.meta.last_page, Some(3));
        assert_eq!(page.meta.per_page, Some(100));
        assert_eq!(page.meta.total, Some(250));
        assert_eq!(page.is_last(), number == 3, "page {number}");
        sizes.push(page.data.len());
        for profile in &page.data {
            let n = served.len();
            served.push(profile.id.as_str().to_owned());
            if n % 5 == 0 {
                client
                    .upsert_identity(&profile.id, "klaviyo", &format!("01K{n:05}"))
                    .await
                    .unwrap();
            }
        }
        if page.is_last() {
            break;
        }
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(served, seeded, "each profile once, in creation order");
    let pages = sim.recorder().matching("GET", &format!("{ADMIN}/profiles"));
    assert_eq!(pages.len(), 3);
    assert!(
        pages
            .iter()
            .all(|p| p.query.contains("sort=created_at") && p.query.contains("page%5Bsize%5D=100")),
        "{:?}",
        pages.iter().map(|p| &p.query).collect::<Vec<_>>()
    );

    // An incremental run: only the profiles written since, in pages of 20.
    let mut written = Vec::new();
    for number in 1..=3 {
        let listing = ProfileListing {
            page: number,
            size: 20,
            updated_since: Some(since),
        };
        let page = client.profiles_page(&listing).await.unwrap();
        assert_eq!(page.meta.total, Some(50));
        assert_eq!(page.is_last(), number == 3, "page {number}");
        written.extend(page.data.into_iter().map(|p| p.id.as_str().to_owned()));
    }
    let expected: Vec<String> = seeded.iter().step_by(5).cloned().collect();
    assert_eq!(written, expected);
    let filter: String =
        url::form_urlencoded::byte_serialize(OmneoTime(since).to_string().as_bytes()).collect();
    let last = sim.recorder().matching("GET", &format!("{ADMIN}/profiles"));
    assert!(
        last[3]
            .query
            .contains(&format!("filter%5Bupdated_at%5D%5Bgte%5D={filter}")),
        "{}",
        last[3].query
    );
}

#[tokio::test]
async fn comms_are_written_partially_with_consent_timestamps_in_omneos_format() {
    let sim = start().await;
    let seeded = sim.seed_profile(TENANT, NewProfile::demo(2)).unwrap();
    let client = client(&sim);

    let before = client.comms(&pid(&seeded.id)).await.unwrap();
    assert_eq!(before.email_promo, Some(true));
    assert_eq!(
        before.email_consent_updated_at,
        OmneoTime::parse("2024-01-15 09:30:00")
    );

    let at: jiff::Timestamp = "2026-03-01T10:20:30Z".parse().unwrap();
    let change = Comms {
        email_promo: Some(false),
        email_consent_updated_at: Some(OmneoTime(at)),
        ..Comms::default()
    };
    let after = client
        .update_comms(&pid(&seeded.id), &change)
        .await
        .unwrap();
    assert_eq!(after.email_promo, Some(false));
    assert_eq!(after.email_optout, before.email_optout, "left alone");
    assert_eq!(after.sms_promo, before.sms_promo, "left alone");
    assert_eq!(after.email_consent_updated_at, Some(OmneoTime(at)));
    assert_eq!(
        after.sms_consent_updated_at, before.sms_consent_updated_at,
        "not an SMS consent change"
    );

    let put = sim.recorder().matching(
        "PUT",
        &format!("{ADMIN}/profiles/{}/attributes/comms", seeded.id),
    );
    assert_eq!(
        put[0].json(),
        json!({"email_promo": false, "email_consent_updated_at": "2026-03-01 10:20:30"}),
        "only what is set, dates as Y-m-d H:i:s UTC"
    );
    let stored = sim.comms(TENANT, &seeded.id).unwrap();
    assert_eq!(stored.email_promo, Some(false));
    assert!(!stored.email_subscribed());
    assert_eq!(
        stored.email_consent_updated_at.as_deref(),
        Some("2026-03-01 10:20:30")
    );
    assert_eq!(client.comms(&pid(&seeded.id)).await.unwrap(), after);
}

#[tokio::test]
async fn identities_are_upserted_put_first_then_post_and_deleted() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(3)).unwrap();
    let other = sim.seed_profile(TENANT, NewProfile::demo(4)).unwrap();
    let client = client(&sim);
    let identity_path = format!("{ADMIN}/profiles/{}/identities", profile.id);

    let created = client
        .upsert_identity(&pid(&profile.id), "klaviyo", "01KFIRST")
        .await
        .unwrap();
    assert_eq!(created.handle, "klaviyo");
    assert_eq!(created.identifier, "01KFIRST");
    let calls: Vec<(String, String)> = sim
        .recorder()
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(&identity_path))
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        [
            ("PUT".to_owned(), format!("{identity_path}/klaviyo")),
            ("POST".to_owned(), identity_path.clone()),
        ],
        "PUT by handle, POST on its 404"
    );

    sim.recorder().clear();
    let changed = client
        .upsert_identity(&pid(&profile.id), "klaviyo", "01KSECOND")
        .await
        .unwrap();
    assert_eq!(changed.identifier, "01KSECOND");
    assert_eq!(sim.recorder().requests().len(), 1, "an existing one is PUT");
    assert_eq!(sim.recorder().matching("PUT", &identity_path).len(), 1);

    let listed = client.identities(&pid(&profile.id)).await.unwrap();
    let mut handles: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.handle.as_str(), i.identifier.as_str()))
        .collect();
    handles.sort_unstable();
    let shopify = profile.identities[0].identifier.as_str();
    assert_eq!(handles, [("klaviyo", "01KSECOND"), ("shopify", shopify)]);

    // (handle, identifier) is unique across profiles: the POST's 422 names the field.
    let clash = client
        .upsert_identity(&pid(&other.id), "klaviyo", "01KSECOND")
        .await
        .unwrap_err();
    assert_eq!(clash.disposition(), Disposition::Permanent);
    assert_eq!(clash.status().map(|s| s.as_u16()), Some(422));
    assert!(
        clash
            .problems()
            .iter()
            .any(|p| p.field.as_deref() == Some("identifier")),
        "{clash}"
    );
    assert_eq!(clash.attempts, 1, "a 422 is not retried");

    client
        .delete_identity(&pid(&profile.id), "klaviyo")
        .await
        .unwrap();
    assert!(
        sim.identities(TENANT, &profile.id)
            .iter()
            .all(|i| i.handle != "klaviyo")
    );
    client
        .delete_identity(&pid(&profile.id), "klaviyo")
        .await
        .expect("an absent identity counts as deleted");
}

#[tokio::test]
async fn webhooks_are_listed_across_pages_by_namespace_created_updated_and_deleted() {
    let sim = start().await;
    let client = client(&sim);
    let crm = client_with(&sim, "acme-crm-token", fast_retries(4));
    // Laravel's default page holds 15: 17 of ours span two pages.
    let mut created = Vec::new();
    for n in 0..17 {
        let webhook = NewWebhook {
            trigger: "profile.updated".into(),
            url: format!("http://127.0.0.1:9/acme/omneo/{n}"),
            namespace: NAMESPACE.into(),
            is_active: false,
        };
        created.push(client.create_webhook(&webhook).await.unwrap());
    }
    let theirs = NewWebhook {
        trigger: "profile.updated".into(),
        url: "http://127.0.0.1:9/crm".into(),
        namespace: "crm".into(),
        is_active: true,
    };
    crm.create_webhook(&theirs).await.unwrap();

    let first = &created[0];
    assert!(
        first.id.parse::<u64>().is_ok(),
        "Omneo's integer id is read as text: {:?}",
        first.id
    );
    assert_eq!(first.trigger, "profile.updated");
    assert_eq!(first.namespace.as_deref(), Some(NAMESPACE));
    assert!(!first.is_active);

    let listed = client.webhooks(NAMESPACE).await.unwrap();
    assert_eq!(listed, created, "every page, ours only");
    let pages = sim.recorder().matching("GET", &format!("{ADMIN}/webhooks"));
    assert_eq!(pages.len(), 2);
    assert!(pages[0].query.contains("filter%5Bnamespace%5D=klaviyo"));
    assert_eq!(crm.webhooks("crm").await.unwrap().len(), 1);

    let update = WebhookUpdate {
        namespace: None,
        is_active: Some(true),
        url: Some("http://127.0.0.1:9/acme/omneo/moved".into()),
    };
    let updated = client.update_webhook(&first.id, &update).await.unwrap();
    assert!(updated.is_active);
    assert_eq!(updated.url, "http://127.0.0.1:9/acme/omneo/moved");
    assert_eq!(updated.id, first.id);
    let stored = sim.webhooks(TENANT);
    let stored = stored
        .iter()
        .find(|w| w.id.to_string() == first.id)
        .unwrap();
    assert!(stored.is_active);

    client.delete_webhook(&first.id).await.unwrap();
    assert!(
        sim.webhooks(TENANT)
            .iter()
            .all(|w| w.id.to_string() != first.id)
    );
    client
        .delete_webhook(&first.id)
        .await
        .expect("an absent webhook counts as deleted");
    assert_eq!(client.webhooks(NAMESPACE).await.unwrap().len(), 16);
}

#[tokio::test]
async fn interactions_rewards_and_benefits_are_created() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(5)).unwrap();
    let client = client(&sim);
    client
        .upsert_identity(&pid(&profile.id), "klaviyo", "01KACTIVITY")
        .await
        .unwrap();

    let by_id = client
        .create_interaction(&interaction(
            InteractionProfile::ProfileId(pid(&profile.id)),
            "Klaviyo: unsubscribed from email",
        ))
        .await
        .unwrap();
    let by_identity = client
        .create_interaction(&interaction(
            InteractionProfile::Identity {
                id: "01KACTIVITY".into(),
                handle: "klaviyo".into(),
            },
            "Klaviyo: opened email",
        ))
        .await
        .unwrap();
    assert_ne!(by_id.id, by_identity.id);
    let interactions = sim.interactions(TENANT);
    assert_eq!(interactions.len(), 2);
    for (created, stored) in [&by_id, &by_identity].into_iter().zip(&interactions) {
        assert_eq!(created.id, stored.id.to_string());
        assert_eq!(stored.profile_id, profile.id);
        assert_eq!(stored.action, "disclose");
        assert_eq!(stored.channel, "email");
        assert_eq!(stored.signal, -1);
        assert_eq!(stored.interacted_at, "2026-03-01 10:20:30");
        assert_eq!(stored.meta, Some(json!({"source": "klaviyo"})));
    }
    assert_eq!(interactions[1].name, "Klaviyo: opened email");
    assert_eq!(by_id.raw["name"], "Klaviyo: unsubscribed from email");

    let reward = client
        .create_reward(&NewReward {
            profile_id: pid(&profile.id),
            reward_definition_id: json!(7),
            value_initial: 15.0,
            value_remaining: 15.0,
            expires_at: OmneoTime::parse("2030-01-01T00:00:00Z"),
            external_id: Some("klaviyo-flow-1".into()),
            meta: None,
            region_id: None,
        })
        .await
        .unwrap();
    let rewards = sim.rewards(TENANT);
    let stored = rewards.last().unwrap();
    assert_eq!(reward.id, stored.id.to_string());
    assert_eq!(stored.external_id.as_deref(), Some("klaviyo-flow-1"));
    assert_eq!(stored.expires_at.as_deref(), Some("2030-01-01 00:00:00"));
    assert_eq!(stored.reward_definition_id, json!(7));
    assert!((stored.value_initial - 15.0).abs() < f64::EPSILON);

    let benefit = client
        .create_benefit(&NewBenefit {
            profile_id: pid(&profile.id),
            benefit_definition_id: json!("birthday"),
            issued_at: None,
            expires_at: None,
            external_id: Some("klaviyo-flow-2".into()),
            meta: Some(json!({"flow": "birthday"})),
        })
        .await
        .unwrap();
    let benefits = sim.benefits(TENANT);
    let stored = benefits.last().unwrap();
    assert_eq!(benefit.id, stored.id.to_string());
    assert_eq!(stored.profile_id, profile.id);
    assert_eq!(stored.benefit_definition_id, json!("birthday"));
    assert_eq!(stored.external_id.as_deref(), Some("klaviyo-flow-2"));
}

#[tokio::test]
async fn id_tokens_are_minted_for_a_profile_or_an_identity() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(6)).unwrap();
    let shopify_id = profile.identities[0].identifier.clone();
    let client = client(&sim);

    let minted = client.mint_id_token(&profile.id, None).await.unwrap();
    let claims = sim
        .decode_id_token(TENANT, minted.token.expose_secret())
        .unwrap();
    assert_eq!(claims.pid, profile.id);
    assert_eq!(minted.expires_at.as_second(), claims.exp);
    assert!(minted.expires_at > jiff::Timestamp::now());
    assert!(
        !format!("{minted:?}").contains(minted.token.expose_secret()),
        "the token is never printed"
    );

    let by_identity = client
        .mint_id_token(&shopify_id, Some("shopify"))
        .await
        .unwrap();
    let claims = sim
        .decode_id_token(TENANT, by_identity.token.expose_secret())
        .unwrap();
    assert_eq!(claims.pid, profile.id);
    let calls = sim
        .recorder()
        .matching("POST", "/acme/id/api/v1/auth/token");
    assert_eq!(
        calls[1].json(),
        json!({"id": shopify_id, "id_handle": "shopify"})
    );

    let missing = client.mint_id_token("no-such-profile", None).await;
    let error = missing.unwrap_err();
    assert!(error.is_not_found());
    assert_eq!(error.disposition(), Disposition::Permanent);
}

#[tokio::test]
async fn validation_errors_are_permanent_and_name_the_field() {
    let sim = start().await;
    let ann = sim.seed_profile(TENANT, NewProfile::demo(7)).unwrap();
    let bob = sim.seed_profile(TENANT, NewProfile::demo(8)).unwrap();
    let client = client(&sim);

    let update = ProfileUpdate {
        email: bob.email.clone(),
        ..ProfileUpdate::default()
    };
    let error = client
        .update_profile(&pid(&ann.id), &update)
        .await
        .unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(error.attempts, 1);
    let problem = error
        .problems()
        .iter()
        .find(|p| p.field.as_deref() == Some("email"))
        .unwrap_or_else(|| panic!("no email problem in {error}"));
    assert!(problem.detail.contains("taken"), "{problem}");
    assert!(error.to_string().contains("PUT /acme/api/v3/profiles/"));

    let reward = NewReward {
        profile_id: pid("no-such-profile"),
        reward_definition_id: json!(1),
        value_initial: 1.0,
        value_remaining: 1.0,
        expires_at: None,
        external_id: None,
        meta: None,
        region_id: None,
    };
    let error = client.create_reward(&reward).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert!(
        error
            .problems()
            .iter()
            .any(|p| p.field.as_deref() == Some("profile_id")),
        "{error}"
    );
    assert!(sim.rewards(TENANT).is_empty());
}

#[tokio::test]
async fn a_rejected_token_is_permanent_and_says_to_replace_it() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(9)).unwrap();
    let client = client_with(&sim, "revoked-token-value", fast_retries(4));

    let error = client.profile(&pid(&profile.id)).await.unwrap_err();
    assert!(matches!(
        error.kind,
        ErrorKind::Unauthorized {
            service: Service::Omneo
        }
    ));
    assert_eq!(error.disposition(), Disposition::Permanent);
    assert_eq!(error.attempts, 1, "a 401 is not retried");
    let text = error.to_string();
    assert!(text.contains("replace the token"), "{text}");
    assert!(!text.contains("revoked-token-value"), "{text}");
    assert_eq!(sim.recorder().requests().len(), 1);
}

#[tokio::test]
async fn a_429_is_retried_no_earlier_than_its_retry_after() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(10)).unwrap();
    let client = client(&sim);
    let path = format!("{ADMIN}/profiles/{}", profile.id);
    sim.faults()
        .inject(FaultRule::status(&path, 429, 1).retry_after(1));

    let started = Instant::now();
    let found = client.profile(&pid(&profile.id)).await.unwrap();
    assert_eq!(found.unwrap().id.as_str(), profile.id);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(sim.recorder().matching("GET", &path).len(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_policy_ends_the_call_for_rescheduling() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(11)).unwrap();
    let client = client(&sim);
    let path = format!("{ADMIN}/profiles/{}", profile.id);
    sim.faults()
        .inject(FaultRule::status(&path, 429, 1).retry_after(120));

    let error = client.profile(&pid(&profile.id)).await.unwrap_err();
    assert_eq!(
        error.disposition(),
        Disposition::RetryAfter(Duration::from_secs(120))
    );
    assert_eq!(error.attempts, 1);
    assert_eq!(sim.recorder().matching("GET", &path).len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_they_pass() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(12)).unwrap();
    let client = client(&sim);
    let path = format!("{ADMIN}/profiles/{}/attributes/comms", profile.id);
    sim.faults().inject(FaultRule::status(&path, 503, 2));

    let change = Comms {
        sms_optout: Some(true),
        ..Comms::default()
    };
    let comms = client
        .update_comms(&pid(&profile.id), &change)
        .await
        .unwrap();
    assert_eq!(comms.sms_optout, Some(true));
    assert_eq!(sim.recorder().matching("PUT", &path).len(), 3);
}

#[tokio::test]
async fn exhausted_retries_come_back_retryable() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(13)).unwrap();
    let client = client_with(&sim, TOKEN, fast_retries(3));
    let path = format!("{ADMIN}/profiles/{}", profile.id);
    sim.faults().inject(FaultRule::status(&path, 503, 10));

    let error = client.profile(&pid(&profile.id)).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert_eq!(error.attempts, 3);
    assert_eq!(error.status().map(|s| s.as_u16()), Some(503));
    assert!(error.to_string().contains("Service Unavailable"), "{error}");
    assert_eq!(sim.recorder().matching("GET", &path).len(), 3);
}

#[tokio::test]
async fn an_interaction_is_not_repeated_after_a_server_error_but_is_after_a_429() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(14)).unwrap();
    let client = client(&sim);
    let path = format!("{ADMIN}/interactions");
    let new = interaction(
        InteractionProfile::ProfileId(pid(&profile.id)),
        "Klaviyo: clicked email",
    );

    // A 5xx may come after the interaction was recorded: back to the task layer, once.
    sim.faults().inject(FaultRule::status(&path, 503, 1));
    let error = client.create_interaction(&new).await.unwrap_err();
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert!(error.may_have_been_processed());
    assert_eq!(error.attempts, 1);
    assert_eq!(sim.recorder().matching("POST", &path).len(), 1);

    // A 429 was refused before processing: repeating it in-call is safe.
    sim.recorder().clear();
    sim.faults()
        .inject(FaultRule::status(&path, 429, 1).retry_after(1));
    let created = client.create_interaction(&new).await.unwrap();
    assert_eq!(sim.recorder().matching("POST", &path).len(), 2);
    let interactions = sim.interactions(TENANT);
    assert_eq!(interactions.len(), 1, "recorded once");
    assert_eq!(interactions[0].id.to_string(), created.id);
}

#[tokio::test]
async fn an_unreachable_tenant_is_retried_then_retryable() {
    // A port nothing listens on: bind one, then free it.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = OmneoClient::new(
        http(),
        format!("http://{addr}/acme").parse().unwrap(),
        SecretString::from(TOKEN),
        fast_retries(3),
    );
    let error = client.profile(&pid("any")).await.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Connect(_)), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert_eq!(error.attempts, 3);
    assert!(!error.may_have_been_processed());
}

#[tokio::test]
async fn a_timed_out_read_is_retried_but_a_timed_out_create_is_not() {
    let sim = start().await;
    let profile = sim.seed_profile(TENANT, NewProfile::demo(15)).unwrap();
    let retry = RetryPolicy {
        attempt_timeout: Duration::from_secs(2),
        ..fast_retries(3)
    };
    let client = client_with(&sim, TOKEN, retry);
    let stall = Duration::from_secs(30);

    let path = format!("{ADMIN}/profiles/{}", profile.id);
    sim.faults().inject(FaultRule::slow(&path, stall, 1));
    let found = client.profile(&pid(&profile.id)).await.unwrap();
    assert_eq!(found.unwrap().id.as_str(), profile.id);
    assert_eq!(sim.recorder().matching("GET", &path).len(), 2);

    let path = format!("{ADMIN}/interactions");
    sim.faults().inject(FaultRule::slow(&path, stall, 1));
    let new = interaction(
        InteractionProfile::ProfileId(pid(&profile.id)),
        "Klaviyo: received SMS",
    );
    let error = client.create_interaction(&new).await.unwrap_err();
    assert!(matches!(error.kind, ErrorKind::Timeout(_)), "{error:?}");
    assert_eq!(error.disposition(), Disposition::Retryable);
    assert!(error.may_have_been_processed());
    assert_eq!(error.attempts, 1);
    assert_eq!(sim.recorder().matching("POST", &path).len(), 1);
}
