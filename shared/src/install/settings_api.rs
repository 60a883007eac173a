//! `GET`, `PUT`, `PATCH /{tenant}/api/v1/settings` (admin; product.md §2, §4).
//!
//! The settings object is [`Settings`] plus the two secrets, `webhook_secret` and
//! `omneo_signing_secret`, which live sealed on the tenant record. `exclude_logic` is shown as the
//! JSON Logic expression itself (stored as JSON text); on input either form is accepted.
//!
//! - **Masking (ours).** A secret is never shown: `GET` (and every write's answer) gives
//!   [`MASK`] followed by the secret's last four characters when it has at least 16, else
//!   [`MASK`] alone. Sending the masked value back means "unchanged", so a `GET` → edit → `PUT`
//!   round trip does not clobber the secrets; any other value containing [`MASK`] is refused.
//! - **`PUT` replaces** the settings (fields left out take their defaults), **`PATCH` merges** the
//!   body onto the current settings as a JSON merge patch (RFC 7396; `null` restores a field's
//!   default). Two exceptions to a literal merge: `exclude_logic` is an expression, so a patched
//!   one replaces the old one whole, and the secrets change only when named — by either method —
//!   and cannot be removed.
//! - **Validation** happens before anything is stored, and a bad value answers 400 naming the
//!   field relative to the settings object (`mappings[1].target`, `exclude_logic`, …):
//!   [`Settings::from_json`] (unknown fields, slugs, ranges, mapping targets, ISO country, JSON
//!   Logic), the secrets' shapes, and — when `master_list_id` changes to a new id — that the list
//!   exists in the tenant's Klaviyo account. An id that cannot be checked because the tenant has no
//!   usable Klaviyo tokens (not installed yet, or reauthorization required) is refused too (ours:
//!   set it after installing); an unchanged id is not checked again.
//! - **The queue settings** (`namespace`, `task_queue_name`) name the tenant's queues
//!   ([`TenantQueues`]) and its Omneo webhooks' namespace. They must give valid names that no other
//!   tenant holds (the names are reserved for the tenant as they are set; 409 naming the field when
//!   taken), and they are **fixed while the tenant is installed** (409 naming the field: uninstall,
//!   change, install again): the queues, the Omneo webhooks and the tasks already queued were made
//!   with the old ones, so a change would strand work and leave receivers enqueueing on queues
//!   that do not exist. Receivers enqueue on the queues the install recorded
//!   ([`crate::store::Install::queue`]), never on names recomputed from settings. (The install is
//!   read before the tenant is written — two documents, no shared transaction — so a first
//!   install that lands in that instant is provisioned with the settings it read; the install's
//!   recorded queues stay the receivers' truth, and a reprovision aligns the rest.)
//! - **Changing `webhook_secret`** is a compare-and-set on the tenant first: the new secret is
//!   stored, the old one kept in [`Tenant::previous_webhook_secret`], and the change recorded as
//!   pending ([`Tenant::webhook_secret_pending_since`]). Then the Klaviyo system webhook's
//!   `secret_key` is set (when the install has one) and the change confirmed; from then the old
//!   secret is accepted for [`Tenant::PREVIOUS_WEBHOOK_SECRET_GRACE`]. If Klaviyo cannot be updated
//!   the answer is 502/503 saying the change is stored but not yet at Klaviyo: the old secret stays
//!   accepted while the change is pending, and the next settings write or a reprovision pushes it
//!   again. So the store and Klaviyo can never disagree without the store knowing it. When the
//!   tenant has no usable tokens, or the webhook is gone (404), (re)provisioning writes
//!   `secret_key` from the stored secret and confirms it.
//! - **Concurrent writes (ours).** A write applies only if the tenant record is unchanged since it
//!   was read; otherwise 409 `conflict` and nothing stored — the caller reads again and retries.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use super::admin::AdminTenant;
use super::failure::StepFailure;
use super::provision::klaviyo_webhook::confirm_webhook_secret;
use super::provision::queues::reserve;
use crate::access::{KlaviyoCallError, TokenError};
use crate::api_error::{ApiError, ErrorCode};
use crate::app::App;
use crate::crypto::constant_time_eq;
use crate::domain::TenantId;
use crate::klaviyo::models::WebhookUpdate;
use crate::queue::TenantQueues;
use crate::remote::Disposition;
use crate::settings::Settings;
use crate::store::{InstallStatus, Tenant, TenantSecret};

