//! System webhook deliveries: Klaviyo POSTs batches of events to each webhook subscribed to
//! their topics, signed with the webhook's `secret_key`:
//! - `Klaviyo-Webhook-Id`: the webhook id;
//! - `Klaviyo-Timestamp`: an HTTP-date (shifted by [`super::KlaviyoSimOptions::delivery_timestamp_skew`],
//!   as the real one is observed hours off);
//! - `Klaviyo-Signature`: lowercase hex HMAC-SHA256(secret_key, raw body ‖ timestamp header).
//!
//! Body: `{"data":[{"topic","external_id","payload":{"data":<event>}}],"meta":{"klaviyo_account_id",
//! "klaviyo_webhook_id","timestamp","version"}}`.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::REVISION;
use super::state::{Ctx, State as Account, ulid};

/// The system webhook topic ids (`GET /api/webhook-topics`).
pub mod topics {
    /// A bounced email.
    pub const BOUNCED_EMAIL: &str = "event:klaviyo.bounced_email";
    /// A dropped email.
    pub const DROPPED_EMAIL: &str = "event:klaviyo.dropped_email";
    /// An SMS that failed to deliver.
    pub const FAILED_TO_DELIVER_SMS: &str = "event:klaviyo.failed_to_deliver_sms";
    /// An email marked as spam.
    pub const MARKED_EMAIL_AS_SPAM: &str = "event:klaviyo.marked_email_as_spam";
    /// Subscribed to email marketing.
    pub const SUBSCRIBED_TO_EMAIL: &str = "event:klaviyo.subscribed_to_email_marketing";
    /// Unsubscribed from email marketing.
    pub const UNSUBSCRIBED_FROM_EMAIL: &str = "event:klaviyo.unsubscribed_from_email_marketing";
    /// Subscribed to SMS marketing.
    pub const SUBSCRIBED_TO_SMS: &str = "event:klaviyo.subscribed_to_sms_marketing";
    /// Unsubscribed from SMS marketing.
    pub const UNSUBSCRIBED_FROM_SMS: &str = "event:klaviyo.unsubscribed_from_sms_marketing";
    /// Joined a list.
    pub const SUBSCRIBED_TO_LIST: &str = "event:klaviyo.subscribed_to_list";
    /// Left a list.
    pub const UNSUBSCRIBED_FROM_LIST: &str = "event:klaviyo.unsubscribed_from_list";
    /// Manually suppressed from email marketing.
    pub const SUPPRESSED_FROM_EMAIL: &str =
        "event:klaviyo.manually_suppressed_from_email_marketing";
    /// Manually unsuppressed from email marketing.
    pub const UNSUPPRESSED_FROM_EMAIL: &str =
        "event:klaviyo.manually_unsuppressed_from_email_marketing";

    /// Every topic id (Klaviyo's topic resources carry no name or other attributes).
    pub const ALL: &[&str] = &[
        BOUNCED_EMAIL,
        DROPPED_EMAIL,
        FAILED_TO_DELIVER_SMS,
        MARKED_EMAIL_AS_SPAM,
        SUBSCRIBED_TO_EMAIL,
        UNSUBSCRIBED_FROM_EMAIL,
        SUBSCRIBED_TO_SMS,
        UNSUBSCRIBED_FROM_SMS,
        SUBSCRIBED_TO_LIST,
        UNSUBSCRIBED_FROM_LIST,
        SUPPRESSED_FROM_EMAIL,
        UNSUPPRESSED_FROM_EMAIL,
    ];

    /// The name of Klaviyo's own metric behind a topic (`GET /api/metrics`), e.g. "Bounced
    /// Email"; `None` for a topic not in [`ALL`].
    pub fn metric_name(topic: &str) -> Option<&'static str> {
        Some(match topic {
            BOUNCED_EMAIL => "Bounced Email",
            DROPPED_EMAIL => "Dropped Email",
            FAILED_TO_DELIVER_SMS => "Failed to Deliver SMS",
            MARKED_EMAIL_AS_SPAM => "Marked Email as Spam",
            SUBSCRIBED_TO_EMAIL => "Subscribed to Email Marketing",
            UNSUBSCRIBED_FROM_EMAIL => "Unsubscribed from Email Marketing",
            SUBSCRIBED_TO_SMS => "Subscribed to SMS Marketing",
            UNSUBSCRIBED_FROM_SMS => "Unsubscribed from SMS Marketing",
            SUBSCRIBED_TO_LIST => "Subscribed to List",
            UNSUBSCRIBED_FROM_LIST => "Unsubscribed from List",
            SUPPRESSED_FROM_EMAIL => "Manually Suppressed from Email Marketing",
            UNSUPPRESSED_FROM_EMAIL => "Manually Unsuppressed from Email Marketing",
            _ => return None,
        })
    }
}

