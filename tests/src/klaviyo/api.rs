//! The `/api/…` surface: the route table (each endpoint with its rate-limit tier and scope),
//! the guard every call passes (Bearer token → 401, `revision` → 400, scope → 403, rate limit
//! → 429), and the accounts endpoint.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::json;

use super::jsonapi::{ApiError, Here, document};
use super::rate_limit::{Tier, Verdict};
use super::state::Ctx;
use super::{data_sources, events, profiles, subscriptions, webhooks};

/// What an endpoint demands of its callers.
#[derive(Clone)]
struct Policy {
    ctx: Ctx,
    tier: Tier,
    /// The scope family: `GET` needs `{resource}:read`, anything else `{resource}:write`.
    resource: &'static str,
}

/// The API routes, guarded.
pub(crate) fn router(ctx: Ctx) -> Router {
    let guard = |route: MethodRouter<Ctx>, tier: Tier, resource: &'static str| {
        let policy = Policy {
            ctx: ctx.clone(),
            tier,
            resource,
        };
        route.route_layer(middleware::from_fn_with_state(policy, guard))
    };
    use Tier::*;
    Router::new()
        .route("/api/accounts", guard(get(accounts), XS, "accounts"))
        .route(
            "/api/data-sources",
            guard(
                get(data_sources::list).post(data_sources::create),
                S,
                "custom-objects",
            ),
        )
        .route(
            "/api/data-sources/{id}",
            guard(
                get(data_sources::get_one).delete(data_sources::delete),
                S,
                "custom-objects",
            ),
        )
        .route(
            "/api/data-source-record-create-jobs",
            guard(post(data_sources::create_record), L, "custom-objects"),
        )
        .route(
            "/api/data-source-record-bulk-create-jobs",
            guard(
                post(data_sources::bulk_create_records),
                BulkRecords,
                "custom-objects",
            ),
        )
        .route(
            "/api/webhooks",
            guard(get(webhooks::list).post(webhooks::create), XS, "webhooks"),
        )
        .route(
            "/api/webhooks/{id}",
            guard(
                get(webhooks::get_one)
                    .patch(webhooks::update)
                    .delete(webhooks::delete),
                XS,
                "webhooks",
            ),
        )
        .route(
            "/api/webhook-topics",
            guard(get(webhooks::list_topics), XS, "webhooks"),
        )
        .route(
            "/api/profile-import",
            guard(post(profiles::import), L, "profiles"),
        )
        .route("/api/profiles", guard(get(profiles::search), L, "profiles"))
        .route(
            "/api/profiles/{id}",
            guard(get(profiles::get_one), L, "profiles"),
        )
        .route(
            "/api/profile-subscription-bulk-create-jobs",
            guard(post(subscriptions::subscribe), L, "subscriptions"),
        )
        .route(
            "/api/profile-subscription-bulk-delete-jobs",
            guard(post(subscriptions::unsubscribe), L, "subscriptions"),
        )
        .route("/api/lists", guard(get(subscriptions::lists), L, "lists"))
        .route(
            "/api/lists/{id}",
            guard(get(subscriptions::list_one), L, "lists"),
        )
        .route(
            "/api/lists/{id}/relationships/profiles",
            guard(get(subscriptions::list_profiles), L, "lists"),
        )
        .route("/api/events", guard(post(events::create), XL, "events"))
        .route(
            "/api/data-privacy-deletion-jobs",
            guard(post(events::request_deletion), S, "data-privacy"),
        )
        .fallback(not_found)
        .with_state(ctx)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("No endpoint at {}.", request.uri().path()))
}

/// Token, revision, scope and rate limit, in that order; adds the `RateLimit-*` headers.
async fn guard(State(policy): State<Policy>, request: Request, next: Next) -> Response {
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
        if request.method() == axum::http::Method::GET {
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
        let has_scope = granted.split(' ').any(|s| s == scope);
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
        state
            .limiter
            .check(&limits, &account, &endpoint, policy.tier, Instant::now())
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
