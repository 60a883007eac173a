//! Klaviyo's JSON:API shapes (klaviyo.md "Conventions", "Shapes that matter", "Bulk" and
//! "Events and metrics"). A [`KlaviyoEvent`] is read alike from `GET /api/events` and from a
//! system-webhook delivery, and [`KlaviyoEvent::consent_event`] makes either the inbound
//! worker's [`ConsentEvent`].
//!
//! Responses are read leniently (unknown members are ignored, absent ones default); requests are
//! typed builders whose `to_document` renders exactly the shape Klaviyo expects.

use std::collections::BTreeMap;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use crate::domain::{ConsentState, E164Phone, KlaviyoProfileId, KlaviyoTopic, OmneoProfileId};
use crate::queue::ConsentEvent;

/// A JSON:API document: `{"data": …, "links": {…}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Document<T> {
    /// The primary data.
    pub data: T,
    /// Paging links of a collection.
    #[serde(default)]
    pub links: Links,
}

/// A collection's links; `next` is `null` on the last page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Links {
    /// The next page (absolute URL), when there is one.
    pub next: Option<String>,
    /// The previous page.
    pub prev: Option<String>,
}

/// A resource identifier `{"type", "id"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Identifier {
    /// The resource type, e.g. `profile`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id.
    pub id: String,
}

/// A resource object with typed attributes (and a typed id where the product has a type for it).
#[derive(Debug, Clone, Deserialize)]
pub struct Resource<A, I = String> {
    /// The resource type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The id.
    pub id: I,
    /// The attributes.
    pub attributes: A,
    /// Relationships by name.
    #[serde(default)]
    pub relationships: BTreeMap<String, Relationship>,
}

impl<A, I> Resource<A, I> {
    /// The ids a relationship links to (empty when absent).
    pub fn related_ids(&self, name: &str) -> Vec<&str> {
        match self.relationships.get(name).and_then(|r| r.data.as_ref()) {
            Some(Linkage::One(one)) => vec![one.id.as_str()],
            Some(Linkage::Many(many)) => many.iter().map(|i| i.id.as_str()).collect(),
            None => Vec::new(),
        }
    }
}

/// One relationship of a resource.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Relationship {
    /// Its linkage, when included.
    #[serde(default)]
    pub data: Option<Linkage>,
}

/// A relationship's linkage: one identifier or many.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Linkage {
    /// To-one.
    One(Identifier),
    /// To-many.
    Many(Vec<Identifier>),
}

/// A data source's attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DataSourceAttributes {
    /// The unique title, e.g. `Omneo Rewards`.
    pub title: String,
    /// `private` or `shared`.
    pub visibility: Option<String>,
    /// What it holds.
    pub description: Option<String>,
}

/// A data source.
pub type DataSource = Resource<DataSourceAttributes>;

/// Who may see a data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// This account only.
    Private,
    /// Shared.
    Shared,
}

/// A data source to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDataSource {
    /// Unique title (a duplicate is a 400).
    pub title: String,
    /// Visibility.
    pub visibility: Visibility,
    /// Description.
    pub description: Option<String>,
}

impl NewDataSource {
    /// The request document.
    pub fn to_document(&self) -> Value {
        json!({"data": {"type": "data-source", "attributes": {
            "title": self.title,
            "visibility": self.visibility,
            "description": self.description,
        }}})
    }
}

/// A webhook's attributes (Klaviyo masks the URL path and never returns the secret).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WebhookAttributes {
    /// The name: how we find ours.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// The masked endpoint URL.
    pub endpoint_url: Option<String>,
    /// Whether deliveries are on.
    pub enabled: Option<bool>,
}

/// A webhook; its topic ids are `related_ids("webhook-topics")`.
pub type Webhook = Resource<WebhookAttributes>;

/// A webhook topic, id e.g. `event:klaviyo.bounced_email`. Klaviyo's schema gives topics no
/// attributes: the type and id are all there is.
pub type WebhookTopic = Identifier;

/// A webhook to create.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Name (ours: `Omneo {tenant}`).
    pub name: String,
    /// Where deliveries go (https only).
    pub endpoint_url: Url,
    /// The signing key Klaviyo HMACs deliveries with.
    pub secret_key: SecretString,
    /// Description.
    pub description: Option<String>,
    /// Topic ids.
    pub topics: Vec<String>,
}

impl NewWebhook {
    /// The request document.
    pub fn to_document(&self) -> Value {
        let mut attributes = json!({
            "name": self.name,
            "endpoint_url": self.endpoint_url.as_str(),
            "secret_key": self.secret_key.expose_secret(),
        });
        if let Some(description) = &self.description {
            attributes["description"] = json!(description);
        }
        json!({"data": {
            "type": "webhook",
            "attributes": attributes,
            "relationships": {"webhook-topics": {"data": topic_linkage(&self.topics)}},
        }})
    }
}

