//! The state every thread shares ([`Shared`]) and the main thread's stop signal
//! ([`Stop`]): configuration, the hub, the workers' inboxes and figures, the connection
//! budget, and the entry points for publishing, closing and clearing channels that the
//! admin port, the control socket and the workers all use. Channel names are validated
//! here, once, for every publish, whichever front end it came from.
//!
//! Nothing here imports upward: the workers, the admin thread and the control thread
//! import this module, never `server.rs`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crate::cluster::helper::{Job, ReplyTo};
use crate::cluster::Cluster;
use crate::config::{self, AuthMode, Config, Live};
use crate::epoch::Epoch;
use crate::hub::{Accepted, ChannelInfo, Hub, HubError, Notify, PubMeta};
use crate::inbox::Inbox;
use crate::info;
use crate::limits::{FdBudget, DRAIN_FEED_WAIT, DRAIN_POLL, STORE_WAIT};
use crate::metrics::{Snapshot, WorkerStats};
use crate::store::Commit;

/// Why the main thread should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM / SIGINT or `shutdown`: drain, then exit.
    Graceful,
    /// A second signal: exit now.
    Immediate,
}

/// State shared by every thread.
pub struct Shared {
    /// The configuration the server started with (keys that cannot change live).
    pub cfg: Config,
    /// The current configuration (with live changes), for `config get`.
    pub current: Mutex<Config>,
    /// Live keys, read by the workers.
    pub live: Arc<Live>,
    /// The channel table.
    pub hub: Arc<Hub>,
    /// Per-worker figures.
    pub stats: Vec<Arc<WorkerStats>>,
    /// Per-worker inboxes.
    pub inboxes: Vec<Arc<Inbox>>,
    /// Open subscriber connections (all workers).
    pub conns: AtomicUsize,
    /// Set while a drain is on (cleared by `resume`).
    pub draining: AtomicBool,
    /// The drain in progress, for its progress report.
    pub drain_state: Mutex<Option<DrainState>>,
    /// Serializes drain and resume (a drain in a cluster waits for its feed first).
    drain_gate: Mutex<()>,
    /// When the server started.
    pub started: Instant,
    /// Node id (shown in `/info`).
    pub node_id: String,
    /// The cluster, when `cluster.redis_url` is set.
    pub cluster: Option<Arc<Cluster>>,
    /// How the descriptor table is shared out (`max_connections` stays within it).
    pub fds: FdBudget,
    /// Subscriber connections per source address (with `max_connections_per_ip`).
    pub per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Who is subscribed to the channels `presence` names.
    pub presence: Arc<crate::presence::Presence>,
    /// Socket.IO sockets kept for connection state recovery.
    pub sio_recovery: crate::transport::socketio::Recoveries,
    /// Verifies subscriber tokens (`token_secret`, `token_public_key`, `token_jwks`).
    pub verifier: crate::auth::Verifier,
    /// Where [`Shared::request_stop`] sends (set by `serve`).
    pub(crate) stop: Mutex<Option<Sender<Stop>>>,
    /// The TLS of the listeners and of the admin port, for `ctl tls reload` and SIGHUP.
    pub tls: Vec<Arc<crate::tls::Context>>,
}

impl Shared {
    /// The shared state of a server (without a stop channel; `serve` adds it).
    pub fn new(
        cfg: Config,
        live: Arc<Live>,
        hub: Arc<Hub>,
        inboxes: Vec<Arc<Inbox>>,
        node_id: String,
        cluster: Option<Arc<Cluster>>,
    ) -> Shared {
        Shared {
            node_id,
            cluster,
            current: Mutex::new(cfg.clone()),
            // `serve` builds it first, so that a key file it cannot read stops the start;
            // here such a file leaves a verifier that accepts no token.
            verifier: crate::auth::Verifier::new(&cfg)
                .unwrap_or_else(|_| crate::auth::Verifier::refusing()),
            cfg,
            live,
            hub,
            stats: inboxes
                .iter()
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            inboxes,
            conns: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain_state: Mutex::new(None),
            drain_gate: Mutex::new(()),
            started: Instant::now(),
            fds: FdBudget {
                limit: 0,
                reserved: 0,
                connections: usize::MAX,
                direct: false,
            },
            per_ip: Mutex::new(HashMap::new()),
            sio_recovery: Default::default(),
            presence: Default::default(),
            stop: Mutex::new(None),
            tls: Vec::new(),
        }
    }