/// One system event to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemEvent {
    /// Topic id, e.g. [`topics::UNSUBSCRIBED_FROM_EMAIL`].
    pub topic: String,
    /// `external_id` of the batch entry (unique per event; receivers dedupe on it).
    pub external_id: String,
    /// The event id.
    pub event_id: String,
    /// `relationships.profile.data.id`.
    pub profile_id: String,
    /// `event_properties.email_address`.
    pub email: Option<String>,
    /// `event_properties.method`, e.g. `API`, `PREFERENCE_PAGE`.
    pub method: String,
    /// `event_properties.method_detail`.
    pub method_detail: Option<String>,
    /// `event_properties.custom_method_detail` (the `custom_source` of API changes).
    pub custom_method_detail: Option<String>,
    /// `event_properties.list_id` (list topics).
    pub list_id: Option<String>,
    /// `attributes.datetime`.
    pub datetime: jiff::Timestamp,
}

impl SystemEvent {
    /// An event of `topic` about a profile, happening now, method `API`.
    pub fn new(topic: &str, profile_id: &str, email: Option<&str>) -> Self {
        Self {
            topic: topic.into(),
            external_id: ulid(),
            event_id: ulid(),
            profile_id: profile_id.into(),
            email: email.map(str::to_owned),
            method: "API".into(),
            method_detail: None,
            custom_method_detail: None,
            list_id: None,
            datetime: jiff::Timestamp::now(),
        }
    }

    /// Sets the method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    /// Sets the method detail.
    pub fn method_detail(mut self, detail: Option<&str>) -> Self {
        self.method_detail = detail.map(str::to_owned);
        self
    }

    /// Sets the custom method detail.
    pub fn custom_method_detail(mut self, detail: Option<&str>) -> Self {
        self.custom_method_detail = detail.map(str::to_owned);
        self
    }

    /// Sets the list id.
    pub fn list_id(mut self, list_id: &str) -> Self {
        self.list_id = Some(list_id.into());
        self
    }

    /// Sets when it happened.
    pub fn at(mut self, datetime: jiff::Timestamp) -> Self {
        self.datetime = datetime;
        self
    }

    /// The event as `GET /api/events/{id}` returns it.
    pub fn payload(&self) -> Value {
        let mut properties = json!({
            "method": self.method,
            "method_detail": self.method_detail,
        });
        if let Some(email) = &self.email {
            properties["email_address"] = json!(email);
        }
        if let Some(detail) = &self.custom_method_detail {
            properties["custom_method_detail"] = json!(detail);
        }
        if let Some(list_id) = &self.list_id {
            properties["list_id"] = json!(list_id);
        }
        json!({
            "type": "event",
            "id": self.event_id,
            "attributes": {
                "timestamp": self.datetime.as_second(),
                "event_properties": properties,
                "datetime": self.datetime,
                "uuid": uuid::Uuid::new_v4().to_string()
            },
            "relationships": {
                "profile": {"data": {"type": "profile", "id": self.profile_id}},
                "metric": {"data": {"type": "metric", "id": metric_id(&self.topic)}}
            }
        })
    }
}

/// A stable 6-character metric id per topic (`GET /api/metrics` lists them).
pub(crate) fn metric_id(topic: &str) -> String {
    hex::encode(&Sha256::digest(topic.as_bytes())[..3])
}

/// One signed POST to one webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The webhook delivered to.
    pub webhook_id: String,
    /// Its (unmasked) endpoint.
    pub endpoint_url: String,
    /// The events in the batch.
    pub events: Vec<SystemEvent>,
    /// The raw body sent.
    pub body: String,
    /// The `Klaviyo-Timestamp` header.
    pub timestamp: String,
    /// The `Klaviyo-Signature` header.
    pub signature: String,
    /// The receiver's status, or `None` when the request failed.
    pub status: Option<u16>,
    /// The transport error, when the request failed.
    pub error: Option<String>,
}

