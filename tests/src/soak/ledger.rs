//! What the soak's generators did — the oracle's input: each customer's expected final state,
//! every Klaviyo event and Flow call sent, and the totals the report prints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

/// A customer of a soak tenant, synced before the faults start: both ids and the email.
#[derive(Debug, Clone)]
pub struct Customer {
    /// Index of its tenant in `System::tenants`.
    pub tenant: usize,
    /// Its tenant's id.
    pub tenant_id: String,
    /// The Omneo profile id (the Klaviyo profile's `external_id`).
    pub omneo_id: String,
    /// The Klaviyo profile id.
    pub klaviyo_id: String,
}

/// What a customer must look like at the end, on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The first name of the last Omneo edit (or the seeded one).
    pub first_name: Option<String>,
    /// Email marketing: subscribed or not, after the last change made in Klaviyo.
    pub email: bool,
    /// SMS marketing, likewise.
    pub sms: bool,
}

/// The generators' record; one lock, held briefly.
#[derive(Default)]
pub struct Ledger(Mutex<Book>);

/// The ledger's contents.
#[derive(Default)]
pub struct Book {
    /// Each customer's expected final state, by index into the customers.
    pub expected: Vec<Expected>,
    /// When each customer's consent last changed in Klaviyo.
    pub consent_changed_at: Vec<Option<Instant>>,
    /// Klaviyo event ids of customers' own consent changes (echoes of ours excluded), by tenant.
    pub consent_events: BTreeMap<usize, BTreeSet<String>>,
    /// Flow reward `idempotency_key`s sent, by customer index.
    pub rewards: BTreeMap<usize, BTreeSet<String>>,
    /// Metric target calls sent: the `soak_metric` property of each.
    pub metrics: BTreeSet<u64>,
    /// The totals of what was sent.
    pub sent: Sent,
}

/// Totals of what the generators sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Omneo profile edits (each fires `profile.updated`).
    pub omneo_changes: u64,
    /// Consent changes made in Klaviyo.
    pub consent_changes: u64,
    /// Klaviyo system events delivered, duplicates and echoes included, counted per webhook.
    pub events_delivered: u64,
    /// Events delivered again in a later batch (duplicates), counted per event.
    pub duplicated_events: u64,
    /// Events held back and delivered after newer ones.
    pub reordered_events: u64,
    /// System-webhook POSTs (one per batch and webhook).
    pub deliveries: u64,
    /// Deliveries sent again because they were not answered 202.
    pub redeliveries: u64,
    /// Flow reward calls, repeats included.
    pub reward_calls: u64,
    /// Omneo metric target calls, repeats included.
    pub metric_calls: u64,
}

impl Ledger {
    /// A ledger for `customers`, each expected as it was seeded.
    pub fn new(initial: Vec<Expected>) -> Self {
        let count = initial.len();
        Self(Mutex::new(Book {
            expected: initial,
            consent_changed_at: vec![None; count],
            ..Book::default()
        }))
    }

    /// The book, locked.
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
