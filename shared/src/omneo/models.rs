//! Omneo's shapes (omneo.md): profiles, comms, identities, webhooks, interactions, rewards,
//! benefits and ID tokens. Responses are read leniently; unknown members are ignored.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use secrecy::SecretString;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::domain::{ConsentState, OmneoProfileId};
pub use crate::domain::{InteractionAction, InteractionChannel, Signal};

/// An Omneo date-time: written `YYYY-MM-DD HH:MM:SS` in UTC, read in that form or ISO 8601.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OmneoTime(pub Timestamp);

impl OmneoTime {
    /// Parses `YYYY-MM-DD HH:MM:SS` (UTC) or an ISO 8601 / RFC 3339 instant.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(at) = text.parse::<Timestamp>() {
            return Some(Self(at));
        }
        let civil = text.parse::<jiff::civil::DateTime>().ok()?;
        civil
            .to_zoned(TimeZone::UTC)
            .ok()
            .map(|z| Self(z.timestamp()))
    }
}

impl fmt::Display for OmneoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.strftime("%Y-%m-%d %H:%M:%S"))
    }
}

impl Serialize for OmneoTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OmneoTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text)
            .ok_or_else(|| de::Error::custom(format!("not an Omneo date-time: {text:?}")))
    }
}

/// Reads an id that may be a string or a number.
pub(crate) fn id_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(de::Error::custom(format!(
            "expected a string or number id, got {other}"
        ))),
    }
}

/// Reads a profile id given as a string or a number, then parses it.
pub(crate) fn profile_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OmneoProfileId, D::Error> {
    OmneoProfileId::parse(id_string(deserializer)?).map_err(de::Error::custom)
}

/// A marketing channel of the comms attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Email.
    Email,
    /// SMS.
    Sms,
    /// Push notifications.
    Push,
    /// Phone calls.
    Phone,
    /// Post.
    Post,
}

/// A profile's communication preferences (`attributes.comms`); `None` = absent or `null`.
/// Only the fields that are `Some` are sent on a `PUT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)] // Field names are Omneo's: X_promo, X_optout, X_bounced per channel.
pub struct Comms {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_promo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_optout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_bounced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_promo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_optout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_bounced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_promo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_optout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_bounced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_promo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_optout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_bounced: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_promo: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_optout: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_bounced: Option<bool>,
    /// When the end user last changed email consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_consent_updated_at: Option<OmneoTime>,
    /// When the end user last changed SMS consent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sms_consent_updated_at: Option<OmneoTime>,
}

impl Comms {
    /// `(X_promo, X_optout, X_bounced)` of a channel.
    pub fn flags(&self, channel: Channel) -> (Option<bool>, Option<bool>, Option<bool>) {
        match channel {
            Channel::Email => (self.email_promo, self.email_optout, self.email_bounced),
            Channel::Sms => (self.sms_promo, self.sms_optout, self.sms_bounced),
            Channel::Push => (self.push_promo, self.push_optout, self.push_bounced),
            Channel::Phone => (self.phone_promo, self.phone_optout, self.phone_bounced),
            Channel::Post => (self.post_promo, self.post_optout, self.post_bounced),
        }
    }

    /// The channel's marketing consent: subscribed ⇔ `X_promo !== false && X_optout !== true &&
    /// X_bounced !== true` (null passes).
    pub fn consent(&self, channel: Channel) -> ConsentState {
        let (promo, optout, bounced) = self.flags(channel);
        ConsentState::from_subscribed(
            promo != Some(false) && optout != Some(true) && bounced != Some(true),
        )
    }
}

/// A postal address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
#[allow(missing_docs)] // Omneo's field names.
pub struct Address {
    pub address_line_1: Option<String>,
    pub address_line_2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postcode: Option<String>,
    pub country: Option<String>,
}

/// An identity: another system's id for the profile (ours has handle `klaviyo`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Identity {
    /// The system, e.g. `klaviyo`.
    pub handle: String,
    /// Its id there.
    pub identifier: String,
}

/// A loyalty tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Tier {
    /// Machine name.
    pub handle: Option<String>,
    /// Display name.
    pub name: Option<String>,
}