/// Changes to a webhook (`PATCH`); absent fields are left alone, `topics` replaces the set.
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    /// New name.
    pub name: Option<String>,
    /// New endpoint.
    pub endpoint_url: Option<Url>,
    /// New signing key.
    pub secret_key: Option<SecretString>,
    /// New description.
    pub description: Option<String>,
    /// Turn deliveries on or off.
    pub enabled: Option<bool>,
    /// The complete new topic set.
    pub topics: Option<Vec<String>>,
}

impl WebhookUpdate {
    /// The request document for webhook `id`.
    pub fn to_document(&self, id: &str) -> Value {
        let mut attributes = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                attributes.insert(key.to_owned(), value);
            }
        };
        put("name", self.name.as_ref().map(|v| json!(v)));
        put(
            "endpoint_url",
            self.endpoint_url.as_ref().map(|v| json!(v.as_str())),
        );
        put(
            "secret_key",
            self.secret_key.as_ref().map(|v| json!(v.expose_secret())),
        );
        put("description", self.description.as_ref().map(|v| json!(v)));
        put("enabled", self.enabled.map(|v| json!(v)));
        let mut data = json!({"type": "webhook", "id": id, "attributes": attributes});
        if let Some(topics) = &self.topics {
            data["relationships"] = json!({"webhook-topics": {"data": topic_linkage(topics)}});
        }
        json!({ "data": data })
    }
}

fn topic_linkage(topics: &[String]) -> Vec<Value> {
    topics
        .iter()
        .map(|id| json!({"type": "webhook-topic", "id": id}))
        .collect()
}

/// A list's attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListAttributes {
    /// The list name.
    pub name: String,
    /// `single_opt_in` or `double_opt_in`.
    pub opt_in_process: Option<String>,
}

/// A list (6-character id).
pub type List = Resource<ListAttributes>;

/// A profile's location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Location {
    /// Street line 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address1: Option<String>,
    /// Street line 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address2: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Region or state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Postcode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// IANA time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// A profile's attributes as Klaviyo returns them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProfileAttributes {
    /// Email.
    pub email: Option<String>,
    /// Phone, E.164.
    pub phone_number: Option<String>,
    /// Our id for it: the Omneo profile id.
    pub external_id: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Location.
    pub location: Option<Location>,
    /// Custom properties.
    pub properties: Map<String, Value>,
    /// Consent (only with `additional-fields[profile]=subscriptions`).
    pub subscriptions: Option<Subscriptions>,
}

/// A profile (its id parsed as a [`KlaviyoProfileId`]).
pub type Profile = Resource<ProfileAttributes, KlaviyoProfileId>;

/// A profile's consent, per channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Subscriptions {
    /// Email.
    pub email: Option<EmailSubscriptions>,
    /// SMS.
    pub sms: Option<SmsSubscriptions>,
}

/// Email consent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EmailSubscriptions {
    /// Marketing consent.
    pub marketing: Option<ChannelConsent>,
}

/// SMS consent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SmsSubscriptions {
    /// Marketing consent.
    pub marketing: Option<ChannelConsent>,
    /// Transactional consent.
    pub transactional: Option<ChannelConsent>,
}

/// One channel's consent state and how it got there.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelConsent {
    /// The state.
    pub consent: Consent,
    /// How it was given, e.g. `API`.
    #[serde(default)]
    pub method: Option<String>,
    /// Detail of the method.
    #[serde(default)]
    pub method_detail: Option<String>,
    /// Our `custom_source` (`omneo` marks our own writes).
    #[serde(default)]
    pub custom_method_detail: Option<String>,
    /// Suppressions (bounces, spam complaints, manual).
    #[serde(default)]
    pub suppression: Vec<Value>,
}

/// A consent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Consent {
    /// Subscribed.
    Subscribed,
    /// Unsubscribed.
    Unsubscribed,
    /// Never subscribed.
    NeverSubscribed,
    /// A state this code does not know.
    #[serde(other)]
    Unknown,
}

impl Consent {
    /// What the state means for marketing: subscribed or not; `None` for a state this code does
    /// not know.
    pub fn state(self) -> Option<ConsentState> {
        match self {
            Self::Subscribed => Some(ConsentState::Subscribed),
            Self::Unsubscribed | Self::NeverSubscribed => Some(ConsentState::NotSubscribed),
            Self::Unknown => None,
        }
    }
}

/// A field of a profile upsert: left alone, cleared (`null`), or set.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Patch<T> {
    /// Absent: Klaviyo leaves the field alone.
    #[default]
    Keep,
    /// `null`: Klaviyo clears the field.
    Clear,
    /// Set to this value.
    Set(T),
}

impl<T> Patch<T> {
    /// `Set` when `Some`, `Clear` when `None`.
    pub fn from_option(value: Option<T>) -> Self {
        value.map_or(Self::Clear, Self::Set)
    }

    fn is_keep(&self) -> bool {
        matches!(self, Self::Keep)
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Set(value) => value.serialize(serializer),
            Self::Keep | Self::Clear => serializer.serialize_none(),
        }
    }
}

