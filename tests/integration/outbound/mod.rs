//! Omneo → Klaviyo end to end, over real sockets: the simulated Omneo delivers a signed webhook
//! (or a target call) → `omneo-webhook` → the local queue → `outbound-task` → the simulated
//! Klaviyo (and Omneo, for identities and ID tokens).

mod faults;
mod receiver;
mod sync;
mod targets;
