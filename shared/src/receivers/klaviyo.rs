//! `klaviyo-webhook` (product.md §2, §7.1, §7.3): Klaviyo's system webhooks and the three Flow
//! webhooks. Every request goes: tenant (404 when unknown) → authentication on the raw bytes
//! (401) → install (404 when not installed) → typed parse of only what the tasks need (400
//! naming the field) → enqueue on the tenant's inbound queue → 202.
//!
//! - `POST /{tenant}/api/v1/webhooks/klaviyo/system`: `Klaviyo-Signature` is the hex
//!   HMAC-SHA256 of the raw body followed by the `Klaviyo-Timestamp` header's bytes, under the
//!   tenant's `webhook_secret` (the previous one too while a rotation's grace lasts). Then the
//!   delivery must be the tenant's: `meta.klaviyo_webhook_id` equal to the `Klaviyo-Webhook-Id`
//!   header and to the webhook provisioning stored, `meta.klaviyo_account_id` the tenant's
//!   account, `meta.timestamp` within [`MAX_DELIVERY_AGE`] of now (the timestamp *header* is
//!   observed hours off, so it only feeds the HMAC) — each a 401. The batch's events are grouped
//!   by Klaviyo profile into one *Klaviyo events* task each, named from the events'
//!   `external_id`s, so a redelivered batch makes no new task. Events of topics the extension
//!   does not act on, and echoes of its own changes (`custom_method_detail` = `omneo`), make no
//!   task.
//! - `POST /{tenant}/api/v1/webhooks/klaviyo/{rewards,benefits,interactions}`: `x-omneo-secret`
//!   equal to the `webhook_secret` (constant time; the previous one during a rotation), and a
//!   body `{"person_id"?, "email"?, "data": {…}, "idempotency_key"?}` validated in full before
//!   the 202 — Klaviyo does not retry a 4xx, so a bad call is refused at once, naming its field.
//!   The task is named from the `idempotency_key`, or the body's hash without one.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{
    Accepted, Delivery, HmacKey, Receiver, ReceiverTenant, SHARED_SECRET_HEADER, TenantSegment,
    enqueue_all, enqueue_carrying, fits_a_task, invalid_signature, task_now, verify_hex_hmac,
    verify_shared_secret,
};
use crate::api_error::{ApiError, parse_json};
use crate::app::App;
use crate::domain::{KlaviyoProfileId, KlaviyoTopic};
use crate::klaviyo::models::KlaviyoEvent;
use crate::queue::{
    ConsentEvent, Direction, FlowAction, FlowDedupe, FlowRequest, IssueBenefit, IssueReward,
    KlaviyoEvents, MAX_TASK_BYTES, RecordInteraction, TaskName, Work,
};

/// `Klaviyo-Signature`: hex HMAC-SHA256 of the raw body ‖ the timestamp header.
pub const SIGNATURE_HEADER: &str = "klaviyo-signature";
/// `Klaviyo-Timestamp`: an HTTP-date, signed with the body (and otherwise unreliable).
pub const TIMESTAMP_HEADER: &str = "klaviyo-timestamp";
/// `Klaviyo-Webhook-Id`: the webhook delivering.
pub const WEBHOOK_ID_HEADER: &str = "klaviyo-webhook-id";
/// How far `meta.timestamp` may be from now, either way, before a delivery is refused as a
/// replay (product.md §7.1).
pub const MAX_DELIVERY_AGE: SignedDuration = SignedDuration::from_mins(5);

/// The routes of `klaviyo-webhook`.
pub fn routes(app: Arc<App>) -> Router {
    let receiver = Receiver::new(app);
    Router::new()
        .route("/{tenant}/api/v1/webhooks/klaviyo/system", post(system))
        .route(
            "/{tenant}/api/v1/webhooks/klaviyo/rewards",
            post(flow::<IssueReward>),
        )
        .route(
            "/{tenant}/api/v1/webhooks/klaviyo/benefits",
            post(flow::<IssueBenefit>),
        )
        .route(
            "/{tenant}/api/v1/webhooks/klaviyo/interactions",
            post(flow::<RecordInteraction>),
        )
        .with_state(receiver)
}

