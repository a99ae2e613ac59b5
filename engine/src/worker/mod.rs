//! A worker: one thread with its own reactor, listeners, connections, timer wheel,
//! channel index and inbox.
//!
//! The loop ([`Worker`]), once per turn: wait for events (bounded by the next timer
//! tick), handle them, drain the inbox (deliveries and commands), serve pipelined
//! requests held back, accept new connections, fire due timers. Work per turn is bounded:
//! the backend's read budget per connection, [`crate::limits::ACCEPT_BATCH`] accepts and
//! [`crate::limits::INBOX_BATCH`] commands, so one busy peer cannot starve the others.
//!
//! Everything a connection's handling needs is in [`Core`], in parts that know nothing of
//! the loop:
//!
//! | part | file | holds |
//! |---|---|---|
//! | connections | [`conns`] | the slab, generations, closes deferred to after the handler |
//! | output | [`out`] | send, the slow-consumer cut, graceful close, over the backend |
//! | input | [`input`] | bytes from the backend to the request parser or the transport |
//! | channel index | [`index`] | this worker's channel -> subscribers index, subscribing, replay plans |
//! | fan-out | [`fanout`] | the targets of a message, the bytes from their transports |
//! | HTTP | [`http`] | request routing, CORS, shared parameters, plain answers |
//! | Redis reads | [`remote`] | positions read from Redis for subscriptions (cluster) |
//! | checks | [`checks`] | message timeouts and token expiry |
//! | rate limits | [`limiter`] | per-connection token buckets |
//! | accepting | [`accept`] | the connection budget, eviction of slow heads, refusals |
//!
//! and the transports in [`crate::transport`], one file each. A close asked for inside a
//! handler is applied after it ([`Core::finish_closes`]), so no handler finds its slot
//! gone underneath it.

pub mod accept;
pub mod checks;
pub mod conns;
pub mod fanout;
pub mod handover;
pub mod http;
pub mod index;
pub mod input;
pub mod limiter;
pub mod logs;
pub mod out;
pub mod presence;
pub mod remote;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::ws::CloseCode;

use crate::conn::{flag, Illegal, Moved, State};
use crate::hub::Authority;
use crate::inbox::{Cmd, ConnInfo, Inbox};
use crate::limits::{DELIVER_BATCH, INBOX_BATCH, SCRATCH_BYTES};
use crate::memory;
use crate::metrics::{Counter, WorkerStats};
use crate::msg::{Msg, MsgKind};
use crate::reactor::{Backend, Event as IoEvent, ListenerId, Token};
use crate::shared::Shared;
use crate::timer::{Rng, TimerId, TimerWheel};
use crate::transport;
use crate::{debug, info, warn};
use accept::Acceptor;
use conns::Conns;
use index::Index;
use limiter::Limiters;
use remote::Remote;

/// Everything a connection's handling needs: the backend and the worker's parts (see the
/// module doc). Transports and the worker's parts are functions of it.
pub struct Core<B: Backend> {
    /// The worker's number.
    pub id: usize,
    /// State shared by every thread.
    pub shared: Arc<Shared>,
    /// This worker's figures.
    pub stats: Arc<WorkerStats>,
    /// This worker's inbox (Redis answers that fail at once are put here).
    pub inbox: Arc<Inbox>,
    /// The reactor backend.
    pub io: B,
    /// The connections.
    pub conns: Conns,
    /// The channel index.
    pub index: Index,
    /// Redis reads in flight.
    pub remote: Remote,
    /// Rate limits.
    pub limiters: Limiters,
    /// Timers.
    pub wheel: TimerWheel,
    /// The time of this turn.
    pub now: Instant,
    /// Heartbeat jitter.
    pub rng: Rng,
    /// Draining: no new connections, no keep-alive.
    pub draining: bool,
    /// Connections with pipelined requests to serve next turn.
    pub again: Vec<Token>,
    /// Each connection's source address, with `max_connections_per_ip`.
    pub peer_ips: HashMap<usize, IpAddr>,
    /// Connections and channels freed since memory was last given back.
    pub freed: u64,
    /// Rounds of giving memory back still to do.
    releases: u8,
    /// The connection table's capacity when memory was last given back.
    sized: usize,
    release_at: Instant,
    /// Scratch: read buffer.
    scratch: Vec<u8>,
    /// Scratch: an envelope being encoded.
    pub out: Vec<u8>,
    /// Scratch: messages a subscription replays.
    pub replay: Vec<Arc<Msg>>,
    /// Scratch: a fan-out's targets.
    targets: Vec<u32>,
    /// The Socket.IO part of the records (sessions, held requests, upgrades).
    pub sio: transport::socketio::Table,
    /// What the connections' log lines need beside their records, and trusted proxies.
    pub logs: logs::Logs,
}

