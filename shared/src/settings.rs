//! A tenant's settings (product.md §4), stored on the tenant record.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use phonenumber::country::Id as CountryId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api_error::field_of;

/// What to do in Klaviyo when an Omneo profile is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnProfileDeleted {
    /// Unsubscribe both channels.
    #[default]
    Unsubscribe,
    /// Request a Klaviyo data-privacy deletion.
    Delete,
    /// Do nothing.
    Ignore,
}

/// One extra Omneo → Klaviyo field mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Dot path into the Omneo profile event context, e.g. `tier.name`.
    pub source: String,
    /// Klaviyo target: `properties.<key>`, `first_name`, `location.city`, …
    pub target: String,
}

/// The tenant settings. Secrets (`webhook_secret`, `omneo_signing_secret`) live sealed on the
/// tenant record, not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Omneo identity handle under which the Klaviyo profile id is stored.
    pub identity_handle: String,
    /// Omneo webhook and interaction namespace; part of queue names.
    pub namespace: String,
    /// Prefix of the queue names (`None`: the tenant id).
    pub task_queue_name: Option<String>,
    /// Omneo region id for region-scoped writes.
    pub default_region: Option<String>,
    /// ISO country used to turn a non-E.164 phone into E.164.
    pub phone_default_country: String,
    /// Optional Klaviyo master list id.
    pub master_list_id: Option<String>,
    /// Extra field mappings.
    pub mappings: Vec<Mapping>,
    /// JSON Logic expression as JSON text (Firestore cannot hold nested arrays); truthy → never synced.
    /// Input may give the expression itself or its JSON text (see [`logic_text`]).
    #[serde(deserialize_with = "logic_text")]
    pub exclude_logic: Option<String>,
    /// Behaviour on `profile.deleted`.
    pub on_profile_deleted: OnProfileDeleted,
    /// Window in which profile updates coalesce into one Klaviyo write.
    pub coalesce_seconds: u32,
    /// How often reconciliation (product.md §10) runs for the tenant, in minutes; 0 = off.
    pub reconcile_interval_minutes: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            identity_handle: "klaviyo".into(),
            namespace: "klaviyo".into(),
            task_queue_name: None,
            default_region: None,
            phone_default_country: "AU".into(),
            master_list_id: None,
            mappings: Vec::new(),
            exclude_logic: None,
            on_profile_deleted: OnProfileDeleted::Unsubscribe,
            coalesce_seconds: 5,
            reconcile_interval_minutes: 60,
        }
    }
}

/// The longest reconciliation interval: a week.
pub const MAX_RECONCILE_INTERVAL_MINUTES: u32 = 7 * 24 * 60;

