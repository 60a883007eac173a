//! An Omneo profile as Klaviyo gets it (product.md §6.2 steps 2 and 4): the exclusions, the core
//! fields, the E.164 phone, the address as `location`, and the tenant's `mappings`. The one place
//! a profile is mapped — the live sync uses it, and so will the backfill.

use phonenumber::country::Id as CountryId;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::E164Phone;
use crate::klaviyo::models::{Location, Patch, ProfileUpsert};
use crate::omneo::models::{Profile, ProfileType};
use crate::settings::Settings;

/// Why a profile is never synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// The email contains `@example.com` (test data).
    ExampleEmail,
    /// The email starts with `staff-profile-`.
    StaffProfile,
    /// A connection (dependant) profile.
    Dependant,
    /// The tenant's `exclude_logic` is truthy for it.
    TenantRule,
}

impl Exclusion {
    /// The reason in a few words, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ExampleEmail => "email at example.com",
            Self::StaffProfile => "staff profile",
            Self::Dependant => "connection (dependant) profile",
            Self::TenantRule => "the tenant's exclude_logic",
        }
    }
}

/// The profile's event context as mappings and `exclude_logic` read it: the profile JSON, with
/// `custom_attributes` in the map form `{namespace: {handle: value}}` so that a path such as
/// `custom_attributes.prefs.colour` reaches a value whichever form Omneo sent.
pub fn event_context(profile: &Profile) -> Value {
    let mut context = profile.raw.clone();
    if let Some(object) = context.as_object_mut() {
        let mut namespaces = Map::new();
        for attribute in &profile.custom_attributes {
            let handles = namespaces
                .entry(attribute.namespace.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(handles) = handles.as_object_mut() {
                handles.insert(attribute.handle.clone(), attribute.value.clone());
            }
        }
        object.insert("custom_attributes".into(), Value::Object(namespaces));
    }
    context
}

/// Why the profile is never synced, if it is not; the tenant rule's evaluation error otherwise.
pub fn exclusion(
    profile: &Profile,
    context: &Value,
    settings: &Settings,
) -> Result<Option<Exclusion>, String> {
    let email = profile
        .email
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if email.contains("@example.com") {
        return Ok(Some(Exclusion::ExampleEmail));
    }
    if email.starts_with("staff-profile-") {
        return Ok(Some(Exclusion::StaffProfile));
    }
    if profile.profile_type == Some(ProfileType::Dependant) {
        return Ok(Some(Exclusion::Dependant));
    }
    if settings.excludes(&context.to_string())? {
        return Ok(Some(Exclusion::TenantRule));
    }
    Ok(None)
}

/// A profile mapped for Klaviyo's profile import.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedProfile {
    /// The import payload (no Klaviyo id: matching adds it).
    pub upsert: ProfileUpsert,
    /// The E.164 phone, when the profile has one that could be normalised.
    pub phone: Option<E164Phone>,
    /// Problems that left a field out (an unparseable phone, a mapping source of the wrong
    /// type), for the logs; they never fail the sync.
    pub omitted: Vec<String>,
}

impl MappedProfile {
    /// Maps `profile` (with its `context`) under the tenant's settings.
    pub fn of(profile: &Profile, context: &Value, settings: &Settings) -> Self {
        let mut omitted = Vec::new();
        let text = |value: &Option<String>| match value.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => Patch::Set(text.to_owned()),
            _ => Patch::Keep,
        };
        let country = settings.phone_default_country.parse::<CountryId>().ok();
        let phone = profile
            .mobile_phone
            .as_deref()
            .map(str::trim)
            .filter(|raw| !raw.is_empty())
            .and_then(|raw| match E164Phone::normalise(raw, country) {
                Ok(phone) => Some(phone),
                Err(error) => {
                    omitted.push(format!("mobile_phone: {error}"));
                    None
                }
            });
        let mut upsert = ProfileUpsert {
            id: None,
            email: text(&profile.email),
            phone_number: phone.clone().map_or(Patch::Keep, Patch::Set),
            external_id: Patch::Set(profile.id.clone()),
            first_name: text(&profile.first_name),
            last_name: text(&profile.last_name),
            title: Patch::Keep,
            organization: Patch::Keep,
            locale: Patch::Keep,
            location: address_location(profile).map_or(Patch::Keep, Patch::Set),
            properties: Map::new(),
        };
        for mapping in &settings.mappings {
            let Some(value) = lookup(context, &mapping.source) else {
                continue;
            };
            if let Err(problem) = apply(&mut upsert, &mapping.target, value) {
                omitted.push(format!(
                    "{} → {}: {problem}",
                    mapping.source, mapping.target
                ));
            }
        }
        Self {
            upsert,
            phone,
            omitted,
        }
    }

    /// SHA-256 (hex) of the import payload: equal hashes mean nothing mapped changed.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.upsert.to_document().to_string()))
    }
}

