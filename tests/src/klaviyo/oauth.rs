//! OAuth 2.0 with PKCE as Klaviyo runs it: the authorize page, the token endpoint (Basic client
//! auth, `authorization_code` with an S256 `code_verifier`, `refresh_token` with configurable
//! rotation) and revocation. Errors are 400 `{"error","error_description"}`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::jsonapi::Params;
use super::state::{Ctx, random_alphanumeric};
use super::{KlaviyoSimOptions, SCOPES};

/// How long an authorization code may wait before being exchanged.
const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// What the token endpoint answers on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    /// The Bearer token for `/api/…`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The refresh token (the same one again when rotation is off).
    pub refresh_token: String,
    /// Space-separated granted scopes.
    pub scope: String,
}

/// How many tokens the simulator handed out and took back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Token sets issued for an authorization code (or [`super::KlaviyoSim::grant_tokens`]).
    pub issued: u32,
    /// Successful refreshes.
    pub refreshed: u32,
    /// Tokens revoked (through `/oauth/revoke` or [`super::KlaviyoSim::revoke_all`]).
    pub revoked: u32,
}

struct PendingCode {
    redirect_uri: String,
    challenge: String,
    /// What the code grants: the scopes asked for, bar the withheld ones.
    scope: String,
    expires_at: Instant,
    used: bool,
}

/// One authorization of the app by the account (what a refresh token stands for).
struct Grant {
    scope: String,
    refresh_token: String,
    revoked: bool,
}

struct AccessToken {
    grant: usize,
    expires_at: Instant,
}

/// Codes, grants and tokens.
pub(crate) struct OAuthState {
    codes: HashMap<String, PendingCode>,
    grants: Vec<Grant>,
    access: HashMap<String, AccessToken>,
    lifetime: Duration,
    /// The counters reported by [`super::KlaviyoSim::token_counts`].
    pub counts: TokenCounts,
}

impl OAuthState {
    pub fn new(options: &KlaviyoSimOptions) -> Self {
        Self {
            codes: HashMap::new(),
            grants: Vec::new(),
            access: HashMap::new(),
            lifetime: options.access_token_lifetime,
            counts: TokenCounts::default(),
        }
    }

    fn new_grant(&mut self, scope: String) -> TokenSet {
        self.grants.push(Grant {
            scope,
            refresh_token: random_alphanumeric(48),
            revoked: false,
        });
        self.counts.issued += 1;
        self.issue_access(self.grants.len() - 1)
    }

    fn issue_access(&mut self, grant: usize) -> TokenSet {
        let access_token = random_alphanumeric(48);
        self.access.insert(
            access_token.clone(),
            AccessToken {
                grant,
                expires_at: Instant::now() + self.lifetime,
            },
        );
        TokenSet {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.lifetime.as_secs(),
            refresh_token: self.grants[grant].refresh_token.clone(),
            scope: self.grants[grant].scope.clone(),
        }
    }

    /// Issues a token set with every scope but the `withheld` ones, as if the OAuth dance had
    /// happened.
    pub fn grant_direct(&mut self, withheld: &[String]) -> TokenSet {
        self.new_grant(granted(&SCOPES.join(" "), withheld))
    }

    /// The granted scopes of a live access token.
    pub fn authenticate(&self, access_token: &str) -> Option<&str> {
        let token = self.access.get(access_token)?;
        let grant = &self.grants[token.grant];
        (token.expires_at > Instant::now() && !grant.revoked).then_some(grant.scope.as_str())
    }

    pub fn revoke_all(&mut self) {
        for grant in self.grants.iter_mut().filter(|g| !g.revoked) {
            grant.revoked = true;
            self.counts.revoked += 1;
        }
    }

    pub fn expire_access_tokens(&mut self) {
        let now = Instant::now();
        for token in self.access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    /// How many grants are not revoked.
    pub fn live_grants(&self) -> usize {
        self.grants.iter().filter(|g| !g.revoked).count()
    }

    /// Whether a refresh token still stands for a live grant.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.live_grant(refresh_token).is_some()
    }

    fn live_grant(&self, refresh_token: &str) -> Option<usize> {
        self.grants
            .iter()
            .position(|g| !g.revoked && g.refresh_token == refresh_token)
    }
}

