//! The simulated account's data, behind one lock (never held across an `.await`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::Rng as _;
use rand::distr::Alphanumeric;

use super::KlaviyoSimOptions;
use super::bulk::BulkImportJob;
use super::data_sources::{DataSource, DataSourceRecord};
use super::deliveries::SystemEvent;
use super::event_log::EventLog;
use super::events::{DeletionJob, Event};
use super::oauth::OAuthState;
use super::profile_index::Profiles;
use super::rate_limit::{RateLimiter, RateVerdict};
use super::subscriptions::List;
use super::webhooks::Webhook;

/// Everything the account holds.
pub(crate) struct State {
    pub options: KlaviyoSimOptions,
    pub oauth: OAuthState,
    pub limiter: RateLimiter,
    /// Every rate-limit verdict, in order (what the quota benchmark reads).
    pub verdicts: Vec<RateVerdict>,
    /// The profiles, indexed by their identifiers.
    pub profiles: Profiles,
    pub lists: Vec<List>,
    pub events: Vec<Event>,
    pub data_sources: Vec<DataSource>,
    pub records: Vec<DataSourceRecord>,
    pub webhooks: Vec<Webhook>,
    pub deletion_jobs: Vec<DeletionJob>,
    /// Bulk profile import jobs, oldest first.
    pub bulk_jobs: Vec<BulkImportJob>,
    /// System events waiting to be delivered.
    pub outbox: Vec<SystemEvent>,
    /// Every system event, delivered or not, kept (what `GET /api/events` reads).
    pub event_log: EventLog,
}

impl State {
    pub fn new(options: KlaviyoSimOptions) -> Self {
        Self {
            oauth: OAuthState::new(&options),
            options,
            limiter: RateLimiter::default(),
            verdicts: Vec::new(),
            profiles: Profiles::default(),
            lists: Vec::new(),
            events: Vec::new(),
            data_sources: Vec::new(),
            records: Vec::new(),
            webhooks: Vec::new(),
            deletion_jobs: Vec::new(),
            bulk_jobs: Vec::new(),
            outbox: Vec::new(),
            event_log: EventLog::default(),
        }
    }
}

/// What every handler holds: the state and an HTTP client for deliveries.
#[derive(Clone)]
pub(crate) struct Ctx {
    state: Arc<Mutex<State>>,
    pub http: reqwest::Client,
}

impl Ctx {
    pub fn new(state: State, http: reqwest::Client) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            http,
        }
    }

    /// The state, with the bulk import jobs brought up to now: whoever looks (an API call, an
    /// inspection, a control route) sees the profiles they have processed so far.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler must not take the whole simulator down with a poisoned lock.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.advance_bulk_jobs(Instant::now());
        state
    }
}

/// A 26-character ULID, as Klaviyo uses for profiles, data sources, webhooks and events.
pub(crate) fn ulid() -> String {
    ulid::Ulid::new().to_string()
}

/// `len` random alphanumeric characters (list ids are 6, tokens longer).
pub(crate) fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
