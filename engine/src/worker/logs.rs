//! What a worker tells the operator about its connections: the connection events (at
//! debug: accepted, the transport chosen, closed with its code and reason), auth
//! failures and kicks (at info), the access log, and the client's address behind a
//! trusted proxy (`X-Forwarded-For`, the PROXY protocol header).
//!
//! Nothing here runs on the fan-out path. What a connection's log lines need beyond its
//! record (its client address, why it is closing, its channels once unsubscribed, the
//! access log's request) is kept beside it in [`Logs::seen`], only while something asks
//! for it: debug logging, the access log, or `trusted_proxies`. With all three off the
//! table stays empty and every hook below is a load and a branch.
//!
//! `max_connections_per_ip` counts the TCP peer (it is checked at accept, before any
//! header is read), not the address a proxy reports.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use protocol::http;
use protocol::proxy::{self, Parsed};

use super::Core;
use crate::conn::State;
use crate::limits::ACCESS_LOG_PATH_BYTES;
use crate::log::{self, Field, Level, Line};
use crate::metrics::Counter;
use crate::peer::Trusted;
use crate::reactor::{Backend, NO_SOCK};

/// A connection's id, as `ctl conns` shows it and `ctl kick` takes it:
/// `worker:slot:generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// The worker's number.
    pub worker: usize,
    /// The slot in its table.
    pub slot: usize,
    /// The slot's generation.
    pub generation: u32,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.worker, self.slot, self.generation)
    }
}

impl Field for ConnId {
    fn put(&self, json: bool, out: &mut String) {
        log::Shown(self).put(json, out);
    }
}

/// The access log's record of a connection's current request (or session).
#[derive(Debug)]
struct Req {
    method: &'static str,
    /// Path and query, the token redacted, bounded.
    target: Box<str>,
    start: Instant,
    /// The session's status (101, or 200 for a stream) once it began; 0 before.
    session: u16,
    /// Its transport, once it began.
    transport: &'static str,
}

/// What is kept about one connection for its log lines.
#[derive(Debug, Default)]
struct Seen {
    /// The TCP peer's address, once looked up.
    tcp: Option<SocketAddr>,
    /// `tcp` was looked up.
    looked: bool,
    /// The TCP peer is a trusted proxy.
    trusted: bool,
    /// The start of the connection was checked for a PROXY header.
    header_read: bool,
    /// The client named by a PROXY header.
    proxied: Option<SocketAddr>,
    /// The client named by the current request's `X-Forwarded-For`.
    forwarded: Option<IpAddr>,
    /// Why it closes: the WebSocket close code (or the HTTP status) and the reason; the
    /// first one noted wins.
    code: Option<u16>,
    reason: Option<Box<str>>,
    /// Its channels, kept when they were unsubscribed before the close.
    channels: Option<Box<str>>,
    req: Option<Req>,
}

/// The worker's part: trusted proxies and what is kept per connection.
#[derive(Debug, Default)]
pub struct Logs {
    trusted: Trusted,
    proxy_protocol: bool,
    seen: HashMap<usize, Seen>,
}

impl Logs {
    /// From the configuration (validated: the entries parse).
    pub fn new(cfg: &crate::config::Config) -> Logs {
        Logs {
            trusted: Trusted::parse(&cfg.trusted_proxies).unwrap_or_default(),
            proxy_protocol: cfg.proxy_protocol,
            seen: HashMap::new(),
        }
    }
}

/// True when connection events are kept for (debug lines or the access log).
#[inline]
fn noting() -> bool {
    log::enabled(Level::Debug) || log::access_enabled()
}

/// An address as logged: without the port when it is not known (`X-Forwarded-For`).
fn show(addr: Option<SocketAddr>, forwarded: Option<IpAddr>) -> Option<String> {
    match forwarded {
        Some(ip) => Some(ip.to_string()),
        None => addr.map(|a| a.to_string()),
    }
}