/// Lowercase hex HMAC-SHA256(secret, body ‖ timestamp).
pub fn sign(secret: &str, body: &[u8], timestamp: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.update(timestamp.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Klaviyo-Timestamp` value for now shifted by `skew`.
fn timestamp_header(skew: jiff::SignedDuration) -> String {
    let now = SystemTime::now();
    let magnitude = Duration::try_from(skew.abs()).unwrap_or_default();
    let shifted = if skew.is_negative() {
        now.checked_sub(magnitude)
    } else {
        now.checked_add(magnitude)
    };
    httpdate::fmt_http_date(shifted.unwrap_or(now))
}

/// The most events one delivery carries (Klaviyo documents no batch size; this keeps a batch
/// of real-sized events far below the receivers' 256 KiB body limit).
pub const MAX_BATCH: usize = 100;

impl Account {
    /// Queues a system event in the outbox, to be delivered, and logs it for `GET /api/events`.
    pub(crate) fn queue_event(&mut self, event: SystemEvent) {
        self.event_log.record(&event);
        self.outbox.push(event);
    }
}

/// Drains the outbox and delivers it.
pub(crate) async fn deliver_pending(ctx: &Ctx) -> anyhow::Result<Vec<Delivery>> {
    let events = std::mem::take(&mut ctx.lock().outbox);
    deliver(ctx, events).await
}

/// Logs the events not logged yet (what a webhook carries, the API shows too), then builds and
/// sends, to every subscribed, enabled webhook, its events in batches of at most [`MAX_BATCH`].
pub(crate) async fn deliver(ctx: &Ctx, events: Vec<SystemEvent>) -> anyhow::Result<Vec<Delivery>> {
    let (webhooks, account_id, skew) = {
        let mut state = ctx.lock();
        for event in &events {
            state.event_log.record(event);
        }
        (
            state
                .webhooks
                .iter()
                .filter(|w| w.enabled)
                .cloned()
                .collect::<Vec<_>>(),
            state.options.account_id.clone(),
            state.options.delivery_timestamp_skew,
        )
    };
    let mut deliveries = Vec::new();
    for webhook in webhooks {
        let subscribed: Vec<SystemEvent> = events
            .iter()
            .filter(|e| webhook.topics.contains(&e.topic))
            .cloned()
            .collect();
        for batch in subscribed.chunks(MAX_BATCH) {
            let delivery = deliver_batch(ctx, &webhook, batch.to_vec(), &account_id, skew).await;
            deliveries.push(delivery);
        }
    }
    Ok(deliveries)
}

/// One signed POST of `batch` to `webhook`.
async fn deliver_batch(
    ctx: &Ctx,
    webhook: &super::Webhook,
    batch: Vec<SystemEvent>,
    account_id: &str,
    skew: jiff::SignedDuration,
) -> Delivery {
    let data: Vec<Value> = batch
            .iter()
            .map(|e| json!({"topic": e.topic, "external_id": e.external_id, "payload": {"data": e.payload()}}))
            .collect();
    let body = json!({
        "data": data,
        "meta": {
            "klaviyo_account_id": account_id,
            "klaviyo_webhook_id": webhook.id,
            "timestamp": jiff::Timestamp::now(),
            "version": REVISION
        }
    })
    .to_string();
    let timestamp = timestamp_header(skew);
    let mut delivery = Delivery {
        signature: sign(&webhook.secret_key, body.as_bytes(), &timestamp),
        webhook_id: webhook.id.clone(),
        endpoint_url: webhook.endpoint_url.clone(),
        events: batch,
        body,
        timestamp,
        status: None,
        error: None,
    };
    match post(&ctx.http, &delivery).await {
        Ok(status) => delivery.status = Some(status),
        Err(error) => delivery.error = Some(format!("{error:#}")),
    }
    delivery
}

/// POSTs a delivery as built; returns the receiver's status.
pub(crate) async fn post(http: &reqwest::Client, delivery: &Delivery) -> anyhow::Result<u16> {
    let response = http
        .post(&delivery.endpoint_url)
        .header("content-type", "application/json")
        .header("Klaviyo-Webhook-Id", &delivery.webhook_id)
        .header("Klaviyo-Timestamp", &delivery.timestamp)
        .header("Klaviyo-Signature", &delivery.signature)
        .body(delivery.body.clone())
        .send()
        .await
        .with_context(|| format!("delivering to webhook {}", delivery.webhook_id))?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_the_documented_properties() {
        let event = SystemEvent::new(topics::SUBSCRIBED_TO_LIST, "P1", Some("a@b.co"))
            .custom_method_detail(Some("omneo"))
            .list_id("AbC123");
        let payload = event.payload();
        let properties = &payload["attributes"]["event_properties"];
        assert_eq!(properties["email_address"], "a@b.co");
        assert_eq!(properties["method"], "API");
        assert_eq!(properties["custom_method_detail"], "omneo");
        assert_eq!(properties["list_id"], "AbC123");
        assert_eq!(payload["relationships"]["profile"]["data"]["id"], "P1");
        assert!(payload["attributes"]["datetime"].is_string());
    }

    #[test]
    fn every_topic_has_a_metric_with_its_own_id() {
        let ids: std::collections::HashSet<String> = topics::ALL
            .iter()
            .map(|topic| {
                assert!(topics::metric_name(topic).is_some(), "{topic}");
                metric_id(topic)
            })
            .collect();
        assert_eq!(ids.len(), topics::ALL.len());
        assert!(ids.iter().all(|id| id.len() == 6));
        assert_eq!(topics::metric_name("event:klaviyo.opened_email"), None);
    }

    #[test]
    fn skewed_timestamps_are_http_dates() {
        let header = timestamp_header(jiff::SignedDuration::from_hours(-3));
        let parsed = httpdate::parse_http_date(&header).unwrap();
        let behind = SystemTime::now().duration_since(parsed).unwrap();
        assert!(behind > Duration::from_secs(3 * 3600 - 60));
    }
}
