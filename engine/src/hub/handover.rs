//! The hub's part of a hot handover (see `crate::handover`): freezing publishes, the
//! memory-mode snapshot of every channel, and loading one in the successor.
//!
//! In a cluster the freeze also holds the feed (see `crate::cluster`, "Hot handover"):
//! the feed's thread applies every feed line, and every fill-in, through
//! [`Hub::while_thawed`], so once [`Hub::set_frozen`] returns nothing more of the feed
//! reaches the hub, and every delivery applied before is in the workers' inboxes ahead
//! of their freeze. The successor's replica hub is restored frozen, and thawed once its
//! workers hold the connections: only then does its feed fill in. The WebSocket
//! clients' publishes and the subscriptions' reads, which a cluster node answers later
//! (after Redis), are counted here: a freeze waits for the answers of those under way,
//! so that no worker is frozen with one outstanding.

use super::*;
use crate::limits::HANDOVER_REDIS_WAIT;
use crate::store::{LoadedChannel, LoadedIdem};

impl Hub {
    /// Refuses publishes while a hot handover holds the world still (a WebSocket client's
    /// `pub` gets 503 and may retry; the admin port is not read meanwhile).
    pub(crate) fn check_frozen(&self) -> Result<(), HubError> {
        if self.frozen.load(Ordering::SeqCst) {
            return Err(HubError::Unavailable(
                "the server is being upgraded, retry".into(),
            ));
        }
        Ok(())
    }

    fn feed_gate(&self) -> MutexGuard<'_, bool> {
        self.feed_gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> MutexGuard<'_, usize> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Freezes (or thaws) publishing and the cluster feed. Taken under the hub's lock, so
    /// a publish that got through has pushed its deliveries before this returns; and
    /// under the feed's gate, so a feed line being applied is applied (and delivered)
    /// before it returns, and none after until the thaw. A freeze then waits (at most
    /// [`HANDOVER_REDIS_WAIT`]) until every client publish and subscription read handed
    /// to Redis is answered into its worker's inbox, ahead of the worker's freeze.
    pub fn set_frozen(&self, frozen: bool) {
        {
            let mut gate = self.feed_gate();
            {
                let _inner = self.lock();
                self.frozen.store(frozen, Ordering::SeqCst);
            }
            *gate = frozen;
            self.feed_thawed.notify_all();
        }
        if !frozen {
            return;
        }
        let deadline = Instant::now() + HANDOVER_REDIS_WAIT;
        let mut n = self.in_flight();
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The workers' export refuses then ("in flight: retry").
                return;
            }
            n = self
                .all_answered
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Runs `f` (the cluster feed applying something) once the hub is not frozen, with
    /// the feed's gate held: a freeze waits for it to end.
    pub fn while_thawed<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut gate = self.feed_gate();
        while *gate {
            gate = self
                .feed_thawed
                .wait(gate)
                .unwrap_or_else(|p| p.into_inner());
        }
        f()
    }

    /// Waits until the hub is not frozen (the cluster's subscriber-count reports; not
    /// held up by a fill-in under way).
    pub fn wait_thawed(&self) {
        if self.frozen.load(Ordering::SeqCst) {
            self.while_thawed(|| ());
        }
    }

    /// A client publish is about to be handed to Redis (through the cluster's helper):
    /// refused while frozen, else counted until [`Hub::redis_answered`]. Never waits for
    /// more than the count's lock (a reactor thread calls it).
    pub fn client_publish_begins(&self) -> Result<(), HubError> {
        let mut n = self.in_flight();
        // Under the count's lock: a freeze stores the flag, then reads the count under
        // it, so either this sees the flag or the freeze sees this publish.
        self.check_frozen()?;
        *n += 1;
        Ok(())
    }

    /// A subscription's read is about to be handed to Redis: counted until
    /// [`Hub::redis_answered`] (never refused: a successor's hub is frozen while its
    /// first subscribers may already ask).
    pub fn redis_read_begins(&self) {
        *self.in_flight() += 1;
    }

    /// A publish or read counted by [`Hub::client_publish_begins`] or
    /// [`Hub::redis_read_begins`] has its answer in its worker's inbox.
    pub fn redis_answered(&self) {
        let mut n = self.in_flight();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.all_answered.notify_all();
        }
    }

    /// Every channel's stream and the idempotency records, as the disk store's load
    /// would give them (memory mode's handover to the successor).
    pub fn snapshot(&self) -> Loaded {
        let inner = self.lock();
        let channels = inner
            .chans
            .iter()
            .filter(|(_, c)| !c.closing)
            .map(|(_, c)| LoadedChannel {
                name: c.name.to_string(),
                epoch: c.epoch,
                seq: c.seq,
                history: c
                    .history
                    .iter()
                    .map(|m| (m.seq, crate::msg::pack(&m.sender, &m.content)))
                    .collect(),
            })
            .collect();
        let idem = inner
            .idem
            .map
            .iter()
            .map(|((chan, key), e)| LoadedIdem {
                channel: chan.to_string(),
                key: key.to_string(),
                epoch: e.epoch,
                seq: e.seq,
                expires: e.expires,
            })
            .collect();
        Loaded { channels, idem }
    }

    /// A replica's snapshot for its successor: every channel's stream as the handed-over
    /// subscriptions have it. `cursors` are the subscriptions' (channel, last seq
    /// delivered); a channel's seq is lowered to its lowest cursor (its history cut
    /// there), so that the successor's fill-in from Redis starts where the slowest of
    /// its subscribers is (the others drop what they have had). No idempotency record:
    /// in a cluster they live in Redis.
    pub fn replica_snapshot<'a>(
        &self,
        cursors: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Loaded {
        let mut lowest: HashMap<&str, u64> = HashMap::new();
        for (name, seq) in cursors {
            let low = lowest.entry(name).or_insert(seq);
            *low = (*low).min(seq);
        }
        let mut loaded = self.snapshot();
        for c in &mut loaded.channels {
            if let Some(&low) = lowest.get(c.name.as_str()) {
                if low < c.seq {
                    c.seq = low;
                    c.history.retain(|&(s, _)| s <= low);
                }
            }
        }
        loaded.idem.clear();
        loaded
    }

    /// Loads what [`Hub::snapshot`] took in the old process (before any subscription),
    /// exactly as the disk store's contents are loaded. A replica's hub stays frozen
    /// until [`Hub::set_frozen`]`(false)`: its feed must not fill in before the
    /// connections it fills in for are adopted.
    pub fn restore(&self, loaded: Loaded) {
        self.load(loaded);
        if self.replica {
            self.set_frozen(true);
        }
    }
}
