//! Klaviyo's rate limits: per account and per endpoint, two fixed windows (1 s burst, 60 s
//! steady) whose sizes come from the endpoint's tier. Allowed responses carry
//! `RateLimit-Limit`/`-Remaining`/`-Reset`; a refusal is 429 `throttled` with `Retry-After`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};

/// An endpoint's rate-limit tier (`klaviyo.md` §Conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// 1/s, 15/min.
    XS,
    /// 3/s, 60/min.
    S,
    /// 10/s, 150/min.
    M,
    /// 75/s, 750/min.
    L,
    /// 350/s, 3500/min.
    XL,
    /// The bulk data-source-records endpoint: 3/s, 15/min.
    BulkRecords,
}

impl Tier {
    /// (per second, per minute) at scale 1.
    pub fn limits(self) -> (u32, u32) {
        match self {
            Self::XS => (1, 15),
            Self::S => (3, 60),
            Self::M => (10, 150),
            Self::L => (75, 750),
            Self::XL => (350, 3500),
            Self::BulkRecords => (3, 15),
        }
    }
}

/// Whether and how hard the simulator rate-limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Off: every call is allowed (headers still report the nominal limits).
    pub enabled: bool,
    /// Multiplies every limit (at least 1 per window remains): `0.5` halves them, `10.0` lets
    /// fast tests through while still exercising the headers.
    pub scale: f64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            scale: 1.0,
        }
    }
}

impl RateLimits {
    fn scaled(&self, tier: Tier) -> (u32, u32) {
        let scale = |n: u32| ((f64::from(n) * self.scale).round() as u32).max(1);
        let (second, minute) = tier.limits();
        (scale(second), scale(minute))
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    used: u32,
}

impl Window {
    fn roll(&mut self, now: Instant, length: Duration) {
        if now.duration_since(self.started) >= length {
            *self = Self {
                started: now,
                used: 0,
            };
        }
    }

    /// Whole seconds until the window resets (at least 1).
    fn reset_in(&self, now: Instant, length: Duration) -> u64 {
        let left = length.saturating_sub(now.duration_since(self.started));
        left.as_millis().div_ceil(1000).max(1) as u64
    }
}

/// What the limiter decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; put these headers on the response.
    Allowed(HeaderMap),
    /// Refuse with 429 and this `Retry-After`.
    Throttled {
        /// Seconds until the exhausted window resets.
        retry_after: u64,
    },
}

/// One rate-limit decision, as the simulator logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateVerdict {
    /// `METHOD /route`, e.g. `POST /api/profile-import`.
    pub endpoint: String,
    /// When the call arrived.
    pub at: Instant,
    /// Whether it was refused with 429.
    pub throttled: bool,
}

/// The counters: one pair of windows per (account, endpoint).
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    windows: HashMap<(String, String), (Window, Window)>,
}

impl RateLimiter {
    /// Forgets every counter.
    pub fn reset(&mut self) {
        self.windows.clear();
    }

    /// Counts one call of `endpoint` (e.g. `GET /api/webhooks`) by `account`.
    pub fn check(
        &mut self,
        limits: &RateLimits,
        account: &str,
        endpoint: &str,
        tier: Tier,
        now: Instant,
    ) -> Verdict {
        let (per_second, per_minute) = limits.scaled(tier);
        let fresh = Window {
            started: now,
            used: 0,
        };
        let (second, minute) = self
            .windows
            .entry((account.to_owned(), endpoint.to_owned()))
            .or_insert((fresh, fresh));
        second.roll(now, SECOND);
        minute.roll(now, MINUTE);
        if limits.enabled {
            let mut retry_after = 0;
            if second.used >= per_second {
                retry_after = second.reset_in(now, SECOND);
            }
            if minute.used >= per_minute {
                retry_after = retry_after.max(minute.reset_in(now, MINUTE));
            }
            if retry_after > 0 {
                return Verdict::Throttled { retry_after };
            }
            second.used += 1;
            minute.used += 1;
        }
        let left_second = per_second.saturating_sub(second.used);
        let left_minute = per_minute.saturating_sub(minute.used);
        let (limit, remaining, reset) = if left_second <= left_minute {
            (per_second, left_second, second.reset_in(now, SECOND))
        } else {
            (per_minute, left_minute, minute.reset_in(now, MINUTE))
        };
        let mut headers = HeaderMap::new();
        let limit_value = format!("{limit}, {per_second};w=1, {per_minute};w=60");
        if let Ok(value) = HeaderValue::from_str(&limit_value) {
            headers.insert("ratelimit-limit", value);
        }
        headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(reset));
        Verdict::Allowed(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_window_throttles_then_recovers() {
        let mut limiter = RateLimiter::default();
        let limits = RateLimits::default();
        let t0 = Instant::now();
        let first = limiter.check(&limits, "A", "GET /api/accounts", Tier::XS, t0);
        let Verdict::Allowed(headers) = first else {
            panic!("first call throttled")
        };
        assert_eq!(headers["ratelimit-limit"], "1, 1;w=1, 15;w=60");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(
            limiter.check(&limits, "A", "GET /api/accounts", Tier::XS, t0),
            Verdict::Throttled { retry_after: 1 }
        );
        // Another endpoint and another account have their own counters.
        assert!(matches!(
            limiter.check(&limits, "A", "GET /api/webhooks", Tier::XS, t0),
            Verdict::Allowed(_)
        ));
        assert!(matches!(
            limiter.check(&limits, "B", "GET /api/accounts", Tier::XS, t0),
            Verdict::Allowed(_)
        ));
        let later = t0 + Duration::from_millis(1001);
        assert!(matches!(
            limiter.check(&limits, "A", "GET /api/accounts", Tier::XS, later),
            Verdict::Allowed(_)
        ));
    }

    #[test]
    fn minute_window_and_scale() {
        let mut limiter = RateLimiter::default();
        let limits = RateLimits {
            enabled: true,
            scale: 2.0,
        };
        let t0 = Instant::now();
        for i in 0..30 {
            let at = t0 + Duration::from_secs(i);
            assert!(matches!(
                limiter.check(&limits, "A", "e", Tier::XS, at),
                Verdict::Allowed(_)
            ));
        }
        assert_eq!(
            limiter.check(&limits, "A", "e", Tier::XS, t0 + Duration::from_secs(30)),
            Verdict::Throttled { retry_after: 30 }
        );
        let off = RateLimits {
            enabled: false,
            scale: 1.0,
        };
        assert!(matches!(
            limiter.check(&off, "A", "e", Tier::XS, t0 + Duration::from_secs(30)),
            Verdict::Allowed(_)
        ));
    }
}
