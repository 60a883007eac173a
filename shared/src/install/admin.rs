//! Who may call the admin API (product.md §2, Auth).
//!
//! *Operator*: `Authorization: Bearer $OPERATOR_TOKEN` (the platform team). *Admin*: the bearer is
//! the tenant's admin key, stored only as its SHA-256; the operator token is accepted too. The
//! credential is checked before the tenant lookup can show anything: an unauthenticated caller gets
//! 401 whether or not the tenant exists, and only an authenticated one learns 404. Comparisons are
//! constant-time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::SecretString;

use crate::api_error::ApiError;
use crate::app::App;
use crate::crypto::{constant_time_eq, digest_hex};
use crate::domain::TenantId;
use crate::store::Tenant;

/// An authenticated admin call on a registered tenant (route param `{tenant}`).
#[derive(Debug)]
pub struct AdminTenant {
    /// The tenant record.
    pub tenant: Tenant,
    /// Whether the caller used the operator token (else the tenant's admin key).
    pub by_operator: bool,
}

/// An authenticated operator call that names no tenant (e.g. key rotation).
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<Arc<App>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        if is_operator(app, &bearer(parts)?) {
            Ok(Self)
        } else {
            Err(unauthorized())
        }
    }
}

/// An authenticated operator call on a tenant id that may not be registered yet.
#[derive(Debug)]
pub struct OperatorTenant {
    /// The tenant id from the path.
    pub tenant: TenantId,
}

impl FromRequestParts<Arc<App>> for AdminTenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = bearer(parts)?;
        let by_operator = is_operator(app, &bearer);
        let id = match tenant_param(parts, app).await {
            Ok(id) => id,
            Err(error) if by_operator => return Err(error),
            Err(_) => return Err(unauthorized()),
        };
        let tenant = app.store.tenant(&id).await?;
        match tenant {
            Some(tenant) if by_operator || admin_key_matches(&tenant, &bearer) => Ok(Self {
                tenant,
                by_operator,
            }),
            None if by_operator => Err(ApiError::not_found(format!(
                "tenant {id} is not registered"
            ))),
            _ => Err(unauthorized()),
        }
    }
}

impl FromRequestParts<Arc<App>> for OperatorTenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = bearer(parts)?;
        if !is_operator(app, &bearer) {
            return Err(unauthorized());
        }
        Ok(Self {
            tenant: tenant_param(parts, app).await?,
        })
    }
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized("missing or invalid bearer credentials")
}

/// The bearer credential of the request; missing or malformed → 401.
fn bearer(parts: &Parts) -> Result<SecretString, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthorized());
    }
    Ok(SecretString::from(token.to_owned()))
}

fn is_operator(app: &App, bearer: &SecretString) -> bool {
    constant_time_eq(
        digest_hex(bearer).as_bytes(),
        digest_hex(&app.config.operator_token).as_bytes(),
    )
}

fn admin_key_matches(tenant: &Tenant, bearer: &SecretString) -> bool {
    constant_time_eq(
        digest_hex(bearer).as_bytes(),
        tenant.admin_key_hash.as_bytes(),
    )
}

/// The `{tenant}` route parameter, parsed; a malformed id → 400 naming `tenant`.
async fn tenant_param(parts: &mut Parts, app: &Arc<App>) -> Result<TenantId, ApiError> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, app)
        .await
        .map_err(|_| ApiError::invalid_field("tenant", "the path has no tenant id"))?;
    let raw = params
        .get("tenant")
        .ok_or_else(|| ApiError::invalid_field("tenant", "the path has no tenant id"))?;
    TenantId::parse(raw.as_str()).map_err(|e| ApiError::invalid_field("tenant", e.to_string()))
}
