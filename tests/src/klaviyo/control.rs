//! The Klaviyo simulator's own `/_sim` routes, beside the faults and recorded requests of
//! [`crate::sim`]: a look at the account for `make dev` users with curl, what the Klaviyo web app
//! would show. They are not API endpoints: no token, no `revision`, no rate limit, not recorded,
//! not faulted, and not in [`super::KlaviyoSim::endpoints`]. Answers are pretty-printed JSON in
//! the simulator's own shapes (the `Serialize` forms of [`Profile`] and [`Event`]), not JSON:API.
//!
//! - `GET /_sim/profiles` — every profile, oldest first: identifiers, names, `location`,
//!   `properties`, consent per channel (`subscriptions.email_marketing`, `.sms_marketing`,
//!   `.sms_transactional`, each with `consent`, `method`, `custom_method_detail`…), and `lists`,
//!   the ids of the lists it belongs to.
//! - `GET /_sim/profiles/{id}` — one of them (404 with Klaviyo's error body when unknown).
//! - `GET /_sim/events` — every event accepted, oldest first.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::events::Event;
use super::jsonapi::ApiError;
use super::profiles::Profile;
use super::state::{Ctx, State as Account};
use crate::sim::pretty_json;

/// The routes, to merge beside the instrumented API.
pub(crate) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/_sim/profiles", get(list_profiles))
        .route("/_sim/profiles/{id}", get(show_profile))
        .route("/_sim/events", get(list_events))
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
    let profile = account
        .profile(&id)
        .ok_or_else(|| ApiError::not_found(format!("Profile {id} not found.")))?;
    Ok(pretty_json(
        StatusCode::OK,
        &ProfileView::new(&account, profile),
    ))
}

async fn list_events(State(ctx): State<Ctx>) -> Response {
    let events: Vec<Event> = ctx.lock().events.clone();
    pretty_json(StatusCode::OK, &events)
}
