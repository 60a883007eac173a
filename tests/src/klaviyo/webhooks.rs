//! The Webhooks API: at most 10 per account; responses never return `secret_key` and mask the
//! `endpoint_url` path as `/*****`; PATCH replaces the topic set and may set `enabled`.
//!
//! Deviation: real Klaviyo accepts only `https://` endpoints; the simulator also accepts
//! `http://` when the host is loopback (`127.0.0.1`, `::1`, `localhost`), so tests and
//! `make dev` can receive deliveries without TLS.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::deliveries::topics;
use super::jsonapi::{ApiError, Data, Doc, Here, ResourceId, document, expect_type, present};
use super::state::{Ctx, State as Account, ulid};

/// The most webhooks one account may have.
pub const MAX_WEBHOOKS: usize = 10;

/// A webhook as stored (unmasked, with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Webhook {
    /// 26-character ULID.
    pub id: String,
    /// Name (the extension finds its webhook by name).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Where deliveries go.
    pub endpoint_url: String,
    /// The HMAC key of deliveries.
    pub secret_key: String,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Subscribed topic ids.
    pub topics: Vec<String>,
    /// When it was created.
    pub created_at: jiff::Timestamp,
    /// When it was last changed.
    pub updated_at: jiff::Timestamp,
}

/// `scheme://host[:port]/*****`, as Klaviyo shows endpoint URLs.
pub fn mask_url(endpoint_url: &str) -> String {
    url::Url::parse(endpoint_url).map_or_else(
        |_| "/*****".to_owned(),
        |u| format!("{}/*****", u.origin().ascii_serialization()),
    )
}

impl Webhook {
    fn resource(&self, here: &Here) -> Value {
        let topics: Vec<Value> = self
            .topics
            .iter()
            .map(|t| json!({"type": "webhook-topic", "id": t}))
            .collect();
        let path = format!("/api/webhooks/{}/", self.id);
        json!({
            "type": "webhook",
            "id": self.id,
            "attributes": {
                "name": self.name,
                "description": self.description,
                "endpoint_url": mask_url(&self.endpoint_url),
                "enabled": self.enabled,
                "created_at": self.created_at,
                "updated_at": self.updated_at
            },
            "relationships": {"webhook-topics": {
                "data": topics,
                "links": here.relationship_links(&path, "webhook-topics")
            }},
            "links": {"self": here.link(&path)}
        })
    }
}

fn check_endpoint(endpoint_url: &str) -> Result<(), ApiError> {
    let invalid = || {
        ApiError::invalid(
            "endpoint_url must be an https URL.",
            "/data/attributes/endpoint_url",
        )
    };
    let url = url::Url::parse(endpoint_url).map_err(|_| invalid())?;
    let loopback = matches!(url.host(), Some(url::Host::Domain("localhost")))
        || match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(invalid()),
    }
}

fn check_topics(ids: &[ResourceId]) -> Result<Vec<String>, ApiError> {
    let pointer = "/data/relationships/webhook-topics/data";
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "At least one topic is required.",
            pointer,
        ));
    }
    ids.iter()
        .enumerate()
        .map(|(i, topic)| {
            expect_type(&topic.kind, "webhook-topic", &format!("{pointer}/{i}/type"))?;
            if topics::ALL.contains(&topic.id.as_str()) {
                Ok(topic.id.clone())
            } else {
                Err(ApiError::invalid(
                    format!("Unknown webhook topic '{}'.", topic.id),
                    &format!("{pointer}/{i}/id"),
                ))
            }
        })
        .collect()
}

