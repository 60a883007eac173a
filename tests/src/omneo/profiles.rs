//! Profiles: the resource, seeding (`NewProfile`, realistic demo data, bulk inserts), and
//! `GET /profiles/{id}`, `POST /profiles/search-id`, `PUT /profiles/{id}` (the listing,
//! `GET /profiles`, is in [`super::listing`]).
//!
//! Email and `mobile_phone` (E.164) are unique across a tenant's profiles (422 on a clash).
//! A change bumps `updated_at`.
//! Responses use the list form of `custom_attributes`; requests may use the list or the map
//! (`{namespace:{handle:value}}`) form.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::comms::Comms;
use super::identities::Identity;
use super::profile_data::{Connection, DateAttribute, ListMembership, ProfileExtras};
use super::profile_index::{ProfileMut, Profiles};
use super::responses::{self, ApiError, Validator, data, json_object};
use super::state::{Caller, ProfileEvent, Shared, Tenant, Trigger};

/// An Omneo profile, as `GET /profiles/{id}` answers it (and as webhooks deliver it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// UUID.
    pub id: String,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Email, unique across the tenant.
    pub email: Option<String>,
    /// E.164 mobile number, unique across the tenant.
    pub mobile_phone: Option<String>,
    /// What kind of profile this is.
    pub profile_type: ProfileType,
    /// Postal address.
    pub address: Option<Address>,
    /// External identities (handle, identifier).
    pub identities: Vec<Identity>,
    /// Built-in attribute groups.
    pub attributes: ProfileAttributes,
    /// Custom attributes (list form).
    pub custom_attributes: Vec<CustomAttribute>,
    /// Loyalty tier.
    pub tier: Option<Tier>,
    /// Tags.
    pub tags: Vec<String>,
    /// Sum of the remaining value of the profile's rewards.
    pub reward_balance: f64,
    /// Points balance.
    pub point_balance: f64,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub updated_at: String,
}

/// `profile_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileType {
    /// A regular customer.
    Active,
    /// Created on the fly, not yet confirmed.
    Temporary,
    /// A connection (dependant) of another profile.
    Dependant,
    /// Missing required data.
    Incomplete,
    /// Awaiting confirmation.
    Pending,
    /// A system profile.
    System,
    /// Deleted.
    Deleted,
}

impl ProfileType {
    const ALL: [(&'static str, Self); 7] = [
        ("active", Self::Active),
        ("temporary", Self::Temporary),
        ("dependant", Self::Dependant),
        ("incomplete", Self::Incomplete),
        ("pending", Self::Pending),
        ("system", Self::System),
        ("deleted", Self::Deleted),
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == text).map(|(_, t)| *t)
    }
}

/// A postal address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// First line.
    pub address_line_1: Option<String>,
    /// Second line.
    pub address_line_2: Option<String>,
    /// City or suburb.
    pub city: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// Country (ISO 3166-1 alpha-2).
    pub country: Option<String>,
}

impl Address {
    /// Every field with its name, for partial updates.
    fn fields_mut(&mut self) -> [(&'static str, &mut Option<String>); 6] {
        [
            ("address_line_1", &mut self.address_line_1),
            ("address_line_2", &mut self.address_line_2),
            ("city", &mut self.city),
            ("state", &mut self.state),
            ("postcode", &mut self.postcode),
            ("country", &mut self.country),
        ]
    }
}

/// `attributes` of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileAttributes {
    /// Communication preferences.
    pub comms: Comms,
}

/// One custom attribute (list form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomAttribute {
    /// Owner namespace.
    pub namespace: String,
    /// Attribute handle.
    pub handle: String,
    /// `string`, `boolean`, `integer`, `decimal`, `array` or `object`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value.
    pub value: Value,
}

impl CustomAttribute {
    /// An attribute whose type is inferred from the value.
    pub fn new(namespace: &str, handle: &str, value: Value) -> Self {
        let kind = match &value {
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "decimal",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            Value::String(_) | Value::Null => "string",
        };
        Self {
            namespace: namespace.into(),
            handle: handle.into(),
            kind: kind.into(),
            value,
        }
    }
}

/// A loyalty tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// e.g. `gold`.
    pub handle: String,
    /// e.g. `Gold`.
    pub name: String,
}

