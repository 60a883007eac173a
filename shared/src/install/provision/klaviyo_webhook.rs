//! Step `klaviyo_webhook`: the tenant's one Klaviyo system webhook (product.md §5.4), found by name
//! (Klaviyo masks URLs) and patched, or created.

use secrecy::ExposeSecret;
use url::Url;

use super::Run;
use crate::access::{KlaviyoCallError, Pacer, RateClass, TokenProvider, klaviyo_call};
use crate::config::{Config, join};
use crate::crypto::constant_time_eq;
use crate::domain::{KlaviyoTopic, TenantId};
use crate::install::failure::StepFailure;
use crate::klaviyo::KlaviyoClient;
use crate::klaviyo::models::{NewWebhook, WebhookUpdate};
use crate::store::{Tenant, TenantSecret};

/// The topics of the Klaviyo system webhook (klaviyo.md §System webhooks): exactly the topics the
/// inbound worker maps to Omneo comms (product.md §7.2), [`KlaviyoTopic::ALL`] — bounce
/// (`bounced_email`, `failed_to_deliver_sms`), spam, subscribe/unsubscribe for email, SMS and
/// lists, and manual suppression/unsuppression. `event:klaviyo.dropped_email` is left out on
/// purpose: a dropped email is Klaviyo skipping a send to an address it already suppresses, not a
/// new fact about the customer, and §7.2 gives it no mapping.
pub fn system_webhook_topics() -> Vec<String> {
    KlaviyoTopic::ALL
        .iter()
        .map(|topic| topic.id().to_owned())
        .collect()
}

/// The name of the tenant's Klaviyo system webhook (how it is found again: URLs are masked).
pub fn klaviyo_webhook_name(tenant: &TenantId) -> String {
    format!("Omneo {tenant}")
}

/// Where Klaviyo delivers the tenant's system webhooks.
pub fn klaviyo_webhook_url(config: &Config, tenant: &TenantId) -> Url {
    join(
        &config.urls.klaviyo_webhook,
        &format!("/{tenant}/api/v1/webhooks/klaviyo/system"),
    )
}

/// Finds the system webhook by name and updates it, or creates it; its id. Once Klaviyo holds
/// the tenant's current `webhook_secret`, a pending secret change is marked confirmed.
pub(super) async fn ensure(run: &Run<'_>) -> Result<String, StepFailure> {
    let (app, tenant) = (run.app, run.tenant);
    let name = klaviyo_webhook_name(tenant);
    let endpoint_url = klaviyo_webhook_url(&app.config, tenant);
    let secret_key = run
        .record
        .open(&app.config.keyring, TenantSecret::WebhookSecret)
        .map_err(StepFailure::Sealed)?;
    let sent = secret_key.clone();
    let topics = system_webhook_topics();
    let mut ours = find_klaviyo_webhooks(&app.tokens, &app.klaviyo, tenant, &run.pacer)
        .await?
        .into_iter();
    let id = match ours.next() {
        None => {
            let webhook = NewWebhook {
                name,
                endpoint_url,
                secret_key,
                description: Some(format!(
                    "Omneo ⇄ Klaviyo extension: consent and bounce events for tenant {tenant}"
                )),
                topics,
            };
            let created = run
                .klaviyo(RateClass::Webhooks, |k, t| {
                    let webhook = webhook.clone();
                    async move { k.create_webhook(&t, &webhook).await }
                })
                .await?;
            tracing::info!(%tenant, webhook = %created.id, "created the Klaviyo system webhook");
            created.id
        }
        Some(id) => {
            for extra in ours {
                run.klaviyo(RateClass::Webhooks, |k, t| {
                    let extra = extra.clone();
                    async move { k.delete_webhook(&t, &extra).await }
                })
                .await?;
                tracing::warn!(%tenant, webhook = extra, "deleted a duplicate Klaviyo system webhook");
            }
            let update = WebhookUpdate {
                endpoint_url: Some(endpoint_url),
                secret_key: Some(secret_key),
                topics: Some(topics),
                ..WebhookUpdate::default()
            };
            run.klaviyo(RateClass::Webhooks, |k, t| {
                let (id, update) = (id.clone(), update.clone());
                async move { k.update_webhook(&t, &id, &update).await }
            })
            .await?;
            tracing::info!(%tenant, webhook = %id, "updated the existing Klaviyo system webhook");
            id
        }
    };
    if run.record.webhook_secret_pending_since.is_some() {
        confirm_webhook_secret(run.app, tenant, &sent).await?;
    }
    Ok(id)
}

/// Clears a pending `webhook_secret` change once Klaviyo holds `sent`, if that is still the
/// tenant's secret (a newer change stays pending).
pub(crate) async fn confirm_webhook_secret(
    app: &crate::app::App,
    tenant: &TenantId,
    sent: &secrecy::SecretString,
) -> Result<(), crate::store::StoreError> {
    let keyring = &app.config.keyring;
    let now = jiff::Timestamp::now();
    let confirmed = app
        .store
        .update_tenant_or(tenant, |current| {
            let mut record: Tenant = current.ok_or(())?;
            let current = record
                .open(keyring, TenantSecret::WebhookSecret)
                .map_err(drop)?;
            if record.webhook_secret_pending_since.is_none()
                || !constant_time_eq(
                    current.expose_secret().as_bytes(),
                    sent.expose_secret().as_bytes(),
                )
            {
                return Err(());
            }
            record.confirm_webhook_secret(now);
            Ok(record)
        })
        .await?;
    if confirmed.is_ok() {
        tracing::info!(%tenant, "the new webhook_secret is confirmed at Klaviyo");
    }
    Ok(())
}

/// The ids of the Klaviyo webhooks named `Omneo {tenant}` (normally one).
pub(crate) async fn find_klaviyo_webhooks(
    tokens: &TokenProvider,
    client: &KlaviyoClient,
    tenant: &TenantId,
    pacer: &Pacer,
) -> Result<Vec<String>, KlaviyoCallError> {
    let name = klaviyo_webhook_name(tenant);
    let webhooks = klaviyo_call(
        tokens,
        client,
        tenant,
        (pacer, RateClass::Webhooks),
        |k, t| async move { k.webhooks(&t).await },
    )
    .await?;
    Ok(webhooks
        .into_iter()
        .filter(|w| w.attributes.name == name)
        .map(|w| w.id)
        .collect())
}
