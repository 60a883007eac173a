//! The data behind the six Klaviyo data sources: `GET /profiles/{id}/attributes/dates`,
//! `/connections`, `/rewards`, `/addresses`, `/benefits` and `/lists`, each `{"data":[…]}`.
//! Dates, connections and lists come from the seeded profile; rewards and benefits are the ones
//! issued to it; addresses come from the profile's address.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{MethodRouter, get};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::profiles::ProfilePath;
use super::responses::{ApiError, data};
use super::state::{Caller, Shared, Tenant};

/// What a seeded profile holds beyond the profile resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileExtras {
    /// `attributes/dates`.
    pub dates: Vec<DateAttribute>,
    /// `connections`.
    pub connections: Vec<Connection>,
    /// `lists`.
    pub lists: Vec<ListMembership>,
}

/// A date attribute (birthday, anniversary…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateAttribute {
    /// e.g. `birthday`.
    pub handle: String,
    /// e.g. `Birthday`.
    pub name: String,
    /// `YYYY-MM-DD`.
    pub date: String,
}

/// A connection to another (dependant) profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The connected profile's id.
    pub id: String,
    /// e.g. `child`, `partner`.
    pub relationship: String,
    /// Connected person's given name.
    pub first_name: Option<String>,
    /// Connected person's family name.
    pub last_name: Option<String>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub connected_at: String,
}

/// Membership of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMembership {
    /// e.g. `newsletter`.
    pub handle: String,
    /// e.g. `Newsletter`.
    pub name: String,
    /// Currently subscribed.
    pub subscribed: bool,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub subscribed_at: Option<String>,
}

/// Which of the six lists to answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    Dates,
    Connections,
    Rewards,
    Addresses,
    Benefits,
    Lists,
}

impl Tenant {
    fn profile_part(&self, id: &str, part: Part) -> Result<Response, ApiError> {
        let record = self.record(id)?;
        Ok(match part {
            Part::Dates => {
                let mut dates = record.extras.dates.clone();
                dates.push(DateAttribute {
                    handle: "joined".into(),
                    name: "Joined".into(),
                    date: record.profile.created_at.chars().take(10).collect(),
                });
                data(dates)
            }
            Part::Connections => data(&record.extras.connections),
            Part::Lists => data(&record.extras.lists),
            Part::Rewards => data(
                self.rewards
                    .iter()
                    .filter(|r| r.profile_id == id)
                    .collect::<Vec<_>>(),
            ),
            Part::Benefits => data(
                self.benefits
                    .iter()
                    .filter(|b| b.profile_id == id)
                    .collect::<Vec<_>>(),
            ),
            Part::Addresses => {
                let addresses: Vec<_> = record
                    .profile
                    .address
                    .iter()
                    .map(|address| {
                        let mut entry =
                            serde_json::to_value(address).expect("an address serialises");
                        if let Some(fields) = entry.as_object_mut() {
                            fields.insert("id".into(), json!(1));
                            fields.insert("type".into(), json!("home"));
                            fields.insert("is_default".into(), json!(true));
                            fields.insert("updated_at".into(), json!(record.profile.updated_at));
                        }
                        entry
                    })
                    .collect();
                data(addresses)
            }
        })
    }
}

/// `GET` of one of the six parts, e.g. `get_part(Part::Dates)` for `/profiles/{id}/attributes/dates`.
pub(crate) fn get_part(part: Part) -> MethodRouter<Shared> {
    get(
        move |caller: Caller, State(sim): State<Shared>, Path(path): Path<ProfilePath>| async move {
            sim.read(&caller.tenant, |t| t.profile_part(&path.id, part))
        },
    )
}
