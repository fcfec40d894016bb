//! A token bucket on the coarse clock: no syscall per frame.

use crate::clock;

/// Refills `rate` tokens per second up to `burst`; each frame takes its cost.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last_ms: clock::now_millis(),
        }
    }

    /// Takes `cost` tokens; false when there are not enough.
    pub(crate) fn take(&mut self, cost: f64) -> bool {
        let now = clock::now_millis();
        let elapsed = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}