    /// Reads every TLS certificate and key again (new connections get them, open ones
    /// keep their session); on an error the old ones stay and the error is answered.
    pub fn reload_tls(&self) -> Result<usize, String> {
        if self.tls.is_empty() {
            return Err("no listener has TLS".into());
        }
        crate::tls::reload_all(&self.tls)
    }

    /// Takes up to `want` connection slots under `max_connections`; returns how many.
    /// A worker reserves before it accepts, so the descriptor table never fills.
    pub fn reserve_conns(&self, want: usize) -> usize {
        let max = self.live.max_connections();
        let mut cur = self.conns.load(Ordering::Relaxed);
        loop {
            let n = want.min(max.saturating_sub(cur));
            if n == 0 {
                return 0;
            }
            match self.conns.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back slots (unused reservations, closed connections).
    pub fn release_conns(&self, n: usize) {
        if n > 0 {
            self.conns.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Counts a connection from `ip` (`max_connections_per_ip`); false when that address
    /// already has its share.
    pub fn enter_ip(&self, ip: IpAddr) -> bool {
        let max = self.cfg.max_connections_per_ip;
        let mut t = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n as usize >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn leave_ip(&self, ip: IpAddr) {
        let mut t = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&ip);
            }
        }
    }

    /// True when subscribers need a token.
    pub fn token_auth(&self) -> bool {
        self.cfg.auth == AuthMode::Token
    }

    /// Up to `limit` connections from every worker (those of `user` only, when given).
    pub fn list_conns(&self, limit: usize, user: Option<&str>) -> Vec<crate::inbox::ConnInfo> {
        let mut all = Vec::new();
        for inbox in &self.inboxes {
            let (tx, rx) = std::sync::mpsc::channel();
            inbox.push(crate::inbox::Cmd::Conns {
                limit: limit - all.len().min(limit),
                user: user.map(Into::into),
                reply: tx,
            });
            if let Ok(list) = rx.recv_timeout(crate::limits::WORKER_REPLY_TIMEOUT) {
                all.extend(list);
            }
            if all.len() >= limit {
                break;
            }
        }
        all.truncate(limit);
        all
    }

    /// Publishes a message (admin port, control socket): through Redis in a cluster, into
    /// the local hub otherwise. With the disk store the answer carries a ticket to wait
    /// for before acknowledging ([`Shared::wait_ticket`]).
    pub fn publish(
        &self,
        channel: &str,
        content: &str,
        sender: &str,
        key: Option<&str>,
        commit: Commit,
    ) -> Result<Accepted, HubError> {
        check_channel(channel)?;
        match &self.cluster {
            Some(c) => {
                if self.hub.draining() {
                    return Err(HubError::Draining);
                }
                if content.len() > self.live.max_message_bytes() {
                    return Err(HubError::TooBig);
                }
                c.publish(&self.hub, channel, sender, content, key)
            }
            None => {
                let meta = PubMeta {
                    key,
                    sender,
                    commit,
                    ..PubMeta::default()
                };
                self.hub.publish(channel, content, &meta)
            }
        }
    }

    /// Waits (at most [`STORE_WAIT`]) until a disk-store ticket is committed.
    pub fn wait_ticket(&self, ticket: u64) -> Result<(), HubError> {
        match self.hub.store() {
            Some(s) if ticket > 0 => s.wait(ticket, STORE_WAIT).map_err(HubError::Store),
            _ => Ok(()),
        }
    }

    /// Publishes and waits for the commit (threads that may block: the control socket).
    pub fn publish_wait(
        &self,
        channel: &str,
        content: &str,
        key: Option<&str>,
    ) -> Result<Accepted, HubError> {
        let a = self.publish(channel, content, "", key, Commit::ByWriter)?;
        self.wait_ticket(a.ticket)?;
        Ok(Accepted { ticket: 0, ..a })
    }

    /// Publishes to every channel; returns how many.
    pub fn broadcast(&self, content: &str) -> Result<usize, HubError> {
        match &self.cluster {
            Some(c) => {
                let channels = c.all_channels(self.cfg.max_channels)?;
                for name in &channels {
                    self.publish(name, content, "", None, Commit::ByWriter)?;
                }
                Ok(channels.len())
            }
            None => {
                let (n, ticket) = self.hub.broadcast(content)?;
                self.wait_ticket(ticket)?;
                Ok(n)
            }
        }
    }

    /// A WebSocket client's publish, its rights already checked by its worker: answered
    /// now ([`ClientPublish::Now`]), or later through the worker's inbox (a
    /// [`crate::inbox::Cmd::PubDone`] for `to`: after the commit with the disk store,
    /// after the round trip to Redis in a cluster).
    pub fn publish_client(
        &self,
        channel: &str,
        content: &str,
        sender: Box<str>,
        to: ReplyTo,
    ) -> Result<ClientPublish, HubError> {
        check_channel(channel)?;
        if let Some(cluster) = &self.cluster {
            if self.hub.draining() {
                return Err(HubError::Draining);
            }
            if content.len() > self.live.max_message_bytes() {
                return Err(HubError::TooBig);
            }
            let job = Job::Publish {
                to,
                channel: Arc::from(channel),
                sender,
                content: content.into(),
            };
            cluster.submit_publish(&self.hub, &self.inboxes, job)?;
            return Ok(ClientPublish::Later);
        }
        let meta = PubMeta {
            sender: &sender,
            notify: self.hub.store().is_some().then_some(Notify {
                worker: to.worker,
                token: to.token,
            }),
            ..PubMeta::default()
        };
        let a = self.hub.publish(channel, content, &meta)?;
        Ok(if a.ticket == 0 {
            ClientPublish::Now(a)
        } else {
            ClientPublish::Later
        })
    }

    /// Closes a channel (on every node in a cluster).
    pub fn close_channel(&self, channel: &str) -> Result<(), HubError> {
        check_channel(channel)?;
        match &self.cluster {
            Some(c) => c.close(&self.hub, channel),
            None => {
                let t = self.hub.close_channel(channel)?;
                self.wait_ticket(t)
            }
        }
    }

    /// Drops a channel's history (on every node in a cluster).
    pub fn clear(&self, channel: &str) -> Result<(), HubError> {
        check_channel(channel)?;
        match &self.cluster {
            Some(c) => c.clear(channel),
            None => {
                let t = self.hub.clear(channel)?;
                self.wait_ticket(t)
            }
        }
    }

    /// A channel's figures: cluster-wide in a cluster (`None` for the cluster part when
    /// Redis cannot be reached).
    #[allow(clippy::type_complexity)]
    pub fn channel_info(
        &self,
        channel: &str,
    ) -> Result<(ChannelInfo, Option<Result<(), String>>), HubError> {
        check_channel(channel)?;
        let mut info = self.hub.info(channel).unwrap_or(ChannelInfo {
            name: channel.to_string(),
            epoch: Epoch::NONE,
            seq: 0,
            subscribers: 0,
            buffered: 0,
        });
        let Some(c) = &self.cluster else {
            return Ok((info, None));
        };
        let r = c
            .channel_state(channel)
            .and_then(|(epoch, seq, buffered)| Ok((epoch, seq, buffered, c.subscribers(channel)?)));
        match r {
            Ok((epoch, seq, buffered, subscribers)) => {
                if epoch.is_some() {
                    if epoch != info.epoch {
                        info.seq = 0;
                    }
                    info.epoch = epoch;
                    info.seq = info.seq.max(seq);
                }
                info.buffered = buffered as usize;
                info.subscribers = subscribers;
                Ok((info, Some(Ok(()))))
            }
            Err(e) => Ok((info, Some(Err(e.reason())))),
        }
    }

    /// Sums the workers' figures.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::collect(self.stats.iter().map(|s| &**s))
    }

    /// Starts a drain on every worker (idempotent): publishes are refused from now on,
    /// and every worker drains behind the messages accepted before, so none of those is
    /// lost to a subscriber closed ahead of it. In a cluster, the messages this node's
    /// publishers had acknowledged are first waited for (bounded by [`DRAIN_FEED_WAIT`])
    /// to come back through the feed.
    pub fn drain(&self) {
        self.drain_as(false);
    }

    /// A drain on the way to exit (SIGTERM, `shutdown`): `resume` cannot undo it.
    pub fn drain_to_exit(&self) {
        self.drain_as(true);
    }

    fn drain_as(&self, exiting: bool) {
        let _gate = self.drain_gate.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.drain_state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(st) = st.as_mut() {
                st.exiting |= exiting;
                return;
            }
            *st = Some(DrainState {
                since: Instant::now(),
                conns_at_start: self.conns.load(Ordering::Relaxed),
                exiting,
            });
        }
        self.draining.store(true, Ordering::SeqCst);
        info!("draining: no new connections or publishes, closing subscribers");
        if self.cluster.is_some() {
            self.hub.refuse_publishes();
            let deadline = Instant::now() + DRAIN_FEED_WAIT;
            while self.hub.unapplied() > 0 && Instant::now() < deadline {
                thread::sleep(DRAIN_POLL);
            }
        }
        self.hub.begin_drain();
    }

