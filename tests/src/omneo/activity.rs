//! Activity written to Omneo: `POST /interactions`, `POST /rewards`, `POST /benefits`.
//!
//! Interactions name their profile by `profile_id` or `identifier:{id,handle}`, and their
//! `action`, `channel` and `signal` must be among Omneo's values (422 naming the field).

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::responses::{self, ApiError, Validator, created, json_object, parse_datetime};
use super::state::{Caller, Shared, Tenant};

/// Allowed interaction `action`s.
pub const ACTIONS: [&str; 9] = [
    "broadcast",
    "disclose",
    "feedback",
    "product",
    "reach",
    "refer",
    "service",
    "visit",
    "view",
];
/// Allowed interaction `channel`s.
pub const CHANNELS: [&str; 8] = [
    "app", "email", "location", "push", "sms", "social", "support", "website",
];

/// A recorded interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Integer id.
    pub id: u64,
    /// The profile it belongs to.
    pub profile_id: String,
    /// One of [`ACTIONS`].
    pub action: String,
    /// One of [`CHANNELS`].
    pub channel: String,
    /// 1 positive, 0 neutral, −1 negative.
    pub signal: i8,
    /// Free-text name.
    pub name: String,
    /// Who wrote it.
    pub namespace: String,
    /// When it happened (`YYYY-MM-DD HH:MM:SS`; defaults to now).
    pub interacted_at: String,
    /// Extra data.
    pub meta: Option<Value>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
}

/// An issued reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// Integer id.
    pub id: u64,
    /// The profile it belongs to.
    pub profile_id: String,
    /// The reward definition (number or string, as sent).
    pub reward_definition_id: Value,
    /// Value when issued.
    pub value_initial: f64,
    /// Value left.
    pub value_remaining: f64,
    /// Expiry (`YYYY-MM-DD HH:MM:SS`).
    pub expires_at: Option<String>,
    /// Caller's reference.
    pub external_id: Option<String>,
    /// Extra data.
    pub meta: Option<Value>,
    /// Region (number or string, as sent).
    pub region_id: Option<Value>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
}

/// A reward to issue (the body of `POST /rewards`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewReward {
    /// The profile.
    pub profile_id: String,
    /// The reward definition.
    pub reward_definition_id: Value,
    /// Value when issued.
    pub value_initial: f64,
    /// Value left.
    pub value_remaining: f64,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Caller's reference.
    pub external_id: Option<String>,
    /// Extra data.
    pub meta: Option<Value>,
    /// Region.
    pub region_id: Option<Value>,
}

/// An issued benefit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Benefit {
    /// Integer id.
    pub id: u64,
    /// The profile it belongs to.
    pub profile_id: String,
    /// The benefit definition (number or string, as sent).
    pub benefit_definition_id: Value,
    /// When issued (`YYYY-MM-DD HH:MM:SS`; defaults to now).
    pub issued_at: String,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Caller's reference.
    pub external_id: Option<String>,
    /// Extra data.
    pub meta: Option<Value>,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
}

/// A benefit to issue (the body of `POST /benefits`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewBenefit {
    /// The profile.
    pub profile_id: String,
    /// The benefit definition.
    pub benefit_definition_id: Value,
    /// When issued (now when `None`).
    pub issued_at: Option<String>,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Caller's reference.
    pub external_id: Option<String>,
    /// Extra data.
    pub meta: Option<Value>,
}

/// A required id: a number, or a non-empty string.
fn required_id(v: &mut Validator, body: &Map<String, Value>, field: &str) -> Option<Value> {
    match body.get(field) {
        Some(value @ Value::Number(_)) => Some(value.clone()),
        _ => v.required_string(body, field).map(Value::String),
    }
}

/// An optional JSON value (absent and null are both `None`).
fn optional(body: &Map<String, Value>, field: &str) -> Option<Value> {
    body.get(field).filter(|v| !v.is_null()).cloned()
}

/// An optional date-time, normalised (422 when unparsable).
fn optional_datetime(v: &mut Validator, body: &Map<String, Value>, field: &str) -> Option<String> {
    v.nullable_datetime(body, field).flatten()
}

/// An optional string (numbers are taken as their text).
fn optional_text(v: &mut Validator, body: &Map<String, Value>, field: &str) -> Option<String> {
    match body.get(field) {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => v.nullable_string(body, field).flatten(),
    }
}

impl Tenant {
    /// Checks that `profile_id` names one of the tenant's profiles (422 otherwise).
    fn existing_profile(&self, v: &mut Validator, profile_id: Option<String>) -> Option<String> {
        let id = profile_id?;
        if self.record(&id).is_ok() {
            Some(id)
        } else {
            v.fail_selected("profile_id");
            None
        }
    }