/// A profile to create or update through `POST /api/profile-import`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProfileUpsert {
    /// Update this Klaviyo profile (else Klaviyo matches by identifiers).
    #[serde(skip)]
    pub id: Option<KlaviyoProfileId>,
    /// Email.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub email: Patch<String>,
    /// Phone.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub phone_number: Patch<E164Phone>,
    /// The Omneo profile id.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub external_id: Patch<OmneoProfileId>,
    /// First name.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub first_name: Patch<String>,
    /// Last name.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub last_name: Patch<String>,
    /// Job title.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub title: Patch<String>,
    /// Company.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub organization: Patch<String>,
    /// Locale, e.g. `en-AU`.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub locale: Patch<String>,
    /// Location.
    #[serde(skip_serializing_if = "Patch::is_keep")]
    pub location: Patch<Location>,
    /// Custom properties (merged into the profile's).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

impl ProfileUpsert {
    /// The profile resource object (what [`Self::to_document`] puts under `data`, and what a
    /// [`BulkImport`] lists; its serialized size is what Klaviyo's per-profile limit counts).
    pub fn to_resource(&self) -> Value {
        let mut resource = json!({"type": "profile", "attributes": self});
        if let Some(id) = &self.id {
            resource["id"] = json!(id);
        }
        resource
    }

    /// The request document.
    pub fn to_document(&self) -> Value {
        json!({ "data": self.to_resource() })
    }
}

/// A bulk profile import job to create (`POST /api/profile-bulk-import-jobs`, klaviyo.md
/// §Bulk): at most 10,000 profiles, a body of at most 5 MB and at most 100 KB per profile
/// resource ([`ProfileUpsert::to_resource`]). Each profile is upserted as profile-import does,
/// except that `null` clears nothing: [`Patch::Clear`] leaves the field as [`Patch::Keep`] does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkImport {
    /// The profiles, in the order [`ImportError::profile_index`] counts them.
    pub profiles: Vec<ProfileUpsert>,
    /// Lists every imported profile joins (membership only; needs `lists:write`).
    pub list_ids: Vec<String>,
}

/// Where a bulk import document holds its profiles (the start of its import errors' pointers).
const BULK_PROFILES_POINTER: &str = "/data/attributes/profiles/data";

impl BulkImport {
    /// The request document.
    pub fn to_document(&self) -> Value {
        let profiles: Vec<Value> = self
            .profiles
            .iter()
            .map(ProfileUpsert::to_resource)
            .collect();
        let mut data = json!({
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": profiles}},
        });
        if !self.list_ids.is_empty() {
            let lists: Vec<Value> = self
                .list_ids
                .iter()
                .map(|id| json!({"type": "list", "id": id}))
                .collect();
            data["relationships"] = json!({"lists": {"data": lists}});
        }
        json!({ "data": data })
    }
}

/// Where a bulk import job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkJobStatus {
    /// Accepted, not started.
    Queued,
    /// Running.
    Processing,
    /// Every profile is processed: imported or failed.
    Complete,
    /// Stopped before the end.
    Cancelled,
    /// A status this code does not know.
    #[serde(other)]
    Unknown,
}

/// A bulk profile import job as Klaviyo reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Resource<BulkImportJobAttributes>")]
pub struct BulkImportJob {
    /// The job id.
    pub id: String,
    /// Where it stands.
    pub status: BulkJobStatus,
    /// How many profiles it holds.
    pub total_count: u64,
    /// How many were imported so far.
    pub completed_count: u64,
    /// How many failed so far (see the client's `bulk_import_errors`).
    pub failed_count: u64,
}

/// A job's attributes; Klaviyo may send the counts as `null`.
#[derive(Deserialize)]
struct BulkImportJobAttributes {
    status: BulkJobStatus,
    #[serde(default)]
    total_count: Option<u64>,
    #[serde(default)]
    completed_count: Option<u64>,
    #[serde(default)]
    failed_count: Option<u64>,
}

impl From<Resource<BulkImportJobAttributes>> for BulkImportJob {
    fn from(job: Resource<BulkImportJobAttributes>) -> Self {
        let attributes = job.attributes;
        Self {
            id: job.id,
            status: attributes.status,
            total_count: attributes.total_count.unwrap_or(0),
            completed_count: attributes.completed_count.unwrap_or(0),
            failed_count: attributes.failed_count.unwrap_or(0),
        }
    }
}

/// One profile a bulk import job could not import (an `import-error`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "Resource<ImportErrorAttributes>")]
pub struct ImportError {
    /// E.g. `invalid`, `duplicate_profile`.
    pub code: String,
    /// A summary, e.g. `Invalid input.`.
    pub title: String,
    /// What is wrong.
    pub detail: String,
    /// `source.pointer`: where in the job's document, e.g.
    /// `/data/attributes/profiles/data/3/attributes/email`.
    pub pointer: Option<String>,
    /// The profile resource object as sent.
    pub original_payload: Option<Value>,
}

