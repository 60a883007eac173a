//! The names Cloud Tasks knows queues and tasks by.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Direction;
use crate::domain::TenantId;
use crate::settings::{InvalidSetting, Settings};

/// The longest queue id Cloud Tasks accepts.
const MAX_QUEUE_ID: usize = 100;

/// A Cloud Tasks queue id: `[A-Za-z0-9-]{1,100}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

/// Why a text is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Cloud Tasks queue id ([A-Za-z0-9-], 1-100 characters): {0:?}")]
pub struct InvalidQueueName(String);

impl QueueName {
    /// Parses a queue id as Cloud Tasks names it in `X-CloudTasks-QueueName`; a full path
    /// (`projects/P/locations/L/queues/Q`, as the emulator sends) gives its last segment.
    pub fn parse(raw: &str) -> Option<Self> {
        let id = raw.rsplit('/').next().unwrap_or(raw);
        let valid = (1..=MAX_QUEUE_ID).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        valid.then(|| Self(id.to_owned()))
    }

    /// The queue id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The direction a tenant queue serves, read from its `-inbound` / `-outbound` suffix.
    pub fn direction(&self) -> Option<Direction> {
        [Direction::Inbound, Direction::Outbound]
            .into_iter()
            .find(|d| {
                self.0
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.ends_with('-'))
            })
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidQueueName;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        match Self::parse(&raw) {
            Some(name) if name.0 == raw => Ok(name),
            _ => Err(InvalidQueueName(raw)),
        }
    }
}

impl From<QueueName> for String {
    fn from(name: QueueName) -> Self {
        name.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's two queues: `{task_queue_name}-{namespace}-inbound` and `…-outbound` (product.md §5.4).
///
/// `task_queue_name` defaults to the tenant id, and a custom one must be the tenant id or start with
/// `{tenant id}-`, so a tenant's names are derived from its id; characters Cloud Tasks does not
/// accept (`_`) become `-`, and a name longer than Cloud Tasks' 100 characters is refused. What
/// the construction alone cannot rule out (`acme` + `au-klaviyo` and `acme-au` + `klaviyo` give
/// the same names) the store's reservation does: each name is bound to the first tenant that
/// reserves it (`Store::reserve_queue_name`), on registration, on a settings change and before
/// provisioning creates the queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQueues {
    /// Klaviyo → Omneo work.
    pub inbound: QueueName,
    /// Omneo → Klaviyo work.
    pub outbound: QueueName,
}

impl TenantQueues {
    /// The queues of `tenant` under `settings`; a problem names the setting at fault.
    pub fn of(tenant: &TenantId, settings: &Settings) -> Result<Self, InvalidSetting> {
        let custom = settings.task_queue_name.as_deref();
        let prefix = custom.unwrap_or(tenant.as_str());
        if custom.is_some_and(|p| p != tenant.as_str() && !p.starts_with(&format!("{tenant}-"))) {
            return Err(InvalidSetting::new(
                "task_queue_name",
                format!("must be the tenant id or start with \"{tenant}-\""),
            ));
        }
        let name = |direction: Direction| {
            let raw = format!("{prefix}-{}-{}", settings.namespace, direction.as_str());
            let cleaned: String = raw
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            QueueName::parse(&cleaned).ok_or_else(|| {
                let field = if custom.is_some() {
                    "task_queue_name"
                } else {
                    "namespace"
                };
                InvalidSetting::new(
                    field,
                    format!(
                        "the queue name {cleaned:?} would be {} characters; Cloud Tasks allows {MAX_QUEUE_ID}",
                        cleaned.len()
                    ),
                )
            })
        };
        Ok(Self {
            inbound: name(Direction::Inbound)?,
            outbound: name(Direction::Outbound)?,
        })
    }

    /// The queue of one direction.
    pub fn get(&self, direction: Direction) -> &QueueName {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
        }
    }

    /// Both, inbound first.
    pub fn both(&self) -> [&QueueName; 2] {
        [&self.inbound, &self.outbound]
    }
}

/// A deterministic task id, `[A-Za-z0-9_-]`: the hex SHA-256 of what identifies the work, so the
/// same work enqueued twice is de-duplicated (never a timestamp prefix, which hurts Cloud Tasks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskName(String);

impl TaskName {
    /// A name derived from the parts (length-prefixed, so `["ab","c"]` ≠ `["a","bc"]`).
    pub fn from_parts(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let mut hex = [0; 64];
        hex::encode_to_slice(hasher.finalize(), &mut hex).expect("64 hex digits hold 32 bytes");
        Self(String::from_utf8(hex.to_vec()).expect("hex digits are ASCII"))
    }