/// One custom attribute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CustomAttribute {
    /// Namespace.
    pub namespace: String,
    /// Handle within it.
    pub handle: String,
    /// Declared type, when given.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Value.
    #[serde(default)]
    pub value: Value,
}

/// Reads custom attributes in the list form `[{namespace,handle,type,value}]` or the map form
/// `{namespace: {handle: value}}`.
fn custom_attributes<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<CustomAttribute>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(Vec::new()),
        list @ Value::Array(_) => serde_json::from_value(list).map_err(de::Error::custom),
        Value::Object(namespaces) => Ok(namespaces
            .into_iter()
            .flat_map(|(namespace, handles)| {
                let handles = match handles {
                    Value::Object(handles) => handles,
                    _ => Map::new(),
                };
                handles
                    .into_iter()
                    .map(move |(handle, value)| CustomAttribute {
                        namespace: namespace.clone(),
                        handle,
                        kind: None,
                        value,
                    })
            })
            .collect()),
        other => Err(de::Error::custom(format!(
            "custom_attributes must be a list or a map, got {other}"
        ))),
    }
}

/// Reads tags given as strings or as `{handle, name}` objects.
fn tags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let values = Option::<Vec<Value>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(values
        .into_iter()
        .filter_map(|tag| match tag {
            Value::String(s) => Some(s),
            Value::Object(o) => o
                .get("handle")
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// A profile's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // Omneo's values.
pub enum ProfileType {
    Active,
    Temporary,
    Dependant,
    Incomplete,
    Pending,
    System,
    Deleted,
    /// A type this code does not know.
    #[serde(other)]
    Other,
}

/// An Omneo profile, typed where the product reads it, with the raw JSON kept for the tenant's
/// mappings (which read arbitrary dot paths).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Its id (a UUID).
    pub id: OmneoProfileId,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Mobile phone (E.164 when valid).
    pub mobile_phone: Option<String>,
    /// Kind.
    pub profile_type: Option<ProfileType>,
    /// Address.
    pub address: Option<Address>,
    /// Identities in other systems.
    pub identities: Vec<Identity>,
    /// `attributes.comms`.
    pub comms: Option<Comms>,
    /// Custom attributes, whichever form they came in.
    pub custom_attributes: Vec<CustomAttribute>,
    /// Loyalty tier.
    pub tier: Option<Tier>,
    /// Tags.
    pub tags: Vec<String>,
    /// Created.
    pub created_at: Option<OmneoTime>,
    /// Last updated.
    pub updated_at: Option<OmneoTime>,
    /// The profile as received.
    pub raw: Value,
}

impl Profile {
    /// The identifier of the identity with this handle.
    pub fn identity(&self, handle: &str) -> Option<&str> {
        self.identities
            .iter()
            .find(|i| i.handle == handle)
            .map(|i| i.identifier.as_str())
    }
}

impl<'de> Deserialize<'de> for Profile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(deserialize_with = "profile_id")]
            id: OmneoProfileId,
            #[serde(default)]
            first_name: Option<String>,
            #[serde(default)]
            last_name: Option<String>,
            #[serde(default)]
            email: Option<String>,
            #[serde(default)]
            mobile_phone: Option<String>,
            #[serde(default)]
            profile_type: Option<ProfileType>,
            #[serde(default)]
            address: Option<Address>,
            #[serde(default)]
            identities: Option<Vec<Identity>>,
            #[serde(default)]
            attributes: Option<Attributes>,
            #[serde(default, deserialize_with = "custom_attributes")]
            custom_attributes: Vec<CustomAttribute>,
            #[serde(default)]
            tier: Option<Tier>,
            #[serde(default, deserialize_with = "tags")]
            tags: Vec<String>,
            #[serde(default)]
            created_at: Option<OmneoTime>,
            #[serde(default)]
            updated_at: Option<OmneoTime>,
        }
        #[derive(Deserialize)]
        struct Attributes {
            #[serde(default)]
            comms: Option<Comms>,
        }
        let raw = Value::deserialize(deserializer)?;
        let f = Fields::deserialize(&raw).map_err(de::Error::custom)?;
        Ok(Self {
            id: f.id,
            first_name: f.first_name,
            last_name: f.last_name,
            email: f.email,
            mobile_phone: f.mobile_phone,
            profile_type: f.profile_type,
            address: f.address,
            identities: f.identities.unwrap_or_default(),
            comms: f.attributes.and_then(|a| a.comms),
            custom_attributes: f.custom_attributes,
            tier: f.tier,
            tags: f.tags,
            created_at: f.created_at,
            updated_at: f.updated_at,
            raw,
        })
    }
}