/// What a seeded profile starts with (the simulator assigns the id).
#[derive(Debug, Clone, PartialEq)]
pub struct NewProfile {
    /// When the profile was created, and last updated: now when `None`. Set it to seed a
    /// history (profiles created over time, many in the same second) for listing tests.
    pub created_at: Option<jiff::Timestamp>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Email (unique).
    pub email: Option<String>,
    /// E.164 mobile (unique).
    pub mobile_phone: Option<String>,
    /// Profile type.
    pub profile_type: ProfileType,
    /// Address.
    pub address: Option<Address>,
    /// Identities as (handle, identifier).
    pub identities: Vec<(String, String)>,
    /// Communication preferences.
    pub comms: Comms,
    /// Custom attributes.
    pub custom_attributes: Vec<CustomAttribute>,
    /// Tier.
    pub tier: Option<Tier>,
    /// Tags.
    pub tags: Vec<String>,
    /// Data behind `attributes/dates`, `connections` and `lists`.
    pub extras: ProfileExtras,
}

const FIRST_NAMES: [&str; 10] = [
    "Olivia",
    "Noah",
    "Charlotte",
    "Jack",
    "Amelia",
    "William",
    "Isla",
    "Oliver",
    "Mia",
    "Leo",
];
const LAST_NAMES: [&str; 10] = [
    "Smith", "Nguyen", "Williams", "Brown", "Wilson", "Taylor", "Patel", "Martin", "Chen", "Walker",
];
const CITIES: [(&str, &str, &str); 4] = [
    ("Sydney", "NSW", "2000"),
    ("Melbourne", "VIC", "3000"),
    ("Brisbane", "QLD", "4000"),
    ("Perth", "WA", "6000"),
];

impl NewProfile {
    /// A profile with just a name and an email; everything else empty.
    pub fn new(first_name: &str, last_name: &str, email: &str) -> Self {
        Self {
            created_at: None,
            first_name: Some(first_name.into()),
            last_name: Some(last_name.into()),
            email: Some(email.into()),
            mobile_phone: None,
            profile_type: ProfileType::Active,
            address: None,
            identities: Vec::new(),
            comms: Comms::default(),
            custom_attributes: Vec::new(),
            tier: None,
            tags: Vec::new(),
            extras: ProfileExtras::default(),
        }
    }

    /// Realistic demo customer number `n`: Australian address and mobile, a `shopify` identity,
    /// email consent, custom attributes, a tier, a birthday, list memberships, and a connection
    /// for even `n`. Distinct `n` below 89,999,999 give distinct emails, mobiles and identities,
    /// so `1..=100_000` seed one tenant.
    /// Emails are at `example.org` (a reserved domain, and not the never-synced `example.com`).
    pub fn demo(n: u32) -> Self {
        let i = n as usize;
        let first = FIRST_NAMES[i % FIRST_NAMES.len()];
        let last = LAST_NAMES[(i / FIRST_NAMES.len() + i * 3) % LAST_NAMES.len()];
        let (city, state, postcode) = CITIES[i % CITIES.len()];
        let tiers = [("bronze", "Bronze"), ("silver", "Silver"), ("gold", "Gold")];
        let (tier_handle, tier_name) = tiers[i % tiers.len()];
        let consent_at = "2024-01-15 09:30:00".to_owned();
        let mut extras = ProfileExtras {
            dates: vec![DateAttribute {
                handle: "birthday".into(),
                name: "Birthday".into(),
                date: format!("{}-{:02}-{:02}", 1970 + n % 35, 1 + n % 12, 1 + n % 28),
            }],
            connections: Vec::new(),
            lists: vec![ListMembership {
                handle: "newsletter".into(),
                name: "Newsletter".into(),
                subscribed: true,
                subscribed_at: Some(consent_at.clone()),
            }],
        };
        if n.is_multiple_of(2) {
            extras.connections.push(Connection {
                id: uuid::Uuid::new_v4().to_string(),
                relationship: "child".into(),
                first_name: Some(FIRST_NAMES[(i + 5) % FIRST_NAMES.len()].into()),
                last_name: Some(last.into()),
                connected_at: consent_at.clone(),
            });
        }
        Self {
            created_at: None,
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            email: Some(format!(
                "{}.{}.{n}@example.org",
                first.to_lowercase(),
                last.to_lowercase()
            )),
            mobile_phone: Some(format!("+614{:08}", 10_000_000 + n % 89_999_999)),
            profile_type: ProfileType::Active,
            address: Some(Address {
                address_line_1: Some(format!("{} George Street", 1 + n % 400)),
                address_line_2: (n.is_multiple_of(3)).then(|| format!("Unit {}", 1 + n % 20)),
                city: Some(city.into()),
                state: Some(state.into()),
                postcode: Some(postcode.into()),
                country: Some("AU".into()),
            }),
            identities: vec![(
                "shopify".into(),
                format!("{}", 7_000_000_000_u64 + u64::from(n)),
            )],
            comms: Comms {
                email_promo: Some(true),
                email_optout: Some(false),
                sms_promo: Some(n.is_multiple_of(2)),
                email_consent_updated_at: Some(consent_at.clone()),
                sms_consent_updated_at: Some(consent_at),
                ..Comms::default()
            },
            custom_attributes: vec![
                CustomAttribute::new(
                    "profile",
                    "favourite_store",
                    Value::String(format!("{city} CBD")),
                ),
                CustomAttribute::new("profile", "vip", Value::Bool(n.is_multiple_of(3))),
            ],
            tier: Some(Tier {
                handle: tier_handle.into(),
                name: tier_name.into(),
            }),
            tags: vec!["demo".into()],
            extras,
        }
    }