impl<B: Backend> Core<B> {
    /// Live configuration keys.
    pub fn live(&self) -> &crate::config::Live {
        &self.shared.live
    }

    /// How far this worker may trust the local hub for positions.
    pub fn authority(&self) -> Authority {
        match &self.shared.cluster {
            None => Authority::Hub,
            Some(c) if c.up.load(Ordering::Acquire) => Authority::Replica,
            Some(_) => Authority::Stale,
        }
    }

    /// (Re)arms the connection's timer.
    pub fn arm(&mut self, slot: usize, after: Duration) {
        let token = self.conns.token(slot);
        let conn = &mut self.conns[slot];
        conn.timer = self
            .wheel
            .reschedule(conn.timer, self.now + after, token.raw());
    }

    /// Cancels the connection's timer.
    pub fn disarm(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        self.wheel.cancel(conn.timer);
        conn.timer = TimerId::NONE;
    }

    /// Arms the timer again unless the connection is closing.
    pub fn rearm(&mut self, slot: usize, after: Duration) {
        if !self.conns[slot].write_closed() {
            self.arm(slot, after);
        }
    }

    /// Counts a state transition; an illegal one (a bug) closes the connection.
    pub fn apply(&mut self, slot: usize, moved: Result<Moved, Illegal>) -> bool {
        match moved {
            Ok(m) => {
                if m.from != m.to {
                    self.stats.conn_delta(m.from, -1);
                    self.stats.conn_delta(m.to, 1);
                    if m.from == crate::metrics::Transport::Http
                        && m.to != crate::metrics::Transport::Poll
                    {
                        self.on_session(slot);
                    }
                }
                true
            }
            Err(e) => {
                warn!("worker {}: connection {slot}: {e}; closing it", self.id);
                debug_assert!(false, "illegal transition: {e}");
                self.close(slot);
                false
            }
        }
    }

    /// Removes the connections doomed by the handlers that just ran.
    pub fn finish_closes(&mut self) {
        while self.conns.any_doomed() {
            for slot in self.conns.take_doomed() {
                self.on_closed(slot);
                transport::closed(self, slot);
                self.unsubscribe_all(slot);
                let token = self.conns.token(slot);
                let conn = self.conns.remove(slot);
                self.freed += 1;
                self.wheel.cancel(conn.timer);
                self.stats.conn_delta(conn.state().transport(), -1);
                self.shared.release_conns(1);
                if let Some(ip) = self.peer_ips.remove(&slot) {
                    self.shared.leave_ip(ip);
                }
                self.limiters.remove(slot);
                if conn.sock != crate::reactor::NO_SOCK {
                    self.io.close(conn.sock, token);
                }
            }
        }
    }

    /// The connection's own timer fired (see the table in `conn`).
    fn on_timer(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        if conn.has(flag::CLOSE_AFTER_FLUSH) || conn.state() == State::Closing {
            return self.close(slot);
        }
        if conn.state() != State::Http {
            return transport::timer(self, slot);
        }
        let partial = conn.has_saved_input();
        if partial || !conn.has(flag::SERVED) {
            self.stats.inc(Counter::HandshakeTimeout);
        }
        if partial {
            self.respond_error(slot, 408, "request head not completed in time", &[]);
        } else {
            self.close(slot);
        }
    }

    /// After a flood has left: shrinks the tables it grew and gives the freed memory back
    /// to the OS (checked every [`crate::limits::RELEASE_CHECK`]).
    fn release_memory(&mut self) {
        if self.now < self.release_at {
            return;
        }
        self.release_at = self.now + crate::limits::RELEASE_CHECK;
        if self.freed >= crate::limits::RELEASE_AFTER_FREES {
            self.freed = 0;
            // Blocks other threads still hold for this one come back in the next rounds.
            self.releases = crate::limits::RELEASE_ROUNDS;
        }
        if self.conns.capacity() != self.sized {
            // The table grew (or shrank): its old copy is free memory.
            self.sized = self.conns.capacity();
            self.releases = self.releases.max(1);
        }
        if self.releases == 0 {
            return;
        }
        self.releases -= 1;
        self.index.shrink();
        self.sio.shrink();
        self.io.shrink();
        self.shrink_seen();
        if memory::sparse(self.conns.len(), self.conns.capacity()) {
            self.conns.shrink_to_fit();
        }
        if memory::sparse(self.peer_ips.len(), self.peer_ips.capacity()) {
            self.peer_ips.shrink_to(self.peer_ips.len() * 2);
        }
        memory::release_freed();
    }

