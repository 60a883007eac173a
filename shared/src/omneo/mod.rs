//! Omneo: the typed client of the tenant's Admin and ID APIs, and its models (omneo.md).

mod client;
pub mod models;

pub use client::OmneoClient;
