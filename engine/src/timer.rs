//! A hashed timing wheel: O(1) insert and cancel, one per worker.
//!
//! Time is cut into ticks of [`TICK`]; a deadline goes into slot `tick % TIMER_SLOTS`, in a
//! doubly linked list threaded through a flat entry table (24 bytes per timer, no
//! allocation per insert once the table has grown). [`TimerWheel::advance`] walks the
//! slots between the last tick and now and fires the entries whose tick has come; entries
//! further than one revolution away stay in their slot until their round.
//!
//! The wheel never reads the clock: callers pass `now`, which lets the tests drive it with
//! simulated time (see the tests at the bottom).
//!
//! Heartbeats are jittered with [`jitter`] so that a million connections accepted in the
//! same second do not all ping in the same tick.

use crate::limits::{TICK, TIMER_SLOTS};
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// Handle of a scheduled timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u32);

impl TimerId {
    /// "No timer", for records that store an id inline.
    pub const NONE: TimerId = TimerId(NIL);

    /// True for [`TimerId::NONE`].
    pub fn is_none(self) -> bool {
        self.0 == NIL
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Tick at which the timer fires; for a free entry, unused.
    tick: u64,
    /// What the caller stored (a connection token); the top byte is free for a tag.
    key: u64,
    prev: u32,
    /// Next in the slot list, or next free entry.
    next: u32,
}

/// The wheel.
#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    /// Last tick processed by `advance`.
    current: u64,
    slots: Box<[u32]>,
    entries: Vec<Entry>,
    free: u32,
    len: usize,
}

impl TimerWheel {
    /// An empty wheel whose tick 0 is `origin`.
    pub fn new(origin: Instant) -> Self {
        TimerWheel {
            origin,
            current: 0,
            slots: vec![NIL; TIMER_SLOTS].into_boxed_slice(),
            entries: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    /// Number of scheduled timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the wheel's tables (for memory accounting).
    pub fn memory(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + TIMER_SLOTS * 4
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin);
        // Round up: a timer never fires before its deadline.
        d.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    /// Schedules `key` to fire at `deadline` (at the earliest on the next tick).
    pub fn insert(&mut self, deadline: Instant, key: u64) -> TimerId {
        let tick = self.tick_of(deadline).max(self.current + 1);
        let idx = if self.free != NIL {
            let i = self.free;
            self.free = self.entries[i as usize].next;
            i
        } else {
            assert!(
                self.entries.len() < NIL as usize,
                "timer table exceeds u32 entries"
            );
            self.entries.push(Entry {
                tick: 0,
                key: 0,
                prev: NIL,
                next: NIL,
            });
            (self.entries.len() - 1) as u32
        };
        let slot = (tick as usize) & (TIMER_SLOTS - 1);
        let head = self.slots[slot];
        self.entries[idx as usize] = Entry {
            tick,
            key,
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.entries[head as usize].prev = idx;
        }
        self.slots[slot] = idx;
        self.len += 1;
        TimerId(idx)
    }

    /// When a scheduled timer fires (rounded up to its tick); `None` for
    /// [`TimerId::NONE`]. A hot handover carries the time left to the next process.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        if id.is_none() {
            return None;
        }
        let tick = self.entries.get(id.0 as usize)?.tick;
        let nanos = u64::try_from(TICK.as_nanos()).unwrap_or(u64::MAX);
        Some(self.origin + Duration::from_nanos(tick.saturating_mul(nanos)))
    }

    /// Cancels a timer. Cancelling [`TimerId::NONE`] does nothing. The id must be one that
    /// is still scheduled (not fired, not cancelled).
    pub fn cancel(&mut self, id: TimerId) {
        if id.is_none() {
            return;
        }
        self.unlink(id.0);
        self.release(id.0);
    }

    /// Replaces timer `id` (if any) with one at `deadline`; returns the new id.
    pub fn reschedule(&mut self, id: TimerId, deadline: Instant, key: u64) -> TimerId {
        self.cancel(id);
        self.insert(deadline, key)
    }

    fn unlink(&mut self, idx: u32) {
        let e = self.entries[idx as usize];
        if e.prev != NIL {
            self.entries[e.prev as usize].next = e.next;
        } else {
            let slot = (e.tick as usize) & (TIMER_SLOTS - 1);
            debug_assert_eq!(self.slots[slot], idx, "list head must be this entry");
            self.slots[slot] = e.next;
        }
        if e.next != NIL {
            self.entries[e.next as usize].prev = e.prev;
        }
    }

    fn release(&mut self, idx: u32) {
        self.entries[idx as usize] = Entry {
            tick: 0,
            key: 0,
            prev: NIL,
            next: self.free,
        };
        self.free = idx;
        self.len -= 1;
    }

    /// Fires every timer due at `now`, pushing `(id, key)` to `fired` in no particular
    /// order. The ids are free again once returned.
    pub fn advance(&mut self, now: Instant, fired: &mut Vec<(TimerId, u64)>) {
        let target = self.tick_of(now).saturating_sub(1).max(self.current);
        // Ticks strictly before `now` are due; walk at most one revolution of slots.
        let steps = (target - self.current).min(TIMER_SLOTS as u64);
        for step in 1..=steps {
            let tick = self.current + step;
            let slot = (tick as usize) & (TIMER_SLOTS - 1);
            let mut idx = self.slots[slot];
            while idx != NIL {
                let e = self.entries[idx as usize];
                if e.tick <= target {
                    self.unlink(idx);
                    self.release(idx);
                    fired.push((TimerId(idx), e.key));
                }
                idx = e.next;
            }
        }
        self.current = target;
    }

