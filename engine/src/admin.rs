//! The admin HTTP API, for backends: publish, broadcast, close, clear, sign, info,
//! channels, metrics.
//!
//! One thread with its own mio reactor serves keep-alive (and pipelined) requests. A
//! publish is answered as soon as the hub has sequenced the message and handed it to the
//! workers; the fan-out happens on the workers. Bodies are `Content-Length` or chunked,
//! bounded by `max_message_bytes`; framings that invite smuggling are refused with 400.
//! This thread also sweeps idle empty channels.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::http::{self, BodyFraming, ChunkedDecoder, Method, Parsed, EMPTY_HEADER};
use protocol::message::{self, Message};
use protocol::query::Query;

use crate::hub::HubError;
use crate::server::Shared;
use crate::store::Commit;
use crate::{auth, debug, warn};

/// Most admin connections at once.
pub const MAX_ADMIN_CONNS: usize = 4096;
/// Most bytes of output queued per admin connection before it stops reading.
pub const MAX_ADMIN_OUTPUT: usize = 4 * 1024 * 1024;
/// Default and largest `limit` of `/channels`.
pub const DEFAULT_LISTING: usize = 1000;
/// Longest `ttl` accepted by `/sign` (seconds).
pub const MAX_TOKEN_TTL: u64 = 366 * 86_400;
/// Longest `prefix` of `/channels`.
const MAX_PREFIX: usize = 128;
const LISTENER: Token = Token(usize::MAX);
/// The disk store wakes the admin thread through this token after each commit.
const STORE_WAKER: Token = Token(usize::MAX - 1);
/// Most answers held for one connection before it stops being read.
pub const MAX_HELD_ANSWERS: usize = 65_536;
/// Accept errors are logged at most once per this interval.
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 64 * 1024;
/// How often idle channels are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Binds the admin listener. Unlike the subscriber port it is exclusive: two servers
/// must not silently share one admin port.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

struct AdminConn {
    sock: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    woff: usize,
    close: bool,
    /// A request asked to close: nothing after it is parsed.
    close_pending: bool,
    /// Answers waiting for a disk-store commit (and every answer behind them, in order).
    held: VecDeque<Held>,
}

/// An answer held until its publish is committed by the disk store.
struct Held {
    /// The store ticket (0: ready once the answers before it are).
    ticket: u64,
    reply: Reply,
    keep_alive: bool,
}

/// A response.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
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

/// Runs the admin loop (never returns).
pub fn run(shared: Arc<Shared>, listener: std::net::TcpListener) {
    let mut poll = match Poll::new() {
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
    if let Some(store) = shared.hub.store() {
        match mio::Waker::new(poll.registry(), STORE_WAKER) {
            Ok(w) => store.add_waker(Arc::new(w)),
            Err(e) => warn!("admin: cannot create the store waker: {e}"),
        }
    }
    let mut conns: Slab<AdminConn> = Slab::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut last_sweep = Instant::now();
    let mut accept_retry = false;
    let mut accept_warned = None;
    loop {
        if let Err(e) = poll.poll(&mut events, Some(SWEEP_EVERY)) {
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("admin: poll failed: {e}");
            }
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_retry = accept(&poll, &listener, &mut conns, &mut accept_warned);
                continue;
            }
            if ev.token() == STORE_WAKER {
                release_all(&shared, &mut conns, &mut buf);
                continue;
            }
            let id = ev.token().0;
            if !conns.contains(id) {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                read(&shared, &mut conns, id, &mut buf);
            }
            if conns.contains(id) {
                flush(&mut conns, id);
            }
        }
        if let Some(store) = shared.hub.store() {
            if store.has_pending() {
                // This thread commits the publishes it just queued, every connection's at
                // once (one journal write), and answers them.
                store.commit_pending();
                release_all(&shared, &mut conns, &mut buf);
            }
        }
        if accept_retry {
            accept_retry = accept(&poll, &listener, &mut conns, &mut accept_warned);
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= SWEEP_EVERY {
            last_sweep = now;
            let n = shared.hub.sweep(now);
            if n > 0 {
                debug!("reclaimed {n} idle channels");
            }
        }
    }
}

