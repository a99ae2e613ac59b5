//! Clustering through Redis: publish anywhere, deliver everywhere, resume on any node.
//!
//! Several pushedge nodes (processes on one box sharing the subscriber port, or machines
//! behind a load balancer) share channels through one Redis. We do not write our own
//! broker.
//!
//! # Data in Redis (prefix `pushedge` by default)
//!
//! - `pushedge:{C}:seq`, `pushedge:{C}:epoch` — channel C's stream: its epoch and its
//!   sequence counter (cluster-wide).
//! - `pushedge:{C}:hist` — C's last `history_size` messages, as `"<seq> <content>"`.
//! - `pushedge:{C}:closed` — `"<epoch> <seq>"`: C's stream was closed there. A node that
//!   was cut off during the close closes its copy when it is back, and does not revive it.
//! - `pushedge:{C}:idem:<key>` — `"<epoch> <seq>"` of the publish that used an
//!   idempotency key, for `idempotency_window_secs`.
//! - `pushedge:feed` — the pub/sub channel every node listens to:
//!   `"D <epoch> <seq> <C> <content>"` (data), `"C <C>"` (channel closed), `"X <C>"`
//!   (history cleared).
//! - `pushedge:nodes` (sorted set: node id -> last report, Unix seconds) and
//!   `pushedge:node:<id>` (hash: channel -> local subscribers, expiring after
//!   [`NODE_TTL`]), for cluster-wide subscriber counts. A dead node's counts expire.
//!
//! A channel's keys carry a hash tag (`{C}`) so they would land in one slot of a Redis
//! Cluster; they expire after `cluster.key_ttl_secs` without publishes. The scripts are
//! in [`scripts`].
//!
//! # Publishing, and what an answer means
//!
//! One Lua script checks the idempotency key, increments the counter, appends to the
//! history, trims it and publishes on the feed, atomically. The publishing node passes
//! its stream (epoch, and the highest seq it knows taken, acknowledged ones included) as a
//! floor, so a Redis that lost its data never hands out a seq of that stream again.
//!
//! A node accepts a publish only while its own feed is up (it could not deliver what it
//! accepts otherwise): 503 while it is down, and until it has filled in what it missed.
//! Then [`link`] tells 200 (the script ran), 503 (nothing reached Redis) and 504 (sent,
//! no answer: it may have run; a retry with the same `key` is safe) apart.
//!
//! # Delivering
//!
//! Every message, including those published on this node, reaches the local subscribers
//! through the feed: one thread per node reads it and hands each message to the local
//! hub, which fans it out to the workers as usual. Redis orders the feed, so each
//! channel's messages arrive in seq order; the hub drops what it has already seen.
//!
//! # Resuming
//!
//! Every node keeps the recent history of every channel from the feed, so a resume that
//! its copy covers (same epoch, within its seq and history, feed up) is answered locally.
//! Any other position is read from Redis by the helper thread ([`helper`]): the
//! subscription is registered first, the read answers through the worker's inbox, and
//! the worker catches up from its copy on what arrived meanwhile. No reactor thread waits
//! for Redis. A read waits up to `cluster.history_wait_secs` for an unreachable Redis,
//! then the subscriber gets an `error`.
//!
//! # Faults
//!
//! When the feed connection breaks the node keeps its subscribers, refuses publishes,
//! reconnects with jittered exponential backoff, subscribes to the feed again, re-seeds
//! the streams it knows (in case Redis lost them) and fills in, from the Redis history,
//! what its subscribers missed (a `gap` where the history no longer holds it, a `reset`
//! where the stream changed) before it reads the feed and accepts publishes again; the
//! per-connection cursors make sure nobody gets a duplicate. Every command link older
//! than the new feed session is dropped.
//!
//! # Hot handover
//!
//! `ctl upgrade` ([`crate::handover`]) works on a cluster node, and its subscribers miss
//! nothing of what any node publishes meanwhile: the successor's start is treated as a
//! feed reconnect, whose fill-in from the Redis history already delivers exactly what a
//! node did not apply, once, in order (the cursors drop the overlap). Why that rather
//! than handing over what reached the old process's feed after its freeze: the old
//! process cannot know when the last of it has arrived (Redis has it, in order, with its
//! seqs), and the successor must be able to catch up after a fault anyway; a reconnect
//! is one path, already tested against real Redis faults. So:
//!
//! - The old process freezes its feed with its hub (`Hub::set_frozen`): every feed line
//!   and every fill-in is applied through `Hub::while_thawed`, so after the freeze
//!   nothing more is applied, and what was applied before is in the workers' inboxes
//!   ahead of their freeze, so their records' cursors are the hub's seqs. Its publishes
//!   (control socket) get 503 (retry) like a memory-mode node's; its admin port is not
//!   read, as in memory mode. Its WebSocket clients' publishes and its subscriptions'
//!   reads are answered later, after Redis: the hub counts those handed to the helper
//!   ([`Cluster::submit_publish`], [`Cluster::submit_read`]) and the freeze waits (at
//!   most `HANDOVER_REDIS_WAIT`) for their answers to be in the workers' inboxes, ahead
//!   of the workers' freeze; new publishes get 503 (retry). A read cannot be refused
//!   (the subscriber would notice): one a worker starts between the freeze and its own
//!   freeze makes the handover fail with "retry", and the node goes on serving.
//! - It sends each channel's stream (epoch, seq, history) as its subscribers have it:
//!   the seq lowered to the lowest cursor of the handed-over subscriptions
//!   (`Hub::replica_snapshot`; the same as the hub's seq unless a cursor lags), and in
//!   `extra["cluster"]` ([`handover`]) its node id and its streams' floors.
//! - The successor takes the node id (same registration in `pushedge:nodes` and
//!   `pushedge:node:<id>`: the connections stay counted once), restores the hub frozen,
//!   connects and subscribes to the feed, and waits: the fill-in runs, and the counts are
//!   reported, only once its workers have adopted the connections and the hub is thawed
//!   (before, a delivery would find no subscriber and be lost to them). Until its feed
//!   has filled in, `up` is false and it refuses publishes (503), as after any
//!   reconnect; the publishers the old process left waiting on the admin port are
//!   answered so, and retry.
//! - Idempotency records are in Redis already: nothing to hand over.
//! - If the successor fails before its `ok`, the old process thaws: its feed thread goes
//!   on reading where it stopped (Redis kept the lines; a feed that Redis cut meanwhile
//!   for its output buffer reconnects and fills in as after any fault), its links were
//!   never touched. The successor's own links die with it.
//!
//! What the history in Redis no longer holds when the successor fills in (more than
//! `history_size` messages of one channel during the handover) reaches its subscribers
//! as a `gap`, as after any outage.

