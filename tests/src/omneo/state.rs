//! The simulator's memory: tenants and everything they hold, the authenticated caller, and the
//! one place where a change becomes signed webhook deliveries (with Omneo's loop guard).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::activity::{Benefit, Interaction, Reward};
use super::id_tokens::MintedIdToken;
use super::profile_index::Profiles;
use super::profiles::Profile;
use super::responses::ApiError;
use super::webhooks::{Deliveries, Webhook};
use super::{ApiToken, TenantSpec};

/// The profile triggers the simulator fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `profile.created`.
    Created,
    /// `profile.updated`.
    Updated,
    /// `profile.deleted`.
    Deleted,
}

impl Trigger {
    /// The trigger's name (also the `X-Omneo-Event` header value).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Created => "profile.created",
            Self::Updated => "profile.updated",
            Self::Deleted => "profile.deleted",
        }
    }
}

/// A profile change to deliver: the trigger and the profile as the change left it (the event
/// context). It is serialised only when a webhook is to receive it: most writes (a backfill's
/// identity write-back, made in the extension's own namespace) reach none, and serialising a
/// profile costs far more than copying it.
#[derive(Debug, Clone)]
pub(crate) struct ProfileEvent {
    pub(crate) trigger: Trigger,
    profile: Profile,
}

impl ProfileEvent {
    /// The event for `profile` as it is now.
    pub(crate) fn new(trigger: Trigger, profile: &Profile) -> Self {
        Self {
            trigger,
            profile: profile.clone(),
        }
    }

    /// The delivered body: the profile's JSON.
    pub(crate) fn body(&self) -> String {
        serde_json::to_string(&self.profile).expect("a profile serialises")
    }
}

/// One tenant's data.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub(crate) name: String,
    pub(crate) tokens: Vec<ApiToken>,
    pub(crate) signing_secret: String,
    /// In creation order, indexed by id, email, mobile and identity.
    pub(crate) profiles: Profiles,
    pub(crate) webhooks: Vec<Webhook>,
    pub(crate) interactions: Vec<Interaction>,
    pub(crate) rewards: Vec<Reward>,
    pub(crate) benefits: Vec<Benefit>,
    pub(crate) id_tokens: Vec<MintedIdToken>,
    last_id: u64,
}

impl Tenant {
    pub(super) fn new(spec: TenantSpec) -> Self {
        Self {
            name: spec.name,
            tokens: spec.tokens,
            signing_secret: spec.signing_secret,
            profiles: Profiles::default(),
            webhooks: Vec::new(),
            interactions: Vec::new(),
            rewards: Vec::new(),
            benefits: Vec::new(),
            id_tokens: Vec::new(),
            last_id: 0,
        }
    }

    /// The next integer id (webhooks, interactions, rewards, benefits share one sequence).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }
}

struct Inner {
    tenants: Mutex<BTreeMap<String, Tenant>>,
    deliveries: Deliveries,
    id_token_ttl: Duration,
}

/// The state every handler and the handle share.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Inner>);

impl Shared {
    pub(crate) fn new(deliveries: Deliveries, id_token_ttl: Duration) -> Self {
        Self(Arc::new(Inner {
            tenants: Mutex::new(BTreeMap::new()),
            deliveries,
            id_token_ttl,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Tenant>> {
        self.0.tenants.lock().expect("omneo simulator lock")
    }

    /// Adds a tenant, or adds the spec's tokens to an existing one and replaces its secret.
    pub(crate) fn add_tenant(&self, spec: TenantSpec) {
        let mut tenants = self.lock();
        match tenants.get_mut(&spec.name) {
            Some(tenant) => {
                tenant.signing_secret = spec.signing_secret;
                tenant.tokens.extend(spec.tokens);
            }
            None => {
                tenants.insert(spec.name.clone(), Tenant::new(spec));
            }
        }
    }

    /// The namespace of `token` in `tenant`, if the token belongs to it.
    pub(crate) fn namespace_of(&self, tenant: &str, token: &str) -> Option<String> {
        self.lock()
            .get(tenant)?
            .tokens
            .iter()
            .find(|t| t.token == token)
            .map(|t| t.namespace.clone())
    }

    /// Reads one tenant.
    pub(crate) fn read<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&Tenant) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let tenants = self.lock();
        f(tenants
            .get(tenant)
            .ok_or_else(|| ApiError::not_found("Tenant"))?)
    }

    /// Changes one tenant; when the change answers a profile event, delivers it to the tenant's
    /// active webhooks of that trigger, except those of `origin` (the namespace of the API token
    /// that made the change; `None` for CX Manager edits, which reach every namespace).
    pub(crate) fn change<T>(
        &self,
        tenant: &str,
        origin: Option<&str>,
        f: impl FnOnce(&mut Tenant) -> Result<(T, Option<ProfileEvent>), ApiError>,
    ) -> Result<T, ApiError> {
        let (value, requests) = {
            let mut tenants = self.lock();
            let tenant = tenants
                .get_mut(tenant)
                .ok_or_else(|| ApiError::not_found("Tenant"))?;
            let (value, event) = f(tenant)?;
            let requests = event
                .map(|event| tenant.webhook_requests(&event, origin))
                .unwrap_or_default();
            (value, requests)
        };
        self.0.deliveries.dispatch(requests);
        Ok(value)
    }

    /// The delivery log and sender.
    pub(crate) fn deliveries(&self) -> &Deliveries {
        &self.0.deliveries
    }

    /// How long minted ID tokens live.
    pub(crate) fn id_token_ttl(&self) -> Duration {
        self.0.id_token_ttl
    }
}

/// The authenticated caller: the tenant from the path and the namespace of its bearer token.
/// An unknown tenant, or a missing or foreign token, is rejected with 401.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) tenant: String,
    pub(crate) namespace: String,
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Unauthenticated)?;
        let tenant = params
            .iter()
            .find(|(name, _)| *name == "tenant")
            .map(|(_, value)| value.to_owned())
            .ok_or(ApiError::Unauthenticated)?;
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        let namespace = state
            .namespace_of(&tenant, token.trim())
            .ok_or(ApiError::Unauthenticated)?;
        Ok(Self { tenant, namespace })
    }
}