/// Accepts what is waiting. Returns true when accepting failed for lack of descriptors or
/// memory: the caller retries on its next turn (a listener that stays readable would
/// otherwise never signal again).
fn accept(
    poll: &Poll,
    listener: &TcpListener,
    conns: &mut Slab<AdminConn>,
    warned: &mut Option<Instant>,
) -> bool {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                if conns.len() >= MAX_ADMIN_CONNS {
                    let _ = sock.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let _ = sock.set_nodelay(true);
                let entry = conns.vacant_entry();
                if poll
                    .registry()
                    .register(
                        &mut sock,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    entry.insert(AdminConn {
                        sock,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        woff: 0,
                        close: false,
                        close_pending: false,
                        held: VecDeque::new(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if warned.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_INTERVAL) {
                    warn!(
                        "admin: accept failed: {e}; retrying every {} ms",
                        SWEEP_EVERY.as_millis()
                    );
                    *warned = Some(Instant::now());
                }
                return true;
            }
        }
    }
}

fn read(shared: &Shared, conns: &mut Slab<AdminConn>, id: usize, buf: &mut [u8]) {
    let limit = shared.cfg.max_head_bytes + shared.live.max_message_bytes() * 2 + 4096;
    loop {
        let c = &mut conns[id];
        if c.close
            || c.close_pending
            || c.wbuf.len() > MAX_ADMIN_OUTPUT
            || c.held.len() > MAX_HELD_ANSWERS
        {
            // Stop reading: the peer must take its answers first (or we are closing).
            return;
        }
        match c.sock.read(buf) {
            Ok(0) => {
                conns.remove(id);
                return;
            }
            Ok(n) => {
                c.rbuf.extend_from_slice(&buf[..n]);
                serve_buffered(shared, c);
                if c.rbuf.len() > limit {
                    write_reply(c, Reply::error(413, "request too large"), false);
                    write_out(c);
                    c.rbuf.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                conns.remove(id);
                return;
            }
        }
    }
}

fn flush(conns: &mut Slab<AdminConn>, id: usize) {
    let c = &mut conns[id];
    while c.woff < c.wbuf.len() {
        match c.sock.write(&c.wbuf[c.woff..]) {
            Ok(n) => c.woff += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                conns.remove(id);
                return;
            }
        }
    }
    c.wbuf.clear();
    c.woff = 0;
    if c.close {
        let _ = c.sock.shutdown(Shutdown::Write);
        conns.remove(id);
    }
}

/// Serves every complete request in the buffer (pipelined requests are parsed in place
/// and their answers written together at the end).
fn serve_buffered(shared: &Shared, c: &mut AdminConn) {
    let rbuf = std::mem::take(&mut c.rbuf);
    let mut pos = 0;
    while !c.close && !c.close_pending && pos < rbuf.len() {
        match serve_one(shared, &rbuf[pos..]) {
            Some((used, reply, keep_alive, ticket)) => {
                c.held.push_back(Held {
                    ticket,
                    reply,
                    keep_alive,
                });
                if !keep_alive {
                    c.close_pending = true;
                }
                pos = if keep_alive { pos + used } else { rbuf.len() };
            }
            None => break,
        }
    }
    c.rbuf = rbuf;
    c.rbuf.drain(..pos);
    release(shared, c);
    write_out(c);
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
        write_reply(c, reply.unwrap_or(h.reply), h.keep_alive);
    }
}

/// After a store commit: answers every connection whose publishes are now on disk.
fn release_all(shared: &Shared, conns: &mut Slab<AdminConn>, buf: &mut [u8]) {
    let waiting: Vec<usize> = conns
        .iter()
        .filter(|(_, c)| !c.held.is_empty())
        .map(|(id, _)| id)
        .collect();
    for id in waiting {
        let c = &mut conns[id];
        release(shared, c);
        write_out(c);
        if c.held.is_empty() && !c.rbuf.is_empty() {
            // Reading stopped while answers were held: take up what was left.
            serve_buffered(shared, c);
        }
        if conns.contains(id) {
            read(shared, conns, id, buf);
        }
        if conns.contains(id) {
            flush(conns, id);
        }
    }
}