    /// Undoes a drain (`ctl resume`): publishes are accepted again and every worker listens
    /// again (its listeners bound anew), in order behind the drain. Returns how many
    /// workers answered; an error when the server is draining to exit, or when a worker
    /// could not listen again (that worker stays drained; `resume` can be retried).
    pub fn resume(&self) -> Result<usize, (u16, String)> {
        let _gate = self.drain_gate.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.drain_state.lock().unwrap_or_else(|p| p.into_inner());
            if st.is_some_and(|s| s.exiting) {
                return Err((
                    409,
                    "the server is shutting down: this drain cannot be undone".into(),
                ));
            }
            *st = None;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.hub.resume(tx);
        if self.draining.swap(false, Ordering::SeqCst) {
            info!("resumed: accepting connections and publishes again");
        }
        let deadline = Instant::now() + crate::limits::WORKER_REPLY_TIMEOUT;
        let mut errors = Vec::new();
        for _ in 0..self.inboxes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => return Err((503, "a worker did not answer".into())),
            }
        }
        if errors.is_empty() {
            Ok(self.inboxes.len())
        } else {
            Err((500, errors.join("; ")))
        }
    }

    /// Asks the main thread to stop.
    pub fn request_stop(&self, how: Stop) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(how);
        }
    }

    /// Applies `config set KEY VALUE` for a live key.
    pub fn set_config(&self, key: &str, value: &str) -> Result<serde_json::Value, String> {
        if !config::LIVE_KEYS.contains(&key) {
            return Err(format!(
                "'{key}' cannot be changed while running (live keys: {})",
                config::LIVE_KEYS.join(", ")
            ));
        }
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = cur.clone();
        next.set(key, value).map_err(|e| e.0)?;
        if key == "max_connections" {
            next.max_connections = self.fds.resolve(next.max_connections)?;
        }
        self.live.apply(&next);
        *cur = next;
        cur.get_json(Some(key)).map_err(|e| e.0)
    }
}

/// A drain in progress.
#[derive(Debug, Clone, Copy)]
pub struct DrainState {
    /// When it started.
    pub since: Instant,
    /// Subscriber connections open then.
    pub conns_at_start: usize,
    /// On the way to exit (not undone by `resume`).
    pub exiting: bool,
}

/// How a client's publish is answered.
#[derive(Debug)]
pub enum ClientPublish {
    /// Accepted: answer now.
    Now(Accepted),
    /// The answer comes through the worker's inbox.
    Later,
}

/// The one check of a channel name, for every publish whatever its front end.
fn check_channel(name: &str) -> Result<(), HubError> {
    protocol::message::validate_channel(name).map_err(HubError::BadChannel)
}
