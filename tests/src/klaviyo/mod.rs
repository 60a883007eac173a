//! A simulator of Klaviyo (one account, one OAuth app), behaving like `klaviyo.md` says the real
//! one does — unpleasant parts included — so the extension's tests mean something. Used by the
//! integration tests and run by `make dev`.
//!
//! It does not use the `shared` crate: it is an independent implementation of the wire format.
//!
//! What it serves (base URL from [`KlaviyoSim::url`]):
//! - OAuth ([`oauth`]): `GET /oauth/authorize` (a small consent page with Allow / Deny, or
//!   `&approve=true|false` to skip it), `POST /oauth/token`, `POST /oauth/revoke`.
//! - The API under `/api/…` ([`api`], listed by [`KlaviyoSim::endpoints`]): Bearer tokens, the
//!   `revision` header, JSON:API bodies and errors, cursor paging, filters, scopes and
//!   per-endpoint rate limits ([`rate_limit`]). Among them the bulk profile import
//!   ([`bulk`]): jobs that run over time (`queued` → `processing` → `complete`) at the pace of
//!   [`KlaviyoSimOptions::bulk_pace`] / [`KlaviyoSim::set_bulk_pace`], seen by
//!   [`KlaviyoSim::bulk_jobs`]. And what reconciliation reads ([`event_log`]): `GET /api/metrics`
//!   and `GET /api/events`, the account's system events whether or not a webhook delivered them.
//! - The `/_sim` control API of [`crate::sim`] (faults, recorded requests), and [`control`]'s
//!   look at the account (`/_sim/profiles` with consent and lists, `/_sim/events`) and
//!   Klaviyo-side actions for curl users: `POST /_sim/profiles/{id}/consent` (a customer's
//!   consent change, as [`KlaviyoSim::change_consent`]) and `POST /_sim/deliver` (the outbox
//!   now, as [`KlaviyoSim::deliver_pending`]).
//!
//! System webhooks ([`deliveries`]) are pushed by the simulator to the account's webhooks:
//! consent changes made through the subscription endpoints queue events in an *outbox*
//! (with `custom_source` as `custom_method_detail`); [`KlaviyoSim::deliver_pending`] sends them,
//! or [`KlaviyoSimOptions::auto_deliver`] sends them right after each job, and
//! [`KlaviyoSim::drop_pending`] loses them as an outage would. Klaviyo-side changes
//! (a customer unsubscribing from an email) are made with [`KlaviyoSim::change_consent`]. Both
//! are also reachable over HTTP ([`control`]). Every event, delivered or not, stays readable
//! through `GET /api/events`.
//!
//! Tenants installed before the extension asked for more scopes are simulated with
//! [`KlaviyoSimOptions::withheld_scopes`] / [`KlaviyoSim::withhold_scopes`]: authorizations
//! grant the scopes asked for minus those, and calls that need one are answered 403.
//!
//! Deliberate deviations from the real service, each documented where it is implemented:
//! webhook `endpoint_url`s may be `http://` for loopback hosts (real Klaviyo requires https);
//! subscription and deletion jobs are applied synchronously before the 202 (bulk profile
//! import jobs are not: they run over time, computed lazily); there is no
//! double opt-in; refresh tokens do not expire after 90 days unused.

pub mod api;
pub mod bulk;
pub mod control;
pub mod data_sources;
pub mod deliveries;
pub mod event_log;
pub mod events;
pub mod jsonapi;
pub mod oauth;
mod profile_index;
pub mod profiles;
pub mod rate_limit;
pub mod subscriptions;
pub mod webhooks;

mod state;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use crate::sim::{Faults, Recorder, SimServer, instrument};

pub use api::Endpoint;
pub use bulk::{BulkImportJob, BulkPace, BulkStatus, ImportError};
pub use data_sources::{DataSource, DataSourceRecord};
pub use deliveries::{Delivery, SystemEvent, topics};
pub use events::{DeletionJob, Event};
pub use oauth::{TokenCounts, TokenSet};
pub use profiles::Profile;
pub use rate_limit::{RateLimits, RateVerdict, Tier};
pub use subscriptions::{Channel, ChannelConsent, ConsentState, List, Subscriptions};
pub use webhooks::Webhook;

use state::{Ctx, State};

/// The API revision the simulator implements (sent back in deliveries' `meta.version`).
pub const REVISION: &str = "2026-07-15";