    /// How long the reactor may sleep: until just past the next tick boundary when
    /// timers are pending, `None` when the wheel is empty.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let tick = TICK.as_nanos() as u64;
        let elapsed = now.saturating_duration_since(self.origin).as_nanos() as u64;
        let next = (elapsed / tick + 1) * tick;
        Some(Duration::from_nanos(next - elapsed) + Duration::from_millis(1))
    }
}

/// A small fast PRNG (xorshift64*) for jitter; seeded per worker.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills a buffer with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// A uniformly random duration in `[interval/2, interval)`: the first heartbeat of a
/// connection, so that connections accepted together do not ping together.
pub fn jitter(interval: Duration, rng: &mut Rng) -> Duration {
    let half = interval / 2;
    let span = (interval - half).as_nanos() as u64;
    if span == 0 {
        return interval;
    }
    half + Duration::from_nanos(rng.next_u64() % span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(w: &mut TimerWheel, now: Instant) -> Vec<u64> {
        let mut fired = Vec::new();
        w.advance(now, &mut fired);
        let mut keys: Vec<u64> = fired.into_iter().map(|(_, k)| k).collect();
        keys.sort();
        keys
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + Duration::from_millis(100), 1);
        w.insert(t0 + Duration::from_millis(250), 2);
        assert!(fire(&mut w, t0 + Duration::from_millis(99)).is_empty());
        assert_eq!(fire(&mut w, t0 + Duration::from_millis(111)), vec![1]);
        assert!(fire(&mut w, t0 + Duration::from_millis(200)).is_empty());
        assert_eq!(fire(&mut w, t0 + Duration::from_millis(300)), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_is_exact() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let ids: Vec<TimerId> = (0..10)
            .map(|k| w.insert(t0 + Duration::from_millis(50), k))
            .collect();
        for id in ids.iter().step_by(2) {
            w.cancel(*id);
        }
        assert_eq!(w.len(), 5);
        assert_eq!(
            fire(&mut w, t0 + Duration::from_secs(1)),
            vec![1, 3, 5, 7, 9]
        );
        w.cancel(TimerId::NONE);
    }

    #[test]
    fn far_deadlines_wait_for_their_round() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let rev = TICK * TIMER_SLOTS as u32;
        w.insert(t0 + rev + Duration::from_millis(30), 7);
        w.insert(t0 + rev * 3, 8);
        assert!(fire(&mut w, t0 + Duration::from_millis(100)).is_empty());
        assert!(fire(&mut w, t0 + rev).is_empty());
        assert_eq!(fire(&mut w, t0 + rev + Duration::from_millis(60)), vec![7]);
        assert!(fire(&mut w, t0 + rev * 2).is_empty());
        assert_eq!(fire(&mut w, t0 + rev * 3 + TICK * 2), vec![8]);
    }

    #[test]
    fn a_long_stall_fires_everything_due() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        for k in 0..100u64 {
            w.insert(t0 + Duration::from_millis(k * 997), k);
        }
        let fired = fire(&mut w, t0 + Duration::from_secs(500));
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        fire(&mut w, t0 + Duration::from_secs(5));
        w.insert(t0, 1);
        assert_eq!(
            fire(&mut w, t0 + Duration::from_secs(5) + TICK * 2),
            vec![1]
        );
    }

    #[test]
    fn entries_are_reused() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut now = t0;
        for round in 0..1000u64 {
            let id = w.insert(now + Duration::from_millis(20), round);
            if round % 2 == 0 {
                w.cancel(id);
            } else {
                now += Duration::from_millis(40);
                assert_eq!(fire(&mut w, now), vec![round]);
            }
        }
        assert!(w.entries.len() <= 2, "table grew to {}", w.entries.len());
    }

    #[test]
    fn reschedule_moves_a_timer() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let id = w.insert(t0 + Duration::from_millis(50), 1);
        let id = w.reschedule(id, t0 + Duration::from_millis(500), 1);
        assert!(fire(&mut w, t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(fire(&mut w, t0 + Duration::from_millis(520)), vec![1]);
        let _ = id;
    }

    #[test]
    fn poll_timeout_reflects_pending_timers() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        assert_eq!(w.poll_timeout(t0), None);
        w.insert(t0 + Duration::from_secs(1), 1);
        let d = w.poll_timeout(t0).unwrap();
        assert!(d <= TICK + Duration::from_millis(1) && d >= Duration::from_millis(1));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = Rng::new(42);
        let interval = Duration::from_secs(25);
        let mut min = interval;
        let mut max = Duration::ZERO;
        for _ in 0..10_000 {
            let j = jitter(interval, &mut rng);
            assert!(j >= interval / 2 && j < interval);
            min = min.min(j);
            max = max.max(j);
        }
        assert!(min < Duration::from_millis(12_600) && max > Duration::from_millis(24_900));
    }
}