/// Omneo's address as Klaviyo's `location`; `None` when it has no field.
fn address_location(profile: &Profile) -> Option<Location> {
    let address = profile.address.as_ref()?;
    let field = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let location = Location {
        address1: field(&address.address_line_1),
        address2: field(&address.address_line_2),
        city: field(&address.city),
        region: field(&address.state),
        zip: field(&address.postcode),
        country: field(&address.country),
        timezone: None,
    };
    (location != Location::default()).then_some(location)
}

/// The value at a dot path; `None` when absent or `null` (a missing source leaves the target out).
fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(context, |value, name| match value {
            Value::Object(map) => map.get(name),
            Value::Array(items) => name.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
        .filter(|value| !value.is_null())
}

/// Writes `value` to a mapping target (validated by the settings: `properties.<path>`, a profile
/// field, or `location.<field>`).
fn apply(upsert: &mut ProfileUpsert, target: &str, value: &Value) -> Result<(), String> {
    if let Some(path) = target.strip_prefix("properties.") {
        insert_path(&mut upsert.properties, path, value.clone());
        return Ok(());
    }
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        _ => return Err("an object or a list cannot fill a text field".into()),
    };
    if let Some(field) = target.strip_prefix("location.") {
        let location = match &mut upsert.location {
            Patch::Set(location) => location,
            slot => {
                *slot = Patch::Set(Location::default());
                let Patch::Set(location) = slot else {
                    unreachable!("just set")
                };
                location
            }
        };
        let slot = match field {
            "address1" => &mut location.address1,
            "address2" => &mut location.address2,
            "city" => &mut location.city,
            "region" => &mut location.region,
            "zip" => &mut location.zip,
            "country" => &mut location.country,
            "timezone" => &mut location.timezone,
            other => return Err(format!("unknown location field {other}")),
        };
        *slot = Some(text);
        return Ok(());
    }
    let slot = match target {
        "first_name" => &mut upsert.first_name,
        "last_name" => &mut upsert.last_name,
        "title" => &mut upsert.title,
        "organization" => &mut upsert.organization,
        "locale" => &mut upsert.locale,
        other => return Err(format!("unknown target {other}")),
    };
    *slot = Patch::Set(text);
    Ok(())
}

