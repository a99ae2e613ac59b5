//! Channels: names, epochs, sequence numbers, history rings and per-worker subscriber
//! counts.
//!
//! The hub is the only state shared by the workers and the publishers. Each channel has
//! one message stream: an [`Epoch`] chosen when the stream starts, seq numbers counting
//! from 1 in it, and the last `history_size` messages.
//!
//! # Requests and applies
//!
//! Every change is made in two steps. The *request* runs under the hub lock in the
//! caller's thread: it validates, assigns the seq (or, for a close, takes the name off
//! the table so that a new stream can start), and produces an [`Op`]. The *apply* makes
//! the change visible: it appends to the history, moves the seq subscribers see, and
//! pushes a reference to the message into the inbox of every worker with subscribers
//! (under the lock, so each inbox stays in seq order). The publisher does not wait for
//! the fan-out; the workers do it.
//!
//! - In memory mode (`history_store = "memory"`) the apply follows the request at once,
//!   under the same lock.
//! - With the disk store (`history_store = "disk"`, [`crate::store`]) the request hands
//!   the op to the store's writer thread (still under the lock, so the store sees ops in
//!   seq order); the writer commits a batch and then applies it. Nothing is delivered,
//!   replayed or acknowledged before it is on disk, so a seq a client has seen is never
//!   handed out again after a crash. Ops wait in the store with a *ticket*; publishers
//!   answer once their ticket is committed ([`Accepted::ticket`]).
//! - In a cluster the hub is a replica: messages are sequenced by Redis and applied from
//!   the feed ([`Hub::deliver_remote`]); a position the local copy cannot answer is read
//!   from Redis (see [`Authority`]).
//!
//! # Subscribing
//!
//! Subscribing takes the lock too, so that "replay what is buffered" and "receive what is
//! applied from now on" meet without a hole: everything applied before the subscription
//! is in the history, everything after reaches the worker's inbox. A worker drops a
//! delivery whose seq a connection has already seen, so the overlap of the two is never
//! delivered twice.
//!
//! A subscription from a position of another epoch, or from a seq beyond the stream's
//! end, cannot be from this stream: it is answered with a `reset` and the stream from its
//! start ([`Subscribed::reset`]), never with silence.

use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Live;
use crate::epoch::Epoch;
use crate::inbox::{Cmd, Inbox, PubDone};
use crate::store::{Commit, Loaded, Store};

use crate::limits::{MAX_INBOX, MAX_LISTING, SWEEP_BATCH};
use crate::memory;
use crate::msg::{ChanKey, Msg, MsgKind};

mod channel;
mod idem;
mod manage;
mod remote;
mod types;

mod handover;
use channel::{Channel, Plan};
use idem::{IdemEntry, IdemTable};
pub use types::*;

struct Inner {
    names: HashMap<Arc<str>, usize>,
    chans: Slab<Channel>,
    generation: u32,
    sweep_cursor: usize,
    /// Running totals, kept so that `/info` and `/metrics` never walk the table.
    subscriptions: u64,
    buffered: usize,
    draining: bool,
    drain_sent: bool,
    idem: IdemTable,
}

