//! Channels: names, sequence numbers, history rings and per-worker subscriber counts.
//!
//! The hub is the only state shared by the workers and the publishers. A publish takes the
//! hub lock once: the channel's seq is incremented, the message is appended to the
//! history ring, and a reference to it is pushed to the inbox of every worker that has
//! subscribers to the channel. Pushing under the lock keeps each inbox in seq order. The
//! publisher does not wait for the fan-out; the workers do it.
//!
//! A message is encoded into each wire form at most once, the first time a worker needs
//! that form ([`Msg::ws_frame`], [`Msg::sse_event`], ...), and the encoding is shared by
//! reference (`bytes::Bytes`) by every subscriber on every worker.
//!
//! Subscribing takes the lock too, so that "replay what is buffered" and "receive what is
//! published from now on" meet without a hole: everything published before the
//! subscription is in the history, everything after reaches the worker's inbox. A worker
//! drops a delivery whose seq a connection has already seen, so the overlap of the two
//! (a message published between the subscription and the worker draining its inbox) is
//! never delivered twice.

use bytes::Bytes;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use protocol::message::{self, JsonStyle, Message};

use crate::config::Live;
use crate::inbox::{Cmd, Inbox, MAX_INBOX};

/// A channel's identity: slab slot and generation, so that a reclaimed and reused slot
/// never receives deliveries meant for the channel that had it before.
pub type ChanKey = u64;

/// Channels checked per [`Hub::sweep`] call (the sweep walks the table incrementally).
pub const SWEEP_BATCH: usize = 4096;
/// Most channels returned by one listing.
pub const MAX_LISTING: usize = 100_000;

/// What a delivered message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// A published message.
    Data,
    /// The channel was closed by the server; subscribers are unsubscribed.
    Close,
    /// Messages `from..=seq` were missed and are no longer buffered (a cluster node that
    /// lost its feed and could not fill everything in).
    Gap,
}

/// A sequenced message, shared by reference with every worker.
#[derive(Debug)]
pub struct Msg {
    /// The channel's key.
    pub key: ChanKey,
    /// The channel's name.
    pub channel: Arc<str>,
    /// Seq in the channel (for `Close`, the channel's last seq; for `Gap`, the last
    /// missed seq).
    pub seq: u64,
    /// For `Gap`: the first missed seq.
    pub from: u64,
    /// Data or close.
    pub kind: MsgKind,
    /// The published body.
    pub content: Box<str>,
    json: OnceLock<Bytes>,
    script: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
    sse_with_id: OnceLock<Bytes>,
    sse_data: OnceLock<Bytes>,
    ndjson: OnceLock<Bytes>,
}

impl Msg {
    /// A new message (not yet encoded in any form).
    pub fn new(key: ChanKey, channel: Arc<str>, seq: u64, kind: MsgKind, content: Box<str>) -> Msg {
        Msg {
            key,
            channel,
            seq,
            from: 0,
            kind,
            content,
            json: OnceLock::new(),
            script: OnceLock::new(),
            ws: OnceLock::new(),
            sse_with_id: OnceLock::new(),
            sse_data: OnceLock::new(),
            ndjson: OnceLock::new(),
        }
    }

    /// The envelope of this message.
    pub fn envelope(&self) -> Message<'_> {
        match self.kind {
            MsgKind::Data => Message::Data {
                channel: &self.channel,
                seq: self.seq,
                content: &self.content,
            },
            MsgKind::Close => Message::Close {
                channel: &self.channel,
            },
            MsgKind::Gap => Message::Gap {
                channel: &self.channel,
                from: self.from,
                to: self.seq,
            },
        }
    }

    /// Plain JSON.
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(self.envelope().to_json()))
    }

    /// JSON for a `<script>` context.
    pub fn script_json(&self) -> &Bytes {
        self.script.get_or_init(|| {
            let mut out = Vec::with_capacity(self.content.len() + 64);
            message::write_json(&mut out, &self.envelope(), JsonStyle::Script);
            Bytes::from(out)
        })
    }

    /// A WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 10);
            message::write_ws_frame(&mut out, self.json());
            Bytes::from(out)
        })
    }

    /// An SSE event with `id: channel:seq` (the cursor of a one-channel connection).
    pub fn sse_event(&self) -> &Bytes {
        self.sse_with_id.get_or_init(|| {
            let mut id = Vec::with_capacity(self.channel.len() + 21);
            protocol::sse::write_cursor(&mut id, [(&*self.channel, self.seq)]);
            let id = String::from_utf8(id).expect("channel names and digits are ASCII");
            let mut out = Vec::with_capacity(self.json().len() + id.len() + 16);
            message::write_sse_event(&mut out, Some(&id), self.json());
            Bytes::from(out)
        })
    }

    /// An SSE event without `id:` (a multi-channel connection writes its own id line).
    pub fn sse_data(&self) -> &Bytes {
        self.sse_data.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 10);
            message::write_sse_event(&mut out, None, self.json());
            Bytes::from(out)
        })
    }

    /// An NDJSON line as an HTTP chunk.
    pub fn ndjson_chunk(&self) -> &Bytes {
        self.ndjson.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 12);
            message::write_ndjson_chunk(&mut out, self.json());
            Bytes::from(out)
        })
    }
}