    /// Parses a task id as Cloud Tasks sends it in `X-CloudTasks-TaskName`:
    /// `[A-Za-z0-9_-]{1,500}`.
    pub fn parse(raw: &str) -> Option<Self> {
        let valid = (1..=500).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| Self(raw.to_owned()))
    }

    /// The task id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<TaskName> for String {
    fn from(name: TaskName) -> Self {
        name.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn settings(prefix: Option<&str>, namespace: &str) -> Settings {
        Settings {
            task_queue_name: prefix.map(str::to_owned),
            namespace: namespace.to_owned(),
            ..Settings::default()
        }
    }

    #[test]
    fn tenant_queues_follow_the_product_pattern() {
        let queues = TenantQueues::of(&tenant("acme"), &Settings::default()).unwrap();
        assert_eq!(queues.inbound.as_str(), "acme-klaviyo-inbound");
        assert_eq!(queues.outbound.as_str(), "acme-klaviyo-outbound");
        assert_eq!(queues.inbound.direction(), Some(Direction::Inbound));
        assert_eq!(
            queues.get(Direction::Outbound).direction(),
            Some(Direction::Outbound)
        );
        let custom = TenantQueues::of(&tenant("acme"), &settings(Some("acme-au"), "kl_x")).unwrap();
        assert_eq!(custom.outbound.as_str(), "acme-au-kl-x-outbound");
    }

    #[test]
    fn a_custom_prefix_must_belong_to_the_tenant() {
        for foreign in ["globex", "acmex", "acm", "x-acme"] {
            let error =
                TenantQueues::of(&tenant("acme"), &settings(Some(foreign), "klaviyo")).unwrap_err();
            assert_eq!(error.field, "task_queue_name", "{foreign}");
        }
        assert!(TenantQueues::of(&tenant("acme"), &settings(Some("acme"), "klaviyo")).is_ok());
    }

    #[test]
    fn names_over_100_characters_are_refused_naming_the_setting() {
        let long_tenant = tenant(&"t".repeat(63));
        let error = TenantQueues::of(&long_tenant, &settings(None, &"n".repeat(40))).unwrap_err();
        assert_eq!(error.field, "namespace");
        let custom = format!("acme-{}", "p".repeat(58));
        let error = TenantQueues::of(&tenant("acme"), &settings(Some(&custom), &"n".repeat(40)))
            .unwrap_err();
        assert_eq!(error.field, "task_queue_name");
        assert!(error.message.contains("100"), "{}", error.message);
    }

    #[test]
    fn queue_ids_parse_from_short_ids_and_full_paths() {
        let short = QueueName::parse("acme-klaviyo-inbound").unwrap();
        assert_eq!(short.as_str(), "acme-klaviyo-inbound");
        let full = QueueName::parse("projects/p/locations/l/queues/acme-klaviyo-inbound").unwrap();
        assert_eq!(full, short);
        assert_eq!(QueueName::parse(""), None);
        assert_eq!(QueueName::parse("projects/p/locations/l/queues/"), None);
        assert_eq!(QueueName::parse("bad_name"), None);
        assert_eq!(QueueName::parse(&"q".repeat(101)), None);
        assert!(serde_json::from_str::<QueueName>("\"a/b\"").is_err());
        assert_eq!(
            serde_json::from_str::<QueueName>("\"acme-klaviyo-inbound\"").unwrap(),
            short
        );
    }

    #[test]
    fn task_ids_parse_only_when_cloud_tasks_would_accept_them() {
        assert!(TaskName::parse("abc_DEF-123").is_some());
        assert_eq!(TaskName::parse(""), None);
        assert_eq!(TaskName::parse("a/b"), None);
        assert_eq!(TaskName::parse(&"t".repeat(501)), None);
    }

    #[test]
    fn task_names_are_deterministic_and_unambiguous() {
        assert_eq!(
            TaskName::from_parts(&["a", "b"]),
            TaskName::from_parts(&["a", "b"])
        );
        assert_ne!(
            TaskName::from_parts(&["ab", "c"]),
            TaskName::from_parts(&["a", "bc"])
        );
        let name = TaskName::from_parts(&["tenant", "profile", "42"]);
        assert_eq!(TaskName::parse(name.as_str()), Some(name.clone()));
        assert_eq!(name.as_str().len(), 64);
        assert!(name.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
