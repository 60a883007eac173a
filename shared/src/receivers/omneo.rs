//! `omneo-webhook` (product.md §2, §6.1, §6.5): Omneo's profile webhooks and the three Klaviyo
//! targets Omneo reactions call.
//!
//! Every request goes: tenant (404 when unknown) → signature (401) → install (404 when not
//! installed) → typed parse of only what the task needs (400 naming the field) → enqueue on the
//! tenant's outbound queue → 202. The signature is checked on the raw bytes before anything is
//! parsed.
//!
//! - `POST /{tenant}/api/v1/webhooks/omneo`, `X-Omneo-Hmac-SHA256` = hex HMAC-SHA256 of the body
//!   under the tenant's signing secret, routed on `X-Omneo-Event`: `profile.created` and
//!   `profile.updated` become a *sync profile* task **coalesced** per profile — the task is named
//!   from (tenant, profile, time bucket of `coalesce_seconds`) and scheduled at the bucket's end,
//!   so N updates inside a window are one task, and the worker re-reads the profile;
//!   `profile.deleted` becomes a *profile deleted* task carrying the identifiers the worker can
//!   no longer read. Other events are answered 202 `ignored` (so Omneo does not retry them).
//! - The targets accept the same signature or, instead, `x-omneo-secret` = the tenant's
//!   `webhook_secret` (the previous one too while a rotation's grace lasts):
//!   - `metric[?withToken=true]`: a Klaviyo event, with or without the `data` envelope, naming its
//!     profile by Klaviyo id or email; a missing `unique_id` is set to a hash of the body, so
//!     Omneo's retries of one call are one Klaviyo event (and one task).
//!   - `upsert-profile-data`: `{"id" | "profile_id"}` → a sync now, without the coalescing delay.
//!   - `data-source-record`: `{"data_source": title or short name, "record": {"id", "email" |
//!     "profile_id", …}}` → a record in that data source.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::post;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{
    Accepted, Delivery, Receiver, ReceiverTenant, SHARED_SECRET_HEADER, TenantSegment, enqueue,
    enqueue_carrying, invalid_signature, task_now, verify_hex_hmac, verify_shared_secret,
};
use crate::api_error::{ApiError, parse_json};
use crate::app::App;
use crate::domain::{DataSourceKind, KlaviyoProfileId, OmneoProfileId};
use crate::omneo::models::{Identity, profile_id};
use crate::queue::{
    DataSourceRecord, Direction, ProfileDeleted, QueueName, SendMetric, SyncProfile, Task,
    TaskName, Work,
};

/// `X-Omneo-Hmac-SHA256`: hex HMAC-SHA256 of the raw body under the tenant's signing secret.
pub const SIGNATURE_HEADER: &str = "x-omneo-hmac-sha256";
/// `X-Omneo-Event`: the trigger of a webhook delivery.
pub const EVENT_HEADER: &str = "x-omneo-event";

/// The routes of `omneo-webhook`.
pub fn routes(app: Arc<App>) -> Router {
    let receiver = Receiver::new(app);
    Router::new()
        .route("/{tenant}/api/v1/webhooks/omneo", post(webhook))
        .route("/{tenant}/api/v1/targets/klaviyo/metric", post(metric))
        .route(
            "/{tenant}/api/v1/targets/klaviyo/upsert-profile-data",
            post(upsert_profile_data),
        )
        .route(
            "/{tenant}/api/v1/targets/klaviyo/data-source-record",
            post(data_source_record),
        )
        .with_state(receiver)
}

/// The Omneo events this receiver acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileTrigger {
    /// `profile.created` or `profile.updated`.
    Changed,
    /// `profile.deleted`.
    Deleted,
}

