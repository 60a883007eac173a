//! Events (202; deduplicated by `unique_id` per profile and metric; the profile named by id or
//! email, created when only the email is known) and data-privacy deletion jobs (202; exactly
//! one identifier; the profile is deleted at once, with its events and its system events of
//! [`super::event_log`] — the real job is asynchronous).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jsonapi::{ApiError, Data, Doc, expect_type};
use super::state::{Ctx, ulid};

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Id.
    pub id: String,
    /// The metric's name.
    pub metric: String,
    /// The profile it belongs to.
    pub profile_id: String,
    /// `properties`.
    pub properties: Map<String, Value>,
    /// `time` (now when absent).
    pub time: jiff::Timestamp,
    /// `value`.
    pub value: Option<f64>,
    /// `unique_id` (the id when absent, so nothing dedupes against it).
    pub unique_id: String,
}

/// A data-privacy deletion request as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletionJob {
    /// The identifier kind: `id`, `email` or `phone_number`.
    pub identifier: String,
    /// Its value.
    pub value: String,
    /// The profile deleted, when one matched.
    pub deleted_profile_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct EventDocument {
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    #[serde(rename = "type")]
    kind: String,
    attributes: EventAttributes,
}

#[derive(Deserialize)]
struct EventAttributes {
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    time: Option<jiff::Timestamp>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    unique_id: Option<String>,
    metric: Data<MetricRef>,
    profile: Data<ProfileRef>,
}

#[derive(Deserialize)]
struct MetricRef {
    #[serde(rename = "type")]
    kind: String,
    attributes: MetricAttributes,
}

#[derive(Deserialize)]
struct MetricAttributes {
    name: String,
}

#[derive(Deserialize)]
struct ProfileRef {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    attributes: Option<ProfileRefAttributes>,
}

#[derive(Deserialize, Default)]
struct ProfileRefAttributes {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone_number: Option<String>,
}

/// `POST /api/events` — 202 empty.
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    Doc(doc): Doc<EventDocument>,
) -> Result<Response, ApiError> {
    let data = doc.data;
    expect_type(&data.kind, "event", "/data/type")?;
    let attributes = data.attributes;
    expect_type(
        &attributes.metric.data.kind,
        "metric",
        "/data/attributes/metric/data/type",
    )?;
    expect_type(
        &attributes.profile.data.kind,
        "profile",
        "/data/attributes/profile/data/type",
    )?;
    let metric = attributes.metric.data.attributes.name;
    if metric.trim().is_empty() {
        return Err(ApiError::invalid(
            "The metric name is required.",
            "/data/attributes/metric/data/attributes/name",
        ));
    }
    let profile = attributes.profile.data;
    let identifiers = profile.attributes.unwrap_or_default();
    let mut state = ctx.lock();
    let profile_id = if let Some(id) = profile.id {
        state.profile(&id).map(|p| p.id.clone()).ok_or_else(|| {
            ApiError::invalid(
                format!("Profile {id} does not exist."),
                "/data/attributes/profile/data/id",
            )
        })?
    } else if let Some(email) = identifiers.email.as_deref() {
        let index = match state.profile_by_email(email) {
            Some(index) => index,
            None => state.create_profile(Some(email), None),
        };
        state.profiles[index].id.clone()
    } else if let Some(phone) = identifiers.phone_number.as_deref() {
        let index = match state.profile_by_phone(phone) {
            Some(index) => index,
            None => state.create_profile(None, Some(phone)),
        };
        state.profiles[index].id.clone()
    } else {
        return Err(ApiError::invalid(
            "The profile needs an id, email or phone_number.",
            "/data/attributes/profile/data",
        ));
    };
    let duplicate = attributes.unique_id.as_deref().is_some_and(|unique| {
        state
            .events
            .iter()
            .any(|e| e.unique_id == unique && e.profile_id == profile_id && e.metric == metric)
    });
    if !duplicate {
        let id = ulid();
        state.events.push(Event {
            unique_id: attributes.unique_id.unwrap_or_else(|| id.clone()),
            id,
            metric,
            profile_id,
            properties: attributes.properties,
            time: attributes.time.unwrap_or_else(jiff::Timestamp::now),
            value: attributes.value,
        });
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Deserialize)]
pub(crate) struct DeletionDocument {
    data: DeletionData,
}

#[derive(Deserialize)]
struct DeletionData {
    #[serde(rename = "type")]
    kind: String,
    attributes: DeletionAttributes,
}

#[derive(Deserialize)]
struct DeletionAttributes {
    profile: Data<ProfileRef>,
}

/// `POST /api/data-privacy-deletion-jobs` — exactly one of id, email, phone_number; 202 empty.
pub(crate) async fn request_deletion(
    State(ctx): State<Ctx>,
    Doc(doc): Doc<DeletionDocument>,
) -> Result<Response, ApiError> {
    expect_type(&doc.data.kind, "data-privacy-deletion-job", "/data/type")?;
    let profile = doc.data.attributes.profile.data;
    let attributes = profile.attributes.unwrap_or_default();
    let given: Vec<(&str, String)> = [
        ("id", profile.id),
        ("email", attributes.email),
        ("phone_number", attributes.phone_number),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.map(|v| (kind, v)))
    .collect();
    let [(identifier, value)] = given.as_slice() else {
        return Err(ApiError::invalid(
            "Exactly one of id, email or phone_number is required.",
            "/data/attributes/profile/data",
        ));
    };
    let mut state = ctx.lock();
    let index = match *identifier {
        "id" => state.profile_by_id(value),
        "email" => state.profile_by_email(value),
        _ => state.profile_by_phone(value),
    };
    let deleted_profile_id = index.map(|i| state.profiles.remove(i).id);
    if let Some(id) = &deleted_profile_id {
        for list in &mut state.lists {
            list.members.retain(|m| m != id);
        }
        state.events.retain(|e| &e.profile_id != id);
        state.event_log.forget_profile(id);
    }
    state.deletion_jobs.push(DeletionJob {
        identifier: (*identifier).to_owned(),
        value: value.clone(),
        deleted_profile_id,
    });
    Ok(StatusCode::ACCEPTED.into_response())
}
