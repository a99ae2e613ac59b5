//! Per-connection rate limits: token buckets for channel creations by `sub` ops
//! (`max_channel_creates_per_conn` per second, `channel_creates_burst` at once) and for
//! client publishes (`client_publish_rate`, `client_publish_burst`). A connection has
//! buckets only while one of them is below its burst (the table holds the connections
//! that used some lately), and it counts its refusals: past
//! [`crate::limits::REFUSALS_BEFORE_CLOSE`] the worker closes it.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::Config;
use crate::limits::{LIMITER_SWEEP, REFUSALS_BEFORE_CLOSE};

/// A token bucket: `rate` per second, at most `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Takes one; false when the bucket is empty.
    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Instant, rate: f64, burst: u32) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * rate >= f64::from(burst)
    }
}

/// What a rate limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Channels created by `sub` ops.
    Creates,
    /// Client publishes.
    Publishes,
}

/// A connection's buckets.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    creates: Bucket,
    pubs: Bucket,
    refused: u32,
}

impl Buckets {
    fn of(&mut self, limit: Limit) -> &mut Bucket {
        match limit {
            Limit::Creates => &mut self.creates,
            Limit::Publishes => &mut self.pubs,
        }
    }
}

/// The buckets of a worker's connections, by slot.
#[derive(Debug)]
pub struct Limiters {
    map: HashMap<usize, Buckets>,
    creates: (f64, u32),
    pubs: (f64, u32),
    sweep_at: Instant,
}

impl Limiters {
    /// Empty, with the rates and bursts of `cfg`.
    pub fn new(cfg: &Config, now: Instant) -> Limiters {
        Limiters {
            map: HashMap::new(),
            creates: (cfg.max_channel_creates_per_conn, cfg.channel_creates_burst),
            pubs: (cfg.client_publish_rate, cfg.client_publish_burst),
            sweep_at: now,
        }
    }

    fn params(&self, limit: Limit) -> (f64, u32) {
        match limit {
            Limit::Creates => self.creates,
            Limit::Publishes => self.pubs,
        }
    }

    /// True when `slot` may do one more of `limit` now (nothing is taken).
    pub fn available(&mut self, slot: usize, limit: Limit, now: Instant) -> bool {
        let (rate, burst) = self.params(limit);
        let Some(b) = self.map.get_mut(&slot) else {
            return true;
        };
        let bucket = b.of(limit);
        bucket.refill(now, rate, burst);
        bucket.tokens >= 1.0
    }

    /// Takes one of `limit` for `slot`; false when its bucket is empty.
    pub fn take(&mut self, slot: usize, limit: Limit, now: Instant) -> bool {
        let (rate, burst) = self.params(limit);
        let (cb, pb) = (self.creates.1, self.pubs.1);
        let b = self.map.entry(slot).or_insert_with(|| Buckets {
            creates: Bucket::full(cb, now),
            pubs: Bucket::full(pb, now),
            refused: 0,
        });
        b.of(limit).take(now, rate, burst)
    }

    /// Counts a refusal of `slot`; true when it has gone past the bound (to be closed).
    pub fn refuse(&mut self, slot: usize, now: Instant) -> bool {
        if !self.map.contains_key(&slot) {
            self.take(slot, Limit::Creates, now);
        }
        let b = self.map.get_mut(&slot).expect("inserted above");
        b.refused += 1;
        b.refused > REFUSALS_BEFORE_CLOSE
    }

    /// Forgets a connection (closed).
    pub fn remove(&mut self, slot: usize) {
        self.map.remove(&slot);
    }

    /// Drops the buckets that are back to full (every [`LIMITER_SWEEP`]).
    pub fn sweep(&mut self, now: Instant) {
        if self.map.is_empty() || now < self.sweep_at {
            return;
        }
        self.sweep_at = now + LIMITER_SWEEP;
        let ((cr, cb), (pr, pb)) = (self.creates, self.pubs);
        self.map
            .retain(|_, b| !(b.creates.is_full(now, cr, cb) && b.pubs.is_full(now, pr, pb)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn buckets_refill_at_their_rate_up_to_their_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!(b.take(t0, 2.0, 3) && b.take(t0, 2.0, 3) && b.take(t0, 2.0, 3));
        assert!(!b.take(t0, 2.0, 3), "empty");
        let later = t0 + Duration::from_millis(500);
        assert!(b.take(later, 2.0, 3), "one back after half a second at 2/s");
        assert!(!b.take(later, 2.0, 3));
        assert!(!b.is_full(later, 2.0, 3));
        assert!(b.is_full(later + Duration::from_secs(2), 2.0, 3));
    }

    #[test]
    fn refusals_past_the_bound_close_and_full_buckets_are_dropped() {
        let cfg = Config {
            client_publish_burst: 1,
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut l = Limiters::new(&cfg, t0);
        assert!(l.take(1, Limit::Publishes, t0));
        assert!(!l.take(1, Limit::Publishes, t0));
        assert!(!l.available(1, Limit::Publishes, t0));
        assert!(l.available(2, Limit::Publishes, t0), "another connection");
        for _ in 0..REFUSALS_BEFORE_CLOSE {
            assert!(!l.refuse(1, t0));
        }
        assert!(l.refuse(1, t0));
        l.sweep(t0 + Duration::from_secs(60));
        assert!(l.map.is_empty());
    }
}