/// The space-separated scopes of `requested` that are not `withheld`.
fn granted(requested: &str, withheld: &[String]) -> String {
    requested
        .split(' ')
        .filter(|scope| !withheld.iter().any(|w| w == scope))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The OAuth routes.
pub(crate) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .with_state(ctx)
}

// ---- authorize ----

/// Why an authorize request cannot even be redirected back.
fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><title>Klaviyo (simulator)</title><h1>Authorization error</h1><p>{}</p>",
        html_escape(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    match url::Url::parse(redirect_uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            Redirect::to(url.as_str()).into_response()
        }
        Err(_) => error_page("The redirect_uri is not a URL."),
    }
}

/// Whether a PKCE verifier is 43–128 characters of `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
pub fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// base64url(SHA-256(verifier)), unpadded.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

async fn authorize(State(ctx): State<Ctx>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let params = Params::parse(&query);
    let get = |name: &str| params.get(name).unwrap_or_default();
    let (client_ok, redirect_ok) = {
        let state = ctx.lock();
        (
            get("client_id") == state.options.client_id,
            state.options.redirect_uris.accepts(get("redirect_uri")),
        )
    };
    if !client_ok {
        return error_page("Unknown client_id.");
    }
    if !redirect_ok {
        return error_page("The redirect_uri is not registered for this app.");
    }
    let redirect_uri = get("redirect_uri");
    let state_param = get("state");
    let fail = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if !state_param.is_empty() {
            pairs.push(("state", state_param));
        }
        redirect_with(redirect_uri, &pairs)
    };
    if get("response_type") != "code" {
        return fail("unsupported_response_type", "response_type must be code");
    }
    if state_param.is_empty() {
        return fail("invalid_request", "state is required");
    }
    if get("code_challenge_method") != "S256" {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let challenge = get("code_challenge");
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return fail(
            "invalid_request",
            "code_challenge must be base64url(SHA-256(verifier))",
        );
    }
    let scope = get("scope");
    if scope.split(' ').all(str::is_empty) || !scope.split(' ').all(|s| SCOPES.contains(&s)) {
        return fail("invalid_scope", "unknown or empty scope");
    }
    match params.get("approve") {
        Some("true") => {
            let code = random_alphanumeric(40);
            let mut state = ctx.lock();
            let scope = granted(scope, &state.options.withheld_scopes);
            state.oauth.codes.insert(
                code.clone(),
                PendingCode {
                    redirect_uri: redirect_uri.into(),
                    challenge: challenge.into(),
                    scope,
                    expires_at: Instant::now() + CODE_LIFETIME,
                    used: false,
                },
            );
            redirect_with(redirect_uri, &[("code", &code), ("state", state_param)])
        }
        Some(_) => fail("access_denied", "The user denied the request"),
        None => consent_page(&query, scope),
    }
}