/// The channel table.
pub struct Hub {
    inner: Mutex<Inner>,
    inboxes: Vec<Arc<Inbox>>,
    live: Arc<Live>,
    max_channels: usize,
    channel_ttl: Duration,
    idem_window: Duration,
    idem_max: usize,
    replica: bool,
    store: Option<Arc<Store>>,
    /// A hot handover froze the world: publishes are refused (503, retry) until it is
    /// called off (see `hub::handover`).
    frozen: std::sync::atomic::AtomicBool,
    /// The same, for the cluster feed's thread (`hub::handover`): it applies nothing
    /// while this is true, and holds the lock while it applies.
    feed_gate: Mutex<bool>,
    feed_thawed: std::sync::Condvar,
    /// The WebSocket clients' publishes and the subscriptions' reads handed to Redis and
    /// not answered yet (cluster): a freeze waits for their answers (`hub::handover`).
    in_flight: Mutex<usize>,
    all_answered: std::sync::Condvar,
    /// Messages published (applied) since start.
    pub published: AtomicU64,
    /// Messages received from the cluster feed since start.
    pub remote: AtomicU64,
    /// Idempotency records forgotten before their window passed (the table was full).
    pub idem_evicted: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hub {
    /// A hub delivering to the given worker inboxes; with a store, its ops go through it
    /// (and what it loaded is the starting state).
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        cfg: HubConfig,
        store: Option<(Arc<Store>, Loaded)>,
    ) -> Hub {
        let (store, loaded) = match store {
            Some((s, l)) => (Some(s), Some(l)),
            None => (None, None),
        };
        let hub = Hub {
            inner: Mutex::new(Inner {
                names: HashMap::new(),
                chans: Slab::new(),
                generation: 0,
                sweep_cursor: 0,
                subscriptions: 0,
                buffered: 0,
                draining: false,
                drain_sent: false,
                idem: IdemTable::default(),
            }),
            inboxes,
            live: cfg.live,
            max_channels: cfg.max_channels,
            channel_ttl: cfg.channel_ttl,
            idem_window: cfg.idempotency_window,
            idem_max: cfg.idempotency_max_keys,
            replica: cfg.replica,
            store,
            frozen: std::sync::atomic::AtomicBool::new(false),
            feed_gate: Mutex::new(false),
            feed_thawed: std::sync::Condvar::new(),
            in_flight: Mutex::new(0),
            all_answered: std::sync::Condvar::new(),
            published: AtomicU64::new(0),
            remote: AtomicU64::new(0),
            idem_evicted: AtomicU64::new(0),
        };
        if let Some(l) = loaded {
            hub.load(l);
        }
        hub
    }

