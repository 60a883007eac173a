//! Step `omneo_webhooks`: the tenant's three Omneo webhooks (product.md §5.4), reused by
//! (namespace, trigger), created disabled; `is_active` is never touched.
//!
//! Omneo keeps (trigger, URL) unique across namespaces. A webhook of ours left in another
//! namespace — the tenant changed `namespace` while uninstalled — is moved into the current one
//! rather than duplicated (which Omneo would refuse).

use std::collections::BTreeMap;

use url::Url;

use super::Run;
use crate::config::{Config, join};
use crate::domain::TenantId;
use crate::install::failure::StepFailure;
use crate::omneo::models as omneo;

/// The Omneo webhook triggers the extension subscribes to.
pub const OMNEO_TRIGGERS: [&str; 3] = ["profile.created", "profile.updated", "profile.deleted"];

/// Where Omneo delivers the tenant's profile webhooks.
pub fn omneo_webhook_url(config: &Config, tenant: &TenantId) -> Url {
    join(
        &config.urls.omneo_webhook,
        &format!("/{tenant}/api/v1/webhooks/omneo"),
    )
}

/// Reuses the Omneo webhooks by (namespace, trigger), fixing URLs; creates missing ones
/// disabled; ids by trigger.
pub(super) async fn ensure(run: &Run<'_>) -> Result<BTreeMap<String, String>, StepFailure> {
    let (app, tenant) = (run.app, run.tenant);
    let client = app.omneo(run.record)?;
    let namespace = run.record.settings.namespace.as_str();
    let url = omneo_webhook_url(&app.config, tenant).to_string();
    let existing = client.webhooks(namespace).await?;
    let mut ids = BTreeMap::new();
    for trigger in OMNEO_TRIGGERS {
        let mut candidates: Vec<&omneo::Webhook> = existing
            .iter()
            .filter(|w| w.trigger == trigger)
            .filter(|w| w.namespace.as_deref().is_none_or(|ns| ns == namespace))
            .collect();
        // Prefer one that already points at us (a pair Omneo keeps unique).
        candidates.sort_by_key(|w| w.url != url);
        let id = match candidates.first() {
            Some(found) if found.url == url => found.id.clone(),
            Some(found) => {
                let update = omneo::WebhookUpdate {
                    url: Some(url.clone()),
                    ..omneo::WebhookUpdate::default()
                };
                client.update_webhook(&found.id, &update).await?;
                tracing::info!(%tenant, trigger, webhook = %found.id, "fixed the URL of an Omneo webhook");
                found.id.clone()
            }
            None => {
                let elsewhere = client
                    .webhooks_with_trigger(trigger)
                    .await?
                    .into_iter()
                    .find(|w| w.url == url);
                if let Some(moved) = elsewhere {
                    let update = omneo::WebhookUpdate {
                        namespace: Some(namespace.to_owned()),
                        ..omneo::WebhookUpdate::default()
                    };
                    client.update_webhook(&moved.id, &update).await?;
                    tracing::info!(%tenant, trigger, webhook = %moved.id, "moved an Omneo webhook of ours into the tenant's namespace");
                    ids.insert(trigger.to_owned(), moved.id);
                    continue;
                }
                let created = client
                    .create_webhook(&omneo::NewWebhook {
                        trigger: trigger.to_owned(),
                        url: url.clone(),
                        namespace: namespace.to_owned(),
                        is_active: false,
                    })
                    .await?;
                tracing::info!(%tenant, trigger, webhook = %created.id, "created a disabled Omneo webhook");
                created.id
            }
        };
        ids.insert(trigger.to_owned(), id);
    }
    Ok(ids)
}