impl ProfileTrigger {
    /// The trigger an `X-Omneo-Event` value names; `None` for events this receiver ignores.
    pub fn parse(event: &str) -> Option<Self> {
        match event {
            "profile.created" | "profile.updated" => Some(Self::Changed),
            "profile.deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// What a changed profile's webhook needs: the id (the worker re-reads the rest).
#[derive(Deserialize)]
pub struct ChangedProfile {
    #[serde(deserialize_with = "profile_id")]
    id: OmneoProfileId,
}

/// What a deleted profile's webhook needs: the identifiers Klaviyo can be asked by.
#[derive(Deserialize)]
pub struct DeletedProfile {
    #[serde(deserialize_with = "profile_id")]
    id: OmneoProfileId,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    mobile_phone: Option<String>,
    #[serde(default)]
    identities: Option<Vec<Identity>>,
}

/// `POST /{tenant}/api/v1/webhooks/omneo`.
async fn webhook(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let tenant = receiver.tenants.find(&tenant).await?;
    verify_hex_hmac(
        &headers,
        SIGNATURE_HEADER,
        &tenant.omneo_signing_key,
        &[&body],
    )?;
    let queue = tenant.queue(Direction::Outbound)?.clone();
    let event = headers
        .get(EVENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|event| !event.is_empty())
        .ok_or_else(|| ApiError::invalid_field("X-Omneo-Event", "missing X-Omneo-Event header"))?;
    let Some(trigger) = ProfileTrigger::parse(event) else {
        tracing::info!(tenant = %tenant.id, event, "ignored an Omneo event this extension does not handle");
        return Ok(Accepted::Ignored);
    };
    let now = Timestamp::now();
    let task = match trigger {
        ProfileTrigger::Changed => {
            let profile: ChangedProfile = parse_json(&body)?;
            Task::coalesced_sync(
                &tenant.id,
                queue,
                profile.id,
                tenant.settings.coalesce_seconds,
                now,
            )
        }
        ProfileTrigger::Deleted => {
            let profile: DeletedProfile = parse_json(&body)?;
            let handle = &tenant.settings.identity_handle;
            let klaviyo_profile_id = profile
                .identities
                .unwrap_or_default()
                .into_iter()
                .find(|identity| &identity.handle == handle)
                .and_then(|identity| KlaviyoProfileId::parse(identity.identifier).ok());
            let name = TaskName::from_parts(&["deleted", tenant.id.as_str(), profile.id.as_str()]);
            let work = Work::ProfileDeleted(ProfileDeleted {
                profile_id: profile.id,
                email: profile.email.filter(|email| !email.trim().is_empty()),
                mobile_phone: profile
                    .mobile_phone
                    .filter(|phone| !phone.trim().is_empty()),
                klaviyo_profile_id,
            });
            task_now(&tenant.id, queue, work, name)
        }
    };
    enqueue(receiver.app.queue.as_ref(), task).await
}

/// `?withToken=true|false` (absent: false), read after authentication so an unauthenticated
/// caller learns nothing from a bad query.
pub fn with_token(query: Option<&str>) -> Result<bool, ApiError> {
    let mut with_token = false;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name == "withToken" {
            with_token = match value.as_ref() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::invalid_field(
                        "withToken",
                        format!("must be true or false, not {other:?}"),
                    ));
                }
            };
        }
    }
    Ok(with_token)
}

/// `POST /{tenant}/api/v1/targets/klaviyo/metric[?withToken=true]`.
async fn metric(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    RawQuery(query): RawQuery,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let (tenant, queue) = receiver.target(&tenant, &headers, &body).await?;
    let with_token = with_token(query.as_deref())?;
    let event = metric_event(&body)?;
    let unique_id = event
        .pointer("/data/attributes/unique_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = TaskName::from_parts(&[
        "metric",
        tenant.id.as_str(),
        &unique_id,
        if with_token { "with-token" } else { "plain" },
    ]);
    let work = Work::SendMetric(SendMetric { event, with_token });
    receiver
        .enqueue_now(&tenant, queue, work, name, "body")
        .await
}