/// What a masked secret starts with (never part of a valid secret).
pub const MASK: &str = "••••";

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/{tenant}/api/v1/settings",
        get(show).put(replace).patch(merge),
    )
}

/// A secret as shown: [`MASK`] plus its last four characters when it has at least 16.
pub fn mask(secret: &SecretString) -> String {
    let chars: Vec<char> = secret.expose_secret().chars().collect();
    if chars.len() >= 16 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{MASK}{tail}")
    } else {
        MASK.to_owned()
    }
}

async fn show(
    State(app): State<Arc<App>>,
    AdminTenant { tenant, .. }: AdminTenant,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&app.config.keyring, &tenant)?))
}

async fn replace(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    write(&app, admin.tenant, body, Method::Replace).await
}

async fn merge(
    State(app): State<Arc<App>>,
    admin: AdminTenant,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    write(&app, admin.tenant, body, Method::Merge).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Replace,
    Merge,
}

/// The settings object as the API shows it: secrets masked, `exclude_logic` as JSON.
fn view(keyring: &crate::crypto::Keyring, tenant: &Tenant) -> Result<Value, ApiError> {
    let mut object = stored_form(&tenant.settings)?;
    object.insert(
        "exclude_logic".into(),
        tenant.settings.exclude_logic_value().unwrap_or(Value::Null),
    );
    for which in [
        TenantSecret::WebhookSecret,
        TenantSecret::OmneoSigningSecret,
    ] {
        let secret = tenant
            .open(keyring, which)
            .map_err(|e| ApiError::internal(&e))?;
        object.insert(which.field().into(), Value::String(mask(&secret)));
    }
    Ok(Value::Object(object))
}

/// The settings as serialized for storage (`exclude_logic` as JSON text).
pub fn stored_form(settings: &Settings) -> Result<Map<String, Value>, ApiError> {
    let value = serde_json::to_value(settings).map_err(|e| ApiError::internal(&e))?;
    let Value::Object(object) = value else {
        unreachable!("Settings is a struct and serializes as a JSON object");
    };
    Ok(object)
}

/// A secret the body asks to change: the new value, or `None` when it is unchanged.
struct SecretChange {
    webhook_secret: Option<SecretString>,
    omneo_signing_secret: Option<SecretString>,
}

async fn write(
    app: &App,
    current: Tenant,
    body: Value,
    method: Method,
) -> Result<Json<Value>, ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidBody,
            "the settings must be a JSON object",
        ));
    };
    let keyring = &app.config.keyring;
    let secrets = SecretChange {
        webhook_secret: take_secret(&mut body, app, &current, TenantSecret::WebhookSecret)?,
        omneo_signing_secret: take_secret(
            &mut body,
            app,
            &current,
            TenantSecret::OmneoSigningSecret,
        )?,
    };
    let document = match method {
        Method::Replace => body,
        Method::Merge => {
            let mut document = stored_form(&current.settings)?;
            merge_patch(&mut document, body);
            document
        }
    };
    let settings = Settings::from_json(&Value::Object(document))
        .map_err(|e| ApiError::invalid_field(e.field, e.message))?;

    if let Some(id) = settings
        .master_list_id
        .as_deref()
        .filter(|id| current.settings.master_list_id.as_deref() != Some(*id))
    {
        check_master_list(app, &current, id).await?;
    }
    check_queue_settings(app, &current.id, Some(&current.settings), &settings, "").await?;

    let now = Timestamp::now();
    let read_at = current.updated_at;
    let stored = app
        .store
        .update_tenant_or(&current.id, |record| {
            let mut record = record.ok_or(Changed)?;
            if record.updated_at != read_at {
                return Err(Changed);
            }
            record.settings = settings.clone();
            if let Some(secret) = &secrets.webhook_secret {
                record
                    .rotate_webhook_secret(keyring, secret, now)
                    .map_err(|_| Changed)?;
            }
            if let Some(secret) = &secrets.omneo_signing_secret {
                record.omneo_signing_secret =
                    TenantSecret::OmneoSigningSecret.seal(keyring, &record.id, secret);
            }
            record.updated_at = now;
            Ok(record)
        })
        .await?
        .map_err(|Changed| {
            ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "the settings changed while this request was processed; read them again and retry",
            )
        })?;
    tracing::info!(
        tenant = %current.id,
        webhook_secret_changed = secrets.webhook_secret.is_some(),
        omneo_signing_secret_changed = secrets.omneo_signing_secret.is_some(),
        "tenant settings updated"
    );
    if stored.webhook_secret_pending_since.is_some() {
        push_webhook_secret(app, &stored).await?;
    }
    let stored = app.store.tenant(&current.id).await?.unwrap_or(stored);
    Ok(Json(view(keyring, &stored)?))
}

