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
//! - **Changing `webhook_secret`** first sets the Klaviyo system webhook's `secret_key` (when the
//!   install has one); if Klaviyo cannot be updated the answer is 502/503 and nothing is stored.
//!   When the tenant has no usable tokens, or the webhook is gone (404), only the stored secret
//!   changes: (re)provisioning writes `secret_key` from it. The old secret is kept in
//!   [`Tenant::previous_webhook_secret`] for [`PREVIOUS_SECRET_GRACE`] so deliveries in flight
//!   are still accepted.
//! - **Concurrent writes (ours).** A write applies only if the tenant record is unchanged since it
//!   was read; otherwise 409 `conflict` and nothing stored — the caller reads again and retries.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use super::admin::AdminTenant;
use super::tokens::{KlaviyoCallError, TokenError};
use crate::api_error::ApiError;
use crate::app::App;
use crate::crypto::{Keyring, constant_time_eq};
use crate::klaviyo::models::WebhookUpdate;
use crate::remote::Disposition;
use crate::settings::Settings;
use crate::store::{Abort, InstallStatus, RetiredSecret, StoreError, Tenant};

/// How long a replaced `webhook_secret` is still accepted (product.md §4).
pub const PREVIOUS_SECRET_GRACE: Duration = Duration::from_secs(10 * 60);

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
fn view(keyring: &Keyring, tenant: &Tenant) -> Result<Value, ApiError> {
    let mut object = stored_form(&tenant.settings)?;
    object.insert(
        "exclude_logic".into(),
        tenant.settings.exclude_logic_value().unwrap_or(Value::Null),
    );
    for (field, sealed) in [
        ("webhook_secret", &tenant.webhook_secret),
        ("omneo_signing_secret", &tenant.omneo_signing_secret),
    ] {
        let secret = keyring.open(sealed).map_err(|e| ApiError::internal(&e))?;
        object.insert(field.into(), Value::String(mask(&secret)));
    }
    Ok(Value::Object(object))
}

/// The settings as serialized for storage (`exclude_logic` as JSON text).
fn stored_form(settings: &Settings) -> Result<Map<String, Value>, ApiError> {
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
            "invalid_body",
            "the settings must be a JSON object",
        ));
    };
    let keyring = &app.config.keyring;
    let secrets = SecretChange {
        webhook_secret: take_secret(
            &mut body,
            "webhook_secret",
            keyring,
            &current.webhook_secret,
        )?,
        omneo_signing_secret: take_secret(
            &mut body,
            "omneo_signing_secret",
            keyring,
            &current.omneo_signing_secret,
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
    if let Some(secret) = &secrets.webhook_secret {
        update_klaviyo_webhook_secret(app, &current, secret).await?;
    }

    let now = Timestamp::now();
    let previous = secrets.webhook_secret.as_ref().map(|_| RetiredSecret {
        secret: current.webhook_secret.clone(),
        accepted_until: now + grace(),
    });
    let webhook_secret = secrets.webhook_secret.as_ref().map(|s| keyring.seal(s));
    let signing_secret = secrets
        .omneo_signing_secret
        .as_ref()
        .map(|s| keyring.seal(s));
    let read_at = current.updated_at;
    let stored = app
        .store
        .update_tenant(&current.id, &|record| {
            let mut record = record.ok_or_else(|| Abort(CHANGED.into()))?;
            if record.updated_at != read_at {
                return Err(Abort(CHANGED.into()));
            }
            record.settings = settings.clone();
            if let Some(sealed) = &webhook_secret {
                record.webhook_secret = sealed.clone();
                record.previous_webhook_secret = previous.clone();
            }
            if let Some(sealed) = &signing_secret {
                record.omneo_signing_secret = sealed.clone();
            }
            record.updated_at = now;
            Ok(record)
        })
        .await
        .map_err(|error| match error {
            StoreError::Aborted(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the settings changed while this request was processed; read them again and retry",
            ),
            other => other.into(),
        })?;
    tracing::info!(
        tenant = %current.id,
        webhook_secret_changed = secrets.webhook_secret.is_some(),
        omneo_signing_secret_changed = secrets.omneo_signing_secret.is_some(),
        "tenant settings updated"
    );
    Ok(Json(view(keyring, &stored)?))
}

const CHANGED: &str = "the tenant changed since it was read";

fn grace() -> SignedDuration {
    SignedDuration::try_from(PREVIOUS_SECRET_GRACE).unwrap_or(SignedDuration::from_mins(10))
}

/// Removes `field` from the body and returns the new secret it names: `None` when absent, masked
/// as the current one, or equal to it. `null`, non-strings, other masked values and malformed
/// secrets → 400.
fn take_secret(
    body: &mut Map<String, Value>,
    field: &'static str,
    keyring: &Keyring,
    current: &crate::crypto::Sealed,
) -> Result<Option<SecretString>, ApiError> {
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
    let current = keyring.open(current).map_err(|e| ApiError::internal(&e))?;
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
    check_secret_shape(field, &value)?;
    Ok(Some(value))
}

/// `webhook_secret` travels in an HTTP header (`x-omneo-secret`) and is Klaviyo's HMAC key: 16 to
/// 255 visible ASCII characters. `omneo_signing_secret` is Omneo's: anything non-blank up to 1024.
fn check_secret_shape(field: &'static str, secret: &SecretString) -> Result<(), ApiError> {
    let value = secret.expose_secret();
    let valid = match field {
        "webhook_secret" => {
            (16..=255).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
        }
        _ => !value.trim().is_empty() && value.len() <= 1024,
    };
    if valid {
        Ok(())
    } else if field == "webhook_secret" {
        Err(ApiError::invalid_field(
            field,
            "webhook_secret must be 16 to 255 visible ASCII characters (no spaces)",
        ))
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("{field} must be 1 to 1024 characters and not blank"),
        ))
    }
}

/// RFC 7396 merge patch of `patch` onto `target`, except that `exclude_logic` is replaced whole.
fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
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

/// Sets the Klaviyo system webhook's `secret_key` to the new secret, when there is a webhook to
/// update and tokens to do it with.
async fn update_klaviyo_webhook_secret(
    app: &App,
    tenant: &Tenant,
    secret: &SecretString,
) -> Result<(), ApiError> {
    let install = app.store.install(&tenant.id).await?;
    let Some(install) = install.filter(|i| i.status != InstallStatus::Uninstalled) else {
        return Ok(());
    };
    let Some(webhook_id) = install.resources.klaviyo_webhook_id.as_deref() else {
        return Ok(());
    };
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
        Err(error) => Err(klaviyo_failure(&error)),
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
                "klaviyo_error",
                "Klaviyo refused the request; nothing was changed",
            )
        }
        Disposition::Retryable | Disposition::RetryAfter(_) => ApiError::unavailable(error),
    }
}