/// Parses and answers one request at the start of `buf`; `None` if it is not complete
/// yet. Returns the bytes used, the reply, whether to keep the connection, and the store
/// ticket the reply waits for (0 for none).
fn serve_one(shared: &Shared, buf: &[u8]) -> Option<(usize, Reply, bool, u64)> {
    let limits = http::Limits {
        max_head_bytes: shared.cfg.max_head_bytes,
        max_headers: shared.cfg.max_headers,
        max_body_bytes: shared.live.max_message_bytes(),
    };
    let mut headers = [EMPTY_HEADER; crate::worker::HEADERS_CAP];
    let max_headers = limits.max_headers.min(headers.len());
    let req = match http::parse_request(buf, &mut headers[..max_headers], &limits) {
        Ok(Parsed::Partial) => return None,
        Ok(Parsed::Complete(r)) => r,
        Err(e) => return Some((buf.len(), Reply::error(e.status(), e.reason()), false, 0)),
    };
    let keep_alive = req.keep_alive();
    let body_start = req.head_len;
    let mut decoded = Vec::new();
    let (body, used): (&[u8], usize) = match http::body_framing(&req, &limits) {
        Err(e) => return Some((buf.len(), Reply::error(e.status(), e.reason()), false, 0)),
        Ok(BodyFraming::None) => (&[], body_start),
        Ok(BodyFraming::Length(n)) => {
            let end = body_start + n as usize;
            if buf.len() < end {
                return None;
            }
            (&buf[body_start..end], end)
        }
        Ok(BodyFraming::Chunked) => {
            let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
            match dec.decode(&buf[body_start..], &mut decoded) {
                Ok((n, true)) => (&decoded[..], body_start + n),
                Ok((_, false)) => return None,
                Err(e) => return Some((buf.len(), Reply::error(e.status(), e.reason()), false, 0)),
            }
        }
    };
    let (reply, ticket) = route(shared, &req, body);
    Some((used, reply, keep_alive, ticket))
}

