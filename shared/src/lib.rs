//! The Omneo ⇄ Klaviyo extension.
//!
//! Every behaviour of the five Cloud Run functions lives in this library, organised by what the
//! code is about; each binary in `functions/` only wires these pieces together and serves its router.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | typed, validated configuration from the environment (product.md §9) |
//! | [`runtime`] | telemetry, serving on Cloud Run or AWS Lambda, graceful shutdown |
//! | [`api_error`] | the one JSON error type every handler answers with |
//! | [`domain`] | small parse-don't-validate types shared by everything (`TenantId`, …) |
//! | [`crypto`] | AES-256-GCM sealing of secrets at rest, with key rotation |
//! | [`store`] | tenant / install / idempotency / failure records: trait, memory and Firestore |
//! | [`queue`] | task enqueueing: trait, in-process look-alike and Cloud Tasks; the task handlers' side |
//! | [`remote`] | what both clients share: the one retry policy, error classification, sending |
//! | [`klaviyo`], [`omneo`] | typed clients of the two remote APIs |
//! | [`settings`] | a tenant's settings (product.md §4) |
//! | [`install`] | registration, admin API, OAuth, provisioning, settings, uninstall, tokens |
//! | [`app`] | the shared state handlers receive, built from the configuration |
//! | [`functions`] | one router per Cloud Run function |

pub mod api_error;
pub mod app;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod functions;
pub mod install;
pub mod klaviyo;
pub mod omneo;
pub mod queue;
pub mod remote;
pub mod runtime;
pub mod settings;
pub mod store;
