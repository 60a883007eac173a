//! `PUT /{tenant}/api/v1/tenant` (operator): registers a tenant or updates it (product.md §2).
//!
//! Creating needs the Omneo API token and signing secret; it generates the tenant's
//! `webhook_secret` and an admin key, which is returned once (`201 {"tenant", "admin_key"}`) and
//! stored only as its hash. Updating replaces what the body names (`200 {"tenant"}`), and
//! `"rotate_admin_key": true` issues a new key (`200 {"tenant", "admin_key"}`). Secrets are sealed
//! before they reach the store; nothing is stored when any field is invalid. `omneo_api_url` must be
//! https (http only to a loopback address, for local runs and tests). The tenant's queue names are
//! reserved for it on registration, and follow the settings API's rules on updates
//! ([`super::settings_api`]: valid, free, and fixed while installed).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::put;
use axum::{Json, Router};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::OperatorTenant;
use super::settings_api::check_queue_settings;
use crate::api_error::ApiError;
use crate::app::App;
use crate::crypto::{digest_hex, random_secret};
use crate::domain::TenantId;
use crate::omneo::check_base_url;
use crate::settings::Settings;
use crate::store::{StoreError, Tenant, TenantSecret};

/// The route this module serves.
pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/{tenant}/api/v1/tenant", put(put_tenant))
}

/// The request body of `PUT /{tenant}/api/v1/tenant`. Its secrets are [`SecretString`]s, so
/// formatting it (`{:?}`) never shows them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The Omneo API token (required to create).
    pub omneo_api_token: Option<SecretString>,
    /// The key of Omneo's webhook signatures (required to create).
    pub omneo_signing_secret: Option<SecretString>,
    /// The Omneo API base URL (default: from `OMNEO_API_URL_TEMPLATE`).
    pub omneo_api_url: Option<String>,
    /// Settings (product.md §4); replaces the stored ones when given.
    pub settings: Option<Value>,
    /// Issue a new admin key (updates only).
    #[serde(default)]
    pub rotate_admin_key: bool,
}

/// What a registration did.
#[derive(Debug)]
pub struct Registered {
    /// A new tenant (else an update).
    pub created: bool,
    /// The admin key, when one was issued (creation or rotation): shown once, stored hashed.
    pub admin_key: Option<SecretString>,
}

/// What the body asks to change, validated and with secrets sealed.
struct Changes {
    omneo_api_token: Option<SecretString>,
    omneo_signing_secret: Option<SecretString>,
    omneo_api_url: Option<String>,
    settings: Option<Settings>,
}

async fn put_tenant(
    State(app): State<Arc<App>>,
    OperatorTenant { tenant }: OperatorTenant,
    body: Result<Json<Registration>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let registered = register(&app, &tenant, body).await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = match registered.admin_key {
        Some(key) => json!({"tenant": tenant, "admin_key": key.expose_secret()}),
        None => json!({"tenant": tenant}),
    };
    Ok((status, Json(body)))
}

