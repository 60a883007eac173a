//! Klaviyo: the typed REST client and its JSON:API models (klaviyo.md).

mod client;
pub mod models;
pub mod oauth;

pub use client::KlaviyoClient;
