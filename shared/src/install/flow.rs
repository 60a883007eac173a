//! The install flow (product.md §5.1–§5.3): `POST /{tenant}/api/v1/install/link` (admin) issues a
//! signed link; `GET /oauth/install` turns a valid link into a 302 to Klaviyo's consent page
//! (fresh 256-bit `state`, PKCE S256); `GET /oauth/callback` consumes the state once, exchanges the
//! code, binds the Klaviyo account to the tenant, stores the tokens sealed, moves the install to
//! `provisioning` and provisions.
//!
//! **The `state`** is 256 random bits, base64url (43 characters). The callback accepts only that
//! shape before it touches the store; the store keeps only its SHA-256 (the document id of
//! `oauth_states`), so the store never holds a value that would complete an install. Klaviyo's
//! `error_description` is shown only when the callback consumed a real state: a forged redirect
//! cannot put its own text on our page.
//!
//! A browser sees only [`pages`]: every failure answers a page saying what happened and what to
//! do; the details go to the log (never a token, a code or a state value). Nothing is written
//! before the code exchange, the account lookup and the binding have all succeeded, so every
//! refusal leaves the install as it was. Tokens obtained for an install that is then refused are
//! revoked (best effort), so no unused grant is left in the customer's Klaviyo account.
//!
//! One Klaviyo account serves one tenant: a second tenant authorizing an account bound to another
//! gets a 409 page that names neither the other tenant nor anything about it (the person
//! installing belongs to this tenant); the log names both tenants for support.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::admin::AdminTenant;
use super::pages::{self, Page};
use super::{link, provision};
use crate::access::tokens;
use crate::app::App;
use crate::crypto::random_secret;
use crate::domain::TenantId;
use crate::klaviyo::oauth::{OAuthError, TokenGrant, new_pkce_verifier};
use crate::store::{Install, InstallStatus, OAuthState, OAuthTokens, TokenSecret};

/// How long an OAuth `state` waits for its callback.
pub const STATE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Bytes of randomness in a `state` (256 bits).
const STATE_BYTES: usize = 32;

/// The length of a `state` as we generate it: 32 bytes in unpadded base64url.
const STATE_LENGTH: usize = 43;

/// Whether `state` has the shape of one we generate (checked before the store is touched).
fn well_formed_state(state: &str) -> bool {
    state.len() == STATE_LENGTH
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The longest `error` / `error_description` echoed on a page (characters).
const ECHO_LIMIT: usize = 300;

/// The routes of this module.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/{tenant}/api/v1/install/link", post(issue_link))
        .route("/oauth/install", get(install))
        .route("/oauth/callback", get(callback))
}

/// `POST /{tenant}/api/v1/install/link` → `200 {"url", "expires_at"}`.
async fn issue_link(State(app): State<Arc<App>>, admin: AdminTenant) -> Json<Value> {
    let tenant = &admin.tenant.id;
    let link = link::issue(&app.config.keyring, tenant, Timestamp::now());
    let url = link.url(&app.config.urls.oauth_callback, tenant);
    tracing::info!(%tenant, expires_at = %link.expires_at, "issued an install link");
    Json(json!({ "url": url.as_str(), "expires_at": link.expires_at.to_string() }))
}

