//! The `/api/…` surface: the route table (each endpoint with its rate-limit tier and scope),
//! the guard every call passes (Bearer token → 401, `revision` → 400, scope → 403, rate limit
//! → 429), and the accounts endpoint.

use std::fmt;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use serde_json::json;

use super::jsonapi::{ApiError, Here, document};
use super::rate_limit::{RateVerdict, Tier, Verdict};
use super::state::Ctx;
use super::{bulk, data_sources, event_log, events, profiles, subscriptions, webhooks};

/// The scopes of the token a call was made with (a request extension the guard adds), for
/// handlers whose scopes depend on the body.
#[derive(Debug, Clone)]
pub(crate) struct Granted(String);

impl Granted {
    /// Whether the token carries `scope`.
    pub fn has(&self, scope: &str) -> bool {
        self.0.split(' ').any(|s| s == scope)
    }
}

/// What an endpoint demands of its callers.
#[derive(Clone)]
struct Policy {
    ctx: Ctx,
    tier: Tier,
    /// The scope family: `GET` needs `{resource}:read`, anything else `{resource}:write`.
    resource: &'static str,
}

/// One endpoint the simulator serves under `/api/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The HTTP method.
    pub method: Method,
    /// The route; `{name}` segments are path parameters, e.g. `/api/webhooks/{id}`.
    pub path: &'static str,
}

impl Endpoint {
    /// Whether a request for `method` `path` (no query) is answered by this endpoint.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let route: Vec<&str> = self.path.split('/').collect();
        let requested: Vec<&str> = path.split('/').collect();
        let parameter = |segment: &str| segment.starts_with('{') && segment.ends_with('}');
        self.method.as_str() == method
            && route.len() == requested.len()
            && route
                .iter()
                .zip(&requested)
                .all(|(r, p)| r == p || (parameter(r) && !p.is_empty()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The guarded router under construction and the endpoints added to it.
struct Routes {
    ctx: Ctx,
    router: Router<Ctx>,
    endpoints: Vec<Endpoint>,
}

impl Routes {
    /// Serves `method path` with `handler` behind the guard.
    fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        handler: H,
        tier: Tier,
        resource: &'static str,
    ) -> Self
    where
        H: Handler<T, Ctx>,
        T: 'static,
    {
        let policy = Policy {
            ctx: self.ctx.clone(),
            tier,
            resource,
        };
        let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
        let route = on(filter, handler).route_layer(middleware::from_fn_with_state(policy, guard));
        self.router = self.router.route(path, route);
        self.endpoints.push(Endpoint { method, path });
        self
    }
}

/// The API routes, guarded, and the list of endpoints they serve.
pub(crate) fn router(ctx: Ctx) -> (Router, Vec<Endpoint>) {
    use Tier::*;
    let objects = "custom-objects";
    let routes = Routes {
        ctx: ctx.clone(),
        router: Router::new(),
        endpoints: Vec::new(),
    }
    .add(Method::GET, "/api/accounts", accounts, XS, "accounts")
    .add(
        Method::GET,
        "/api/data-sources",
        data_sources::list,
        S,
        objects,
    )
    .add(
        Method::POST,
        "/api/data-sources",
        data_sources::create,
        S,
        objects,
    )
    .add(
        Method::GET,
        "/api/data-sources/{id}",
        data_sources::get_one,
        S,
        objects,
    )
    .add(
        Method::DELETE,
        "/api/data-sources/{id}",
        data_sources::delete,
        S,
        objects,
    )
    .add(
        Method::POST,
        "/api/data-source-record-create-jobs",
        data_sources::create_record,
        L,
        objects,
    )
    .add(
        Method::POST,
        "/api/data-source-record-bulk-create-jobs",
        data_sources::bulk_create_records,
        BulkRecords,
        objects,
    )
    .add(Method::GET, "/api/webhooks", webhooks::list, XS, "webhooks")
    .add(
        Method::POST,
        "/api/webhooks",
        webhooks::create,
        XS,
        "webhooks",
    )
    .add(
        Method::GET,
        "/api/webhooks/{id}",
        webhooks::get_one,
        XS,
        "webhooks",
    )
    .add(
        Method::PATCH,
        "/api/webhooks/{id}",
        webhooks::update,
        XS,
        "webhooks",
    )
    .add(
        Method::DELETE,
        "/api/webhooks/{id}",
        webhooks::delete,
        XS,
        "webhooks",
    )
    .add(
        Method::GET,
        "/api/webhook-topics",
        webhooks::list_topics,
        XS,
        "webhooks",
    )
    .add(
        Method::POST,
        "/api/profile-import",
        profiles::import,
        L,
        "profiles",
    )
    .add(
        Method::GET,
        "/api/profiles",
        profiles::search,
        L,
        "profiles",
    )
    .add(
        Method::GET,
        "/api/profiles/{id}",
        profiles::get_one,
        L,
        "profiles",
    )
    .add(
        Method::POST,
        "/api/profile-bulk-import-jobs",
        bulk::create,
        M,
        "profiles",
    )
    .add(
        Method::GET,
        "/api/profile-bulk-import-jobs/{id}",
        bulk::get_one,
        M,
        "profiles",
    )
    .add(
        Method::GET,
        "/api/profile-bulk-import-jobs/{id}/import-errors",
        bulk::import_errors,
        M,
        "profiles",
    )
    .add(
        Method::GET,
        "/api/profile-bulk-import-jobs/{id}/relationships/profiles",
        bulk::profile_ids,
        M,
        "profiles",
    )
    .add(
        Method::POST,
        "/api/profile-subscription-bulk-create-jobs",
        subscriptions::subscribe,
        L,
        "subscriptions",
    )
    .add(
        Method::POST,
        "/api/profile-subscription-bulk-delete-jobs",
        subscriptions::unsubscribe,
        L,
        "subscriptions",
    )
    .add(Method::GET, "/api/lists", subscriptions::lists, L, "lists")
    .add(
        Method::GET,
        "/api/lists/{id}",
        subscriptions::list_one,
        L,
        "lists",
    )
    .add(
        Method::GET,
        "/api/lists/{id}/relationships/profiles",
        subscriptions::list_profiles,
        L,
        "lists",
    )
    .add(Method::POST, "/api/events", events::create, XL, "events")
    .add(Method::GET, "/api/events", event_log::events, XL, "events")
    .add(
        Method::GET,
        "/api/metrics",
        event_log::metrics,
        M,
        "metrics",
    )
    .add(
        Method::POST,
        "/api/data-privacy-deletion-jobs",
        events::request_deletion,
        S,
        "data-privacy",
    );
    let router = routes.router.fallback(not_found).with_state(ctx);
    (router, routes.endpoints)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("No endpoint at {}.", request.uri().path()))
}

/// Token, revision, scope and rate limit, in that order; adds the `RateLimit-*` headers and
/// hands the token's scopes to the handler ([`Granted`]).
async fn guard(State(policy): State<Policy>, mut request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let revision_present = request
        .headers()
        .get("revision")
        .is_some_and(|v| !v.is_empty());
    let endpoint = format!(
        "{} {}",
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| request.uri().path(), MatchedPath::as_str)
    );
    let scope = format!(
        "{}:{}",
        policy.resource,
        if request.method() == Method::GET {
            "read"
        } else {
            "write"
        }
    );
    let verdict = {
        let mut state = policy.ctx.lock();
        let Some(granted) = bearer.as_deref().and_then(|t| state.oauth.authenticate(t)) else {
            return ApiError::authentication_failed(
                "Missing, unknown, expired or revoked access token.",
            )
            .into_response();
        };
        let granted = Granted(granted.to_owned());
        let has_scope = granted.has(&scope);
        if !revision_present {
            return ApiError::invalid_parameter("The 'revision' header is required.", "revision")
                .into_response();
        }
        if !has_scope {
            return ApiError::permission_denied(format!("The token lacks the '{scope}' scope."))
                .into_response();
        }
        let limits = state.options.rate_limits;
        let account = state.options.account_id.clone();
        let now = Instant::now();
        let verdict = state
            .limiter
            .check(&limits, &account, &endpoint, policy.tier, now);
        state.verdicts.push(RateVerdict {
            endpoint: endpoint.clone(),
            at: now,
            throttled: matches!(verdict, Verdict::Throttled { .. }),
        });
        request.extensions_mut().insert(granted);
        verdict
    };
    match verdict {
        Verdict::Throttled { retry_after } => ApiError::throttled(retry_after).into_response(),
        Verdict::Allowed(headers) => {
            let mut response = next.run(request).await;
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                response.headers_mut().extend(headers);
            }
            response
        }
    }
}

