//! The admin HTTP API, for backends: publish, broadcast, close, clear, sign, info,
//! channels, metrics (the routes are in [`api`]); and, for people, the live dashboard and
//! its event stream ([`events`]).
//!
//! One thread with its own mio reactor serves keep-alive (and pipelined) requests. A
//! publish is answered as soon as the hub has sequenced the message and handed it to the
//! workers; the fan-out happens on the workers. With the disk store, this thread commits
//! the publishes of each turn itself (one journal write for all of them) and answers them
//! once committed. Bodies are `Content-Length` or chunked (decoded as they arrive, never
//! from the start again), bounded by `max_message_bytes`; framings that invite smuggling
//! are refused with 400. This thread also sweeps idle empty channels.
//!
//! # Bounds
//!
//! No client can hold the port: at most `admin_max_connections` connections, and
//! `admin_max_connections_per_ip` from one address; past a cap a newcomer takes the place
//! of the oldest connection that has not sent a whole request yet (which gets 503), or
//! is answered 503 itself when there is none; a
//! request head must arrive within `admin_head_timeout_secs` and a body within
//! `admin_body_timeout_secs` (else 408 and the connection closes), an idle keep-alive
//! connection is closed after `admin_idle_timeout_secs`, an answer the peer does not read
//! within `admin_body_timeout_secs` closes it; a request with a bad `admin_token` is
//! answered 401 and the connection closed.
//!
//! # Event streams
//!
//! `GET /events` (the dashboard's feed, see [`events`]) turns its connection into a
//! stream: a response without a length, then one snapshot a second from this loop. A
//! stream is exempt from the idle and body timeouts and is never evicted, but it counts
//! against `admin_max_connections` (and `_per_ip`); at most half of
//! `admin_max_connections` (at least one) are streams at a time, more are answered 503.
//! Its output is bounded: a reader that lets [`MAX_ADMIN_OUTPUT`] pile up is dropped. It
//! takes no more input (anything it sends closes it), and every stream is closed when a
//! drain starts (`/events` is answered 503 from then on).

pub mod api;
mod events;
pub mod handover;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use protocol::http::{self, BodyFraming, ChunkedDecoder, Parsed, EMPTY_HEADER};
use protocol::message::Message;

use crate::config::secs;
use crate::hub::HubError;
use crate::limits::{
    ACCEPT_WARN_INTERVAL, ADMIN_READ_CHUNK, ADMIN_TIMEOUT_CHECK, MAX_ADMIN_OUTPUT,
    MAX_HELD_ANSWERS, SWEEP_EVERY,
};
use crate::memory;
use crate::shared::Shared;
use crate::tls::stream::AdminStream;
use crate::{debug, warn};

const LISTENER: Token = Token(usize::MAX);
/// The disk store wakes the admin thread through this token after each commit.
const STORE_WAKER: Token = Token(usize::MAX - 1);
const BUSY: &str = "too many admin connections (admin_max_connections)";
const BUSY_IP: &str = "too many admin connections from your address (admin_max_connections_per_ip)";
const BUSY_STREAMS: &str =
    "too many event streams (at most half of admin_max_connections are /events streams)";

/// Binds the admin listener. Unlike the subscriber port it is exclusive: two servers
/// must not silently share one admin port.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// What a connection is waiting for (each has its timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Phase {
    /// Accepted, nothing received: the head timeout.
    Fresh,
    /// Part of a request head received.
    Head,
    /// The head received, part of its body.
    Body,
    /// Between requests on a keep-alive connection.
    Idle,
    /// Answers written, waiting for the peer to read them (reset by progress).
    Writing,
    /// Answers waiting for the disk store (our own wait: no timeout).
    Held,
    /// An event stream (`/events`): no timeout, bounded by its output.
    Stream,
}

/// A chunked body decoded as it arrives.
struct Chunked {
    decoder: ChunkedDecoder,
    decoded: Vec<u8>,
    /// Bytes of the request (head included) the decoder has taken.
    consumed: usize,
}

struct AdminConn {
    sock: AdminStream,
    peer: IpAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    woff: usize,
    close: bool,
    /// A request asked to close: nothing after it is parsed.
    close_pending: bool,
    /// Answers waiting for a disk-store commit (and every answer behind them, in order).
    held: VecDeque<Held>,
    phase: Phase,
    since: Instant,
    chunked: Option<Chunked>,
    /// An event stream: its response has no end, this loop writes its events.
    stream: bool,
}