    /// The record it becomes, with a fresh id, stamped [`Self::created_at`] or else `now`
    /// (`YYYY-MM-DD HH:MM:SS`); its identities carry the same stamp.
    fn into_record(self, now: &str) -> ProfileRecord {
        let at = self
            .created_at
            .map_or_else(|| now.to_owned(), responses::format_timestamp);
        let profile = Profile {
            id: uuid::Uuid::new_v4().to_string(),
            first_name: self.first_name,
            last_name: self.last_name,
            email: self.email,
            mobile_phone: self.mobile_phone,
            profile_type: self.profile_type,
            address: self.address,
            identities: self
                .identities
                .into_iter()
                .map(|(handle, identifier)| Identity::new(&handle, &identifier, &at))
                .collect(),
            attributes: ProfileAttributes { comms: self.comms },
            custom_attributes: self.custom_attributes,
            tier: self.tier,
            tags: self.tags,
            reward_balance: 0.0,
            point_balance: 0.0,
            created_at: at.clone(),
            updated_at: at,
        };
        ProfileRecord {
            profile,
            extras: self.extras,
        }
    }
}

/// A profile and the data behind its data-source endpoints.
#[derive(Debug, Clone)]
pub(crate) struct ProfileRecord {
    pub(crate) profile: Profile,
    pub(crate) extras: ProfileExtras,
}

/// True for `local@domain.tld`.
fn is_email(text: &str) -> bool {
    let mut parts = text.split('@');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None)
            if !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    )
}

/// True for an E.164 number: `+`, then 7 to 15 digits, not starting with 0.
fn is_e164(text: &str) -> bool {
    let Some(digits) = text.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Reads `custom_attributes` in list form (`[{namespace,handle,type?,value}]`) or map form
/// (`{namespace:{handle:value}}`).
fn parse_custom_attributes(value: &Value) -> Option<Vec<CustomAttribute>> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let namespace = item.get("namespace")?.as_str()?;
                let handle = item.get("handle")?.as_str()?;
                let value = item.get("value").cloned().unwrap_or(Value::Null);
                let mut attribute = CustomAttribute::new(namespace, handle, value);
                if let Some(kind) = item.get("type").and_then(Value::as_str) {
                    attribute.kind = kind.into();
                }
                Some(attribute)
            })
            .collect(),
        Value::Object(namespaces) => {
            let mut attributes = Vec::new();
            for (namespace, handles) in namespaces {
                for (handle, value) in handles.as_object()? {
                    attributes.push(CustomAttribute::new(namespace, handle, value.clone()));
                }
            }
            Some(attributes)
        }
        _ => None,
    }
}

/// The tenant's profiles other than `except`, for the uniqueness rules; each check is a lookup
/// in the tenant's indexes.
struct Others<'a> {
    profiles: &'a Profiles,
    except: Option<&'a str>,
}