/// Every OAuth scope the extension may ask for (`klaviyo.md` §OAuth, reconciliation's
/// `events:read` and `metrics:read` included); the simulator grants these, bar any
/// [`KlaviyoSimOptions::withheld_scopes`].
pub const SCOPES: &[&str] = &[
    "accounts:read",
    "profiles:read",
    "profiles:write",
    "lists:read",
    "lists:write",
    "subscriptions:read",
    "subscriptions:write",
    "events:read",
    "events:write",
    "metrics:read",
    "custom-objects:read",
    "custom-objects:write",
    "webhooks:read",
    "webhooks:write",
    "data-privacy:write",
];

/// Which `redirect_uri`s the OAuth app accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectUris {
    /// Exactly these (byte-for-byte, as Klaviyo compares them).
    Exact(Vec<String>),
    /// Any URI — for `make dev`, where the callback address is whatever the developer runs.
    AcceptAny,
}

impl RedirectUris {
    /// Whether `uri` is registered.
    pub fn accepts(&self, uri: &str) -> bool {
        match self {
            Self::Exact(uris) => uris.iter().any(|u| u == uri),
            Self::AcceptAny => url::Url::parse(uri).is_ok(),
        }
    }
}

/// How a simulator behaves; [`Default`] is a realistic account with dev-friendly credentials.
#[derive(Debug, Clone)]
pub struct KlaviyoSimOptions {
    /// The OAuth app's client id.
    pub client_id: String,
    /// The OAuth app's client secret.
    pub client_secret: String,
    /// The registered redirect URIs (default: accept any).
    pub redirect_uris: RedirectUris,
    /// Whether a refresh issues a new refresh token and kills the old one (default: on).
    pub rotate_refresh_tokens: bool,
    /// How long an access token lives (`expires_in`; default 3600 s).
    pub access_token_lifetime: Duration,
    /// Rate limiting (default: on, real limits).
    pub rate_limits: RateLimits,
    /// The Klaviyo account id (what `GET /api/accounts` and deliveries report).
    pub account_id: String,
    /// Added to the `Klaviyo-Timestamp` header of deliveries (the real one is observed hours
    /// off); `meta.timestamp` in the body stays accurate. Default zero.
    pub delivery_timestamp_skew: jiff::SignedDuration,
    /// Deliver queued system events right after each subscription job (default: off; call
    /// [`KlaviyoSim::deliver_pending`] instead).
    pub auto_deliver: bool,
    /// How fast bulk profile import jobs run (default: start after 200 ms, then 5,000 profiles
    /// a second).
    pub bulk_pace: BulkPace,
    /// Scopes an authorization never grants, even when asked for (default: none): the token
    /// response's `scope` leaves them out, and calls needing one are answered 403 — a tenant
    /// who installed before the extension asked for them. See [`KlaviyoSim::withhold_scopes`].
    pub withheld_scopes: Vec<String>,
}

impl Default for KlaviyoSimOptions {
    fn default() -> Self {
        Self {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            redirect_uris: RedirectUris::AcceptAny,
            rotate_refresh_tokens: true,
            access_token_lifetime: Duration::from_secs(3600),
            rate_limits: RateLimits::default(),
            account_id: "SimAcc".into(),
            delivery_timestamp_skew: jiff::SignedDuration::ZERO,
            auto_deliver: false,
            bulk_pace: BulkPace::default(),
            withheld_scopes: Vec::new(),
        }
    }
}

impl KlaviyoSimOptions {
    /// Registers exactly this redirect URI (replacing "accept any").
    pub fn redirect_uri(mut self, uri: &str) -> Self {
        match &mut self.redirect_uris {
            RedirectUris::Exact(uris) => uris.push(uri.into()),
            RedirectUris::AcceptAny => self.redirect_uris = RedirectUris::Exact(vec![uri.into()]),
        }
        self
    }

    /// Turns rate limiting off.
    pub fn without_rate_limits(mut self) -> Self {
        self.rate_limits.enabled = false;
        self
    }
}

/// A running Klaviyo simulator; stops when dropped.
pub struct KlaviyoSim {
    server: SimServer,
    ctx: Ctx,
    faults: Faults,
    recorder: Recorder,
    endpoints: Vec<Endpoint>,
}

