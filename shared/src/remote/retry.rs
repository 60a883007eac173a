//! The one retry policy both clients use: backoff math and the decision to try again.

use std::time::Duration;

use rand::Rng;

/// When and how often a failed call is tried again, within one call.
///
/// The defaults follow Klaviyo's official SDKs (`0.5 · 1.5^i` s ± 50 %, capped at 60 s); tests
/// shrink `base` and the caps so they run fast.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The first backoff, before jitter.
    pub base: Duration,
    /// Growth of the backoff per retry.
    pub factor: f64,
    /// Jitter as a fraction of the backoff: 0.5 spreads each delay over ±50 %.
    pub jitter: f64,
    /// The longest backoff (after jitter).
    pub max_backoff: Duration,
    /// The longest `Retry-After` waited in-call; a longer one ends the call with
    /// [`Disposition::RetryAfter`](super::Disposition::RetryAfter) so the task is rescheduled.
    pub max_retry_after: Duration,
    /// Total time budget of one call, attempts and waits included: no wait starts that would end
    /// past it.
    pub max_elapsed: Duration,
    /// Timeout of each attempt (connect, send, and read the whole answer).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(500),
            factor: 1.5,
            jitter: 0.5,
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// What the policy needs to know about one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth retrying now (after backoff).
    Transient,
    /// A 429 that said how long to wait.
    RetryAfter(Duration),
    /// Not to be retried in-call.
    Final,
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before retry number `retry` (0 for the first retry), with random jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let unit = if self.jitter > 0.0 {
            rand::rng().random_range(-1.0..=1.0)
        } else {
            0.0
        };
        self.backoff_with(retry, unit)
    }

    /// The backoff before retry number `retry`, with the jitter given as `unit` ∈ [-1, 1]
    /// (-1 = the shortest, 1 = the longest): `min(cap, base · factor^retry · (1 + jitter · unit))`.
    pub fn backoff_with(&self, retry: u32, unit: f64) -> Duration {
        let cap = self.max_backoff.as_secs_f64();
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let raw = (self.base.as_secs_f64() * self.factor.powi(exponent)).min(cap);
        let jittered = raw * (1.0 + self.jitter * unit.clamp(-1.0, 1.0));
        Duration::try_from_secs_f64(jittered.clamp(0.0, cap)).unwrap_or(self.max_backoff)
    }

    /// How long to wait before the next attempt, or `None` to give up. `attempts` is how many
    /// were made so far (≥ 1), `elapsed` the time since the first began, `unit` the jitter.
    pub(crate) fn next_delay(
        &self,
        attempts: u32,
        elapsed: Duration,
        failure: Failure,
        unit: f64,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let backoff = self.backoff_with(attempts - 1, unit);
        let delay = match failure {
            Failure::Final => return None,
            Failure::Transient => backoff,
            // Never earlier than the remote said; a longer wait is the task layer's job.
            Failure::RetryAfter(after) if after > self.max_retry_after => return None,
            Failure::RetryAfter(after) => after.max(backoff),
        };
        (elapsed + delay <= self.max_elapsed).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn backoff_grows_like_klaviyos_sdk_and_is_capped() {
        let policy = sdk();
        assert_eq!(policy.backoff_with(0, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff_with(1, 0.0), Duration::from_millis(750));
        assert_eq!(policy.backoff_with(2, 0.0), Duration::from_millis(1125));
        assert_eq!(policy.backoff_with(30, 0.0), Duration::from_secs(60));
        assert_eq!(policy.backoff_with(u32::MAX, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_half_either_way() {
        let policy = sdk();
        assert_eq!(policy.backoff_with(0, -1.0), Duration::from_millis(250));
        assert_eq!(policy.backoff_with(0, 1.0), Duration::from_millis(750));
        // Out-of-range units are clamped, never negative.
        assert_eq!(policy.backoff_with(0, -7.0), Duration::from_millis(250));
        for _ in 0..200 {
            let delay = policy.backoff(1);
            assert!(delay >= Duration::from_millis(375) && delay <= Duration::from_millis(1125));
        }
    }

    #[test]
    fn jitter_never_exceeds_the_cap() {
        let policy = RetryPolicy {
            max_backoff: Duration::from_secs(2),
            ..sdk()
        };
        assert_eq!(policy.backoff_with(10, 1.0), Duration::from_secs(2));
        assert_eq!(policy.backoff_with(10, -1.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_never_shortened_and_long_ones_end_the_call() {
        let policy = sdk();
        let zero = Duration::ZERO;
        let after = Failure::RetryAfter(Duration::from_secs(3));
        assert_eq!(
            policy.next_delay(1, zero, after, 0.0),
            Some(Duration::from_secs(3))
        );
        // A backoff longer than the Retry-After wins (never earlier than it says).
        let short = Failure::RetryAfter(Duration::from_millis(100));
        assert_eq!(
            policy.next_delay(1, zero, short, 0.0),
            Some(Duration::from_millis(500))
        );
        let long = Failure::RetryAfter(Duration::from_secs(61));
        assert_eq!(policy.next_delay(1, zero, long, 0.0), None);
    }

    #[test]
    fn attempts_and_total_time_bound_the_retries() {
        let policy = RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
            ..sdk()
        };
        let t = Failure::Transient;
        assert!(policy.next_delay(1, Duration::ZERO, t, 0.0).is_some());
        assert!(policy.next_delay(2, Duration::ZERO, t, 0.0).is_some());
        assert_eq!(policy.next_delay(3, Duration::ZERO, t, 0.0), None);
        // 9.6 s spent + 0.5 s backoff would end past the 10 s budget.
        assert_eq!(
            policy.next_delay(1, Duration::from_millis(9600), t, 0.0),
            None
        );
        assert_eq!(
            policy.next_delay(1, Duration::from_millis(9500), t, 0.0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            policy.next_delay(1, Duration::ZERO, Failure::Final, 0.0),
            None
        );
        assert_eq!(
            RetryPolicy::no_retries().next_delay(1, Duration::ZERO, t, 0.0),
            None
        );
    }
}
