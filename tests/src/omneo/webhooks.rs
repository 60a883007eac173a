//! Webhooks: `GET /webhooks` (`filter[namespace]`, `filter[trigger]`, paged), `POST /webhooks`,
//! `GET|PUT|DELETE /webhooks/{id}`, and signed deliveries.
//!
//! A delivery is `POST <url>` with the resource JSON as the body, `X-Omneo-Event: <trigger>` and
//! `X-Omneo-Hmac-SHA256: <lowercase hex HMAC-SHA256(body, tenant signing secret)>`. Target calls
//! (Omneo reactions calling the extension) carry the same signature header and no event header.
//! Each delivery is one attempt; its outcome (receiver status and body, or the connection error)
//! is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use tokio::task::JoinHandle;

use super::responses::{
    self, ApiError, PageRequest, Validator, created, data, json_object, no_content,
};
use super::state::{Caller, ProfileEvent, Shared, Tenant};

/// Header carrying the trigger of a webhook delivery.
pub const EVENT_HEADER: &str = "X-Omneo-Event";
/// Header carrying the body signature of deliveries and target calls.
pub const SIGNATURE_HEADER: &str = "X-Omneo-Hmac-SHA256";

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Integer id.
    pub id: u64,
    /// e.g. `profile.updated`.
    pub trigger: String,
    /// Where deliveries go.
    pub url: String,
    /// Owner namespace; changes made with a token of this namespace are not delivered here.
    pub namespace: String,
    /// Inactive webhooks never receive deliveries.
    pub is_active: bool,
    /// Delivery queue name.
    pub queue: Option<String>,
    /// Delivery condition (opaque to the simulator).
    pub condition: Option<Value>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub updated_at: String,
}

/// What a new webhook is made of (the body of `POST /webhooks`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewWebhook {
    /// Trigger.
    pub trigger: String,
    /// Target URL.
    pub url: String,
    /// Owner namespace.
    pub namespace: String,
    /// Active from the start.
    pub is_active: bool,
    /// Queue name.
    pub queue: Option<String>,
    /// Condition.
    pub condition: Option<Value>,
}

impl NewWebhook {
    /// An active webhook without queue or condition.
    pub fn new(trigger: &str, url: &str, namespace: &str) -> Self {
        Self {
            trigger: trigger.into(),
            url: url.into(),
            namespace: namespace.into(),
            is_active: true,
            queue: None,
            condition: None,
        }
    }
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// Validates the webhook fields present in `body` onto `webhook` (all required when `creating`).
fn apply_fields(
    webhook: &mut NewWebhook,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), ApiError> {
    let mut v = Validator::default();
    for (field, slot) in [
        ("trigger", &mut webhook.trigger),
        ("url", &mut webhook.url),
        ("namespace", &mut webhook.namespace),
    ] {
        if (creating || body.contains_key(field))
            && let Some(value) = v.required_string(body, field)
        {
            *slot = value;
        }
    }
    if body.contains_key("url") && !webhook.url.is_empty() && !is_http_url(&webhook.url) {
        v.fail("url", "The url field must be a valid URL.");
    }
    if let Some(active) = v.nullable_bool(body, "is_active") {
        webhook.is_active = active.unwrap_or(true);
    }
    if let Some(queue) = v.nullable_string(body, "queue") {
        webhook.queue = queue;
    }
    if let Some(condition) = body.get("condition") {
        webhook.condition = (!condition.is_null()).then(|| condition.clone());
    }
    v.finish()
}

impl Tenant {
    fn webhook_index(&self, id: u64) -> Result<usize, ApiError> {
        self.webhooks
            .iter()
            .position(|w| w.id == id)
            .ok_or_else(|| ApiError::not_found("Webhook"))
    }

    /// 422 when another webhook than `except` has the same (trigger, url).
    fn check_webhook_unique(
        &self,
        except: Option<u64>,
        trigger: &str,
        url: &str,
    ) -> Result<(), ApiError> {
        let clash = self
            .webhooks
            .iter()
            .any(|w| Some(w.id) != except && w.trigger == trigger && w.url == url);
        if clash {
            return Err(ApiError::taken("trigger"));
        }
        Ok(())
    }

    /// Creates a webhook (422 when (trigger, url) is taken).
    pub(crate) fn create_webhook(&mut self, new: NewWebhook) -> Result<Webhook, ApiError> {
        self.check_webhook_unique(None, &new.trigger, &new.url)?;
        let now = responses::now();
        let webhook = Webhook {
            id: self.next_id(),
            trigger: new.trigger,
            url: new.url,
            namespace: new.namespace,
            is_active: new.is_active,
            queue: new.queue,
            condition: new.condition,
            created_at: now.clone(),
            updated_at: now,
        };
        self.webhooks.push(webhook.clone());
        Ok(webhook)
    }

