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
        self.take_at(cost, clock::now_millis())
    }

    /// [`TokenBucket::take`] at `now` (milliseconds on the coarse clock).
    fn take_at(&mut self, cost: f64, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;

    fn bucket(rate: u32, burst: u32) -> TokenBucket {
        let mut bucket = TokenBucket::new(rate, burst);
        bucket.last_ms = 1_000;
        bucket
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let mut bucket = bucket(10, 5);
        for taken in 0..5 {
            assert!(bucket.take_at(1.0, 1_000), "token {taken} of the burst");
        }
        assert!(!bucket.take_at(1.0, 1_000), "the burst is spent");
        // 10 per second: one more every 100 ms, never more than the burst.
        assert!(!bucket.take_at(1.0, 1_050));
        assert!(bucket.take_at(1.0, 1_100));
        assert!(!bucket.take_at(1.0, 1_100));
        assert!(bucket.take_at(5.0, 60_000), "refilled to the burst");
        assert!(!bucket.take_at(1.0, 60_000), "and not beyond it");
    }

    #[test]
    fn a_cost_counts_in_tokens_and_a_clock_going_back_gives_nothing() {
        let mut bucket = bucket(1_000, 1_000);
        assert!(bucket.take_at(600.0, 1_000));
        assert!(!bucket.take_at(600.0, 1_000), "400 left");
        assert!(
            !bucket.take_at(600.0, 500),
            "time never runs backwards for a bucket"
        );
        assert!(bucket.take_at(600.0, 1_200), "400 + 200 ms at 1,000/s");
    }
}
