//! A simulator of Omneo's Admin API and ID API for many tenants at once, written from `omneo.md`
//! (independently of the `shared` crate's client).
//!
//! Tenant `T` lives under the path prefix `/T`, so the extension's `OMNEO_API_URL_TEMPLATE` is
//! [`OmneoSim::api_url_template`] (`http://127.0.0.1:PORT/{tenant}`):
//! - Admin API `/T/api/v3/…`: profiles, comms, identities, webhooks, interactions, rewards,
//!   benefits, and the six data-source lists;
//! - ID API `/T/id/api/v1/auth/token`.
//!
//! `GET /profiles` is the listing a backfill pages through (module `listing`): offset paging
//! with `page[size]` (at most 100, else 422) and `page[number]`, Laravel's `links` and
//! `meta{current_page,last_page,per_page,total}`; `sort` by `created_at` or `updated_at`
//! (`-` for descending), ties (profiles sharing a second) in creation order, and creation order
//! without `sort`; and, combined, `filter[email]` and
//! `filter[created_at|updated_at][eq|ne|gt|gte|lt|lte|in]` taking `YYYY-MM-DD HH:MM:SS` or
//! ISO 8601 (a bad sort, operator or value → 422 naming it). Every write that changes a profile
//! bumps its `updated_at`: `PUT` of the profile or its comms, and `POST`, `PUT` and `DELETE` of
//! its identities. Tests seed many profiles at once with [`OmneoSim::insert_profiles`], with a
//! history through [`NewProfile::created_at`].
//! A tenant's profiles are indexed by id, email, mobile and identity (module `profile_index`),
//! so reading, writing and checking one profile take constant time whatever the tenant's size,
//! and a 100,000-profile backfill stays linear.
//!
//! Every call needs `Authorization: Bearer <token>` with one of the tenant's API tokens (unknown
//! tenant or token → 401 `{"message"}`). Each token has a namespace: a profile change made with it
//! is not delivered to webhooks of the same namespace (Omneo's loop guard). Changes made through
//! the handle ([`OmneoSim::seed_profile`], [`OmneoSim::edit_profile`]…) act like CX Manager edits
//! and reach every namespace.
//!
//! Webhook deliveries and target calls are signed with the tenant's signing secret
//! (`X-Omneo-Hmac-SHA256`) and recorded with the receiver's answer ([`OmneoSim::deliveries`]).
//! Faults, request recording and the `/_sim` control API come from [`crate::sim`]; [`control`]
//! adds CX Manager actions and a look at the data under `/_sim/tenants/{tenant}/…` (turn the
//! webhooks on, list, show and edit profiles, list interactions, rewards and benefits) for
//! `make dev` users with curl.

mod activity;
mod comms;
pub mod control;
mod id_tokens;
mod identities;
mod listing;
mod profile_data;
mod profile_index;
mod profiles;
mod responses;
mod state;
mod webhooks;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post, put};
use serde_json::Value;

pub use activity::{ACTIONS, Benefit, CHANNELS, Interaction, NewBenefit, NewReward, Reward};
pub use comms::Comms;
pub use id_tokens::{IdTokenClaims, MintedIdToken};
pub use identities::Identity;
pub use profile_data::{Connection, DateAttribute, ListMembership, ProfileExtras};
pub use profiles::{
    Address, CustomAttribute, NewProfile, Profile, ProfileAttributes, ProfileType, Tier,
};
pub use webhooks::{
    Delivery, DeliveryOutcome, EVENT_HEADER, NewWebhook, SIGNATURE_HEADER, Webhook, sign,
};

use crate::sim::{Faults, Recorder, SimServer, instrument};
use profile_data::{Part, get_part};
use responses::ApiError;
use state::{ProfileEvent, Shared, Tenant, Trigger};

/// An API token of a tenant (a CX Manager machine user's token).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The bearer token.
    pub token: String,
    /// The namespace changes made with it belong to.
    pub namespace: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("token", &"<redacted>")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// One simulated Omneo tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantSpec {
    /// The tenant id, its path prefix.
    pub name: String,
    /// Accepted API tokens.
    pub tokens: Vec<ApiToken>,
    /// Key of `X-Omneo-Hmac-SHA256` signatures (and of minted ID tokens).
    pub signing_secret: String,
}

impl fmt::Debug for TenantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantSpec")
            .field("name", &self.name)
            .field("tokens", &self.tokens)
            .field("signing_secret", &"<redacted>")
            .finish()
    }
}