    fn update_webhook(&mut self, id: u64, body: &Map<String, Value>) -> Result<Webhook, ApiError> {
        let index = self.webhook_index(id)?;
        let current = self.webhooks[index].clone();
        let mut fields = NewWebhook {
            trigger: current.trigger.clone(),
            url: current.url.clone(),
            namespace: current.namespace.clone(),
            is_active: current.is_active,
            queue: current.queue.clone(),
            condition: current.condition.clone(),
        };
        apply_fields(&mut fields, body, false)?;
        self.check_webhook_unique(Some(id), &fields.trigger, &fields.url)?;
        let mut next = Webhook {
            trigger: fields.trigger,
            url: fields.url,
            namespace: fields.namespace,
            is_active: fields.is_active,
            queue: fields.queue,
            condition: fields.condition,
            ..current.clone()
        };
        if next != current {
            next.updated_at = responses::now();
        }
        self.webhooks[index] = next.clone();
        Ok(next)
    }

    /// Turns every webhook on, as the CX Manager toggle does (`updated_at` bumped on those that
    /// were off); answers them all.
    pub(crate) fn activate_webhooks(&mut self) -> Vec<Webhook> {
        let now = responses::now();
        for webhook in self.webhooks.iter_mut().filter(|w| !w.is_active) {
            webhook.is_active = true;
            webhook.updated_at.clone_from(&now);
        }
        self.webhooks.clone()
    }

    /// The signed deliveries of `event`: every active webhook of its trigger whose namespace is
    /// not `origin` (Omneo's loop guard). The body is serialised and signed once, and only when
    /// some webhook receives it.
    pub(crate) fn webhook_requests(
        &self,
        event: &ProfileEvent,
        origin: Option<&str>,
    ) -> Vec<SignedRequest> {
        let mut recipients = self
            .webhooks
            .iter()
            .filter(|w| w.is_active && w.trigger == event.trigger.as_str())
            .filter(|w| origin != Some(w.namespace.as_str()))
            .peekable();
        if recipients.peek().is_none() {
            return Vec::new();
        }
        let body = event.body();
        let signature = sign(&self.signing_secret, body.as_bytes());
        recipients
            .map(|w| SignedRequest {
                tenant: self.name.clone(),
                webhook_id: Some(w.id),
                event: Some(event.trigger.as_str().to_owned()),
                url: w.url.clone(),
                signature: signature.clone(),
                body: body.clone(),
            })
            .collect()
    }

    /// A signed target call of `body` to `url`.
    pub(crate) fn target_request(&self, url: &str, body: String) -> SignedRequest {
        SignedRequest {
            tenant: self.name.clone(),
            webhook_id: None,
            event: None,
            url: url.into(),
            signature: sign(&self.signing_secret, body.as_bytes()),
            body,
        }
    }
}

/// Lowercase hex HMAC-SHA256 of `body` keyed with `secret` (the `X-Omneo-Hmac-SHA256` value).
pub fn sign(secret: &str, body: &[u8]) -> String {
    hex::encode(sign_raw(secret, body))
}

/// HMAC-SHA256 of `body` keyed with `secret`.
pub(crate) fn sign_raw(secret: &str, body: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// `{id}` of a webhook path.
#[derive(Debug, Deserialize)]
pub(crate) struct WebhookPath {
    id: String,
}

impl WebhookPath {
    fn id(&self) -> Result<u64, ApiError> {
        self.id.parse().map_err(|_| ApiError::not_found("Webhook"))
    }
}

/// `GET /webhooks` (`filter[namespace]`, `filter[trigger]`, paged).
pub(crate) async fn list(
    caller: Caller,
    State(sim): State<Shared>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let page = PageRequest::from_query(&query)?;
    let namespace = query.get("filter[namespace]");
    let trigger = query.get("filter[trigger]");
    let webhooks = sim.read(&caller.tenant, |t| {
        Ok(t.webhooks
            .iter()
            .filter(|w| namespace.is_none_or(|n| *n == w.namespace))
            .filter(|w| trigger.is_none_or(|n| *n == w.trigger))
            .cloned()
            .collect::<Vec<_>>())
    })?;
    Ok(page.respond(webhooks, &headers, uri.path(), &query))
}

/// `GET /webhooks/{id}`.
pub(crate) async fn show(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<WebhookPath>,
) -> Result<Response, ApiError> {
    let id = path.id()?;
    sim.read(&caller.tenant, |t| {
        Ok(data(&t.webhooks[t.webhook_index(id)?]))
    })
}

/// `POST /webhooks` `{trigger,url,namespace,is_active,queue?,condition?}` → 201.
pub(crate) async fn create(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let mut new = NewWebhook::new("", "", "");
    apply_fields(&mut new, &body, true)?;
    let webhook = sim.change(&caller.tenant, None, |t| Ok((t.create_webhook(new)?, None)))?;
    Ok(created(webhook))
}

/// `PUT /webhooks/{id}`: partial.
pub(crate) async fn update(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<WebhookPath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = path.id()?;
    let body = json_object(&body)?;
    let webhook = sim.change(&caller.tenant, None, |t| {
        Ok((t.update_webhook(id, &body)?, None))
    })?;
    Ok(data(webhook))
}

/// `DELETE /webhooks/{id}` → 204.
pub(crate) async fn delete(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<WebhookPath>,
) -> Result<Response, ApiError> {
    let id = path.id()?;
    sim.change(&caller.tenant, None, |t| {
        let index = t.webhook_index(id)?;
        t.webhooks.remove(index);
        Ok(((), None))
    })?;
    Ok(no_content())
}

/// A signed request about to be sent.
#[derive(Debug, Clone)]
pub(crate) struct SignedRequest {
    tenant: String,
    webhook_id: Option<u64>,
    event: Option<String>,
    url: String,
    body: String,
    signature: String,
}

/// One webhook delivery or target call the simulator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Sequence number (1-based, across tenants).
    pub id: u64,
    /// The tenant it was sent for.
    pub tenant: String,
    /// The webhook delivered to; `None` for a target call.
    pub webhook_id: Option<u64>,
    /// `X-Omneo-Event` (the trigger); `None` for a target call.
    pub event: Option<String>,
    /// Where it was sent.
    pub url: String,
    /// The raw body sent.
    pub body: String,
    /// `X-Omneo-Hmac-SHA256` sent.
    pub signature: String,
    /// What happened.
    pub outcome: DeliveryOutcome,
}

impl Delivery {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Still in flight.
    Pending,
    /// The receiver answered.
    Answered {
        /// HTTP status.
        status: u16,
        /// Response body (lossy UTF-8).
        body: String,
    },
    /// No answer (connection refused, timeout…).
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl DeliveryOutcome {
    /// The receiver's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Answered { status, .. } => Some(*status),
            Self::Pending | Self::Failed { .. } => None,
        }
    }
}