/// `GET /oauth/install?tenant=T&link=L`: a valid link → 302 to Klaviyo's authorize URL.
async fn install(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let params = query_params(query.as_deref());
    let (Some(raw_tenant), Some(token)) = (params.get("tenant"), params.get("link")) else {
        return pages::start_from_cx_manager().into_response();
    };
    let Ok(tenant) = TenantId::parse(raw_tenant.as_str()) else {
        tracing::info!("install link refused: malformed tenant id");
        return pages::link_invalid().into_response();
    };
    let now = Timestamp::now();
    if let Err(error) = link::verify(&app.config.keyring, &tenant, token, now) {
        tracing::info!(%tenant, %error, "install link refused");
        return pages::link_invalid().into_response();
    }
    match app.store.tenant(&tenant).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(%tenant, "install link for a tenant that is not registered");
            return pages::link_invalid().into_response();
        }
        Err(error) => {
            tracing::error!(%tenant, error = %error, "cannot read the tenant for an install");
            return pages::our_side_unavailable().into_response();
        }
    }
    let state = random_secret(STATE_BYTES);
    let verifier = new_pkce_verifier();
    let state_hash = OAuthState::hash(&state);
    let pending = OAuthState {
        pkce_verifier: app
            .config
            .keyring
            .seal(&verifier, &OAuthState::verifier_at(&state_hash)),
        state_hash,
        tenant: tenant.clone(),
        expires_at: now + SignedDuration::from_secs(STATE_LIFETIME.as_secs() as i64),
    };
    if let Err(error) = app.store.put_oauth_state(&pending).await {
        tracing::error!(%tenant, error = %error, "cannot store the OAuth state");
        return pages::our_side_unavailable().into_response();
    }
    let authorize = app.oauth.authorize_url(state.expose_secret(), &verifier);
    tracing::info!(%tenant, "install started: redirecting to Klaviyo");
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    match HeaderValue::from_str(authorize.as_str()) {
        Ok(location) => headers.insert(header::LOCATION, location),
        Err(_) => return pages::app_rejected().into_response(),
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /oauth/callback?code&state` or `?error&error_description&state`.
async fn callback(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Page {
    let params = query_params(query.as_deref());
    if let Some(error) = params.get("error") {
        return refused_by_klaviyo(&app, &params, error).await;
    }
    let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
        tracing::info!("OAuth callback without code or state");
        return pages::state_invalid();
    };
    if !well_formed_state(state) {
        tracing::info!("OAuth callback with a malformed state");
        return pages::state_invalid();
    }
    let state = SecretString::from(state.clone());
    let pending = match app.store.take_oauth_state(&OAuthState::hash(&state)).await {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            tracing::info!("OAuth callback with an unknown, expired or used state");
            return pages::state_invalid();
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot consume the OAuth state");
            return pages::our_side_unavailable();
        }
    };
    let tenant = pending.tenant.clone();
    match authorize(&app, &pending, code).await {
        Ok(()) => {}
        Err(page) => return page,
    }
    // Spawned, so a browser that gives up waiting does not abandon provisioning half-way.
    let run = {
        let (app, tenant) = (app.clone(), tenant.clone());
        tokio::spawn(async move { provision::provision(&app, &tenant).await })
    };
    match run.await {
        Ok(Ok(_)) => {
            tracing::info!(%tenant, "install complete");
            pages::installed()
        }
        Ok(Err(error)) => {
            tracing::warn!(%tenant, step = %error.step(), error = %crate::api_error::ErrorChain(&error), "provisioning stopped");
            pages::provisioning_failed(error.step().as_str())
        }
        Err(panicked) => {
            tracing::error!(%tenant, error = %panicked, "provisioning panicked");
            pages::our_side_unavailable()
        }
    }
}

/// Klaviyo redirected back with `error`: the state (if any) is consumed, nothing else changes.
/// Klaviyo's `error_description` is shown (and logged) only when a real state was consumed.
async fn refused_by_klaviyo(app: &App, params: &HashMap<String, String>, error: &str) -> Page {
    let state = params
        .get("state")
        .filter(|state| well_formed_state(state))
        .map(|state| SecretString::from(state.clone()));
    let tenant = match state {
        Some(state) => match app.store.take_oauth_state(&OAuthState::hash(&state)).await {
            Ok(pending) => pending.map(|p| p.tenant),
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume the OAuth state of a refused install");
                None
            }
        },
        None => None,
    };
    let error = truncate(error);
    if error == "access_denied" {
        let tenant = tenant.as_ref().map_or("unknown", TenantId::as_str);
        tracing::info!(%tenant, "install cancelled in Klaviyo");
        return pages::install_cancelled();
    }
    let Some(tenant) = tenant else {
        tracing::info!(%error, "an OAuth error redirect without a live state");
        return pages::authorization_error(&error, None);
    };
    let description = params.get("error_description").map(|d| truncate(d));
    tracing::warn!(%tenant, %error, description = description.as_deref().unwrap_or(""), "Klaviyo refused the authorization");
    pages::authorization_error(&error, description.as_deref())
}

/// Exchanges the code, binds the account and stores the tokens (status `provisioning`). Every
/// refusal before the final write leaves the store as it was.
async fn authorize(app: &App, pending: &OAuthState, code: &str) -> Result<(), Page> {
    let tenant = &pending.tenant;
    let verifier = pending
        .open_verifier(&app.config.keyring)
        .map_err(|error| {
            tracing::error!(%tenant, %error, "cannot open the sealed PKCE verifier");
            pages::our_side_unavailable()
        })?;
    let grant = app
        .oauth
        .exchange_code(code, &verifier)
        .await
        .map_err(|error| {
            match &error {
                OAuthError::InvalidGrant(_) => {
                    tracing::warn!(%tenant, %error, "Klaviyo refused the authorization code")
                }
                OAuthError::Rejected { .. } => {
                    tracing::error!(%tenant, %error, "Klaviyo rejected the code exchange")
                }
                OAuthError::Unavailable { .. } => {
                    tracing::warn!(%tenant, %error, "the code exchange failed")
                }
            }
            match error {
                OAuthError::InvalidGrant(_) => pages::code_refused(),
                OAuthError::Rejected { .. } => pages::app_rejected(),
                OAuthError::Unavailable { .. } => pages::klaviyo_unavailable(),
            }
        })?;
    let Some(refresh_token) = grant.refresh_token.clone() else {
        tracing::error!(%tenant, "Klaviyo's token response had no refresh token");
        return Err(pages::klaviyo_unavailable());
    };
    let result = bind_and_store(app, tenant, &grant, &refresh_token).await;
    if result.is_err() {
        // The tokens will not be used: do not leave a live grant behind in the customer's account.
        if let Err(error) = app.oauth.revoke(&refresh_token).await {
            tracing::warn!(%tenant, %error, "could not revoke the tokens of a refused install");
        }
    }
    result
}

async fn bind_and_store(
    app: &App,
    tenant: &TenantId,
    grant: &TokenGrant,
    refresh_token: &SecretString,
) -> Result<(), Page> {
    let account = app
        .klaviyo
        .account_id(&grant.access_token)
        .await
        .map_err(|error| {
            tracing::warn!(%tenant, error = %error, "cannot read the Klaviyo account id");
            pages::klaviyo_unavailable()
        })?;
    let owner = app
        .store
        .bind_klaviyo_account(&account, tenant)
        .await
        .map_err(|error| {
            tracing::error!(%tenant, error = %error, "cannot bind the Klaviyo account");
            pages::our_side_unavailable()
        })?;
    if &owner != tenant {
        tracing::warn!(%tenant, klaviyo_account = %account, bound_to = %owner,
            "refused: the Klaviyo account is already bound to another tenant");
        return Err(pages::account_taken());
    }
    let previous_account = app
        .store
        .install(tenant)
        .await
        .ok()
        .flatten()
        .and_then(|install| install.klaviyo_account_id);

    let now = Timestamp::now();
    let keyring = &app.config.keyring;
    let sealed = OAuthTokens {
        access_token: TokenSecret::AccessToken.seal(keyring, tenant, &grant.access_token),
        refresh_token: TokenSecret::RefreshToken.seal(keyring, tenant, refresh_token),
        expires_at: tokens::expiry(now, grant.expires_in),
        scopes: grant.scopes.clone(),
        last_refreshed_at: None,
    };
    let owned_tenant = tenant.clone();
    let owned_account = account.clone();
    let mutate = move |current: Option<Install>| {
        let mut install = current.unwrap_or_else(|| Install::pending(owned_tenant.clone(), now));
        install.klaviyo_account_id = Some(owned_account.clone());
        install.tokens = Some(sealed.clone());
        install.refresh_lease = None;
        install.transition(
            InstallStatus::Provisioning,
            Some("authorized in Klaviyo".to_owned()),
            now,
        );
        Ok(install)
    };
    app.store
        .update_install(tenant, &mutate)
        .await
        .map_err(|error| {
            tracing::error!(%tenant, error = %error, "cannot store the Klaviyo tokens");
            pages::our_side_unavailable()
        })?;
    tracing::info!(%tenant, klaviyo_account = %account, "Klaviyo authorized; provisioning");

    // The tenant moved to another Klaviyo account: free the old one for whoever owns it next.
    if let Some(old) = previous_account.filter(|old| old != &account)
        && let Err(error) = app.store.unbind_klaviyo_account(&old, tenant).await
    {
        tracing::warn!(%tenant, klaviyo_account = %old, error = %error, "cannot unbind the previous Klaviyo account");
    }
    Ok(())
}

/// The query parameters, first occurrence winning; empty values count as absent.
fn query_params(query: Option<&str>) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !value.is_empty() {
            params
                .entry(name.into_owned())
                .or_insert_with(|| value.into_owned());
        }
    }
    params
}

/// At most [`ECHO_LIMIT`] characters of text echoed from the query.
fn truncate(text: &str) -> String {
    text.chars().take(ECHO_LIMIT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode_keep_the_first_and_drop_empty_values() {
        let params = query_params(Some("state=a%20b&state=second&code=&error=x%3Cy"));
        assert_eq!(params.get("state").map(String::as_str), Some("a b"));
        assert_eq!(params.get("code"), None);
        assert_eq!(params.get("error").map(String::as_str), Some("x<y"));
        assert!(query_params(None).is_empty());
    }

    #[test]
    fn only_states_of_our_shape_are_accepted() {
        let ours = random_secret(STATE_BYTES);
        assert!(well_formed_state(ours.expose_secret()));
        for bad in [
            "",
            "short",
            &"a".repeat(42),
            &"a".repeat(44),
            &format!("{}/", "a".repeat(42)),
            &format!("{}=", "a".repeat(42)),
        ] {
            assert!(!well_formed_state(bad), "{bad:?}");
        }
    }

    #[test]
    fn echoed_text_is_bounded() {
        assert_eq!(truncate(&"é".repeat(1000)).chars().count(), ECHO_LIMIT);
        assert_eq!(truncate("short"), "short");
    }
}
