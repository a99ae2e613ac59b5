//! Clustering through Redis: publish anywhere, deliver everywhere, resume on any node.
//!
//! Several pushedge nodes (processes on one box sharing the subscriber port, or machines
//! behind a load balancer) share channels through one Redis. We do not write our own
//! broker.
//!
//! # Data in Redis (prefix `pushedge` by default)
//!
//! - `pushedge:{C}:seq` — channel C's sequence counter (cluster-wide).
//! - `pushedge:{C}:hist` — C's last `history_size` messages, as `"<seq> <content>"`.
//! - `pushedge:{C}:closed` — C was closed at this seq: a node that was cut off during the
//!   close closes its copy when it is back (if it had seen nothing newer), and does not
//!   revive the old counter.
//! - `pushedge:feed` — the pub/sub channel every node listens to:
//!   `"D <seq> <C> <content>"` (data), `"C <C>"` (channel closed), `"X <C>"` (history
//!   cleared).
//! - `pushedge:nodes` (sorted set: node id -> last report, Unix seconds) and
//!   `pushedge:node:<id>` (hash: channel -> local subscribers, expiring after
//!   [`NODE_TTL`]), for cluster-wide subscriber counts. A dead node's counts expire.
//!
//! Both keys of a channel carry a hash tag (`{C}`) so they would land in one slot of a
//! Redis Cluster; they expire after `cluster.key_ttl_secs` without publishes.
//!
//! # Publishing
//!
//! One Lua script increments the counter, appends to the history, trims it and publishes
//! on the feed, atomically. The publishing node passes the highest seq it has seen for the
//! channel as a floor, so a Redis that lost its data (restarted without persistence)
//! never hands out a seq again. If Redis cannot be reached the publish fails with 503 and a
//! reason: the publisher knows the message was not accepted. (A connection that breaks
//! after the script was sent is reported the same way, although the script may have run.)
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
//! A subscription with `since` / `Last-Event-ID` / a long-poll `seq` is registered locally
//! first, then the history is read from Redis: everything published before that read is
//! in it, everything after reaches the node's feed; the per-connection cursor drops the
//! overlap. So a client resumes exactly on any node, or gets a `gap`.
//!
//! # Faults
//!
//! When the feed connection breaks the node keeps its subscribers, reconnects with
//! jittered exponential backoff, subscribes to the feed again, re-seeds the counters of
//! the channels it knows (in case Redis lost them) and fills in, from the Redis history,
//! what its subscribers missed (a `gap` where the history no longer holds it) before it
//! reads the feed again; the per-connection cursors make sure nobody gets a duplicate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ClusterConfig;
use crate::hub::{Hub, HubError};
use crate::timer::Rng;
use crate::{info, warn};

/// How long connecting to Redis may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read and write timeout of the command connections.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// First and largest reconnect backoff.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Largest reconnect backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a node reports its subscriber counts.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A node whose last report is older than this is considered gone.
pub const NODE_TTL: u64 = 5;
/// The feed is pinged after this long without traffic, to notice a dead link.
const FEED_IDLE_PING: Duration = Duration::from_secs(5);
/// Channels re-seeded / filled in per Redis call after a reconnect.
const BATCH: usize = 500;

const PUBLISH_LUA: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[3])
if cur < floor then cur = floor end
cur = cur + 1
redis.call('SET', KEYS[1], cur, 'EX', ARGV[5])
redis.call('RPUSH', KEYS[2], cur .. ' ' .. ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], 'D ' .. cur .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return cur
";

const HISTORY_LUA: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[1])
local out = {tostring(cur)}
if since > cur then return out end
local h = redis.call('LRANGE', KEYS[2], -(cur - since + 1), -1)
for _, e in ipairs(h) do out[#out + 1] = e end
return out
";

const RESEED_LUA: &str = r"
for i = 1, #KEYS, 2 do
  local v = tonumber(ARGV[(i + 1) / 2])
  local closed = redis.call('GET', KEYS[i + 1])
  if not closed or v > tonumber(closed) then
    local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
    if v > cur then redis.call('SET', KEYS[i], v, 'EX', ARGV[#ARGV]) end
  end
end
return 0
";

const CLOSE_LUA: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
redis.call('SET', KEYS[3], cur, 'EX', ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[4], 'C ' .. ARGV[1])
return cur
";

const SUBSCRIBERS_LUA: &str = r"
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[3]), '+inf')
local total = 0
for _, n in ipairs(nodes) do
  local c = redis.call('HGET', ARGV[4] .. n, ARGV[1])
  if c then total = total + tonumber(c) end
end
return total
";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A command connection to Redis that reconnects lazily, with backoff.
pub struct Link {
    conn: Option<redis::Connection>,
    retry_at: Option<Instant>,
    backoff: Duration,
    rng: Rng,
}

impl Default for Link {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Link {
            conn: None,
            retry_at: None,
            backoff: MIN_BACKOFF,
            rng: Rng::new(seed),
        }
    }
}