    /// Ends every connection (a drain).
    fn end_all(&mut self, code: CloseCode, reason: &str) {
        for slot in self.conns.slots() {
            if !self.conns[slot].doomed() {
                transport::end(self, slot, code, reason);
            }
        }
    }
}

/// One worker thread: the loop around a [`Core`].
pub struct Worker<B: Backend> {
    core: Core<B>,
    inbox: Arc<Inbox>,
    acceptor: Acceptor,
    /// The address of each listener, to listen again after a drain (`resume`).
    listen_addrs: Vec<(ListenerId, std::net::SocketAddr)>,
    inbox_more: bool,
    batch: Vec<Arc<Msg>>,
    fired: Vec<(TimerId, u64)>,
    events: Vec<IoEvent>,
    running: bool,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl<B: Backend> Worker<B> {
    /// A worker with its reactor, its listeners (already bound, SO_REUSEPORT, by id) and
    /// inbox.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        mut io: B,
        listeners: Vec<(ListenerId, std::net::TcpListener)>,
        inbox: Arc<Inbox>,
    ) -> std::io::Result<Worker<B>> {
        let ids: Vec<ListenerId> = listeners.iter().map(|(i, _)| *i).collect();
        let listen_addrs = listeners
            .iter()
            .map(|(i, l)| l.local_addr().map(|a| (*i, a)))
            .collect::<std::io::Result<Vec<_>>>()?;
        for (lid, l) in listeners {
            io.listen(lid, l)?;
        }
        let now = Instant::now();
        let seed = (unix_nanos() ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ u64::from(std::process::id()) << 17;
        let core = Core {
            id,
            stats: shared.stats[id].clone(),
            limiters: Limiters::new(&shared.cfg, now),
            logs: logs::Logs::new(&shared.cfg),
            shared,
            inbox: inbox.clone(),
            io,
            conns: Conns::new(),
            index: Index::default(),
            remote: Remote::default(),
            wheel: TimerWheel::new(now),
            now,
            rng: Rng::new(seed),
            draining: false,
            again: Vec::new(),
            peer_ips: HashMap::new(),
            freed: 0,
            releases: 0,
            sized: 0,
            release_at: now,
            scratch: vec![0; SCRATCH_BYTES],
            out: Vec::with_capacity(4096),
            replay: Vec::new(),
            targets: Vec::new(),
            sio: transport::socketio::Table::default(),
        };
        Ok(Worker {
            core,
            inbox,
            acceptor: Acceptor::new(&ids),
            listen_addrs,
            inbox_more: false,
            batch: Vec::new(),
            fired: Vec::new(),
            events: Vec::with_capacity(1024),
            running: true,
        })
    }

    /// Runs the loop until a `Shutdown` command.
    pub fn run(mut self) {
        debug!("worker {} running on {}", self.core.id, self.core.io.name());
        while self.running {
            self.turn(None);
        }
        let cx = &mut self.core;
        debug!(
            "worker {} stopped with {} connections",
            cx.id,
            cx.conns.len()
        );
        let open = cx.conns.len();
        for slot in cx.conns.slots() {
            let token = cx.conns.token(slot);
            let c = cx.conns.remove(slot);
            cx.stats.conn_delta(c.state().transport(), -1);
            if c.sock != crate::reactor::NO_SOCK {
                cx.io.close(c.sock, token);
            }
        }
        cx.shared.conns.fetch_sub(open, Ordering::Relaxed);
        cx.io.shutdown();
    }

    /// How long the next wait may last.
    fn wait_timeout(&self, max_wait: Option<Duration>) -> Option<Duration> {
        let cx = &self.core;
        let mut timeout = cx.wheel.poll_timeout(cx.now);
        if !cx.again.is_empty() || self.inbox_more || self.acceptor.due() {
            timeout = Some(Duration::ZERO);
        }
        let mut cap = |until: Instant| {
            let left = until.saturating_duration_since(cx.now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        };
        if let Some(until) = self.acceptor.paused_until {
            cap(until);
        }
        if cx.freed >= crate::limits::RELEASE_AFTER_FREES || cx.releases > 0 {
            // Memory to give back even if nothing else happens.
            cap(cx.release_at);
        }
        if let Some(max) = max_wait {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        timeout
    }

    /// One turn of the loop: wait (at most until the next timer tick, or `max_wait`),
    /// handle events, the inbox, held-back pipelined requests, accepts and due timers.
    fn turn(&mut self, max_wait: Option<Duration>) {
        let timeout = self.wait_timeout(max_wait);
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        if let Err(e) = self.core.io.wait(timeout, &mut events) {
            warn!("worker {}: wait failed: {e}", self.core.id);
        }
        self.core.now = Instant::now();
        for ev in events.drain(..) {
            self.on_event(ev);
        }
        self.events = events;
        self.core.finish_closes();
        self.drain_inbox();
        self.core.finish_closes();
        self.run_again();
        if let Some(until) = self.acceptor.paused_until {
            if self.core.now >= until {
                self.acceptor.paused_until = None;
            }
        }
        if self.acceptor.due() {
            self.accept();
        }
        self.core.now = Instant::now();
        self.run_timers();
        self.core.finish_closes();
    }

    fn on_event(&mut self, ev: IoEvent) {
        let token = match ev {
            IoEvent::Acceptable(id) => return self.acceptor.mark(id),
            IoEvent::Wake => return,
            IoEvent::Readable(t) | IoEvent::Failed(t) | IoEvent::Writable(t) => t,
        };
        let cx = &mut self.core;
        if !cx.conns.alive(token) {
            return;
        }
        let slot = token.slot();
        match ev {
            IoEvent::Writable(_) => cx.on_written(slot),
            IoEvent::Readable(_) => cx.read(slot),
            IoEvent::Failed(_) => cx.close(slot),
            IoEvent::Acceptable(_) | IoEvent::Wake => {}
        }
    }

    /// Pipelined requests that waited while a request was held.
    fn run_again(&mut self) {
        let cx = &mut self.core;
        if cx.again.is_empty() {
            return;
        }
        for token in std::mem::take(&mut cx.again) {
            if !cx.conns.alive(token) {
                continue;
            }
            let slot = token.slot();
            // Saved input first, then the backend's.
            if cx.conns[slot].has_saved_input() && cx.conns[slot].state() == State::Http {
                cx.on_data(slot, &mut []);
            }
            cx.read(slot);
        }
        cx.finish_closes();
    }

    fn drain_inbox(&mut self) {
        self.inbox.arm();
        self.inbox_more = false;
        let mut batch = std::mem::take(&mut self.batch);
        let mut handled = 0;
        let mut next: Option<Cmd> = None;
        while self.running {
            let cmd = match next.take() {
                Some(c) => c,
                None if handled >= INBOX_BATCH => {
                    self.inbox_more = true;
                    break;
                }
                None => match self.inbox.pop() {
                    Some(c) => c,
                    None => break,
                },
            };
            handled += 1;
            let Cmd::Deliver(msg) = cmd else {
                self.on_cmd(cmd);
                continue;
            };
            if msg.kind != MsgKind::Data {
                self.core.fan_out(std::slice::from_ref(&msg));
                continue;
            }
            // Consecutive messages of one channel go out together: one write per
            // subscriber for the lot.
            let key = msg.key;
            batch.push(msg);
            while batch.len() < DELIVER_BATCH {
                match self.inbox.pop() {
                    Some(Cmd::Deliver(m)) if m.kind == MsgKind::Data && m.key == key => {
                        handled += 1;
                        batch.push(m);
                    }
                    Some(other) => {
                        next = Some(other);
                        break;
                    }
                    None => break,
                }
            }
            self.core.fan_out(&batch);
            batch.clear();
        }
        if let Some(cmd) = next {
            self.on_cmd(cmd);
        }
        self.batch = batch;
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let cx = &mut self.core;
        match cmd {
            Cmd::Deliver(msg) => cx.fan_out(std::slice::from_ref(&msg)),
            Cmd::Kick { token, reply } => {
                let found = cx.conns.alive(token);
                if found {
                    cx.stats.inc(Counter::Kicked);
                    crate::event!(
                        Info,
                        "kicked",
                        conn = cx.conn_id(token.slot()),
                        peer = cx.peer(token.slot())
                    );
                    transport::end(cx, token.slot(), CloseCode::POLICY, "kicked by operator");
                }
                let _ = reply.send(found);
            }
            Cmd::Conns { limit, user, reply } => {
                let _ = reply.send(self.list_conns(limit, user.as_deref()));
            }
            Cmd::Drain => self.drain(),
            Cmd::Resume { reply } => {
                let _ = reply.send(self.resume());
            }
            Cmd::Shutdown => self.running = false,
            Cmd::Freeze {
                reply,
                resume,
                last,
            } => self.freeze(reply, resume, last),
            Cmd::PubDone(done) => transport::ws_ops::on_pub_done(cx, done),
            Cmd::Remote(reply) => cx.on_remote(reply),
            Cmd::Sio(c) => transport::socketio::on_cmd(cx, *c),
            Cmd::Presence(ev) => cx.on_presence(&ev),
        }
    }

    fn list_conns(&mut self, limit: usize, user: Option<&str>) -> Vec<ConnInfo> {
        let cx = &mut self.core;
        let sub_of = |c: &crate::conn::Conn| {
            c.ext
                .as_ref()
                .and_then(|e| e.grant.as_ref())
                .and_then(|g| g.sub.as_deref().map(str::to_string))
        };
        let slots: Vec<usize> = cx
            .conns
            .iter()
            .filter(|(_, c)| user.is_none() || sub_of(c).as_deref() == user)
            .map(|(s, _)| s)
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let token = cx.conns.token(slot);
            let peer = cx.peer(slot).unwrap_or_else(|| "-".into());
            let id = cx.conn_id(slot).to_string();
            let c = &cx.conns[slot];
            out.push(ConnInfo {
                id,
                transport: c.state().transport().as_str(),
                peer,
                channels: c
                    .subs
                    .as_slice()
                    .iter()
                    .map(|s| cx.index.chan(s.local).name.to_string())
                    .collect(),
                queued: cx.io.pending(token),
                user: sub_of(c),
            });
        }
        out
    }

    fn drain(&mut self) {
        if self.core.draining {
            return;
        }
        self.core.draining = true;
        if self.acceptor.listening {
            self.core.io.stop_listening();
            self.acceptor.listening = false;
        }
        self.core
            .end_all(CloseCode::GOING_AWAY, "server shutting down");
        self.core.finish_closes();
        info!(
            "worker {}: draining, {} connections closing",
            self.core.id,
            self.core.conns.len()
        );
    }

    /// Undoes [`Worker::drain`]: binds its listeners again (SO_REUSEPORT, on the
    /// addresses they had) and accepts. On an error nothing is left half listening and
    /// the worker stays drained.
    fn resume(&mut self) -> Result<(), String> {
        if !self.core.draining {
            return Ok(());
        }
        if !self.acceptor.listening {
            for &(id, addr) in &self.listen_addrs {
                let bound =
                    crate::reactor::bind_reuseport(addr).and_then(|l| self.core.io.listen(id, l));
                if let Err(e) = bound {
                    self.core.io.stop_listening();
                    let e = format!(
                        "worker {}: cannot listen on {addr} again: {e}",
                        self.core.id
                    );
                    crate::error!("{e}");
                    return Err(e);
                }
            }
            self.acceptor.listening = true;
            for &(id, _) in &self.listen_addrs {
                self.acceptor.mark(id);
            }
        }
        self.core.draining = false;
        info!("worker {}: resumed, accepting again", self.core.id);
        Ok(())
    }

    fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        let cx = &mut self.core;
        cx.wheel.advance(cx.now, &mut fired);
        for (id, key) in fired.drain(..) {
            let token = Token::from_raw(key);
            let tag = Token::tag_of(key);
            let check = tag == checks::CHECK_TAG;
            if !cx.conns.alive(token) {
                continue;
            }
            let slot = token.slot();
            if tag == transport::socketio::LATER_TAG {
                transport::socketio::on_later(cx, slot);
            } else if check {
                cx.on_check(slot);
            } else if cx.conns[slot].timer == id {
                cx.conns[slot].timer = TimerId::NONE;
                cx.on_timer(slot);
            }
        }
        self.fired = fired;
        let now = cx.now;
        cx.limiters.sweep(now);
        cx.release_memory();
    }
}
