//! A worker: one thread with its own reactor, listener, connection slab, timer wheel,
//! channel index and inbox.
//!
//! The loop, once per turn: wait for readiness (bounded by the next timer tick), handle
//! socket events, drain the inbox (deliveries and commands), re-run connections that hit
//! their per-turn read budget, accept new connections, fire due timers.
//!
//! Reads go into one per-worker scratch buffer; only the unparsed tail of a request head
//! is kept per connection (WebSocket frames are consumed whole by the decoder). Writes go
//! straight to the socket; only what the kernel did not take is queued, as shared
//! references to the pre-encoded message. Fan-out inside a worker takes no lock: each
//! worker keeps its own channel -> connections index.
//!
//! Work per turn is bounded: at most [`READ_BUDGET`] bytes per connection, [`ACCEPT_BATCH`]
//! accepts and [`INBOX_BATCH`] commands, so one busy peer cannot starve the others.

use bytes::Bytes;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::http::{self, Method, Parsed, ResponseBody, EMPTY_HEADER};
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::{self, CloseCode, DataKind, Decoded, DecoderConfig, Event, OpCode, Role};

use crate::auth::{self, Grant};
use crate::cluster::helper::{answer_failed, Job, ReplyTo};
use crate::conn::{flag, Conn, State, Sub};
use crate::epoch::Epoch;
use crate::hub::{Authority, CatchUp, HubError, Since, Subscribed};
use crate::inbox::{Cmd, ConnInfo, Inbox, PubDone, RemoteReply, RemoteStream};
use crate::limits::REJECT_BATCH;
use crate::memory;
use crate::metrics::{Counter, Transport, WorkerStats};
use crate::msg::error_response;
use crate::msg::{ChanKey, Msg, MsgKind};
use crate::reactor::{is_resource_error, Backend, Event as IoEvent, Part, Sock, Token};
use crate::shared::Shared;
use crate::timer::{jitter, Rng, TimerId, TimerWheel};

mod ops;
use crate::limits::{
    ACCEPT_BATCH, ACCEPT_WARN_INTERVAL, DELIVER_BATCH, HEADERS_CAP, INBOX_BATCH, READ_BUDGET,
    SCRATCH_BYTES, WORKER_MAX_IOV,
};
use crate::{debug, info, warn};

/// Connection generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = 0xFF_FFFF;

/// The answer when `max_connections` is reached.
static FULL_RESPONSE: LazyLock<Vec<u8>> =
    LazyLock::new(|| error_response(503, "too many connections (max_connections)"));
/// The answer when one address has `max_connections_per_ip`.
static PER_IP_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    error_response(
        503,
        "too many connections from your address (max_connections_per_ip)",
    )
});
/// The answer while draining.
static DRAINING_RESPONSE: LazyLock<Vec<u8>> =
    LazyLock::new(|| error_response(503, "server shutting down"));
/// A WebSocket ping with no payload.
const PING_FRAME: &[u8] = &[0x89, 0x00];
/// Sent first on an iframe stream: a document to hold the scripts, padded so that old
/// browsers start rendering (and running scripts) at once.
const IFRAME_PREAMBLE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>";

/// A subscription's cursor carries this bit while its position is being read from Redis:
/// every delivery is at or below it, so none gets through until the read is answered and
/// the cursor is set (seqs never come near 2^63).
const PAUSED: u64 = 1 << 63;

/// A worker-local channel: its subscribers on this worker.
struct LocalChan {
    key: ChanKey,
    name: Arc<str>,
    /// The stream's epoch, as last seen here (written in SSE cursors).
    epoch: Epoch,
    conns: Vec<u32>,
}

/// A subscription whose buffered messages are still to be replayed.
struct PendingReplay {
    local: u32,
    name: Arc<str>,
    epoch: Epoch,
    seq: u64,
    gap: Option<(u64, u64)>,
    reset: bool,
    replay: Vec<Arc<Msg>>,
    /// The position to read from Redis (cluster), instead of a replay.
    remote: Option<(u64, Epoch)>,
}

/// A Redis read a connection waits for (cluster mode).
#[derive(Debug, Clone, Copy)]
struct RemoteReq {
    token: Token,
    local: u32,
    /// The asked position (for SSE cursors while waiting).
    since: u64,
    epoch: Epoch,
    /// For a long-poll (answered with what the read finds) or a poll's `next_seq`.
    kind: ReqKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Stream,
    Poll,
    NextSeq,
}

/// One item a Redis replay emits.
enum Emit<'a> {
    Msg(&'a Arc<Msg>),
    Envelope(&'a Message<'a>),
}

/// The routes of the subscriber port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ws,
    Echo,
    Sse,
    Poll,
    Stream,
    Iframe,
    Ping,
    Health,
}

/// An error answered on the HTTP level: status and reason.
type Reject = (u16, String);

fn reject(status: u16, reason: impl Into<String>) -> Reject {
    (status, reason.into())
}

/// One worker thread's state.
pub struct Worker<B: Backend> {
    id: usize,
    shared: Arc<Shared>,
    stats: Arc<WorkerStats>,
    inbox: Arc<Inbox>,
    io: B,
    listening: bool,
    accept_more: bool,
    accept_paused_until: Option<Instant>,
    last_accept_warn: Option<Instant>,
    conns: Slab<Conn>,
    generation: u32,
    wheel: TimerWheel,
    chans: Slab<LocalChan>,
    by_key: HashMap<ChanKey, u32, crate::reactor::TokenState>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    replay: Vec<Arc<Msg>>,
    targets: Vec<u32>,
    batch: Vec<Arc<Msg>>,
    fired: Vec<(TimerId, u64)>,
    accepted: Vec<Sock>,
    again: Vec<Token>,
    remote: HashMap<u64, RemoteReq>,
    next_req: u64,
    /// Each connection's source address, with `max_connections_per_ip`.
    peer_ips: HashMap<usize, std::net::IpAddr>,
    /// Rate-limit buckets of the connections that used some lately.
    limiters: HashMap<usize, ops::Limiter>,
    limiter_sweep_at: Instant,
    /// Connections that have not finished their first request, oldest first (stale
    /// entries are skipped when popped): at `max_connections` a newcomer takes the place
    /// of the oldest.
    handshaking: VecDeque<(u32, u32)>,
    /// Connections and channels freed since memory was last given back.
    freed: u64,
    release_at: Instant,
    inbox_more: bool,
    rng: Rng,
    now: Instant,
    draining: bool,
    running: bool,
}

fn token_of(slot: usize, generation: u32) -> Token {
    u64::from(generation) << 32 | slot as u64
}

