//! What a task asks a worker to do: one [`Work`] variant per kind of task, each with its payload
//! type — the contract between the receivers that enqueue and the workers that run (product.md
//! §6, §7). Payloads stay small: ids and the facts a worker cannot re-read.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Direction;
use crate::domain::{
    DataSourceKind, InteractionAction, InteractionChannel, KlaviyoProfileId, KlaviyoTopic,
    OmneoProfileId, Signal,
};

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
    /// Outbound: one chunk of a backfill run (§10).
    BackfillChunk(BackfillChunk),
    /// Outbound: the outbound half of a scheduled reconciliation (§10).
    ReconcileOutbound(Reconcile),
    /// Inbound: the inbound half of a scheduled reconciliation (§10).
    ReconcileInbound(Reconcile),
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
    /// [`Work::BackfillChunk`].
    BackfillChunk,
    /// [`Work::ReconcileOutbound`].
    ReconcileOutbound,
    /// [`Work::ReconcileInbound`].
    ReconcileInbound,
}

impl TaskKind {
    /// Which worker runs tasks of this kind.
    pub fn direction(self) -> Direction {
        match self {
            Self::SyncProfile
            | Self::ProfileDeleted
            | Self::SendMetric
            | Self::DataSourceRecord
            | Self::BackfillChunk
            | Self::ReconcileOutbound => Direction::Outbound,
            Self::KlaviyoEvents | Self::FlowAction | Self::ReconcileInbound => Direction::Inbound,
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
            Self::BackfillChunk => "backfill_chunk",
            Self::ReconcileOutbound => "reconcile_outbound",
            Self::ReconcileInbound => "reconcile_inbound",
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
            Self::BackfillChunk(_) => TaskKind::BackfillChunk,
            Self::ReconcileOutbound(_) => TaskKind::ReconcileOutbound,
            Self::ReconcileInbound(_) => TaskKind::ReconcileInbound,
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
            Self::BackfillChunk(_) | Self::ReconcileOutbound(_) | Self::ReconcileInbound(_) => None,
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

/// [`Work::BackfillChunk`]: which run, and where its chunk starts in Omneo's profile listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillChunk {
    /// The run (a chunk of another run, or of a run no longer running, does nothing).
    pub run_id: String,
    /// The chunk's first page (1-based; its length is the run's `pages_per_chunk`).
    pub first_page: u32,
    /// Profiles the previous chunk's last page held: if the listing shifted while the run
    /// wrote to it, they may come round again, and are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<OmneoProfileId>,
}

/// [`Work::ReconcileOutbound`], [`Work::ReconcileInbound`]: one scheduled reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    /// The schedule's time for it (names the task, so a schedule enqueues it once).
    pub scheduled_at: Timestamp,
}

/// [`Work::KlaviyoEvents`]: one Klaviyo profile's consent events of one delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlaviyoEvents {
    /// The Klaviyo profile the events are about.
    pub klaviyo_profile_id: KlaviyoProfileId,
    /// Its email, as the events carried it (how Omneo is asked when no identity matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The events, in the order the delivery carried them (the worker sorts them by time).
    pub events: Vec<ConsentEvent>,
}

/// One Klaviyo system event, reduced to what the inbound worker uses (the typed part of
/// `payload.data` of a system-webhook entry, or of an event `GET /api/events` returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEvent {
    /// The Klaviyo event id (what makes its interaction idempotent).
    pub id: String,
    /// Its topic.
    pub topic: KlaviyoTopic,
    /// When it happened (`attributes.datetime`).
    pub at: Timestamp,
    /// `event_properties.method`, e.g. `API`, `PREFERENCE_PAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `event_properties.method_detail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_detail: Option<String>,
    /// `event_properties.custom_method_detail`: the `custom_source` of an API change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_method_detail: Option<String>,
    /// `event_properties.list_id` (list topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<String>,
}

/// The `custom_source` of every consent change the extension makes in Klaviyo, which Klaviyo
/// reports back as the event's `custom_method_detail` (product.md §6.4, §7.2 step 2).
pub const OUR_CUSTOM_SOURCE: &str = "omneo";

impl ConsentEvent {
    /// Whether the extension caused it (its `custom_method_detail` is [`OUR_CUSTOM_SOURCE`]):
    /// such an event is an echo and is dropped.
    pub fn is_circular(&self) -> bool {
        self.custom_method_detail.as_deref() == Some(OUR_CUSTOM_SOURCE)
    }
}

/// [`Work::FlowAction`]: a validated Flow webhook call (product.md §7.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowAction {
    /// `person_id`: the Klaviyo profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub klaviyo_profile_id: Option<KlaviyoProfileId>,
    /// `email`: the fallback match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// What makes a repeat of the call a no-op.
    pub dedupe: FlowDedupe,
    /// What to do.
    pub request: FlowRequest,
}

/// What identifies one Flow webhook call across Klaviyo's retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowDedupe {
    /// The caller's `idempotency_key`.
    Key(String),
    /// No key was sent: the SHA-256 (hex) of the body, which counts for 24 hours.
    BodyHash(String),
}

