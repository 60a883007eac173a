//! What a task asks a worker to do: one [`Work`] variant per kind of task, each with its payload
//! type — the contract between the receivers that enqueue and the workers that run (product.md
//! §6, §7). Payloads stay small: ids and the facts a worker cannot re-read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Direction;
use crate::domain::{DataSourceKind, KlaviyoProfileId, OmneoProfileId};

/// A task's work, stored in the envelope as `{"kind": "<kind>", "payload": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Work {
    /// Outbound: re-read an Omneo profile and write it to Klaviyo (§6.2).
    SyncProfile(SyncProfile),
    /// Outbound: an Omneo profile was deleted (§6.3).
    ProfileDeleted(ProfileDeleted),
    /// Outbound: record a Klaviyo event from the `metric` target (§6.5).
    SendMetric(SendMetric),
    /// Outbound: write a data-source record from the `data-source-record` target (§6.5).
    DataSourceRecord(DataSourceRecord),
    /// Inbound: one Klaviyo profile's system-webhook events (§7.2).
    KlaviyoEvents(KlaviyoEvents),
    /// Inbound: a Klaviyo Flow webhook action (§7.3).
    FlowAction(FlowAction),
}

/// The kind of a [`Work`], without its payload (what failure records and logs name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// [`Work::SyncProfile`].
    SyncProfile,
    /// [`Work::ProfileDeleted`].
    ProfileDeleted,
    /// [`Work::SendMetric`].
    SendMetric,
    /// [`Work::DataSourceRecord`].
    DataSourceRecord,
    /// [`Work::KlaviyoEvents`].
    KlaviyoEvents,
    /// [`Work::FlowAction`].
    FlowAction,
}

impl TaskKind {
    /// Which worker runs tasks of this kind.
    pub fn direction(self) -> Direction {
        match self {
            Self::SyncProfile
            | Self::ProfileDeleted
            | Self::SendMetric
            | Self::DataSourceRecord => Direction::Outbound,
            Self::KlaviyoEvents | Self::FlowAction => Direction::Inbound,
        }
    }
}

impl TaskKind {
    /// The kind as failure records and logs name it, e.g. `sync_profile`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SyncProfile => "sync_profile",
            Self::ProfileDeleted => "profile_deleted",
            Self::SendMetric => "send_metric",
            Self::DataSourceRecord => "data_source_record",
            Self::KlaviyoEvents => "klaviyo_events",
            Self::FlowAction => "flow_action",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Work {
    /// The kind of this work.
    pub fn kind(&self) -> TaskKind {
        match self {
            Self::SyncProfile(_) => TaskKind::SyncProfile,
            Self::ProfileDeleted(_) => TaskKind::ProfileDeleted,
            Self::SendMetric(_) => TaskKind::SendMetric,
            Self::DataSourceRecord(_) => TaskKind::DataSourceRecord,
            Self::KlaviyoEvents(_) => TaskKind::KlaviyoEvents,
            Self::FlowAction(_) => TaskKind::FlowAction,
        }
    }

    /// The profile the work is about, as failure records show it: an Omneo profile id, a Klaviyo
    /// profile id or an email (`None` when the payload names none).
    pub fn profile(&self) -> Option<String> {
        match self {
            Self::SyncProfile(work) => Some(work.profile_id.to_string()),
            Self::ProfileDeleted(work) => Some(work.profile_id.to_string()),
            Self::SendMetric(work) => metric_profile(&work.event),
            Self::DataSourceRecord(work) => ["profile_id", "email"]
                .iter()
                .find_map(|key| work.record.get(key).and_then(Value::as_str))
                .map(str::to_owned),
            Self::KlaviyoEvents(work) => Some(work.klaviyo_profile_id.to_string()),
            Self::FlowAction(work) => work
                .klaviyo_profile_id
                .as_ref()
                .map(ToString::to_string)
                .or_else(|| work.email.clone()),
        }
    }

    /// The payload alone, as JSON (what a failure record keeps).
    pub fn payload(&self) -> Value {
        let mut tagged = serde_json::to_value(self).expect("work serializes to JSON");
        tagged
            .get_mut("payload")
            .map(Value::take)
            .unwrap_or(Value::Null)
    }

    /// The work of `kind` with this payload (a failure record read back for replay).
    pub fn from_parts(kind: TaskKind, payload: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "payload": payload }))
    }
}