/// A setting that failed validation: the field (a dot path below `settings`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSetting {
    /// The field, e.g. `mappings[2].target`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidSetting {
    /// A problem with `field` (a dot path below `settings`).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Parses a settings object (missing fields take their defaults, unknown fields are refused)
    /// and validates it.
    pub fn from_json(value: &Value) -> Result<Self, InvalidSetting> {
        let settings: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let message = e.inner().to_string();
            InvalidSetting::new(field_of(&e.path().to_string(), &message), message)
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what can be checked without calling Klaviyo.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (field, value) in [
            ("identity_handle", &self.identity_handle),
            ("namespace", &self.namespace),
        ] {
            if !is_slug(value) {
                return Err(InvalidSetting::new(
                    field,
                    "must be 1-63 characters of a-z, 0-9, '-' or '_'",
                ));
            }
        }
        if let Some(prefix) = &self.task_queue_name
            && !is_slug(prefix)
        {
            return Err(InvalidSetting::new(
                "task_queue_name",
                "must be 1-63 characters of a-z, 0-9, '-' or '_'",
            ));
        }
        if !(1..=300).contains(&self.coalesce_seconds) {
            return Err(InvalidSetting::new(
                "coalesce_seconds",
                "must be between 1 and 300",
            ));
        }
        if self.reconcile_interval_minutes > MAX_RECONCILE_INTERVAL_MINUTES {
            return Err(InvalidSetting::new(
                "reconcile_interval_minutes",
                "must be between 0 (off) and 10080 (a week)",
            ));
        }
        if self
            .default_region
            .as_deref()
            .is_some_and(|region| region.trim().is_empty())
        {
            return Err(InvalidSetting::new(
                "default_region",
                "must not be empty (send null to unset it)",
            ));
        }
        if self.phone_default_country.parse::<CountryId>().is_err() {
            return Err(InvalidSetting::new(
                "phone_default_country",
                format!(
                    "{:?} is not an ISO 3166-1 alpha-2 country code (e.g. AU)",
                    self.phone_default_country
                ),
            ));
        }
        if let Some(id) = &self.master_list_id
            && !is_list_id(id)
        {
            return Err(InvalidSetting::new(
                "master_list_id",
                "must be a Klaviyo list id: 1-64 letters or digits",
            ));
        }
        self.validate_mappings()?;
        if let Some(text) = &self.exclude_logic {
            compile_logic(text).map_err(|message| InvalidSetting::new("exclude_logic", message))?;
        }
        Ok(())
    }

    /// Whether `exclude_logic` is truthy for `data` (JSON text of the profile's event context);
    /// `false` when no rule is set. An evaluation error (e.g. arithmetic on a string) is returned
    /// with the engine's message, so the caller can record it rather than guess.
    pub fn excludes(&self, data: &str) -> Result<bool, String> {
        let Some(rule) = &self.exclude_logic else {
            return Ok(false);
        };
        // `!!` is JSON Logic's own truthiness, so the engine decides what counts as truthy.
        let verdict = ENGINE
            .eval_str(format!(r#"{{"!!": [{rule}]}}"#).as_str(), data)
            .map_err(|e| format!("exclude_logic failed: {e}"))?;
        Ok(verdict == "true")
    }

    /// `exclude_logic` as a JSON value (the stored text parsed), for display.
    pub fn exclude_logic_value(&self) -> Option<Value> {
        self.exclude_logic
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
    }

    fn validate_mappings(&self) -> Result<(), InvalidSetting> {
        let mut targets = BTreeSet::new();
        for (i, mapping) in self.mappings.iter().enumerate() {
            if !is_dot_path(&mapping.source) {
                return Err(InvalidSetting::new(
                    format!("mappings[{i}].source"),
                    "must be a dot path of non-empty names without spaces, e.g. tier.name",
                ));
            }
            let field = format!("mappings[{i}].target");
            check_target(&mapping.target)
                .map_err(|message| InvalidSetting::new(&field, message))?;
            if !targets.insert(mapping.target.as_str()) {
                return Err(InvalidSetting::new(
                    field,
                    format!("{} is the target of an earlier mapping", mapping.target),
                ));
            }
        }
        Ok(())
    }
}

/// The top-level Klaviyo profile fields a mapping may write (product.md §4); besides these:
/// `properties.<key>` and `location.<`[`LOCATION_FIELDS`]`>`.
pub const PROFILE_FIELDS: [&str; 5] =
    ["first_name", "last_name", "title", "organization", "locale"];

/// The `location.*` fields a mapping may write.
pub const LOCATION_FIELDS: [&str; 7] = [
    "address1", "address2", "city", "region", "zip", "country", "timezone",
];

fn check_target(target: &str) -> Result<(), String> {
    let valid = if let Some(key) = target.strip_prefix("properties.") {
        is_dot_path(key)
    } else if let Some(field) = target.strip_prefix("location.") {
        LOCATION_FIELDS.contains(&field)
    } else {
        PROFILE_FIELDS.contains(&target)
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{target:?} is not a mapping target; use properties.<key>, {} or location.<{}>",
            PROFILE_FIELDS.join(", "),
            LOCATION_FIELDS.join("|")
        ))
    }
}

/// The JSON Logic engine: built once, shared (it is thread-safe).
static ENGINE: LazyLock<datalogic_rs::Engine> = LazyLock::new(datalogic_rs::Engine::new);

/// Parses JSON Logic text and compiles it. Compiling alone accepts any single-key object as a
/// call of a custom operator (an error only when evaluated), so every operator the rule calls must
/// also be one of the engine's built-ins.
fn compile_logic(text: &str) -> Result<(), String> {
    let rule: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let known: BTreeSet<&str> = ENGINE.builtin_operator_names().collect();
    if let Some(unknown) = unknown_operator(&rule, &known) {
        return Err(format!("{unknown:?} is not a JSON Logic operator"));
    }
    ENGINE
        .compile(text)
        .map(drop)
        .map_err(|e| format!("is not a valid JSON Logic expression: {e}"))
}

/// The first operator (key of a single-key object) in `rule` that is not in `known`.
fn unknown_operator<'a>(rule: &'a Value, known: &BTreeSet<&str>) -> Option<&'a str> {
    match rule {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(op) = map.keys().find(|op| !known.contains(op.as_str()))
            {
                return Some(op);
            }
            map.values().find_map(|v| unknown_operator(v, known))
        }
        Value::Array(items) => items.iter().find_map(|v| unknown_operator(v, known)),
        _ => None,
    }
}

