//! The account's event log and the endpoints reconciliation reads it through (`klaviyo.md`
//! §Events and metrics). Every system event the simulator makes (a consent change queues one
//! in the outbox, see [`super::deliveries`]) or is asked to deliver
//! ([`super::KlaviyoSim::deliver`]) is logged once, by event id, and kept whatever becomes of
//! its delivery — sent, dropped ([`super::KlaviyoSim::drop_pending`]) or taken by no webhook —
//! as Klaviyo keeps events whatever becomes of its webhooks.
//!
//! - `GET /api/metrics` (`metrics:read`): Klaviyo's own metric behind each system-webhook topic
//!   ([`topics::ALL`]), named as Klaviyo names it ([`topics::metric_name`]), with the metric id
//!   the events' `relationships.metric` carry. Cursor-paged, 200 a page.
//! - `GET /api/events` (`events:read`): the logged events, each as a delivery's `payload.data`
//!   ([`SystemEvent::payload`]) plus the `links` every API resource carries. `filter`:
//!   `equals(metric_id,"…")` and `greater-than` / `greater-or-equal` / `less-than` on
//!   `datetime` (unquoted, e.g. `2026-11-30T00:00:00Z`), comma = AND; `sort=datetime` (the
//!   default) or `-datetime`; `page[size]` 1–1000 (default 200). The cursor names the last
//!   event a page ended with, so events logged while a reader pages never make it see one twice
//!   or miss one that was there when it started.
//!
//! Deviations: events created through `POST /api/events` (custom metrics, see
//! [`super::events`]) are neither listed nor their metrics; a deleted profile's events leave
//! the log at once.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::deliveries::{SystemEvent, metric_id, topics};
use super::jsonapi::{ApiError, Here, document, paginate, paginate_by_key};
use super::state::Ctx;

/// When the account's Klaviyo metrics were created (before any event).
const METRICS_CREATED: &str = "2024-01-01T00:00:00+00:00";

/// Every system event of the account, in the order logged; each event id once.
#[derive(Debug, Default)]
pub(crate) struct EventLog {
    events: Vec<SystemEvent>,
    ids: HashSet<String>,
}

impl EventLog {
    /// Logs `event` unless an event with its id is logged already.
    pub fn record(&mut self, event: &SystemEvent) {
        if self.ids.insert(event.event_id.clone()) {
            self.events.push(event.clone());
        }
    }

    /// Forgets a deleted profile's events (their ids stay known: a redelivery of one does not
    /// bring it back).
    pub fn forget_profile(&mut self, profile_id: &str) {
        self.events.retain(|e| e.profile_id != profile_id);
    }
}

/// `GET /api/metrics`.
pub(crate) async fn metrics(here: Here) -> Result<Response, ApiError> {
    let named: Vec<(&str, &str)> = topics::ALL
        .iter()
        .filter_map(|topic| Some((*topic, topics::metric_name(topic)?)))
        .collect();
    let page = paginate(&named, &here, 200, 200)?;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|(topic, name)| {
            let id = metric_id(topic);
            json!({
                "type": "metric",
                "id": id,
                "attributes": {
                    "name": name,
                    "created": METRICS_CREATED,
                    "updated": METRICS_CREATED,
                    "integration": {"object": "integration", "id": "0rG4eQ", "key": "klaviyo",
                        "name": "Klaviyo", "category": "Internal"}
                },
                "links": {"self": here.link(&format!("/api/metrics/{id}/"))}
            })
        })
        .collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}

/// `GET /api/events`.
pub(crate) async fn events(State(ctx): State<Ctx>, here: Here) -> Result<Response, ApiError> {
    let filters = here.params.filters(&["metric_id"], &["datetime"])?;
    let descending = match here.params.get("sort") {
        None | Some("datetime") => false,
        Some("-datetime") => true,
        Some(other) => {
            return Err(ApiError::invalid_parameter(
                format!("Events cannot be sorted by '{other}': use datetime or -datetime."),
                "sort",
            ));
        }
    };
    // The page order; the id breaks ties so that every event has its own place.
    let key = |event: &SystemEvent| {
        let (seconds, nanos) = (
            event.datetime.as_second(),
            event.datetime.subsec_nanosecond(),
        );
        if descending {
            (-seconds, -nanos, event.event_id.clone())
        } else {
            (seconds, nanos, event.event_id.clone())
        }
    };
    let mut events: Vec<SystemEvent> = ctx
        .lock()
        .event_log
        .events
        .iter()
        .filter(|event| {
            filters.iter().all(|f| match f.field.as_str() {
                "metric_id" => f.matches(Some(&metric_id(&event.topic))),
                _ => f.admits(event.datetime),
            })
        })
        .cloned()
        .collect();
    events.sort_by_cached_key(key);
    let page = paginate_by_key(&events, &here, 200, 1000, key)?;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|event| {
            let mut resource = event.payload();
            resource["links"] =
                json!({"self": here.link(&format!("/api/events/{}/", event.event_id))});
            resource
        })
        .collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}