    /// A memory-mode hub with the configuration's limits and its own live keys (tests).
    pub fn memory(inboxes: Vec<Arc<Inbox>>, cfg: &crate::config::Config) -> Hub {
        let live = Arc::new(Live::new(cfg));
        Hub::new(inboxes, HubConfig::from_config(cfg, live, false), None)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a thread panicked while holding it; with panic = "abort"
        // that cannot happen, and in tests the data is still consistent enough to go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of workers the hub delivers to.
    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// The disk store, when there is one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The starting state read from the disk store.
    fn load(&self, loaded: Loaded) {
        let now = Instant::now();
        let mut inner = self.lock();
        let history_size = self.live.history_size();
        for c in loaded.channels {
            let Ok(slot) = self.slot_or_create(&mut inner, &c.name, now, true) else {
                continue;
            };
            let ch = &mut inner.chans[slot];
            ch.epoch = c.epoch;
            ch.seq = c.seq;
            ch.taken = c.seq;
            let start = c.history.len().saturating_sub(history_size);
            for (seq, packed) in c.history.into_iter().skip(start) {
                let (sender, content) = crate::msg::unpack(&packed);
                let m = ch.data(seq, sender, content.into());
                ch.history.push_back(m);
            }
            let n = ch.history.len();
            inner.buffered += n;
        }
        let now_unix = unix_now();
        for r in loaded.idem {
            if r.expires <= now_unix {
                continue;
            }
            let name: Arc<str> = Arc::from(r.channel.as_str());
            let entry = IdemEntry {
                epoch: r.epoch,
                seq: r.seq,
                ticket: 0,
                expires: r.expires,
            };
            inner
                .idem
                .order
                .push_back((r.expires, name.clone(), r.key.clone().into()));
            inner.idem.map.insert((name, r.key.into()), entry);
        }
        inner.idem.order.make_contiguous().sort_by_key(|e| e.0);
    }

    /// The slot of `name`, created (with a fresh epoch, or none on a replica) if needed.
    /// `force` creates past `max_channels` (state that is already accepted).
    fn slot_or_create(
        &self,
        inner: &mut Inner,
        name: &str,
        now: Instant,
        force: bool,
    ) -> Result<usize, HubError> {
        if let Some(&slot) = inner.names.get(name) {
            return Ok(slot);
        }
        if inner.chans.len() >= self.max_channels && !force {
            return Err(HubError::ChannelLimit);
        }
        inner.generation = inner.generation.wrapping_add(1);
        let name: Arc<str> = Arc::from(name);
        let entry = inner.chans.vacant_entry();
        let slot = entry.key();
        let key = (u64::from(inner.generation) << 32) | slot as u64;
        entry.insert(Channel {
            name: name.clone(),
            key,
            epoch: if self.replica {
                Epoch::NONE
            } else {
                Epoch::new()
            },
            seq: 0,
            taken: 0,
            history: VecDeque::new(),
            per_worker: vec![0; self.inboxes.len()].into_boxed_slice(),
            subscribers: 0,
            idle_since: now,
            pending: 0,
            closing: false,
        });
        inner.names.insert(name, slot);
        Ok(slot)
    }

    fn plan(&self, ch: &Channel, since: Since, authority: Authority) -> Plan {
        let Since::Seq(n, epoch) = since else {
            return Plan::Live;
        };
        let replica = authority != Authority::Hub;
        // A replica answers only from a copy that follows the stream (it has applied
        // something of it); one that merely knows the channel cannot tell what came
        // before.
        if authority == Authority::Stale || (replica && (ch.epoch.is_none() || ch.seq == 0)) {
            return Plan::Remote;
        }
        // Positions in an empty stream (`1@anything`) are at its start whatever their
        // epoch: nothing was missed.
        let other_stream = epoch.is_some() && epoch != ch.epoch && ch.seq > 0;
        let beyond = n > ch.seq + 1;
        if other_stream || beyond {
            // A replica cannot tell a cursor from another stream from one that is ahead
            // of its copy (the feed brings messages a little later than Redis has them).
            return if replica { Plan::Remote } else { Plan::Reset };
        }
        if replica && n <= ch.seq && ch.oldest() > n.max(1) {
            // Redis may hold more than this node's copy.
            return Plan::Remote;
        }
        Plan::From(n.max(1))
    }

    /// Subscribes a connection of `worker` to `name`, creating the channel if needed.
    /// Buffered messages to replay (per `since`) are appended to `replay`. With
    /// `only_if_nothing_to_replay` and something to replay, nothing is registered (a
    /// long-poll answered at once).
    pub fn subscribe(
        &self,
        worker: usize,
        name: &str,
        since: Since,
        authority: Authority,
        only_if_nothing_to_replay: bool,
        replay: &mut Vec<Arc<Msg>>,
    ) -> Result<Subscribed, HubError> {
        self.subscribe_with(
            worker,
            name,
            since,
            authority,
            only_if_nothing_to_replay,
            true,
            replay,
        )
    }

    /// [`Hub::subscribe`], creating the channel only when `may_create` (else
    /// [`HubError::NoChannel`] for a channel that does not exist).
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe_with(
        &self,
        worker: usize,
        name: &str,
        since: Since,
        authority: Authority,
        only_if_nothing_to_replay: bool,
        may_create: bool,
        replay: &mut Vec<Arc<Msg>>,
    ) -> Result<Subscribed, HubError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let created = !inner.names.contains_key(name);
        if created && !may_create {
            return Err(HubError::NoChannel);
        }
        let slot = self.slot_or_create(&mut inner, name, now, false)?;
        let ch = &mut inner.chans[slot];
        let before = replay.len();
        let plan = self.plan(ch, since, authority);
        let gap = match plan {
            Plan::Live | Plan::Remote => None,
            Plan::From(n) => ch.replay(n, replay),
            Plan::Reset => ch.replay(1, replay),
        };
        let reset = plan == Plan::Reset;
        let something = replay.len() > before || gap.is_some() || reset;
        let register = !(only_if_nothing_to_replay && something);
        if register {
            ch.per_worker[worker] += 1;
            ch.subscribers += 1;
        }
        let result = Subscribed {
            key: ch.key,
            name: ch.name.clone(),
            epoch: ch.shown_epoch(),
            seq: ch.seq,
            gap,
            reset,
            remote: plan == Plan::Remote,
            registered: register,
            created,
        };
        if register {
            inner.subscriptions += 1;
        } else if ch.is_disposable() {
            Self::forget(&mut inner, slot);
        }
        Ok(result)
    }

