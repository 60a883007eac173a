//! Several Klaviyo accounts behind one base URL, as the real Klaviyo serves every account from
//! `a.klaviyo.com`: one simulator per account (the simulator is one account, and a Klaviyo
//! account installs into one tenant only), and a pass-through in front of them that sends each
//! call to the account it belongs to.
//!
//! Routing: an API call goes to the account whose token it carries (learned from the token
//! endpoint's answers); a token exchange, refresh or revocation is offered to each account in
//! turn until one knows the code or token; the consent page goes to the account being installed
//! ([`KlaviyoAccounts::authorizing`]), as the person at the browser would be logged in to it.
//! Answers, delays and dropped connections pass through unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::klaviyo::{KlaviyoSim, KlaviyoSimOptions};
use crate::local_stack::loopback;
use crate::sim::SimServer;

/// The largest body passed through.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The accounts and the pass-through in front of them.
pub struct KlaviyoAccounts {
    /// One simulator per account, in tenant order.
    pub sims: Vec<KlaviyoSim>,
    router: Arc<Router>,
    server: SimServer,
}

struct Router {
    urls: Vec<String>,
    http: reqwest::Client,
    /// Access tokens seen in token answers, by the account that issued them.
    tokens: Mutex<HashMap<String, usize>>,
    authorizing: AtomicUsize,
}

impl KlaviyoAccounts {
    /// Starts `count` accounts (`soak-account-1`…) sharing `client_id` / `client_secret`.
    pub async fn start(count: usize, client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        let mut sims = Vec::new();
        for n in 1..=count {
            let options = KlaviyoSimOptions {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
                account_id: format!("soak-account-{n}"),
                ..KlaviyoSimOptions::default()
            };
            sims.push(KlaviyoSim::start(options).await?);
        }
        let router = Arc::new(Router {
            urls: sims.iter().map(|sim| sim.url().to_owned()).collect(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            tokens: Mutex::new(HashMap::new()),
            authorizing: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(pass)
            .with_state(router.clone());
        let server = SimServer::spawn(app, loopback(0))
            .await
            .context("starting the Klaviyo pass-through")?;
        Ok(Self {
            sims,
            router,
            server,
        })
    }

    /// The base URL every account is reached at.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// Sends the consent page to account `index` from now on.
    pub fn authorizing(&self, index: usize) {
        self.router.authorizing.store(index, Ordering::SeqCst);
    }
}

/// Passes one call to the account it belongs to (see the module docs).
async fn pass(State(router): State<Arc<Router>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let path = parts.uri.path();
    let target = parts.uri.path_and_query().map_or(path, |pq| pq.as_str());
    let candidates: Vec<usize> = if path == "/oauth/authorize" {
        vec![router.authorizing.load(Ordering::SeqCst)]
    } else {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let known = bearer.and_then(|token| {
            let tokens = router.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            tokens.get(token).copied()
        });
        known.map_or_else(|| (0..router.urls.len()).collect(), |index| vec![index])
    };
    let last = candidates.len() - 1;
    for (attempt, index) in candidates.into_iter().enumerate() {
        let mut headers = parts.headers.clone();
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        let sent = router
            .http
            .request(
                parts.method.clone(),
                format!("{}{target}", router.urls[index]),
            )
            .headers(headers)
            .body(body.clone())
            .send()
            .await;
        let Ok(answer) = sent else { drop_connection() };
        let status = answer.status();
        let headers = answer.headers().clone();
        let Ok(bytes) = answer.bytes().await else {
            drop_connection()
        };
        if path == "/oauth/token" || path == "/oauth/revoke" {
            if !status.is_success() && attempt < last {
                continue;
            }
            if let Some(token) = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|json| json["access_token"].as_str().map(str::to_owned))
            {
                let mut tokens = router.tokens.lock().unwrap_or_else(PoisonError::into_inner);
                tokens.insert(token, index);
            }
        }
        return answer_of(status, &headers, bytes);
    }
    unreachable!("at least one account is tried")
}

/// The account's answer, as it came.
fn answer_of(status: StatusCode, headers: &HeaderMap, body: axum::body::Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// The account dropped the connection: so does the pass-through (see `crate::sim`).
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("the account dropped the connection"))
}
