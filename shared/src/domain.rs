//! Small domain types that parse on construction: once you hold one, it is valid.
//!
//! They are the nouns of the spec — [`TenantId`], [`KlaviyoProfileId`], [`OmneoProfileId`],
//! [`E164Phone`], [`ConsentState`], [`DataSourceKind`], [`KlaviyoTopic`], the interaction
//! vocabulary — parsed once where a value enters the system (a request, a
//! remote's answer, a stored record), so the code behind that edge never re-checks a string.

use std::fmt;

use phonenumber::country::Id as CountryId;
use serde::{Deserialize, Serialize};

/// Implements the string plumbing of an id type that wraps a `String` and parses with `parse`.
macro_rules! string_id {
    ($name:ident, $error:ident) => {
        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = $error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

/// An Omneo tenant id: a lowercase slug (`[a-z0-9]`, inner `-`, at most 63 characters).
///
/// It appears in URLs, Firestore document ids and Cloud Tasks queue names, so the alphabet is
/// the intersection of what those accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Why a string is not a [`TenantId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tenant id must be a lowercase slug of 1-63 characters (a-z, 0-9, inner '-'), got {0:?}")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// Parses a tenant id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let raw = raw.into();
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let valid = !raw.is_empty()
            && raw.len() <= 63
            && valid_chars
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if valid {
            Ok(Self(raw))
        } else {
            Err(InvalidTenantId(raw))
        }
    }
}

string_id!(TenantId, InvalidTenantId);

/// A Klaviyo profile id (a 26-character ULID in practice): 1 to 64 ASCII letters and digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KlaviyoProfileId(String);

/// Why a string is not a [`KlaviyoProfileId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a Klaviyo profile id is 1-64 letters and digits, got {0:?}")]
pub struct InvalidKlaviyoProfileId(pub String);

impl KlaviyoProfileId {
    /// Parses a Klaviyo profile id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidKlaviyoProfileId> {
        let raw = raw.into();
        let valid = (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric());
        if valid {
            Ok(Self(raw))
        } else {
            Err(InvalidKlaviyoProfileId(raw))
        }
    }
}

string_id!(KlaviyoProfileId, InvalidKlaviyoProfileId);

/// An Omneo profile id (a UUID in practice; older tenants have numeric ids): 1 to 64 ASCII
/// letters, digits and `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OmneoProfileId(String);

/// Why a string is not an [`OmneoProfileId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an Omneo profile id is 1-64 letters, digits and '-', got {0:?}")]
pub struct InvalidOmneoProfileId(pub String);

impl OmneoProfileId {
    /// Parses an Omneo profile id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidOmneoProfileId> {
        let raw = raw.into();
        let valid = (1..=64).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(Self(raw))
        } else {
            Err(InvalidOmneoProfileId(raw))
        }
    }
}

string_id!(OmneoProfileId, InvalidOmneoProfileId);

/// A phone number in E.164 form (`+61412345678`), as Klaviyo requires it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct E164Phone(String);

/// Why a phone number cannot be put in E.164 form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid phone number for E.164: {0:?}")]
pub struct InvalidPhone(pub String);

impl E164Phone {
    /// Parses a number already in E.164 form (`+` and the country code).
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidPhone> {
        let raw = raw.into();
        if !raw.starts_with('+') {
            return Err(InvalidPhone(raw));
        }
        Self::normalise(&raw, None).map_err(|_| InvalidPhone(raw))
    }

    /// Turns a number written any way people write them (`0412 345 678`, `+61 412-345-678`) into
    /// E.164, reading it as a number of `default_country` when it has no country code.
    pub fn normalise(raw: &str, default_country: Option<CountryId>) -> Result<Self, InvalidPhone> {
        let number =
            phonenumber::parse(default_country, raw).map_err(|_| InvalidPhone(raw.to_owned()))?;
        if !phonenumber::is_valid(&number) {
            return Err(InvalidPhone(raw.to_owned()));
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }
}

string_id!(E164Phone, InvalidPhone);

/// Whether a profile is subscribed to a channel's marketing (product.md §6.2 step 6): the one
/// consent notion both directions compare, whatever each remote calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// Subscribed to marketing on the channel.
    Subscribed,
    /// Not subscribed (never was, unsubscribed, opted out, bounced or suppressed).
    NotSubscribed,
}

impl ConsentState {
    /// `Subscribed` when `subscribed`, else `NotSubscribed`.
    pub fn from_subscribed(subscribed: bool) -> Self {
        if subscribed {
            Self::Subscribed
        } else {
            Self::NotSubscribed
        }
    }