/// One page of the profile listing a backfill walks: `GET /profiles`, sorted by `created_at`
/// (see [`OmneoClient::profiles_page`](super::OmneoClient::profiles_page) for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileListing {
    /// The page number, from 1.
    pub page: u32,
    /// Profiles a page, at most [`Self::MAX_SIZE`] (Omneo answers 422 above).
    pub size: u32,
    /// Only profiles updated at or after this instant (an incremental run); `None` for all.
    pub updated_since: Option<Timestamp>,
}

impl ProfileListing {
    /// The largest page Omneo serves.
    pub const MAX_SIZE: u32 = 100;
}

/// A Laravel page of a list: `{"data": […], "links": {…}, "meta": {…}}` (`links` unread).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page<T> {
    /// The page's items.
    pub data: Vec<T>,
    /// Where the page sits; all `None` when the answer has no `meta`.
    #[serde(default)]
    pub meta: PageMeta,
}

impl<T> Page<T> {
    /// Whether no page follows this one. An empty page is the last; otherwise, when `meta` names
    /// both pages, `current_page ≥ last_page`; else, when it names `per_page`, fewer items than
    /// that; else (an answer without paging) it is the whole list, so the last.
    pub fn is_last(&self) -> bool {
        if self.data.is_empty() {
            return true;
        }
        let meta = &self.meta;
        match (meta.current_page, meta.last_page, meta.per_page) {
            (Some(current), Some(last), _) => current >= last,
            (_, _, Some(per_page)) => (self.data.len() as u64) < per_page,
            _ => true,
        }
    }
}

/// `meta` of a Laravel page. Every field is optional and read from a number or a numeric string
/// (some Laravel versions echo `per_page` from the query as text).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PageMeta {
    /// This page's number, from 1.
    #[serde(deserialize_with = "count")]
    pub current_page: Option<u64>,
    /// The last page's number.
    #[serde(deserialize_with = "count")]
    pub last_page: Option<u64>,
    /// Items a page.
    #[serde(deserialize_with = "count")]
    pub per_page: Option<u64>,
    /// Items over all pages.
    #[serde(deserialize_with = "count")]
    pub total: Option<u64>,
}

/// Reads a count given as a number or a numeric string (`null` → `None`).
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("not a count: {n}"))),
        Value::String(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| de::Error::custom(format!("not a count: {text:?} ({e})"))),
        other => Err(de::Error::custom(format!("not a count: {other}"))),
    }
}

/// A partial profile update (`PUT /profiles/{id}`): only `Some` fields are sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // Omneo's field names.
pub struct ProfileUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_phone: Option<String>,
}

/// A webhook Omneo delivers to us.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Webhook {
    /// Its id.
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    /// e.g. `profile.updated`.
    pub trigger: String,
    /// Where it posts.
    pub url: String,
    /// Whose (the loop guard skips events caused by this namespace's token).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Whether it fires.
    #[serde(default)]
    pub is_active: bool,
}

/// A webhook to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewWebhook {
    /// e.g. `profile.updated`.
    pub trigger: String,
    /// Where it posts.
    pub url: String,
    /// Required: the tenant's namespace.
    pub namespace: String,
    /// Created disabled by the product.
    pub is_active: bool,
}

/// A partial webhook update (`PUT /webhooks/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WebhookUpdate {
    /// New URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// New namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Turn it on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_active: Option<bool>,
}

/// Who an interaction is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InteractionProfile {
    /// An Omneo profile id.
    ProfileId(OmneoProfileId),
    /// An identity `{id, handle}`.
    Identity {
        /// The identifier.
        id: String,
        /// The identity handle.
        handle: String,
    },
}