#[derive(Deserialize)]
struct ImportErrorAttributes {
    #[serde(default)]
    code: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    source: Option<ErrorSource>,
    #[serde(default)]
    original_payload: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorSource {
    #[serde(default)]
    pointer: Option<String>,
}

impl From<Resource<ImportErrorAttributes>> for ImportError {
    fn from(error: Resource<ImportErrorAttributes>) -> Self {
        let attributes = error.attributes;
        Self {
            code: attributes.code,
            title: attributes.title,
            detail: attributes.detail,
            pointer: attributes.source.and_then(|source| source.pointer),
            original_payload: attributes.original_payload,
        }
    }
}

impl ImportError {
    /// The index in [`BulkImport::profiles`] of the profile this error is about, read from a
    /// pointer into the job's document (`/data/attributes/profiles/data/3/…` → 3); `None` when
    /// the pointer names no profile (`original_payload` still shows which one it was).
    pub fn profile_index(&self) -> Option<usize> {
        let rest = self
            .pointer
            .as_deref()?
            .strip_prefix(BULK_PROFILES_POINTER)?
            .strip_prefix('/')?;
        rest.split('/').next()?.parse().ok()
    }
}

/// The outcome of a profile import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedProfile {
    /// The Klaviyo profile id.
    pub id: KlaviyoProfileId,
    /// True when it was created (201), false when updated (200).
    pub created: bool,
}

/// How to find profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileFilter {
    /// `equals(external_id,"…")`: the Omneo profile id.
    ExternalId(OmneoProfileId),
    /// `equals(email,"…")`.
    Email(String),
    /// `equals(phone_number,"…")`.
    PhoneNumber(E164Phone),
}

impl ProfileFilter {
    /// The `filter` query value.
    pub fn to_query(&self) -> String {
        let (field, value) = match self {
            Self::ExternalId(v) => ("external_id", v.as_str()),
            Self::Email(v) => ("email", v.as_str()),
            Self::PhoneNumber(v) => ("phone_number", v.as_str()),
        };
        equals(field, value)
    }
}

/// `equals(field,"value")` with the value's quotes and backslashes escaped.
pub(crate) fn equals(field: &str, value: &str) -> String {
    format!("equals({field},{})", quoted(value))
}

/// `any(field,["a","b"])` with the values' quotes and backslashes escaped.
pub(crate) fn any(field: &str, values: &[&str]) -> String {
    let values: Vec<String> = values.iter().map(|value| quoted(value)).collect();
    format!("any({field},[{}])", values.join(","))
}

/// A filter's string value: in double quotes, its quotes and backslashes escaped.
fn quoted(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// One profile of a subscribe or unsubscribe job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriber {
    /// Email (needed for the email channel).
    pub email: Option<String>,
    /// Phone (needed for SMS).
    pub phone_number: Option<E164Phone>,
    /// Change email marketing.
    pub email_marketing: bool,
    /// Change SMS marketing.
    pub sms_marketing: bool,
    /// When the consent was given, for a job that imports history (`historical_import`).
    pub consented_at: Option<Timestamp>,
}

impl Subscriber {
    fn to_resource(&self, consent: &str, historical: bool) -> Value {
        let marketing = || {
            let mut marketing = json!({ "consent": consent });
            if let Some(at) = self.consented_at.filter(|_| historical) {
                marketing["consented_at"] = json!(at.to_string());
            }
            json!({ "marketing": marketing })
        };
        let mut subscriptions = Map::new();
        if self.email_marketing {
            subscriptions.insert("email".into(), marketing());
        }
        if self.sms_marketing {
            subscriptions.insert("sms".into(), marketing());
        }
        let mut attributes = json!({ "subscriptions": subscriptions });
        if let Some(email) = &self.email {
            attributes["email"] = json!(email);
        }
        if let Some(phone) = &self.phone_number {
            attributes["phone_number"] = json!(phone.as_str());
        }
        json!({"type": "profile", "attributes": attributes})
    }
}

/// A subscribe job (`profile-subscription-bulk-create-job`, ≤ [`SubscribeJob::MAX_PROFILES`]
/// profiles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeJob {
    /// Who, and which channels.
    pub subscribers: Vec<Subscriber>,
    /// Also add them to this list (the master list).
    pub list_id: Option<String>,
    /// `custom_source` (ours: `omneo`, which lets inbound drop the echo).
    pub custom_source: Option<String>,
    /// Record consent given earlier (`historical_import`, each subscriber's `consented_at`, so
    /// no confirmation email goes out) instead of now.
    pub historical_import: bool,
}

impl SubscribeJob {
    /// The most profiles one subscribe job takes.
    pub const MAX_PROFILES: usize = 1_000;

    /// The request document.
    pub fn to_document(&self) -> Value {
        let profiles: Vec<Value> = self
            .subscribers
            .iter()
            .map(|s| s.to_resource("SUBSCRIBED", self.historical_import))
            .collect();
        let mut attributes = json!({
            "profiles": {"data": profiles},
            "historical_import": self.historical_import,
        });
        if let Some(source) = &self.custom_source {
            attributes["custom_source"] = json!(source);
        }
        job_document(
            "profile-subscription-bulk-create-job",
            attributes,
            self.list_id.as_deref(),
        )
    }
}