/// A system-webhook delivery: only what the receiver checks and the tasks carry. What is only
/// compared or hashed is borrowed from the body.
#[derive(Deserialize)]
pub struct SystemDelivery<'a> {
    #[serde(borrow)]
    data: Vec<Entry<'a>>,
    #[serde(borrow)]
    meta: Meta<'a>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    klaviyo_account_id: Cow<'a, str>,
    #[serde(borrow)]
    klaviyo_webhook_id: Cow<'a, str>,
    timestamp: Timestamp,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    external_id: Cow<'a, str>,
    payload: EntryPayload,
}

#[derive(Deserialize)]
struct EntryPayload {
    data: KlaviyoEvent,
}

/// One profile's share of a batch.
#[derive(Default)]
struct ProfileBatch<'a> {
    email: Option<String>,
    events: Vec<ConsentEvent>,
    external_ids: Vec<Cow<'a, str>>,
}

/// How much smaller than a task a delivery must be for every task it makes to fit without
/// measuring: a task holds copies of some of the delivery's values (never longer than in the
/// delivery) under keys shorter than the delivery's, plus its envelope (tenant, kind, profile,
/// email), which this covers.
const TASK_ENVELOPE_SLACK: usize = 4 * 1024;

/// `POST /{tenant}/api/v1/webhooks/klaviyo/system`.
async fn system(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let tenant = receiver.tenants.find(&tenant).await?;
    let now = Timestamp::now();
    verify_system_signature(&headers, &body, tenant.webhook_keys(now))?;
    let queue = tenant.queue(Direction::Inbound)?.clone();
    let delivery: SystemDelivery = parse_json(&body)?;
    check_delivery_is_theirs(&tenant, &headers, &delivery.meta, now)?;

    let mut batches: BTreeMap<KlaviyoProfileId, ProfileBatch<'_>> = BTreeMap::new();
    for entry in delivery.data {
        let Some(topic) = KlaviyoTopic::from_id(&entry.topic) else {
            tracing::debug!(tenant = %tenant.id, topic = %entry.topic, "ignored a Klaviyo topic this extension does not act on");
            continue;
        };
        let (profile, email, event) = entry.payload.data.consent_event(topic);
        if event.is_circular() {
            continue;
        }
        let batch = batches.entry(profile).or_default();
        if batch.email.is_none() {
            batch.email = email;
        }
        batch.events.push(event);
        batch.external_ids.push(entry.external_id);
    }

    let mut tasks = Vec::with_capacity(batches.len());
    for (profile, mut batch) in batches {
        batch.external_ids.sort_unstable();
        let mut parts = vec!["klaviyo-events", tenant.id.as_str(), profile.as_str()];
        parts.extend(batch.external_ids.iter().map(|id| id.as_ref()));
        let name = TaskName::from_parts(&parts);
        let work = Work::KlaviyoEvents(KlaviyoEvents {
            klaviyo_profile_id: profile,
            email: batch.email,
            events: batch.events,
        });
        let task = task_now(&tenant.id, queue.clone(), work, name);
        if body.len() + TASK_ENVELOPE_SLACK > MAX_TASK_BYTES {
            fits_a_task(&task, "data")?;
        }
        tasks.push(task);
    }
    enqueue_all(receiver.app.queue.as_ref(), tasks).await
}

/// `Klaviyo-Signature` over the body ‖ `Klaviyo-Timestamp`, under any accepted key.
pub fn verify_system_signature<'k>(
    headers: &HeaderMap,
    body: &[u8],
    keys: impl Iterator<Item = &'k HmacKey>,
) -> Result<(), ApiError> {
    let timestamp = headers
        .get(TIMESTAMP_HEADER)
        .ok_or_else(|| invalid_signature(TIMESTAMP_HEADER, "missing Klaviyo-Timestamp header"))?;
    let mut outcome = Err(invalid_signature(SIGNATURE_HEADER, "no accepted secret"));
    for key in keys {
        outcome = verify_hex_hmac(
            headers,
            SIGNATURE_HEADER,
            key,
            &[body, timestamp.as_bytes()],
        );
        if outcome.is_ok() {
            break;
        }
    }
    outcome
}