impl KlaviyoSim {
    /// Starts a simulator on a free loopback port.
    pub async fn start(options: KlaviyoSimOptions) -> anyhow::Result<Self> {
        Self::start_on(options, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a simulator on a fixed address (for `make dev`).
    pub async fn start_on(options: KlaviyoSimOptions, addr: SocketAddr) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the simulator's HTTP client")?;
        let ctx = Ctx::new(State::new(options), http);
        let faults = Faults::default();
        let recorder = Recorder::default();
        let (api, endpoints) = api::router(ctx.clone());
        let router = instrument(
            api.merge(oauth::router(ctx.clone())),
            faults.clone(),
            recorder.clone(),
            jsonapi::render_fault,
        )
        .merge(control::router(ctx.clone()));
        let server = SimServer::spawn(router, addr)
            .await
            .with_context(|| format!("binding the Klaviyo simulator on {addr}"))?;
        Ok(Self {
            server,
            ctx,
            faults,
            recorder,
            endpoints,
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

    /// The options it runs with.
    pub fn options(&self) -> KlaviyoSimOptions {
        self.ctx.lock().options.clone()
    }

    /// Fault injection (also reachable at `/_sim/faults`).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Every request received (also at `/_sim/requests`).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Every endpoint served under `/api/…` (OAuth and `/_sim`, [`control`] included, are not).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Switches rate limiting at run time (counters restart).
    pub fn set_rate_limits(&self, limits: RateLimits) {
        let mut state = self.ctx.lock();
        state.options.rate_limits = limits;
        state.limiter.reset();
    }

    /// Changes how fast bulk import jobs run from now on ([`BulkPace::instant`] finishes
    /// every running job at once, [`BulkPace::stalled`] holds them where they are).
    pub fn set_bulk_pace(&self, pace: BulkPace) {
        // Locking brought the jobs up to now at the old pace; the new one applies from here.
        let mut state = self.ctx.lock();
        state.options.bulk_pace = pace;
        state.advance_bulk_jobs(std::time::Instant::now());
    }

    // ---- OAuth ----

    /// Follows an authorize URL (as the extension's install endpoint redirects to) and clicks
    /// Allow: returns the callback URL `redirect_uri?code&state` (or the error redirect when the
    /// request is invalid but redirectable). Errors when the simulator answers no redirect.
    pub async fn approve(&self, authorize_url: &str) -> anyhow::Result<url::Url> {
        oauth::decide(&self.ctx, authorize_url, true).await
    }

    /// Like [`Self::approve`] but clicks Deny: returns `redirect_uri?error=access_denied&…&state`.
    pub async fn deny(&self, authorize_url: &str) -> anyhow::Result<url::Url> {
        oauth::decide(&self.ctx, authorize_url, false).await
    }

    /// Issues tokens with every scope (bar the withheld ones) without the OAuth dance (for
    /// tests of API clients).
    pub fn grant_tokens(&self) -> TokenSet {
        let mut state = self.ctx.lock();
        let withheld = state.options.withheld_scopes.clone();
        state.oauth.grant_direct(&withheld)
    }

    /// From now on, authorizations (codes approved afterwards, [`Self::grant_tokens`]) grant
    /// the scopes asked for minus `scopes`; grants made before keep theirs, refreshes included.
    pub fn withhold_scopes(&self, scopes: &[&str]) {
        self.ctx.lock().options.withheld_scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Revokes every token, as when the customer uninstalls the app in Klaviyo (no
    /// notification is sent: the next API call gets 401 and the refresh `invalid_grant`).
    pub fn revoke_all(&self) {
        self.ctx.lock().oauth.revoke_all();
    }

    /// Makes every live access token expired (as if an hour had passed).
    pub fn expire_access_tokens(&self) {
        self.ctx.lock().oauth.expire_access_tokens();
    }

    /// How many authorizations of the app are alive (not revoked): what an uninstall must bring
    /// to zero.
    pub fn live_grants(&self) -> usize {
        self.ctx.lock().oauth.live_grants()
    }

    /// Whether this refresh token still stands for a live grant (neither rotated away nor
    /// revoked).
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.ctx.lock().oauth.refresh_token_is_live(refresh_token)
    }

    /// How many tokens were issued, refreshed and revoked.
    pub fn token_counts(&self) -> TokenCounts {
        self.ctx.lock().oauth.counts
    }

    // ---- Inspection and seeding ----

    /// Every profile, oldest first.
    pub fn profiles(&self) -> Vec<Profile> {
        self.ctx.lock().profiles.to_vec()
    }

    /// One profile by id.
    pub fn profile(&self, id: &str) -> Option<Profile> {
        self.ctx.lock().profile(id).cloned()
    }

    /// One profile by email (case-insensitive).
    pub fn profile_by_email(&self, email: &str) -> Option<Profile> {
        let state = self.ctx.lock();
        state
            .profile_by_email(email)
            .map(|i| state.profiles[i].clone())
    }

    /// Creates or updates a profile as `POST /api/profile-import` would (`attributes` is the
    /// JSON:API attributes object); returns its id.
    pub fn seed_profile(&self, attributes: serde_json::Value) -> anyhow::Result<String> {
        let attributes: profiles::ProfileAttributes =
            serde_json::from_value(attributes).context("profile attributes")?;
        let (profile, _) = self
            .ctx
            .lock()
            .import_profile(None, &attributes)
            .map_err(|e| anyhow::anyhow!("seeding a profile: {}", e.detail()))?;
        Ok(profile.id)
    }

    /// A profile's consent, by profile id.
    pub fn consent(&self, profile_id: &str) -> Option<Subscriptions> {
        self.profile(profile_id).map(|p| p.subscriptions)
    }

    /// Changes consent on Klaviyo's side (a customer clicking unsubscribe, a bounce…) and
    /// queues the matching system event (`method` e.g. `"PREFERENCE_PAGE"`). Errors when the
    /// profile does not exist.
    pub fn change_consent(
        &self,
        profile_id: &str,
        channel: Channel,
        consent: ConsentState,
        method: &str,
    ) -> anyhow::Result<()> {
        self.ctx
            .lock()
            .change_consent(profile_id, channel, consent, method)
            .map_err(|e| anyhow::anyhow!("changing consent: {}", e.detail()))
    }

    /// Creates a list (6-character id, like Klaviyo's); returns its id.
    pub fn create_list(&self, name: &str) -> String {
        self.ctx.lock().create_list(name)
    }

    /// Every list.
    pub fn lists(&self) -> Vec<List> {
        self.ctx.lock().lists.clone()
    }

    /// The profile ids in a list (empty when the list does not exist).
    pub fn list_members(&self, list_id: &str) -> Vec<String> {
        self.ctx
            .lock()
            .lists
            .iter()
            .find(|l| l.id == list_id)
            .map(|l| l.members.clone())
            .unwrap_or_default()
    }

    /// Every event accepted (deduplicated ones are not stored twice).
    pub fn events(&self) -> Vec<Event> {
        self.ctx.lock().events.clone()
    }

    /// Every data source.
    pub fn data_sources(&self) -> Vec<DataSource> {
        self.ctx.lock().data_sources.clone()
    }

    /// The records written to one data source, oldest first.
    pub fn records(&self, data_source_id: &str) -> Vec<DataSourceRecord> {
        self.ctx
            .lock()
            .records
            .iter()
            .filter(|r| r.data_source_id == data_source_id)
            .cloned()
            .collect()
    }

    /// Every webhook, unmasked and with its secret (inspection only: the API never shows these).
    pub fn webhooks(&self) -> Vec<Webhook> {
        self.ctx.lock().webhooks.clone()
    }

    /// Every rate-limit decision so far (allowed or 429), oldest first.
    pub fn rate_verdicts(&self) -> Vec<RateVerdict> {
        self.ctx.lock().verdicts.clone()
    }

    /// Every bulk profile import job, oldest first, as it stands now.
    pub fn bulk_jobs(&self) -> Vec<BulkImportJob> {
        self.ctx.lock().bulk_jobs.clone()
    }

    /// One bulk profile import job by id, as it stands now.
    pub fn bulk_job(&self, id: &str) -> Option<BulkImportJob> {
        self.ctx
            .lock()
            .bulk_jobs
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }

    /// Every data-privacy deletion job received.
    pub fn deletion_jobs(&self) -> Vec<DeletionJob> {
        self.ctx.lock().deletion_jobs.clone()
    }

    // ---- System webhooks ----

    /// The system events queued by consent changes and not delivered yet.
    pub fn pending_events(&self) -> Vec<SystemEvent> {
        self.ctx.lock().outbox.clone()
    }

    /// Delivers the queued system events (see [`Self::deliver`]) and empties the queue.
    pub async fn deliver_pending(&self) -> anyhow::Result<Vec<Delivery>> {
        deliveries::deliver_pending(&self.ctx).await
    }

    /// Empties the queue without delivering (deliveries lost in an outage); returns what was
    /// lost. The events stay readable through `GET /api/events`.
    pub fn drop_pending(&self) -> Vec<SystemEvent> {
        std::mem::take(&mut self.ctx.lock().outbox)
    }

    /// Delivers `events` to every enabled webhook subscribed to any of their topics: signed,
    /// batched POSTs per webhook holding the events of its topics (at most
    /// [`deliveries::MAX_BATCH`] each). Returns each delivery with the
    /// receiver's status (or the transport error). Events not logged yet are logged, so they
    /// are readable through `GET /api/events` too.
    pub async fn deliver(&self, events: Vec<SystemEvent>) -> anyhow::Result<Vec<Delivery>> {
        deliveries::deliver(&self.ctx, events).await
    }

    /// Sends a past delivery again, byte for byte (same body, timestamp and signature), as
    /// Klaviyo's undocumented retries do; returns the receiver's status.
    pub async fn redeliver(&self, delivery: &Delivery) -> anyhow::Result<u16> {
        deliveries::post(&self.ctx.http, delivery).await
    }
}
