//! *Klaviyo events*: one Klaviyo profile's consent events → Omneo (product.md §7.2).
//!
//! In order: drop the echoes of the extension's own changes (`custom_method_detail` = `omneo`,
//! before any remote call); find the Omneo profile (Klaviyo identity, then email; none → skip,
//! never create); then, holding the profile's lease: claim each event (an event already applied
//! drops out), merge the rest into one comms update ([`super::consent::merge`]) and send it if
//! it changes anything, check the master list, and record one interaction per event, marking
//! each event done as its interaction is made. Subscription status is never pushed back to
//! Klaviyo; the only Klaviyo write is the master-list subscribe. A comms update also queues an
//! outbound sync of the profile (coalesced, as Omneo's webhooks are), which Omneo would not
//! trigger for the extension's own change: it repairs Klaviyo if an outbound sync wrote Omneo's
//! older consent there while the customer's change was on its way.
//!
//! **Retries.** A retry after a partial failure (comms written, some interactions not) finds the
//! finished events done and the comms already equal, so nothing is written twice. The one gap:
//! an attempt that dies between Omneo creating an interaction and the store marking its event
//! done leaves the claim to lapse, and the retry records that interaction again (Omneo offers no
//! way to look one up).

use std::time::Duration;

use serde_json::{Value, json};

use super::consent::{applied, effect, merge};
use crate::domain::{ConsentState, KlaviyoTopic};
use crate::job::{Held, Hold, Job, WORK_LEASE, klaviyo_setback, omneo_setback};
use crate::klaviyo::models::{SubscribeJob, Subscriber};
use crate::omneo::models::{
    Channel, Comms, InteractionProfile, NewInteraction, OmneoTime, Profile as OmneoProfile,
};
use crate::outbound::consent::current as klaviyo_consent;
use crate::queue::{ConsentEvent, Direction, KlaviyoEvents, OUR_CUSTOM_SOURCE, Task};
use crate::store::IdempotencyKey;
use crate::worker::Setback;

/// How long an applied event is remembered: longer than any redelivery by Klaviyo, and than the
/// look-back of reconciliation, which feeds the same events again.
pub const EVENT_RETAIN: Duration = Duration::from_secs(14 * 24 * 3600);

/// Applies one profile's events to Omneo (see the module docs).
pub async fn klaviyo_events(job: &Job<'_>, work: &KlaviyoEvents) -> Result<(), Setback> {
    // An event Klaviyo delivered twice in one batch is one event (found by the soak: its second
    // claim met the first, held by the same attempt, and the task failed every attempt).
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&ConsentEvent> = work
        .events
        .iter()
        .filter(|e| !e.is_circular() && seen.insert(e.id.as_str()))
        .collect();
    if events.is_empty() {
        tracing::info!(
            klaviyo_profile = %work.klaviyo_profile_id,
            "every event was the extension's own change; nothing to do"
        );
        return Ok(());
    }
    let Some(profile) = job
        .omneo_profile_of(
            Some(work.klaviyo_profile_id.as_str()),
            work.email.as_deref(),
        )
        .await?
    else {
        tracing::info!(
            klaviyo_profile = %work.klaviyo_profile_id,
            events = events.len(),
            "no Omneo profile holds this Klaviyo identity or email; skipped (profiles are never created)"
        );
        return Ok(());
    };
    job.with_profile_lease(&profile.id, apply(job, work, &profile, events))
        .await
}