/// Why a hub operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    /// `max_channels` reached (503).
    ChannelLimit,
    /// The published content is larger than `max_message_bytes` (413).
    TooBig,
    /// A worker's inbox is full: the server cannot keep up (503).
    Overloaded,
    /// No such channel (404).
    NoChannel,
    /// The cluster broker is unreachable (503).
    Unavailable(String),
}

impl HubError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HubError::ChannelLimit | HubError::Overloaded | HubError::Unavailable(_) => 503,
            HubError::TooBig => 413,
            HubError::NoChannel => 404,
        }
    }

    /// A reason for the client.
    pub fn reason(&self) -> String {
        match self {
            HubError::ChannelLimit => "channel limit reached (max_channels)".into(),
            HubError::TooBig => "message larger than max_message_bytes".into(),
            HubError::Overloaded => "server overloaded: fan-out queue full".into(),
            HubError::NoChannel => "no such channel".into(),
            HubError::Unavailable(why) => format!("broker unavailable: {why}"),
        }
    }
}

/// Where to start a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only messages published from now on.
    Now,
    /// Replay buffered messages with seq >= N first (a `gap` when N is older than the
    /// buffer).
    Seq(u64),
}

/// The result of a subscription.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The channel's key.
    pub key: ChanKey,
    /// The channel's name (shared).
    pub name: Arc<str>,
    /// The channel's seq at subscription time.
    pub seq: u64,
    /// `(from, to)`: asked-for messages no longer buffered.
    pub gap: Option<(u64, u64)>,
    /// Whether the subscriber was registered (see [`Hub::subscribe`]'s `register`).
    pub registered: bool,
}

/// A channel's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Name.
    pub name: String,
    /// Last seq.
    pub seq: u64,
    /// Subscribers on all workers.
    pub subscribers: u64,
    /// Messages in the history ring.
    pub buffered: usize,
}

struct Channel {
    name: Arc<str>,
    key: ChanKey,
    seq: u64,
    history: VecDeque<Arc<Msg>>,
    per_worker: Box<[u32]>,
    subscribers: u64,
    idle_since: Instant,
}

impl Channel {
    fn info(&self) -> ChannelInfo {
        ChannelInfo {
            name: self.name.to_string(),
            seq: self.seq,
            subscribers: self.subscribers,
            buffered: self.history.len(),
        }
    }

    /// Copies messages with seq >= `since` into `out`; returns the gap, if any.
    fn replay(&self, since: u64, out: &mut Vec<Arc<Msg>>) -> Option<(u64, u64)> {
        let since = since.max(1);
        if since > self.seq {
            return None;
        }
        let oldest = self.history.front().map_or(self.seq + 1, |m| m.seq);
        let gap = (since < oldest).then(|| (since, oldest - 1));
        let skip = since.saturating_sub(oldest) as usize;
        out.extend(self.history.iter().skip(skip).cloned());
        gap
    }
}

struct Inner {
    names: HashMap<Arc<str>, usize>,
    chans: Slab<Channel>,
    generation: u32,
    sweep_cursor: usize,
    /// Running totals, kept so that `/info` and `/metrics` never walk the table.
    subscriptions: u64,
    buffered: usize,
}

/// Totals for `/info` and `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubTotals {
    /// Channels.
    pub channels: usize,
    /// Subscriptions on all workers.
    pub subscriptions: u64,
    /// Messages buffered in all history rings.
    pub buffered: usize,
}