    /// True for [`ConsentState::Subscribed`].
    pub fn is_subscribed(self) -> bool {
        self == Self::Subscribed
    }
}

/// One of the six Klaviyo data sources the extension provisions and feeds (product.md §5.4, §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSourceKind {
    /// Customer date fields.
    Dates,
    /// External account links.
    Connections,
    /// Loyalty rewards activity and redemptions.
    Rewards,
    /// Profile address changes.
    Addresses,
    /// Enrolments and activity for special programs.
    Benefits,
    /// List membership and subscription activity.
    Lists,
}

impl DataSourceKind {
    /// All six, in provisioning order.
    pub const ALL: [Self; 6] = [
        Self::Dates,
        Self::Connections,
        Self::Rewards,
        Self::Addresses,
        Self::Benefits,
        Self::Lists,
    ];

    /// The exact Klaviyo title, e.g. `Omneo Rewards` (how provisioning finds it again).
    pub fn title(self) -> &'static str {
        match self {
            Self::Dates => "Omneo Dates",
            Self::Connections => "Omneo Connections",
            Self::Rewards => "Omneo Rewards",
            Self::Addresses => "Omneo Addresses",
            Self::Benefits => "Omneo Benefits",
            Self::Lists => "Omneo Lists",
        }
    }

    /// The short name a target call may use instead of the title, e.g. `rewards`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Dates => "dates",
            Self::Connections => "connections",
            Self::Rewards => "rewards",
            Self::Addresses => "addresses",
            Self::Benefits => "benefits",
            Self::Lists => "lists",
        }
    }

    /// The description provisioning gives it.
    pub fn description(self) -> &'static str {
        match self {
            Self::Dates => "Omneo customer date fields",
            Self::Connections => "Omneo external account links",
            Self::Rewards => "Omneo loyalty rewards activity and redemptions",
            Self::Addresses => "Omneo profile address changes",
            Self::Benefits => "Omneo enrolments and activity for special programs",
            Self::Lists => "Omneo list membership and subscription activity",
        }
    }

    /// The data source a target names by title or short name (either case, outer spaces ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|kind| {
            kind.title().eq_ignore_ascii_case(name) || kind.short_name().eq_ignore_ascii_case(name)
        })
    }
}

/// What an Omneo interaction was (omneo.md §Interactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // Omneo's values.
pub enum InteractionAction {
    Broadcast,
    Disclose,
    Feedback,
    Product,
    Reach,
    Refer,
    Service,
    Visit,
    View,
}

/// Where an Omneo interaction happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)] // Omneo's values.
pub enum InteractionChannel {
    App,
    Email,
    Location,
    Push,
    Sms,
    Social,
    Support,
    Website,
}

/// An Omneo interaction's sentiment: 1, 0 or −1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 1.
    Positive,
    /// 0.
    Neutral,
    /// −1.
    Negative,
}

impl Signal {
    /// The signal's number.
    pub fn value(self) -> i8 {
        match self {
            Self::Positive => 1,
            Self::Neutral => 0,
            Self::Negative => -1,
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i8(self.value())
    }
}

impl<'de> Deserialize<'de> for Signal {
    /// 1, 0 or −1, as a number or a numeric string (a templated Flow webhook body may quote it).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let number = match Raw::deserialize(deserializer)? {
            Raw::Number(number) => Some(number),
            Raw::Text(text) => text.trim().parse().ok(),
        };
        match number {
            Some(1) => Ok(Self::Positive),
            Some(0) => Ok(Self::Neutral),
            Some(-1) => Ok(Self::Negative),
            _ => Err(serde::de::Error::custom("a signal is 1, 0 or -1")),
        }
    }
}

/// A Klaviyo system-webhook topic the extension subscribes to and acts on (product.md §7.2,
/// `klaviyo.md` §System webhooks). Serialized as Klaviyo's topic id, e.g.
/// `event:klaviyo.bounced_email`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KlaviyoTopic {
    /// An email bounced.
    #[serde(rename = "event:klaviyo.bounced_email")]
    BouncedEmail,
    /// An SMS could not be delivered.
    #[serde(rename = "event:klaviyo.failed_to_deliver_sms")]
    FailedToDeliverSms,
    /// An email was marked as spam.
    #[serde(rename = "event:klaviyo.marked_email_as_spam")]
    MarkedEmailAsSpam,
    /// Subscribed to email marketing.
    #[serde(rename = "event:klaviyo.subscribed_to_email_marketing")]
    SubscribedToEmailMarketing,
    /// Unsubscribed from email marketing.
    #[serde(rename = "event:klaviyo.unsubscribed_from_email_marketing")]
    UnsubscribedFromEmailMarketing,
    /// Subscribed to SMS marketing.
    #[serde(rename = "event:klaviyo.subscribed_to_sms_marketing")]
    SubscribedToSmsMarketing,
    /// Unsubscribed from SMS marketing.
    #[serde(rename = "event:klaviyo.unsubscribed_from_sms_marketing")]
    UnsubscribedFromSmsMarketing,
    /// Joined a list.
    #[serde(rename = "event:klaviyo.subscribed_to_list")]
    SubscribedToList,
    /// Left a list.
    #[serde(rename = "event:klaviyo.unsubscribed_from_list")]
    UnsubscribedFromList,
    /// Suppressed from email marketing by hand.
    #[serde(rename = "event:klaviyo.manually_suppressed_from_email_marketing")]
    ManuallySuppressedFromEmailMarketing,
    /// Unsuppressed from email marketing by hand.
    #[serde(rename = "event:klaviyo.manually_unsuppressed_from_email_marketing")]
    ManuallyUnsuppressedFromEmailMarketing,
}