/// An interaction to record (`POST /interactions`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewInteraction {
    /// Whose.
    pub profile: InteractionProfile,
    /// What.
    pub action: InteractionAction,
    /// Where.
    pub channel: InteractionChannel,
    /// Sentiment.
    pub signal: Signal,
    /// Name, e.g. `Klaviyo: unsubscribed from email`.
    pub name: String,
    /// The tenant's namespace.
    pub namespace: String,
    /// When (now when absent).
    pub interacted_at: Option<OmneoTime>,
    /// Free-form details.
    pub meta: Option<Value>,
}

impl NewInteraction {
    /// The request body.
    pub fn to_body(&self) -> Value {
        let mut body = serde_json::json!({
            "action": self.action,
            "channel": self.channel,
            "signal": self.signal,
            "name": self.name,
            "namespace": self.namespace,
        });
        match &self.profile {
            InteractionProfile::ProfileId(id) => body["profile_id"] = Value::from(id.as_str()),
            InteractionProfile::Identity { id, handle } => {
                body["identifier"] = serde_json::json!({"id": id, "handle": handle});
            }
        }
        if let Some(at) = self.interacted_at {
            body["interacted_at"] = Value::from(at.to_string());
        }
        if let Some(meta) = &self.meta {
            body["meta"] = meta.clone();
        }
        body
    }
}

/// A reward to issue (`POST /rewards`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewReward {
    /// Whose.
    pub profile_id: OmneoProfileId,
    /// Which reward definition.
    pub reward_definition_id: Value,
    /// Initial value.
    pub value_initial: f64,
    /// Remaining value (= initial when issued).
    pub value_remaining: f64,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<OmneoTime>,
    /// Our id for it (lets a caller find it before issuing again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Free-form details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_id: Option<Value>,
}

/// A benefit to issue (`POST /benefits`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewBenefit {
    /// Whose.
    pub profile_id: OmneoProfileId,
    /// Which benefit definition.
    pub benefit_definition_id: Value,
    /// Issued at (now when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<OmneoTime>,
    /// Expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<OmneoTime>,
    /// Our id for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Free-form details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// What Omneo created: its id and the whole resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The new resource's id.
    pub id: String,
    /// The resource as returned.
    pub raw: Value,
}

impl<'de> Deserialize<'de> for Created {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Id {
            #[serde(deserialize_with = "id_string")]
            id: String,
        }
        let raw = Value::deserialize(deserializer)?;
        let Id { id } = Id::deserialize(&raw).map_err(de::Error::custom)?;
        Ok(Self { id, raw })
    }
}

/// A short-lived Omneo ID token (a JWT whose `pid` claim is the profile id).
#[derive(Debug, Clone)]
pub struct IdToken {
    /// The JWT.
    pub token: SecretString,
    /// When it expires.
    pub expires_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pages_parse_with_or_without_meta_and_know_when_they_are_last() {
        let page = |body: Value| serde_json::from_value::<Page<u32>>(body).expect("a page");
        let full = json!({"data": [1, 2], "links": {"next": null},
            "meta": {"current_page": 2, "last_page": 3, "per_page": "2", "total": 6}});
        let read = page(full);
        assert_eq!(
            read.meta,
            PageMeta {
                current_page: Some(2),
                last_page: Some(3),
                per_page: Some(2),
                total: Some(6),
            }
        );
        assert!(!read.is_last());
        let last = json!({"data": [5], "meta": {"current_page": 3, "last_page": 3}});
        assert!(page(last).is_last());
        assert!(page(json!({"data": [], "meta": {"current_page": 1, "last_page": 3}})).is_last());
        assert!(!page(json!({"data": [1, 2], "meta": {"per_page": 2}})).is_last());
        assert!(page(json!({"data": [1], "meta": {"per_page": 2}})).is_last());
        let bare = page(json!({"data": [1, 2]}));
        assert_eq!(bare.meta, PageMeta::default());
        assert!(bare.is_last(), "no paging info: the whole list");
        assert!(
            serde_json::from_value::<Page<u32>>(json!({"data": [], "meta": {"total": "many"}}))
                .is_err()
        );
    }

    #[test]
    fn omneo_times_read_both_forms_and_write_omneos() {
        let a = OmneoTime::parse("2026-03-01 10:20:30").unwrap();
        let b = OmneoTime::parse("2026-03-01T10:20:30Z").unwrap();
        let c = OmneoTime::parse("2026-03-01T20:20:30+10:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_string(), "2026-03-01 10:20:30");
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            json!("2026-03-01 10:20:30")
        );
        assert!(OmneoTime::parse("yesterday").is_none());
    }