/// Sends signed requests and keeps the log of deliveries.
#[derive(Clone)]
pub(crate) struct Deliveries {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    log: Arc<Mutex<Vec<Delivery>>>,
    in_flight: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Deliveries {
    /// Must be called inside a Tokio runtime: deliveries run on it.
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the webhook delivery client")?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the Omneo simulator must start inside a Tokio runtime")?;
        Ok(Self {
            client,
            runtime,
            log: Arc::default(),
            in_flight: Arc::default(),
        })
    }

    /// Records every request as pending now, and sends them in the background.
    pub(crate) fn dispatch(&self, requests: Vec<SignedRequest>) {
        for request in requests {
            let id = self.record(&request);
            let this = self.clone();
            let task = self
                .runtime
                .spawn(async move { this.deliver(id, request).await });
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            in_flight.retain(|t| !t.is_finished());
            in_flight.push(task);
        }
    }

    /// Sends one request now and answers its recorded delivery.
    pub(crate) async fn send(&self, request: SignedRequest) -> Delivery {
        let id = self.record(&request);
        self.deliver(id, request).await;
        self.all()
            .into_iter()
            .find(|d| d.id == id)
            .expect("a recorded delivery stays in the log")
    }

    /// Every delivery so far, in order.
    pub(crate) fn all(&self) -> Vec<Delivery> {
        self.log.lock().expect("delivery log lock").clone()
    }

    /// Waits until every dispatched delivery has its outcome.
    pub(crate) async fn settle(&self) {
        loop {
            let tasks: Vec<_> =
                std::mem::take(&mut *self.in_flight.lock().expect("in-flight lock"));
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                // A delivery task only panics if the log lock is poisoned; nothing to add then.
                let _ = task.await;
            }
        }
    }

    fn record(&self, request: &SignedRequest) -> u64 {
        let mut log = self.log.lock().expect("delivery log lock");
        let id = log.len() as u64 + 1;
        log.push(Delivery {
            id,
            tenant: request.tenant.clone(),
            webhook_id: request.webhook_id,
            event: request.event.clone(),
            url: request.url.clone(),
            body: request.body.clone(),
            signature: request.signature.clone(),
            outcome: DeliveryOutcome::Pending,
        });
        id
    }

    async fn deliver(&self, id: u64, request: SignedRequest) {
        let mut call = self
            .client
            .post(&request.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &request.signature)
            .body(request.body);
        if let Some(event) = &request.event {
            call = call.header(EVENT_HEADER, event);
        }
        let outcome = match call.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                DeliveryOutcome::Answered { status, body }
            }
            Err(error) => DeliveryOutcome::Failed {
                error: format!("{error:#}"),
            },
        };
        let mut log = self.log.lock().expect("delivery log lock");
        if let Some(delivery) = log.iter_mut().find(|d| d.id == id) {
            delivery.outcome = outcome;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_lowercase_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