impl TenantSpec {
    /// A tenant with one API token of `namespace`.
    pub fn new(name: &str, token: &str, namespace: &str, signing_secret: &str) -> Self {
        Self {
            name: name.into(),
            tokens: Vec::new(),
            signing_secret: signing_secret.into(),
        }
        .token(token, namespace)
    }

    /// Adds an API token.
    pub fn token(mut self, token: &str, namespace: &str) -> Self {
        self.tokens.push(ApiToken {
            token: token.into(),
            namespace: namespace.into(),
        });
        self
    }
}

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct OmneoSimOptions {
    /// Where to listen; `127.0.0.1:0` (a free port) by default, a fixed address for `make dev`.
    pub addr: SocketAddr,
    /// Tenants present from the start (more can be added with [`OmneoSim::add_tenant`]).
    pub tenants: Vec<TenantSpec>,
    /// Lifetime of minted ID tokens (1 hour by default).
    pub id_token_ttl: Duration,
    /// How long a webhook delivery or target call waits for the receiver (10 s by default).
    pub delivery_timeout: Duration,
}

impl Default for OmneoSimOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tenants: Vec::new(),
            id_token_ttl: Duration::from_secs(3600),
            delivery_timeout: Duration::from_secs(10),
        }
    }
}

impl OmneoSimOptions {
    /// Listens on a fixed address (e.g. for `make dev`).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Adds a tenant.
    pub fn tenant(mut self, spec: TenantSpec) -> Self {
        self.tenants.push(spec);
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(message) => write!(f, "400 {message}"),
            Self::Unauthenticated => write!(f, "401 Unauthenticated."),
            Self::NotFound(message) => write!(f, "404 {message}"),
            Self::Validation(errors) => {
                write!(f, "422")?;
                for (field, messages) in errors {
                    write!(f, " {field}: {}", messages.join(" "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// The running simulator; stops when dropped.
pub struct OmneoSim {
    server: SimServer,
    shared: Shared,
    faults: Faults,
    recorder: Recorder,
}

impl OmneoSim {
    /// Starts serving (inside a Tokio runtime, which also runs the deliveries).
    pub async fn start(options: OmneoSimOptions) -> anyhow::Result<Self> {
        let deliveries = webhooks::Deliveries::new(options.delivery_timeout)?;
        let shared = Shared::new(deliveries, options.id_token_ttl);
        for spec in options.tenants {
            shared.add_tenant(spec);
        }
        let faults = Faults::default();
        let recorder = Recorder::default();
        let app = instrument(
            router(shared.clone()),
            faults.clone(),
            recorder.clone(),
            responses::render_injected,
        )
        .merge(control::router(shared.clone()));
        let server = SimServer::spawn(app, options.addr)
            .await
            .with_context(|| format!("binding the Omneo simulator to {}", options.addr))?;
        Ok(Self {
            server,
            shared,
            faults,
            recorder,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The value for `OMNEO_API_URL_TEMPLATE`: `http://127.0.0.1:PORT/{tenant}`.
    pub fn api_url_template(&self) -> String {
        format!("{}/{{tenant}}", self.url())
    }

    /// A tenant's base URL (the template filled in): `http://127.0.0.1:PORT/{tenant}`.
    pub fn api_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.url())
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every API request received.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Adds a tenant (or adds tokens to an existing one and replaces its signing secret).
    pub fn add_tenant(&self, spec: TenantSpec) {
        self.shared.add_tenant(spec);
    }

    /// Creates a profile as CX Manager would: fires `profile.created` to every namespace.
    pub fn seed_profile(&self, tenant: &str, new: NewProfile) -> anyhow::Result<Profile> {
        self.cx_change(tenant, |t| {
            let profile = t.insert_profile(new)?;
            let event = ProfileEvent::new(Trigger::Created, &profile);
            Ok((profile, Some(event)))
        })
        .with_context(|| format!("seeding a profile in tenant {tenant}"))
    }

    /// Inserts many profiles at once, under one lock, as a data import would: each validated like
    /// [`Self::seed_profile`] (all or none), stamped now unless [`NewProfile::created_at`] says
    /// otherwise, and no webhook fires (they are the data a backfill finds). Uniqueness is checked
    /// against the tenant's indexes, so 100,000 profiles take a second or two even in a debug
    /// build.
    pub fn insert_profiles(
        &self,
        tenant: &str,
        profiles: Vec<NewProfile>,
    ) -> anyhow::Result<Vec<Profile>> {
        self.cx_change(tenant, |t| Ok((t.insert_profiles(profiles)?, None)))
            .with_context(|| format!("inserting profiles in tenant {tenant}"))
    }

    /// Seeds `count` demo customers ([`NewProfile::demo`] 1..=count), each with a welcome reward
    /// and a birthday benefit.
    pub fn seed_demo_profiles(&self, tenant: &str, count: u32) -> anyhow::Result<Vec<Profile>> {
        (1..=count)
            .map(|n| {
                let profile = self.seed_profile(tenant, NewProfile::demo(n))?;
                self.issue_reward(
                    tenant,
                    NewReward {
                        profile_id: profile.id.clone(),
                        reward_definition_id: Value::from(1),
                        value_initial: 10.0,
                        value_remaining: 10.0,
                        expires_at: Some("2030-12-31 23:59:59".into()),
                        external_id: Some(format!("welcome-{n}")),
                        meta: None,
                        region_id: None,
                    },
                )?;
                self.issue_benefit(
                    tenant,
                    NewBenefit {
                        profile_id: profile.id.clone(),
                        benefit_definition_id: Value::from(1),
                        issued_at: None,
                        expires_at: Some("2030-12-31 23:59:59".into()),
                        external_id: Some(format!("birthday-{n}")),
                        meta: None,
                    },
                )?;
                self.profile(tenant, &profile.id)
                    .context("a seeded profile exists")
            })
            .collect()
    }

    /// Edits a profile as CX Manager would: fires `profile.updated` to every namespace when
    /// the edit changed something (`updated_at` is bumped; the id cannot change).
    pub fn edit_profile(
        &self,
        tenant: &str,
        id: &str,
        edit: impl FnOnce(&mut Profile),
    ) -> anyhow::Result<Profile> {
        self.cx_change(tenant, |t| t.cx_edit(id, edit))
            .with_context(|| format!("editing profile {id} in tenant {tenant}"))
    }

    /// Deletes a profile as CX Manager would: it is gone from the API (404), and
    /// `profile.deleted` carries its last state with `profile_type: deleted`.
    pub fn delete_profile(&self, tenant: &str, id: &str) -> anyhow::Result<Profile> {
        self.cx_change(tenant, |t| {
            let (profile, event) = t.delete_profile(id)?;
            Ok((profile, Some(event)))
        })
        .with_context(|| format!("deleting profile {id} in tenant {tenant}"))
    }

    /// Creates a webhook as CX Manager would (422-style error when (trigger, url) is taken).
    pub fn add_webhook(&self, tenant: &str, new: NewWebhook) -> anyhow::Result<Webhook> {
        self.cx_change(tenant, |t| Ok((t.create_webhook(new)?, None)))
            .with_context(|| format!("adding a webhook in tenant {tenant}"))
    }

    /// Issues a reward (the profile's `reward_balance` grows; no webhook fires).
    pub fn issue_reward(&self, tenant: &str, new: NewReward) -> anyhow::Result<Reward> {
        self.cx_change(tenant, |t| Ok((t.issue_reward(new)?, None)))
            .with_context(|| format!("issuing a reward in tenant {tenant}"))
    }

    /// Issues a benefit (no webhook fires).
    pub fn issue_benefit(&self, tenant: &str, new: NewBenefit) -> anyhow::Result<Benefit> {
        self.cx_change(tenant, |t| Ok((t.issue_benefit(new)?, None)))
            .with_context(|| format!("issuing a benefit in tenant {tenant}"))
    }

    /// Makes a target call as an Omneo reaction would: `POST url` with `body`, signed with the
    /// tenant's secret; waits for the answer and answers the recorded delivery.
    pub async fn send_target_call(
        &self,
        tenant: &str,
        url: &str,
        body: &Value,
    ) -> anyhow::Result<Delivery> {
        let body = serde_json::to_string(body).context("serialising a target call body")?;
        let request = self
            .shared
            .read(tenant, |t| Ok(t.target_request(url, body)))
            .with_context(|| format!("target call for tenant {tenant}"))?;
        Ok(self.shared.deliveries().send(request).await)
    }

    /// Every webhook delivery and target call so far (all tenants), in order; deliveries caused
    /// by a change are recorded (as pending) before the change's response is sent.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries().all()
    }

    /// Waits until every webhook delivery has its outcome.
    pub async fn settle(&self) {
        self.shared.deliveries().settle().await;
    }

    /// A profile.
    pub fn profile(&self, tenant: &str, id: &str) -> Option<Profile> {
        self.inspect(tenant, |t| t.record(id).ok().map(|r| r.profile.clone()))
    }

    /// A profile by email (case-insensitive).
    pub fn profile_by_email(&self, tenant: &str, email: &str) -> Option<Profile> {
        self.inspect(tenant, |t| t.profile_by_email(email).cloned())
    }

    /// Every profile of a tenant, in creation order.
    pub fn profiles(&self, tenant: &str) -> Vec<Profile> {
        self.inspect(tenant, |t| {
            t.profiles.iter().map(|r| r.profile.clone()).collect()
        })
    }

    /// A profile's comms.
    pub fn comms(&self, tenant: &str, id: &str) -> Option<Comms> {
        self.profile(tenant, id).map(|p| p.attributes.comms)
    }

    /// A profile's identities (empty when no such profile).
    pub fn identities(&self, tenant: &str, id: &str) -> Vec<Identity> {
        self.profile(tenant, id)
            .map(|p| p.identities)
            .unwrap_or_default()
    }

    /// A tenant's webhooks.
    pub fn webhooks(&self, tenant: &str) -> Vec<Webhook> {
        self.inspect(tenant, |t| t.webhooks.clone())
    }

    /// A tenant's interactions, in order.
    pub fn interactions(&self, tenant: &str) -> Vec<Interaction> {
        self.inspect(tenant, |t| t.interactions.clone())
    }

    /// A tenant's rewards, in order.
    pub fn rewards(&self, tenant: &str) -> Vec<Reward> {
        self.inspect(tenant, |t| t.rewards.clone())
    }

    /// A tenant's benefits, in order.
    pub fn benefits(&self, tenant: &str) -> Vec<Benefit> {
        self.inspect(tenant, |t| t.benefits.clone())
    }

    /// The ID tokens minted for a tenant, in order.
    pub fn id_tokens(&self, tenant: &str) -> Vec<MintedIdToken> {
        self.inspect(tenant, |t| t.id_tokens.clone())
    }

    /// Verifies an ID token minted for `tenant` and answers its claims.
    pub fn decode_id_token(&self, tenant: &str, token: &str) -> anyhow::Result<IdTokenClaims> {
        let secret = self
            .shared
            .read(tenant, |t| Ok(t.signing_secret.clone()))
            .with_context(|| format!("unknown tenant {tenant}"))?;
        id_tokens::decode(&secret, token)
    }

    fn inspect<T: Default>(&self, tenant: &str, f: impl FnOnce(&Tenant) -> T) -> T {
        self.shared.read(tenant, |t| Ok(f(t))).unwrap_or_default()
    }

    fn cx_change<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut Tenant) -> Result<(T, Option<ProfileEvent>), ApiError>,
    ) -> Result<T, ApiError> {
        self.shared.change(tenant, None, f)
    }
}

/// The Admin API and ID API of every tenant, under `/{tenant}`.
fn router(shared: Shared) -> Router {
    let admin = Router::new()
        .route("/profiles", get(listing::list))
        .route("/profiles/search-id", post(profiles::search_id))
        .route("/profiles/{id}", get(profiles::show).put(profiles::update))
        .route(
            "/profiles/{id}/attributes/comms",
            get(comms::show).put(comms::update),
        )
        .route(
            "/profiles/{id}/identities",
            get(identities::list).post(identities::create),
        )
        .route(
            "/profiles/{id}/identities/{handle}",
            put(identities::update).delete(identities::delete),
        )
        .route("/profiles/{id}/attributes/dates", get_part(Part::Dates))
        .route("/profiles/{id}/connections", get_part(Part::Connections))
        .route("/profiles/{id}/rewards", get_part(Part::Rewards))
        .route("/profiles/{id}/addresses", get_part(Part::Addresses))
        .route("/profiles/{id}/benefits", get_part(Part::Benefits))
        .route("/profiles/{id}/lists", get_part(Part::Lists))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/webhooks/{id}",
            get(webhooks::show)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/interactions", post(activity::create_interaction))
        .route("/rewards", post(activity::create_reward))
        .route("/benefits", post(activity::create_benefit));
    let id_api = Router::new().route("/auth/token", post(id_tokens::mint));
    Router::new()
        .nest("/{tenant}/api/v3", admin)
        .nest("/{tenant}/id/api/v1", id_api)
        .fallback(|| async { ApiError::NotFound("Not Found".into()) })
        .with_state(shared)
}