/// `path?query` with the value of `token=` (and `access_token=`) replaced, bounded.
fn redact_target(req: &http::Request<'_, '_>) -> Box<str> {
    let mut out = String::with_capacity(req.target.len().min(ACCESS_LOG_PATH_BYTES));
    out.push_str(req.path());
    let query = req.query();
    if !query.is_empty() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if k == "token" || k == "access_token" => {
                    out.push_str(k);
                    out.push_str("=<redacted>");
                }
                _ => out.push_str(pair),
            }
        }
    }
    if out.len() > ACCESS_LOG_PATH_BYTES {
        let mut cut = ACCESS_LOG_PATH_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out.into_boxed_str()
}

fn ms_since(start: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(start).as_secs_f64() * 1000.0
}

impl<B: Backend> Core<B> {
    /// The connection's id (`worker:slot:generation`).
    pub fn conn_id(&self, slot: usize) -> ConnId {
        ConnId {
            worker: self.id,
            slot,
            generation: self.conns[slot].generation,
        }
    }

    fn tcp_peer(&mut self, slot: usize) -> Option<SocketAddr> {
        if let Some(s) = self.logs.seen.get(&slot).filter(|s| s.looked) {
            return s.tcp;
        }
        let sock = self.conns[slot].sock;
        (sock != NO_SOCK).then(|| self.io.peer_addr(sock)).flatten()
    }

    /// The client's address: what a trusted proxy said (`X-Forwarded-For`, a PROXY
    /// header), else the TCP peer's; `None` when it cannot be told.
    pub fn peer(&mut self, slot: usize) -> Option<String> {
        if let Some(s) = self.logs.seen.get(&slot) {
            if s.forwarded.is_some() || s.proxied.is_some() {
                return show(s.proxied, s.forwarded);
            }
        }
        show(self.tcp_peer(slot), None)
    }

    /// The connection's entry, its TCP peer looked up (once) and checked against
    /// `trusted_proxies`.
    fn seen(&mut self, slot: usize) -> &mut Seen {
        let looked = self.logs.seen.get(&slot).is_some_and(|s| s.looked);
        if !looked {
            let sock = self.conns[slot].sock;
            let tcp = (sock != NO_SOCK).then(|| self.io.peer_addr(sock)).flatten();
            let trusted = tcp.is_some_and(|a| self.logs.trusted.contains(a.ip()));
            let s = self.logs.seen.entry(slot).or_default();
            s.tcp = tcp;
            s.looked = true;
            s.trusted = trusted;
        }
        self.logs.seen.entry(slot).or_default()
    }

    /// The start of a connection on a listener with `proxy_protocol`: a PROXY header
    /// from a trusted peer is taken (its length returned); from any other peer, or
    /// malformed, the connection is closed (`None`, doomed). `None` (not doomed) while
    /// the header is incomplete; `Some(0)` without a header.
    pub(crate) fn proxy_header(&mut self, slot: usize, input: &[u8]) -> Option<usize> {
        if !self.logs.proxy_protocol
            || self.conns[slot].state() != State::Http
            || self.conns[slot].has(crate::conn::flag::SERVED)
            || self.logs.seen.get(&slot).is_some_and(|s| s.header_read)
        {
            return Some(0);
        }
        let refuse = |cx: &mut Core<B>, why: &str| {
            cx.stats.inc(Counter::Http400);
            crate::event!(
                Info,
                "PROXY header refused",
                conn = cx.conn_id(slot),
                peer = cx.peer(slot),
                reason = why
            );
            cx.note_close(slot, 0, why);
            cx.close(slot);
            None
        };
        match proxy::parse(input) {
            Ok(Parsed::NotProxy) => {
                self.seen(slot).header_read = true;
                Some(0)
            }
            Ok(Parsed::Partial) => None,
            Ok(Parsed::Complete { header, len }) => {
                if !self.seen(slot).trusted {
                    return refuse(self, "PROXY header from a peer not in trusted_proxies");
                }
                let s = self.seen(slot);
                s.header_read = true;
                s.proxied = header.source;
                crate::event!(
                    Debug,
                    "proxied",
                    conn = self.conn_id(slot),
                    peer = self.peer(slot),
                    proxy = self.tcp_peer(slot),
                    version = header.version
                );
                Some(len)
            }
            Err(e) => {
                let trusted = self.seen(slot).trusted;
                let why = if trusted {
                    e.reason()
                } else {
                    "PROXY header from a peer not in trusted_proxies"
                };
                refuse(self, why)
            }
        }
    }

