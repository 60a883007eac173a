//! The Omneo simulator's own `/_sim` routes, beside the faults and recorded requests of
//! [`crate::sim`]: what a person does in CX Manager, and a look at a tenant's data, for `make dev`
//! users with curl. Like every `/_sim` route they need no token and are neither recorded nor
//! faulted; answers are pretty-printed, in Omneo's `{"data": …}` envelope, and errors are Omneo's
//! (`404 {"message"}` for an unknown tenant or profile, Laravel's `422` on a bad edit).
//!
//! - `POST /_sim/tenants/{tenant}/webhooks/activate` — turns every webhook of the tenant on, as
//!   the CX Manager toggle does (the extension creates its webhooks off); answers the webhooks.
//! - `GET /_sim/tenants/{tenant}/profiles` — every profile, in creation order (not paged).
//! - `GET /_sim/tenants/{tenant}/profiles/{id}` — one profile, with its identities and
//!   `attributes.comms`.
//! - `PATCH /_sim/tenants/{tenant}/profiles/{id}` — a CX Manager edit, made exactly like
//!   [`super::OmneoSim::edit_profile`]: `profile.updated` is delivered, signed, to every active
//!   webhook of the trigger whatever its namespace. The body is partial: `first_name`,
//!   `last_name`, `email`, `mobile_phone` (unique and valid as on `PUT /profiles/{id}`; `null`
//!   clears) and `comms`, an object of flags and consent times as on
//!   `PUT /profiles/{id}/attributes/comms` (e.g. `{"comms": {"sms_promo": true}}`). Any other
//!   field is refused. Answers the profile.
//! - `GET /_sim/tenants/{tenant}/interactions`, `…/rewards`, `…/benefits` — the activity written
//!   to the tenant (by the extension through the API, or seeded), oldest first, each naming its
//!   `profile_id` (not paged). Read-only.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value};

use super::comms::Comms;
use super::profiles::Profile;
use super::responses::{ApiError, Validator, json_object};
use super::state::{Shared, Tenant};
use crate::sim::pretty_json;

/// The fields a `PATCH` may change.
const EDITABLE: [&str; 5] = ["first_name", "last_name", "email", "mobile_phone", "comms"];

/// The routes, to merge beside the instrumented API.
pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route(
            "/_sim/tenants/{tenant}/webhooks/activate",
            post(activate_webhooks),
        )
        .route("/_sim/tenants/{tenant}/profiles", get(list_profiles))
        .route(
            "/_sim/tenants/{tenant}/profiles/{id}",
            get(show_profile).patch(edit_profile),
        )
        .route(
            "/_sim/tenants/{tenant}/interactions",
            get(list_interactions),
        )
        .route("/_sim/tenants/{tenant}/rewards", get(list_rewards))
        .route("/_sim/tenants/{tenant}/benefits", get(list_benefits))
        .with_state(shared)
}

/// Omneo's `{"data": …}` envelope (serialised as is, so fields keep their order).
#[derive(Serialize)]
struct Envelope<'a, T> {
    data: &'a T,
}

/// `{"data": value}`, pretty-printed, with 200.
fn data(value: &impl Serialize) -> Response {
    pretty_json(StatusCode::OK, &Envelope { data: value })
}

async fn activate_webhooks(
    State(sim): State<Shared>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let webhooks = sim.change(&tenant, None, |t| Ok((t.activate_webhooks(), None)))?;
    Ok(data(&webhooks))
}

async fn list_profiles(
    State(sim): State<Shared>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let profiles = sim.read(&tenant, |t| {
        Ok(t.profiles
            .iter()
            .map(|r| r.profile.clone())
            .collect::<Vec<_>>())
    })?;
    Ok(data(&profiles))
}

async fn show_profile(
    State(sim): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let profile = sim.read(&tenant, |t| Ok(t.record(&id)?.profile.clone()))?;
    Ok(data(&profile))
}

async fn list_interactions(
    State(sim): State<Shared>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let interactions = sim.read(&tenant, |t| Ok(t.interactions.clone()))?;
    Ok(data(&interactions))
}

async fn list_rewards(
    State(sim): State<Shared>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let rewards = sim.read(&tenant, |t| Ok(t.rewards.clone()))?;
    Ok(data(&rewards))
}

async fn list_benefits(
    State(sim): State<Shared>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let benefits = sim.read(&tenant, |t| Ok(t.benefits.clone()))?;
    Ok(data(&benefits))
}

async fn edit_profile(
    State(sim): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let profile = sim.change(&tenant, None, |t| {
        let edit = ProfileEdit::validate(t, &id, &body)?;
        t.cx_edit(&id, |profile| edit.apply(profile))
    })?;
    Ok(data(&profile))
}

/// A validated `PATCH` body: each field absent (`None`: leave) or its new value.
struct ProfileEdit {
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    email: Option<Option<String>>,
    mobile_phone: Option<Option<String>>,
    comms: Option<Comms>,
}

impl ProfileEdit {
    /// Reads `body` as an edit of profile `id` of `tenant` (404 when there is no such profile,
    /// 422 naming every bad field).
    fn validate(tenant: &Tenant, id: &str, body: &Map<String, Value>) -> Result<Self, ApiError> {
        let current = &tenant.record(id)?.profile;
        let mut v = Validator::default();
        for field in body.keys().filter(|k| !EDITABLE.contains(&k.as_str())) {
            v.fail_prohibited(field);
        }
        let edit = Self {
            first_name: v.nullable_string(body, "first_name"),
            last_name: v.nullable_string(body, "last_name"),
            email: v.nullable_string(body, "email"),
            mobile_phone: v.nullable_string(body, "mobile_phone"),
            comms: match body.get("comms") {
                None => None,
                Some(Value::Object(fields)) => {
                    for field in fields.keys().filter(|k| !Comms::is_field(k)) {
                        v.fail_prohibited(&format!("comms.{field}"));
                    }
                    let mut comms = current.attributes.comms.clone();
                    if let Err(error) = comms.apply(fields) {
                        v.nest("comms", error);
                    }
                    Some(comms)
                }
                Some(_) => {
                    v.fail("comms", "The comms field must be an object.");
                    None
                }
            },
        };
        tenant.check_contacts(
            Some(id),
            edit.email.as_ref().and_then(Option::as_deref),
            edit.mobile_phone.as_ref().and_then(Option::as_deref),
            &mut v,
        );
        v.finish()?;
        Ok(edit)
    }

    /// Writes the edit onto `profile`.
    fn apply(self, profile: &mut Profile) {
        for (slot, value) in [
            (&mut profile.first_name, self.first_name),
            (&mut profile.last_name, self.last_name),
            (&mut profile.email, self.email),
            (&mut profile.mobile_phone, self.mobile_phone),
        ] {
            if let Some(value) = value {
                *slot = value;
            }
        }
        if let Some(comms) = self.comms {
            profile.attributes.comms = comms;
        }
    }
}
