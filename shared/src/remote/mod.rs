//! What the Klaviyo and Omneo clients share: the one retry policy, the error classification
//! workers act on, and the request-sending loop.
//!
//! # The retry policy
//! [`RetryPolicy`] retries, within one call, what a remote answers when it is briefly unable:
//! 429 (after its `Retry-After`, never earlier), 408, 409, 5xx, timeouts and connection errors, with
//! exponential backoff and jitter (Klaviyo's SDKs: `0.5 · 1.5^i` s ± 50 %, capped at 60 s), bounded
//! by a number of attempts and a total time. When it gives up, the caller gets the classified
//! [`RemoteError`]; [`RemoteError::disposition`] tells the worker what to do (product.md §8):
//! retry the task, reschedule it after a `Retry-After`, park it as a failure, or re-authorise.
//!
//! # Which requests are retried blindly
//! Neither API offers an `Idempotency-Key`. A request whose answer was lost (a timeout, a dropped
//! connection, a 5xx from a gateway) may still have been processed, so repeating it is safe only
//! where the API makes a repeat harmless. Each call declares its [`Idempotency`]:
//! - [`Idempotency::Safe`] — repeating the request cannot do harm: every `GET`, `PUT`, `PATCH` and
//!   `DELETE`; Klaviyo's profile import (an upsert), subscription bulk jobs (they set a state),
//!   events that carry a `unique_id` (Klaviyo dedupes them per profile and metric), data-source
//!   records (each carries a stable `id`), data-privacy deletions; Omneo's `search-id` (a read) and
//!   ID-token minting (a second token is harmless).
//! - [`Idempotency::Unsafe`] — a repeat may create a second thing: Klaviyo data sources and
//!   webhooks (a duplicate title or an eleventh webhook), events without `unique_id`; Omneo
//!   interactions, rewards and benefits (a second reward is real money), webhooks and identities.
//!   These are retried in-call only when the remote certainly did **not** process them: a 429
//!   (rejected before processing) or a connection that was never established. Anything else comes
//!   back to the caller as retryable, with [`RemoteError::may_have_been_processed`] set when the
//!   outcome is unknown, so the task layer can look before it repeats (e.g. list webhooks before
//!   creating one, or find a reward by its `external_id`).

mod error;
mod retry;
mod send;

pub use error::{Disposition, ErrorKind, Problem, RemoteError, Service};
pub use retry::RetryPolicy;
pub(crate) use send::{Answer, Remote, bearer, endpoint, found};
pub use send::{Idempotency, MAX_ANSWER_BYTES, ReadError, read_capped};
