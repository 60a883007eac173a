//! Klaviyo → Omneo end to end, over real sockets: the simulated Klaviyo delivers a signed system
//! webhook (or a Flow webhook calls us) → `klaviyo-webhook` → the local queue → `inbound-task` →
//! the simulated Omneo (comms, interactions, rewards, benefits) and, for the master list, Klaviyo.

mod events;
mod faults;
mod flow;
mod receiver;

use harness::klaviyo::SystemEvent;
use harness::klaviyo::deliveries::sign;
use serde_json::{Value, json};

use crate::pipeline::Pipeline;

/// The system webhook path.
pub(crate) const SYSTEM: &str = "/api/v1/webhooks/klaviyo/system";

/// A system-webhook delivery built by hand, to be tampered with before it is signed and sent.
pub(crate) struct Handmade {
    /// The body document.
    pub body: Value,
    /// The `Klaviyo-Timestamp` header.
    pub timestamp: String,
    /// The `Klaviyo-Webhook-Id` header.
    pub webhook_id: String,
}

impl Handmade {
    /// A delivery of `events` from the tenant's webhook and account, as Klaviyo would send it now.
    pub fn of(o: &Pipeline, events: &[SystemEvent]) -> Self {
        let webhook = o.klaviyo_webhook();
        let data: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({"topic": e.topic, "external_id": e.external_id, "payload": {"data": e.payload()}})
            })
            .collect();
        Self {
            body: json!({
                "data": data,
                "meta": {
                    "klaviyo_account_id": o.t.klaviyo.options().account_id,
                    "klaviyo_webhook_id": webhook.id,
                    "timestamp": jiff::Timestamp::now(),
                    "version": harness::klaviyo::REVISION,
                }
            }),
            timestamp: httpdate::fmt_http_date(std::time::SystemTime::now()),
            webhook_id: webhook.id,
        }
    }

    /// Signs it with `secret` and sends it; the response.
    pub async fn send_signed_with(&self, o: &Pipeline, secret: &str) -> reqwest::Response {
        let body = self.body.to_string();
        let signature = sign(secret, body.as_bytes(), &self.timestamp);
        self.send(o, body.as_bytes(), &signature).await
    }

    /// Sends `body` as this delivery with `signature`.
    pub async fn send(&self, o: &Pipeline, body: &[u8], signature: &str) -> reqwest::Response {
        o.post(
            SYSTEM,
            &[
                ("Klaviyo-Webhook-Id", &self.webhook_id),
                ("Klaviyo-Timestamp", &self.timestamp),
                ("Klaviyo-Signature", signature),
            ],
            body,
        )
        .await
    }
}

/// A response's status and JSON error body (`Null` for an empty body).
pub(crate) async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}