/// `GET /api/accounts` — the one account the token belongs to.
async fn accounts(State(ctx): State<Ctx>, here: Here) -> Response {
    let account_id = ctx.lock().options.account_id.clone();
    document(
        StatusCode::OK,
        &json!({
            "data": [{
                "type": "account",
                "id": account_id,
                "attributes": {
                    "test_account": true,
                    "contact_information": {
                        "default_sender_name": "Simulated Store",
                        "default_sender_email": "store@example.test",
                        "website_url": "https://store.example.test",
                        "organization_name": "Simulated Store",
                        "street_address": {"address1": "1 Sim St", "address2": null, "city": "Melbourne",
                            "region": "VIC", "country": "AU", "zip": "3000"}
                    },
                    "industry": "Retail",
                    "timezone": "Australia/Melbourne",
                    "preferred_currency": "AUD",
                    "public_api_key": account_id,
                    "locale": "en-AU"
                },
                "links": {"self": here.link(&format!("/api/accounts/{account_id}/"))}
            }],
            "links": {"self": here.link("/api/accounts/"), "next": null, "prev": null}
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_match_their_requests_only() {
        let one_list = Endpoint {
            method: Method::GET,
            path: "/api/lists/{id}",
        };
        assert!(one_list.matches("GET", "/api/lists/Ab12Cd"));
        assert!(
            !one_list.matches("GET", "/api/lists"),
            "a parameter needs a segment"
        );
        assert!(
            !one_list.matches("GET", "/api/lists/"),
            "an empty segment is no id"
        );
        assert!(!one_list.matches("GET", "/api/lists/Ab12Cd/relationships/profiles"));
        assert!(!one_list.matches("DELETE", "/api/lists/Ab12Cd"));
        assert_eq!(one_list.to_string(), "GET /api/lists/{id}");
    }
}
