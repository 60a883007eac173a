//! Klaviyo OAuth (klaviyo.md §OAuth) through the `oauth2` crate: the authorize URL with PKCE S256,
//! the code exchange and refresh with HTTP Basic client authentication, and revocation.
//!
//! The crate's own reqwest integration pins another reqwest major version, so requests go through
//! the process-wide [`reqwest::Client`] via a small adapter instead.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oauth2::basic::{
    BasicClient, BasicErrorResponseType, BasicRequestTokenError, BasicTokenResponse,
};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::KlaviyoConfig;
use crate::remote::{ReadError, read_capped};

/// How long one call to the token or revocation endpoint may take, connection to last byte.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest answer the token or revocation endpoint may give (a token response is ~1 KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The scopes the extension asks for (klaviyo.md §OAuth): those of the sync, then
/// [`RECONCILIATION_SCOPES`].
pub const SCOPES: [&str; 15] = [
    "accounts:read",
    "profiles:read",
    "profiles:write",
    "lists:read",
    "lists:write",
    "subscriptions:read",
    "subscriptions:write",
    "events:write",
    "custom-objects:read",
    "custom-objects:write",
    "webhooks:read",
    "webhooks:write",
    "data-privacy:write",
    RECONCILIATION_SCOPES[0],
    RECONCILIATION_SCOPES[1],
];

/// The scopes reconciliation reads Klaviyo's consent events with (product.md §10); a tenant
/// installed before they were asked for lacks them until it re-authorises.
pub const RECONCILIATION_SCOPES: [&str; 2] = ["events:read", "metrics:read"];

/// The [`RECONCILIATION_SCOPES`] missing from a grant.
pub fn missing_reconciliation_scopes(granted: &[String]) -> Vec<&'static str> {
    RECONCILIATION_SCOPES
        .into_iter()
        .filter(|scope| !granted.iter().any(|g| g == scope))
        .collect()
}

/// Tokens a code exchange or refresh returned.
#[derive(Debug)]
pub struct TokenGrant {
    /// The access token (about an hour).
    pub access_token: SecretString,
    /// The refresh token to store (Klaviyo may or may not rotate it: always keep what comes back).
    pub refresh_token: Option<SecretString>,
    /// Lifetime of the access token.
    pub expires_in: Duration,
    /// Scopes granted.
    pub scopes: Vec<String>,
}

/// What can go wrong talking to the token or revocation endpoint.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// `invalid_grant`: the code or refresh token is dead (uninstalled, revoked, expired, reused).
    #[error("Klaviyo refused the grant (invalid_grant): {0}")]
    InvalidGrant(String),
    /// Another OAuth error response (`invalid_client`, `invalid_request`, …): a configuration bug.
    #[error("Klaviyo answered {code}: {description}")]
    Rejected {
        /// The OAuth `error` code.
        code: String,
        /// Its `error_description`.
        description: String,
    },
    /// The endpoint could not be reached or answered something unreadable: retry later.
    #[error("the Klaviyo token endpoint is unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// The transport error behind it, when there is one.
        #[source]
        source: Option<ReadError>,
    },
}

impl OAuthError {
    fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
            source: None,
        }
    }
}

/// A fresh PKCE verifier (43 characters from 32 random bytes): kept sealed until the callback;
/// [`KlaviyoOAuth::authorize_url`] derives its S256 challenge.
pub fn new_pkce_verifier() -> SecretString {
    let (_, verifier) = PkceCodeChallenge::new_random_sha256();
    SecretString::from(verifier.secret().clone())
}

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The Klaviyo OAuth app: builds authorize URLs, exchanges codes, refreshes and revokes tokens.
#[derive(Clone)]
pub struct KlaviyoOAuth {
    client: Client,
    http: Http,
    /// How long one call to the token or revocation endpoint may take.
    call_timeout: Duration,
    /// Revocation is sent by hand (see [`KlaviyoOAuth::revoke`]), so it needs these two.
    client_secret: SecretString,
    revoke_url: Url,
}

impl std::fmt::Debug for KlaviyoOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlaviyoOAuth")
            .field("client_id", self.client.client_id())
            .finish_non_exhaustive()
    }
}

