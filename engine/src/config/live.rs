//! The keys that can change while the server runs (`config set` on the control socket):
//! [`LIVE_KEYS`], and [`Live`], their values as atomics that the workers read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::Config;
use crate::log::{self, Level};

/// Keys that `config set` may change while the server runs.
pub const LIVE_KEYS: &[&str] = &[
    "heartbeat_secs",
    "pong_timeout_secs",
    "idle_timeout_secs",
    "poll_timeout_secs",
    "handshake_timeout_secs",
    "max_connections",
    "max_message_bytes",
    "history_size",
    "slow_consumer_bytes",
    "log_level",
    "accept_pause_ms",
];

/// The keys that can change while the server runs, read by the workers on every use.
#[derive(Debug)]
pub struct Live {
    heartbeat_ms: AtomicU64,
    pong_timeout_ms: AtomicU64,
    idle_timeout_ms: AtomicU64,
    poll_timeout_ms: AtomicU64,
    handshake_timeout_ms: AtomicU64,
    accept_pause_ms: AtomicU64,
    max_connections: AtomicUsize,
    max_message_bytes: AtomicUsize,
    history_size: AtomicUsize,
    slow_consumer_bytes: AtomicUsize,
}

fn ms(v: f64) -> u64 {
    (v * 1000.0).round().max(1.0) as u64
}

impl Live {
    /// Live values from a configuration.
    pub fn new(cfg: &Config) -> Live {
        let live = Live {
            heartbeat_ms: AtomicU64::new(0),
            pong_timeout_ms: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            poll_timeout_ms: AtomicU64::new(0),
            handshake_timeout_ms: AtomicU64::new(0),
            accept_pause_ms: AtomicU64::new(0),
            max_connections: AtomicUsize::new(0),
            max_message_bytes: AtomicUsize::new(0),
            history_size: AtomicUsize::new(0),
            slow_consumer_bytes: AtomicUsize::new(0),
        };
        live.apply(cfg);
        live
    }

    /// Publishes every live key of `cfg`.
    pub fn apply(&self, cfg: &Config) {
        let r = Ordering::Relaxed;
        self.heartbeat_ms.store(ms(cfg.heartbeat_secs), r);
        self.pong_timeout_ms.store(ms(cfg.pong_timeout_secs), r);
        self.idle_timeout_ms.store(ms(cfg.idle_timeout_secs), r);
        self.poll_timeout_ms.store(ms(cfg.poll_timeout_secs), r);
        self.handshake_timeout_ms
            .store(ms(cfg.handshake_timeout_secs), r);
        self.accept_pause_ms.store(cfg.accept_pause_ms, r);
        self.max_connections.store(cfg.max_connections, r);
        self.max_message_bytes.store(cfg.max_message_bytes, r);
        self.history_size.store(cfg.history_size, r);
        self.slow_consumer_bytes.store(cfg.slow_consumer_bytes, r);
        if let Some(level) = Level::parse(&cfg.log_level) {
            log::set_level(level);
        }
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }
    /// Pong timeout.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(self.pong_timeout_ms.load(Ordering::Relaxed))
    }
    /// Keep-alive idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }
    /// Long-poll timeout.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_millis(self.poll_timeout_ms.load(Ordering::Relaxed))
    }
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.load(Ordering::Relaxed))
    }
    /// Accept pause after EMFILE.
    pub fn accept_pause(&self) -> Duration {
        Duration::from_millis(self.accept_pause_ms.load(Ordering::Relaxed))
    }
    /// Connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
    /// Message size cap.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.load(Ordering::Relaxed)
    }
    /// History ring size.
    pub fn history_size(&self) -> usize {
        self.history_size.load(Ordering::Relaxed)
    }
    /// Slow-consumer cap.
    pub fn slow_consumer_bytes(&self) -> usize {
        self.slow_consumer_bytes.load(Ordering::Relaxed)
    }
}