/// An answer held until its publish is committed by the disk store.
struct Held {
    /// The store ticket (0: ready once the answers before it are).
    ticket: u64,
    reply: Reply,
    keep_alive: bool,
    /// A `HEAD`: the answer's head alone.
    head: bool,
}

/// A response.
pub(crate) struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
    /// The start of an event stream: the connection is held open after the body.
    stream: bool,
}

impl Reply {
    /// A JSON answer from serialized bytes (a line feed is added).
    fn json_bytes(status: u16, mut body: Vec<u8>) -> Reply {
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
            extra: Vec::new(),
            stream: false,
        }
    }

    fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply::json_bytes(status, v.to_string().into_bytes())
    }

    fn envelope(status: u16, m: &Message<'_>) -> Reply {
        Reply::json_bytes(status, m.to_json())
    }

    fn error(status: u16, reason: &str) -> Reply {
        Reply::envelope(
            status,
            &Message::Error {
                code: status,
                reason,
            },
        )
    }

    fn hub_error(e: HubError) -> Reply {
        Reply::error(e.status(), &e.reason())
    }
}

/// What parsing the start of a connection's input found.
enum Step {
    /// A request, answered: bytes used, the answer, keep-alive, the store ticket, and
    /// whether it was a `HEAD` (the answer's head alone).
    Done(usize, Reply, bool, u64, bool),
    /// The head is not complete yet.
    NeedHead,
    /// The head is complete, the body is not; true when the client waits for a
    /// `100 Continue` (`Expect: 100-continue`) before sending it.
    NeedBody(bool),
}

/// The admin thread's state.
struct Admin {
    shared: Arc<Shared>,
    poll: Poll,
    listener: TcpListener,
    conns: Slab<AdminConn>,
    per_ip: HashMap<IpAddr, usize>,
    buf: Vec<u8>,
    accept_warned: Option<Instant>,
    /// Event streams open.
    streams: usize,
    /// The counters of the last snapshot sent to the streams (their rates' base).
    events_prev: Option<events::Sample>,
    /// HTTPS only, when the admin port has TLS.
    tls: Option<Arc<crate::tls::Context>>,
}

/// Runs the admin loop (never returns).
pub fn run(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    tls: Option<Arc<crate::tls::Context>>,
    adopted: Vec<(handover::AdminRecord, std::os::fd::OwnedFd)>,
) {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            warn!("admin: cannot create reactor: {e}");
            return;
        }
    };
    let mut listener = TcpListener::from_std(listener);
    if let Err(e) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        warn!("admin: cannot register listener: {e}");
        return;
    }
    // One waker per poll (mio): the store's commits and a hot handover's freeze
    // (`crate::handover::admin_gate`) share it.
    match mio::Waker::new(poll.registry(), STORE_WAKER) {
        Ok(w) => {
            let w = Arc::new(w);
            crate::handover::set_admin_waker(w.clone());
            if let Some(store) = shared.hub.store() {
                store.add_waker(w);
            }
        }
        Err(e) => warn!("admin: cannot create the waker: {e}"),
    }
    let mut admin = Admin {
        shared,
        poll,
        listener,
        conns: Slab::new(),
        per_ip: HashMap::new(),
        buf: vec![0u8; ADMIN_READ_CHUNK],
        accept_warned: None,
        streams: 0,
        events_prev: None,
        tls,
    };
    admin.adopt(adopted);
    admin.run();
}

