//! Profiles: import (an upsert: 201 new / 200 updated, 409 `duplicate_profile` when the
//! identifiers belong to different profiles, `null` clears and absent leaves — or, for the bulk
//! import of [`super::bulk`], leaves too: [`Nulls`]), get (with
//! `additional-fields[profile]=subscriptions`) and search by `email`, `external_id`,
//! `phone_number` or `id`.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::jsonapi::{
    ApiError, Condition, Doc, Filter, Here, document, expect_type, paginate, present,
};
use super::profile_index::Field;
use super::state::{Ctx, State as Account, ulid};
use super::subscriptions::Subscriptions;

/// The location keys Klaviyo reports (all present, `null` when unset).
const LOCATION_KEYS: &[&str] = &[
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
];

/// A Klaviyo profile as the simulator stores it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// 26-character ULID.
    pub id: String,
    /// Email, stored lowercase.
    pub email: Option<String>,
    /// E.164 phone number.
    pub phone_number: Option<String>,
    /// The caller's id for the profile (the extension uses the Omneo profile id).
    pub external_id: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Location members that are set.
    pub location: Map<String, Value>,
    /// Custom properties.
    pub properties: Map<String, Value>,
    /// Consent per channel.
    pub subscriptions: Subscriptions,
    /// When it was created.
    pub created: jiff::Timestamp,
    /// When it was last changed.
    pub updated: jiff::Timestamp,
}

impl Profile {
    fn new(now: jiff::Timestamp) -> Self {
        Self {
            id: ulid(),
            email: None,
            phone_number: None,
            external_id: None,
            first_name: None,
            last_name: None,
            location: Map::new(),
            properties: Map::new(),
            subscriptions: Subscriptions::default(),
            created: now,
            updated: now,
        }
    }

    /// The JSON:API resource (`subscriptions` only when asked for).
    pub fn resource(&self, here: &Here, with_subscriptions: bool) -> Value {
        let location: Map<String, Value> = LOCATION_KEYS
            .iter()
            .map(|k| {
                (
                    (*k).to_owned(),
                    self.location.get(*k).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        let mut attributes = json!({
            "email": self.email,
            "phone_number": self.phone_number,
            "external_id": self.external_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "organization": null,
            "locale": null,
            "title": null,
            "image": null,
            "created": self.created,
            "updated": self.updated,
            "last_event_date": null,
            "location": location,
            "properties": self.properties,
        });
        if with_subscriptions {
            attributes["subscriptions"] = self.subscriptions.to_json();
        }
        let path = format!("/api/profiles/{}/", self.id);
        json!({
            "type": "profile",
            "id": self.id,
            "attributes": attributes,
            "relationships": {
                "lists": {"links": here.relationship_links(&path, "lists")},
                "segments": {"links": here.relationship_links(&path, "segments")}
            },
            "links": {"self": here.link(&path)}
        })
    }
}

/// The writable profile attributes of an import; each is absent (`None`: leave), `null`
/// (`Some(None)`: clear) or a value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProfileAttributes {
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    phone_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    external_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    location: Option<Option<Map<String, Value>>>,
    #[serde(default, deserialize_with = "present")]
    properties: Option<Option<Map<String, Value>>>,
}

impl ProfileAttributes {
    /// These attributes with every `null` taken as absent (map members set to `null` too).
    fn without_nulls(&self) -> Self {
        fn keep<T: Clone>(value: &Option<Option<T>>) -> Option<Option<T>> {
            value.clone().filter(Option::is_some)
        }
        fn keep_members(
            value: &Option<Option<Map<String, Value>>>,
        ) -> Option<Option<Map<String, Value>>> {
            keep(value).map(|members| {
                members.map(|mut members| {
                    members.retain(|_, v| !v.is_null());
                    members
                })
            })
        }
        Self {
            email: keep(&self.email),
            phone_number: keep(&self.phone_number),
            external_id: keep(&self.external_id),
            first_name: keep(&self.first_name),
            last_name: keep(&self.last_name),
            location: keep_members(&self.location),
            properties: keep_members(&self.properties),
        }
    }
}

/// What an import does with an attribute sent as `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nulls {
    /// Clears the stored value (`POST /api/profile-import`).
    Clear,
    /// Leaves the stored value, as absent does (the bulk import).
    Keep,
}

#[derive(Deserialize)]
pub(crate) struct ImportDocument {
    data: ImportData,
}

#[derive(Deserialize)]
struct ImportData {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    attributes: ProfileAttributes,
}

/// Whether `phone` is E.164: `+` then 2–15 digits, no leading zero.
pub fn is_e164(phone: &str) -> bool {
    phone.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// A plausible email: one `@`, something before it, a dot after it.
pub fn is_email(email: &str) -> bool {
    email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains('@') && !email.contains(' ')
    })
}