pub mod handover;
pub mod helper;
pub mod link;
pub mod scripts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ClusterConfig;
use crate::epoch::Epoch;
use crate::hub::{Accepted, Hub, HubError};
use crate::inbox::{Inbox, RemoteStream};
use crate::timer::Rng;
use crate::{info, warn};

use crate::limits::{
    FEED_IDLE_PING, MAX_HELPER_JOBS, NODE_TTL, REDIS_MAX_BACKOFF, REDIS_MIN_BACKOFF,
    REPORT_INTERVAL, RESEED_BATCH,
};
pub use helper::Job;
use link::{evalsha, full_jitter};
pub use link::{CallError, Link, Lua, Target};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every script, each once (their order is the accessors').
pub struct Scripts([Lua; 6]);

impl Scripts {
    fn new() -> Scripts {
        Scripts([
            Lua::new(scripts::PUBLISH),
            Lua::new(scripts::HISTORY),
            Lua::new(scripts::STATE),
            Lua::new(scripts::RESEED),
            Lua::new(scripts::CLOSE),
            Lua::new(scripts::SUBSCRIBERS),
        ])
    }

    fn publish(&self) -> &Lua {
        &self.0[0]
    }
    fn history(&self) -> &Lua {
        &self.0[1]
    }
    fn state(&self) -> &Lua {
        &self.0[2]
    }
    fn reseed(&self) -> &Lua {
        &self.0[3]
    }
    fn close(&self) -> &Lua {
        &self.0[4]
    }
    fn subscribers(&self) -> &Lua {
        &self.0[5]
    }
}

/// The node's view of the cluster.
pub struct Cluster {
    client: redis::Client,
    /// This node's id.
    pub node_id: String,
    prefix: String,
    feed: String,
    key_ttl: u64,
    idem_ttl: u64,
    history_wait: Duration,
    publisher: Mutex<Link>,
    scripts: Scripts,
    /// Whether the feed connection is up (and caught up): publishes are accepted only
    /// then.
    pub up: AtomicBool,
    /// Feed sessions so far: command links older than the current one are dropped.
    generation: AtomicU64,
    jobs: Mutex<Option<SyncSender<Job>>>,
    /// Messages received from the feed.
    pub received: AtomicU64,
    /// Redis errors seen (connections that failed or broke).
    pub errors: AtomicU64,
    /// The nodes Redis knew of at the last report, with when each last reported (Unix
    /// seconds): read by the admin port without a round trip of its own.
    pub nodes: Mutex<Vec<(String, u64)>>,
}

impl Cluster {
    /// A cluster client for `cfg` (does not connect yet). `idem_window` is how long
    /// idempotency keys are kept.
    pub fn new(
        cfg: &ClusterConfig,
        node_id: String,
        idem_window: Duration,
    ) -> Result<Cluster, String> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| format!("invalid cluster.redis_url '{}': {e}", cfg.redis_url))?;
        Ok(Cluster {
            client,
            node_id,
            feed: format!("{}:feed", cfg.prefix),
            prefix: cfg.prefix.clone(),
            key_ttl: cfg.key_ttl_secs,
            idem_ttl: idem_window.as_secs().max(1),
            history_wait: crate::config::secs(cfg.history_wait_secs),
            publisher: Mutex::new(Link::default()),
            scripts: Scripts::new(),
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            jobs: Mutex::new(None),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            nodes: Mutex::new(Vec::new()),
        })
    }

    fn target(&self) -> Target<'_> {
        Target {
            client: &self.client,
            scripts: &self.scripts.0,
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    fn key(&self, channel: &str, part: &str) -> String {
        format!("{}:{{{channel}}}:{part}", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn presence_key(&self, node: &str) -> String {
        format!("{}:presence:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// How long a subscriber's read waits for an unreachable Redis.
    pub fn history_wait(&self) -> Duration {
        self.history_wait
    }

    /// Why this node refuses publishes right now, if it does.
    fn refuse(&self) -> Option<HubError> {
        (!self.up.load(Ordering::Acquire)).then(|| {
            HubError::Unavailable(
                "this node's redis feed is down: it could not deliver the message".into(),
            )
        })
    }

    /// The packed publish script for `channel` (the floor and known epoch from `hub`).
    fn publish_request(
        &self,
        hub: &Hub,
        channel: &str,
        sender: &str,
        content: &str,
        key: Option<&str>,
    ) -> Vec<u8> {
        let packed = crate::msg::pack(sender, content);
        let (known, floor) = hub.local_stream(channel).unwrap_or((Epoch::NONE, 0));
        let idem = self.key(channel, &format!("idem:{}", key.unwrap_or("")));
        let keys = [
            self.key(channel, "seq"),
            self.key(channel, "hist"),
            self.key(channel, "epoch"),
            self.key(channel, "closed"),
            idem,
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let fresh = Epoch::new();
        let (floor, hsize, ttl, idem_ttl) = (
            floor.to_string(),
            hub.history_size().to_string(),
            self.key_ttl.to_string(),
            self.idem_ttl.to_string(),
        );
        let args: [&[u8]; 10] = [
            channel.as_bytes(),
            packed.as_bytes(),
            floor.as_bytes(),
            hsize.as_bytes(),
            ttl.as_bytes(),
            self.feed.as_bytes(),
            known.as_str().as_bytes(),
            fresh.as_str().as_bytes(),
            if key.is_some() { b"1" } else { b"0" },
            idem_ttl.as_bytes(),
        ];
        evalsha(self.scripts.publish(), &keys, &args)
    }

    /// What the publish script's answer (or failure) means.
    fn publish_outcome(
        &self,
        hub: &Hub,
        channel: &str,
        r: Result<redis::Value, CallError>,
    ) -> Result<Accepted, HubError> {
        let v = r.map_err(|e| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            match e {
                CallError::Unknown(why) => HubError::Unknown(why),
                CallError::NotSent(why) | CallError::Server(why) => HubError::Unavailable(why),
            }
        })?;
        let (epoch, seq, duplicate) = redis::from_redis_value::<(String, i64)>(v)
            .map_err(|e| e.to_string())
            .and_then(scripts::parse_publish)
            .map_err(HubError::Unknown)?;
        hub.note_taken(channel, epoch, seq);
        Ok(Accepted {
            seq,
            epoch,
            duplicate,
            ticket: 0,
        })
    }

    /// Publishes through Redis from a thread that may wait (admin, control socket).
    pub fn publish(
        &self,
        hub: &Hub,
        channel: &str,
        sender: &str,
        content: &str,
        key: Option<&str>,
    ) -> Result<Accepted, HubError> {
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        hub.check_frozen()?;
        let req = self.publish_request(hub, channel, sender, content, key);
        let r = {
            let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
            link.call(&self.target(), req)
        };
        self.publish_outcome(hub, channel, r)
    }

    /// Hands a job to the helper thread; gives it back when the queue is full or the
    /// helper is not running.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        let guard = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(job);
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Err(j),
        }
    }

    /// Hands a WebSocket client's publish ([`Job::Publish`]) to the helper thread,
    /// counted by the hub until its answer is in the worker's inbox (a hot handover's
    /// freeze waits for it); refused while the hub is frozen. A full queue answers it
    /// 503 through the inbox.
    pub fn submit_publish(
        &self,
        hub: &Hub,
        inboxes: &[Arc<Inbox>],
        job: Job,
    ) -> Result<(), HubError> {
        hub.client_publish_begins()?;
        if let Err(job) = self.submit(job) {
            helper::answer_failed(inboxes, job, &HubError::Overloaded);
            hub.redis_answered();
        }
        Ok(())
    }

    /// Hands a subscription's read ([`Job::Read`]) to the helper thread, counted by the
    /// hub until its answer is in the worker's inbox; gives it back when the queue is
    /// full.
    pub fn submit_read(&self, hub: &Hub, job: Job) -> Result<(), Job> {
        hub.redis_read_begins();
        self.submit(job).inspect_err(|_| hub.redis_answered())
    }

    fn with_publisher<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, HubError> {
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.target()).map_err(HubError::Unavailable)?;
        f(con).map_err(|e| {
            self.errors.fetch_add(1, Ordering::Relaxed);
            link.fail();
            HubError::Unavailable(format!("redis error: {e}"))
        })
    }

    /// Closes a channel on every node: leaves a tombstone, drops the stream, tells the
    /// feed.
    pub fn close(&self, hub: &Hub, channel: &str) -> Result<(), HubError> {
        let (known, floor) = hub.local_stream(channel).unwrap_or((Epoch::NONE, 0));
        let req = evalsha(
            self.scripts.close(),
            &[
                &self.key(channel, "seq"),
                &self.key(channel, "hist"),
                &self.key(channel, "closed"),
                &self.key(channel, "epoch"),
            ],
            &[
                channel.as_bytes(),
                floor.to_string().as_bytes(),
                self.key_ttl.to_string().as_bytes(),
                self.feed.as_bytes(),
                known.as_str().as_bytes(),
            ],
        );
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        match link.call(&self.target(), req) {
            Ok(_) => Ok(()),
            Err(CallError::Unknown(why)) => Err(HubError::Unknown(why)),
            Err(e) => Err(HubError::Unavailable(e.reason().to_string())),
        }
    }

    /// Drops a channel's history on every node.
    pub fn clear(&self, channel: &str) -> Result<(), HubError> {
        let (hist, feed) = (self.key(channel, "hist"), self.feed.clone());
        self.with_publisher(|con| {
            redis::pipe()
                .del(&hist)
                .publish(&feed, format!("X {channel}"))
                .query::<()>(con)
        })
    }

    /// Every channel with a counter in Redis (at most `limit`).
    pub fn all_channels(&self, limit: usize) -> Result<Vec<String>, HubError> {
        let pattern = format!("{}:{{*}}:seq", self.prefix);
        let keys = self.with_publisher(|con| {
            let it = redis::Commands::scan_match::<_, String>(con, &pattern)?;
            it.take(limit).collect::<redis::RedisResult<Vec<String>>>()
        })?;
        let head = format!("{}:{{", self.prefix);
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix(&head)
                    .and_then(|r| r.strip_suffix("}:seq"))
                    .map(str::to_string)
            })
            .collect())
    }

    /// Subscribers of a channel on every live node.
    pub fn subscribers(&self, channel: &str) -> Result<u64, HubError> {
        let req = evalsha(
            self.scripts.subscribers(),
            &[&self.nodes_key()],
            &[
                channel.as_bytes(),
                unix_now().to_string().as_bytes(),
                NODE_TTL.to_string().as_bytes(),
                format!("{}:node:", self.prefix).as_bytes(),
            ],
        );
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let v = link
            .call(&self.target(), req)
            .map_err(|e| HubError::Unavailable(e.reason().to_string()))?;
        redis::from_redis_value::<u64>(v).map_err(|e| HubError::Unavailable(e.to_string()))
    }

    /// A channel's epoch, seq and buffered count in Redis.
    pub fn channel_state(&self, channel: &str) -> Result<(Epoch, u64, u64), HubError> {
        let (seq, hist, epoch) = (
            self.key(channel, "seq"),
            self.key(channel, "hist"),
            self.key(channel, "epoch"),
        );
        let (e, s, n) = self.with_publisher(|con| {
            redis::pipe()
                .get(&epoch)
                .get(&seq)
                .llen(&hist)
                .query::<(Option<String>, Option<u64>, u64)>(con)
        })?;
        let e = e.and_then(|e| Epoch::parse(&e)).unwrap_or(Epoch::NONE);
        Ok((e, if e.is_some() { s.unwrap_or(0) } else { 0 }, n))
    }

    /// The packed read of a channel's stream from a position (or its state alone).
    pub fn read_request(&self, channel: &str, since: Option<(u64, Epoch)>) -> Vec<u8> {
        let (seq, hist, epoch) = (
            self.key(channel, "seq"),
            self.key(channel, "hist"),
            self.key(channel, "epoch"),
        );
        match since {
            Some((n, e)) => evalsha(
                self.scripts.history(),
                &[&seq, &hist, &epoch],
                &[n.to_string().as_bytes(), e.as_str().as_bytes()],
            ),
            None => evalsha(self.scripts.state(), &[&seq, &epoch], &[]),
        }
    }

    /// What a read's answer says.
    pub fn read_outcome(v: redis::Value, since: Option<u64>) -> Result<RemoteStream, String> {
        let raw = redis::from_redis_value::<Vec<Vec<u8>>>(v).map_err(|e| e.to_string())?;
        match since {
            Some(n) => scripts::parse_history(&raw, n),
            None => scripts::parse_state(&raw),
        }
    }

    /// Starts the feed reader, the subscriber-count reporter and the helper thread that
    /// answers the workers.
    pub fn start(
        self: &Arc<Self>,
        hub: Arc<Hub>,
        inboxes: Vec<Arc<Inbox>>,
        presence: Arc<crate::presence::Presence>,
    ) -> Result<(), String> {
        let (c, h) = (self.clone(), hub.clone());
        thread::Builder::new()
            .name("cluster-feed".into())
            .spawn(move || c.run_feed(&h))
            .map_err(|e| format!("cannot start cluster feed thread: {e}"))?;
        let (c, h) = (self.clone(), hub.clone());
        thread::Builder::new()
            .name("cluster-report".into())
            .spawn(move || c.run_reporter(&h, &presence))
            .map_err(|e| format!("cannot start cluster report thread: {e}"))?;
        let (tx, rx) = mpsc::sync_channel(MAX_HELPER_JOBS);
        *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let c = self.clone();
        thread::Builder::new()
            .name("cluster-helper".into())
            .spawn(move || helper::run(&c, &hub, &inboxes, rx))
            .map_err(|e| format!("cannot start cluster helper thread: {e}"))?;
        Ok(())
    }

    fn run_feed(&self, hub: &Hub) {
        let mut backoff = REDIS_MIN_BACKOFF;
        let mut rng = Rng::new(unix_now() ^ 0x5EED);
        let mut warned = false;
        loop {
            let e = match self.feed_session(hub) {
                Ok(()) => String::from("feed ended"),
                Err(e) => e,
            };
            self.errors.fetch_add(1, Ordering::Relaxed);
            if self.up.swap(false, Ordering::SeqCst) {
                // The session had been up: a new outage starts at the shortest backoff.
                backoff = REDIS_MIN_BACKOFF;
                warn!("cluster: {e}; refusing publishes and reconnecting with backoff");
                warned = true;
            } else if !warned {
                warn!("cluster: {e}; reconnecting with backoff");
                warned = true;
            }
            thread::sleep(full_jitter(backoff, &mut rng));
            backoff = (backoff * 2).min(REDIS_MAX_BACKOFF);
        }
    }

    /// One connection's life: subscribe, catch up, then read the feed until it breaks.
    fn feed_session(&self, hub: &Hub) -> Result<(), String> {
        let mut feed_con = link::connect(&self.client)?;
        let mut pubsub = feed_con.as_pubsub();
        pubsub
            .subscribe(&self.feed)
            .map_err(|e| format!("cannot subscribe to the feed: {e}"))?;
        pubsub
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        // Subscribed: from here on nothing is missed. Drop every command link of the old
        // session (they may point at a Redis that is gone), then catch up (not while a
        // hot handover holds the hub: see "Hot handover").
        self.generation.fetch_add(1, Ordering::AcqRel);
        hub.while_thawed(|| {
            let mut aux = Link::default();
            self.reseed(&mut aux, hub)?;
            self.fill_in(&mut aux, hub)?;
            self.up.store(true, Ordering::SeqCst);
            Ok::<(), String>(())
        })?;
        info!("cluster: node {} connected to redis", self.node_id);
        let mut last = Instant::now();
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    last = Instant::now();
                    if msg.get_channel_name() == self.feed {
                        hub.while_thawed(|| self.on_feed(hub, msg.get_payload_bytes()));
                    }
                }
                Err(e) if e.is_timeout() => {
                    if last.elapsed() >= FEED_IDLE_PING {
                        last = Instant::now();
                        pubsub
                            .ping::<redis::Value>()
                            .map_err(|e| format!("redis feed lost: {e}"))?;
                    }
                }
                Err(e) => return Err(format!("redis feed lost: {e}")),
            }
        }
    }

    /// `PUBLISH` of a line on the feed, packed.
    pub(crate) fn feed_publish(&self, line: &str) -> Vec<u8> {
        redis::cmd("PUBLISH")
            .arg(&self.feed)
            .arg(line)
            .get_packed_command()
    }

    /// Hands a presence event (joined or left) to the other nodes, through the helper.
    pub fn tell_presence(&self, channel: &str, joined: bool, sub: &str, info: &str) {
        let member = serde_json::json!({"sub": sub, "info": serde_json::from_str::<serde_json::Value>(info).ok()});
        let line = format!(
            "P {} {} {channel} {member}",
            self.node_id,
            if joined { '+' } else { '-' }
        );
        // A full queue drops it: presence events are best effort.
        let _ = self.submit(Job::Presence { line });
    }

    fn on_feed(&self, hub: &Hub, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let mut it = line.splitn(2, ' ');
        let (Some(kind), Some(rest)) = (it.next(), it.next()) else {
            return;
        };
        match kind {
            "P" => {
                // `P <node> <+|-> <channel> <member JSON>`: another node's join or leave.
                let mut it = rest.splitn(4, ' ');
                let (Some(node), Some(sign), Some(channel), Some(member)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return;
                };
                if node == self.node_id {
                    return;
                }
                let Ok(m) = serde_json::from_str::<serde_json::Value>(member) else {
                    return;
                };
                let Some(sub) = m["sub"].as_str() else {
                    return;
                };
                let info = match &m["info"] {
                    serde_json::Value::Null => String::new(),
                    v => v.to_string(),
                };
                hub.tell_presence(channel, sign == "+", sub, &info);
            }
            "D" => {
                let mut it = rest.splitn(4, ' ');
                let (Some(epoch), Some(seq), Some(channel), content) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return;
                };
                let (Some(epoch), Ok(seq)) = (Epoch::parse(epoch), seq.parse::<u64>()) else {
                    return;
                };
                self.received.fetch_add(1, Ordering::Relaxed);
                let (sender, content) = crate::msg::unpack(content.unwrap_or(""));
                hub.deliver_remote(channel, epoch, seq, sender, content);
            }
            "C" => {
                let _ = hub.close_channel(rest);
            }
            "X" => {
                let _ = hub.clear(rest);
            }
            _ => {}
        }
    }

    /// Restores to Redis the streams this node knows (a Redis that lost its data must
    /// not hand out a seq twice, and keeps each stream's epoch).
    fn reseed(&self, link: &mut Link, hub: &Hub) -> Result<(), String> {
        let streams = hub.local_streams();
        for chunk in streams.chunks(RESEED_BATCH) {
            let mut keys = Vec::with_capacity(chunk.len() * 3);
            let mut args: Vec<Vec<u8>> = Vec::with_capacity(chunk.len() * 2 + 1);
            for (name, epoch, seq) in chunk {
                keys.push(self.key(name, "seq"));
                keys.push(self.key(name, "closed"));
                keys.push(self.key(name, "epoch"));
                args.push(seq.to_string().into_bytes());
                args.push(epoch.as_str().as_bytes().to_vec());
            }
            args.push(self.key_ttl.to_string().into_bytes());
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            link.call(&self.target(), evalsha(self.scripts.reseed(), &keys, &args))
                .map_err(|e| format!("cannot re-seed streams: {}", e.reason()))?;
        }
        Ok(())
    }

    /// Hands the local subscribers what was published while the feed was down.
    fn fill_in(&self, link: &mut Link, hub: &Hub) -> Result<(), String> {
        for (name, epoch, seq) in hub.local_streams_with_subscribers() {
            let closed = redis::cmd("GET")
                .arg(self.key(&name, "closed"))
                .get_packed_command();
            let v = link
                .call(&self.target(), closed)
                .map_err(|e| format!("redis error: {}", e.reason()))?;
            let closed: Option<String> = redis::from_redis_value(v).map_err(|e| e.to_string())?;
            let was_closed = closed
                .as_deref()
                .and_then(|c| scripts::parse_epoch_seq(c).ok())
                .is_some_and(|(e, _)| e == epoch);
            if was_closed {
                // Closed while we were away.
                let _ = hub.close_channel(&name);
                continue;
            }
            let req = self.read_request(&name, Some((seq + 1, epoch)));
            let v = link
                .call(&self.target(), req)
                .map_err(|e| format!("redis error: {}", e.reason()))?;
            let h = Cluster::read_outcome(v, Some(seq + 1))?;
            if h.epoch.is_none() {
                continue;
            }
            if h.reset {
                hub.enter_stream(&name, h.epoch);
            }
            if let Some((from, to)) = h.gap {
                hub.deliver_gap(&name, h.epoch, from, to);
            }
            for (s, sender, content) in &h.messages {
                hub.deliver_remote(&name, h.epoch, *s, sender, content);
            }
        }
        Ok(())
    }

    /// The members of a tracked channel on every live node (their last reports).
    pub fn presence(&self, channel: &str) -> Result<crate::presence::Listing, HubError> {
        let now = unix_now();
        self.with_publisher(|con| {
            let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.nodes_key())
                .arg(now.saturating_sub(NODE_TTL))
                .arg("+inf")
                .query(con)?;
            let mut pipe = redis::pipe();
            for n in &nodes {
                pipe.hget(self.presence_key(n), channel);
            }
            let reports: Vec<Option<String>> = pipe.query(con)?;
            Ok(crate::presence::merge(
                reports.iter().flatten().map(String::as_str),
            ))
        })
    }

    fn run_reporter(&self, hub: &Hub, presence: &crate::presence::Presence) {
        let mut link = Link::default();
        loop {
            thread::sleep(REPORT_INTERVAL);
            // Not while a hot handover holds the hub: the old process reports no more
            // once frozen, the successor once it holds the connections.
            hub.wait_thawed();
            let Ok(con) = link.get(&self.target()) else {
                continue;
            };
            let counts = hub.local_subscriber_counts();
            let key = self.node_key(&self.node_id);
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.del(&key);
            if !counts.is_empty() {
                let items: Vec<(&str, u64)> = counts.iter().map(|(n, c)| (&**n, *c)).collect();
                pipe.hset_multiple(&key, &items);
            }
            pipe.expire(&key, NODE_TTL as i64);
            // Who is here, for the cluster-wide presence listing (expires with the node).
            let pkey = self.presence_key(&self.node_id);
            pipe.del(&pkey);
            let members = presence.report();
            if !members.is_empty() {
                let items: Vec<(&str, &str)> =
                    members.iter().map(|(c, m)| (&**c, m.as_str())).collect();
                pipe.hset_multiple(&pkey, &items);
                pipe.expire(&pkey, NODE_TTL as i64);
            }
            let now = unix_now();
            pipe.zadd(self.nodes_key(), &self.node_id, now);
            pipe.zrembyscore(self.nodes_key(), 0, now.saturating_sub(3600));
            if pipe.query::<()>(con).is_err() {
                self.errors.fetch_add(1, Ordering::Relaxed);
                link.fail();
                continue;
            }
            let seen: redis::RedisResult<Vec<(String, u64)>> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.nodes_key())
                .arg(now.saturating_sub(3600))
                .arg("+inf")
                .arg("WITHSCORES")
                .query(con);
            match seen {
                Ok(list) => *self.nodes.lock().unwrap_or_else(|p| p.into_inner()) = list,
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    link.fail();
                }
            }
        }
    }
}