impl Admin {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        let mut last_check = Instant::now();
        let mut last_release = Instant::now();
        let mut last_events = Instant::now();
        let mut accept_retry = false;
        loop {
            // A hot handover holds the admin port still (nothing read or accepted),
            // once it has the connections to hand over.
            crate::handover::admin_gate(|| self.export_conns());
            if let Err(e) = self.poll.poll(&mut events, Some(ADMIN_TIMEOUT_CHECK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("admin: poll failed: {e}");
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => accept_retry = self.accept(),
                    STORE_WAKER => self.release_all(),
                    Token(id) if self.conns.contains(id) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(id);
                        }
                        if self.conns.contains(id) {
                            self.flush(id);
                        }
                    }
                    Token(_) => {}
                }
            }
            if let Some(store) = self.shared.hub.store() {
                if store.has_pending() {
                    // This thread commits the publishes it just queued, every
                    // connection's at once (one journal write), and answers them.
                    store.commit_pending();
                    self.release_all();
                }
            }
            if accept_retry {
                accept_retry = self.accept();
            }
            let now = Instant::now();
            if now.duration_since(last_check) >= ADMIN_TIMEOUT_CHECK {
                last_check = now;
                self.expire(now);
            }
            if self.streams > 0
                && self
                    .shared
                    .draining
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.close_streams();
            }
            if now.duration_since(last_events) >= crate::limits::EVENTS_EVERY {
                last_events = now;
                self.send_events();
            }
            if now.duration_since(last_sweep) >= SWEEP_EVERY {
                last_sweep = now;
                let n = self.shared.hub.sweep(now);
                if n > 0 {
                    debug!("reclaimed {n} idle channels");
                }
            }
            if now.duration_since(last_release) >= crate::limits::RELEASE_CHECK {
                // What this thread allocated (channels, messages) others freed.
                last_release = now;
                memory::release_freed();
            }
        }
    }

    /// Accepts what is waiting. Returns true when accepting failed for lack of
    /// descriptors or memory: the caller retries on its next turn (a listener that stays
    /// readable would otherwise never signal again).
    fn accept(&mut self) -> bool {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        loop {
            match self.listener.accept() {
                Ok((mut sock, peer)) => {
                    let ip = peer.ip();
                    let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
                    // At a cap, the newcomer takes the place of the oldest connection
                    // that has not sent a whole request yet (a slowloris holds nothing
                    // for long); with none to give way it is refused.
                    // (A TLS client cannot read a plain 503: it is just closed.)
                    let plain = self.tls.is_none();
                    if from_ip >= cfg.admin_max_connections_per_ip && !self.evict(Some(ip)) {
                        if plain {
                            refuse(&mut sock, BUSY_IP);
                        }
                        continue;
                    }
                    if self.conns.len() >= cfg.admin_max_connections && !self.evict(None) {
                        if plain {
                            refuse(&mut sock, BUSY);
                        }
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let registered = self.poll.registry().register(
                        &mut sock,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    let sock = match &self.tls {
                        None => Ok(AdminStream::plain(sock)),
                        Some(ctx) => AdminStream::tls(sock, ctx.config()),
                    };
                    if let (true, Ok(sock)) = (registered.is_ok(), sock) {
                        entry.insert(AdminConn {
                            sock,
                            peer: ip,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            woff: 0,
                            close: false,
                            close_pending: false,
                            held: VecDeque::new(),
                            phase: Phase::Fresh,
                            since: Instant::now(),
                            chunked: None,
                            stream: false,
                        });
                        *self.per_ip.entry(ip).or_insert(0) += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self
                        .accept_warned
                        .is_none_or(|t| t.elapsed() >= ACCEPT_WARN_INTERVAL)
                    {
                        warn!(
                            "admin: accept failed: {e}; retrying every {} ms",
                            ADMIN_TIMEOUT_CHECK.as_millis()
                        );
                        self.accept_warned = Some(Instant::now());
                    }
                    return true;
                }
            }
        }
    }

    /// Closes the oldest connection (from `ip`, or any) still waiting for its first
    /// request head, to make room; false when there is none.
    fn evict(&mut self, ip: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Fresh | Phase::Head))
            .filter(|(_, c)| ip.is_none_or(|ip| c.peer == ip))
            .min_by_key(|(_, c)| c.since)
            .map(|(id, _)| id);
        let Some(id) = victim else {
            return false;
        };
        let reason = if ip.is_some() { BUSY_IP } else { BUSY };
        refuse(&mut self.conns[id].sock, reason);
        self.remove(id);
        true
    }

    fn remove(&mut self, id: usize) {
        let c = self.conns.remove(id);
        if c.stream {
            self.streams = self.streams.saturating_sub(1);
        }
        if let Some(n) = self.per_ip.get_mut(&c.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.peer);
            }
        }
    }

    /// Whether another event stream may start.
    fn streams_ok(&self) -> bool {
        self.streams < (self.shared.cfg.admin_max_connections / 2).max(1)
    }

    /// Counts the connection's stream if serving it just started one.
    fn note_stream(&mut self, id: usize, was_stream: bool) {
        if !was_stream && self.conns.get(id).is_some_and(|c| c.stream) {
            self.stream_started();
        }
    }

    fn stream_started(&mut self) {
        self.streams += 1;
        if self.events_prev.is_none() {
            self.events_prev = Some(events::sample(&self.shared));
        }
    }

    fn read(&mut self, id: usize) {
        let shared = self.shared.clone();
        let limit = shared.cfg.max_head_bytes + shared.live.max_message_bytes() * 2 + 4096;
        let streams_ok = self.streams_ok();
        loop {
            let c = &mut self.conns[id];
            if c.stream {
                // A stream takes no input: its end is noticed, anything else closes it.
                match c.sock.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => {
                        let _ = c.sock.shutdown(Shutdown::Both);
                        return self.remove(id);
                    }
                }
            }
            if c.close
                || c.close_pending
                || c.wbuf.len() > MAX_ADMIN_OUTPUT
                || c.held.len() > MAX_HELD_ANSWERS
            {
                // Stop reading: the peer must take its answers first (or we are closing).
                return;
            }
            match c.sock.read(&mut self.buf) {
                Ok(0) => return self.remove(id),
                Ok(n) => {
                    c.rbuf.extend_from_slice(&self.buf[..n]);
                    serve_buffered(&shared, c, streams_ok);
                    if c.stream {
                        self.stream_started();
                        continue;
                    }
                    if c.rbuf.len() > limit {
                        write_reply(c, Reply::error(413, "request too large"), false, false);
                        write_out(c);
                        c.rbuf.clear();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(id),
            }
        }
    }

    fn flush(&mut self, id: usize) {
        let c = &mut self.conns[id];
        match c.sock.flush_tls() {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => return self.remove(id),
        }
        while c.woff < c.wbuf.len() {
            match c.sock.write(&c.wbuf[c.woff..]) {
                Ok(n) => {
                    c.woff += n;
                    c.since = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.remove(id),
            }
        }
        c.wbuf.clear();
        c.woff = 0;
        if c.close {
            if matches!(c.sock.flush_tls(), Ok(false)) {
                // Its last bytes are still in TLS: the writable edge comes back here.
                return;
            }
            let _ = c.sock.shutdown(Shutdown::Write);
            return self.remove(id);
        }
        set_phase(c);
    }

    /// After a store commit: answers every connection whose publishes are now on disk.
    fn release_all(&mut self) {
        let waiting: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.held.is_empty())
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            let streams_ok = self.streams_ok();
            let c = &mut self.conns[id];
            let was_stream = c.stream;
            release(&self.shared, c);
            write_out(c);
            if c.held.is_empty() && !c.rbuf.is_empty() {
                // Reading stopped while answers were held: take up what was left.
                serve_buffered(&self.shared, c, streams_ok);
            }
            self.note_stream(id, was_stream);
            if self.conns.contains(id) {
                self.read(id);
            }
            if self.conns.contains(id) {
                self.flush(id);
            }
        }
    }

    /// Closes connections whose phase lasted past its timeout.
    fn expire(&mut self, now: Instant) {
        let cfg = &self.shared.cfg;
        let head = secs(cfg.admin_head_timeout_secs);
        let body = secs(cfg.admin_body_timeout_secs);
        let idle = secs(cfg.admin_idle_timeout_secs);
        let late: Vec<(usize, Phase)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| {
                let limit = match c.phase {
                    Phase::Fresh | Phase::Head => head,
                    Phase::Body | Phase::Writing => body,
                    Phase::Idle => idle,
                    Phase::Held | Phase::Stream => return None,
                };
                (now.saturating_duration_since(c.since) >= limit).then_some((id, c.phase))
            })
            .collect();
        for (id, phase) in late {
            let c = &mut self.conns[id];
            let reason = match phase {
                Phase::Fresh | Phase::Head => Some("request head not completed in time"),
                Phase::Body => Some("request body not completed in time"),
                Phase::Idle | Phase::Writing | Phase::Held | Phase::Stream => None,
            };
            if let Some(reason) = reason {
                c.rbuf.clear();
                c.chunked = None;
                write_reply(c, Reply::error(408, reason), false, false);
                write_out(c);
            }
            let _ = c.sock.shutdown(Shutdown::Both);
            self.remove(id);
        }
    }

    /// Sends every event stream the next snapshot (one snapshot for all); a stream whose
    /// reader let [`MAX_ADMIN_OUTPUT`] pile up is dropped.
    fn send_events(&mut self) {
        if self.streams == 0 {
            self.events_prev = None;
            return;
        }
        let (event, sample) = events::snapshot(&self.shared, self.events_prev.as_ref());
        self.events_prev = Some(sample);
        let ids = self.open_streams();
        for id in ids {
            let c = &mut self.conns[id];
            if c.woff > 0 {
                c.wbuf.drain(..c.woff);
                c.woff = 0;
            }
            if c.wbuf.len() + event.len() > MAX_ADMIN_OUTPUT {
                debug!("admin: an event stream's reader fell behind; closed");
                let _ = c.sock.shutdown(Shutdown::Both);
                self.remove(id);
                continue;
            }
            c.wbuf.extend_from_slice(&event);
            self.flush(id);
        }
    }

    /// The event streams still open.
    fn open_streams(&self) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| c.stream && !c.close)
            .map(|(id, _)| id)
            .collect()
    }

    /// A drain started: every event stream ends (after what it was sent).
    fn close_streams(&mut self) {
        let ids = self.open_streams();
        for id in ids {
            self.conns[id].close = true;
            self.flush(id);
        }
    }
}