impl Others<'_> {
    /// Whether one of `holders` is another profile than `except`.
    fn any_other(&self, holders: &[String]) -> bool {
        holders.iter().any(|id| Some(id.as_str()) != self.except)
    }

    /// Whether another profile holds this email (ignoring case).
    fn email(&self, email: &str) -> bool {
        self.any_other(self.profiles.email_holders(email))
    }

    /// Whether another profile holds this mobile.
    fn mobile(&self, mobile: &str) -> bool {
        self.any_other(self.profiles.mobile_holders(mobile))
    }

    /// Whether another profile holds identity (handle, identifier).
    fn identity(&self, handle: &str, identifier: &str) -> bool {
        self.any_other(self.profiles.identity_holders(handle, identifier))
    }
}

/// Checks the format and uniqueness of an email and a mobile.
fn check_contacts(
    others: &Others<'_>,
    email: Option<&str>,
    mobile: Option<&str>,
    v: &mut Validator,
) {
    if let Some(email) = email {
        if !is_email(email) {
            v.fail("email", "The email field must be a valid email address.");
        } else if others.email(email) {
            v.fail("email", "The email has already been taken.");
        }
    }
    if let Some(mobile) = mobile {
        if !is_e164(mobile) {
            v.fail(
                "mobile_phone",
                "The mobile phone field must be a valid E.164 phone number.",
            );
        } else if others.mobile(mobile) {
            v.fail("mobile_phone", "The mobile phone has already been taken.");
        }
    }
}

/// Validates seed data like the API would: valid, free contacts and free identities.
fn check_new(others: &Others<'_>, new: &NewProfile) -> Result<(), ApiError> {
    let mut v = Validator::default();
    check_contacts(
        others,
        new.email.as_deref(),
        new.mobile_phone.as_deref(),
        &mut v,
    );
    for (handle, identifier) in &new.identities {
        if others.identity(handle, identifier) {
            v.fail("identifier", "The identifier has already been taken.");
        }
    }
    v.finish()
}

impl Tenant {
    /// The profile record with this id (404 when none).
    pub(crate) fn record(&self, id: &str) -> Result<&ProfileRecord, ApiError> {
        self.profiles
            .get(id)
            .ok_or_else(|| ApiError::not_found("Profile"))
    }

