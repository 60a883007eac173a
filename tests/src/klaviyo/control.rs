//! The Klaviyo simulator's own `/_sim` routes, beside the faults and recorded requests of
//! [`crate::sim`]: a look at the account for `make dev` users with curl, what the Klaviyo web app
//! would show, and what a customer does on Klaviyo's side. They are not API endpoints: no token,
//! no `revision`, no rate limit, not recorded, not faulted, and not in
//! [`super::KlaviyoSim::endpoints`]. Answers are pretty-printed JSON in the simulator's own shapes
//! (the `Serialize` forms of [`Profile`] and [`Event`]), not JSON:API; errors are Klaviyo's
//! (`404 not_found`, `400 invalid` pointing at the bad member).
//!
//! A profile is named by its id or, for curl users who know only the customer, by its email
//! address (any segment holding an `@`; case-insensitive).
//!
//! - `GET /_sim/profiles` — every profile, oldest first: identifiers, names, `location`,
//!   `properties`, consent per channel (`subscriptions.email_marketing`, `.sms_marketing`,
//!   `.sms_transactional`, each with `consent`, `method`, `custom_method_detail`…), and `lists`,
//!   the ids of the lists it belongs to.
//! - `GET /_sim/profiles/{id}` — one of them (404 with Klaviyo's error body when unknown).
//! - `GET /_sim/events` — every event accepted, oldest first.
//! - `POST /_sim/profiles/{id}/consent` — a change made on Klaviyo's side, exactly like
//!   [`super::KlaviyoSim::change_consent`] (a customer on the preference page, a bounce…):
//!   body `{"channel": "email"|"sms", "consent": "SUBSCRIBED"|"UNSUBSCRIBED"|"NEVER_SUBSCRIBED",
//!   "method"?: "PREFERENCE_PAGE"}` (the consent values as `GET /_sim/profiles` shows them; the
//!   method defaults to `PREFERENCE_PAGE`). A change of state queues its system event (none when
//!   the state is already that one). Answers the events waiting in the outbox:
//!   `[{"topic","event_id","profile_id","email","method","custom_method_detail"}]`.
//! - `POST /_sim/deliver` — delivers the outbox now, as [`super::KlaviyoSim::deliver_pending`]:
//!   one signed POST per enabled webhook subscribed to any of the events' topics (events no
//!   webhook takes are dropped, as Klaviyo sends them nowhere). Answers each delivery with the
//!   receiver's answer: `[{"webhook_id","endpoint_url","events":[…],"status","error"}]`
//!   (`status` null and `error` set when the request failed).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::deliveries::{self, Delivery, SystemEvent};
use super::events::Event;
use super::jsonapi::ApiError;
use super::profiles::Profile;
use super::state::{Ctx, State as Account};
use super::subscriptions::{Channel, ConsentState};
use crate::sim::pretty_json;

/// The method of a consent change when the body names none.
const DEFAULT_METHOD: &str = "PREFERENCE_PAGE";

/// The routes, to merge beside the instrumented API.
pub(crate) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/_sim/profiles", get(list_profiles))
        .route("/_sim/profiles/{id}", get(show_profile))
        .route("/_sim/profiles/{id}/consent", post(change_consent))
        .route("/_sim/events", get(list_events))
        .route("/_sim/deliver", post(deliver))
        .with_state(ctx)
}

/// A profile as the control API shows it: the stored profile and its list memberships.
#[derive(Serialize)]
struct ProfileView<'a> {
    #[serde(flatten)]
    profile: &'a Profile,
    lists: Vec<&'a str>,
}

impl<'a> ProfileView<'a> {
    fn new(account: &'a Account, profile: &'a Profile) -> Self {
        let lists = account
            .lists
            .iter()
            .filter(|l| l.members.contains(&profile.id))
            .map(|l| l.id.as_str())
            .collect();
        Self { profile, lists }
    }
}

/// The profile a path names, by id or (when it holds an `@`) by email; 404 when there is none.
fn find<'a>(account: &'a Account, id: &str) -> Result<&'a Profile, ApiError> {
    let found = if id.contains('@') {
        account
            .profile_by_email(id)
            .map(|index| &account.profiles[index])
    } else {
        account.profile(id)
    };
    found.ok_or_else(|| ApiError::not_found(format!("Profile {id} not found.")))
}

async fn list_profiles(State(ctx): State<Ctx>) -> Response {
    let account = ctx.lock();
    let views: Vec<ProfileView<'_>> = account
        .profiles
        .iter()
        .map(|p| ProfileView::new(&account, p))
        .collect();
    pretty_json(StatusCode::OK, &views)
}