    #[test]
    fn subscribed_follows_the_null_passes_rule() {
        let mut comms = Comms::default();
        assert!(comms.consent(Channel::Email).is_subscribed());
        comms.email_promo = Some(true);
        comms.email_bounced = Some(true);
        assert!(!comms.consent(Channel::Email).is_subscribed());
        comms.sms_promo = Some(false);
        assert_eq!(comms.consent(Channel::Sms), ConsentState::NotSubscribed);
        comms.post_optout = Some(true);
        assert!(!comms.consent(Channel::Post).is_subscribed());
        comms.push_optout = Some(false);
        assert!(comms.consent(Channel::Push).is_subscribed());
    }

    #[test]
    fn comms_put_sends_only_what_is_set() {
        let comms = Comms {
            email_promo: Some(false),
            email_consent_updated_at: OmneoTime::parse("2026-03-01 10:20:30"),
            ..Comms::default()
        };
        assert_eq!(
            serde_json::to_value(&comms).unwrap(),
            json!({"email_promo": false, "email_consent_updated_at": "2026-03-01 10:20:30"})
        );
    }

    fn profile(custom: Value) -> Profile {
        serde_json::from_value(json!({
            "id": "9b1d", "first_name": "Ann", "email": "ann@x.com", "mobile_phone": null,
            "profile_type": "active", "identities": [{"handle": "klaviyo", "identifier": "01K", "id": 3}],
            "attributes": {"comms": {"email_promo": true, "sms_optout": null, "unknown": 1}},
            "custom_attributes": custom, "tier": {"handle": "gold", "name": "Gold"},
            "tags": ["vip", {"handle": "staff", "name": "Staff"}],
            "created_at": "2026-01-01 00:00:00", "updated_at": "2026-03-01 10:20:30",
            "balances": {"points": 10}
        }))
        .unwrap()
    }

    #[test]
    fn profiles_accept_both_custom_attribute_forms_and_keep_raw_json() {
        let listed = profile(json!([
            {"namespace": "loyalty", "handle": "shoe_size", "type": "number", "value": 9}
        ]));
        let mapped = profile(json!({"loyalty": {"shoe_size": 9}}));
        for p in [&listed, &mapped] {
            assert_eq!(p.custom_attributes.len(), 1);
            assert_eq!(p.custom_attributes[0].namespace, "loyalty");
            assert_eq!(p.custom_attributes[0].handle, "shoe_size");
            assert_eq!(p.custom_attributes[0].value, json!(9));
        }
        assert_eq!(listed.custom_attributes[0].kind.as_deref(), Some("number"));
        let p = listed;
        assert_eq!(p.identity("klaviyo"), Some("01K"));
        assert_eq!(p.profile_type, Some(ProfileType::Active));
        assert_eq!(p.comms.as_ref().unwrap().email_promo, Some(true));
        assert_eq!(p.tags, ["vip", "staff"]);
        assert_eq!(p.tier.as_ref().unwrap().handle.as_deref(), Some("gold"));
        assert_eq!(p.updated_at, OmneoTime::parse("2026-03-01T10:20:30Z"));
        assert_eq!(p.raw.pointer("/balances/points"), Some(&json!(10)));
    }

    #[test]
    fn interactions_name_the_profile_one_way() {
        let interaction = NewInteraction {
            profile: InteractionProfile::Identity {
                id: "01K".into(),
                handle: "klaviyo".into(),
            },
            action: InteractionAction::Disclose,
            channel: InteractionChannel::Email,
            signal: Signal::Negative,
            name: "Unsubscribed".into(),
            namespace: "klaviyo".into(),
            interacted_at: OmneoTime::parse("2026-03-01 10:20:30"),
            meta: None,
        };
        assert_eq!(
            interaction.to_body(),
            json!({"identifier": {"id": "01K", "handle": "klaviyo"}, "action": "disclose",
                "channel": "email", "signal": -1, "name": "Unsubscribed", "namespace": "klaviyo",
                "interacted_at": "2026-03-01 10:20:30"})
        );
    }
}