    /// Removes one subscriber of `worker` from the channel `key`. A channel left with no
    /// subscriber and nothing published is freed at once: subscribing to names costs
    /// nothing once the subscribers are gone.
    pub fn unsubscribe(&self, worker: usize, key: ChanKey) {
        let mut inner = self.lock();
        let slot = (key & 0xFFFF_FFFF) as usize;
        let mut removed = false;
        let mut dispose = false;
        if let Some(ch) = inner.chans.get_mut(slot) {
            if ch.key == key && ch.per_worker[worker] > 0 {
                ch.per_worker[worker] -= 1;
                ch.subscribers -= 1;
                removed = true;
                if ch.subscribers == 0 {
                    ch.idle_since = Instant::now();
                    dispose = ch.is_disposable();
                }
            }
        }
        if removed {
            inner.subscriptions -= 1;
        }
        if dispose {
            Self::forget(&mut inner, slot);
        }
    }

    /// Takes an empty channel off the table (it has nothing in the store either).
    fn forget(inner: &mut Inner, slot: usize) {
        let ch = inner.chans.remove(slot);
        if inner.names.get(&ch.name) == Some(&slot) {
            inner.names.remove(&ch.name);
        }
        // (The tables shrink in `sweep`: shrinking here, once per channel, could cost
        // a pass over the table each time.)
    }

    /// Gives back the table's memory after a flood of channels is gone.
    fn shrink(inner: &mut Inner) {
        if memory::sparse(inner.names.len(), inner.names.capacity()) {
            let len = inner.names.len();
            inner.names.shrink_to(len * 2);
        }
        if memory::sparse(inner.chans.len(), inner.chans.capacity()) {
            inner.chans.shrink_to_fit();
        }
    }

    /// What a worker catching a subscription up after a Redis read needs: the messages
    /// of stream `epoch` after `after` that this node has applied since.
    pub fn replay_after(
        &self,
        key: ChanKey,
        epoch: Epoch,
        after: u64,
        out: &mut Vec<Arc<Msg>>,
    ) -> CatchUp {
        let inner = self.lock();
        let slot = (key & 0xFFFF_FFFF) as usize;
        let Some(ch) = inner.chans.get(slot).filter(|c| c.key == key) else {
            return CatchUp::Gone;
        };
        if ch.epoch.is_none() {
            // Nothing of the stream applied here yet: what comes reaches the worker.
            return CatchUp::Done(after);
        }
        if ch.epoch != epoch {
            return CatchUp::OtherEpoch(ch.epoch, ch.seq);
        }
        if ch.seq <= after {
            return CatchUp::Done(ch.seq);
        }
        if ch.oldest() > after + 1 {
            return CatchUp::Short;
        }
        ch.replay(after + 1, out);
        CatchUp::Done(ch.seq)
    }

    /// Publishes `content` to `name` (creating the channel): sequences it and applies it
    /// (memory mode) or hands it to the disk store (its ticket is in the answer). With an
    /// idempotency `key` seen within the window, nothing is published and the first
    /// publish's seq is answered.
    pub fn publish(
        &self,
        name: &str,
        content: &str,
        meta: &PubMeta<'_>,
    ) -> Result<Accepted, HubError> {
        let key = meta.key;
        if content.len() > self.live.max_message_bytes() {
            return Err(HubError::TooBig);
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.draining {
            return Err(HubError::Draining);
        }
        self.check_frozen()?;
        if let Some(k) = key {
            if let Some(a) = self.idem_lookup(&inner, name, k) {
                return Ok(a);
            }
        }
        let slot = self.slot_or_create(&mut inner, name, now, false)?;
        let idem = key.map(|k| IdemRecord {
            key: k.into(),
            expires: unix_now() + self.idem_window.as_secs(),
        });
        let accepted = self.request_append(&mut inner, slot, content.into(), idem, meta, now)?;
        if let Some(k) = key {
            self.idem_insert(&mut inner, name, k, accepted);
        }
        Ok(accepted)
    }

    /// Sequences a message on channel `slot` and applies or queues it.
    fn request_append(
        &self,
        inner: &mut Inner,
        slot: usize,
        content: Box<str>,
        idem: Option<IdemRecord>,
        meta: &PubMeta<'_>,
        now: Instant,
    ) -> Result<Accepted, HubError> {
        let ch = &mut inner.chans[slot];
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 && self.inboxes[w].len() >= MAX_INBOX {
                return Err(HubError::Overloaded);
            }
        }
        if let Some(s) = &self.store {
            if let Some(why) = s.failed() {
                return Err(HubError::Store(why));
            }
        }
        let seq = ch.seq.max(ch.taken) + 1;
        ch.taken = seq;
        ch.idle_since = now;
        let epoch = ch.epoch;
        let msg = ch.data(seq, meta.sender, content);
        let notify = meta.notify;
        let ticket = self.dispatch(inner, slot, Op::Append { msg, idem, notify }, meta.commit);
        Ok(Accepted {
            seq,
            epoch,
            duplicate: false,
            ticket,
        })
    }