impl Link {
    fn get(&mut self, client: &redis::Client) -> Result<&mut redis::Connection, String> {
        if self.conn.is_none() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    return Err("redis unreachable (reconnecting)".into());
                }
            }
            match connect(client) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry_at = None;
                    self.backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected just above"))
    }

    fn fail(&mut self) {
        self.conn = None;
        let wait = full_jitter(self.backoff, &mut self.rng);
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// A random duration in [0, cap] ("full jitter").
fn full_jitter(cap: Duration, rng: &mut Rng) -> Duration {
    let n = cap.as_nanos() as u64;
    Duration::from_nanos(if n == 0 { 0 } else { rng.next_u64() % n }).max(Duration::from_millis(10))
}

fn connect(client: &redis::Client) -> Result<redis::Connection, String> {
    let c = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|e| format!("redis unreachable: {e}"))?;
    c.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// What the history read of one channel found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The channel's seq in Redis.
    pub seq: u64,
    /// Buffered messages with seq >= the asked one, in order.
    pub messages: Vec<(u64, String)>,
    /// Messages asked for and no longer buffered.
    pub gap: Option<(u64, u64)>,
}

/// The node's view of the cluster.
pub struct Cluster {
    client: redis::Client,
    /// This node's id.
    pub node_id: String,
    prefix: String,
    feed: String,
    key_ttl: u64,
    publisher: Mutex<Link>,
    publish_script: redis::Script,
    history_script: redis::Script,
    reseed_script: redis::Script,
    close_script: redis::Script,
    subscribers_script: redis::Script,
    /// Whether the feed connection is up.
    pub up: AtomicBool,
    /// Messages received from the feed.
    pub received: AtomicU64,
    /// Redis errors seen (connections that failed or broke).
    pub errors: AtomicU64,
}