/// The page a human sees in `make dev`: the scopes and two buttons.
fn consent_page(query: &str, scope: &str) -> Response {
    let allow = html_escape(&format!("/oauth/authorize?{query}&approve=true"));
    let deny = html_escape(&format!("/oauth/authorize?{query}&approve=false"));
    let scopes: String = scope
        .split(' ')
        .map(|s| format!("<li><code>{}</code></li>", html_escape(s)))
        .collect();
    Html(format!(
        "<!doctype html><html><head><title>Klaviyo (simulator) — authorize</title></head><body>\
         <h1>Allow this app to access your Klaviyo account?</h1><ul>{scopes}</ul>\
         <p><a id=\"allow\" href=\"{allow}\">Allow</a> · <a id=\"deny\" href=\"{deny}\">Deny</a></p>\
         </body></html>"
    ))
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// GETs `authorize_url` with `approve=true|false` and returns the `Location` it redirects to.
pub(crate) async fn decide(
    ctx: &Ctx,
    authorize_url: &str,
    approve: bool,
) -> anyhow::Result<url::Url> {
    let mut url = url::Url::parse(authorize_url).context("parsing the authorize URL")?;
    url.query_pairs_mut()
        .append_pair("approve", if approve { "true" } else { "false" });
    let response = ctx
        .http
        .get(url)
        .send()
        .await
        .context("calling the simulator's authorize endpoint")?;
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    match location {
        Some(location) if status.is_redirection() => {
            url::Url::parse(&location).context("parsing the authorize redirect")
        }
        _ => anyhow::bail!(
            "authorize answered {status} without a redirect: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

// ---- token and revoke ----

/// A token-endpoint error: 400 `{"error","error_description"}`.
fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// Decodes `Authorization: Basic`, percent-decoding id and secret (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// Checks client authentication and parses the form body; the error is (code, description).
fn client_form(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Params, (&'static str, &'static str)> {
    let authenticated = basic_credentials(headers).is_some_and(|(id, secret)| {
        let state = ctx.lock();
        id == state.options.client_id && secret == state.options.client_secret
    });
    if !authenticated {
        return Err(("invalid_client", "Client authentication failed"));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err((
            "invalid_request",
            "The body must be application/x-www-form-urlencoded",
        ));
    }
    Ok(Params::parse(&String::from_utf8_lossy(body)))
}

fn tokens(set: &TokenSet) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(set)).into_response()
}

async fn token(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match client_form(&ctx, &headers, &body) {
        Ok(form) => form,
        Err((error, description)) => return oauth_error(error, description),
    };
    match form.get("grant_type") {
        None => oauth_error("invalid_request", "grant_type is required"),
        Some("authorization_code") => exchange_code(&ctx, &form),
        Some("refresh_token") => refresh(&ctx, &form),
        Some(_) => oauth_error("unsupported_grant_type", "Unsupported grant_type"),
    }
}

fn exchange_code(ctx: &Ctx, form: &Params) -> Response {
    let (Some(code), Some(verifier), Some(redirect_uri)) = (
        form.get("code"),
        form.get("code_verifier"),
        form.get("redirect_uri"),
    ) else {
        return oauth_error(
            "invalid_request",
            "code, code_verifier and redirect_uri are required",
        );
    };
    if !valid_verifier(verifier) {
        return oauth_error(
            "invalid_request",
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
        );
    }
    let mut state = ctx.lock();
    let Some(pending) = state.oauth.codes.get_mut(code) else {
        return oauth_error("invalid_grant", "Invalid authorization code");
    };
    if pending.used || pending.expires_at <= Instant::now() {
        return oauth_error(
            "invalid_grant",
            "Authorization code expired or already used",
        );
    }
    // A presented code is spent, whether or not the rest checks out.
    pending.used = true;
    if pending.redirect_uri != redirect_uri {
        return oauth_error("invalid_grant", "redirect_uri does not match");
    }
    if s256_challenge(verifier) != pending.challenge {
        return oauth_error(
            "invalid_grant",
            "code_verifier does not match the code_challenge",
        );
    }
    let scope = pending.scope.clone();
    let set = state.oauth.new_grant(scope);
    tokens(&set)
}

fn refresh(ctx: &Ctx, form: &Params) -> Response {
    let Some(refresh_token) = form.get("refresh_token") else {
        return oauth_error("invalid_request", "refresh_token is required");
    };
    let mut state = ctx.lock();
    let rotate = state.options.rotate_refresh_tokens;
    let Some(grant) = state.oauth.live_grant(refresh_token) else {
        return oauth_error("invalid_grant", "Invalid refresh token");
    };
    if rotate {
        state.oauth.grants[grant].refresh_token = random_alphanumeric(48);
    }
    state.oauth.counts.refreshed += 1;
    let set = state.oauth.issue_access(grant);
    tokens(&set)
}

/// Revokes a refresh token (its grant dies: every access token and the refresh token) or one
/// access token. Unknown tokens are answered 200 too (RFC 7009 §2.2).
async fn revoke(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match client_form(&ctx, &headers, &body) {
        Ok(form) => form,
        Err((error, description)) => return oauth_error(error, description),
    };
    let Some(token) = form.get("token") else {
        return oauth_error("invalid_request", "token is required");
    };
    let mut state = ctx.lock();
    let oauth = &mut state.oauth;
    if let Some(grant) = oauth.live_grant(token) {
        oauth.grants[grant].revoked = true;
        oauth.counts.revoked += 1;
    } else if oauth.access.remove(token).is_some() {
        oauth.counts.revoked += 1;
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_percent_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("my%20id:s%3Acret+x");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("my id".into(), "s:cret x".into()))
        );
    }

    #[test]
    fn verifier_rules() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}!", "a".repeat(43))));
        // Computed independently: `printf %s VERIFIER | openssl dgst -sha256 -binary | base64url`.
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gXFzFChwM"),
            "2_pQxtABS1WTIa1lUEuUxBkr-ABJUi3THOUTnqkjm5w"
        );
    }
}