/// The tenant record changed since it was read.
struct Changed;

/// Checks the settings that name the tenant's queues (`namespace`, `task_queue_name`; see the
/// module docs): they give valid names, and when they change, the tenant is not installed and the
/// new names are free — they are reserved for the tenant here. `current` is `None` for a tenant
/// being registered; `prefix` goes before field names (`settings.` for registration).
pub(crate) async fn check_queue_settings(
    app: &App,
    tenant: &TenantId,
    current: Option<&Settings>,
    new: &Settings,
    prefix: &str,
) -> Result<(), ApiError> {
    let queues = TenantQueues::of(tenant, new)
        .map_err(|e| ApiError::invalid_field(format!("{prefix}{}", e.field), e.message))?;
    let changed_field = match current {
        None => Some("task_queue_name"),
        Some(current) if current.namespace != new.namespace => Some("namespace"),
        Some(current) if current.task_queue_name != new.task_queue_name => Some("task_queue_name"),
        Some(_) => None,
    };
    let Some(field) = changed_field else {
        return Ok(());
    };
    let field = format!("{prefix}{field}");
    if current.is_some() {
        let status = app.store.install(tenant).await?.map(|i| i.status);
        if status.is_some_and(|s| !matches!(s, InstallStatus::Pending | InstallStatus::Uninstalled))
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "namespace and task_queue_name are fixed while the tenant is installed (its queues \
                 and Omneo webhooks were made with them): uninstall, change them, then install again",
            )
            .with_field(field));
        }
    }
    match reserve(app.store.as_ref(), tenant, &queues).await {
        Ok(()) => Ok(()),
        Err(StepFailure::QueueTaken { name, .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("the queue name {name} belongs to another tenant; choose another {field}"),
        )
        .with_field(field)),
        Err(StepFailure::Store(error)) => Err(error.into()),
        Err(other) => Err(ApiError::internal(&other)),
    }
}

/// Removes `field` from the body and returns the new secret it names: `None` when absent, masked
/// as the current one, or equal to it. `null`, non-strings, other masked values and malformed
/// secrets → 400.
fn take_secret(
    body: &mut Map<String, Value>,
    app: &App,
    tenant: &Tenant,
    which: TenantSecret,
) -> Result<Option<SecretString>, ApiError> {
    let field = which.field();
    let Some(value) = body.remove(field) else {
        return Ok(None);
    };
    let Value::String(value) = value else {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be a string (it cannot be removed)"),
        ));
    };
    let value = SecretString::from(value);
    let current = tenant
        .open(&app.config.keyring, which)
        .map_err(|e| ApiError::internal(&e))?;
    if value.expose_secret() == mask(&current)
        || constant_time_eq(
            value.expose_secret().as_bytes(),
            current.expose_secret().as_bytes(),
        )
    {
        return Ok(None);
    }
    if value.expose_secret().contains(MASK) {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "{field} is a masked value that is not the current secret's mask; send the new secret or leave the field out"
            ),
        ));
    }
    check_secret_shape(which, &value)?;
    Ok(Some(value))
}

/// `webhook_secret` travels in an HTTP header (`x-omneo-secret`) and is Klaviyo's HMAC key: 16 to
/// 255 visible ASCII characters. `omneo_signing_secret` is Omneo's: anything non-blank up to 1024.
fn check_secret_shape(which: TenantSecret, secret: &SecretString) -> Result<(), ApiError> {
    let value = secret.expose_secret();
    let (valid, rule) = match which {
        TenantSecret::WebhookSecret => (
            (16..=255).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()),
            "16 to 255 visible ASCII characters (no spaces)",
        ),
        _ => (
            !value.trim().is_empty() && value.len() <= 1024,
            "1 to 1024 characters and not blank",
        ),
    };
    if valid {
        Ok(())
    } else {
        let field = which.field();
        Err(ApiError::invalid_field(
            field,
            format!("{field} must be {rule}"),
        ))
    }
}