/// Inserts `value` at a dot path of nested objects (`prefs.colour` → `{"prefs": {"colour": …}}`).
fn insert_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = map
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(child) = child {
                insert_path(child, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn profile(raw: Value) -> Profile {
        serde_json::from_value(raw).unwrap()
    }

    fn settings(value: Value) -> Settings {
        Settings::from_json(&value).unwrap()
    }

    fn mapped(raw: Value, settings_json: Value) -> MappedProfile {
        let profile = profile(raw);
        let context = event_context(&profile);
        MappedProfile::of(&profile, &context, &settings(settings_json))
    }

    #[test]
    fn core_fields_phone_and_address_map_to_klaviyo() {
        let m = mapped(
            json!({"id": "p-1", "first_name": " Ada ", "last_name": "Lovelace", "email": "ada@shop.test",
                "mobile_phone": "0412 345 678",
                "address": {"address_line_1": "1 Main St", "address_line_2": null, "city": "Sydney",
                    "state": "NSW", "postcode": "2000", "country": "AU"}}),
            json!({}),
        );
        assert_eq!(
            m.upsert.to_document()["data"]["attributes"],
            json!({"email": "ada@shop.test", "phone_number": "+61412345678", "external_id": "p-1",
                "first_name": "Ada", "last_name": "Lovelace",
                "location": {"address1": "1 Main St", "city": "Sydney", "region": "NSW", "zip": "2000", "country": "AU"}})
        );
        assert_eq!(
            m.phone.as_ref().map(E164Phone::as_str),
            Some("+61412345678")
        );
        assert!(m.omitted.is_empty());
    }

    #[test]
    fn the_default_country_reads_local_numbers_and_bad_numbers_are_left_out() {
        let nz = mapped(
            json!({"id": "p", "mobile_phone": "021 123 4567"}),
            json!({"phone_default_country": "NZ"}),
        );
        assert_eq!(
            nz.phone.as_ref().map(E164Phone::as_str),
            Some("+64211234567")
        );
        let bad = mapped(
            json!({"id": "p", "email": "a@b.co", "mobile_phone": "call me"}),
            json!({}),
        );
        assert_eq!(bad.phone, None);
        assert_eq!(bad.upsert.phone_number, Patch::Keep, "never sent as null");
        assert_eq!(bad.omitted.len(), 1, "{:?}", bad.omitted);
        assert!(bad.omitted[0].contains("mobile_phone"));
    }

    #[test]
    fn mappings_fill_properties_fields_and_location_and_skip_missing_sources() {
        let m = mapped(
            json!({"id": "p", "tier": {"name": "Gold", "handle": "gold"}, "tags": ["vip"],
                "custom_attributes": [{"namespace": "prefs", "handle": "colour", "type": "string", "value": "teal"}],
                "attributes": {"appearance": {"size_top": 12}}, "locale": "en-AU"}),
            json!({"mappings": [
                {"source": "tier.name", "target": "properties.tier"},
                {"source": "custom_attributes.prefs.colour", "target": "properties.prefs.colour"},
                {"source": "attributes.appearance.size_top", "target": "properties.size_top"},
                {"source": "tier.handle", "target": "title"},
                {"source": "locale", "target": "locale"},
                {"source": "tags.0", "target": "location.timezone"},
                {"source": "nowhere.to.be.found", "target": "organization"},
                {"source": "tier", "target": "last_name"},
            ]}),
        );
        let attributes = &m.upsert.to_document()["data"]["attributes"];
        assert_eq!(
            attributes["properties"],
            json!({"tier": "Gold", "prefs": {"colour": "teal"}, "size_top": 12})
        );
        assert_eq!(attributes["title"], "gold");
        assert_eq!(attributes["locale"], "en-AU");
        assert_eq!(attributes["location"], json!({"timezone": "vip"}));
        assert!(
            attributes.get("organization").is_none(),
            "a missing source is left out"
        );
        assert!(
            attributes.get("last_name").is_none(),
            "an object cannot fill a text field"
        );
        assert_eq!(m.omitted.len(), 1, "{:?}", m.omitted);
    }

    #[test]
    fn the_hash_changes_exactly_when_the_payload_does() {
        let a = mapped(
            json!({"id": "p", "email": "a@b.co", "updated_at": "2026-01-01 00:00:00"}),
            json!({}),
        );
        let b = mapped(
            json!({"id": "p", "email": "a@b.co", "updated_at": "2026-02-01 00:00:00"}),
            json!({}),
        );
        let c = mapped(json!({"id": "p", "email": "c@b.co"}), json!({}));
        assert_eq!(a.hash(), b.hash(), "an unmapped field does not count");
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn exclusions_follow_the_rules_in_order() {
        let check = |raw: Value, settings_json: Value| {
            let profile = profile(raw);
            let context = event_context(&profile);
            exclusion(&profile, &context, &settings(settings_json)).unwrap()
        };
        assert_eq!(
            check(json!({"id": "p", "email": "x@EXAMPLE.com"}), json!({})),
            Some(Exclusion::ExampleEmail)
        );
        assert_eq!(
            check(
                json!({"id": "p", "email": "staff-profile-9@shop.test"}),
                json!({})
            ),
            Some(Exclusion::StaffProfile)
        );
        assert_eq!(
            check(
                json!({"id": "p", "email": "kid@shop.test", "profile_type": "dependant"}),
                json!({})
            ),
            Some(Exclusion::Dependant)
        );
        let rule = json!({"exclude_logic": {"==": [{"var": "custom_attributes.prefs.no_marketing"}, true]}});
        assert_eq!(
            check(
                json!({"id": "p", "email": "a@shop.test", "custom_attributes": {"prefs": {"no_marketing": true}}}),
                rule.clone()
            ),
            Some(Exclusion::TenantRule)
        );
        assert_eq!(
            check(json!({"id": "p", "email": "a@shop.test"}), rule),
            None
        );
        assert_eq!(
            check(
                json!({"id": "p", "email": "a@shop.test", "profile_type": "active"}),
                json!({})
            ),
            None
        );
    }
}