/// The target's body as a Klaviyo event document `{"data": {"type": "event", "attributes":
/// {…}}}`, checked for a metric name and a profile, with a `unique_id` (a hash of the body when
/// it has none).
pub fn metric_event(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = parse_json(body)?;
    let (mut data, prefix) = match value {
        Value::Object(mut document) if document.contains_key("data") => {
            (document.remove("data").unwrap_or_default(), "data.")
        }
        other => (other, ""),
    };
    let field = |path: &str| format!("{prefix}{path}");
    if !data.get("attributes").is_some_and(Value::is_object) {
        return Err(ApiError::invalid_field(
            field("attributes"),
            "must be an object",
        ));
    }
    let text_at = |pointer: &str| {
        data.pointer(pointer)
            .and_then(Value::as_str)
            .is_some_and(|text| !text.trim().is_empty())
    };
    if !text_at("/attributes/metric/data/attributes/name") {
        return Err(ApiError::invalid_field(
            field("attributes.metric.data.attributes.name"),
            "the event must name its metric",
        ));
    }
    if !text_at("/attributes/profile/data/id")
        && !text_at("/attributes/profile/data/attributes/email")
    {
        return Err(ApiError::invalid_field(
            field("attributes.profile"),
            "the event must name its profile by attributes.profile.data.id or attributes.profile.data.attributes.email",
        ));
    }
    let has_unique_id = text_at("/attributes/unique_id");
    let Some(object) = data.as_object_mut() else {
        return Err(ApiError::invalid_field("body", "must be a JSON object"));
    };
    if !has_unique_id {
        let attributes = object
            .get_mut("attributes")
            .and_then(Value::as_object_mut)
            .expect("checked to be an object above");
        attributes.insert(
            "unique_id".into(),
            Value::String(hex::encode(Sha256::digest(body))),
        );
    }
    object.insert("type".into(), Value::String("event".into()));
    Ok(serde_json::json!({ "data": data }))
}
/// The profile an `upsert-profile-data` call names.
#[derive(Deserialize)]
pub struct UpsertProfile {
    #[serde(default, deserialize_with = "optional_profile_id")]
    id: Option<OmneoProfileId>,
    #[serde(default, deserialize_with = "optional_profile_id")]
    profile_id: Option<OmneoProfileId>,
}

fn optional_profile_id<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OmneoProfileId>, D::Error> {
    #[derive(Deserialize)]
    struct Id(#[serde(deserialize_with = "profile_id")] OmneoProfileId);
    Ok(Option::<Id>::deserialize(deserializer)?.map(|Id(id)| id))
}

/// `POST /{tenant}/api/v1/targets/klaviyo/upsert-profile-data`.
async fn upsert_profile_data(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let (tenant, queue) = receiver.target(&tenant, &headers, &body).await?;
    let named: UpsertProfile = parse_json(&body)?;
    let profile = named.id.or(named.profile_id).ok_or_else(|| {
        ApiError::invalid_field("id", "name the Omneo profile by id or profile_id")
    })?;
    // One task per profile and second: a repeat of the same call within the second is one sync.
    let now = Timestamp::now();
    let name = TaskName::from_parts(&[
        "upsert",
        tenant.id.as_str(),
        profile.as_str(),
        &now.as_second().to_string(),
    ]);
    let work = Work::SyncProfile(SyncProfile {
        profile_id: profile,
    });
    receiver
        .enqueue_now(&tenant, queue, work, name, "body")
        .await
}

/// A `data-source-record` call's body.
#[derive(Deserialize)]
pub struct RecordCall {
    data_source: String,
    record: Map<String, Value>,
}

/// `POST /{tenant}/api/v1/targets/klaviyo/data-source-record`.
async fn data_source_record(
    State(receiver): State<Arc<Receiver>>,
    TenantSegment(tenant): TenantSegment,
    Delivery { headers, body }: Delivery,
) -> Result<Accepted, ApiError> {
    let (tenant, queue) = receiver.target(&tenant, &headers, &body).await?;
    let call: RecordCall = parse_json(&body)?;
    let data_source = DataSourceKind::from_name(&call.data_source).ok_or_else(|| {
        let names: Vec<&str> = DataSourceKind::ALL.iter().map(|k| k.short_name()).collect();
        ApiError::invalid_field(
            "data_source",
            format!(
                "{:?} is not a data source; use a title such as \"Omneo Rewards\" or a short name: {}",
                call.data_source,
                names.join(", ")
            ),
        )
    })?;
    let id = match call.record.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        _ => {
            return Err(ApiError::invalid_field(
                "record.id",
                "every record carries a stable id (string or number)",
            ));
        }
    };
    let identifies = ["email", "profile_id"].iter().any(|key| {
        call.record
            .get(*key)
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()) || v.is_number())
    });
    if !identifies {
        return Err(ApiError::invalid_field(
            "record.email",
            "every record names its profile by email or profile_id",
        ));
    }
    let name = TaskName::from_parts(&[
        "record",
        tenant.id.as_str(),
        data_source.short_name(),
        &id,
        &hex::encode(Sha256::digest(&body)),
    ]);
    let work = Work::DataSourceRecord(DataSourceRecord {
        data_source,
        record: Value::Object(call.record),
    });
    receiver
        .enqueue_now(&tenant, queue, work, name, "record")
        .await
}