/// The channel table.
pub struct Hub {
    inner: Mutex<Inner>,
    inboxes: Vec<Arc<Inbox>>,
    live: Arc<Live>,
    max_channels: usize,
    channel_ttl: Duration,
    /// Messages published (sequenced) since start.
    pub published: AtomicU64,
    /// Messages received from the cluster feed since start.
    pub remote: AtomicU64,
}

impl Hub {
    /// A hub delivering to the given worker inboxes.
    pub fn new(
        inboxes: Vec<Arc<Inbox>>,
        live: Arc<Live>,
        max_channels: usize,
        channel_ttl: Duration,
    ) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                names: HashMap::new(),
                chans: Slab::new(),
                generation: 0,
                sweep_cursor: 0,
                subscriptions: 0,
                buffered: 0,
            }),
            inboxes,
            live,
            max_channels,
            channel_ttl,
            published: AtomicU64::new(0),
            remote: AtomicU64::new(0),
        }
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

    fn get_or_create<'a>(
        &self,
        inner: &'a mut Inner,
        name: &str,
        now: Instant,
    ) -> Result<&'a mut Channel, HubError> {
        if let Some(&slot) = inner.names.get(name) {
            return Ok(&mut inner.chans[slot]);
        }
        if inner.chans.len() >= self.max_channels {
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
            seq: 0,
            history: VecDeque::new(),
            per_worker: vec![0; self.inboxes.len()].into_boxed_slice(),
            subscribers: 0,
            idle_since: now,
        });
        inner.names.insert(name, slot);
        Ok(&mut inner.chans[slot])
    }

    /// Subscribes a connection of `worker` to `name`, creating the channel if needed.
    /// Buffered messages to replay (per `since`) are appended to `replay`. With
    /// `register = false` and something to replay, nothing is registered (a long-poll
    /// answered at once).
    pub fn subscribe(
        &self,
        worker: usize,
        name: &str,
        since: Since,
        only_if_nothing_to_replay: bool,
        replay: &mut Vec<Arc<Msg>>,
    ) -> Result<Subscribed, HubError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let ch = self.get_or_create(&mut inner, name, now)?;
        let before = replay.len();
        let gap = match since {
            Since::Now => None,
            Since::Seq(n) => ch.replay(n, replay),
        };
        let register = !(only_if_nothing_to_replay && (replay.len() > before || gap.is_some()));
        if register {
            ch.per_worker[worker] += 1;
            ch.subscribers += 1;
        }
        let result = Subscribed {
            key: ch.key,
            name: ch.name.clone(),
            seq: ch.seq,
            gap,
            registered: register,
        };
        if register {
            inner.subscriptions += 1;
        }
        Ok(result)
    }

    /// Removes one subscriber of `worker` from the channel `key`.
    pub fn unsubscribe(&self, worker: usize, key: ChanKey) {
        let mut inner = self.lock();
        let slot = (key & 0xFFFF_FFFF) as usize;
        let mut removed = false;
        if let Some(ch) = inner.chans.get_mut(slot) {
            if ch.key == key && ch.per_worker[worker] > 0 {
                ch.per_worker[worker] -= 1;
                ch.subscribers -= 1;
                removed = true;
                if ch.subscribers == 0 {
                    ch.idle_since = Instant::now();
                }
            }
        }
        if removed {
            inner.subscriptions -= 1;
        }
    }

    /// Publishes `content` to `name` (creating the channel): sequences it, stores it in
    /// the history and hands it to the workers with subscribers. Returns the seq.
    pub fn publish(&self, name: &str, content: &str) -> Result<u64, HubError> {
        if content.len() > self.live.max_message_bytes() {
            return Err(HubError::TooBig);
        }
        let now = Instant::now();
        let history_size = self.live.history_size();
        let mut inner = self.lock();
        let ch = self.get_or_create(&mut inner, name, now)?;
        let (seq, delta) = self.publish_locked(ch, content.into(), history_size, now)?;
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
        Ok(seq)
    }

    fn publish_locked(
        &self,
        ch: &mut Channel,
        content: Box<str>,
        history_size: usize,
        now: Instant,
    ) -> Result<(u64, isize), HubError> {
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 && self.inboxes[w].len() >= MAX_INBOX {
                return Err(HubError::Overloaded);
            }
        }
        let seq = ch.seq + 1;
        let delta = self.append(ch, seq, content, history_size, now);
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok((seq, delta))
    }

    /// Records message `seq` in the channel's history and hands it to the workers with
    /// subscribers. Returns the change in buffered messages.
    fn append(
        &self,
        ch: &mut Channel,
        seq: u64,
        content: Box<str>,
        history_size: usize,
        now: Instant,
    ) -> isize {
        let before = ch.history.len();
        if seq != ch.seq + 1 {
            // The history holds one contiguous run of seqs.
            ch.history.clear();
        }
        ch.seq = seq;
        let msg = Arc::new(Msg::new(
            ch.key,
            ch.name.clone(),
            seq,
            MsgKind::Data,
            content,
        ));
        ch.history.push_back(msg.clone());
        while ch.history.len() > history_size {
            ch.history.pop_front();
        }
        ch.idle_since = now;
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 {
                self.inboxes[w].push(Cmd::Deliver(msg.clone()));
            }
        }
        ch.history.len() as isize - before as isize
    }

    /// A message sequenced elsewhere in the cluster (read from the Redis feed): recorded
    /// and delivered like a local publish, unless already seen.
    pub fn deliver_remote(&self, name: &str, seq: u64, content: &str) {
        let now = Instant::now();
        let history_size = self.live.history_size();
        let mut inner = self.lock();
        let Ok(ch) = self.get_or_create(&mut inner, name, now) else {
            return;
        };
        if seq <= ch.seq {
            return;
        }
        let delta = self.append(ch, seq, content.into(), history_size, now);
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
        self.remote.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells a channel's subscribers that `from..=to` can no longer be delivered.
    pub fn deliver_gap(&self, name: &str, from: u64, to: u64) {
        let mut inner = self.lock();
        let Some(&slot) = inner.names.get(name) else {
            return;
        };
        let ch = &mut inner.chans[slot];
        if to <= ch.seq {
            return;
        }
        let dropped = ch.history.len();
        ch.history.clear();
        ch.seq = to;
        let mut msg = Msg::new(ch.key, ch.name.clone(), to, MsgKind::Gap, "".into());
        msg.from = from;
        let msg = Arc::new(msg);
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 {
                self.inboxes[w].push(Cmd::Deliver(msg.clone()));
            }
        }
        inner.buffered -= dropped;
    }

    /// The highest seq this node has seen on a channel (0 if unknown).
    pub fn local_seq(&self, name: &str) -> u64 {
        let inner = self.lock();
        inner.names.get(name).map_or(0, |&s| inner.chans[s].seq)
    }

    /// Every known channel with its seq.
    pub fn local_seqs(&self) -> Vec<(String, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .map(|(_, c)| (c.name.to_string(), c.seq))
            .collect()
    }

    /// Channels with local subscribers, with their seq.
    pub fn local_seqs_with_subscribers(&self) -> Vec<(String, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .filter(|(_, c)| c.subscribers > 0)
            .map(|(_, c)| (c.name.to_string(), c.seq))
            .collect()
    }

    /// Channels with local subscribers, with their counts.
    pub fn local_subscriber_counts(&self) -> Vec<(Arc<str>, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .filter(|(_, c)| c.subscribers > 0)
            .map(|(_, c)| (c.name.clone(), c.subscribers))
            .collect()
    }

    /// Publishes `content` to every channel; returns how many.
    pub fn broadcast(&self, content: &str) -> Result<usize, HubError> {
        if content.len() > self.live.max_message_bytes() {
            return Err(HubError::TooBig);
        }
        let now = Instant::now();
        let history_size = self.live.history_size();
        let mut inner = self.lock();
        let mut n = 0;
        let mut delta = 0isize;
        let mut result = Ok(());
        for (_, ch) in inner.chans.iter_mut() {
            match self.publish_locked(ch, content.into(), history_size, now) {
                Ok((_, d)) => delta += d,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            n += 1;
        }
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
        result.map(|()| n)
    }

    /// Closes a channel: its subscribers get `close` and are unsubscribed, its history is
    /// dropped and the name is free again.
    pub fn close_channel(&self, name: &str) -> Result<(), HubError> {
        let mut inner = self.lock();
        let slot = inner.names.remove(name).ok_or(HubError::NoChannel)?;
        let ch = inner.chans.remove(slot);
        inner.subscriptions -= ch.subscribers;
        inner.buffered -= ch.history.len();
        let msg = Arc::new(Msg::new(
            ch.key,
            ch.name.clone(),
            ch.seq,
            MsgKind::Close,
            "".into(),
        ));
        for (w, &n) in ch.per_worker.iter().enumerate() {
            if n > 0 {
                self.inboxes[w].push(Cmd::Deliver(msg.clone()));
            }
        }
        Ok(())
    }

    /// Drops a channel's history (its seq goes on).
    pub fn clear(&self, name: &str) -> Result<(), HubError> {
        let mut inner = self.lock();
        let slot = *inner.names.get(name).ok_or(HubError::NoChannel)?;
        let n = inner.chans[slot].history.len();
        inner.chans[slot].history.clear();
        inner.buffered -= n;
        Ok(())
    }

    /// A channel's figures.
    pub fn info(&self, name: &str) -> Option<ChannelInfo> {
        let inner = self.lock();
        inner.names.get(name).map(|&slot| inner.chans[slot].info())
    }

    /// Channels whose name starts with `prefix`, sorted by name, at most `limit`.
    pub fn channels(&self, prefix: &str, limit: usize) -> Vec<ChannelInfo> {
        let limit = limit.min(MAX_LISTING);
        let inner = self.lock();
        let mut names: Vec<(&Arc<str>, usize)> = inner
            .names
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, &s)| (n, s))
            .collect();
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        names
            .into_iter()
            .take(limit)
            .map(|(_, s)| inner.chans[s].info())
            .collect()
    }

    /// Totals over every channel.
    pub fn totals(&self) -> HubTotals {
        let inner = self.lock();
        HubTotals {
            channels: inner.chans.len(),
            subscriptions: inner.subscriptions,
            buffered: inner.buffered,
        }
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.lock().chans.len()
    }

    /// Reclaims empty channels idle for longer than `channel_ttl_secs`, looking at
    /// [`SWEEP_BATCH`] slots per call. Returns how many were reclaimed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let cap = inner.chans.capacity();
        if cap == 0 {
            return 0;
        }
        let start = inner.sweep_cursor % cap;
        let end = (start + SWEEP_BATCH).min(cap);
        let mut dead = Vec::new();
        for slot in start..end {
            if let Some(ch) = inner.chans.get(slot) {
                if ch.subscribers == 0
                    && now.saturating_duration_since(ch.idle_since) >= self.channel_ttl
                {
                    dead.push(slot);
                }
            }
        }
        inner.sweep_cursor = if end >= cap { 0 } else { end };
        for slot in &dead {
            let ch = inner.chans.remove(*slot);
            inner.names.remove(&ch.name);
            inner.buffered -= ch.history.len();
        }
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn hub(workers: usize, cfg: &Config) -> (Hub, Vec<Arc<Inbox>>) {
        let inboxes: Vec<Arc<Inbox>> = (0..workers).map(|_| Arc::new(Inbox::detached())).collect();
        let live = Arc::new(Live::new(cfg));
        let h = Hub::new(
            inboxes.clone(),
            live,
            cfg.max_channels,
            Duration::from_secs_f64(cfg.channel_ttl_secs),
        );
        (h, inboxes)
    }

    fn drain(inbox: &Inbox) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(cmd) = inbox.pop() {
            if let Cmd::Deliver(m) = cmd {
                seqs.push(m.seq);
            }
        }
        seqs
    }

    #[test]
    fn sequences_and_delivers_to_workers_with_subscribers() {
        let (h, inboxes) = hub(2, &Config::default());
        let mut replay = Vec::new();
        let sub = h
            .subscribe(1, "news", Since::Now, false, &mut replay)
            .unwrap();
        assert_eq!(sub.seq, 0);
        assert!(replay.is_empty());
        assert_eq!(h.publish("news", "a").unwrap(), 1);
        assert_eq!(h.publish("news", "b").unwrap(), 2);
        assert_eq!(drain(&inboxes[0]), Vec::<u64>::new());
        assert_eq!(drain(&inboxes[1]), vec![1, 2]);
        h.unsubscribe(1, sub.key);
        h.publish("news", "c").unwrap();
        assert!(drain(&inboxes[1]).is_empty());
        let info = h.info("news").unwrap();
        assert_eq!((info.seq, info.subscribers, info.buffered), (3, 0, 3));
    }

    #[test]
    fn replay_and_gap() {
        let cfg = Config {
            history_size: 3,
            ..Default::default()
        };
        let (h, _) = hub(1, &cfg);
        for i in 0..5 {
            h.publish("c", &format!("m{i}")).unwrap();
        }
        // History holds 3, 4, 5.
        let mut replay = Vec::new();
        let s = h
            .subscribe(0, "c", Since::Seq(4), false, &mut replay)
            .unwrap();
        assert_eq!(s.gap, None);
        assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
        replay.clear();
        let s = h
            .subscribe(0, "c", Since::Seq(1), false, &mut replay)
            .unwrap();
        assert_eq!(s.gap, Some((1, 2)));
        assert_eq!(replay.len(), 3);
        replay.clear();
        let s = h
            .subscribe(0, "c", Since::Seq(6), false, &mut replay)
            .unwrap();
        assert_eq!((s.gap, replay.len()), (None, 0));
        let s = h
            .subscribe(0, "c", Since::Seq(0), false, &mut replay)
            .unwrap();
        assert_eq!(s.gap, Some((1, 2)));
        h.clear("c").unwrap();
        replay.clear();
        let s = h
            .subscribe(0, "c", Since::Seq(5), false, &mut replay)
            .unwrap();
        assert_eq!((s.gap, replay.len()), (Some((5, 5)), 0));
    }

    #[test]
    fn poll_registers_only_when_nothing_to_replay() {
        let (h, _) = hub(1, &Config::default());
        h.publish("p", "x").unwrap();
        let mut replay = Vec::new();
        let s = h
            .subscribe(0, "p", Since::Seq(1), true, &mut replay)
            .unwrap();
        assert!(!s.registered);
        assert_eq!(h.info("p").unwrap().subscribers, 0);
        let s = h
            .subscribe(0, "p", Since::Seq(2), true, &mut Vec::new())
            .unwrap();
        assert!(s.registered);
        assert_eq!(h.info("p").unwrap().subscribers, 1);
    }

    #[test]
    fn limits() {
        let cfg = Config {
            max_channels: 2,
            max_message_bytes: 200,
            ..Default::default()
        };
        let (h, _) = hub(1, &cfg);
        h.publish("a", "x").unwrap();
        h.publish("b", "x").unwrap();
        assert_eq!(h.publish("c", "x"), Err(HubError::ChannelLimit));
        assert_eq!(h.publish("a", &"x".repeat(201)), Err(HubError::TooBig));
        assert_eq!(HubError::ChannelLimit.status(), 503);
    }

    #[test]
    fn close_delivers_close_and_frees_the_name() {
        let (h, inboxes) = hub(1, &Config::default());
        let mut r = Vec::new();
        h.subscribe(0, "x", Since::Now, false, &mut r).unwrap();
        h.publish("x", "1").unwrap();
        h.close_channel("x").unwrap();
        let mut kinds = Vec::new();
        while let Some(Cmd::Deliver(m)) = inboxes[0].pop() {
            kinds.push(m.kind);
        }
        assert_eq!(kinds, vec![MsgKind::Data, MsgKind::Close]);
        assert!(h.info("x").is_none());
        assert_eq!(h.close_channel("x"), Err(HubError::NoChannel));
        assert_eq!(
            h.publish("x", "again").unwrap(),
            1,
            "a new channel starts at 1"
        );
    }

    #[test]
    fn sweep_reclaims_idle_empty_channels() {
        let cfg = Config {
            channel_ttl_secs: 1.0,
            ..Default::default()
        };
        let (h, _) = hub(1, &cfg);
        h.publish("idle", "x").unwrap();
        let mut r = Vec::new();
        let s = h.subscribe(0, "busy", Since::Now, false, &mut r).unwrap();
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(h.sweep(later), 1);
        assert!(h.info("idle").is_none());
        assert!(h.info("busy").is_some());
        h.unsubscribe(0, s.key);
        assert_eq!(h.sweep(Instant::now() + Duration::from_secs(3)), 1);
        assert_eq!(h.channel_count(), 0);
    }

    #[test]
    fn totals_follow_every_change() {
        let cfg = Config {
            history_size: 2,
            ..Default::default()
        };
        let (h, _) = hub(2, &cfg);
        let mut r = Vec::new();
        let a = h.subscribe(0, "a", Since::Now, false, &mut r).unwrap();
        h.subscribe(1, "b", Since::Now, false, &mut r).unwrap();
        for _ in 0..3 {
            h.publish("a", "x").unwrap();
        }
        h.publish("b", "y").unwrap();
        let t = h.totals();
        assert_eq!((t.channels, t.subscriptions, t.buffered), (2, 2, 3));
        h.broadcast("z").unwrap();
        assert_eq!(h.totals().buffered, 4);
        h.clear("a").unwrap();
        assert_eq!(h.totals().buffered, 2);
        h.unsubscribe(0, a.key);
        h.close_channel("b").unwrap();
        let t = h.totals();
        assert_eq!((t.channels, t.subscriptions, t.buffered), (1, 0, 0));
    }

    #[test]
    fn remote_messages_are_recorded_once_and_delivered() {
        let (h, inboxes) = hub(1, &Config::default());
        let mut r = Vec::new();
        h.subscribe(0, "c", Since::Now, false, &mut r).unwrap();
        h.deliver_remote("c", 5, "five");
        h.deliver_remote("c", 5, "five again");
        h.deliver_remote("c", 4, "late");
        h.deliver_remote("c", 6, "six");
        assert_eq!(drain(&inboxes[0]), vec![5, 6]);
        assert_eq!(h.local_seq("c"), 6);
        // The history holds one contiguous run: 5 and 6 (nothing before 5 is known).
        let mut replay = Vec::new();
        let s = h
            .subscribe(0, "c", Since::Seq(1), false, &mut replay)
            .unwrap();
        assert_eq!(s.gap, Some((1, 4)));
        assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5, 6]);
        h.deliver_remote("c", 9, "nine");
        let mut replay = Vec::new();
        h.subscribe(0, "c", Since::Seq(5), false, &mut replay)
            .unwrap();
        assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![9]);
        // Remote messages for unknown channels create them (their seq is remembered).
        h.deliver_remote("other", 3, "x");
        assert_eq!(h.local_seq("other"), 3);
    }

    #[test]
    fn a_gap_reaches_subscribers_and_moves_the_seq() {
        let (h, inboxes) = hub(1, &Config::default());
        let mut r = Vec::new();
        h.subscribe(0, "c", Since::Now, false, &mut r).unwrap();
        h.deliver_remote("c", 1, "a");
        drain(&inboxes[0]);
        h.deliver_gap("c", 2, 7);
        let Some(Cmd::Deliver(m)) = inboxes[0].pop() else {
            panic!("a gap delivery")
        };
        assert_eq!((m.kind, m.from, m.seq), (MsgKind::Gap, 2, 7));
        assert_eq!(
            &m.json()[..],
            br#"{"type":"gap","channel":"c","from":2,"to":7}"#
        );
        assert_eq!(h.local_seq("c"), 7);
        assert_eq!(h.totals().buffered, 0);
        h.deliver_gap("c", 2, 5);
        assert!(inboxes[0].pop().is_none(), "an older gap is ignored");
    }

    #[test]
    fn a_reused_slot_has_a_new_key() {
        let (h, _) = hub(1, &Config::default());
        let mut r = Vec::new();
        let a = h.subscribe(0, "a", Since::Now, false, &mut r).unwrap();
        h.unsubscribe(0, a.key);
        h.close_channel("a").unwrap();
        let b = h.subscribe(0, "b", Since::Now, false, &mut r).unwrap();
        assert_ne!(a.key, b.key);
        // A stale unsubscribe for the old key does not touch the new channel.
        h.unsubscribe(0, a.key);
        assert_eq!(h.info("b").unwrap().subscribers, 1);
    }

    #[test]
    fn encodings_are_made_once_and_agree() {
        let m = Msg::new(1, Arc::from("news"), 7, MsgKind::Data, "hi</script>".into());
        let a = m.ws_frame().clone();
        let b = m.ws_frame().clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not re-encoded");
        assert_eq!(
            &m.json()[..],
            br#"{"type":"data","channel":"news","seq":7,"content":"hi</script>"}"#
        );
        assert!(m.sse_event().starts_with(b"id: news:7\ndata: {"));
        assert!(m.sse_data().starts_with(b"data: {"));
        assert!(!m.script_json().windows(2).any(|w| w == b"</"));
        assert!(m.ndjson_chunk().ends_with(b"}\n\r\n"));
    }
}