async fn show_profile(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let account = ctx.lock();
    let profile = find(&account, &id)?;
    Ok(pretty_json(
        StatusCode::OK,
        &ProfileView::new(&account, profile),
    ))
}

async fn list_events(State(ctx): State<Ctx>) -> Response {
    let events: Vec<Event> = ctx.lock().events.clone();
    pretty_json(StatusCode::OK, &events)
}

/// The channels a consent change may name.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ChannelName {
    Email,
    Sms,
}

impl From<ChannelName> for Channel {
    fn from(name: ChannelName) -> Self {
        match name {
            ChannelName::Email => Self::Email,
            ChannelName::Sms => Self::Sms,
        }
    }
}

/// A validated consent change.
struct ConsentChange {
    channel: Channel,
    consent: ConsentState,
    method: String,
}

impl ConsentChange {
    /// Reads the body, answering Klaviyo's `400 invalid` pointing at the first bad member.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("The body must be a JSON object: {e}"), "/"))?;
        if let Some(unknown) = body
            .keys()
            .find(|k| !["channel", "consent", "method"].contains(&k.as_str()))
        {
            return Err(ApiError::invalid(
                format!("'{unknown}' is not a valid field."),
                &format!("/{unknown}"),
            ));
        }
        let channel: ChannelName = member(&body, "channel", "\"email\" or \"sms\"")?
            .ok_or_else(|| ApiError::invalid("'channel' is required.", "/channel"))?;
        let consent = member(
            &body,
            "consent",
            "\"SUBSCRIBED\", \"UNSUBSCRIBED\" or \"NEVER_SUBSCRIBED\"",
        )?
        .ok_or_else(|| ApiError::invalid("'consent' is required.", "/consent"))?;
        let method = member::<String>(&body, "method", "a non-empty string")?
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_METHOD.to_owned());
        if method.is_empty() {
            return Err(ApiError::invalid(
                "'method' must be a non-empty string.",
                "/method",
            ));
        }
        Ok(Self {
            channel: channel.into(),
            consent,
            method,
        })
    }
}

/// One member of the body (`None` when absent or null), or a 400 pointing at it.
fn member<T: DeserializeOwned>(
    body: &Map<String, Value>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value).map(Some).map_err(|_| {
            ApiError::invalid(
                format!("'{name}' must be {expected}; got {value}."),
                &format!("/{name}"),
            )
        }),
    }
}

/// A system event as the control API shows it.
#[derive(Serialize)]
struct EventView<'a> {
    topic: &'a str,
    event_id: &'a str,
    profile_id: &'a str,
    email: Option<&'a str>,
    method: &'a str,
    custom_method_detail: Option<&'a str>,
}

impl<'a> From<&'a SystemEvent> for EventView<'a> {
    fn from(event: &'a SystemEvent) -> Self {
        Self {
            topic: &event.topic,
            event_id: &event.event_id,
            profile_id: &event.profile_id,
            email: event.email.as_deref(),
            method: &event.method,
            custom_method_detail: event.custom_method_detail.as_deref(),
        }
    }
}

/// A delivery as the control API shows it: where it went, what it carried, what came back.
#[derive(Serialize)]
struct DeliveryView<'a> {
    webhook_id: &'a str,
    endpoint_url: &'a str,
    events: Vec<EventView<'a>>,
    status: Option<u16>,
    error: Option<&'a str>,
}

impl<'a> From<&'a Delivery> for DeliveryView<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Self {
            webhook_id: &delivery.webhook_id,
            endpoint_url: &delivery.endpoint_url,
            events: delivery.events.iter().map(EventView::from).collect(),
            status: delivery.status,
            error: delivery.error.as_deref(),
        }
    }
}

async fn change_consent(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut account = ctx.lock();
    let profile_id = find(&account, &id)?.id.clone();
    let change = ConsentChange::parse(&body)?;
    account.change_consent(&profile_id, change.channel, change.consent, &change.method)?;
    let pending: Vec<EventView<'_>> = account.outbox.iter().map(EventView::from).collect();
    Ok(pretty_json(StatusCode::OK, &pending))
}

async fn deliver(State(ctx): State<Ctx>) -> Response {
    match deliveries::deliver_pending(&ctx).await {
        Ok(deliveries) => {
            let views: Vec<DeliveryView<'_>> = deliveries.iter().map(DeliveryView::from).collect();
            pretty_json(StatusCode::OK, &views)
        }
        Err(error) => pretty_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"errors": [{"status": 500, "code": "error", "detail": format!("{error:#}")}]}),
        ),
    }
}