    /// Applies `op` now (memory mode) or queues it in the store; returns the ticket (0
    /// when applied).
    fn dispatch(&self, inner: &mut Inner, slot: usize, op: Op, commit: Commit) -> u64 {
        match &self.store {
            None => {
                self.apply_locked(inner, op, false);
                0
            }
            Some(s) => {
                if let Some(ch) = inner.chans.get_mut(slot) {
                    ch.pending += 1;
                }
                s.enqueue(op, commit)
            }
        }
    }

    /// Applies ops committed by the store, in order.
    pub fn apply_committed(&self, ops: Vec<Op>) {
        let mut inner = self.lock();
        for op in ops {
            self.apply_locked(&mut inner, op, true);
        }
    }

    /// Answers ops the store could not write: their publishes were not accepted (their
    /// publishers are told); closes, clears and drains still take effect in memory.
    pub fn apply_failed(&self, ops: Vec<Op>, why: &str) {
        let mut inner = self.lock();
        for op in ops {
            match op {
                Op::Append { msg, notify, .. } => {
                    let slot = (msg.key & 0xFFFF_FFFF) as usize;
                    if let Some(ch) = inner.chans.get_mut(slot).filter(|c| c.key == msg.key) {
                        ch.pending = ch.pending.saturating_sub(1);
                    }
                    if let Some(n) = notify {
                        if let Some(inbox) = self.inboxes.get(n.worker) {
                            let e = HubError::Store(why.to_string());
                            inbox.push(Cmd::PubDone(PubDone {
                                token: n.token,
                                channel: msg.channel.clone(),
                                result: Err((e.status(), e.reason())),
                            }));
                        }
                    }
                }
                other => self.apply_locked(&mut inner, other, true),
            }
        }
    }

