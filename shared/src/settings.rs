//! A tenant's settings (product.md §4), stored on the tenant record.

use serde::{Deserialize, Serialize};

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
#[serde(default)]
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
