//! Reconnect delays: exponential, capped, with jitter.
//!
//! When an instance dies, every client on it reconnects at once; jitter
//! spreads them out so the surviving instances (and HAProxy) are not hit by
//! one synchronised wave. The first retry comes quickly (within `base`) so
//! a user sees only a short blip.

use std::time::Duration;

use rand::Rng;

/// The backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry comes within this; each later one doubles.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling for retry number `attempt` (1-based): `base * 2^(attempt-1)`
    /// capped at `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// How long to wait before retry number `attempt`: the first anywhere
    /// in `[0, base]` ("full jitter"), later ones in `[ceiling/2, ceiling]`
    /// ("equal jitter"), so the wait keeps growing while still spreading.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        let floor = if attempt <= 1 { 0 } else { ceiling / 2 };
        Duration::from_millis(rng.random_range(floor..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_to_the_cap() {
        let b = Backoff::default();
        let c: Vec<u64> = (1..=9).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            c,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), b.cap);
    }

    #[test]
    fn delays_stay_in_their_window_and_vary() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let ceiling = b.ceiling(attempt);
            let floor = if attempt == 1 {
                Duration::ZERO
            } else {
                ceiling / 2
            };
            let delays: Vec<Duration> = (0..50).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d >= floor && *d <= ceiling));
            let first = delays[0];
            assert!(
                delays.iter().any(|d| *d != first),
                "attempt {attempt}: no jitter"
            );
        }
    }
}