/// Deserializes `exclude_logic` from either the expression itself (`{"in": …}`) or its JSON text
/// (`"{\"in\": …}"`, the stored form); `null` unsets it. Either way it is kept as JSON text.
pub fn logic_text<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => None,
        Value::String(text) => Some(text),
        rule => Some(rule.to_string()),
    })
}

fn is_dot_path(value: &str) -> bool {
    !value.is_empty()
        && value
            .split('.')
            .all(|name| !name.is_empty() && !name.chars().any(char::is_whitespace))
}

fn is_list_id(value: &str) -> bool {
    (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(value: Value) -> String {
        Settings::from_json(&value).unwrap_err().field
    }

    #[test]
    fn mapping_targets_follow_the_grammar() {
        for good in [
            "properties.tier",
            "properties.prefs.colour",
            "first_name",
            "locale",
            "location.timezone",
            "location.zip",
        ] {
            assert_eq!(check_target(good), Ok(()), "{good}");
        }
        for bad in [
            "properties.",
            "properties",
            "email",
            "location.street",
            "location.",
            "First_name",
            "properties.a..b",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exclude_logic_is_kept_as_text_whether_given_as_value_or_text() {
        let rule = json!({"in": ["vip", {"var": "tags"}]});
        let from_value = Settings::from_json(&json!({"exclude_logic": rule})).unwrap();
        let from_text = Settings::from_json(&json!({"exclude_logic": rule.to_string()})).unwrap();
        assert_eq!(from_value, from_text);
        assert_eq!(from_value.exclude_logic_value(), Some(rule));
        let unset = Settings::from_json(&json!({"exclude_logic": null})).unwrap();
        assert_eq!(unset.exclude_logic, None);
    }

    #[test]
    fn exclude_logic_follows_json_logic_truthiness() {
        let settings = |rule: Value| Settings::from_json(&json!({"exclude_logic": rule})).unwrap();
        let vip = settings(json!({"in": ["vip", {"var": "tags"}]}));
        assert_eq!(vip.excludes(r#"{"tags": ["vip"]}"#), Ok(true));
        assert_eq!(vip.excludes(r#"{"tags": ["new"]}"#), Ok(false));
        let tier = settings(json!({"var": "tier.name"}));
        assert_eq!(tier.excludes(r#"{"tier": {"name": "Gold"}}"#), Ok(true));
        assert_eq!(
            tier.excludes(r#"{"tier": {"name": ""}}"#),
            Ok(false),
            "empty string is falsy"
        );
        assert_eq!(tier.excludes(r#"{"tier": null}"#), Ok(false));
        assert_eq!(Settings::default().excludes("{}"), Ok(false));
        assert!(vip.excludes("not json").is_err());
    }

    #[test]
    fn invalid_settings_name_their_field() {
        assert_eq!(
            field_of(json!({"exclude_logic": {"no_such_op": [1]}})),
            "exclude_logic"
        );
        assert_eq!(
            field_of(json!({"exclude_logic": "{not json"})),
            "exclude_logic"
        );
        assert_eq!(
            field_of(json!({"exclude_logic": {"and": [true, {"!": {"lenght": [1]}}]}})),
            "exclude_logic"
        );
        assert_eq!(
            field_of(json!({"exclude_logic": {"==": 1, "!=": 2}})),
            "exclude_logic"
        );
        assert_eq!(
            field_of(json!({"phone_default_country": "ZZ"})),
            "phone_default_country"
        );
        assert_eq!(
            field_of(json!({"phone_default_country": "au"})),
            "phone_default_country"
        );
        assert_eq!(field_of(json!({"master_list_id": ""})), "master_list_id");
        assert_eq!(field_of(json!({"default_region": " "})), "default_region");
        assert_eq!(
            field_of(
                json!({"mappings": [{"source": "a", "target": "first_name"}, {"source": "b", "target": "nope"}]})
            ),
            "mappings[1].target"
        );
        assert_eq!(
            field_of(json!({"mappings": [{"source": "a..b", "target": "first_name"}]})),
            "mappings[0].source"
        );
        assert_eq!(
            field_of(
                json!({"mappings": [{"source": "a", "target": "title"}, {"source": "b", "target": "title"}]})
            ),
            "mappings[1].target"
        );
        assert_eq!(
            field_of(json!({"mappings": [{"source": "a"}]})),
            "mappings[0].target"
        );
        assert_eq!(
            field_of(json!({"mappings": [{"source": "a", "target": "title", "x": 1}]})),
            "mappings[0].x"
        );
        assert_eq!(field_of(json!({"wat": 1})), "wat");
        assert!(Settings::from_json(&json!({"phone_default_country": "NZ"})).is_ok());
    }
}
