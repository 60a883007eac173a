//! The Omneo ⇄ Klaviyo extension.
//!
//! Every behaviour of the five Cloud Run functions lives in this library, organised by what the
//! code is about; each binary in `functions/` only wires these pieces together and serves its router.
//!
//! | module | concern |
//! |---|---|
//! | [`api_error`] | the one JSON error type every handler answers with |
//! | [`domain`] | small parse-don't-validate types the spec talks in (`TenantId`, `KlaviyoProfileId`, …) |
//! | [`crypto`] | AES-256-GCM sealing of secrets at rest, bound to their place, with key rotation |
//! | [`settings`] | a tenant's settings (product.md §4) |
//! | [`config`] | typed, validated configuration from the environment (product.md §9) |
//! | [`remote`] | what both clients share: the one retry policy, error classification, sending |
//! | [`queue`] | task names, typed task kinds, enqueueing: trait, in-process look-alike and Cloud Tasks |
//! | [`store`] | tenant / install / idempotency / failure records: trait, memory and Firestore |
//! | [`worker`] | the task workers' side of the queue: reading a push, settling its outcome |
//! | [`klaviyo`], [`omneo`] | typed clients of the two remote APIs |
//! | [`access`] | a tenant's Klaviyo access: token refresh, pacing, calls |
//! | [`app`] | the shared state handlers receive, built from the configuration |
//! | [`job`] | one pushed task's run for either worker: load the tenant, leases, done-markers, settle |
//! | [`receivers`] | the webhook receivers: authenticate, check the shape, enqueue, answer |
//! | [`outbound`] | the Omneo → Klaviyo worker: profile sync, deletions, metrics, data-source records, backfill chunks |
//! | [`inbound`] | the Klaviyo → Omneo worker: consent events to comms and interactions, Flow actions |
//! | [`reconcile`] | scheduling reconciliation: which tenants are due, their two tasks |
//! | [`install`] | registration, admin API, OAuth, provisioning, settings, uninstall, key rotation |
//! | [`failures`] | the failure records' admin API: list, filter, page, replay |
//! | [`backfill_api`] | the backfill admin API: start, progress, cancel |
//! | [`functions`] | one router per Cloud Run function |
//! | [`runtime`] | telemetry, serving on Cloud Run or AWS Lambda, graceful shutdown |
//!
//! Dependencies point up this table: a module uses only those listed before it, so there is no
//! import cycle.

pub mod access;
pub mod api_error;
pub mod app;
pub mod backfill_api;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod failures;
pub mod functions;
pub mod inbound;
pub mod install;
pub mod job;
pub mod klaviyo;
pub mod omneo;
pub mod outbound;
pub mod queue;
pub mod receivers;
pub mod reconcile;
pub mod remote;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod worker;

#[cfg(test)]
mod redaction_tests;