/// An unsubscribe job (`profile-subscription-bulk-delete-job`, ≤ 100 profiles).
///
/// Naming a list unsubscribes profiles that are not in it globally (a Klaviyo trap), so leave
/// `list_id` empty for a global unsubscribe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnsubscribeJob {
    /// Who, and which channels.
    pub subscribers: Vec<Subscriber>,
    /// Unsubscribe from this list.
    pub list_id: Option<String>,
    /// `custom_source` (ours: `omneo`, which lets inbound drop the echo).
    pub custom_source: Option<String>,
}

impl UnsubscribeJob {
    /// The most profiles one unsubscribe job takes.
    pub const MAX_PROFILES: usize = 100;

    /// The request document.
    pub fn to_document(&self) -> Value {
        let profiles: Vec<Value> = self
            .subscribers
            .iter()
            .map(|s| s.to_resource("UNSUBSCRIBED", false))
            .collect();
        let mut attributes = json!({"profiles": {"data": profiles}});
        if let Some(source) = &self.custom_source {
            attributes["custom_source"] = json!(source);
        }
        job_document(
            "profile-subscription-bulk-delete-job",
            attributes,
            self.list_id.as_deref(),
        )
    }
}

fn job_document(kind: &str, attributes: Value, list_id: Option<&str>) -> Value {
    let mut data = json!({"type": kind, "attributes": attributes});
    if let Some(list) = list_id {
        data["relationships"] = json!({"list": {"data": {"type": "list", "id": list}}});
    }
    json!({ "data": data })
}

/// Whose event it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventProfile {
    /// A Klaviyo profile id.
    Id(KlaviyoProfileId),
    /// An email.
    Email(String),
}

/// An event to record (`POST /api/events`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The metric name.
    pub metric: String,
    /// Event properties.
    pub properties: Map<String, Value>,
    /// When it happened (now when absent).
    pub time: Option<Timestamp>,
    /// A monetary value.
    pub value: Option<f64>,
    /// Dedup key per profile and metric; with it a repeat is harmless.
    pub unique_id: Option<String>,
    /// Whose.
    pub profile: EventProfile,
}

impl NewEvent {
    /// The request document.
    pub fn to_document(&self) -> Value {
        let profile = match &self.profile {
            EventProfile::Id(id) => json!({"type": "profile", "id": id.as_str()}),
            EventProfile::Email(email) => {
                json!({"type": "profile", "attributes": {"email": email}})
            }
        };
        let mut attributes = json!({
            "properties": self.properties,
            "metric": {"data": {"type": "metric", "attributes": {"name": self.metric}}},
            "profile": {"data": profile},
        });
        if let Some(time) = self.time {
            attributes["time"] = json!(time.to_string());
        }
        if let Some(value) = self.value {
            attributes["value"] = json!(value);
        }
        if let Some(unique_id) = &self.unique_id {
            attributes["unique_id"] = json!(unique_id);
        }
        json!({"data": {"type": "event", "attributes": attributes}})
    }
}

/// A metric's attributes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricAttributes {
    /// The name; Klaviyo's own consent metrics are named as [`KlaviyoTopic::metric_name`] says.
    pub name: String,
    /// Where its events come from (`Klaviyo` for its own metrics).
    pub integration: Option<MetricIntegration>,
}

/// The integration behind a metric.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MetricIntegration {
    /// E.g. `Klaviyo`.
    pub name: String,
    /// E.g. `klaviyo`.
    pub key: String,
}

/// A metric (`GET /api/metrics`): its id is what events are filtered by.
pub type Metric = Resource<MetricAttributes>;

/// Which events to read (`GET /api/events`, klaviyo.md §Events and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// The metric's id (Klaviyo's own metrics only: custom ones cannot be filtered on).
    pub metric_id: String,
    /// Only events after this time, counted in whole seconds: `after` is truncated, so events
    /// in its own second come again (dedupe by event id).
    pub after: Timestamp,
    /// Events per page, 1 to 1000.
    pub page_size: u16,
}

impl EventQuery {
    /// The `filter` value:
    /// `equals(metric_id,"…"),greater-than(datetime,2026-11-30T00:00:00Z)`.
    pub fn filter(&self) -> String {
        format!(
            "{},greater-than(datetime,{})",
            equals("metric_id", &self.metric_id),
            self.after.strftime("%Y-%m-%dT%H:%M:%SZ")
        )
    }
}

/// One page of events, oldest first.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The events.
    pub events: Vec<KlaviyoEvent>,
    /// The next page's URL (`links.next`), `None` on the last page.
    pub next: Option<String>,
}

/// A Klaviyo event as `GET /api/events` returns it and as a system-webhook entry carries it in
/// `payload.data`: only what the extension reads.
#[derive(Debug, Clone, Deserialize)]
pub struct KlaviyoEvent {
    /// The event id.
    pub id: String,
    /// When and how.
    pub attributes: EventAttributes,
    /// Whose, and of which metric.
    pub relationships: EventRelationships,
}