/// Works out what the connection waits for now; a change of phase restarts its clock.
fn set_phase(c: &mut AdminConn) {
    let phase = if c.stream {
        Phase::Stream
    } else if !c.held.is_empty() {
        Phase::Held
    } else if c.woff < c.wbuf.len() {
        Phase::Writing
    } else if c.chunked.is_some() || c.phase == Phase::Body && !c.rbuf.is_empty() {
        Phase::Body
    } else if !c.rbuf.is_empty() {
        Phase::Head
    } else if c.phase == Phase::Fresh {
        Phase::Fresh
    } else {
        Phase::Idle
    };
    if phase != c.phase {
        c.phase = phase;
        c.since = Instant::now();
    }
}

/// Serves every complete request in the buffer (pipelined requests are parsed in place
/// and their answers written together at the end).
/// `streams_ok`: whether a `/events` request may start a stream (else 503).
fn serve_buffered(shared: &Shared, c: &mut AdminConn, streams_ok: bool) {
    let rbuf = std::mem::take(&mut c.rbuf);
    let mut pos = 0;
    let mut waiting_body = false;
    while !c.close && !c.close_pending && pos < rbuf.len() {
        match serve_one(shared, &rbuf[pos..], &mut c.chunked, streams_ok) {
            Step::Done(used, reply, keep_alive, ticket, head) => {
                c.held.push_back(Held {
                    ticket,
                    reply,
                    keep_alive,
                    head,
                });
                if !keep_alive {
                    c.close_pending = true;
                }
                pos = if keep_alive { pos + used } else { rbuf.len() };
                // A request was served: the next one (if any) starts its own phase.
                c.phase = Phase::Idle;
            }
            Step::NeedHead => break,
            Step::NeedBody(expect) => {
                waiting_body = true;
                if expect && c.phase != Phase::Body {
                    // Once per request, as its body phase begins (RFC 9110 10.1.1).
                    c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                break;
            }
        }
    }
    c.rbuf = rbuf;
    c.rbuf.drain(..pos);
    // (A chunked decoder's `consumed` counts from the start of its request, which is
    // now the start of the buffer: it needs no adjusting.)
    release(shared, c);
    write_out(c);
    if waiting_body && c.phase != Phase::Body {
        c.phase = Phase::Body;
        c.since = Instant::now();
    }
    set_phase(c);
}

/// Moves the answers that no longer wait for the store into the output, in order. A
/// publish whose batch the store failed to write is answered 503 instead.
fn release(shared: &Shared, c: &mut AdminConn) {
    while let Some(h) = c.held.front() {
        let reply = match (h.ticket, shared.hub.store()) {
            (0, _) | (_, None) => None,
            (t, Some(store)) => match store.outcome(t) {
                None => return,
                Some(Ok(())) => None,
                Some(Err(why)) => Some(Reply::hub_error(HubError::Store(why))),
            },
        };
        let h = c.held.pop_front().expect("front checked above");
        write_reply(c, reply.unwrap_or(h.reply), h.keep_alive, h.head);
    }
}

/// Parses and answers one request at the start of `buf`. A chunked body is decoded as
/// it arrives: `chunked` keeps the decoder between calls.
fn serve_one(shared: &Shared, buf: &[u8], chunked: &mut Option<Chunked>, streams_ok: bool) -> Step {
    let limits = http::Limits {
        max_head_bytes: shared.cfg.max_head_bytes,
        max_headers: shared.cfg.max_headers,
        max_body_bytes: shared.live.max_message_bytes(),
    };
    let mut headers = [EMPTY_HEADER; crate::limits::HEADERS_CAP];
    let max_headers = limits.max_headers.min(headers.len());
    let fail = |e: http::HttpError| {
        Step::Done(
            buf.len(),
            Reply::error(e.status(), e.reason()),
            false,
            0,
            false,
        )
    };
    let req = match http::parse_request(buf, &mut headers[..max_headers], &limits) {
        Ok(Parsed::Partial) => return Step::NeedHead,
        Ok(Parsed::Complete(r)) => r,
        Err(e) => return fail(e),
    };
    let keep_alive = req.keep_alive();
    let body_start = req.head_len;
    let expect = req.version == 1
        && req
            .header_str("expect")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    let (body, used): (&[u8], usize) = match http::body_framing(&req, &limits) {
        Err(e) => return fail(e),
        Ok(BodyFraming::None) => (&[], body_start),
        Ok(BodyFraming::Length(n)) => {
            let end = body_start + n as usize;
            if buf.len() < end {
                return Step::NeedBody(expect);
            }
            (&buf[body_start..end], end)
        }
        Ok(BodyFraming::Chunked) => {
            let ch = chunked.get_or_insert_with(|| Chunked {
                decoder: ChunkedDecoder::new(limits.max_body_bytes),
                decoded: Vec::new(),
                consumed: body_start,
            });
            match ch.decoder.decode(&buf[ch.consumed..], &mut ch.decoded) {
                Ok((n, true)) => {
                    ch.consumed += n;
                    (&[], ch.consumed)
                }
                Ok((n, false)) => {
                    ch.consumed += n;
                    return Step::NeedBody(expect);
                }
                Err(e) => {
                    *chunked = None;
                    return fail(e);
                }
            }
        }
    };
    let decoded = chunked.take().map(|c| c.decoded);
    let body = decoded.as_deref().unwrap_or(body);
    let (mut reply, ticket) = api::route(shared, &req, body);
    if reply.stream && !streams_ok {
        reply = Reply::error(503, BUSY_STREAMS);
    }
    // A bad admin token: answered, and the connection is not kept. A stream takes the
    // connection: nothing after it is parsed.
    let keep_alive = keep_alive && reply.status != 401 && !reply.stream;
    Step::Done(
        used,
        reply,
        keep_alive,
        ticket,
        req.method == http::Method::Head,
    )
}

/// Answers a connection over a cap with 503 (one write: it is not kept). What it already
/// sent is read first, so that closing it does not turn the answer into a reset.
fn refuse(sock: &mut (impl Read + Write), reason: &str) {
    let mut sink = [0u8; 4096];
    let _ = sock.read(&mut sink);
    let _ = sock.write(&crate::msg::error_response(503, reason));
}

/// Appends a response to the connection's output (for a stream, its head and first
/// events: the connection is then held, see [`Admin::send_events`]).
fn write_reply(c: &mut AdminConn, reply: Reply, keep_alive: bool, head: bool) {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", reply.content_type)];
    for (k, v) in &reply.extra {
        headers.push((k, v.as_str()));
    }
    if reply.stream {
        // No length: the body lasts as long as the connection (`Connection: close`).
        http::write_response_head(
            &mut c.wbuf,
            reply.status,
            &headers,
            http::ResponseBody::Unframed,
            false,
        );
        c.wbuf.extend_from_slice(&reply.body);
        c.stream = true;
        return;
    }
    if head {
        // The length the body would have, and no body (RFC 9110 9.3.2).
        let len = http::ResponseBody::Length(reply.body.len());
        http::write_response_head(&mut c.wbuf, reply.status, &headers, len, keep_alive);
    } else {
        http::write_response(&mut c.wbuf, reply.status, &headers, &reply.body, keep_alive);
    }
    if !keep_alive {
        c.close = true;
    }
}

/// Writes what the socket takes now; the writable edge finishes the rest.
fn write_out(c: &mut AdminConn) {
    while c.woff < c.wbuf.len() {
        match c.sock.write(&c.wbuf[c.woff..]) {
            Ok(n) => c.woff += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if c.woff == c.wbuf.len() {
        c.wbuf.clear();
        c.woff = 0;
        if c.close && matches!(c.sock.flush_tls(), Ok(true)) {
            let _ = c.sock.shutdown(Shutdown::Write);
        }
    }
}