fn split_token(token: Token) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<B: Backend> Worker<B> {
    /// A worker with its reactor, its listener (already bound, SO_REUSEPORT) and inbox.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        mut io: B,
        listener: std::net::TcpListener,
        inbox: Arc<Inbox>,
    ) -> io::Result<Worker<B>> {
        io.listen(listener)?;
        let now = Instant::now();
        let seed = (unix_now() ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ u64::from(std::process::id()) << 17;
        Ok(Worker {
            id,
            stats: shared.stats[id].clone(),
            shared,
            inbox,
            io,
            listening: true,
            accept_more: true,
            accept_paused_until: None,
            last_accept_warn: None,
            conns: Slab::new(),
            generation: 0,
            wheel: TimerWheel::new(now),
            chans: Slab::new(),
            by_key: HashMap::default(),
            scratch: vec![0; SCRATCH_BYTES],
            out: Vec::with_capacity(4096),
            replay: Vec::new(),
            targets: Vec::new(),
            batch: Vec::new(),
            fired: Vec::new(),
            accepted: Vec::new(),
            again: Vec::new(),
            remote: HashMap::new(),
            next_req: 0,
            peer_ips: HashMap::new(),
            limiters: HashMap::new(),
            limiter_sweep_at: now,
            handshaking: VecDeque::new(),
            freed: 0,
            release_at: now,
            inbox_more: false,
            rng: Rng::new(seed),
            now,
            draining: false,
            running: true,
        })
    }

    /// Runs the loop until a `Shutdown` command.
    pub fn run(mut self) {
        let mut events: Vec<IoEvent> = Vec::with_capacity(1024);
        debug!("worker {} running on {}", self.id, self.io.name());
        while self.running {
            self.turn(&mut events, None);
        }
        debug!(
            "worker {} stopped with {} connections",
            self.id,
            self.conns.len()
        );
        let open = self.conns.len();
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            let c = self.conns.remove(slot);
            self.stats.conn_delta(c.state.transport(), -1);
            self.io.close(c.sock, token_of(slot, c.generation));
        }
        self.shared.conns.fetch_sub(open, Ordering::Relaxed);
        self.io.shutdown();
    }

    /// One turn of the loop: wait (at most until the next timer tick, or `max_wait`),
    /// handle socket events, the inbox, deferred reads, accepts and due timers.
    fn turn(&mut self, events: &mut Vec<IoEvent>, max_wait: Option<Duration>) {
        let mut timeout = self.wheel.poll_timeout(self.now);
        let busy = !self.again.is_empty()
            || self.inbox_more
            || (self.accept_more && self.listening && self.accept_paused_until.is_none());
        if busy {
            timeout = Some(Duration::ZERO);
        }
        if let Some(until) = self.accept_paused_until {
            let left = until.saturating_duration_since(self.now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if self.freed >= crate::limits::RELEASE_AFTER_FREES {
            // Memory to give back even if nothing else happens.
            let left = self.release_at.saturating_duration_since(self.now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if let Some(max) = max_wait {
            timeout = Some(timeout.map_or(max, |t| t.min(max)));
        }
        events.clear();
        if let Err(e) = self.io.wait(timeout, events) {
            warn!("worker {}: wait failed: {e}", self.id);
        }
        self.now = Instant::now();
        for ev in events.drain(..) {
            self.on_event(ev);
        }
        self.drain_inbox();
        self.run_again();
        if let Some(until) = self.accept_paused_until {
            if self.now >= until {
                self.accept_paused_until = None;
                self.accept_more = true;
            }
        }
        if self.accept_more && self.accept_paused_until.is_none() {
            self.accept();
        }
        self.now = Instant::now();
        self.run_timers();
        self.io.flush();
    }

    fn live(&self) -> &crate::config::Live {
        &self.shared.live
    }

    fn conn(&self, slot: usize, generation: u32) -> Option<&Conn> {
        self.conns.get(slot).filter(|c| c.generation == generation)
    }

    fn alive(&self, slot: usize, generation: u32) -> bool {
        self.conn(slot, generation).is_some()
    }

    // ---------------------------------------------------------------- accept

    fn accept(&mut self) {
        if !self.listening {
            self.accept_more = false;
            return;
        }
        // A slot is reserved before its socket is accepted: the descriptor table never
        // fills, and what comes past the cap is answered, a few at a time.
        let room = self
            .io
            .slots()
            .map_or(ACCEPT_BATCH, |n| n.saturating_sub(self.conns.len()));
        let granted = if self.draining {
            0
        } else {
            self.shared.reserve_conns(ACCEPT_BATCH.min(room))
        };
        let want = if granted == 0 { REJECT_BATCH } else { granted };
        let mut fds = std::mem::take(&mut self.accepted);
        let result = self.io.accept(&mut fds, want);
        let mut used = 0;
        let mut granted = granted;
        for fd in fds.drain(..) {
            if used >= granted && !self.draining && self.evict_handshake() {
                // The slot of a connection that had not finished its request head.
                granted += self.shared.reserve_conns(1);
            }
            if used < granted {
                if self.add_conn(fd) {
                    used += 1;
                }
            } else {
                self.reject(fd, Counter::RejectedFull);
            }
        }
        self.accepted = fds;
        self.shared.release_conns(granted - used);
        if granted == 0 {
            self.on_full();
            return;
        }
        match result {
            Ok(more) => self.accept_more = more,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM (or anything unexpected): keep serving
                // what we have, retry after a pause instead of spinning on a listener
                // that stays readable.
                self.stats.inc(Counter::AcceptErrors);
                let pause = self.live().accept_pause();
                if self.accept_warning_due() {
                    let kind = if is_resource_error(&e) {
                        "out of descriptors or memory"
                    } else {
                        "unexpected error"
                    };
                    warn!(
                        "worker {}: accept failed ({kind}): {e}; pausing accepts for {} ms ({} connections open)",
                        self.id,
                        pause.as_millis(),
                        self.conns.len()
                    );
                }
                self.accept_paused_until = Some(self.now + pause);
                self.accept_more = false;
            }
        }
    }

    fn accept_warning_due(&mut self) -> bool {
        let due = self
            .last_accept_warn
            .is_none_or(|t| self.now.duration_since(t) >= ACCEPT_WARN_INTERVAL);
        if due {
            self.last_accept_warn = Some(self.now);
        }
        due
    }

    /// `max_connections` reached (or draining): what waits is answered 503 a few at a
    /// time, and accepting pauses for `accept_pause_ms`.
    fn on_full(&mut self) {
        let pause = self.live().accept_pause();
        if !self.draining && self.accept_warning_due() {
            warn!(
                "worker {}: max_connections ({}) reached: new subscribers are answered 503, accepting pauses {} ms at a time",
                self.id,
                self.live().max_connections(),
                pause.as_millis()
            );
        }
        self.io.pause_accept();
        self.accept_paused_until = Some(self.now + pause);
        self.accept_more = false;
    }

    /// Closes this worker's oldest connection still in its first request head (a
    /// slowloris, or a client about to be cut by the handshake timeout anyway) to make
    /// room for a newcomer; false when there is none.
    fn evict_handshake(&mut self) -> bool {
        while let Some((slot, generation)) = self.handshaking.pop_front() {
            let slot = slot as usize;
            let waiting = self
                .conn(slot, generation)
                .is_some_and(|c| c.state == State::Http && !c.has(flag::SERVED));
            if waiting {
                self.stats.inc(Counter::Evicted);
                self.respond_error(slot, 503, "server full: request head too slow", &[]);
                self.close_now(slot);
                return true;
            }
        }
        false
    }

    /// Answers a socket that will not be served and closes it.
    fn reject(&mut self, sock: Sock, why: Counter) {
        self.stats.inc(why);
        let answer: &'static [u8] = match why {
            Counter::RejectedPerIp => &PER_IP_RESPONSE,
            _ if self.draining => &DRAINING_RESPONSE,
            _ => &FULL_RESPONSE,
        };
        self.io.reject(sock, answer);
    }

    /// Takes a new connection into the slab (its slot is reserved); false when it was
    /// refused instead.
    fn add_conn(&mut self, sock: Sock) -> bool {
        let mut ip = None;
        if self.shared.cfg.max_connections_per_ip > 0 {
            let Some(addr) = self.io.peer_addr(sock) else {
                self.io.reject(sock, &FULL_RESPONSE);
                return false;
            };
            if !self.shared.enter_ip(addr.ip()) {
                self.reject(sock, Counter::RejectedPerIp);
                return false;
            }
            ip = Some(addr.ip());
        }
        self.io.set_nodelay(sock);
        // Generations are 24 bits (io_uring carries them in user_data) and never 0 (a
        // zero token means "none" to the backends).
        self.generation = (self.generation + 1) & GENERATION_MASK;
        if self.generation == 0 {
            self.generation = 1;
        }
        let generation = self.generation;
        let deadline = self.now + self.live().handshake_timeout();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let token = token_of(slot, generation);
        if let Err(e) = self.io.add(sock, token) {
            warn!("worker {}: cannot watch a new connection: {e}", self.id);
            self.io.close(sock, token);
            if let Some(ip) = ip {
                self.shared.leave_ip(ip);
            }
            return false;
        }
        let mut conn = Conn::new(sock, generation);
        conn.timer = self.wheel.insert(deadline, token);
        entry.insert(conn);
        self.handshaking.push_back((slot as u32, generation));
        if self.handshaking.len() > 2 * self.conns.len() + 64 {
            // Drop the entries of connections that are served or gone.
            let conns = &self.conns;
            self.handshaking.retain(|&(s, g)| {
                conns
                    .get(s as usize)
                    .is_some_and(|c| c.generation == g && !c.has(flag::SERVED))
            });
        }
        if let Some(ip) = ip {
            self.peer_ips.insert(slot, ip);
        }
        self.stats.inc(Counter::Accepted);
        self.stats.conn_delta(Transport::Http, 1);
        true
    }

    // ---------------------------------------------------------------- events

    fn on_event(&mut self, ev: IoEvent) {
        let token = match ev {
            IoEvent::Acceptable => {
                self.accept_more = true;
                return;
            }
            IoEvent::Wake => return,
            IoEvent::Readable(t)
            | IoEvent::Input(t, _)
            | IoEvent::Eof(t)
            | IoEvent::Failed(t)
            | IoEvent::Writable(t) => t,
        };
        let (slot, generation) = split_token(token);
        if !self.alive(slot, generation) {
            if let IoEvent::Input(_, input) = ev {
                // Give the buffer back even though its connection is gone.
                let mut scratch = std::mem::take(&mut self.scratch);
                self.io.take_input(input, &mut scratch);
                self.scratch = scratch;
            }
            return;
        }
        match ev {
            IoEvent::Writable(_) => self.flush(slot),
            IoEvent::Readable(_) => self.read(slot),
            IoEvent::Input(_, input) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                let n = self.io.take_input(input, &mut scratch);
                self.on_data(slot, &mut scratch[..n]);
                self.scratch = scratch;
            }
            IoEvent::Eof(_) | IoEvent::Failed(_) => self.close_now(slot),
            IoEvent::Acceptable | IoEvent::Wake => {}
        }
    }

    fn run_again(&mut self) {
        if self.again.is_empty() {
            return;
        }
        let again = std::mem::take(&mut self.again);
        for token in again {
            let (slot, generation) = split_token(token);
            if !self.alive(slot, generation) {
                continue;
            }
            // Saved input (pipelined requests) first, then the socket.
            let has_saved = self.conns[slot]
                .ext
                .as_ref()
                .is_some_and(|e| !e.rbuf.is_empty());
            if has_saved && self.conns[slot].state == State::Http {
                self.on_data(slot, &mut []);
            }
            if self.alive(slot, generation) {
                self.read(slot);
            }
        }
    }

    fn read(&mut self, slot: usize) {
        let generation = self.conns[slot].generation;
        let mut budget = READ_BUDGET;
        let mut scratch = std::mem::take(&mut self.scratch);
        while let Some(conn) = self
            .conns
            .get_mut(slot)
            .filter(|c| c.generation == generation)
        {
            if conn.state == State::Poll && conn.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty()) {
                // A held long-poll with a pipelined request already saved: leave the rest
                // in the kernel until the poll is answered.
                break;
            }
            let sock = conn.sock;
            match self.io.read(sock, &mut scratch) {
                Ok(0) => {
                    self.close_now(slot);
                    break;
                }
                Ok(n) => {
                    self.on_data(slot, &mut scratch[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.again.push(token_of(slot, generation));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close_now(slot);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Handles received bytes, joined with any saved unparsed input.
    fn on_data(&mut self, slot: usize, data: &mut [u8]) {
        let generation = self.conns[slot].generation;
        let saved = self.conns[slot]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.rbuf))
            .unwrap_or_default();
        if saved.is_empty() {
            let used = self.process(slot, data);
            self.keep_unparsed(slot, generation, &data[used..], true);
        } else {
            let mut buf = saved;
            buf.extend_from_slice(data);
            let used = self.process(slot, &mut buf);
            // Still a head begun before (unless a request was taken from it).
            let fresh = used > 0;
            self.keep_unparsed(slot, generation, &buf[used..], fresh);
        }
        if self.conn(slot, generation).is_some_and(|c| c.state.is_ws()) {
            self.watch_message(slot);
        }
    }

    /// Keeps input not parsed yet. `fresh`: it begins a new request head (the previous
    /// input was all taken), whose clock starts now.
    fn keep_unparsed(&mut self, slot: usize, generation: u32, rest: &[u8], fresh: bool) {
        let limit = self.shared.cfg.max_head_bytes;
        let Some(conn) = self
            .conns
            .get_mut(slot)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        if rest.is_empty() {
            conn.shrink();
            return;
        }
        let before = conn.ext.as_ref().map_or(0, |e| e.rbuf.len());
        if before + rest.len() > limit {
            // Only a held long-poll can get here (the head parser enforces the limit
            // itself): a client pipelining this much while waiting is misbehaving.
            self.close_now(slot);
            return;
        }
        conn.ext().rbuf.extend_from_slice(rest);
        if fresh && before == 0 && conn.state == State::Http && conn.has(flag::SERVED) {
            // The next request on a keep-alive connection has begun: its head gets the
            // handshake timeout, not what is left of the idle one.
            let t = self.live().handshake_timeout();
            self.arm(slot, t);
        }
    }

    /// Feeds input to the connection's state machine; returns the bytes consumed.
    fn process(&mut self, slot: usize, input: &mut [u8]) -> usize {
        let generation = self.conns[slot].generation;
        let mut pos = 0;
        while pos < input.len() {
            let Some(conn) = self.conn(slot, generation) else {
                return input.len();
            };
            match conn.state {
                State::Http => match self.on_request(slot, &input[pos..]) {
                    Some(n) => pos += n,
                    None => return pos,
                },
                State::Ws | State::Echo => {
                    if conn.has(flag::CLOSE_SENT) {
                        return input.len();
                    }
                    pos += self.on_ws_bytes(slot, &mut input[pos..]);
                }
                State::Poll => return pos,
                State::Sse | State::Stream | State::Iframe | State::Closing => return input.len(),
            }
        }
        pos
    }

    // ---------------------------------------------------------------- inbox

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
            match cmd {
                Cmd::Deliver(msg) if msg.kind == MsgKind::Data => {
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
                    self.on_deliver(&batch);
                    batch.clear();
                }
                other => self.on_cmd(other),
            }
        }
        if let Some(cmd) = next {
            self.on_cmd(cmd);
        }
        self.batch = batch;
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Deliver(msg) => self.on_deliver(std::slice::from_ref(&msg)),
            Cmd::Kick {
                slot,
                generation,
                reply,
            } => {
                let found = self.alive(slot as usize, generation);
                if found {
                    self.stats.inc(Counter::Kicked);
                    self.end(slot as usize, CloseCode::POLICY, "kicked by operator");
                }
                let _ = reply.send(found);
            }
            Cmd::Conns { limit, reply } => {
                let _ = reply.send(self.list_conns(limit));
            }
            Cmd::Drain => self.drain(),
            Cmd::Shutdown => self.running = false,
            Cmd::PubDone(done) => self.on_pub_done(done),
            Cmd::Remote(reply) => self.on_remote(reply),
        }
    }

    fn list_conns(&mut self, limit: usize) -> Vec<ConnInfo> {
        let mut out = Vec::with_capacity(limit.min(self.conns.len()));
        for (slot, c) in self.conns.iter().take(limit) {
            let token = token_of(slot, c.generation);
            out.push(ConnInfo {
                id: format!("{}:{}:{}", self.id, slot, c.generation),
                transport: c.state.transport().as_str(),
                peer: self
                    .io
                    .peer_addr(c.sock)
                    .map_or_else(|| "-".into(), |a| a.to_string()),
                channels: c
                    .subs
                    .as_slice()
                    .iter()
                    .map(|s| self.chans[s.local as usize].name.to_string())
                    .collect(),
                queued: c.queued() + self.io.pending(token),
            });
        }
        out
    }

    fn drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        if self.listening {
            self.io.stop_listening();
            self.listening = false;
        }
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            if self.conns.contains(slot) {
                self.end(slot, CloseCode::GOING_AWAY, "server shutting down");
            }
        }
        info!(
            "worker {}: draining, {} connections closing",
            self.id,
            self.conns.len()
        );
    }

    /// Ends a connection gracefully, the way its transport ends.
    fn end(&mut self, slot: usize, code: CloseCode, reason: &str) {
        match self.conns[slot].state {
            // An answer still being written (a poll answered just before) goes out first.
            State::Http if self.conns[slot].has_queue() => self.close_graceful(slot),
            State::Http => self.close_now(slot),
            State::Ws | State::Echo => self.ws_close(slot, code, reason),
            State::Sse => self.close_graceful(slot),
            State::Stream | State::Iframe => {
                self.send(slot, &[Part::Copy(http::LAST_CHUNK)]);
                self.close_graceful(slot);
            }
            State::Poll => {
                self.conns[slot].clear(flag::KEEP_ALIVE);
                self.answer_poll_noop(slot);
            }
            State::Closing => {}
        }
    }

    // ---------------------------------------------------------------- timers

    fn arm(&mut self, slot: usize, after: Duration) {
        let conn = &mut self.conns[slot];
        let token = token_of(slot, conn.generation);
        conn.timer = self.wheel.reschedule(conn.timer, self.now + after, token);
    }

    fn disarm(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        self.wheel.cancel(conn.timer);
        conn.timer = TimerId::NONE;
    }

    fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now, &mut fired);
        for (id, key) in fired.drain(..) {
            let (slot, generation) = split_token(key & !ops::CHECK_TAG);
            let check = key & ops::CHECK_TAG != 0;
            match self.conns.get_mut(slot) {
                Some(c) if c.generation == generation && check => self.on_check(slot),
                Some(c) if c.generation == generation && c.timer == id => {
                    c.timer = TimerId::NONE;
                    self.on_timer(slot);
                }
                _ => {}
            }
        }
        self.fired = fired;
        self.sweep_limiters();
        self.release_memory();
    }

    fn on_timer(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        if conn.has(flag::CLOSE_AFTER_FLUSH) || conn.state == State::Closing {
            self.close_now(slot);
            return;
        }
        let heartbeat = self.live().heartbeat();
        match conn.state {
            State::Http => {
                let partial = conn.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty());
                if partial || !conn.has(flag::SERVED) {
                    self.stats.inc(Counter::HandshakeTimeout);
                }
                if partial {
                    self.respond_error(slot, 408, "request head not completed in time", &[]);
                } else {
                    self.close_now(slot);
                }
            }
            State::Ws => {
                if conn.has(flag::AWAIT_PONG) {
                    self.stats.inc(Counter::HeartbeatTimeout);
                    debug!("worker {}: pong timeout on {slot}", self.id);
                    // The peer is gone or stuck: no close handshake to wait for.
                    let mut frame = Vec::with_capacity(32);
                    ws::encode_close(&mut frame, CloseCode::POLICY, "heartbeat timeout", None);
                    let sock = self.conns[slot].sock;
                    let token = token_of(slot, self.conns[slot].generation);
                    let _ = self.io.send(sock, token, &[Part::Copy(&frame)]);
                    self.close_now(slot);
                } else {
                    self.conns[slot].set(flag::AWAIT_PONG);
                    self.send(slot, &[Part::Copy(PING_FRAME)]);
                    if self.conns.contains(slot) {
                        let pong = self.live().pong_timeout();
                        self.arm(slot, pong);
                    }
                }
            }
            State::Echo => {}
            State::Sse => {
                self.send(slot, &[Part::Copy(protocol::sse::PING_COMMENT)]);
                self.rearm(slot, heartbeat);
            }
            State::Stream | State::Iframe => {
                self.send_envelope(
                    slot,
                    &Message::Noop {
                        channel: None,
                        seq: None,
                        epoch: "",
                    },
                );
                self.rearm(slot, heartbeat);
            }
            State::Poll => self.answer_poll_noop(slot),
            State::Closing => self.close_now(slot),
        }
    }

    fn rearm(&mut self, slot: usize, after: Duration) {
        if self.conns.contains(slot) && !self.conns[slot].has(flag::CLOSE_AFTER_FLUSH) {
            self.arm(slot, after);
        }
    }

    // ---------------------------------------------------------------- output

    /// Writes the parts, queueing what the backend does not take.
    fn send(&mut self, slot: usize, parts: &[Part<'_>]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.state == State::Closing || conn.has(flag::CLOSE_AFTER_FLUSH) {
            return;
        }
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        if total == 0 {
            return;
        }
        let token = token_of(slot, conn.generation);
        let mut written = 0;
        if !conn.has_queue() {
            match self.io.send(conn.sock, token, parts) {
                Ok(w) => written = w,
                Err(_) => {
                    self.close_now(slot);
                    return;
                }
            }
            self.stats.add(Counter::BytesOut, written as u64);
        }
        let backlog = self.io.backlog(token);
        let conn = &mut self.conns[slot];
        if written < total {
            let ext = conn.ext();
            let mut skip = written;
            for p in parts {
                let len = p.bytes().len();
                if skip >= len {
                    skip -= len;
                    continue;
                }
                if skip > 0 {
                    ext.wq.push_partial(p.to_bytes(0), skip);
                } else {
                    ext.wq.push(p.to_bytes(0));
                }
                skip = 0;
            }
        }
        if conn.queued() + backlog > self.shared.live.slow_consumer_bytes() {
            self.slow_consumer(slot);
        }
    }

    /// Offers queued output again after a writable edge (or the backend's queue ran dry);
    /// finishes a graceful close once everything is out.
    fn flush(&mut self, slot: usize) {
        loop {
            let conn = &mut self.conns[slot];
            let token = token_of(slot, conn.generation);
            let Some(ext) = conn.ext.as_mut().filter(|e| !e.wq.is_empty()) else {
                break;
            };
            let mut parts: [Part<'_>; WORKER_MAX_IOV] = [Part::Copy(&[]); WORKER_MAX_IOV];
            let mut n = 0;
            for (i, b) in ext.wq.bufs.iter().take(WORKER_MAX_IOV).enumerate() {
                let start = if i == 0 { ext.wq.offset } else { 0 };
                parts[i] = Part::Copy(&b[start..]);
                n += 1;
            }
            let sock = conn.sock;
            match self.io.send(sock, token, &parts[..n]) {
                Ok(0) => return,
                Ok(w) => {
                    ext.wq.advance(w);
                    self.stats.add(Counter::BytesOut, w as u64);
                }
                Err(_) => {
                    self.close_now(slot);
                    return;
                }
            }
        }
        let conn = &mut self.conns[slot];
        let token = token_of(slot, conn.generation);
        if self.io.pending(token) > 0 {
            return;
        }
        if conn.has(flag::CLOSE_AFTER_FLUSH) {
            self.shutdown_write(slot);
        } else {
            conn.shrink();
        }
    }

    fn slow_consumer(&mut self, slot: usize) {
        self.stats.inc(Counter::SlowConsumer);
        debug!("worker {}: slow consumer {slot}", self.id);
        let conn = &mut self.conns[slot];
        let token = token_of(slot, conn.generation);
        self.io.truncate(token);
        let state = conn.state;
        let ext = conn.ext();
        // Keep the partly written buffer whole so the stream stays well-formed, drop the
        // rest, and end the stream behind it.
        ext.wq.truncate_to_partial();
        match state {
            State::Ws | State::Echo => {
                let mut frame = Vec::with_capacity(32);
                ws::encode_close(&mut frame, CloseCode::POLICY, "slow consumer", None);
                ext.wq.push(Bytes::from(frame));
                conn.set(flag::CLOSE_SENT);
            }
            State::Stream | State::Iframe => ext.wq.push(Bytes::from_static(http::LAST_CHUNK)),
            _ => {}
        }
        self.close_graceful(slot);
    }

    /// Stops deliveries and shuts the write side once the queue is written.
    fn close_graceful(&mut self, slot: usize) {
        self.unsubscribe_all(slot);
        let conn = &mut self.conns[slot];
        conn.set(flag::CLOSE_AFTER_FLUSH);
        let token = token_of(slot, conn.generation);
        if conn.has_queue() || self.io.pending(token) > 0 {
            let t = secs_f(self.shared.cfg.close_timeout_secs);
            self.arm(slot, t);
        } else {
            self.shutdown_write(slot);
        }
    }

    /// Shuts the write side and waits (bounded) for the peer to close, so that unread
    /// input does not turn our last bytes into a reset.
    fn shutdown_write(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let token = token_of(slot, conn.generation);
        if self.io.shutdown_write(conn.sock, token).is_err() {
            self.close_now(slot);
            return;
        }
        conn.clear(flag::CLOSE_AFTER_FLUSH);
        if let Some(ext) = conn.ext.as_mut() {
            ext.rbuf = Vec::new();
            ext.callback = None;
            ext.grant = None;
        }
        conn.shrink();
        self.set_state(slot, State::Closing);
        let t = secs_f(self.shared.cfg.close_timeout_secs);
        self.arm(slot, t);
    }

    /// Closes the socket and forgets the connection.
    #[track_caller]
    fn close_now(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        debug!(
            "worker {}: close {slot} in {:?} from {}",
            self.id,
            self.conns[slot].state,
            std::panic::Location::caller()
        );
        self.unsubscribe_all(slot);
        let conn = self.conns.remove(slot);
        self.freed += 1;
        self.wheel.cancel(conn.timer);
        self.stats.conn_delta(conn.state.transport(), -1);
        self.shared.release_conns(1);
        if let Some(ip) = self.peer_ips.remove(&slot) {
            self.shared.leave_ip(ip);
        }
        self.limiters.remove(&slot);
        self.io.close(conn.sock, token_of(slot, conn.generation));
    }

    fn set_state(&mut self, slot: usize, state: State) {
        let conn = &mut self.conns[slot];
        let (old, new) = (conn.state.transport(), state.transport());
        if old != new {
            self.stats.conn_delta(old, -1);
            self.stats.conn_delta(new, 1);
        }
        conn.state = state;
    }

    // ---------------------------------------------------------------- subscriptions

    /// How far this worker may trust the local hub for positions.
    fn authority(&self) -> Authority {
        match &self.shared.cluster {
            None => Authority::Hub,
            Some(c) if c.up.load(Ordering::Acquire) => Authority::Replica,
            Some(_) => Authority::Stale,
        }
    }

    /// Subscribes connection `slot`; buffered messages to replay are left in
    /// `self.replay`. The new subscription's cursor starts just before what is replayed;
    /// it is paused when the position must be read from Redis.
    fn subscribe(
        &mut self,
        slot: usize,
        name: &str,
        since: Since,
        only_if_nothing_to_replay: bool,
    ) -> Result<Subscribed, HubError> {
        self.subscribe_with(slot, name, since, only_if_nothing_to_replay, true)
    }

    /// [`Worker::subscribe`], creating the channel only when `may_create`.
    fn subscribe_with(
        &mut self,
        slot: usize,
        name: &str,
        since: Since,
        only_if_nothing_to_replay: bool,
        may_create: bool,
    ) -> Result<Subscribed, HubError> {
        let authority = self.authority();
        let s = self.shared.hub.subscribe_with(
            self.id,
            name,
            since,
            authority,
            only_if_nothing_to_replay,
            may_create,
            &mut self.replay,
        )?;
        if s.registered {
            let local = match self.by_key.get(&s.key) {
                Some(&l) => l,
                None => {
                    let l = self.chans.insert(LocalChan {
                        key: s.key,
                        name: s.name.clone(),
                        epoch: s.epoch,
                        conns: Vec::new(),
                    }) as u32;
                    self.by_key.insert(s.key, l);
                    l
                }
            };
            let chan = &mut self.chans[local as usize];
            if chan.epoch.is_none() {
                chan.epoch = s.epoch;
            }
            let pos = chan.conns.len() as u32;
            chan.conns.push(slot as u32);
            let from = match since {
                Since::Now => s.seq,
                Since::Seq(n, _) => n.saturating_sub(1),
            };
            let last_seq = if s.remote {
                PAUSED | from
            } else if s.reset {
                0
            } else {
                from
            };
            self.conns[slot].subs.push(Sub {
                local,
                pos,
                last_seq,
            });
        }
        Ok(s)
    }

    /// Subscribes to every channel before anything is written, so that nothing published
    /// after the response head can be missed; what each channel has to replay is returned
    /// for [`Worker::replay_all`]. On error every subscription of the connection is undone.
    fn subscribe_all(
        &mut self,
        slot: usize,
        channels: &[String],
        points: &[Since],
    ) -> Result<Vec<PendingReplay>, HubError> {
        self.subscribe_all_with(slot, channels, points, true, true)
            .map(|(p, _)| p)
    }

    /// One channel's [`Worker::subscribe_all`], creating it only when `may_create`; also
    /// says whether it was created.
    fn subscribe_all_creating(
        &mut self,
        slot: usize,
        name: &str,
        since: Since,
        may_create: bool,
    ) -> Result<(Vec<PendingReplay>, bool), HubError> {
        self.subscribe_all_with(slot, &[name.to_string()], &[since], may_create, false)
    }

    /// With `all_or_none` (a request's channels), an error undoes every subscription of
    /// the connection; without (a `sub` op), the others stay.
    fn subscribe_all_with(
        &mut self,
        slot: usize,
        channels: &[String],
        points: &[Since],
        may_create: bool,
        all_or_none: bool,
    ) -> Result<(Vec<PendingReplay>, bool), HubError> {
        let mut pending = Vec::with_capacity(channels.len());
        let mut created = false;
        for (name, &since) in channels.iter().zip(points) {
            self.replay.clear();
            match self.subscribe_with(slot, name, since, false, may_create) {
                Ok(s) => {
                    created |= s.created;
                    let remote = match since {
                        Since::Seq(n, e) if s.remote => Some((n, e)),
                        _ => None,
                    };
                    pending.push(PendingReplay {
                        local: self.by_key[&s.key],
                        name: s.name,
                        epoch: s.epoch,
                        seq: s.seq,
                        gap: s.gap,
                        reset: s.reset,
                        replay: std::mem::take(&mut self.replay),
                        remote,
                    });
                }
                Err(e) => {
                    self.replay.clear();
                    if all_or_none {
                        self.unsubscribe_all(slot);
                    }
                    return Err(e);
                }
            }
        }
        Ok((pending, created))
    }

    /// Replays what [`Worker::subscribe_all`] found (a `reset` first where the position
    /// is not in the stream, a `gap` where the history no longer holds it); afterwards
    /// each cursor is at least the channel's seq at subscription time, so deliveries the
    /// replay covered are dropped. Positions to read from Redis are asked for here.
    /// Every channel is subscribed before the first replay, so SSE ids carry the whole
    /// cursor.
    fn replay_all(&mut self, slot: usize, pending: Vec<PendingReplay>) {
        for p in pending {
            if !self.conns.contains(slot) {
                return;
            }
            if let Some((n, e)) = p.remote {
                self.request_remote(slot, p.local, &p.name, n, e, ReqKind::Stream);
                continue;
            }
            if p.reset {
                self.chans[p.local as usize].epoch = p.epoch;
                self.send_envelope(
                    slot,
                    &Message::Reset {
                        channel: &p.name,
                        epoch: p.epoch.as_str(),
                        seq: p.seq,
                    },
                );
            }
            if let Some((from, to)) = p.gap {
                if let Some(sub) = self
                    .conns
                    .get_mut(slot)
                    .and_then(|c| c.subs.find_mut(p.local))
                {
                    sub.last_seq = sub.last_seq.max(to);
                }
                self.send_envelope(
                    slot,
                    &Message::Gap {
                        channel: &p.name,
                        from,
                        to,
                    },
                );
            }
            for m in &p.replay {
                if !self.conns.contains(slot) {
                    return;
                }
                self.deliver(slot, p.local, m, &mut None);
            }
            if let Some(sub) = self
                .conns
                .get_mut(slot)
                .and_then(|c| c.subs.find_mut(p.local))
            {
                sub.last_seq = sub.last_seq.max(p.seq);
            }
        }
    }

    /// Asks the helper thread to read a position from Redis for subscription `local` of
    /// `slot` (or, for [`ReqKind::NextSeq`], the stream's state; `local` is then the
    /// channel's place in the poll). The answer comes back as [`Cmd::Remote`].
    fn request_remote(
        &mut self,
        slot: usize,
        local: u32,
        name: &Arc<str>,
        since: u64,
        epoch: Epoch,
        kind: ReqKind,
    ) {
        let token = token_of(slot, self.conns[slot].generation);
        self.next_req += 1;
        let req = self.next_req;
        self.remote.insert(
            req,
            RemoteReq {
                token,
                local,
                since,
                epoch,
                kind,
            },
        );
        let Some(cluster) = self.shared.cluster.clone() else {
            return;
        };
        let job = Job::Read {
            to: ReplyTo {
                worker: self.id,
                token,
            },
            req,
            channel: name.clone(),
            since: (kind != ReqKind::NextSeq).then_some((since, epoch)),
            deadline: self.now + cluster.history_wait(),
        };
        if let Err(job) = cluster.submit(job) {
            let e = HubError::Overloaded;
            answer_failed(std::slice::from_ref(&self.inbox), job, &e);
        }
    }

    /// Forgets the Redis reads a connection's subscription waits for.
    fn forget_remote(&mut self, token: Token, local: Option<u32>) {
        if !self.remote.is_empty() {
            self.remote
                .retain(|_, r| !(r.token == token && local.is_none_or(|l| l == r.local)));
        }
    }

    fn unsubscribe(&mut self, slot: usize, local: u32) {
        if let Some(sub) = self.conns[slot].subs.remove(local) {
            if sub.last_seq & PAUSED != 0 {
                let token = token_of(slot, self.conns[slot].generation);
                self.forget_remote(token, Some(local));
            }
            self.detach(local, sub.pos);
        }
    }

    fn unsubscribe_all(&mut self, slot: usize) {
        if self.conns[slot].subs.is_empty() {
            return;
        }
        let token = token_of(slot, self.conns[slot].generation);
        self.forget_remote(token, None);
        for sub in self.conns[slot].subs.take_all() {
            self.detach(sub.local, sub.pos);
        }
    }

    /// Removes position `pos` from a local channel's list, fixing the moved entry.
    fn detach(&mut self, local: u32, pos: u32) {
        let chan = &mut self.chans[local as usize];
        chan.conns.swap_remove(pos as usize);
        if let Some(&moved) = chan.conns.get(pos as usize) {
            if let Some(s) = self.conns[moved as usize].subs.find_mut(local) {
                s.pos = pos;
            }
        }
        let key = chan.key;
        let empty = chan.conns.is_empty();
        self.shared.hub.unsubscribe(self.id, key);
        if empty {
            self.by_key.remove(&key);
            self.chans.remove(local as usize);
            self.freed += 1;
        }
    }

    /// After a flood has left: shrinks the tables it grew and gives the freed memory back
    /// to the OS (checked every [`crate::limits::RELEASE_CHECK`]).
    fn release_memory(&mut self) {
        if self.now < self.release_at {
            return;
        }
        self.release_at = self.now + crate::limits::RELEASE_CHECK;
        if self.freed < crate::limits::RELEASE_AFTER_FREES {
            return;
        }
        self.freed = 0;
        if memory::sparse(self.by_key.len(), self.by_key.capacity()) {
            self.by_key.shrink_to(self.by_key.len() * 2);
        }
        if memory::sparse(self.chans.len(), self.chans.capacity()) {
            self.chans.shrink_to_fit();
        }
        if memory::sparse(self.conns.len(), self.conns.capacity()) {
            self.conns.shrink_to_fit();
        }
        if memory::sparse(self.peer_ips.len(), self.peer_ips.capacity()) {
            self.peer_ips.shrink_to(self.peer_ips.len() * 2);
        }
        memory::release_freed();
    }

    fn local_by_name(&self, slot: usize, name: &str) -> Option<u32> {
        self.conns[slot]
            .subs
            .as_slice()
            .iter()
            .map(|s| s.local)
            .find(|&l| &*self.chans[l as usize].name == name)
    }

    // ---------------------------------------------------------------- Redis answers

    /// A Redis read a connection waited for came back.
    fn on_remote(&mut self, reply: RemoteReply) {
        let Some(req) = self.remote.remove(&reply.req) else {
            return;
        };
        let (slot, generation) = split_token(req.token);
        if !self.alive(slot, generation) {
            return;
        }
        if req.kind == ReqKind::NextSeq {
            self.on_next_seq(slot, req, reply.result);
            return;
        }
        let waiting = self.conns[slot]
            .subs
            .find_mut(req.local)
            .is_some_and(|s| s.last_seq & PAUSED != 0);
        if !waiting {
            return;
        }
        match reply.result {
            Ok(stream) => self.replay_remote(slot, req, stream),
            Err(reason) => {
                if let Some(sub) = self.conns[slot].subs.find_mut(req.local) {
                    sub.last_seq = req.since.saturating_sub(1);
                }
                let name = self.chans[req.local as usize].name.clone();
                let reason = format!("cannot replay {name}: {reason}");
                let err = Message::Error {
                    code: 503,
                    reason: &reason,
                };
                if req.kind == ReqKind::Poll {
                    let item = self.poll_item(slot, &err);
                    self.answer_poll(slot, &[item]);
                } else {
                    self.send_envelope(slot, &err);
                }
            }
        }
    }

    /// Replays what Redis holds from the asked position, then what this node applied
    /// since the read; a long-poll is answered with it (or keeps waiting when it is
    /// nothing).
    fn replay_remote(&mut self, slot: usize, req: RemoteReq, stream: RemoteStream) {
        let local = req.local;
        let (key, name) = {
            let c = &self.chans[local as usize];
            (c.key, c.name.clone())
        };
        let poll = req.kind == ReqKind::Poll;
        let mut items: Vec<Bytes> = Vec::new();
        if let Some(sub) = self.conns[slot].subs.find_mut(local) {
            sub.last_seq = if stream.reset {
                0
            } else {
                req.since.saturating_sub(1)
            };
        }
        let mut epoch = stream.epoch;
        if epoch.is_some() {
            self.chans[local as usize].epoch = epoch;
        }
        if stream.reset {
            let m = Message::Reset {
                channel: &name,
                epoch: epoch.as_str(),
                seq: stream.seq,
            };
            self.emit(slot, local, Emit::Envelope(&m), poll, &mut items);
        }
        if let Some((from, to)) = stream.gap {
            let m = Message::Gap {
                channel: &name,
                from,
                to,
            };
            self.emit(slot, local, Emit::Envelope(&m), poll, &mut items);
        }
        for (seq, sender, content) in stream.messages {
            let m = Arc::new(
                Msg::new(key, name.clone(), epoch, seq, MsgKind::Data, content).with_sender(sender),
            );
            self.emit(slot, local, Emit::Msg(&m), poll, &mut items);
        }
        let mut cursor = stream.seq;
        // What the feed brought while Redis was being read.
        loop {
            if !self.conns.contains(slot) {
                return;
            }
            if let Some(sub) = self.conns[slot].subs.find_mut(local) {
                sub.last_seq = sub.last_seq.max(cursor);
            }
            let mut replay = std::mem::take(&mut self.replay);
            replay.clear();
            let found = self
                .shared
                .hub
                .replay_after(key, epoch, cursor, &mut replay);
            for m in &replay {
                self.emit(slot, local, Emit::Msg(m), poll, &mut items);
            }
            replay.clear();
            self.replay = replay;
            match found {
                CatchUp::Done(_) | CatchUp::Gone => break,
                CatchUp::OtherEpoch(e, seq) => {
                    // The stream started again meanwhile: this node's copy is the newer.
                    epoch = e;
                    self.chans[local as usize].epoch = e;
                    if let Some(sub) = self.conns[slot].subs.find_mut(local) {
                        sub.last_seq = 0;
                    }
                    let m = Message::Reset {
                        channel: &name,
                        epoch: e.as_str(),
                        seq,
                    };
                    self.emit(slot, local, Emit::Envelope(&m), poll, &mut items);
                    cursor = 0;
                }
                CatchUp::Short => {
                    // More arrived than this node keeps: read the rest from Redis.
                    if poll && !items.is_empty() {
                        break;
                    }
                    if let Some(sub) = self.conns[slot].subs.find_mut(local) {
                        sub.last_seq = PAUSED | cursor;
                    }
                    let kind = req.kind;
                    self.request_remote(slot, local, &name, cursor + 1, epoch, kind);
                    return;
                }
            }
        }
        if poll && !items.is_empty() && self.conns.contains(slot) {
            self.answer_poll(slot, &items);
        }
    }

    /// Sends one replayed item to a streaming subscriber, or collects it for a poll.
    fn emit(&mut self, slot: usize, local: u32, e: Emit<'_>, poll: bool, items: &mut Vec<Bytes>) {
        if !self.conns.contains(slot) {
            return;
        }
        match e {
            Emit::Msg(m) => {
                let Some(sub) = self.conns[slot].subs.find_mut(local) else {
                    return;
                };
                if m.seq <= sub.last_seq {
                    return;
                }
                if poll {
                    sub.last_seq = m.seq;
                    let json = if self.conns[slot].has(flag::JSONP) {
                        m.script_json()
                    } else {
                        m.json()
                    };
                    items.push(json.clone());
                } else {
                    self.deliver(slot, local, m, &mut None);
                }
            }
            Emit::Envelope(m) if poll => {
                let item = self.poll_item(slot, m);
                items.push(item);
            }
            Emit::Envelope(m) => self.send_envelope(slot, m),
        }
    }

    /// A long-poll's `next_seq` read from Redis came back.
    fn on_next_seq(&mut self, slot: usize, req: RemoteReq, result: Result<RemoteStream, String>) {
        if self.conns[slot].state != State::Poll {
            return;
        }
        let i = req.local as usize;
        let Some(name) = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.poll_names.get(i).cloned())
        else {
            return;
        };
        let item = match &result {
            Ok(s) => self.poll_item(
                slot,
                &Message::NextSeq {
                    channel: &name,
                    seq: s.seq + 1,
                    epoch: s.epoch.as_str(),
                },
            ),
            Err(reason) => {
                let reason = format!("cannot read {name} from redis: {reason}");
                self.poll_item(
                    slot,
                    &Message::Error {
                        code: 503,
                        reason: &reason,
                    },
                )
            }
        };
        let ext = self.conns[slot].ext();
        if let Some(place) = ext.poll_items.get_mut(i) {
            *place = Some(item);
        }
        if ext.poll_items.iter().all(Option::is_some) {
            let items: Vec<Bytes> = ext.poll_items.drain(..).flatten().collect();
            ext.poll_names.clear();
            self.answer_poll(slot, &items);
        }
    }

    // ---------------------------------------------------------------- delivery

    /// Delivers messages of one channel (in seq order) to its local subscribers.
    /// Subscribers whose wire form is shared get consecutive data messages in one write;
    /// the others (and closes and gaps) get them one by one.
    fn on_deliver(&mut self, msgs: &[Arc<Msg>]) {
        let [first, ..] = msgs else {
            return;
        };
        let Some(&local) = self.by_key.get(&first.key) else {
            return;
        };
        if matches!(first.kind, MsgKind::Data | MsgKind::Reset)
            && first.epoch.is_some()
            && self.chans[local as usize].epoch != first.epoch
        {
            self.chans[local as usize].epoch = first.epoch;
        }
        let all_data = msgs.iter().all(|m| m.kind == MsgKind::Data);
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend_from_slice(&self.chans[local as usize].conns);
        // The iframe chunk of each message, for the next iframe subscriber with the same
        // callback (filled only when the channel has iframe subscribers).
        let mut iframe_cache: Vec<Option<(Box<str>, Bytes)>> = Vec::new();
        for &slot in &targets {
            let slot = slot as usize;
            if !self.conns.contains(slot) || self.by_key.get(&first.key) != Some(&local) {
                continue;
            }
            let conn = &self.conns[slot];
            let state = conn.state;
            let shared_form = matches!(state, State::Ws | State::Stream | State::Poll)
                || (state == State::Sse && conn.subs.len() == 1);
            if all_data && shared_form {
                self.deliver_run(slot, local, state, msgs);
                continue;
            }
            if state == State::Iframe {
                iframe_cache.resize(msgs.len(), None);
            }
            for (i, m) in msgs.iter().enumerate() {
                if !self.conns.contains(slot) {
                    break;
                }
                let mut none = None;
                let cache = iframe_cache.get_mut(i).unwrap_or(&mut none);
                self.deliver(slot, local, m, cache);
            }
        }
        self.targets = targets;
    }

    /// Sends the data messages a subscriber has not seen yet, in one write (or one
    /// long-poll answer).
    fn deliver_run(&mut self, slot: usize, local: u32, state: State, msgs: &[Arc<Msg>]) {
        let Some(sub) = self.conns[slot].subs.find_mut(local) else {
            return;
        };
        let start = msgs.partition_point(|m| m.seq <= sub.last_seq);
        let Some(last) = msgs.last().filter(|_| start < msgs.len()) else {
            return;
        };
        sub.last_seq = last.seq;
        let fresh = &msgs[start..];
        self.stats.add(Counter::Delivered, fresh.len() as u64);
        if state == State::Poll {
            let jsonp = self.conns[slot].has(flag::JSONP);
            let items: Vec<Bytes> = fresh
                .iter()
                .map(|m| {
                    if jsonp {
                        m.script_json().clone()
                    } else {
                        m.json().clone()
                    }
                })
                .collect();
            self.answer_poll(slot, &items);
            return;
        }
        let mut parts: [Part<'_>; DELIVER_BATCH] = [Part::Copy(&[]); DELIVER_BATCH];
        for (p, m) in parts.iter_mut().zip(fresh) {
            *p = Part::Shared(match state {
                State::Ws => m.ws_frame(),
                State::Stream => m.ndjson_chunk(),
                _ => m.sse_event(),
            });
        }
        self.send(slot, &parts[..fresh.len().min(DELIVER_BATCH)]);
    }

    /// Advances the connection's cursor for `msg`; false for a duplicate.
    fn advance_cursor(&mut self, slot: usize, local: u32, msg: &Msg) -> bool {
        let Some(sub) = self.conns[slot].subs.find_mut(local) else {
            return false;
        };
        if msg.kind == MsgKind::Data {
            if msg.seq <= sub.last_seq {
                return false;
            }
            sub.last_seq = msg.seq;
        }
        true
    }

    /// Delivers one message to one subscriber. `iframe_cache` keeps the iframe chunk of
    /// this `msg` for the next iframe subscriber with the same callback.
    fn deliver(
        &mut self,
        slot: usize,
        local: u32,
        msg: &Arc<Msg>,
        iframe_cache: &mut Option<(Box<str>, Bytes)>,
    ) {
        match msg.kind {
            MsgKind::Gap => return self.deliver_gap(slot, local, msg),
            MsgKind::Reset => return self.deliver_reset(slot, local, msg),
            MsgKind::Data | MsgKind::Close => {}
        }
        if !self.advance_cursor(slot, local, msg) {
            return;
        }
        self.stats.inc(Counter::Delivered);
        match self.conns[slot].state {
            State::Ws => self.send(slot, &[Part::Shared(msg.ws_frame())]),
            State::Sse => {
                if self.conns[slot].subs.len() == 1 {
                    self.send(slot, &[Part::Shared(msg.sse_event())]);
                } else {
                    let mut out = std::mem::take(&mut self.out);
                    out.clear();
                    self.write_cursor_line(slot, &mut out);
                    self.send(slot, &[Part::Copy(&out), Part::Shared(msg.sse_data())]);
                    self.out = out;
                }
            }
            State::Stream => self.send(slot, &[Part::Shared(msg.ndjson_chunk())]),
            State::Iframe => self.deliver_iframe_encoded(slot, msg, iframe_cache),
            State::Poll => {
                let jsonp = self.conns[slot].has(flag::JSONP);
                let json = if jsonp { msg.script_json() } else { msg.json() };
                let json = json.clone();
                self.answer_poll(slot, &[json]);
                return;
            }
            _ => return,
        }
        if msg.kind == MsgKind::Close && self.conns.contains(slot) {
            self.unsubscribe(slot, local);
            if self.conns[slot].subs.is_empty() && self.conns[slot].state.is_stream() {
                self.end(slot, CloseCode::NORMAL, "");
            }
        }
    }

    /// Tells a subscriber that the channel's stream started again (a subscription whose
    /// position is being read from Redis catches up on it after the read).
    fn deliver_reset(&mut self, slot: usize, local: u32, msg: &Arc<Msg>) {
        let Some(sub) = self.conns[slot].subs.find_mut(local) else {
            return;
        };
        if sub.last_seq & PAUSED != 0 {
            return;
        }
        sub.last_seq = msg.seq;
        if self.conns[slot].state == State::Poll {
            let item = self.poll_item(slot, &msg.envelope());
            self.answer_poll(slot, &[item]);
        } else {
            self.send_envelope(slot, &msg.envelope());
        }
    }

    /// Tells a subscriber what it missed (`msg.from..=msg.seq`, minus what it already had).
    fn deliver_gap(&mut self, slot: usize, local: u32, msg: &Msg) {
        let Some(sub) = self.conns[slot].subs.find_mut(local) else {
            return;
        };
        if msg.seq <= sub.last_seq {
            return;
        }
        let from = msg.from.max(sub.last_seq + 1);
        sub.last_seq = msg.seq;
        let gap = Message::Gap {
            channel: &msg.channel,
            from,
            to: msg.seq,
        };
        if self.conns[slot].state == State::Poll {
            let item = self.poll_item(slot, &gap);
            self.answer_poll(slot, &[item]);
        } else {
            self.send_envelope(slot, &gap);
        }
    }

    /// One item of a long-poll answer, in the connection's JSON style.
    fn poll_item(&self, slot: usize, m: &Message<'_>) -> Bytes {
        let style = if self.conns[slot].has(flag::JSONP) {
            JsonStyle::Script
        } else {
            JsonStyle::Plain
        };
        let mut json = Vec::with_capacity(96);
        message::write_json(&mut json, m, style);
        Bytes::from(json)
    }

    /// Sends `msg` as an iframe script chunk; one encoding per callback name per message.
    fn deliver_iframe_encoded(
        &mut self,
        slot: usize,
        msg: &Arc<Msg>,
        cache: &mut Option<(Box<str>, Bytes)>,
    ) {
        let cb: Box<str> = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.callback.clone())
            .unwrap_or_else(|| self.shared.cfg.iframe_callback.clone().into_boxed_str());
        let chunk = match cache {
            Some((name, bytes)) if *name == cb => bytes.clone(),
            _ => {
                let mut out = Vec::with_capacity(msg.script_json().len() + 64);
                message::write_iframe_chunk(&mut out, &cb, msg.script_json());
                let b = Bytes::from(out);
                *cache = Some((cb, b.clone()));
                b
            }
        };
        self.send(slot, &[Part::Shared(&chunk)]);
    }

    /// Appends `id: <cursor>\n` for an SSE connection.
    fn write_cursor_line(&self, slot: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        let conn = &self.conns[slot];
        let token = token_of(slot, conn.generation);
        protocol::cursor::write_cursor(
            out,
            conn.subs.as_slice().iter().map(|s| {
                let chan = &self.chans[s.local as usize];
                if s.last_seq & PAUSED == 0 {
                    return (&*chan.name, s.last_seq, chan.epoch.as_str());
                }
                // Still being read from Redis: the position the client asked for.
                let asked = self
                    .remote
                    .values()
                    .find(|r| r.token == token && r.local == s.local)
                    .map_or(chan.epoch.as_str(), |r| r.epoch.as_str());
                (&*chan.name, s.last_seq & !PAUSED, asked)
            }),
        );
        out.push(b'\n');
    }

    /// Sends an envelope made for this connection (gap, noop, error, pong, next_seq)
    /// in the connection's wire form.
    fn send_envelope(&mut self, slot: usize, msg: &Message<'_>) {
        let state = self.conns[slot].state;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut json = Vec::with_capacity(96);
        match state {
            State::Ws | State::Echo => {
                message::write_json(&mut json, msg, JsonStyle::Plain);
                message::write_ws_frame(&mut out, &json);
            }
            State::Sse => {
                message::write_json(&mut json, msg, JsonStyle::Plain);
                self.write_cursor_line(slot, &mut out);
                message::write_sse_event(&mut out, None, &json);
            }
            State::Stream => {
                message::write_json(&mut json, msg, JsonStyle::Plain);
                message::write_ndjson_chunk(&mut out, &json);
            }
            State::Iframe => {
                message::write_json(&mut json, msg, JsonStyle::Script);
                let cb = self.conns[slot]
                    .ext
                    .as_ref()
                    .and_then(|e| e.callback.as_deref())
                    .unwrap_or(&self.shared.cfg.iframe_callback);
                message::write_iframe_chunk(&mut out, cb, &json);
            }
            _ => {}
        }
        if !out.is_empty() {
            self.send(slot, &[Part::Copy(&out)]);
        }
        self.out = out;
    }

    // ---------------------------------------------------------------- WebSocket

    fn on_ws_bytes(&mut self, slot: usize, input: &mut [u8]) -> usize {
        let cfg = DecoderConfig {
            role: Role::Server,
            max_message: self.live().max_message_bytes(),
        };
        match self.conns[slot].ws.decode(input, &cfg) {
            Ok(Decoded { consumed, event }) => {
                if let Some(ev) = event {
                    self.on_ws_event(slot, ev);
                }
                consumed
            }
            Err(e) => {
                debug!("worker {}: ws protocol error on {slot}: {e}", self.id);
                self.ws_fail(slot, e.close_code(), e.reason());
                input.len()
            }
        }
    }

    fn on_ws_event(&mut self, slot: usize, ev: Event<'_>) {
        match ev {
            Event::Ping(payload) => {
                let mut frame = Vec::with_capacity(payload.len() + 2);
                ws::encode_frame(&mut frame, true, OpCode::Pong, &payload);
                self.send(slot, &[Part::Copy(&frame)]);
            }
            Event::Pong(_) => {
                let conn = &mut self.conns[slot];
                if conn.has(flag::AWAIT_PONG) {
                    conn.clear(flag::AWAIT_PONG);
                    let hb = self.live().heartbeat();
                    self.arm(slot, hb);
                }
            }
            Event::Close(frame) => {
                let code = frame.map_or(CloseCode::NORMAL, |f| f.code);
                let mut reply = Vec::with_capacity(4);
                ws::frame::write_frame_header(&mut reply, true, OpCode::Close, 2, None);
                reply.extend_from_slice(&code.0.to_be_bytes());
                self.send(slot, &[Part::Copy(&reply)]);
                if self.conns.contains(slot) {
                    self.conns[slot].set(flag::CLOSE_SENT);
                    self.close_graceful(slot);
                }
            }
            Event::Message { kind, data } => {
                if self.conns[slot].state == State::Echo {
                    let op = match kind {
                        DataKind::Text => OpCode::Text,
                        DataKind::Binary => OpCode::Binary,
                    };
                    let mut frame = Vec::with_capacity(ws::frame_len(data.len(), false));
                    ws::encode_frame(&mut frame, true, op, &data);
                    self.send(slot, &[Part::Shared(&Bytes::from(frame))]);
                } else if kind == DataKind::Binary {
                    self.ws_fail(
                        slot,
                        CloseCode::UNSUPPORTED,
                        "binary messages are not supported",
                    );
                } else {
                    self.on_client_op(slot, &data);
                }
            }
        }
    }

    /// Fails the connection: close frame with `code`, then close.
    fn ws_fail(&mut self, slot: usize, code: CloseCode, reason: &str) {
        if let Some(c) = Counter::for_close(code.0) {
            self.stats.inc(c);
        }
        self.ws_close(slot, code, reason);
    }

    /// Sends a close frame (once) and closes gracefully.
    fn ws_close(&mut self, slot: usize, code: CloseCode, reason: &str) {
        let conn = &mut self.conns[slot];
        if !conn.has(flag::CLOSE_SENT) {
            let mut frame = Vec::with_capacity(reason.len() + 4);
            ws::encode_close(&mut frame, code, reason, None);
            self.send(slot, &[Part::Copy(&frame)]);
            if !self.conns.contains(slot) {
                return;
            }
            self.conns[slot].set(flag::CLOSE_SENT);
        }
        if self.conns[slot].state != State::Closing {
            self.close_graceful(slot);
        }
    }

    // ---------------------------------------------------------------- HTTP

    /// Parses and serves one request from `buf`; `None` when the head is incomplete.
    fn on_request(&mut self, slot: usize, buf: &[u8]) -> Option<usize> {
        let cfg = &self.shared.cfg;
        let limits = http::Limits {
            max_head_bytes: cfg.max_head_bytes,
            max_headers: cfg.max_headers,
            max_body_bytes: 0,
        };
        let mut headers = [EMPTY_HEADER; HEADERS_CAP];
        let max_headers = cfg.max_headers.min(HEADERS_CAP);
        let req = match http::parse_request(buf, &mut headers[..max_headers], &limits) {
            Ok(Parsed::Partial) => return None,
            Ok(Parsed::Complete(r)) => r,
            Err(e) => {
                self.respond_error(slot, e.status(), e.reason(), &[]);
                return Some(buf.len());
            }
        };
        let head_len = req.head_len;
        let keep_alive = req.keep_alive() && !self.draining;
        let route = match req.path() {
            "/ws" => Route::Ws,
            "/echo" if self.shared.cfg.ws_echo => Route::Echo,
            "/sse" => Route::Sse,
            "/poll" | "/sub" => Route::Poll,
            "/stream" => Route::Stream,
            "/iframe" => Route::Iframe,
            "/ping" => Route::Ping,
            "/healthz" => Route::Health,
            _ => {
                self.respond_error(slot, 404, "no such endpoint", &[]);
                return Some(buf.len());
            }
        };
        if !self.check_origin(slot, &req) {
            self.stats.inc(Counter::OriginRefused);
            self.respond_error(slot, 403, "origin not allowed (allowed_origins)", &[]);
            return Some(buf.len());
        }
        if req.method == Method::Options {
            let conn = &mut self.conns[slot];
            conn.set(flag::SERVED);
            if keep_alive {
                conn.set(flag::KEEP_ALIVE);
            } else {
                conn.clear(flag::KEEP_ALIVE);
            }
            self.respond_preflight(slot, &req);
            return Some(head_len);
        }
        let head_ok = matches!(route, Route::Ping | Route::Health) && req.method == Method::Head;
        if req.method != Method::Get && !head_ok {
            let allow = if matches!(route, Route::Ping | Route::Health) {
                "GET, HEAD, OPTIONS"
            } else {
                "GET, OPTIONS"
            };
            self.respond_error(slot, 405, "method not allowed", &[("Allow", allow)]);
            return Some(buf.len());
        }
        match http::body_framing(&req, &limits) {
            Ok(http::BodyFraming::None) => {}
            Ok(_) | Err(http::HttpError::BodyTooLarge) => {
                self.respond_error(slot, 400, "subscriber requests carry no body", &[]);
                return Some(buf.len());
            }
            Err(e) => {
                self.respond_error(slot, e.status(), e.reason(), &[]);
                return Some(buf.len());
            }
        }
        let query = match Query::parse(req.query()) {
            Ok(q) => q,
            Err(e) => {
                self.respond_error(slot, 400, e.reason(), &[]);
                return Some(buf.len());
            }
        };
        let conn = &mut self.conns[slot];
        conn.set(flag::SERVED);
        if keep_alive {
            conn.set(flag::KEEP_ALIVE);
        } else {
            conn.clear(flag::KEEP_ALIVE);
        }
        let result = match route {
            Route::Ws | Route::Echo => self.serve_ws(slot, &req, &query, route == Route::Echo),
            Route::Sse => self.serve_sse(slot, &req, &query),
            Route::Stream | Route::Iframe => self.serve_chunked(slot, &req, &query, route),
            Route::Poll => self.serve_poll(slot, &query),
            Route::Ping => {
                self.respond_simple(
                    slot,
                    200,
                    "application/json",
                    b"{\"type\":\"ping\"}\n",
                    head_ok,
                );
                Ok(())
            }
            Route::Health => {
                self.respond_simple(slot, 200, "text/plain; charset=utf-8", b"ok\n", head_ok);
                Ok(())
            }
        };
        if let Err((status, reason)) = result {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            self.respond_error(slot, status, &reason, extra);
            return Some(buf.len());
        }
        Some(head_len)
    }

    /// Checks the request's `Origin` against `allowed_origins` and keeps what its answers
    /// say; false when the origin is not allowed. A request without `Origin` (not from a
    /// browser) is allowed.
    fn check_origin(&mut self, slot: usize, req: &http::Request<'_, '_>) -> bool {
        let conn = &mut self.conns[slot];
        conn.clear(flag::CORS_ANY);
        if let Some(e) = conn.ext.as_mut() {
            e.origin = None;
        }
        let patterns = &self.shared.cfg.allowed_origins;
        let any = patterns.iter().any(|p| p == "*");
        let Some(origin) = req.header_str("origin") else {
            if any {
                conn.set(flag::CORS_ANY);
            }
            return true;
        };
        if patterns
            .iter()
            .any(|p| p != "*" && crate::config::pattern_matches(p, origin))
        {
            conn.ext().origin = Some(origin.into());
            return true;
        }
        if any {
            conn.set(flag::CORS_ANY);
            return true;
        }
        false
    }

    /// The CORS headers of the connection's current request.
    fn add_cors<'a>(&'a self, slot: usize, headers: &mut Vec<(&'a str, &'a str)>) {
        let conn = &self.conns[slot];
        if let Some(origin) = conn.ext.as_ref().and_then(|e| e.origin.as_deref()) {
            headers.push(("Access-Control-Allow-Origin", origin));
            headers.push(("Access-Control-Allow-Credentials", "true"));
            headers.push(("Vary", "Origin"));
        } else if conn.has(flag::CORS_ANY) {
            headers.push(("Access-Control-Allow-Origin", "*"));
        }
    }

    /// Answers a CORS preflight (`OPTIONS`) for an allowed origin.
    fn respond_preflight(&mut self, slot: usize, req: &http::Request<'_, '_>) {
        // Echo the requested headers when they are a plain list of header names.
        let asked = req
            .header_str("access-control-request-headers")
            .filter(|h| {
                h.len() <= 256
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' ')
                    })
            });
        let keep_alive = self.conns[slot].has(flag::KEEP_ALIVE);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Access-Control-Allow-Methods", "GET, OPTIONS"),
            ("Access-Control-Max-Age", "600"),
        ];
        if let Some(h) = asked {
            headers.push(("Access-Control-Allow-Headers", h));
        }
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(384);
        http::write_response_head(&mut out, 200, &headers, ResponseBody::Length(0), keep_alive);
        self.send(slot, &[Part::Copy(&out)]);
        self.after_response(slot);
    }

    fn respond_error(&mut self, slot: usize, status: u16, reason: &str, extra: &[(&str, &str)]) {
        if let Some(c) = Counter::for_status(status) {
            self.stats.inc(c);
        }
        let mut body = Message::Error {
            code: status,
            reason,
        }
        .to_json();
        body.push(b'\n');
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        self.add_cors(slot, &mut headers);
        headers.extend_from_slice(extra);
        let mut out = Vec::with_capacity(256 + body.len());
        http::write_response(&mut out, status, &headers, &body, false);
        let conn = &mut self.conns[slot];
        if conn.state == State::Http {
            // Nothing more will be read from this request stream.
            if let Some(e) = conn.ext.as_mut() {
                e.rbuf = Vec::new();
            }
        }
        self.send(slot, &[Part::Copy(&out)]);
        if self.conns.contains(slot) {
            self.close_graceful(slot);
        }
    }

    /// Answers a small request with a complete response and goes back to waiting for the
    /// next request (or closes, per keep-alive).
    fn respond_simple(
        &mut self,
        slot: usize,
        status: u16,
        content_type: &str,
        body: &[u8],
        head_only: bool,
    ) {
        let keep_alive = self.conns[slot].has(flag::KEEP_ALIVE);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
        ];
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(256 + body.len());
        http::write_response_head(
            &mut out,
            status,
            &headers,
            ResponseBody::Length(body.len()),
            keep_alive,
        );
        if !head_only {
            out.extend_from_slice(body);
        }
        self.send(slot, &[Part::Copy(&out)]);
        self.after_response(slot);
    }

    /// After a complete response: wait for the next request, or close.
    fn after_response(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        if self.conns[slot].state != State::Http {
            self.set_state(slot, State::Http);
        }
        let conn = &mut self.conns[slot];
        conn.clear(flag::JSONP);
        if let Some(e) = conn.ext.as_mut() {
            e.callback = None;
            e.poll_seq = 0;
            e.origin = None;
        }
        if conn.has(flag::KEEP_ALIVE) && !self.draining {
            let token = token_of(slot, conn.generation);
            let pipelined = conn.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty());
            let t = if pipelined {
                self.live().handshake_timeout()
            } else {
                self.live().idle_timeout()
            };
            self.arm(slot, t);
            if pipelined {
                // Pipelined requests waited while this one was held: serve them next turn.
                self.again.push(token);
            }
        } else {
            self.close_graceful(slot);
        }
    }

    /// Channel list from `channel` / `cname`: validated, deduplicated, bounded.
    fn channels_param(&self, q: &Query<'_>, required: bool) -> Result<Vec<String>, Reject> {
        let Some(raw) = q.get_any(&["channel", "cname"]) else {
            return if required {
                Err(reject(400, "missing channel"))
            } else {
                Ok(Vec::new())
            };
        };
        let max = self.shared.cfg.max_channels_per_conn;
        let mut out: Vec<String> = Vec::new();
        for name in raw.split(',') {
            message::validate_channel(name).map_err(|e| reject(400, e.to_string()))?;
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
            if out.len() > max {
                return Err(reject(400, format!("too many channels (max {max})")));
            }
        }
        Ok(out)
    }

    /// `since=` / `seq=`: a position, `N` or `N@EPOCH`.
    fn since_param(q: &Query<'_>, key: &str) -> Result<Option<Since>, Reject> {
        let Some(v) = q.get(key) else {
            return Ok(None);
        };
        let p = protocol::cursor::parse_position(v).map_err(|e| {
            reject(
                400,
                format!("{key} must be a seq or seq@epoch (a non-negative integer, then 1-16 characters of 0-9 a-z): {e}"),
            )
        })?;
        let epoch = p.epoch.and_then(Epoch::parse).unwrap_or(Epoch::NONE);
        Ok(Some(Since::Seq(p.seq, epoch)))
    }

    fn callback_param(q: &Query<'_>) -> Result<Option<Box<str>>, Reject> {
        match q.get("cb").or_else(|| q.get("callback")) {
            None | Some("") => Ok(None),
            Some(cb) => {
                message::validate_callback(cb).map_err(|e| reject(400, e.to_string()))?;
                Ok(Some(cb.into()))
            }
        }
    }

    /// Verifies `token=` for the channels (auth = "token"); `None` when auth is off.
    fn check_token(
        &self,
        q: &Query<'_>,
        channels: &[String],
    ) -> Result<Option<Grant>, auth::TokenError> {
        if !self.shared.token_auth() {
            return Ok(None);
        }
        let token = q.get("token").unwrap_or("");
        let grant = auth::verify(token, self.shared.cfg.token_secret.as_bytes(), unix_now())?;
        if channels.iter().any(|c| !grant.allows(c)) {
            return Err(auth::TokenError::Channel);
        }
        Ok(Some(grant))
    }

    fn serve_ws(
        &mut self,
        slot: usize,
        req: &http::Request<'_, '_>,
        q: &Query<'_>,
        echo: bool,
    ) -> Result<(), Reject> {
        let accept = match ws::handshake::check_request(req) {
            Ok(a) => a,
            Err(e) => {
                let extra: &[(&str, &str)] = match e {
                    ws::HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
                    ws::HandshakeError::Method => &[("Allow", "GET")],
                    _ => &[],
                };
                self.respond_error(slot, e.status(), e.reason(), extra);
                return Ok(());
            }
        };
        let (channels, since) = if echo {
            (Vec::new(), None)
        } else {
            (
                self.channels_param(q, false)?,
                Self::since_param(q, "since")?,
            )
        };
        let grant = if echo {
            Ok(None)
        } else {
            self.check_token(q, &channels)
        };
        // Subscribe before the 101 goes out (a token that fails is answered after it,
        // with close 1008, as RFC 6455 clients expect).
        let pending = match &grant {
            Ok(_) => {
                let points = vec![since.unwrap_or(Since::Now); channels.len()];
                self.subscribe_all(slot, &channels, &points)
                    .map_err(|e| reject(e.status(), e.reason()))?
            }
            Err(_) => Vec::new(),
        };
        let mut out = Vec::with_capacity(160);
        ws::handshake::write_accept_response(&mut out, &accept);
        self.send(slot, &[Part::Copy(&out)]);
        if !self.conns.contains(slot) {
            return Ok(());
        }
        self.disarm(slot);
        self.conns[slot].clear(flag::KEEP_ALIVE);
        if echo {
            self.set_state(slot, State::Echo);
            return Ok(());
        }
        self.set_state(slot, State::Ws);
        let grant = match grant {
            Ok(g) => g,
            Err(e) => {
                self.stats.inc(Counter::Http401);
                self.ws_close(slot, CloseCode::POLICY, e.reason());
                return Ok(());
            }
        };
        self.keep_grant(slot, grant);
        self.replay_all(slot, pending);
        if self.conns.contains(slot) && self.conns[slot].state == State::Ws {
            let first = jitter(self.live().heartbeat(), &mut self.rng);
            self.arm(slot, first);
        }
        Ok(())
    }

    /// Keeps a verified token with its connection, whose rights end with it.
    fn keep_grant(&mut self, slot: usize, grant: Option<Grant>) {
        if let Some(g) = grant {
            self.conns[slot].ext().grant = Some(Box::new(g));
            self.watch_token(slot);
        }
    }

    /// `since` for each channel: from `Last-Event-ID` (resume after) or `since=`.
    fn resume_points(
        &self,
        req: &http::Request<'_, '_>,
        q: &Query<'_>,
        channels: &[String],
    ) -> Result<Vec<Since>, Reject> {
        let since = Self::since_param(q, "since")?;
        let mut points = vec![since.unwrap_or(Since::Now); channels.len()];
        let last_id = req
            .header_str("last-event-id")
            .or_else(|| q.get("lastEventId"))
            .filter(|s| !s.trim().is_empty());
        if let Some(id) = last_id {
            let cursor = protocol::sse::parse_cursor(id, self.shared.cfg.max_channels_per_conn)
                .map_err(|e| reject(400, format!("bad Last-Event-ID: {e}")))?;
            for (name, pos) in cursor {
                if let Some(i) = channels.iter().position(|c| c == name) {
                    let epoch = pos.epoch.and_then(Epoch::parse).unwrap_or(Epoch::NONE);
                    points[i] = Since::Seq(pos.seq.saturating_add(1), epoch);
                }
            }
        }
        Ok(points)
    }

    fn serve_sse(
        &mut self,
        slot: usize,
        req: &http::Request<'_, '_>,
        q: &Query<'_>,
    ) -> Result<(), Reject> {
        let channels = self.channels_param(q, true)?;
        let points = self.resume_points(req, q, &channels)?;
        let grant = self
            .check_token(q, &channels)
            .map_err(|e| reject(401, e.reason()))?;
        let pending = self
            .subscribe_all(slot, &channels, &points)
            .map_err(|e| reject(e.status(), e.reason()))?;
        self.keep_grant(slot, grant);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ];
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(256);
        http::write_response_head(&mut out, 200, &headers, ResponseBody::Unframed, false);
        protocol::sse::write_retry(&mut out, self.shared.cfg.sse_retry_ms);
        self.send(slot, &[Part::Copy(&out)]);
        if !self.conns.contains(slot) {
            return Ok(());
        }
        self.conns[slot].clear(flag::KEEP_ALIVE);
        self.set_state(slot, State::Sse);
        self.start_stream(slot, pending);
        Ok(())
    }

    fn serve_chunked(
        &mut self,
        slot: usize,
        req: &http::Request<'_, '_>,
        q: &Query<'_>,
        route: Route,
    ) -> Result<(), Reject> {
        if req.version == 0 {
            return Err(reject(505, "streaming needs HTTP/1.1 (chunked encoding)"));
        }
        let channels = self.channels_param(q, true)?;
        let since = Self::since_param(q, "since")?;
        let callback = if route == Route::Iframe {
            Self::callback_param(q)?
        } else {
            None
        };
        let grant = self
            .check_token(q, &channels)
            .map_err(|e| reject(401, e.reason()))?;
        let points = vec![since.unwrap_or(Since::Now); channels.len()];
        let pending = self
            .subscribe_all(slot, &channels, &points)
            .map_err(|e| reject(e.status(), e.reason()))?;
        self.keep_grant(slot, grant);
        let content_type = if route == Route::Iframe {
            "text/html; charset=utf-8"
        } else {
            "application/x-ndjson"
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ];
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(1024);
        http::write_response_head(&mut out, 200, &headers, ResponseBody::Chunked, true);
        if route == Route::Iframe {
            let mut pre = IFRAME_PREAMBLE.as_bytes().to_vec();
            pre.extend_from_slice(b"<!--");
            pre.resize(pre.len() + 1024, b' ');
            pre.extend_from_slice(b"-->\n");
            http::write_chunk(&mut out, &pre);
        }
        self.send(slot, &[Part::Copy(&out)]);
        if !self.conns.contains(slot) {
            return Ok(());
        }
        self.conns[slot].clear(flag::KEEP_ALIVE);
        if let Some(cb) = callback {
            self.conns[slot].ext().callback = Some(cb);
        }
        let state = if route == Route::Iframe {
            State::Iframe
        } else {
            State::Stream
        };
        self.set_state(slot, state);
        self.start_stream(slot, pending);
        Ok(())
    }

    /// Replays to a streaming connection and starts its heartbeat.
    fn start_stream(&mut self, slot: usize, pending: Vec<PendingReplay>) {
        self.disarm(slot);
        self.replay_all(slot, pending);
        if self.conns.contains(slot) && self.conns[slot].state.is_stream() {
            let first = jitter(self.live().heartbeat(), &mut self.rng);
            self.arm(slot, first);
        }
    }

    fn serve_poll(&mut self, slot: usize, q: &Query<'_>) -> Result<(), Reject> {
        let channels = self.channels_param(q, true)?;
        let since = Self::since_param(q, "seq")?;
        let callback = Self::callback_param(q)?;
        self.check_token(q, &channels)
            .map_err(|e| reject(401, e.reason()))?;
        {
            let conn = &mut self.conns[slot];
            if callback.is_some() {
                conn.set(flag::JSONP);
                conn.ext().callback = callback;
            } else {
                conn.clear(flag::JSONP);
            }
        }
        let Some(since) = since else {
            self.poll_next_seq(slot, &channels);
            return Ok(());
        };
        let Since::Seq(seq, epoch) = since else {
            unreachable!("a poll position is a seq");
        };
        let mut items: Vec<Bytes> = Vec::new();
        for name in &channels {
            self.replay.clear();
            let s = match self.subscribe(slot, name, since, true) {
                Ok(s) => s,
                Err(e) => {
                    self.unsubscribe_all(slot);
                    return Err(reject(e.status(), e.reason()));
                }
            };
            if s.remote {
                let local = self.by_key[&s.key];
                self.request_remote(slot, local, &s.name, seq, epoch, ReqKind::Poll);
                continue;
            }
            if s.reset {
                let reset = Message::Reset {
                    channel: &s.name,
                    epoch: s.epoch.as_str(),
                    seq: s.seq,
                };
                items.push(self.poll_item(slot, &reset));
            }
            if let Some((from, to)) = s.gap {
                let gap = Message::Gap {
                    channel: &s.name,
                    from,
                    to,
                };
                items.push(self.poll_item(slot, &gap));
            }
            let jsonp = self.conns[slot].has(flag::JSONP);
            for m in self.replay.drain(..) {
                items.push(if jsonp {
                    m.script_json().clone()
                } else {
                    m.json().clone()
                });
            }
        }
        if !items.is_empty() {
            self.answer_poll(slot, &items);
            return Ok(());
        }
        // Nothing yet (or waiting for Redis): hold the request.
        self.hold_poll(slot, seq);
        Ok(())
    }

    fn hold_poll(&mut self, slot: usize, seq: u64) {
        self.conns[slot].ext().poll_seq = seq;
        self.set_state(slot, State::Poll);
        let t = self.live().poll_timeout();
        self.arm(slot, t);
    }

    /// A long-poll without `seq`: where each channel's stream continues. A cluster node
    /// that does not know a channel (or whose feed is down) asks Redis first.
    fn poll_next_seq(&mut self, slot: usize, channels: &[String]) {
        let hub = self.shared.hub.clone();
        let known: Vec<Option<(Epoch, u64)>> = channels
            .iter()
            .map(|name| match hub.local_stream(name) {
                Some((e, seq)) if e.is_some() || self.shared.cluster.is_none() => Some((e, seq)),
                None if self.shared.cluster.is_none() => Some((Epoch::NONE, 0)),
                _ => None,
            })
            .map(|k| k.filter(|_| self.authority() != Authority::Stale))
            .collect();
        let items: Vec<Option<Bytes>> = channels
            .iter()
            .zip(&known)
            .map(|(name, k)| {
                k.map(|(epoch, seq)| {
                    self.poll_item(
                        slot,
                        &Message::NextSeq {
                            channel: name,
                            seq: seq + 1,
                            epoch: epoch.as_str(),
                        },
                    )
                })
            })
            .collect();
        if items.iter().all(Option::is_some) {
            let items: Vec<Bytes> = items.into_iter().flatten().collect();
            self.answer_poll(slot, &items);
            return;
        }
        let names: Vec<Arc<str>> = channels.iter().map(|c| Arc::from(c.as_str())).collect();
        let ext = self.conns[slot].ext();
        ext.poll_items = items;
        ext.poll_names = names.clone();
        for (i, name) in names.iter().enumerate() {
            if known[i].is_none() {
                self.request_remote(slot, i as u32, name, 0, Epoch::NONE, ReqKind::NextSeq);
            }
        }
        self.hold_poll(slot, 0);
    }

    fn answer_poll_noop(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        let seq = conn.ext.as_ref().map_or(0, |e| e.poll_seq);
        let chans: Vec<(Arc<str>, Epoch)> = conn
            .subs
            .as_slice()
            .iter()
            .map(|s| {
                let c = &self.chans[s.local as usize];
                (c.name.clone(), c.epoch)
            })
            .collect();
        let mut items = Vec::new();
        if chans.is_empty() {
            let noop = Message::Noop {
                channel: None,
                seq: Some(seq),
                epoch: "",
            };
            items.push(self.poll_item(slot, &noop));
        }
        for (name, epoch) in &chans {
            let noop = Message::Noop {
                channel: Some(name),
                seq: Some(seq),
                epoch: epoch.as_str(),
            };
            items.push(self.poll_item(slot, &noop));
        }
        self.answer_poll(slot, &items);
    }

    /// Answers a long-poll with a JSON array (or JSONP) of the given items.
    fn answer_poll(&mut self, slot: usize, items: &[Bytes]) {
        self.unsubscribe_all(slot);
        let token = token_of(slot, self.conns[slot].generation);
        self.forget_remote(token, None);
        if let Some(e) = self.conns[slot].ext.as_mut() {
            e.poll_items = Vec::new();
            e.poll_names = Vec::new();
        }
        let conn = &self.conns[slot];
        let keep_alive = conn.has(flag::KEEP_ALIVE) && !self.draining;
        let callback = conn
            .ext
            .as_ref()
            .and_then(|e| e.callback.clone())
            .filter(|_| conn.has(flag::JSONP));
        let mut body = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 64);
        if let Some(cb) = &callback {
            body.extend_from_slice(cb.as_bytes());
            body.push(b'(');
        }
        body.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.push(b']');
        let content_type = if callback.is_some() {
            body.extend_from_slice(b");");
            "application/javascript; charset=utf-8"
        } else {
            "application/json"
        };
        body.push(b'\n');
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            // A JSONP answer must not be taken for anything but script (nor JSON for
            // anything but JSON).
            ("X-Content-Type-Options", "nosniff"),
        ];
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(256 + body.len());
        http::write_response(&mut out, 200, &headers, &body, keep_alive);
        if !keep_alive {
            self.conns[slot].clear(flag::KEEP_ALIVE);
        }
        self.send(slot, &[Part::Copy(&out)]);
        self.after_response(slot);
    }
}