/// An event's attributes.
#[derive(Debug, Clone, Deserialize)]
pub struct EventAttributes {
    /// When it happened.
    pub datetime: Timestamp,
    /// What Klaviyo recorded about it.
    #[serde(default)]
    pub event_properties: EventProperties,
}

/// The properties of a consent event.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventProperties {
    /// The profile's email.
    pub email_address: Option<String>,
    /// How it happened, e.g. `API`, `PREFERENCE_PAGE`.
    pub method: Option<String>,
    /// Detail of the method.
    pub method_detail: Option<String>,
    /// The `custom_source` of an API change (ours: `omneo`).
    pub custom_method_detail: Option<String>,
    /// The list (list topics).
    pub list_id: Option<String>,
}

/// An event's relationships.
#[derive(Debug, Clone, Deserialize)]
pub struct EventRelationships {
    /// The profile it is about.
    pub profile: Related<KlaviyoProfileId>,
    /// Its metric.
    #[serde(default)]
    pub metric: Option<Related>,
}

/// A to-one relationship: `{"data": {"type", "id"}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Related<I = String> {
    /// The related resource.
    pub data: RelatedId<I>,
}

/// A related resource's id.
#[derive(Debug, Clone, Deserialize)]
pub struct RelatedId<I = String> {
    /// The id.
    pub id: I,
}

impl KlaviyoEvent {
    /// The event as `topic`'s consent event for the inbound worker, with the profile it is
    /// about and its email (`None` when blank).
    pub fn consent_event(
        self,
        topic: KlaviyoTopic,
    ) -> (KlaviyoProfileId, Option<String>, ConsentEvent) {
        let properties = self.attributes.event_properties;
        let email = properties
            .email_address
            .filter(|email| !email.trim().is_empty());
        let event = ConsentEvent {
            id: self.id,
            topic,
            at: self.attributes.datetime,
            method: properties.method,
            method_detail: properties.method_detail,
            custom_method_detail: properties.custom_method_detail,
            list_id: properties.list_id,
        };
        (self.relationships.profile.data.id, email, event)
    }
}

/// The record-create document for data source `data_source_id`.
pub(crate) fn record_document(data_source_id: &str, record: &Value) -> Value {
    json!({"data": {
        "type": "data-source-record-create-job",
        "attributes": {"data-source-record": {"data": record_resource(record)}},
        "relationships": data_source_relationship(data_source_id),
    }})
}

/// The bulk record-create document (≤ 500 records).
pub(crate) fn bulk_record_document(data_source_id: &str, records: &[Value]) -> Value {
    let records: Vec<Value> = records.iter().map(record_resource).collect();
    json!({"data": {
        "type": "data-source-record-bulk-create-job",
        "attributes": {"data-source-records": {"data": records}},
        "relationships": data_source_relationship(data_source_id),
    }})
}

fn record_resource(record: &Value) -> Value {
    json!({"type": "data-source-record", "attributes": {"record": record}})
}

fn data_source_relationship(id: &str) -> Value {
    json!({"data-source": {"data": {"type": "data-source", "id": id}}})
}

/// Whose data to delete (exactly one identifier, as Klaviyo requires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletionTarget {
    /// A Klaviyo profile id.
    ProfileId(KlaviyoProfileId),
    /// Every profile with this email.
    Email(String),
}