/// Applies `value` to `field`: absent leaves, `null` clears.
fn apply<T: Clone>(field: &mut Option<T>, value: &Option<Option<T>>) {
    if let Some(value) = value {
        field.clone_from(value);
    }
}

/// Merges a map attribute: `null` clears it all, a member set to `null` removes that member.
fn merge(target: &mut Map<String, Value>, value: &Option<Option<Map<String, Value>>>) {
    match value {
        None => {}
        Some(None) => target.clear(),
        Some(Some(members)) => {
            for (k, v) in members {
                if v.is_null() {
                    target.remove(k);
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

impl Account {
    /// One profile by id.
    pub fn profile(&self, id: &str) -> Option<&Profile> {
        self.profile_by_id(id).map(|at| &self.profiles[at])
    }

    /// The index of the profile with this id.
    pub fn profile_by_id(&self, id: &str) -> Option<usize> {
        self.profiles.position(Field::Id, id)
    }

    /// The index of the profile with this email (case-insensitive).
    pub fn profile_by_email(&self, email: &str) -> Option<usize> {
        self.profiles
            .position(Field::Email, &email.trim().to_lowercase())
    }

    /// The index of the profile with this phone number.
    pub fn profile_by_phone(&self, phone: &str) -> Option<usize> {
        self.profiles.position(Field::PhoneNumber, phone)
    }

    /// The profiles matching every filter (on `id`, `email` — ignoring case —, `phone_number`
    /// or `external_id`), in creation order. The candidates come from the index through the
    /// first `equals`/`any` condition on one of those fields; only a search without one scans.
    pub fn search_profiles(&self, filters: &[Filter]) -> Vec<&Profile> {
        let matches = |p: &Profile| {
            filters.iter().all(|f| match Field::named(&f.field) {
                Some(Field::Email) => f.matches_ignoring_case(p.email.as_deref()),
                Some(field) => f.matches(field.of(p)),
                None => false,
            })
        };
        let lookup = filters.iter().find_map(|f| match &f.condition {
            Condition::OneOf(values) => Field::named(&f.field).map(|field| (field, values)),
            _ => None,
        });
        match lookup {
            Some((field, values)) => values
                .iter()
                .flat_map(|value| self.profiles.candidates(field, value))
                .collect::<BTreeSet<usize>>()
                .into_iter()
                .map(|at| &self.profiles[at])
                .filter(|p| matches(p))
                .collect(),
            None => self.profiles.iter().filter(|p| matches(p)).collect(),
        }
    }

    /// Creates a bare profile with these identifiers; returns its index.
    pub fn create_profile(&mut self, email: Option<&str>, phone: Option<&str>) -> usize {
        let mut profile = Profile::new(jiff::Timestamp::now());
        profile.email = email.map(|e| e.trim().to_lowercase());
        profile.phone_number = phone.map(str::to_owned);
        self.profiles.push(profile)
    }

    /// The profile-import upsert; returns the profile and whether it was created.
    pub fn import_profile(
        &mut self,
        id: Option<&str>,
        attributes: &ProfileAttributes,
    ) -> Result<(Profile, bool), ApiError> {
        self.import_profile_with(id, attributes, Nulls::Clear)
    }

    /// The profile-import upsert, with `null`s cleared or left as `nulls` says.
    pub fn import_profile_with(
        &mut self,
        id: Option<&str>,
        attributes: &ProfileAttributes,
        nulls: Nulls,
    ) -> Result<(Profile, bool), ApiError> {
        let mut attributes = match nulls {
            Nulls::Clear => attributes.clone(),
            Nulls::Keep => attributes.without_nulls(),
        };
        if let Some(Some(email)) = &mut attributes.email {
            *email = email.trim().to_lowercase();
            if !is_email(email) {
                return Err(ApiError::invalid(
                    "Invalid email address.",
                    "/data/attributes/email",
                ));
            }
        }
        if let Some(Some(phone)) = &attributes.phone_number
            && !is_e164(phone)
        {
            return Err(ApiError::invalid(
                "Invalid phone number format (Example of a valid format: +12345678901).",
                "/data/attributes/phone_number",
            ));
        }
        // Which profiles each identifier names, in Klaviyo's order of precedence.
        let by = |field: Field, value: &Option<Option<String>>| {
            value
                .as_ref()
                .and_then(Option::as_deref)
                .and_then(|v| self.profiles.position(field, v))
        };
        let by_id = match id {
            Some(id) => Some(
                self.profile_by_id(id)
                    .ok_or_else(|| ApiError::not_found(format!("Profile {id} not found.")))?,
            ),
            None => None,
        };
        let matches = [
            by_id,
            by(Field::Email, &attributes.email),
            by(Field::ExternalId, &attributes.external_id),
            by(Field::PhoneNumber, &attributes.phone_number),
        ];
        let mut found = matches.into_iter().flatten();
        let target = found.next();
        if let Some(target) = target
            && let Some(other) = found.find(|&i| i != target)
        {
            return Err(ApiError::duplicate_profile(&self.profiles[other].id));
        }
        let now = jiff::Timestamp::now();
        let (index, created) = match target {
            Some(index) => (index, false),
            None => {
                let has_identifier = [
                    &attributes.email,
                    &attributes.phone_number,
                    &attributes.external_id,
                ]
                .iter()
                .any(|v| matches!(v, Some(Some(_))));
                if !has_identifier {
                    return Err(ApiError::invalid(
                        "One of email, phone_number or external_id is required to create a profile.",
                        "/data/attributes",
                    ));
                }
                (self.profiles.push(Profile::new(now)), true)
            }
        };
        let mut profile = self.profiles.get_mut(index);
        apply(&mut profile.email, &attributes.email);
        apply(&mut profile.phone_number, &attributes.phone_number);
        apply(&mut profile.external_id, &attributes.external_id);
        apply(&mut profile.first_name, &attributes.first_name);
        apply(&mut profile.last_name, &attributes.last_name);
        merge(&mut profile.location, &attributes.location);
        merge(&mut profile.properties, &attributes.properties);
        profile.updated = now;
        Ok(((*profile).clone(), created))
    }
}

/// `POST /api/profile-import` — 201 created / 200 updated.
pub(crate) async fn import(
    State(ctx): State<Ctx>,
    here: Here,
    Doc(doc): Doc<ImportDocument>,
) -> Result<Response, ApiError> {
    expect_type(&doc.data.kind, "profile", "/data/type")?;
    let (profile, created) = ctx
        .lock()
        .import_profile(doc.data.id.as_deref(), &doc.data.attributes)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(document(
        status,
        &json!({ "data": profile.resource(&here, false) }),
    ))
}

/// `GET /api/profiles/{id}`.
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let with_subscriptions = here.params.wants_field("profile", "subscriptions");
    let profile = ctx
        .lock()
        .profile(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Profile {id} not found.")))?;
    Ok(document(
        StatusCode::OK,
        &json!({ "data": profile.resource(&here, with_subscriptions) }),
    ))
}

/// `GET /api/profiles?filter=…` — page size ≤ 100 (default 20).
pub(crate) async fn search(State(ctx): State<Ctx>, here: Here) -> Result<Response, ApiError> {
    let filters = here
        .params
        .filters(&["id", "email", "phone_number", "external_id"], &[])?;
    let with_subscriptions = here.params.wants_field("profile", "subscriptions");
    let matching: Vec<Profile> = ctx
        .lock()
        .search_profiles(&filters)
        .into_iter()
        .cloned()
        .collect();
    let page = paginate(&matching, &here, 20, 100)?;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|p| p.resource(&here, with_subscriptions))
        .collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}