fn secs_f(v: f64) -> Duration {
    crate::config::secs(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Live};
    use crate::hub::Hub;
    use crate::reactor::epoll::Epoll;
    use crate::server::bind_reuseport;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    #[test]
    fn canned_responses_are_well_formed() {
        for canned in [&FULL_RESPONSE, &PER_IP_RESPONSE, &DRAINING_RESPONSE] {
            let text = std::str::from_utf8(canned).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len());
            assert!(head.starts_with("HTTP/1.1 503 "));
            let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
            assert_eq!(v["code"], 503);
        }
    }

    #[test]
    fn tokens_round_trip() {
        let t = token_of(12345, 0xAB_CDEF);
        assert_eq!(split_token(t), (12345, 0xAB_CDEF));
    }

    /// One worker driven turn by turn from the test thread, with real sockets.
    struct Rig {
        worker: Worker<Epoll>,
        hub: Arc<Hub>,
        addr: SocketAddr,
        events: Vec<IoEvent>,
    }

    impl Rig {
        fn new(mut cfg: Config) -> Rig {
            // The server resolves an automatic budget at start; the rig fixes one.
            if cfg.max_connections == 0 {
                cfg.max_connections = 1024;
            }
            let live = Arc::new(Live::new(&cfg));
            let io = Epoll::new().unwrap();
            let inbox = Arc::new(Inbox::new(io.waker()));
            let hub = Arc::new(Hub::new(
                vec![inbox.clone()],
                crate::hub::HubConfig::from_config(&cfg, live.clone(), false),
                None,
            ));
            let shared = Arc::new(Shared::new(
                cfg,
                live,
                hub.clone(),
                vec![inbox.clone()],
                "test".into(),
                None,
            ));
            let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = listener.local_addr().unwrap();
            let worker = Worker::new(0, shared, io, listener, inbox).unwrap();
            Rig {
                worker,
                hub,
                addr,
                events: Vec::new(),
            }
        }

        fn turn(&mut self) {
            self.worker
                .turn(&mut self.events, Some(Duration::from_millis(5)));
        }

        /// Turns until `f` holds (at most 2 s).
        fn until(&mut self, f: impl Fn(&Worker<Epoll>) -> bool) -> bool {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                self.turn();
                if f(&self.worker) {
                    return true;
                }
            }
            false
        }

        fn connect(&mut self) -> TcpStream {
            let s = TcpStream::connect(self.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            self.until(|w| !w.conns.is_empty());
            s
        }

        /// Turns until the client has read something (at most 2 s).
        fn read(&mut self, s: &mut TcpStream) -> Vec<u8> {
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while Instant::now() < deadline {
                self.turn();
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        // Give the server a turn to finish a response in pieces.
                        self.turn();
                        if let Ok(n) = s.read(&mut buf) {
                            out.extend_from_slice(&buf[..n]);
                        }
                        break;
                    }
                    Err(_) => {}
                }
            }
            out
        }

        fn only(&self) -> &Conn {
            self.worker.conns.iter().next().expect("one connection").1
        }
    }

    const UPGRADE: &str = "GET /ws?channel=c HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn keep_alive_request_returns_to_waiting_for_a_head() {
        let mut rig = Rig::new(Config::default());
        let mut c = rig.connect();
        assert_eq!(rig.only().state, State::Http);
        assert!(!rig.only().timer.is_none(), "handshake deadline armed");
        c.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let resp = rig.read(&mut c);
        assert!(resp.starts_with(b"HTTP/1.1 200 OK"));
        let conn = rig.only();
        assert_eq!(conn.state, State::Http);
        assert!(conn.has(flag::SERVED) && conn.has(flag::KEEP_ALIVE));
        assert!(!conn.timer.is_none(), "idle deadline armed");
        assert!(conn.ext.is_none(), "an idle connection holds no buffers");
    }

    #[test]
    fn websocket_upgrade_subscribe_and_close_handshake() {
        let mut rig = Rig::new(Config::default());
        let mut c = rig.connect();
        c.write_all(UPGRADE.as_bytes()).unwrap();
        let resp = rig.read(&mut c);
        assert!(
            resp.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
        let conn = rig.only();
        assert_eq!(conn.state, State::Ws);
        assert_eq!(conn.subs.len(), 1);
        assert!(conn.ext.is_none() && conn.ws.is_idle());
        assert_eq!(rig.hub.info("c").unwrap().subscribers, 1);
        // A masked close frame: the server answers with close and shuts its side.
        let mut frame = Vec::new();
        ws::encode_close(&mut frame, CloseCode::NORMAL, "bye", Some([1, 2, 3, 4]));
        c.write_all(&frame).unwrap();
        let reply = rig.read(&mut c);
        assert_eq!(reply[0], 0x88, "close frame back");
        assert!(rig.until(|w| w.conns.iter().all(|(_, c)| c.state == State::Closing)));
        assert!(
            rig.hub.info("c").is_none(),
            "unsubscribed on close, and the empty channel freed"
        );
        drop(c);
        assert!(rig.until(|w| w.conns.is_empty()), "peer EOF frees the slot");
    }

    #[test]
    fn a_partial_head_is_cut_at_the_handshake_deadline() {
        let cfg = Config {
            handshake_timeout_secs: 0.1,
            close_timeout_secs: 0.1,
            ..Default::default()
        };
        let mut rig = Rig::new(cfg);
        let mut c = rig.connect();
        c.write_all(b"GET /ws HTTP/1.1\r\nHost:").unwrap();
        assert!(rig.until(|w| w
            .conns
            .iter()
            .any(|(_, c)| c.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty()))));
        let resp = rig.read(&mut c);
        assert!(resp.starts_with(b"HTTP/1.1 408"), "answered 408");
        assert!(rig.until(|w| w.conns.is_empty()));
        assert_eq!(rig.worker.stats.get(Counter::HandshakeTimeout), 1);
    }

    #[test]
    fn a_held_poll_is_answered_by_a_publish_and_kept_alive() {
        let mut rig = Rig::new(Config::default());
        let mut c = rig.connect();
        c.write_all(b"GET /poll?channel=p&seq=1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert!(rig.until(|w| w.conns.iter().all(|(_, c)| c.state == State::Poll)));
        assert_eq!(rig.only().subs.len(), 1);
        rig.hub
            .publish("p", "hello", &crate::hub::PubMeta::default())
            .unwrap();
        let resp = rig.read(&mut c);
        let text = String::from_utf8_lossy(&resp);
        let epoch = rig.hub.info("p").unwrap().epoch;
        let want = format!(r#""seq":1,"epoch":"{epoch}","content":"hello""#);
        assert!(text.contains(&want), "{text}");
        let conn = rig.only();
        assert_eq!(conn.state, State::Http);
        assert!(
            conn.subs.is_empty(),
            "an answered poll leaves no subscription"
        );
        assert_eq!(rig.hub.info("p").unwrap().subscribers, 0);
    }
}
