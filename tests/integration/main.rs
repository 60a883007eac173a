//! The integration tests: one binary, one module per area.

mod backfill;
mod browser;
mod clients;
mod container;
mod failures;
mod fuzz_corpus;
mod hostile;
mod inbound;
mod infra;
mod install;
mod klaviyo_sdk;
mod klaviyo_sim;
mod load;
mod local_stack;
mod omneo_sim;
mod openapi;
mod outbound;
mod pipeline;
mod queue;
mod runtime;
mod soak;
mod store;
mod support;