    /// A request head was parsed: the client's address from `X-Forwarded-For` (from a
    /// trusted proxy only), and the access log's record.
    pub(crate) fn on_request_seen(&mut self, slot: usize, req: &http::Request<'_, '_>) {
        if !self.logs.trusted.is_empty() {
            let s = self.seen(slot);
            // The hop that handed the request over: the PROXY header's client, else the
            // TCP peer.
            let hop_trusted = match s.proxied {
                Some(a) => self.logs.trusted.contains(a.ip()),
                None => s.trusted,
            };
            let forwarded = if hop_trusted {
                let fields = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                    .map(|h| h.value);
                self.logs.trusted.forwarded_for(fields)
            } else {
                None
            };
            self.logs.seen.entry(slot).or_default().forwarded = forwarded;
        }
        if log::access_enabled() {
            let r = Req {
                method: req.method.as_str(),
                target: redact_target(req),
                start: self.now,
                session: 0,
                transport: "",
            };
            self.logs.seen.entry(slot).or_default().req = Some(r);
        }
    }

    /// A response went out (`status`, a body of `bytes`): its access-log line.
    pub(crate) fn access_answered(&mut self, slot: usize, status: u16, bytes: usize) {
        if !log::access_enabled() {
            return;
        }
        let req = self.logs.seen.get_mut(&slot).and_then(|s| s.req.take());
        let now = Instant::now();
        let mut line = Line::access();
        match &req {
            Some(r) => line.field("method", r.method).field("path", &r.target),
            None => line.field("method", "-").field("path", "-"),
        };
        line.field("status", &status)
            .field("bytes", &bytes)
            .field("ms", &req.as_ref().map_or(0.0, |r| ms_since(r.start, now)))
            .field("peer", &self.peer(slot))
            .field("conn", &self.conn_id(slot));
        log::access(line);
    }

    /// Notes why the connection is closing (the first reason noted wins): a WebSocket
    /// close code, an HTTP status, or 0 with a reason.
    pub(crate) fn note_close(&mut self, slot: usize, code: u16, reason: &str) {
        if !noting() {
            return;
        }
        let s = self.logs.seen.entry(slot).or_default();
        if s.reason.is_none() {
            s.code = (code != 0).then_some(code);
            s.reason = Some(reason.into());
        }
    }

    /// The peer's WebSocket close frame: its code (1005 without one) and reason.
    pub(crate) fn note_peer_close(&mut self, slot: usize, ev: &protocol::ws::Event<'_>) {
        if !noting() {
            return;
        }
        if let protocol::ws::Event::Close(frame) = ev {
            let code = frame.as_ref().map_or(1005, |f| f.code.0);
            let said = frame.as_ref().map_or("", |f| &f.reason);
            let reason = if said.is_empty() {
                "closed by the peer".to_string()
            } else {
                format!("closed by the peer: {said}")
            };
            self.note_close(slot, code, &reason);
        }
    }

    /// Keeps the connection's channel names for its close line (before they are
    /// unsubscribed).
    pub(crate) fn note_channels(&mut self, slot: usize) {
        if !log::enabled(Level::Debug) || self.conns[slot].subs.is_empty() {
            return;
        }
        let names = self.channel_names(slot);
        let s = self.logs.seen.entry(slot).or_default();
        if s.channels.is_none() {
            s.channels = Some(names.into());
        }
    }

    fn channel_names(&self, slot: usize) -> String {
        let mut names = String::new();
        for (i, s) in self.conns[slot].subs.as_slice().iter().enumerate() {
            if i > 0 {
                names.push(',');
            }
            names.push_str(&self.index.chan(s.local).name);
        }
        names
    }