impl Cluster {
    /// A cluster client for `cfg` (does not connect yet).
    pub fn new(cfg: &ClusterConfig, node_id: String) -> Result<Cluster, String> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| format!("invalid cluster.redis_url '{}': {e}", cfg.redis_url))?;
        Ok(Cluster {
            client,
            node_id,
            feed: format!("{}:feed", cfg.prefix),
            prefix: cfg.prefix.clone(),
            key_ttl: cfg.key_ttl_secs,
            publisher: Mutex::new(Link::default()),
            publish_script: redis::Script::new(PUBLISH_LUA),
            history_script: redis::Script::new(HISTORY_LUA),
            reseed_script: redis::Script::new(RESEED_LUA),
            close_script: redis::Script::new(CLOSE_LUA),
            subscribers_script: redis::Script::new(SUBSCRIBERS_LUA),
            up: AtomicBool::new(false),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn seq_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:seq", self.prefix)
    }

    fn hist_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:hist", self.prefix)
    }

    fn closed_key(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:closed", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn failed(&self, link: &mut Link, e: &redis::RedisError) -> String {
        self.errors.fetch_add(1, Ordering::Relaxed);
        link.fail();
        format!("redis error: {e}")
    }

    /// Publishes through Redis; returns the cluster-wide seq.
    pub fn publish(
        &self,
        hub: &Hub,
        channel: &str,
        content: &str,
        history_size: usize,
    ) -> Result<u64, HubError> {
        let floor = hub.local_seq(channel);
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        let r = self
            .publish_script
            .key(self.seq_key(channel))
            .key(self.hist_key(channel))
            .arg(channel)
            .arg(content)
            .arg(floor)
            .arg(history_size)
            .arg(self.key_ttl)
            .arg(&self.feed)
            .invoke::<u64>(con);
        r.map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))
    }

    /// Closes a channel on every node: leaves a tombstone, drops the keys, tells the feed.
    pub fn close(&self, hub: &Hub, channel: &str) -> Result<(), HubError> {
        let floor = hub.local_seq(channel);
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        self.close_script
            .key(self.seq_key(channel))
            .key(self.hist_key(channel))
            .key(self.closed_key(channel))
            .arg(channel)
            .arg(floor)
            .arg(self.key_ttl)
            .arg(&self.feed)
            .invoke::<u64>(con)
            .map(drop)
            .map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))
    }

    /// Drops a channel's history on every node.
    pub fn clear(&self, channel: &str) -> Result<(), HubError> {
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        redis::pipe()
            .del(self.hist_key(channel))
            .publish(&self.feed, format!("X {channel}"))
            .query::<()>(con)
            .map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))
    }

    /// Every channel with a counter in Redis (at most `limit`).
    pub fn all_channels(&self, limit: usize) -> Result<Vec<String>, HubError> {
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        let pattern = format!("{}:{{*}}:seq", self.prefix);
        let scanned: Result<Vec<String>, redis::RedisError> =
            match redis::Commands::scan_match::<_, String>(con, &pattern) {
                Ok(it) => it.take(limit).collect(),
                Err(e) => Err(e),
            };
        let keys = scanned.map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))?;
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

    /// Reads a channel's history from `since` (a worker passes its own link).
    pub fn history(&self, link: &mut Link, channel: &str, since: u64) -> Result<History, String> {
        let con = link.get(&self.client)?;
        match self.read_history(con, channel, since) {
            Ok(h) => Ok(h),
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                link.fail();
                Err(e)
            }
        }
    }

    fn read_history(
        &self,
        con: &mut redis::Connection,
        channel: &str,
        since: u64,
    ) -> Result<History, String> {
        let since = since.max(1);
        let raw = self
            .history_script
            .key(self.seq_key(channel))
            .key(self.hist_key(channel))
            .arg(since)
            .invoke::<Vec<Vec<u8>>>(con)
            .map_err(|e| format!("redis error: {e}"))?;
        parse_history(&raw, since)
    }

    /// Subscribers of a channel on every live node.
    pub fn subscribers(&self, channel: &str) -> Result<u64, HubError> {
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        self.subscribers_script
            .key(self.nodes_key())
            .arg(channel)
            .arg(unix_now())
            .arg(NODE_TTL)
            .arg(format!("{}:node:", self.prefix))
            .invoke::<u64>(con)
            .map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))
    }

    /// A channel's seq and buffered count in Redis.
    pub fn channel_state(&self, channel: &str) -> Result<(u64, u64), HubError> {
        let mut link = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let con = link.get(&self.client).map_err(HubError::Unavailable)?;
        redis::pipe()
            .get(self.seq_key(channel))
            .llen(self.hist_key(channel))
            .query::<(Option<u64>, u64)>(con)
            .map(|(s, n)| (s.unwrap_or(0), n))
            .map_err(|e| HubError::Unavailable(self.failed(&mut link, &e)))
    }

    /// Starts the feed reader and the subscriber-count reporter.
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) -> Result<(), String> {
        let (c, h) = (self.clone(), hub.clone());
        thread::Builder::new()
            .name("cluster-feed".into())
            .spawn(move || c.run_feed(&h))
            .map_err(|e| format!("cannot start cluster feed thread: {e}"))?;
        let c = self.clone();
        thread::Builder::new()
            .name("cluster-report".into())
            .spawn(move || c.run_reporter(&hub))
            .map_err(|e| format!("cannot start cluster report thread: {e}"))?;
        Ok(())
    }

    fn run_feed(&self, hub: &Hub) {
        let mut backoff = MIN_BACKOFF;
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
                backoff = MIN_BACKOFF;
                warn!("cluster: {e}; reconnecting with backoff");
                warned = true;
            } else if !warned {
                warn!("cluster: {e}; reconnecting with backoff");
                warned = true;
            }
            thread::sleep(full_jitter(backoff, &mut rng));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: subscribe, catch up, then read the feed until it breaks.
    fn feed_session(&self, hub: &Hub) -> Result<(), String> {
        let mut feed_con = connect(&self.client)?;
        let mut aux = connect(&self.client)?;
        let mut pubsub = feed_con.as_pubsub();
        pubsub
            .subscribe(&self.feed)
            .map_err(|e| format!("cannot subscribe to the feed: {e}"))?;
        pubsub
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        // Subscribed: from here on nothing is missed. Catch up on what was.
        self.reseed(&mut aux, hub)?;
        self.fill_in(&mut aux, hub)?;
        drop(aux);
        self.up.store(true, Ordering::SeqCst);
        info!("cluster: node {} connected to redis", self.node_id);
        let mut last = Instant::now();
        loop {
            match pubsub.get_message() {
                Ok(msg) => {
                    last = Instant::now();
                    if msg.get_channel_name() == self.feed {
                        self.on_feed(hub, msg.get_payload_bytes());
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

    fn on_feed(&self, hub: &Hub, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let mut it = line.splitn(2, ' ');
        let (Some(kind), Some(rest)) = (it.next(), it.next()) else {
            return;
        };
        match kind {
            "D" => {
                let mut it = rest.splitn(3, ' ');
                let (Some(seq), Some(channel), content) = (it.next(), it.next(), it.next()) else {
                    return;
                };
                let Ok(seq) = seq.parse::<u64>() else {
                    return;
                };
                self.received.fetch_add(1, Ordering::Relaxed);
                hub.deliver_remote(channel, seq, content.unwrap_or(""));
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

    /// Raises Redis counters to what this node has seen (a Redis that lost its data must
    /// not hand out a seq twice).
    fn reseed(&self, con: &mut redis::Connection, hub: &Hub) -> Result<(), String> {
        let seqs = hub.local_seqs();
        for chunk in seqs.chunks(BATCH) {
            let mut inv = self.reseed_script.prepare_invoke();
            for (name, _) in chunk {
                inv.key(self.seq_key(name));
                inv.key(self.closed_key(name));
            }
            for (_, seq) in chunk {
                inv.arg(*seq);
            }
            inv.arg(self.key_ttl);
            inv.invoke::<i64>(con)
                .map_err(|e| format!("cannot re-seed counters: {e}"))?;
        }
        Ok(())
    }

    /// Hands the local subscribers what was published while the feed was down.
    fn fill_in(&self, con: &mut redis::Connection, hub: &Hub) -> Result<(), String> {
        for (name, seq) in hub.local_seqs_with_subscribers() {
            let closed: Option<u64> = redis::cmd("GET")
                .arg(self.closed_key(&name))
                .query(con)
                .map_err(|e| format!("redis error: {e}"))?;
            if closed.is_some_and(|at| seq <= at) {
                // Closed while we were away, and we have seen nothing newer.
                let _ = hub.close_channel(&name);
                continue;
            }
            let h = self.read_history(con, &name, seq + 1)?;
            if let Some((from, to)) = h.gap {
                hub.deliver_gap(&name, from, to);
            }
            for (s, content) in &h.messages {
                hub.deliver_remote(&name, *s, content);
            }
        }
        Ok(())
    }

    fn run_reporter(&self, hub: &Hub) {
        let mut link = Link::default();
        loop {
            thread::sleep(REPORT_INTERVAL);
            let Ok(con) = link.get(&self.client) else {
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
            let now = unix_now();
            pipe.zadd(self.nodes_key(), &self.node_id, now);
            pipe.zrembyscore(self.nodes_key(), 0, now.saturating_sub(3600));
            if let Err(e) = pipe.query::<()>(con) {
                let _ = self.failed(&mut link, &e);
            }
        }
    }
}

/// Parses the history script's answer: the seq, then `"<seq> <content>"` entries.
fn parse_history(raw: &[Vec<u8>], since: u64) -> Result<History, String> {
    let bad = || "malformed history from redis".to_string();
    let (first, rest) = raw.split_first().ok_or_else(bad)?;
    let seq: u64 = std::str::from_utf8(first)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut messages = Vec::with_capacity(rest.len());
    for e in rest {
        let text = std::str::from_utf8(e).map_err(|_| bad())?;
        let (s, content) = text.split_once(' ').ok_or_else(bad)?;
        let s: u64 = s.parse().map_err(|_| bad())?;
        if s >= since {
            messages.push((s, content.to_string()));
        }
    }
    let oldest = messages.first().map_or(seq + 1, |m| m.0);
    let gap = (since <= seq && since < oldest).then(|| (since, oldest - 1));
    Ok(History { seq, messages, gap })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_history() {
        let h = parse_history(&raw(&["5", "3 c", "4 with space", "5 "]), 3).unwrap();
        assert_eq!(h.seq, 5);
        assert_eq!(
            h.messages,
            vec![(3, "c".into()), (4, "with space".into()), (5, "".into())]
        );
        assert_eq!(h.gap, None);
        let h = parse_history(&raw(&["5", "4 x", "5 y"]), 2).unwrap();
        assert_eq!(h.gap, Some((2, 3)));
        let h = parse_history(&raw(&["5"]), 6).unwrap();
        assert_eq!((h.gap, h.messages.len()), (None, 0));
        let h = parse_history(&raw(&["5"]), 1).unwrap();
        assert_eq!(h.gap, Some((1, 5)));
        assert!(parse_history(&raw(&[]), 1).is_err());
        assert!(parse_history(&raw(&["x"]), 1).is_err());
        assert!(parse_history(&raw(&["2", "nospace"]), 1).is_err());
    }

    #[test]
    fn jitter_is_bounded() {
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let d = full_jitter(Duration::from_millis(400), &mut rng);
            assert!(d <= Duration::from_millis(400));
        }
    }
}