impl Receiver {
    /// Enqueues `work` to run now on the tenant's outbound `queue` as task `name` (see
    /// [`enqueue`]; `field` is what a 413 names).
    async fn enqueue_now(
        &self,
        tenant: &ReceiverTenant,
        queue: QueueName,
        work: Work,
        name: TaskName,
        field: &str,
    ) -> Result<Accepted, ApiError> {
        let task = task_now(&tenant.id, queue, work, name);
        enqueue_carrying(self.app.queue.as_ref(), task, field).await
    }

    /// A target call's tenant, authenticated by signature or shared secret, and its outbound
    /// queue.
    async fn target(
        &self,
        raw: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Arc<ReceiverTenant>, QueueName), ApiError> {
        let tenant = self.tenants.find(raw).await?;
        if headers.contains_key(SIGNATURE_HEADER) {
            verify_hex_hmac(
                headers,
                SIGNATURE_HEADER,
                &tenant.omneo_signing_key,
                &[body],
            )?;
        } else if headers.contains_key(SHARED_SECRET_HEADER) {
            verify_shared_secret(
                headers,
                SHARED_SECRET_HEADER,
                tenant.webhook_secrets(Timestamp::now()),
            )?;
        } else {
            return Err(invalid_signature(
                SIGNATURE_HEADER,
                "missing X-Omneo-Hmac-SHA256 (or x-omneo-secret) header",
            ));
        }
        let queue = tenant.queue(Direction::Outbound)?.clone();
        Ok((tenant, queue))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn with_token_is_true_false_or_absent() {
        assert!(!with_token(None).unwrap());
        assert!(with_token(Some("withToken=true")).unwrap());
        assert!(!with_token(Some("a=1&withToken=false")).unwrap());
        let error = with_token(Some("withToken=yes")).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("withToken"));
    }

    #[test]
    fn a_metric_gets_its_envelope_type_and_a_unique_id_from_its_body() {
        let bare = json!({"attributes": {
            "metric": {"data": {"attributes": {"name": "Points"}}},
            "profile": {"data": {"attributes": {"email": "a@shop.test"}}}}});
        let body = bare.to_string();
        let event = metric_event(body.as_bytes()).unwrap();
        assert_eq!(event["data"]["type"], "event");
        let unique_id = event["data"]["attributes"]["unique_id"].as_str().unwrap();
        assert_eq!(unique_id, hex::encode(Sha256::digest(body.as_bytes())));
        let again = metric_event(body.as_bytes()).unwrap();
        assert_eq!(again, event, "the same body, the same event");
        let mut own = bare.clone();
        own["attributes"]["unique_id"] = json!("order-1");
        let event = metric_event(own.to_string().as_bytes()).unwrap();
        assert_eq!(event["data"]["attributes"]["unique_id"], "order-1");
    }
}