/// The delivery must come from the tenant's own webhook and account, and be recent.
fn check_delivery_is_theirs(
    tenant: &ReceiverTenant,
    headers: &HeaderMap,
    meta: &Meta<'_>,
    now: Timestamp,
) -> Result<(), ApiError> {
    let header_id = headers
        .get(WEBHOOK_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim);
    if header_id != Some(meta.klaviyo_webhook_id.as_ref()) {
        return Err(invalid_signature(
            WEBHOOK_ID_HEADER,
            "Klaviyo-Webhook-Id does not match meta.klaviyo_webhook_id",
        ));
    }
    let install = tenant.install.as_ref();
    let stored_id = install.and_then(|i| i.resources.klaviyo_webhook_id.as_deref());
    if stored_id != Some(meta.klaviyo_webhook_id.as_ref()) {
        return Err(invalid_signature(
            "meta.klaviyo_webhook_id",
            "the delivery is not from the tenant's Klaviyo webhook",
        ));
    }
    let account = install.and_then(|i| i.klaviyo_account_id.as_deref());
    if account != Some(meta.klaviyo_account_id.as_ref()) {
        return Err(invalid_signature(
            "meta.klaviyo_account_id",
            "the delivery is not from the tenant's Klaviyo account",
        ));
    }
    let age = now.duration_since(meta.timestamp).abs();
    if age > MAX_DELIVERY_AGE {
        return Err(invalid_signature(
            "meta.timestamp",
            format!(
                "meta.timestamp is {}s from now; at most {}s is accepted",
                age.as_secs(),
                MAX_DELIVERY_AGE.as_secs()
            ),
        ));
    }
    Ok(())
}

/// A Flow webhook's body, its `data` typed by the action.
#[derive(Deserialize)]
pub struct FlowCall<T> {
    #[serde(default)]
    person_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    data: T,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The `data` of one Flow action, and how it becomes a request.
trait FlowData: DeserializeOwned + Send + 'static {
    fn into_request(self) -> FlowRequest;
}

impl FlowData for IssueReward {
    fn into_request(self) -> FlowRequest {
        FlowRequest::Reward(self)
    }
}

impl FlowData for IssueBenefit {
    fn into_request(self) -> FlowRequest {
        FlowRequest::Benefit(self)
    }
}

impl FlowData for RecordInteraction {
    fn into_request(self) -> FlowRequest {
        FlowRequest::Interaction(self)
    }
}

/// A present, non-blank text (a template that rendered nothing counts as absent).
fn present(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// `POST /{tenant}/api/v1/webhooks/klaviyo/{rewards,benefits,interactions}`.
async fn flow<T: FlowData>(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let tenant = receiver.tenants.find(&tenant).await?;
    verify_shared_secret(
        &headers,
        SHARED_SECRET_HEADER,
        tenant.webhook_secrets(Timestamp::now()),
    )?;
    let queue = tenant.queue(Direction::Inbound)?.clone();
    let call: FlowCall<T> = parse_json(&body)?;
    let klaviyo_profile_id = present(call.person_id)
        .map(|id| {
            KlaviyoProfileId::parse(id)
                .map_err(|error| ApiError::invalid_field("person_id", error.to_string()))
        })
        .transpose()?;
    let email = present(call.email);
    if klaviyo_profile_id.is_none() && email.is_none() {
        return Err(ApiError::invalid_field(
            "person_id",
            "name the profile by person_id ({{ person.id }}) or email",
        ));
    }
    let dedupe = match present(call.idempotency_key) {
        Some(key) => FlowDedupe::Key(key),
        None => FlowDedupe::BodyHash(hex::encode(Sha256::digest(&body))),
    };
    let request = call.data.into_request();
    let kind = match &dedupe {
        FlowDedupe::Key(_) => "key",
        FlowDedupe::BodyHash(_) => "body",
    };
    let name = TaskName::from_parts(&[
        "flow",
        tenant.id.as_str(),
        request.path_name(),
        kind,
        dedupe.as_str(),
    ]);
    let work = Work::FlowAction(FlowAction {
        klaviyo_profile_id,
        email,
        dedupe,
        request,
    });
    let task = task_now(&tenant.id, queue, work, name);
    enqueue_carrying(receiver.app.queue.as_ref(), task, "data").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_texts_are_absent() {
        assert_eq!(present(Some("  ".into())), None);
        assert_eq!(present(Some(" a ".into())), Some("a".into()));
        assert_eq!(present(None), None);
    }
}
