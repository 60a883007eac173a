//! The targets' work (product.md §6.5): a Klaviyo event from the `metric` target, and a record
//! from the `data-source-record` target.

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::job::{Job, klaviyo_setback, omneo_setback};
use crate::queue::{DataSourceRecord, SendMetric};
use crate::worker::Setback;

/// Records the event (its `unique_id` was fixed by the receiver, so a repeat is one event). With
/// `withToken`, the Omneo profile is resolved (identity, then email), an Omneo ID token minted for
/// it and added to the event properties as `omneo_id_token` / `omneo_id_token_expires_at`.
pub async fn send_metric(job: &Job<'_>, work: &SendMetric) -> Result<(), Setback> {
    let mut event = work.event.clone();
    if work.with_token {
        add_id_token(job, &mut event).await?;
    }
    job.klaviyo(|k, t| {
        let event = event.clone();
        async move { k.create_event_document(&t, &event).await }
    })
    .await
    .map_err(klaviyo_setback("create_event"))
}

async fn add_id_token(job: &Job<'_>, event: &mut Value) -> Result<(), Setback> {
    let text = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|text| !text.trim().is_empty())
            .map(str::to_owned)
    };
    let klaviyo_id = text("/data/attributes/profile/data/id");
    let email = text("/data/attributes/profile/data/attributes/email");
    let profile = job
        .omneo_profile_of(klaviyo_id.as_deref(), email.as_deref())
        .await?;
    let profile = profile.ok_or_else(|| {
        Setback::give_up(
            "resolve_profile",
            "no Omneo profile holds this event's Klaviyo identity or email; no ID token can be minted",
        )
    })?;
    let token = job
        .omneo
        .mint_id_token(profile.id.as_str(), None)
        .await
        .map_err(omneo_setback("mint_id_token"))?;
    let attributes = event
        .pointer_mut("/data/attributes")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Setback::give_up("add_id_token", "the event has no attributes"))?;
    let properties = attributes.entry("properties").or_insert_with(|| json!({}));
    if !properties.is_object() {
        *properties = json!({});
    }
    properties["omneo_id_token"] = json!(token.token.expose_secret());
    properties["omneo_id_token_expires_at"] = json!(token.expires_at.to_string());
    Ok(())
}

/// Writes the record to its data source (the id provisioning stored for the title).
pub async fn data_source_record(job: &Job<'_>, work: &DataSourceRecord) -> Result<(), Setback> {
    let title = work.data_source.title();
    let id = job
        .install
        .resources
        .data_sources
        .get(title)
        .cloned()
        .ok_or_else(|| {
            Setback::give_up(
                "find_data_source",
                format!("the data source {title:?} was not provisioned; reprovision the install"),
            )
        })?;
    job.klaviyo(|k, t| {
        let id = id.clone();
        let record = work.record.clone();
        async move { k.create_data_source_record(&t, &id, &record).await }
    })
    .await
    .map_err(klaviyo_setback("create_record"))
}