/// RFC 7396 merge patch of `patch` onto `target`, except that `exclude_logic` is replaced whole.
pub fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) if key != "exclude_logic" => {
                let slot = target
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    merge_patch(slot, inner);
                }
            }
            other => {
                target.insert(key, other);
            }
        }
    }
}

/// The new `master_list_id` must name a list of the tenant's Klaviyo account.
async fn check_master_list(app: &App, tenant: &Tenant, id: &str) -> Result<(), ApiError> {
    let found = app
        .tokens
        .call(&tenant.id, |token| async move {
            app.klaviyo.list(&token, id).await
        })
        .await;
    match found {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::invalid_field(
            "master_list_id",
            format!("Klaviyo has no list {id} in the tenant's account"),
        )),
        Err(KlaviyoCallError::Token(TokenError::NotInstalled(_))) => Err(ApiError::invalid_field(
            "master_list_id",
            "the list cannot be checked before the tenant has installed the Klaviyo app; set it after installing",
        )),
        Err(KlaviyoCallError::Token(TokenError::ReauthorizationRequired(_))) => {
            Err(ApiError::invalid_field(
                "master_list_id",
                "the list cannot be checked while the Klaviyo app needs reauthorization; install again first",
            ))
        }
        Err(error) => Err(klaviyo_failure(&error)),
    }
}

/// Sets the Klaviyo system webhook's `secret_key` to the tenant's stored `webhook_secret` and
/// confirms the pending change — when there is a webhook to update and tokens to do it with (else
/// provisioning does both). A Klaviyo failure answers 502/503 saying the change is stored and
/// pending.
async fn push_webhook_secret(app: &App, tenant: &Tenant) -> Result<(), ApiError> {
    let install = app.store.install(&tenant.id).await?;
    let Some(install) = install.filter(|i| i.status != InstallStatus::Uninstalled) else {
        return Ok(());
    };
    let Some(webhook_id) = install.resources.klaviyo_webhook_id.as_deref() else {
        return Ok(());
    };
    let secret = tenant
        .open(&app.config.keyring, TenantSecret::WebhookSecret)
        .map_err(|e| ApiError::internal(&e))?;
    let update = WebhookUpdate {
        secret_key: Some(secret.clone()),
        ..WebhookUpdate::default()
    };
    let updated = app
        .tokens
        .call(&tenant.id, |token| {
            let update = &update;
            async move { app.klaviyo.update_webhook(&token, webhook_id, update).await }
        })
        .await;
    match updated {
        Ok(_) => {
            tracing::info!(tenant = %tenant.id, webhook_id, "Klaviyo system webhook secret_key updated");
            confirm_webhook_secret(app, &tenant.id, &secret).await?;
            Ok(())
        }
        Err(KlaviyoCallError::Token(
            TokenError::NotInstalled(_) | TokenError::ReauthorizationRequired(_),
        )) => {
            tracing::warn!(tenant = %tenant.id, webhook_id, "no usable Klaviyo token: the webhook's secret_key is written at the next (re)provisioning");
            Ok(())
        }
        Err(KlaviyoCallError::Remote(error)) if error.status() == Some(StatusCode::NOT_FOUND) => {
            tracing::warn!(tenant = %tenant.id, webhook_id, "the Klaviyo system webhook is gone: reprovisioning recreates it with the new secret");
            Ok(())
        }
        Err(error) => {
            let mut failure = klaviyo_failure(&error);
            failure.message = "the settings are stored, but Klaviyo's webhook secret_key could \
                not be updated yet; the previous webhook_secret stays accepted until it is — send \
                the settings again or reprovision to retry"
                .into();
            Err(failure)
        }
    }
}

/// A Klaviyo call that failed in a way the caller cannot fix: 503 when a retry may help, 502 when
/// Klaviyo refused. The cause is logged; the answer carries no internals.
fn klaviyo_failure(error: &KlaviyoCallError) -> ApiError {
    match error.disposition() {
        Disposition::Permanent | Disposition::Reauthorize => {
            tracing::error!(error = %crate::api_error::ErrorChain(error), "Klaviyo refused a settings call");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::KlaviyoError,
                "Klaviyo refused the request; nothing was changed",
            )
        }
        Disposition::Retryable | Disposition::RetryAfter(_) => ApiError::unavailable(error),
    }
}