impl FlowDedupe {
    /// The identifying text.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Key(text) | Self::BodyHash(text) => text,
        }
    }
}

/// A Flow webhook's action, with its validated `data`, stored as `{"kind": …, "data": {…}}`
/// (adjacently tagged: an interaction's own `action` field must not meet the tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum FlowRequest {
    /// `rewards`: issue a reward.
    Reward(IssueReward),
    /// `benefits`: issue a benefit.
    Benefit(IssueBenefit),
    /// `interactions`: record an interaction.
    Interaction(RecordInteraction),
}

impl FlowRequest {
    /// The action's name as its path says it: `rewards`, `benefits`, `interactions`.
    pub fn path_name(&self) -> &'static str {
        match self {
            Self::Reward(_) => "rewards",
            Self::Benefit(_) => "benefits",
            Self::Interaction(_) => "interactions",
        }
    }
}

/// `data` of a `rewards` call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueReward {
    /// Which reward definition (a string or a number, as Omneo ids come).
    pub reward_definition_id: DefinitionId,
    /// The value: initial = remaining = amount.
    #[serde(deserialize_with = "positive_amount")]
    pub amount: f64,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Free-form details, passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

/// `data` of a `benefits` call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueBenefit {
    /// Which benefit definition.
    pub benefit_definition_id: DefinitionId,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Free-form details, passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

/// `data` of an `interactions` call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordInteraction {
    /// What it was.
    pub action: InteractionAction,
    /// Where.
    pub channel: InteractionChannel,
    /// Its sentiment.
    pub signal: Signal,
    /// Its name.
    #[serde(deserialize_with = "non_empty_text")]
    pub name: String,
    /// When it happened (now when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interacted_at: Option<Timestamp>,
    /// Free-form details, passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

/// An Omneo definition id: a non-empty string or a whole number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DefinitionId {
    /// A numeric id.
    Number(u64),
    /// A textual id.
    #[serde(deserialize_with = "non_empty_text")]
    Text(String),
}

fn non_empty_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(text)
}

/// A positive, finite amount, given as a number or a numeric string (a templated body may quote
/// it).
fn positive_amount<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    let amount = match Raw::deserialize(deserializer)? {
        Raw::Number(number) => Some(number),
        Raw::Text(text) => text.trim().parse().ok(),
    };
    match amount {
        Some(amount) if amount.is_finite() && amount > 0.0 => Ok(amount),
        _ => Err(serde::de::Error::custom("must be a positive number")),
    }
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

    #[test]
    fn flow_actions_survive_the_envelope() {
        let interaction: RecordInteraction = serde_json::from_value(json!({
            "action": "view", "channel": "email", "signal": "-1", "name": "Opened",
            "interacted_at": "2026-12-01T10:00:00Z", "meta": {"flow": "Welcome"}
        }))
        .unwrap();
        let reward: IssueReward = serde_json::from_value(
            json!({"reward_definition_id": 12, "amount": "2.5", "expires_at": "2027-01-31T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(reward.amount, 2.5);
        let benefit: IssueBenefit =
            serde_json::from_value(json!({"benefit_definition_id": "coffee"})).unwrap();
        for request in [
            FlowRequest::Interaction(interaction),
            FlowRequest::Reward(reward),
            FlowRequest::Benefit(benefit),
        ] {
            let work = Work::FlowAction(FlowAction {
                klaviyo_profile_id: Some(KlaviyoProfileId::parse("01JPROFILE").unwrap()),
                email: None,
                dedupe: FlowDedupe::Key("k".into()),
                request,
            });
            let envelope = TaskEnvelope {
                tenant: TenantId::parse("acme").unwrap(),
                work,
            };
            let text = serde_json::to_string(&envelope).unwrap();
            assert_eq!(
                serde_json::from_str::<TaskEnvelope>(&text).unwrap(),
                envelope,
                "{text}"
            );
        }
    }

    #[test]
    fn flow_data_refuses_what_omneo_would() {
        for bad in [
            json!({"reward_definition_id": 1, "amount": 0}),
            json!({"reward_definition_id": 1, "amount": "ten"}),
            json!({"reward_definition_id": "", "amount": 1}),
            json!({"reward_definition_id": 1, "amount": 1, "extra": true}),
        ] {
            assert!(
                serde_json::from_value::<IssueReward>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for bad in [json!(2), json!("x"), json!(0.5)] {
            assert!(
                serde_json::from_value::<Signal>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_our_own_custom_source_makes_an_echo() {
        let event = |detail: Option<&str>| ConsentEvent {
            id: "e".into(),
            topic: KlaviyoTopic::UnsubscribedFromEmailMarketing,
            at: Timestamp::UNIX_EPOCH,
            method: Some("API".into()),
            method_detail: None,
            custom_method_detail: detail.map(str::to_owned),
            list_id: None,
        };
        assert!(event(Some("omneo")).is_circular());
        assert!(!event(Some("shopify")).is_circular());
        assert!(!event(Some("Omneo ")).is_circular());
        assert!(!event(None).is_circular());
    }
}