impl DeletionTarget {
    /// The request document.
    pub fn to_document(&self) -> Value {
        let profile = match self {
            Self::ProfileId(id) => json!({"type": "profile", "id": id.as_str()}),
            Self::Email(email) => json!({"type": "profile", "attributes": {"email": email}}),
        };
        json!({"data": {
            "type": "data-privacy-deletion-job",
            "attributes": {"profile": {"data": profile}},
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_upsert_keeps_clears_and_sets() {
        let upsert = ProfileUpsert {
            id: Some(KlaviyoProfileId::parse("01H").unwrap()),
            email: Patch::Set("a@b.com".into()),
            phone_number: Patch::Clear,
            external_id: Patch::from_option(Some(OmneoProfileId::parse("omneo-1").unwrap())),
            ..ProfileUpsert::default()
        };
        assert_eq!(
            upsert.to_document(),
            json!({"data": {"type": "profile", "id": "01H", "attributes": {
                "email": "a@b.com", "phone_number": null, "external_id": "omneo-1"}}})
        );
    }

    #[test]
    fn subscribe_job_has_the_documented_shape() {
        let job = SubscribeJob {
            subscribers: vec![Subscriber {
                email: Some("a@b.com".into()),
                phone_number: Some(E164Phone::parse("+61400000000").unwrap()),
                email_marketing: true,
                sms_marketing: true,
                consented_at: Some("2026-01-02T03:04:05Z".parse().unwrap()),
            }],
            list_id: Some("AbC123".into()),
            custom_source: Some("omneo".into()),
            historical_import: true,
        };
        let marketing =
            json!({"marketing": {"consent": "SUBSCRIBED", "consented_at": "2026-01-02T03:04:05Z"}});
        assert_eq!(
            job.to_document(),
            json!({"data": {
                "type": "profile-subscription-bulk-create-job",
                "attributes": {
                    "custom_source": "omneo",
                    "historical_import": true,
                    "profiles": {"data": [{"type": "profile", "attributes": {
                        "email": "a@b.com", "phone_number": "+61400000000",
                        "subscriptions": {"email": marketing, "sms": marketing}}}]},
                },
                "relationships": {"list": {"data": {"type": "list", "id": "AbC123"}}},
            }})
        );
    }

    #[test]
    fn unsubscribe_job_without_a_list_is_global() {
        let job = UnsubscribeJob {
            subscribers: vec![Subscriber {
                email: Some("a@b.com".into()),
                email_marketing: true,
                ..Subscriber::default()
            }],
            list_id: None,
            custom_source: Some("omneo".into()),
        };
        let doc = job.to_document();
        assert_eq!(doc["data"]["type"], "profile-subscription-bulk-delete-job");
        assert!(doc["data"].get("relationships").is_none());
        assert_eq!(
            doc["data"]["attributes"]["profiles"]["data"][0]["attributes"],
            json!({"email": "a@b.com", "subscriptions": {"email": {"marketing": {"consent": "UNSUBSCRIBED"}}}})
        );
        assert_eq!(doc["data"]["attributes"]["custom_source"], "omneo");
    }

    #[test]
    fn event_names_its_profile_by_id_or_email() {
        let event = NewEvent {
            metric: "Reward Issued".into(),
            properties: Map::from_iter([("points".into(), json!(10))]),
            time: Some("2026-01-02T03:04:05Z".parse().unwrap()),
            value: Some(9.5),
            unique_id: Some("r-1".into()),
            profile: EventProfile::Email("a@b.com".into()),
        };
        assert_eq!(
            event.to_document(),
            json!({"data": {"type": "event", "attributes": {
                "properties": {"points": 10},
                "time": "2026-01-02T03:04:05Z",
                "value": 9.5,
                "unique_id": "r-1",
                "metric": {"data": {"type": "metric", "attributes": {"name": "Reward Issued"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "a@b.com"}}},
            }}})
        );
    }

    #[test]
    fn record_documents_link_their_data_source() {
        let doc = record_document("01DS", &json!({"id": "r1"}));
        assert_eq!(
            doc["data"]["attributes"]["data-source-record"]["data"]["attributes"]["record"],
            json!({"id": "r1"})
        );
        assert_eq!(
            doc["data"]["relationships"]["data-source"]["data"]["id"],
            "01DS"
        );
        let bulk = bulk_record_document("01DS", &[json!({"id": "r1"}), json!({"id": "r2"})]);
        assert_eq!(
            bulk["data"]["attributes"]["data-source-records"]["data"][1]["attributes"]["record"]["id"],
            "r2"
        );
    }

    #[test]
    fn webhook_documents_carry_topics_and_only_what_changes() {
        let new = NewWebhook {
            name: "Omneo acme".into(),
            endpoint_url: "https://ext.example/acme/api/v1/webhooks/klaviyo/system"
                .parse()
                .unwrap(),
            secret_key: SecretString::from("whsec"),
            description: None,
            topics: vec!["event:klaviyo.bounced_email".into()],
        };
        let doc = new.to_document();
        assert_eq!(doc["data"]["attributes"]["secret_key"], "whsec");
        assert_eq!(
            doc["data"]["relationships"]["webhook-topics"]["data"],
            json!([{"type": "webhook-topic", "id": "event:klaviyo.bounced_email"}])
        );
        let update = WebhookUpdate {
            enabled: Some(true),
            ..WebhookUpdate::default()
        };
        assert_eq!(
            update.to_document("01W"),
            json!({"data": {"type": "webhook", "id": "01W", "attributes": {"enabled": true}}})
        );
    }

    #[test]
    fn bulk_import_lists_profile_resources_and_its_lists() {
        let ann = ProfileUpsert {
            id: Some(KlaviyoProfileId::parse("01P").unwrap()),
            email: Patch::Set("a@b.com".into()),
            ..ProfileUpsert::default()
        };
        let bob = ProfileUpsert {
            external_id: Patch::Set(OmneoProfileId::parse("o-2").unwrap()),
            ..ProfileUpsert::default()
        };
        assert_eq!(ann.to_document(), json!({ "data": ann.to_resource() }));
        let job = BulkImport {
            profiles: vec![ann.clone(), bob.clone()],
            list_ids: vec!["AbC123".into()],
        };
        assert_eq!(
            job.to_document(),
            json!({"data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": [ann.to_resource(), bob.to_resource()]}},
                "relationships": {"lists": {"data": [{"type": "list", "id": "AbC123"}]}},
            }})
        );
        let without_lists = BulkImport {
            profiles: vec![bob],
            list_ids: Vec::new(),
        };
        assert!(
            without_lists.to_document()["data"]
                .get("relationships")
                .is_none()
        );
    }

    #[test]
    fn bulk_jobs_and_import_errors_read_leniently() {
        let job: Document<BulkImportJob> = serde_json::from_value(json!({"data": {
            "type": "profile-bulk-import-job", "id": "J1",
            "attributes": {"status": "processing", "total_count": 3, "completed_count": null,
                "failed_count": 1, "created_at": "2026-01-02T03:04:05+00:00"},
            "relationships": {"lists": {"data": []}}}}))
        .unwrap();
        assert_eq!(
            job.data,
            BulkImportJob {
                id: "J1".into(),
                status: BulkJobStatus::Processing,
                total_count: 3,
                completed_count: 0,
                failed_count: 1,
            }
        );
        let odd: Document<BulkImportJob> = serde_json::from_value(
            json!({"data": {"type": "profile-bulk-import-job", "id": "J2", "attributes": {"status": "paused"}}}),
        )
        .unwrap();
        assert_eq!(odd.data.status, BulkJobStatus::Unknown);

        let error = |pointer: Value| -> ImportError {
            serde_json::from_value(json!({"type": "import-error", "id": "E1", "attributes": {
                "code": "invalid", "title": "Invalid input.", "detail": "Invalid email address.",
                "source": {"pointer": pointer}, "original_payload": {"type": "profile"}}}))
            .unwrap()
        };
        let at_email = error(json!("/data/attributes/profiles/data/3/attributes/email"));
        assert_eq!(at_email.code, "invalid");
        assert_eq!(at_email.original_payload, Some(json!({"type": "profile"})));
        assert_eq!(at_email.profile_index(), Some(3));
        assert_eq!(
            error(json!("/data/attributes/profiles/data/12")).profile_index(),
            Some(12)
        );
        for elsewhere in [
            json!("/data/attributes/email"),
            json!("/data/attributes/profiles/data"),
            json!("/data/attributes/profiles/data/x/attributes"),
            json!(null),
        ] {
            assert_eq!(
                error(elsewhere.clone()).profile_index(),
                None,
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn event_queries_filter_by_metric_and_whole_seconds() {
        let query = EventQuery {
            metric_id: "Ab\"C1".into(),
            after: "2026-11-30T10:20:30.999Z".parse().unwrap(),
            page_size: 100,
        };
        assert_eq!(
            query.filter(),
            r#"equals(metric_id,"Ab\"C1"),greater-than(datetime,2026-11-30T10:20:30Z)"#
        );
    }

    #[test]
    fn events_become_consent_events() {
        let event: KlaviyoEvent = serde_json::from_value(json!({
            "type": "event", "id": "EV1",
            "attributes": {"datetime": "2026-11-30T10:20:30+00:00", "timestamp": 1,
                "event_properties": {"email_address": "  ", "method": "API",
                    "custom_method_detail": "omneo", "list_id": "AbC123", "extra": 1}},
            "relationships": {"profile": {"data": {"type": "profile", "id": "01P"}},
                "metric": {"data": {"type": "metric", "id": "M1"}}}}))
        .unwrap();
        assert_eq!(event.relationships.metric.as_ref().unwrap().data.id, "M1");
        let (profile, email, consent) = event.consent_event(KlaviyoTopic::SubscribedToList);
        assert_eq!(profile.as_str(), "01P");
        assert_eq!(email, None, "a blank email is none");
        assert_eq!(consent.id, "EV1");
        assert_eq!(consent.topic, KlaviyoTopic::SubscribedToList);
        assert_eq!(consent.at, "2026-11-30T10:20:30Z".parse().unwrap());
        assert_eq!(consent.method.as_deref(), Some("API"));
        assert_eq!(consent.list_id.as_deref(), Some("AbC123"));
        assert!(consent.is_circular());
    }

    #[test]
    fn filters_escape_quotes() {
        assert_eq!(
            ProfileFilter::Email(r#"o"brien@x.com"#.into()).to_query(),
            r#"equals(email,"o\"brien@x.com")"#
        );
        assert_eq!(
            any("external_id", &["a", r#"b"\"#]),
            r#"any(external_id,["a","b\"\\"])"#
        );
    }

    #[test]
    fn profiles_read_consent_and_ignore_unknown_members() {
        let doc: Document<Profile> = serde_json::from_value(json!({"data": {
            "type": "profile", "id": "01P", "links": {"self": "x"},
            "attributes": {"email": "a@b.com", "new_thing": 1, "subscriptions": {"email": {"marketing": {
                "consent": "SUBSCRIBED", "custom_method_detail": "omneo", "suppression": []}},
                "sms": {"marketing": {"consent": "SOMETHING_NEW"}}}}}}))
        .unwrap();
        let subscriptions = doc.data.attributes.subscriptions.unwrap();
        let email = subscriptions.email.unwrap().marketing.unwrap();
        assert_eq!(email.consent, Consent::Subscribed);
        assert_eq!(email.custom_method_detail.as_deref(), Some("omneo"));
        assert_eq!(
            subscriptions.sms.unwrap().marketing.unwrap().consent,
            Consent::Unknown
        );
    }
}