impl Account {
    fn webhook_index(&self, id: &str) -> Result<usize, ApiError> {
        self.webhooks
            .iter()
            .position(|w| w.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Webhook {id} not found.")))
    }
}

#[derive(Deserialize)]
pub(crate) struct WebhookDocument {
    data: WebhookData,
}

#[derive(Deserialize)]
struct WebhookData {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    attributes: WebhookAttributes,
    #[serde(default)]
    relationships: Option<WebhookRelationships>,
}

#[derive(Deserialize, Default)]
struct WebhookAttributes {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
struct WebhookRelationships {
    #[serde(rename = "webhook-topics")]
    topics: Data<Vec<ResourceId>>,
}

/// `GET /api/webhooks` — every webhook, masked.
pub(crate) async fn list(State(ctx): State<Ctx>, here: Here) -> Response {
    let data: Vec<Value> = ctx
        .lock()
        .webhooks
        .iter()
        .map(|w| w.resource(&here))
        .collect();
    document(
        StatusCode::OK,
        &json!({ "data": data, "links": {"self": here.link("/api/webhooks/"), "next": null, "prev": null} }),
    )
}

/// `POST /api/webhooks` — 201; the 11th is 400.
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    here: Here,
    Doc(doc): Doc<WebhookDocument>,
) -> Result<Response, ApiError> {
    let data = doc.data;
    expect_type(&data.kind, "webhook", "/data/type")?;
    let attributes = data.attributes;
    let required = |value: Option<String>, name: &str| {
        value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            ApiError::invalid(
                format!("{name} is required."),
                &format!("/data/attributes/{name}"),
            )
        })
    };
    let name = required(attributes.name, "name")?;
    let endpoint_url = required(attributes.endpoint_url, "endpoint_url")?;
    let secret_key = required(attributes.secret_key, "secret_key")?;
    check_endpoint(&endpoint_url)?;
    let topic_ids = data
        .relationships
        .map(|r| r.topics.data)
        .unwrap_or_default();
    let topics = check_topics(&topic_ids)?;
    let mut state = ctx.lock();
    if state.webhooks.len() >= MAX_WEBHOOKS {
        return Err(ApiError::invalid(
            format!("An account may have at most {MAX_WEBHOOKS} webhooks."),
            "/data",
        ));
    }
    let now = jiff::Timestamp::now();
    let webhook = Webhook {
        id: ulid(),
        name,
        description: attributes.description.flatten(),
        endpoint_url,
        secret_key,
        enabled: attributes.enabled.unwrap_or(true),
        topics,
        created_at: now,
        updated_at: now,
    };
    state.webhooks.push(webhook.clone());
    Ok(document(
        StatusCode::CREATED,
        &json!({ "data": webhook.resource(&here) }),
    ))
}

/// `GET /api/webhooks/{id}`.
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let state = ctx.lock();
    let webhook = &state.webhooks[state.webhook_index(&id)?];
    Ok(document(
        StatusCode::OK,
        &json!({ "data": webhook.resource(&here) }),
    ))
}

/// `PATCH /api/webhooks/{id}` — 200; topics given replace the set.
pub(crate) async fn update(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
    Doc(doc): Doc<WebhookDocument>,
) -> Result<Response, ApiError> {
    let data = doc.data;
    expect_type(&data.kind, "webhook", "/data/type")?;
    if data.id.as_deref() != Some(id.as_str()) {
        return Err(ApiError::invalid("data.id must match the URL.", "/data/id"));
    }
    let attributes = data.attributes;
    if let Some(url) = &attributes.endpoint_url {
        check_endpoint(url)?;
    }
    let topics = match data.relationships {
        Some(r) => Some(check_topics(&r.topics.data)?),
        None => None,
    };
    let mut state = ctx.lock();
    let index = state.webhook_index(&id)?;
    let webhook = &mut state.webhooks[index];
    if let Some(name) = attributes.name {
        webhook.name = name;
    }
    if let Some(description) = attributes.description {
        webhook.description = description;
    }
    if let Some(url) = attributes.endpoint_url {
        webhook.endpoint_url = url;
    }
    if let Some(secret) = attributes.secret_key {
        webhook.secret_key = secret;
    }
    if let Some(enabled) = attributes.enabled {
        webhook.enabled = enabled;
    }
    if let Some(topics) = topics {
        webhook.topics = topics;
    }
    webhook.updated_at = jiff::Timestamp::now();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": webhook.resource(&here) }),
    ))
}

/// `DELETE /api/webhooks/{id}` — 204.
pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut state = ctx.lock();
    let index = state.webhook_index(&id)?;
    state.webhooks.remove(index);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/webhook-topics` — identifiers and links only, as Klaviyo's schema has them.
pub(crate) async fn list_topics(here: Here) -> Response {
    let data: Vec<Value> = topics::ALL
        .iter()
        .map(|id| {
            json!({
                "type": "webhook-topic",
                "id": id,
                "links": {"self": here.link(&format!("/api/webhook-topics/{id}/"))}
            })
        })
        .collect();
    document(
        StatusCode::OK,
        &json!({ "data": data, "links": {"self": here.link("/api/webhook-topics/"), "next": null, "prev": null} }),
    )
}
