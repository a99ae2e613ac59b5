//! Stream epochs: the short id a channel's message stream gets when it starts.
//!
//! A channel's seq numbers count from 1 within an epoch and never repeat in it. A new
//! epoch starts when a stream starts again from nothing: a new process in memory mode, a
//! channel created again after a close or a reclaim, a Redis that lost the channel (in a
//! cluster the epoch lives in Redis beside the seq). Clients carry the epoch in their
//! cursors (`12@k3x9ab2q`, see `protocol::cursor`), so a cursor of another stream is
//! recognised and answered with a `reset` instead of silence.
//!
//! An epoch is stored inline (16 bytes, `Copy`): [`EPOCH_LEN`] characters of `0-9 a-z`
//! from 41 random bits when made here, up to 16 when it comes from a client. The
//! all-zero value is [`Epoch::NONE`]: not known (a cluster node that has not yet learned a
//! channel's epoch from Redis, or a cursor without one).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::cursor::{is_valid_epoch, MAX_EPOCH_LEN};

/// Characters in the epochs this server makes.
pub const EPOCH_LEN: usize = 8;

/// A stream's epoch, or [`Epoch::NONE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epoch([u8; MAX_EPOCH_LEN]);

impl Epoch {
    /// Not known.
    pub const NONE: Epoch = Epoch([0; MAX_EPOCH_LEN]);

    /// A fresh random epoch.
    pub fn new() -> Epoch {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut n = next_random();
        let mut out = [0u8; MAX_EPOCH_LEN];
        for b in out.iter_mut().take(EPOCH_LEN) {
            *b = DIGITS[(n % 36) as usize];
            n /= 36;
        }
        Epoch(out)
    }

    /// An epoch from its text; `None` unless it is 1-16 characters of `0-9 a-z`.
    pub fn parse(s: &str) -> Option<Epoch> {
        if !is_valid_epoch(s) {
            return None;
        }
        let mut out = [0u8; MAX_EPOCH_LEN];
        out[..s.len()].copy_from_slice(s.as_bytes());
        Some(Epoch(out))
    }

    /// The text ("" for [`Epoch::NONE`]).
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(MAX_EPOCH_LEN);
        std::str::from_utf8(&self.0[..len]).expect("epochs are ASCII")
    }

    /// True for [`Epoch::NONE`].
    pub fn is_none(&self) -> bool {
        self.0[0] == 0
    }

    /// True when known.
    pub fn is_some(&self) -> bool {
        !self.is_none()
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            f.write_str("Epoch(none)")
        } else {
            write!(f, "Epoch({})", self.as_str())
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// splitmix64 over the clock, the process id and a counter: epochs of two processes
/// started in the same nanosecond, or made in a tight loop, still differ.
fn next_random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = t ^ (u64::from(std::process::id()) << 40) ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fresh_epochs_are_valid_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let e = Epoch::new();
            assert_eq!(e.as_str().len(), EPOCH_LEN);
            assert!(is_valid_epoch(e.as_str()), "{e:?}");
            assert!(seen.insert(e), "repeated {e:?}");
        }
    }

    #[test]
    fn parse_and_none() {
        assert_eq!(Epoch::parse("k3x9ab2q").unwrap().as_str(), "k3x9ab2q");
        assert_eq!(Epoch::parse("a").unwrap().as_str(), "a");
        assert_eq!(Epoch::parse(&"z".repeat(16)).unwrap().as_str().len(), 16);
        for bad in ["", "A", "a-b", &"z".repeat(17)] {
            assert!(Epoch::parse(bad).is_none(), "{bad}");
        }
        assert!(Epoch::NONE.is_none());
        assert_eq!(Epoch::NONE.as_str(), "");
        assert!(Epoch::new().is_some());
        assert_eq!(Epoch::default(), Epoch::NONE);
    }
}