    /// The profile an interaction names: `profile_id`, else `identifier:{id,handle}`.
    fn interaction_profile(&self, v: &mut Validator, body: &Map<String, Value>) -> Option<String> {
        if body.get("profile_id").is_some_and(|p| !p.is_null()) {
            let id = v.required_string(body, "profile_id");
            return self.existing_profile(v, id);
        }
        let Some(identifier) = body.get("identifier").filter(|i| !i.is_null()) else {
            v.fail(
                "profile_id",
                "The profile id field is required when identifier is not present.",
            );
            return None;
        };
        let handle = identifier.get("handle").and_then(Value::as_str);
        let id = match identifier.get("id") {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let (Some(handle), Some(id)) = (handle, id) else {
            v.fail(
                "identifier",
                "The identifier field must have an id and a handle.",
            );
            return None;
        };
        match self.profile_by_identity(handle, &id) {
            Some(profile) => Some(profile.id.clone()),
            None => {
                v.fail_selected("identifier");
                None
            }
        }
    }

    fn create_interaction(&mut self, body: &Map<String, Value>) -> Result<Interaction, ApiError> {
        let mut v = Validator::default();
        let profile_id = self.interaction_profile(&mut v, body);
        let mut one_of = |field: &str, allowed: &[&str]| {
            let value = v.required_string(body, field)?;
            if allowed.contains(&value.as_str()) {
                Some(value)
            } else {
                v.fail_selected(field);
                None
            }
        };
        let action = one_of("action", &ACTIONS);
        let channel = one_of("channel", &CHANNELS);
        let signal = match body.get("signal") {
            None | Some(Value::Null) => {
                v.fail_required("signal");
                None
            }
            Some(value) => match responses::number(value) {
                Some(n) if n == 1.0 || n == 0.0 || n == -1.0 => Some(n as i8),
                _ => {
                    v.fail_selected("signal");
                    None
                }
            },
        };
        let name = v.required_string(body, "name");
        let namespace = v.required_string(body, "namespace");
        let interacted_at = optional_datetime(&mut v, body, "interacted_at");
        let (profile_id, action, channel, signal, name, namespace) = v.finish_with((|| {
            Some((profile_id?, action?, channel?, signal?, name?, namespace?))
        })())?;
        let now = responses::now();
        let interaction = Interaction {
            id: self.next_id(),
            profile_id,
            action,
            channel,
            signal,
            name,
            namespace,
            interacted_at: interacted_at.unwrap_or_else(|| now.clone()),
            meta: optional(body, "meta"),
            created_at: now,
        };
        self.interactions.push(interaction.clone());
        Ok(interaction)
    }

    /// Issues a reward; the profile's `reward_balance` grows by its remaining value.
    pub(crate) fn issue_reward(&mut self, new: NewReward) -> Result<Reward, ApiError> {
        self.record(&new.profile_id)
            .map_err(|_| ApiError::invalid("profile_id", "The selected profile id is invalid."))?;
        let reward = Reward {
            id: self.next_id(),
            profile_id: new.profile_id,
            reward_definition_id: new.reward_definition_id,
            value_initial: new.value_initial,
            value_remaining: new.value_remaining,
            expires_at: new.expires_at.as_deref().and_then(parse_datetime),
            external_id: new.external_id,
            meta: new.meta,
            region_id: new.region_id,
            created_at: responses::now(),
        };
        self.record_mut(&reward.profile_id)?.profile.reward_balance += reward.value_remaining;
        self.rewards.push(reward.clone());
        Ok(reward)
    }

    /// Issues a benefit.
    pub(crate) fn issue_benefit(&mut self, new: NewBenefit) -> Result<Benefit, ApiError> {
        self.record(&new.profile_id)
            .map_err(|_| ApiError::invalid("profile_id", "The selected profile id is invalid."))?;
        let now = responses::now();
        let benefit = Benefit {
            id: self.next_id(),
            profile_id: new.profile_id,
            benefit_definition_id: new.benefit_definition_id,
            issued_at: new
                .issued_at
                .as_deref()
                .and_then(parse_datetime)
                .unwrap_or_else(|| now.clone()),
            expires_at: new.expires_at.as_deref().and_then(parse_datetime),
            external_id: new.external_id,
            meta: new.meta,
            created_at: now,
        };
        self.benefits.push(benefit.clone());
        Ok(benefit)
    }
}

/// Validates a `POST /rewards` body.
fn new_reward(body: &Map<String, Value>) -> Result<NewReward, ApiError> {
    let mut v = Validator::default();
    let profile_id = v.required_string(body, "profile_id");
    let definition = required_id(&mut v, body, "reward_definition_id");
    let initial = v.required_number(body, "value_initial");
    let remaining = v.required_number(body, "value_remaining");
    let expires_at = optional_datetime(&mut v, body, "expires_at");
    let external_id = optional_text(&mut v, body, "external_id");
    let (profile_id, reward_definition_id, value_initial, value_remaining) =
        v.finish_with((|| Some((profile_id?, definition?, initial?, remaining?)))())?;
    Ok(NewReward {
        profile_id,
        reward_definition_id,
        value_initial,
        value_remaining,
        expires_at,
        external_id,
        meta: optional(body, "meta"),
        region_id: optional(body, "region_id"),
    })
}

/// Validates a `POST /benefits` body.
fn new_benefit(body: &Map<String, Value>) -> Result<NewBenefit, ApiError> {
    let mut v = Validator::default();
    let profile_id = v.required_string(body, "profile_id");
    let definition = required_id(&mut v, body, "benefit_definition_id");
    let issued_at = optional_datetime(&mut v, body, "issued_at");
    let expires_at = optional_datetime(&mut v, body, "expires_at");
    let external_id = optional_text(&mut v, body, "external_id");
    let (profile_id, benefit_definition_id) = v.finish_with(profile_id.zip(definition))?;
    Ok(NewBenefit {
        profile_id,
        benefit_definition_id,
        issued_at,
        expires_at,
        external_id,
        meta: optional(body, "meta"),
    })
}

/// `POST /interactions` → 201.
pub(crate) async fn create_interaction(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let interaction = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        Ok((t.create_interaction(&body)?, None))
    })?;
    Ok(created(interaction))
}

/// `POST /rewards` → 201.
pub(crate) async fn create_reward(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new = new_reward(&json_object(&body)?)?;
    let reward = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        Ok((t.issue_reward(new)?, None))
    })?;
    Ok(created(reward))
}

/// `POST /benefits` → 201.
pub(crate) async fn create_benefit(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new = new_benefit(&json_object(&body)?)?;
    let benefit = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        Ok((t.issue_benefit(new)?, None))
    })?;
    Ok(created(benefit))
}
