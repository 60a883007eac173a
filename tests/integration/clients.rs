//! The typed clients (`shared::omneo`, `shared::klaviyo`) against the simulators over real
//! sockets: every call round-trips, and the retry policy meets injected faults and real rate
//! limits. What the remote received is checked through the simulator's recorder and state.

mod http_policy;
mod klaviyo;
mod omneo;

use std::time::Duration;

use shared::remote::RetryPolicy;

/// The retry policy with tiny backoffs, so retries take milliseconds; `Retry-After` up to 5 s is
/// still waited in-call (the tests that need it use 1 s).
fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(10),
        factor: 2.0,
        jitter: 0.5,
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(20),
    }
}

/// An HTTP client for talking to the loopback simulators.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}