/// Appends a response to the connection's output.
fn write_reply(c: &mut AdminConn, reply: Reply, keep_alive: bool) {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", reply.content_type)];
    for (k, v) in &reply.extra {
        headers.push((k, v.as_str()));
    }
    http::write_response(&mut c.wbuf, reply.status, &headers, &reply.body, keep_alive);
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
        if c.close {
            let _ = c.sock.shutdown(Shutdown::Write);
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(shared: &Shared, req: &http::Request<'_, '_>) -> bool {
    let token = &shared.cfg.admin_token;
    if token.is_empty() {
        return true;
    }
    let Some(value) = req.header("authorization") else {
        return false;
    };
    let Some(given) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
}

/// Answers one request; the ticket is the disk-store commit the answer waits for (0 for
/// none).
fn route(shared: &Shared, req: &http::Request<'_, '_>, body: &[u8]) -> (Reply, u64) {
    if req.path() == "/pub" && authorized(shared, req) && req.method != Method::Head {
        if let Ok(q) = Query::parse(req.query()) {
            if matches!(req.method, Method::Get | Method::Post) {
                return publish(shared, &q, body);
            }
        }
    }
    (route_other(shared, req, body), 0)
}

fn route_other(shared: &Shared, req: &http::Request<'_, '_>, body: &[u8]) -> Reply {
    if !authorized(shared, req) {
        let mut r = Reply::error(
            401,
            "admin token required (Authorization: Bearer <admin_token>)",
        );
        r.extra.push(("WWW-Authenticate", "Bearer".into()));
        return r;
    }
    let q = match Query::parse(req.query()) {
        Ok(q) => q,
        Err(e) => return Reply::error(400, e.reason()),
    };
    let path = req.path();
    let allowed: &[Method] = match path {
        "/pub" => &[Method::Get, Method::Post],
        "/broadcast" | "/close" | "/clear" => &[Method::Post],
        "/sign" | "/info" | "/channels" | "/metrics" => &[Method::Get],
        _ => return Reply::error(404, "no such endpoint"),
    };
    if !allowed.contains(&req.method) {
        let mut r = Reply::error(405, "method not allowed");
        let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        r.extra.push(("Allow", allow.join(", ")));
        return r;
    }
    match path {
        "/pub" => publish(shared, &q, body).0,
        "/broadcast" => {
            let content = match body_text(body, &q) {
                Ok(c) => c,
                Err(r) => return r,
            };
            match shared.broadcast(content) {
                Ok(n) => Reply::json(200, serde_json::json!({"type": "ok", "channels": n})),
                Err(e) => Reply::hub_error(e),
            }
        }
        "/close" | "/clear" => {
            let name = match channel(&q) {
                Ok(n) => n,
                Err(r) => return r,
            };
            let result = if path == "/close" {
                shared.close_channel(&name)
            } else {
                shared.clear(&name)
            };
            match result {
                Ok(()) => Reply::json(200, serde_json::json!({"type": "ok", "channel": name})),
                Err(e) => Reply::hub_error(e),
            }
        }
        "/sign" => sign(shared, &q),
        "/info" => info(shared, &q),
        "/channels" => {
            let prefix = q.get("prefix").unwrap_or("");
            if prefix.len() > MAX_PREFIX {
                return Reply::error(400, "prefix too long");
            }
            let limit = match q.get("limit").map(str::parse::<usize>) {
                None => DEFAULT_LISTING,
                Some(Ok(n)) if n > 0 => n.min(crate::hub::MAX_LISTING),
                Some(_) => return Reply::error(400, "limit must be a positive integer"),
            };
            let list: Vec<serde_json::Value> = shared
                .hub
                .channels(prefix, limit)
                .into_iter()
                .map(|c| channel_json(&c))
                .collect();
            Reply::json(
                200,
                serde_json::json!({"type": "channels", "channels": list}),
            )
        }
        "/metrics" => {
            let t = shared.hub.totals();
            let text = shared.snapshot().prometheus(
                t.channels,
                t.subscriptions,
                shared
                    .hub
                    .published
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: text.into_bytes(),
                extra: Vec::new(),
            }
        }
        _ => Reply::error(404, "no such endpoint"),
    }
}

fn channel(q: &Query<'_>) -> Result<String, Reply> {
    let name = q
        .get_any(&["channel", "cname"])
        .ok_or_else(|| Reply::error(400, "missing channel"))?;
    message::validate_channel(name).map_err(|e| Reply::error(400, &e.to_string()))?;
    Ok(name.to_string())
}

fn body_text<'a>(body: &'a [u8], q: &'a Query<'_>) -> Result<&'a str, Reply> {
    if body.is_empty() {
        if let Some(c) = q.get("content") {
            return Ok(c);
        }
    }
    std::str::from_utf8(body).map_err(|_| Reply::error(400, "content must be UTF-8"))
}

/// `key=`: 1-128 visible ASCII characters.
fn idempotency_key<'a>(q: &'a Query<'_>) -> Result<Option<&'a str>, Reply> {
    match q.get("key") {
        None => Ok(None),
        Some(k)
            if !k.is_empty()
                && k.len() <= crate::hub::MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k))
        }
        Some(_) => Err(Reply::error(
            400,
            "key must be 1-128 visible ASCII characters",
        )),
    }
}

fn publish(shared: &Shared, q: &Query<'_>, body: &[u8]) -> (Reply, u64) {
    let name = match channel(q) {
        Ok(n) => n,
        Err(r) => return (r, 0),
    };
    let content = match body_text(body, q) {
        Ok(c) => c,
        Err(r) => return (r, 0),
    };
    let key = match idempotency_key(q) {
        Ok(k) => k,
        Err(r) => return (r, 0),
    };
    match shared.publish(&name, content, key, Commit::ByCaller) {
        Ok(a) => (
            Reply::envelope(
                200,
                &Message::Ok {
                    channel: &name,
                    seq: a.seq,
                    epoch: a.epoch.as_str(),
                    duplicate: a.duplicate,
                },
            ),
            a.ticket,
        ),
        Err(e) => (Reply::hub_error(e), 0),
    }
}