    /// Makes one op visible: history, seq, deliveries.
    fn apply_locked(&self, inner: &mut Inner, op: Op, from_store: bool) {
        let slot_of = |key: ChanKey| (key & 0xFFFF_FFFF) as usize;
        match op {
            Op::Append { msg, notify, .. } => {
                let history_size = self.live.history_size();
                let now = Instant::now();
                let Some(ch) = inner
                    .chans
                    .get_mut(slot_of(msg.key))
                    .filter(|c| c.key == msg.key)
                else {
                    return;
                };
                if from_store {
                    ch.pending = ch.pending.saturating_sub(1);
                }
                let delta = self.append(ch, msg.clone(), history_size, now);
                inner.buffered = inner.buffered.wrapping_add_signed(delta);
                self.published.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = notify.filter(|_| from_store) {
                    if let Some(inbox) = self.inboxes.get(n.worker) {
                        inbox.push(Cmd::PubDone(PubDone {
                            token: n.token,
                            channel: msg.channel.clone(),
                            result: Ok((msg.seq, msg.epoch, false)),
                        }));
                    }
                }
            }
            Op::Close { key, .. } => {
                let slot = slot_of(key);
                if inner.chans.get(slot).is_none_or(|c| c.key != key) {
                    return;
                }
                let ch = inner.chans.remove(slot);
                if inner.names.get(&ch.name) == Some(&slot) {
                    inner.names.remove(&ch.name);
                }
                inner.subscriptions -= ch.subscribers;
                inner.buffered -= ch.history.len();
                let msg = Arc::new(Msg::new(
                    ch.key,
                    ch.name.clone(),
                    ch.epoch,
                    ch.seq,
                    MsgKind::Close,
                    "".into(),
                ));
                self.push_to_subscribers(&ch, &msg);
            }
            Op::Clear { key, .. } => {
                let Some(ch) = inner.chans.get_mut(slot_of(key)).filter(|c| c.key == key) else {
                    return;
                };
                if from_store {
                    ch.pending = ch.pending.saturating_sub(1);
                }
                let n = ch.history.len();
                ch.history.clear();
                inner.buffered -= n;
            }
            Op::Drain => {
                for inbox in &self.inboxes {
                    inbox.push(Cmd::Drain);
                }
            }
            Op::Resume { reply } => {
                for inbox in &self.inboxes {
                    inbox.push(Cmd::Resume {
                        reply: reply.clone(),
                    });
                }
            }
            Op::Drop { .. } | Op::Forget { .. } => {}
        }
    }

    fn push_to_subscribers(&self, ch: &Channel, msg: &Arc<Msg>) {
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 {
                self.inboxes[w].push(Cmd::Deliver(msg.clone()));
            }
        }
        // A Socket.IO socket's own room is not subscribed to: the worker its id names
        // gets the message.
        if let Some(w) = crate::transport::socketio::own_room_worker(&ch.name, self.inboxes.len()) {
            if ch.per_worker[w] == 0 {
                self.inboxes[w].push(Cmd::Deliver(msg.clone()));
            }
        }
    }

    /// Records message `msg` in the channel's history and hands it to the workers with
    /// subscribers. Returns the change in buffered messages.
    fn append(&self, ch: &mut Channel, msg: Arc<Msg>, history_size: usize, now: Instant) -> isize {
        let before = ch.history.len();
        if msg.seq != ch.seq + 1 {
            // The history holds one contiguous run of seqs.
            ch.history.clear();
        }
        ch.seq = msg.seq;
        ch.taken = ch.taken.max(msg.seq);
        self.push_to_subscribers(ch, &msg);
        ch.history.push_back(msg);
        while ch.history.len() > history_size {
            ch.history.pop_front();
        }
        ch.idle_since = now;
        ch.history.len() as isize - before as isize
    }

    /// On a replica: makes sure the channel is in stream `epoch` before something of it
    /// at `first` is applied. A channel that did not know its epoch learns it; one that
    /// was in another stream starts again, and its subscribers get a `reset` (and a `gap`
    /// when the new stream's start is not known here). Returns the buffered change.
    fn enter_epoch(&self, ch: &mut Channel, epoch: Epoch, first: u64) -> isize {
        if ch.epoch == epoch || epoch.is_none() {
            return 0;
        }
        if ch.epoch.is_none() {
            ch.epoch = epoch;
            return 0;
        }
        let dropped = ch.history.len() as isize;
        ch.history.clear();
        ch.epoch = epoch;
        ch.seq = 0;
        ch.taken = 0;
        let reset = Arc::new(Msg::new(
            ch.key,
            ch.name.clone(),
            epoch,
            first.saturating_sub(1),
            MsgKind::Reset,
            "".into(),
        ));
        self.push_to_subscribers(ch, &reset);
        if first > 1 {
            let gap = Arc::new(Msg::gap(ch.key, ch.name.clone(), epoch, 1, first - 1));
            self.push_to_subscribers(ch, &gap);
            ch.seq = first - 1;
        }
        -dropped
    }

    /// A channel's figures.
    pub fn info(&self, name: &str) -> Option<ChannelInfo> {
        let inner = self.lock();
        inner.names.get(name).map(|&slot| inner.chans[slot].info())
    }
}

#[cfg(test)]
mod tests;
