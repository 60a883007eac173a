//! A tenant's settings (product.md §4), stored on the tenant record.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    pub exclude_logic: Option<String>,
    /// Behaviour on `profile.deleted`.
    pub on_profile_deleted: OnProfileDeleted,
    /// Window in which profile updates coalesce into one Klaviyo write.
    pub coalesce_seconds: u32,
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
        }
    }
}

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
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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
            let path = e.path().to_string();
            let message = e.inner().to_string();
            let field = unknown_field(&message).map_or(path, str::to_owned);
            InvalidSetting::new(field, message)
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
        Ok(())
    }
}

/// `unknown field `x`, expected …` → `x`.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

fn is_slug(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