fn sign(shared: &Shared, q: &Query<'_>) -> Reply {
    if shared.cfg.token_secret.is_empty() {
        return Reply::error(400, "token_secret is not configured");
    }
    let Some(raw) = q.get_any(&["channel", "cname"]) else {
        return Reply::error(400, "missing channel");
    };
    let mut names = Vec::new();
    for name in raw.split(',') {
        // Patterns are allowed in tokens: validate the name with `*` taken out.
        let plain: String = name.chars().filter(|&c| c != '*').collect();
        if name != "*" {
            if let Err(e) = message::validate_channel(&plain) {
                return Reply::error(400, &e.to_string());
            }
        }
        names.push(name);
    }
    let ttl = match q.get("ttl").map(str::parse::<u64>) {
        None => shared.cfg.token_ttl_secs,
        Some(Ok(n)) if n > 0 && n <= MAX_TOKEN_TTL => n,
        Some(_) => {
            return Reply::error(400, &format!("ttl must be 1..={MAX_TOKEN_TTL} seconds"));
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + ttl;
    let token = auth::sign(&names, expires, shared.cfg.token_secret.as_bytes());
    Reply::json(
        200,
        serde_json::json!({"type": "sign", "channel": raw, "token": token, "expires": expires}),
    )
}

fn channel_json(c: &crate::hub::ChannelInfo) -> serde_json::Value {
    let mut v = serde_json::json!({
        "channel": c.name,
        "seq": c.seq,
        "subscribers": c.subscribers,
        "buffered": c.buffered,
    });
    if c.epoch.is_some() {
        v["epoch"] = c.epoch.as_str().into();
    }
    v
}

/// Server totals as JSON (also used by the control socket's `stats`).
pub fn totals_json(shared: &Shared) -> serde_json::Value {
    let snap = shared.snapshot();
    let t = shared.hub.totals();
    let mut by_transport = serde_json::Map::new();
    for tr in crate::metrics::Transport::ALL {
        by_transport.insert(tr.as_str().into(), snap.conns[tr as usize].into());
    }
    serde_json::json!({
        "type": "info",
        "node": shared.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "workers": shared.inboxes.len(),
        "connections": snap.connections(),
        "by_transport": by_transport,
        "channels": t.channels,
        "subscriptions": t.subscriptions,
        "buffered": t.buffered,
        "published": shared.hub.published.load(std::sync::atomic::Ordering::Relaxed),
        "delivered": snap.get(crate::metrics::Counter::Delivered),
        "slow_consumer_closes": snap.get(crate::metrics::Counter::SlowConsumer),
        "draining": shared.draining.load(std::sync::atomic::Ordering::Relaxed),
        "cluster": shared.cluster.as_ref().map(|c| serde_json::json!({
            "node": c.node_id,
            "redis": if c.up.load(std::sync::atomic::Ordering::Relaxed) { "up" } else { "down" },
            "received": c.received.load(std::sync::atomic::Ordering::Relaxed),
            "errors": c.errors.load(std::sync::atomic::Ordering::Relaxed),
        })),
        "history_store": shared.hub.store().map(|s| serde_json::json!({
            "batches": s.batches.load(std::sync::atomic::Ordering::Relaxed),
            "committed": s.committed(),
            "failed": s.failed(),
        })),
        "idempotency_evicted": shared.hub.idem_evicted.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// One channel's figures as JSON (zeros for an unknown channel); cluster-wide in a
/// cluster, with `"cluster"` saying whether Redis could be asked.
pub fn channel_info_json(shared: &Shared, name: &str) -> serde_json::Value {
    let (info, cluster) = shared.channel_info(name);
    let mut v = serde_json::json!({
        "type": "info",
        "channel": info.name,
        "seq": info.seq,
        "subscribers": info.subscribers,
        "buffered": info.buffered,
    });
    if info.epoch.is_some() {
        v["epoch"] = info.epoch.as_str().into();
    }
    match cluster {
        None => {}
        Some(Ok(())) => {
            v["cluster"] = "ok".into();
            v["local_subscribers"] = shared.hub.info(name).map_or(0, |i| i.subscribers).into();
        }
        Some(Err(e)) => {
            v["cluster"] = format!("unavailable: {e}").into();
        }
    }
    v
}

fn info(shared: &Shared, q: &Query<'_>) -> Reply {
    match q.get_any(&["channel", "cname"]) {
        None => Reply::json(200, totals_json(shared)),
        Some(name) => {
            if let Err(e) = message::validate_channel(name) {
                return Reply::error(400, &e.to_string());
            }
            Reply::json(200, channel_info_json(shared, name))
        }
    }
}