    /// The profile record with this id, to change (404 when none); the tenant's indexes follow
    /// the change when the guard is dropped.
    pub(crate) fn record_mut(&mut self, id: &str) -> Result<ProfileMut<'_>, ApiError> {
        self.profiles
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found("Profile"))
    }

    /// The profile holding identity (handle, identifier), if any (the first created, should a
    /// handle edit have given it to two).
    pub(crate) fn profile_by_identity(&self, handle: &str, identifier: &str) -> Option<&Profile> {
        let holders = self.profiles.identity_holders(handle, identifier);
        self.profiles.first_of(holders).map(|r| &r.profile)
    }

    /// The profile holding this email, ignoring case, if any (the first created, should a
    /// handle edit have given it to two).
    pub(crate) fn profile_by_email(&self, email: &str) -> Option<&Profile> {
        let holders = self.profiles.email_holders(email);
        self.profiles.first_of(holders).map(|r| &r.profile)
    }

    /// The tenant's profiles other than `except`, for the uniqueness rules.
    fn others<'a>(&'a self, except: Option<&'a str>) -> Others<'a> {
        Others {
            profiles: &self.profiles,
            except,
        }
    }

    /// Checks format and uniqueness of an email and a mobile for profile `except`.
    pub(crate) fn check_contacts(
        &self,
        except: Option<&str>,
        email: Option<&str>,
        mobile: Option<&str>,
        v: &mut Validator,
    ) {
        check_contacts(&self.others(except), email, mobile, v);
    }

    /// Creates a profile from seed data (validated like the API would).
    pub(crate) fn insert_profile(&mut self, new: NewProfile) -> Result<Profile, ApiError> {
        check_new(&self.others(None), &new)?;
        let record = new.into_record(&responses::now());
        let profile = record.profile.clone();
        self.profiles.push(record);
        Ok(profile)
    }

    /// Creates many profiles from seed data at once, all or none: each is validated like the
    /// API would, against the tenant and the ones before it (422 fields are prefixed with its
    /// position: `3.email`). Uniqueness is looked up in the tenant's indexes, so this is linear.
    pub(crate) fn insert_profiles(
        &mut self,
        news: Vec<NewProfile>,
    ) -> Result<Vec<Profile>, ApiError> {
        let before = self.profiles.len();
        let now = responses::now();
        let mut v = Validator::default();
        for (position, new) in news.into_iter().enumerate() {
            match check_new(&self.others(None), &new) {
                Ok(()) => self.profiles.push(new.into_record(&now)),
                Err(error) => v.nest(&position.to_string(), error),
            }
        }
        if let Err(error) = v.finish() {
            self.profiles.truncate(before);
            return Err(error);
        }
        Ok(self
            .profiles
            .iter()
            .skip(before)
            .map(|r| r.profile.clone())
            .collect())
    }

    /// Deletes a profile as CX Manager would: answers its last state, with
    /// `profile_type: deleted` and `updated_at` bumped, and the `profile.deleted` event.
    pub(crate) fn delete_profile(&mut self, id: &str) -> Result<(Profile, ProfileEvent), ApiError> {
        let mut profile = self
            .profiles
            .remove(id)
            .ok_or_else(|| ApiError::not_found("Profile"))?
            .profile;
        profile.profile_type = ProfileType::Deleted;
        profile.updated_at = responses::now();
        let event = ProfileEvent::new(Trigger::Deleted, &profile);
        Ok((profile, event))
    }

    /// Applies a `PUT /profiles/{id}` body; answers the profile and whether anything changed.
    pub(super) fn update_profile(
        &mut self,
        id: &str,
        body: &Map<String, Value>,
    ) -> Result<(Profile, bool), ApiError> {
        let current = self.record(id)?.profile.clone();
        let mut next = current.clone();
        let mut v = Validator::default();
        if let Some(first) = v.nullable_string(body, "first_name") {
            next.first_name = first;
        }
        if let Some(last) = v.nullable_string(body, "last_name") {
            next.last_name = last;
        }
        if let Some(email) = v.nullable_string(body, "email") {
            next.email = email;
        }
        if let Some(mobile) = v.nullable_string(body, "mobile_phone") {
            next.mobile_phone = mobile;
        }
        self.check_contacts(
            Some(id),
            body.get("email").and(next.email.as_deref()),
            body.get("mobile_phone").and(next.mobile_phone.as_deref()),
            &mut v,
        );
        if let Some(kind) = body.get("profile_type") {
            match kind.as_str().and_then(ProfileType::parse) {
                Some(kind) => next.profile_type = kind,
                None => v.fail_selected("profile_type"),
            }
        }
        match body.get("address") {
            None => {}
            Some(Value::Null) => next.address = None,
            Some(Value::Object(fields)) => {
                let address = next.address.get_or_insert_with(Address::default);
                for (name, slot) in address.fields_mut() {
                    match fields.get(name) {
                        None => {}
                        Some(Value::Null) => *slot = None,
                        Some(Value::String(text)) => *slot = Some(text.clone()),
                        Some(_) => {
                            let full = format!("address.{name}");
                            v.fail(&full, format!("The {full} field must be a string."));
                        }
                    }
                }
            }
            Some(_) => v.fail("address", "The address field must be an object."),
        }
        if let Some(value) = body.get("custom_attributes") {
            match parse_custom_attributes(value) {
                Some(incoming) => {
                    for attribute in incoming {
                        match next.custom_attributes.iter_mut().find(|a| {
                            a.namespace == attribute.namespace && a.handle == attribute.handle
                        }) {
                            Some(existing) => *existing = attribute,
                            None => next.custom_attributes.push(attribute),
                        }
                    }
                }
                None => v.fail(
                    "custom_attributes",
                    "The custom attributes field is invalid.",
                ),
            }
        }
        if let Some(tags) = body.get("tags") {
            match serde_json::from_value::<Vec<String>>(tags.clone()) {
                Ok(tags) => next.tags = tags,
                Err(_) => v.fail("tags", "The tags field must be an array of strings."),
            }
        }
        v.finish()?;
        let changed = next != current;
        if changed {
            next.updated_at = responses::now();
            self.record_mut(id)?.profile = next.clone();
        }
        Ok((next, changed))
    }

    /// Edits a profile as CX Manager would ([`super::OmneoSim::edit_profile`] and the `/_sim`
    /// `PATCH`): the id cannot change, and when the edit changed something `updated_at` is bumped
    /// and `profile.updated` is answered (for the caller to deliver to every namespace).
    pub(crate) fn cx_edit(
        &mut self,
        id: &str,
        edit: impl FnOnce(&mut Profile),
    ) -> Result<(Profile, Option<ProfileEvent>), ApiError> {
        let mut record = self.record_mut(id)?;
        let before = record.profile.clone();
        edit(&mut record.profile);
        record.profile.id = before.id.clone();
        if record.profile == before {
            return Ok((before, None));
        }
        record.profile.updated_at = responses::now();
        let event = ProfileEvent::new(Trigger::Updated, &record.profile);
        Ok((record.profile.clone(), Some(event)))
    }

    /// Touches `updated_at` of a profile after a change to one of its parts and answers the
    /// `profile.updated` event.
    pub(crate) fn touch(&mut self, id: &str) -> Result<ProfileEvent, ApiError> {
        let mut record = self.record_mut(id)?;
        record.profile.updated_at = responses::now();
        Ok(ProfileEvent::new(Trigger::Updated, &record.profile))
    }
}

