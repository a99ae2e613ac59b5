//! Pacing: the token bucket that limits new connections per second and, in storm runs,
//! purposeful closes per second.

use std::time::{Duration, Instant};

/// A token bucket: `rate` per second, bursts of `burst`.
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket of `rate` tokens per second (0 or less: no limit).
    pub(super) fn new(rate: f64, now: Instant) -> Self {
        let burst = (rate / 100.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst.min(1.0),
            at: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Time until the next token.
    pub(super) fn wait(&self) -> Duration {
        if self.unlimited() || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, t0);
        let mut n = 0;
        for ms in 0..=100 {
            let now = t0 + Duration::from_millis(ms);
            while b.take(now) {
                n += 1;
            }
        }
        assert!((95..=112).contains(&n), "{n}");
        let mut u = Bucket::new(0.0, t0);
        assert!((0..1000).all(|_| u.take(t0)));
    }
}