impl KlaviyoTopic {
    /// Every topic, in the order provisioning subscribes the system webhook to them.
    /// (`event:klaviyo.dropped_email` is left out: a dropped email says the address is already
    /// suppressed, which the suppression topics report.)
    pub const ALL: [Self; 11] = [
        Self::BouncedEmail,
        Self::FailedToDeliverSms,
        Self::MarkedEmailAsSpam,
        Self::SubscribedToEmailMarketing,
        Self::UnsubscribedFromEmailMarketing,
        Self::SubscribedToSmsMarketing,
        Self::UnsubscribedFromSmsMarketing,
        Self::SubscribedToList,
        Self::UnsubscribedFromList,
        Self::ManuallySuppressedFromEmailMarketing,
        Self::ManuallyUnsuppressedFromEmailMarketing,
    ];

    /// Klaviyo's topic id, e.g. `event:klaviyo.bounced_email`.
    pub fn id(self) -> &'static str {
        match self {
            Self::BouncedEmail => "event:klaviyo.bounced_email",
            Self::FailedToDeliverSms => "event:klaviyo.failed_to_deliver_sms",
            Self::MarkedEmailAsSpam => "event:klaviyo.marked_email_as_spam",
            Self::SubscribedToEmailMarketing => "event:klaviyo.subscribed_to_email_marketing",
            Self::UnsubscribedFromEmailMarketing => {
                "event:klaviyo.unsubscribed_from_email_marketing"
            }
            Self::SubscribedToSmsMarketing => "event:klaviyo.subscribed_to_sms_marketing",
            Self::UnsubscribedFromSmsMarketing => "event:klaviyo.unsubscribed_from_sms_marketing",
            Self::SubscribedToList => "event:klaviyo.subscribed_to_list",
            Self::UnsubscribedFromList => "event:klaviyo.unsubscribed_from_list",
            Self::ManuallySuppressedFromEmailMarketing => {
                "event:klaviyo.manually_suppressed_from_email_marketing"
            }
            Self::ManuallyUnsuppressedFromEmailMarketing => {
                "event:klaviyo.manually_unsuppressed_from_email_marketing"
            }
        }
    }

    /// The topic with this id; `None` for topics the extension does not act on.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|topic| topic.id() == id)
    }

    /// The name of Klaviyo's own metric behind the topic, as `GET /api/metrics` lists it (how
    /// reconciliation finds the metric id to read the topic's events by), e.g. "Bounced Email".
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::BouncedEmail => "Bounced Email",
            Self::FailedToDeliverSms => "Failed to Deliver SMS",
            Self::MarkedEmailAsSpam => "Marked Email as Spam",
            Self::SubscribedToEmailMarketing => "Subscribed to Email Marketing",
            Self::UnsubscribedFromEmailMarketing => "Unsubscribed from Email Marketing",
            Self::SubscribedToSmsMarketing => "Subscribed to SMS Marketing",
            Self::UnsubscribedFromSmsMarketing => "Unsubscribed from SMS Marketing",
            Self::SubscribedToList => "Subscribed to List",
            Self::UnsubscribedFromList => "Unsubscribed from List",
            Self::ManuallySuppressedFromEmailMarketing => {
                "Manually Suppressed from Email Marketing"
            }
            Self::ManuallyUnsuppressedFromEmailMarketing => {
                "Manually Unsuppressed from Email Marketing"
            }
        }
    }

    /// The topic whose metric has this name; `None` for metrics the extension does not act on.
    pub fn from_metric_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|topic| topic.metric_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sources_are_named_by_title_or_short_name() {
        assert_eq!(
            DataSourceKind::from_name("Omneo Rewards"),
            Some(DataSourceKind::Rewards)
        );
        assert_eq!(
            DataSourceKind::from_name(" rewards "),
            Some(DataSourceKind::Rewards)
        );
        assert_eq!(
            DataSourceKind::from_name("LISTS"),
            Some(DataSourceKind::Lists)
        );
        assert_eq!(
            DataSourceKind::from_name("omneo dates"),
            Some(DataSourceKind::Dates)
        );
        assert_eq!(DataSourceKind::from_name("points"), None);
        assert_eq!(DataSourceKind::from_name(""), None);
        for kind in DataSourceKind::ALL {
            assert_eq!(DataSourceKind::from_name(kind.title()), Some(kind));
            assert_eq!(DataSourceKind::from_name(kind.short_name()), Some(kind));
        }
    }

    #[test]
    fn tenant_ids_are_lowercase_slugs() {
        for good in ["acme", "a", "acme-au", "r2d2", &"a".repeat(63)] {
            assert!(TenantId::parse(good).is_ok(), "{good} should parse");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "ac me",
            "acme/x",
            "acme_au",
            &"a".repeat(64),
        ] {
            assert_eq!(TenantId::parse(bad), Err(InvalidTenantId(bad.to_owned())));
        }
    }

    #[test]
    fn tenant_id_deserialises_through_parse() {
        assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }

    #[test]
    fn profile_ids_parse_once_and_refuse_what_cannot_be_an_id() {
        assert!(KlaviyoProfileId::parse("01HZX3F6K4Q2A8B0C9D7E5G1H2").is_ok());
        for bad in ["", "01H/../x", "a b", &"a".repeat(65)] {
            assert!(KlaviyoProfileId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(OmneoProfileId::parse("6f1c1f3e-2b7a-4c7e-9a55-0b8f1d2c3e4f").is_ok());
        assert!(OmneoProfileId::parse("12345").is_ok());
        for bad in ["", "a/b", "x y", &"1".repeat(65)] {
            assert!(OmneoProfileId::parse(bad).is_err(), "{bad:?}");
        }
        let id: OmneoProfileId = serde_json::from_str("\"abc-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"abc-1\"");
        assert!(serde_json::from_str::<KlaviyoProfileId>("\"no/slash\"").is_err());
    }

    #[test]
    fn phones_normalise_to_e164_with_the_default_country() {
        let au: CountryId = "AU".parse().unwrap();
        for raw in [
            "0412 345 678",
            "+61 412 345 678",
            "+61412345678",
            "(04) 1234-5678",
        ] {
            assert_eq!(
                E164Phone::normalise(raw, Some(au)).unwrap().as_str(),
                "+61412345678",
                "{raw}"
            );
        }
        assert!(E164Phone::normalise("12", Some(au)).is_err());
        assert!(E164Phone::normalise("not a phone", Some(au)).is_err());
        assert!(E164Phone::parse("+61412345678").is_ok());
        assert!(E164Phone::parse("0412345678").is_err(), "no country code");
    }

    #[test]
    fn consent_states_read_from_a_flag() {
        assert_eq!(
            ConsentState::from_subscribed(true),
            ConsentState::Subscribed
        );
        assert!(!ConsentState::from_subscribed(false).is_subscribed());
        assert_eq!(
            serde_json::to_value(ConsentState::NotSubscribed).unwrap(),
            "not_subscribed"
        );
    }

    #[test]
    fn klaviyo_topics_serialize_as_their_ids() {
        for topic in KlaviyoTopic::ALL {
            assert_eq!(serde_json::to_value(topic).unwrap(), topic.id());
            assert_eq!(KlaviyoTopic::from_id(topic.id()), Some(topic));
        }
        assert_eq!(KlaviyoTopic::from_id("event:klaviyo.dropped_email"), None);
    }

    #[test]
    fn klaviyo_topics_round_trip_through_their_metric_names() {
        let names: std::collections::HashSet<&str> =
            KlaviyoTopic::ALL.map(KlaviyoTopic::metric_name).into();
        assert_eq!(names.len(), KlaviyoTopic::ALL.len(), "one name per topic");
        for topic in KlaviyoTopic::ALL {
            assert_eq!(
                KlaviyoTopic::from_metric_name(topic.metric_name()),
                Some(topic)
            );
        }
        assert_eq!(KlaviyoTopic::BouncedEmail.metric_name(), "Bounced Email");
        assert_eq!(KlaviyoTopic::from_metric_name("Dropped Email"), None);
        assert_eq!(
            KlaviyoTopic::from_metric_name("subscribed to email marketing"),
            None,
            "names are matched exactly"
        );
    }
}
