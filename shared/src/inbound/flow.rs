//! *Flow action*: a Klaviyo Flow webhook's reward, benefit or interaction (product.md §7.3).
//!
//! The call is matched to an Omneo profile by `person_id` (the Klaviyo identity), then `email`;
//! no match is a failure record (the action cannot be done, and an operator can replay it once
//! the profile exists). The action is then done **once per delivery**, however often Klaviyo
//! retries (up to 17 times over 24 h) or Cloud Tasks redelivers: it is claimed in the store under
//! the caller's `idempotency_key` (remembered [`KEY_RETAIN`]) or, without one, the body's hash
//! (remembered [`BODY_HASH_RETAIN`], product.md §7.3), and marked done once Omneo made it.
//! Rewards and benefits also carry that key as their `external_id`, and an attempt first looks
//! for one already issued under it — so even an attempt whose answer was lost (Omneo issued, the
//! reply timed out) is not issued twice.

use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::job::{Job, omneo_setback};
use crate::omneo::models::{
    InteractionProfile, NewBenefit, NewInteraction, NewReward, OmneoTime, Profile as OmneoProfile,
};
use crate::queue::{DefinitionId, FlowAction, FlowDedupe, FlowRequest};
use crate::store::IdempotencyKey;
use crate::worker::Setback;

/// How long a call with an `idempotency_key` is remembered.
pub const KEY_RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a call without one is remembered by its body's hash (product.md §7.3: 24 h).
pub const BODY_HASH_RETAIN: Duration = Duration::from_secs(24 * 3600);

/// Does the Flow action once (see the module docs).
pub async fn flow_action(job: &Job<'_>, work: &FlowAction) -> Result<(), Setback> {
    let action = work.request.path_name();
    let key = IdempotencyKey::new(
        &job.tenant.id,
        "flow",
        &[action, dedupe_kind(&work.dedupe), work.dedupe.as_str()],
    );
    let retain = match work.dedupe {
        FlowDedupe::Key(_) => KEY_RETAIN,
        FlowDedupe::BodyHash(_) => BODY_HASH_RETAIN,
    };
    let external_id = format!(
        "klaviyo-flow-{}",
        &hex::encode(Sha256::digest(key.as_str()))[..32]
    );
    let done = job
        .once(key, retain, "claim_action", async {
            let profile = job
                .omneo_profile_of(
                    work.klaviyo_profile_id.as_ref().map(|id| id.as_str()),
                    work.email.as_deref(),
                )
                .await?
                .ok_or_else(|| {
                    Setback::give_up(
                        "find_profile",
                        "no Omneo profile holds this person_id as its Klaviyo identity, or this email",
                    )
                })?;
            perform(job, &profile, &work.request, &external_id).await
        })
        .await?;
    if done.is_none() {
        tracing::info!(
            action,
            "this Flow webhook call was done before; nothing to do"
        );
    }
    Ok(())
}

fn dedupe_kind(dedupe: &FlowDedupe) -> &'static str {
    match dedupe {
        FlowDedupe::Key(_) => "key",
        FlowDedupe::BodyHash(_) => "body",
    }
}

/// An Omneo definition id as Omneo takes it.
fn definition(id: &DefinitionId) -> serde_json::Value {
    match id {
        DefinitionId::Number(number) => (*number).into(),
        DefinitionId::Text(text) => text.as_str().into(),
    }
}

/// Issues the reward or benefit (unless one with `external_id` exists), or records the
/// interaction.
async fn perform(
    job: &Job<'_>,
    profile: &OmneoProfile,
    request: &FlowRequest,
    external_id: &str,
) -> Result<(), Setback> {
    let omneo = &job.omneo;
    match request {
        FlowRequest::Reward(reward) => {
            if omneo
                .has_reward(&profile.id, external_id)
                .await
                .map_err(omneo_setback("find_reward"))?
            {
                return Ok(());
            }
            let new = NewReward {
                profile_id: profile.id.clone(),
                reward_definition_id: definition(&reward.reward_definition_id),
                value_initial: reward.amount,
                value_remaining: reward.amount,
                expires_at: reward.expires_at.map(OmneoTime),
                external_id: Some(external_id.to_owned()),
                meta: reward.meta.clone().map(Into::into),
                region_id: job
                    .tenant
                    .settings
                    .default_region
                    .as_deref()
                    .map(Into::into),
            };
            omneo
                .create_reward(&new)
                .await
                .map(drop)
                .map_err(omneo_setback("issue_reward"))
        }
        FlowRequest::Benefit(benefit) => {
            if omneo
                .has_benefit(&profile.id, external_id)
                .await
                .map_err(omneo_setback("find_benefit"))?
            {
                return Ok(());
            }
            let new = NewBenefit {
                profile_id: profile.id.clone(),
                benefit_definition_id: definition(&benefit.benefit_definition_id),
                issued_at: None,
                expires_at: benefit.expires_at.map(OmneoTime),
                external_id: Some(external_id.to_owned()),
                meta: benefit.meta.clone().map(Into::into),
            };
            omneo
                .create_benefit(&new)
                .await
                .map(drop)
                .map_err(omneo_setback("issue_benefit"))
        }
        FlowRequest::Interaction(interaction) => {
            let new = NewInteraction {
                profile: InteractionProfile::ProfileId(profile.id.clone()),
                action: interaction.action,
                channel: interaction.channel,
                signal: interaction.signal,
                name: interaction.name.clone(),
                namespace: job.tenant.settings.namespace.clone(),
                interacted_at: interaction.interacted_at.map(OmneoTime),
                meta: interaction.meta.clone().map(Into::into),
            };
            omneo
                .create_interaction(&new)
                .await
                .map(drop)
                .map_err(omneo_setback("record_interaction"))
        }
    }
}