    /// A connection's transport began (a WebSocket upgraded, a stream started, a
    /// Socket.IO session): the debug line, and the access log's session.
    pub(crate) fn on_session(&mut self, slot: usize) {
        let state = self.conns[slot].state();
        if log::access_enabled() {
            let status = if state.is_ws() { 101 } else { 200 };
            if let Some(r) = self.logs.seen.get_mut(&slot).and_then(|s| s.req.as_mut()) {
                r.session = status;
                r.transport = state.transport().as_str();
            }
        }
        crate::event!(
            Debug,
            "session",
            conn = self.conn_id(slot),
            peer = self.peer(slot),
            transport = state.transport().as_str(),
            channels = Some(self.channel_names(slot)).filter(|c| !c.is_empty())
        );
    }

    /// A token refused (bad, expired, a channel it does not grant): logged at info.
    pub(crate) fn auth_failed(&mut self, slot: usize, what: &str, reason: &str) {
        crate::event!(
            Info,
            "auth failed",
            conn = self.conn_id(slot),
            peer = self.peer(slot),
            what = what,
            reason = reason
        );
    }

    /// The connection was accepted.
    pub(crate) fn on_accepted(&mut self, slot: usize) {
        crate::event!(
            Debug,
            "accepted",
            conn = self.conn_id(slot),
            peer = self.peer(slot),
            listener = self.conns[slot].listener
        );
    }

    /// The record is about to be removed: the close line, the session's access-log line,
    /// and what was kept beside it is dropped.
    pub(crate) fn on_closed(&mut self, slot: usize) {
        if self.logs.seen.is_empty() && !log::enabled(Level::Debug) {
            return;
        }
        if log::enabled(Level::Debug) || log::access_enabled() {
            let now = Instant::now();
            let peer = self.peer(slot);
            let id = self.conn_id(slot);
            let state = self.conns[slot].state();
            let live = Some(self.channel_names(slot)).filter(|c| !c.is_empty());
            let s = self.logs.seen.get_mut(&slot);
            let (code, reason, kept, req) = match s {
                Some(s) => (s.code, s.reason.take(), s.channels.take(), s.req.take()),
                None => (None, None, None, None),
            };
            let channels = live.map(String::into_boxed_str).or(kept);
            crate::event!(
                Debug,
                "closed",
                conn = id,
                peer = peer,
                state = crate::log::Shown(format_args!("{state:?}")),
                channels = channels,
                code = code,
                reason = reason
            );
            if let Some(r) = req.filter(|_| log::access_enabled()) {
                // A session that ended, or a request that never got its answer.
                let mut line = Line::access();
                line.field("method", r.method)
                    .field("path", &r.target)
                    .field("status", &r.session)
                    .field("bytes", &0usize)
                    .field("ms", &ms_since(r.start, now))
                    .field("peer", &peer)
                    .field("conn", &id);
                if r.session != 0 {
                    line.field("session", r.transport);
                }
                line.field("code", &code).field("reason", &reason);
                log::access(line);
            }
        }
        self.logs.seen.remove(&slot);
    }

    /// Gives back the room of a grown table.
    pub(crate) fn shrink_seen(&mut self) {
        if crate::memory::sparse(self.logs.seen.len(), self.logs.seen.capacity()) {
            self.logs.seen.shrink_to(self.logs.seen.len() * 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_redacted_and_bounded() {
        let mut headers = [http::EMPTY_HEADER; 4];
        let raw = b"GET /ws?channel=a&token=secret.jwt&x=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let limits = http::Limits {
            max_head_bytes: 8192,
            max_headers: 4,
            max_body_bytes: 0,
        };
        let http::Parsed::Complete(req) = http::parse_request(raw, &mut headers, &limits).unwrap()
        else {
            panic!("partial");
        };
        assert_eq!(&*redact_target(&req), "/ws?channel=a&token=<redacted>&x=1");
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(2000));
        let mut headers = [http::EMPTY_HEADER; 4];
        let http::Parsed::Complete(req) =
            http::parse_request(long.as_bytes(), &mut headers, &limits).unwrap()
        else {
            panic!("partial");
        };
        assert_eq!(redact_target(&req).len(), ACCESS_LOG_PATH_BYTES + 3);
        assert_eq!(
            ConnId {
                worker: 1,
                slot: 2,
                generation: 3
            }
            .to_string(),
            "1:2:3"
        );
    }
}