/// `{id}` of a profile path.
#[derive(Debug, Deserialize)]
pub(crate) struct ProfilePath {
    pub(crate) id: String,
}

/// `GET /profiles/{id}`.
pub(crate) async fn show(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
) -> Result<Response, ApiError> {
    sim.read(&caller.tenant, |t| Ok(data(&t.record(&path.id)?.profile)))
}

/// `POST /profiles/search-id` `{"type": handle, "id": identifier}` → the profile (404 when none).
pub(crate) async fn search_id(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let mut v = Validator::default();
    let handle = v.required_string(&body, "type");
    let identifier = match body.get("id") {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => v.required_string(&body, "id"),
    };
    let (handle, identifier) = v.finish_with(handle.zip(identifier))?;
    sim.read(&caller.tenant, |t| {
        t.profile_by_identity(&handle, &identifier)
            .map(data)
            .ok_or_else(|| ApiError::not_found("Profile"))
    })
}

/// `PUT /profiles/{id}`: partial update; `profile.updated` when something changed.
pub(crate) async fn update(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let profile = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        let (profile, changed) = t.update_profile(&path.id, &body)?;
        let event = changed.then(|| ProfileEvent::new(Trigger::Updated, &profile));
        Ok((profile, event))
    })?;
    Ok(data(profile))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn e164_and_email_checks() {
        assert!(is_e164("+61412345678"));
        assert!(!is_e164("0412345678"));
        assert!(!is_e164("+0412345678"));
        assert!(!is_e164("+61 412 345 678"));
        assert!(is_email("a.b@example.org"));
        assert!(!is_email("a.b@example"));
        assert!(!is_email("a@b@c.d"));
    }

    #[test]
    fn custom_attributes_accept_list_and_map_forms() {
        let list = serde_json::json!([{"namespace":"profile","handle":"vip","type":"boolean","value":true}]);
        let map = serde_json::json!({"profile": {"vip": true}});
        assert_eq!(
            parse_custom_attributes(&list),
            parse_custom_attributes(&map)
        );
        assert_eq!(parse_custom_attributes(&serde_json::json!("x")), None);
    }

    #[test]
    fn a_hundred_thousand_demo_profiles_are_valid_and_distinct() {
        let mut emails = HashSet::new();
        let mut mobiles = HashSet::new();
        let mut identities = HashSet::new();
        for n in 1..=100_000 {
            let demo = NewProfile::demo(n);
            let email = demo.email.expect("an email");
            let mobile = demo.mobile_phone.expect("a mobile");
            assert!(is_email(&email), "{email}");
            assert!(is_e164(&mobile), "{mobile}");
            assert!(emails.insert(email.to_ascii_lowercase()), "{email} twice");
            assert!(mobiles.insert(mobile.clone()), "{mobile} twice");
            for identity in demo.identities {
                assert!(identities.insert(identity.clone()), "{identity:?} twice");
            }
        }
    }
}