/// Registers `tenant`, or updates it when it exists; validates everything before storing anything.
pub async fn register(
    app: &App,
    tenant: &TenantId,
    body: Registration,
) -> Result<Registered, ApiError> {
    let changes = validate(&body)?;
    let keyring = &app.config.keyring;
    let now = Timestamp::now();

    let existing = app.store.tenant(tenant).await?;
    // The fields a new tenant needs, before anything (a queue name reservation) is written.
    let new_secrets = match &existing {
        Some(_) => None,
        None => Some((
            changes
                .omneo_api_token
                .as_ref()
                .ok_or_else(|| required("omneo_api_token"))?,
            changes
                .omneo_signing_secret
                .as_ref()
                .ok_or_else(|| required("omneo_signing_secret"))?,
        )),
    };
    if let Some(settings) = &changes.settings {
        let current = existing.as_ref().map(|t| &t.settings);
        check_queue_settings(app, tenant, current, settings, "settings.").await?;
    } else if existing.is_none() {
        check_queue_settings(app, tenant, None, &Settings::default(), "settings.").await?;
    }
    if let Some((token, secret)) = new_secrets {
        let admin_key = random_secret(32);
        let record = Tenant {
            id: tenant.clone(),
            omneo_api_url: changes
                .omneo_api_url
                .clone()
                .unwrap_or_else(|| app.config.omneo_api_url(tenant)),
            omneo_api_token: TenantSecret::OmneoApiToken.seal(keyring, tenant, token),
            omneo_signing_secret: TenantSecret::OmneoSigningSecret.seal(keyring, tenant, secret),
            webhook_secret: TenantSecret::WebhookSecret.seal(keyring, tenant, &random_secret(32)),
            previous_webhook_secret: None,
            webhook_secret_pending_since: None,
            admin_key_hash: digest_hex(&admin_key),
            settings: changes.settings.clone().unwrap_or_default(),
            created_at: now,
            updated_at: now,
        };
        match app.store.create_tenant(&record).await {
            Ok(()) => {
                tracing::info!(%tenant, "tenant registered");
                return Ok(Registered {
                    created: true,
                    admin_key: Some(admin_key),
                });
            }
            // Registered concurrently: fall through and apply this call as an update.
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }

    let admin_key = body.rotate_admin_key.then(|| random_secret(32));
    let sealed_token = changes
        .omneo_api_token
        .as_ref()
        .map(|t| TenantSecret::OmneoApiToken.seal(keyring, tenant, t));
    let sealed_secret = changes
        .omneo_signing_secret
        .as_ref()
        .map(|s| TenantSecret::OmneoSigningSecret.seal(keyring, tenant, s));
    let admin_key_hash = admin_key.as_ref().map(digest_hex);
    app.store
        .update_tenant_or(tenant, |current| {
            let mut record = current.ok_or(())?;
            if let Some(token) = &sealed_token {
                record.omneo_api_token = token.clone();
            }
            if let Some(secret) = &sealed_secret {
                record.omneo_signing_secret = secret.clone();
            }
            if let Some(url) = &changes.omneo_api_url {
                record.omneo_api_url = url.clone();
            }
            if let Some(settings) = &changes.settings {
                record.settings = settings.clone();
            }
            if let Some(hash) = &admin_key_hash {
                record.admin_key_hash = hash.clone();
            }
            record.updated_at = now;
            Ok(record)
        })
        .await?
        .map_err(|()| ApiError::internal(&StoreError::Aborted))?;
    tracing::info!(%tenant, rotated_admin_key = admin_key.is_some(), "tenant updated");
    Ok(Registered {
        created: false,
        admin_key,
    })
}

fn required(field: &str) -> ApiError {
    ApiError::invalid_field(field, format!("{field} is required to register a tenant"))
}

/// Checks every field before anything is stored.
fn validate(body: &Registration) -> Result<Changes, ApiError> {
    let secret =
        |field: &str, value: &Option<SecretString>| -> Result<Option<SecretString>, ApiError> {
            match value.as_ref().map(|v| v.expose_secret().trim()) {
                None => Ok(None),
                Some("") => Err(ApiError::invalid_field(
                    field,
                    format!("{field} must not be empty"),
                )),
                Some(v) => Ok(Some(SecretString::from(v.to_owned()))),
            }
        };
    let omneo_api_url = match &body.omneo_api_url {
        None => None,
        Some(raw) => {
            let url = url::Url::parse(raw)
                .ok()
                .filter(|u| check_base_url(u).is_ok())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "omneo_api_url",
                        "must be an https URL (http only to a loopback address)",
                    )
                })?;
            Some(url.as_str().trim_end_matches('/').to_owned())
        }
    };
    let settings = match &body.settings {
        None => None,
        Some(raw) => Some(
            Settings::from_json(raw)
                .map_err(|e| ApiError::invalid_field(format!("settings.{}", e.field), e.message))?,
        ),
    };
    Ok(Changes {
        omneo_api_token: secret("omneo_api_token", &body.omneo_api_token)?,
        omneo_signing_secret: secret("omneo_signing_secret", &body.omneo_signing_secret)?,
        omneo_api_url,
        settings,
    })
}
