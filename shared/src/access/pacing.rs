//! Spacing Klaviyo calls within one run under the account's per-endpoint rate limits
//! (klaviyo.md "Rate limits"): a run of many calls to one endpoint class (provisioning's
//! webhooks, 1 request/s) waits its turn instead of collecting 429s.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A Klaviyo rate-limit class (klaviyo.md's tiers of the endpoints that are called in runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// `/api/webhooks…`: tier XS, 1 request/s.
    Webhooks,
    /// `/api/data-sources…`: tier S, 3 requests/s.
    DataSources,
}

impl RateClass {
    /// The spacing between two calls: the tier's interval plus 10 % so that latency jitter does
    /// not land two calls in one of Klaviyo's fixed 1-second windows.
    fn spacing(self) -> Duration {
        match self {
            Self::Webhooks => Duration::from_millis(1100),
            Self::DataSources => Duration::from_millis(370),
        }
    }
}

/// Spaces Klaviyo calls per [`RateClass`] within one run.
#[derive(Debug, Default)]
pub struct Pacer {
    next: Mutex<HashMap<RateClass, Instant>>,
}

impl Pacer {
    /// Reserves the next slot of `class` now; the returned future waits for it.
    pub fn turn(&self, class: RateClass) -> tokio::time::Sleep {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = next.get(&class).copied().unwrap_or(now).max(now);
        next.insert(class, slot + class.spacing());
        tokio::time::sleep_until(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn turns_of_one_class_are_spaced_and_classes_are_independent() {
        let pacer = Pacer::default();
        let start = Instant::now();
        pacer.turn(RateClass::Webhooks).await;
        pacer.turn(RateClass::DataSources).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "first turns of each class are immediate"
        );
        pacer.turn(RateClass::Webhooks).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1100));
        let third = pacer.turn(RateClass::Webhooks);
        pacer.turn(RateClass::DataSources).await;
        third.await;
        assert_eq!(start.elapsed(), Duration::from_millis(2200));
    }
}