/// The profile a Klaviyo event names: `attributes.profile.data.id`, else its email (with or
/// without the top-level `data` envelope).
fn metric_profile(event: &Value) -> Option<String> {
    let data = event.get("data").unwrap_or(event);
    let profile = data.pointer("/attributes/profile/data")?;
    profile
        .get("id")
        .or_else(|| profile.pointer("/attributes/email"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// [`Work::SyncProfile`]: which profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProfile {
    /// The Omneo profile to re-read and sync.
    pub profile_id: OmneoProfileId,
}

/// [`Work::ProfileDeleted`]: the deleted profile's identifiers, from the event (it cannot be
/// re-read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileDeleted {
    /// The deleted Omneo profile.
    pub profile_id: OmneoProfileId,
    /// Its email, when the event carried one (how Klaviyo is asked when no id is known).
    pub email: Option<String>,
    /// Its mobile phone as Omneo held it, when the event carried one (to unsubscribe SMS).
    #[serde(default)]
    pub mobile_phone: Option<String>,
    /// Its Klaviyo identity, when the event carried one.
    pub klaviyo_profile_id: Option<KlaviyoProfileId>,
}

/// [`Work::SendMetric`]: the event as the target received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendMetric {
    /// The Klaviyo event body (`data` envelope or not).
    pub event: Value,
    /// `?withToken=true`: add an Omneo ID token to the event properties.
    pub with_token: bool,
}

/// [`Work::DataSourceRecord`]: one record for one of the six data sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSourceRecord {
    /// Which data source (the target call named it by title or short name).
    pub data_source: DataSourceKind,
    /// The record (carries a stable `id`).
    pub record: Value,
}

/// [`Work::KlaviyoEvents`]: one profile's events of one delivery, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlaviyoEvents {
    /// The Klaviyo profile the events are about.
    pub klaviyo_profile_id: KlaviyoProfileId,
    /// The events as the delivery carried them (`payload.data` of each entry).
    pub events: Vec<Value>,
}

/// Which Flow webhook action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowActionKind {
    /// Issue a reward.
    Rewards,
    /// Issue a benefit.
    Benefits,
    /// Create an interaction.
    Interactions,
}

/// [`Work::FlowAction`]: a validated Flow webhook call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowAction {
    /// Which action.
    pub action: FlowActionKind,
    /// `person_id`: the Klaviyo profile.
    pub klaviyo_profile_id: Option<KlaviyoProfileId>,
    /// `email`: the fallback match.
    pub email: Option<String>,
    /// The action's fields (`data`).
    pub data: Value,
    /// What makes a repeat a no-op: the caller's `idempotency_key`, else a hash of the body.
    pub idempotency_key: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::TenantId;
    use crate::queue::TaskEnvelope;

    fn sync(id: &str) -> Work {
        Work::SyncProfile(SyncProfile {
            profile_id: OmneoProfileId::parse(id).unwrap(),
        })
    }

    #[test]
    fn envelopes_carry_kind_and_payload_side_by_side() {
        let envelope = TaskEnvelope {
            tenant: TenantId::parse("acme").unwrap(),
            work: sync("p-1"),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            json,
            json!({"tenant": "acme", "kind": "sync_profile", "payload": {"profile_id": "p-1"}})
        );
        assert_eq!(
            serde_json::from_value::<TaskEnvelope>(json).unwrap(),
            envelope
        );
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_do_not_parse() {
        let unknown = json!({"tenant": "acme", "kind": "teleport", "payload": {}});
        assert!(serde_json::from_value::<TaskEnvelope>(unknown).is_err());
        let bad_id =
            json!({"tenant": "acme", "kind": "sync_profile", "payload": {"profile_id": "a/b"}});
        assert!(serde_json::from_value::<TaskEnvelope>(bad_id).is_err());
    }

    #[test]
    fn kind_and_payload_split_and_rejoin() {
        let work = sync("p-2");
        assert_eq!(work.kind(), TaskKind::SyncProfile);
        assert_eq!(work.kind().direction(), Direction::Outbound);
        assert_eq!(work.payload(), json!({"profile_id": "p-2"}));
        assert_eq!(Work::from_parts(work.kind(), work.payload()).unwrap(), work);
        assert_eq!(TaskKind::FlowAction.direction(), Direction::Inbound);
        for kind in [
            TaskKind::KlaviyoEvents,
            TaskKind::SendMetric,
            TaskKind::FlowAction,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