impl KlaviyoOAuth {
    /// The app from configuration; `redirect_uri` is `{OAUTH_CALLBACK_URL}/oauth/callback`.
    pub fn new(config: &KlaviyoConfig, redirect_uri: &Url, http: reqwest::Client) -> Self {
        let client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(AuthUrl::from_url(config.auth_url.clone()))
            .set_token_uri(TokenUrl::from_url(config.token_url.clone()))
            .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()))
            .set_auth_type(AuthType::BasicAuth);
        Self {
            client,
            http: Http {
                client: http,
                timeout: CALL_TIMEOUT,
            },
            call_timeout: CALL_TIMEOUT,
            client_secret: config.client_secret.clone(),
            revoke_url: config.revoke_url.clone(),
        }
    }

    /// The same app with another bound on each call (tests shorten it).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self.http.timeout = timeout;
        self
    }

    /// How long one call to the token or revocation endpoint may take at most.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The browser URL of Klaviyo's consent page for `state`, with the scopes and the S256
    /// challenge of `pkce_verifier`.
    pub fn authorize_url(&self, state: &str, pkce_verifier: &SecretString) -> Url {
        let state = CsrfToken::new(state.to_owned());
        let verifier = PkceCodeVerifier::new(pkce_verifier.expose_secret().to_owned());
        let (url, _) = self
            .client
            .authorize_url(move || state)
            .add_scopes(SCOPES.iter().map(|s| Scope::new((*s).to_owned())))
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier))
            .url();
        url
    }

    /// Exchanges an authorization code (with its PKCE verifier and the redirect URI).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &SecretString,
    ) -> Result<TokenGrant, OAuthError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()))
            .request_async(&self.http)
            .await
            .map_err(classify)?;
        Ok(grant(&response))
    }

    /// Refreshes an access token.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, OAuthError> {
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await
            .map_err(classify)?;
        Ok(grant(&response))
    }

    /// Revokes a refresh token (how the app uninstalls itself; RFC 7009 with Basic client auth).
    /// Klaviyo answers 200 even for a token it no longer knows, so revoking twice is fine.
    ///
    /// Sent by hand rather than through the `oauth2` crate, which refuses any revocation URL that
    /// is not https — and the simulator (tests, `make dev`) serves http on loopback.
    pub async fn revoke(&self, refresh_token: &SecretString) -> Result<(), OAuthError> {
        // RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = STANDARD.encode(format!(
            "{}:{}",
            encode(self.client.client_id().as_str()),
            encode(self.client_secret.expose_secret())
        ));
        let unreachable = |source: ReadError| OAuthError::Unavailable {
            reason: "the revocation call failed".into(),
            source: Some(source),
        };
        let response = self
            .http
            .client
            .post(self.revoke_url.clone())
            .header(http::header::AUTHORIZATION, format!("Basic {credentials}"))
            .form(&[
                ("token", refresh_token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ])
            .timeout(self.call_timeout)
            .send()
            .await
            .map_err(|e| unreachable(ReadError::Transport(e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        let body = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(unreachable)?;
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(body) if status.is_client_error() => Err(OAuthError::Rejected {
                code: body.error,
                description: body.error_description,
            }),
            _ => Err(OAuthError::unavailable(format!(
                "the revocation endpoint answered {status}"
            ))),
        }
    }
}

fn grant(response: &BasicTokenResponse) -> TokenGrant {
    TokenGrant {
        access_token: SecretString::from(response.access_token().secret().clone()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().clone())),
        expires_in: response.expires_in().unwrap_or(Duration::from_secs(3600)),
        scopes: response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
    }
}

fn classify(error: BasicRequestTokenError<ReadError>) -> OAuthError {
    match error {
        oauth2::RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().cloned().unwrap_or_default();
            match response.error() {
                BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant(description),
                other => OAuthError::Rejected {
                    code: other.to_string(),
                    description,
                },
            }
        }
        oauth2::RequestTokenError::Request(source) => OAuthError::Unavailable {
            reason: "the token call failed".into(),
            source: Some(source),
        },
        oauth2::RequestTokenError::Parse(e, _) => {
            OAuthError::unavailable(format!("unreadable token response: {e}"))
        }
        oauth2::RequestTokenError::Other(e) => OAuthError::unavailable(e),
    }
}

/// Our reqwest client as the crate's async HTTP client. Its futures own a clone of the client
/// (one `Arc`), so they are `Send` for any borrow: a closure adapter borrowing the client makes the
/// futures of the OAuth calls non-`Send` under higher-ranked lifetimes, and axum handlers need `Send`.
#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    timeout: Duration,
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = ReadError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, ReadError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        let (client, timeout) = (self.client.clone(), self.timeout);
        Box::pin(async move { send(&client, timeout, request).await })
    }
}

/// Sends one OAuth request through our reqwest client (the crate's adapter pins another reqwest),
/// reading at most [`MAX_ANSWER_BYTES`] of the answer.
async fn send(
    http: &reqwest::Client,
    timeout: Duration,
    request: HttpRequest,
) -> Result<HttpResponse, ReadError> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| ReadError::Transport(e.without_url()))?;
    let mut builder = http::Response::builder().status(response.status());
    if let Some(headers) = builder.headers_mut() {
        headers.extend(
            response
                .headers()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let body = read_capped(response, MAX_ANSWER_BYTES).await?;
    Ok(builder
        .body(body)
        .expect("status and headers came from a valid response"))
}
