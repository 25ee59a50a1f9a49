//! A token bucket that keeps this client inside the server's announced
//! rate limit, so a pasted block of lines is paced instead of being
//! answered with `rate_limited` errors.

use std::time::{Duration, Instant};

/// Tokens refill continuously at `rate` per second up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket a little inside the server's limits: the server measures
    /// from its side of the network, where our sends may arrive bunched.
    pub fn inside(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let rate = (f64::from(rate_per_sec) * 0.9).max(0.5);
        let burst = f64::from(burst.saturating_sub(2).max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub fn next_token(&self, now: Instant) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        // A millisecond more so that float rounding never leaves the bucket
        // a hair short of a whole token at that moment.
        now + Duration::from_secs_f64(missing / self.rate) + Duration::from_millis(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::inside(20, 40, t0);
        let burst = (0..100).take_while(|_| b.try_take(t0)).count();
        assert_eq!(burst, 38);
        assert!(!b.try_take(t0));
        let next = b.next_token(t0);
        assert!(next > t0 && next <= t0 + Duration::from_millis(70));
        assert!(b.try_take(next));
        // One second later: 18 more (90% of 20).
        let later = next + Duration::from_secs(1);
        let n = (0..100).take_while(|_| b.try_take(later)).count();
        assert!((17..=18).contains(&n), "{n}");
    }
}