/// Claims the events and applies those not applied before.
async fn apply(
    job: &Job<'_>,
    work: &KlaviyoEvents,
    profile: &OmneoProfile,
    events: Vec<&ConsentEvent>,
) -> Result<(), Setback> {
    let mut claimed: Vec<(&ConsentEvent, Held)> = Vec::with_capacity(events.len());
    for event in events {
        // Claimed for the profile lease's time, not renewed: every attempt on this profile's
        // events claims them under that (renewed) lease, so a claim lapsing while its holder
        // still works lets no one in; and an attempt that dies or is cancelled (its request
        // dropped) strands its claims for seconds only.
        match job
            .hold_for(event_key(job, event), WORK_LEASE, "claim_event")
            .await
        {
            Ok(Hold::Acquired(held)) => claimed.push((event, held)),
            Ok(Hold::Done) => {}
            Err(setback) => {
                let_go_all(job, claimed).await;
                return Err(setback);
            }
        }
    }
    if claimed.is_empty() {
        return Ok(());
    }
    claimed.sort_by(|(a, _), (b, _)| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
    let fresh: Vec<&ConsentEvent> = claimed.iter().map(|(event, _)| *event).collect();
    if let Err(setback) = update_comms(job, work, profile, &fresh).await {
        let_go_all(job, claimed).await;
        return Err(setback);
    }
    let mut claimed = claimed.into_iter();
    while let Some((event, held)) = claimed.next() {
        let done = match record_interaction(job, profile, event).await {
            Ok(()) => job.finish(held, EVENT_RETAIN, "record_interaction").await,
            Err(setback) => {
                job.let_go(held).await;
                Err(setback)
            }
        };
        if let Err(setback) = done {
            let_go_all(job, claimed).await;
            return Err(setback);
        }
    }
    Ok(())
}

/// The done-marker of one Klaviyo event in the tenant.
fn event_key(job: &Job<'_>, event: &ConsentEvent) -> IdempotencyKey {
    IdempotencyKey::new(&job.tenant.id, "klaviyo-event", &[&event.id])
}

async fn let_go_all<'e>(
    job: &Job<'_>,
    claimed: impl IntoIterator<Item = (&'e ConsentEvent, Held)>,
) {
    for (_, held) in claimed {
        job.let_go(held).await;
    }
}

/// Steps 3–5 and 7: the merged comms update (when it changes anything), then the master list.
async fn update_comms(
    job: &Job<'_>,
    work: &KlaviyoEvents,
    profile: &OmneoProfile,
    events: &[&ConsentEvent],
) -> Result<(), Setback> {
    let current = job
        .omneo
        .comms(&profile.id)
        .await
        .map_err(omneo_setback("read_comms"))?;
    let update = merge(&current, events.iter().copied());
    if update != Comms::default() {
        enqueue_repair_sync(job, profile).await?;
        job.omneo
            .update_comms(&profile.id, &update)
            .await
            .map_err(omneo_setback("update_comms"))?;
    }
    let after = applied(&current, &update);
    let opted_in = events
        .iter()
        .any(|event| effect(event.topic).may_subscribe_email());
    if opted_in && after.consent(Channel::Email).is_subscribed() {
        join_master_list(job, work, events).await?;
    }
    Ok(())
}

/// Queues an outbound sync of `profile` (coalesced as Omneo's own webhooks are), to run after
/// this comms update: Omneo does not deliver the extension's own changes back to it, so without
/// this an outbound sync that ran between the customer's change in Klaviyo and this update —
/// and wrote Omneo's older consent over it — would stay uncorrected (found by the soak). In the
/// usual case the sync finds Klaviyo already equal and writes nothing. Queued before the update
/// so that a failed enqueue leaves nothing written; the profile lease this task holds keeps the
/// sync from running before the update lands.
async fn enqueue_repair_sync(job: &Job<'_>, profile: &OmneoProfile) -> Result<(), Setback> {
    let task = Task::coalesced_sync(
        &job.tenant.id,
        job.queue(Direction::Outbound, "enqueue_sync")?.clone(),
        profile.id.clone(),
        job.tenant.settings.coalesce_seconds,
        jiff::Timestamp::now(),
    );
    job.enqueue(&task, "enqueue_sync").await
}

/// Step 7: an email-subscribed profile that is not in the tenant's master list is subscribed
/// with the list (`custom_source: omneo`, so the echo is dropped). Nothing without a master list.
async fn join_master_list(
    job: &Job<'_>,
    work: &KlaviyoEvents,
    events: &[&ConsentEvent],
) -> Result<(), Setback> {
    let Some(list_id) = job.tenant.settings.master_list_id.as_deref() else {
        return Ok(());
    };
    if events
        .iter()
        .any(|e| e.topic == KlaviyoTopic::SubscribedToList && e.list_id.as_deref() == Some(list_id))
    {
        return Ok(());
    }
    // Re-read: the events may be older than Klaviyo's current consent.
    let Some(klaviyo) = job.klaviyo_profile(&work.klaviyo_profile_id).await? else {
        return Ok(());
    };
    let subscribed = klaviyo_consent(klaviyo.attributes.subscriptions.as_ref()).email
        == Some(ConsentState::Subscribed);
    let Some(email) = klaviyo.attributes.email.as_deref().filter(|_| subscribed) else {
        return Ok(());
    };
    let member = job
        .klaviyo(|k, t| async move { k.list_has_email(&t, list_id, email).await })
        .await
        .map_err(klaviyo_setback("check_master_list"))?;
    if member {
        return Ok(());
    }
    let subscribe = SubscribeJob {
        subscribers: vec![Subscriber {
            email: Some(email.to_owned()),
            phone_number: None,
            email_marketing: true,
            sms_marketing: false,
            consented_at: None,
        }],
        list_id: Some(list_id.to_owned()),
        custom_source: Some(OUR_CUSTOM_SOURCE.to_owned()),
        historical_import: false,
    };
    job.klaviyo(|k, t| {
        let subscribe = subscribe.clone();
        async move { k.subscribe(&t, &subscribe).await }
    })
    .await
    .map_err(klaviyo_setback("join_master_list"))
}

/// Step 8: the event's interaction, in the tenant's namespace, at the event's time.
async fn record_interaction(
    job: &Job<'_>,
    profile: &OmneoProfile,
    event: &ConsentEvent,
) -> Result<(), Setback> {
    let effect = effect(event.topic);
    let mut meta = json!({
        "klaviyo_event_id": event.id,
        "topic": event.topic.id(),
    });
    for (key, value) in [
        ("method", &event.method),
        ("method_detail", &event.method_detail),
        ("list_id", &event.list_id),
    ] {
        if let Some(value) = value {
            meta[key] = Value::from(value.as_str());
        }
    }
    let interaction = NewInteraction {
        profile: InteractionProfile::ProfileId(profile.id.clone()),
        action: effect.action,
        channel: effect.channel,
        signal: effect.signal,
        name: effect.name.to_owned(),
        namespace: job.tenant.settings.namespace.clone(),
        interacted_at: Some(OmneoTime(event.at)),
        meta: Some(meta),
    };
    job.omneo
        .create_interaction(&interaction)
        .await
        .map(drop)
        .map_err(omneo_setback("record_interaction"))
}
