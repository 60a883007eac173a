//! Klaviyo: the typed REST client and its JSON:API models (klaviyo.md): the calls of the sync,
//! the bulk profile import of the backfill, and the metrics and events reconciliation reads
//! (the same event model a system-webhook delivery carries).

mod client;
pub mod models;
pub mod oauth;

pub use client::KlaviyoClient;
