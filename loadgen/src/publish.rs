//! The publisher of `fanout`: a keep-alive HTTP/1.1 client on the coordinator's reactor.
//!
//! Publish `p` is message `i = p / channels` to channel `c = p % channels`: every message
//! goes to every channel before the next message starts. Publishes are paced at `rate`
//! per second (0: back to back), one request in flight at a time, each with a timeout.
//! The content carries the send time taken just before the request is written.
//!
//! A reply counts as success on any 2xx status. With the pushedge format the body is
//! `{"type":"ok","channel":C,"seq":N}` and `seq` is kept for the report; nchan's reply
//! differs and only the status matters. A publish that fails (status, timeout, closed
//! connection) is not retried (a retry could deliver twice); its message is then neither
//! expected nor forbidden at the subscribers.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::http::{self, ChunkedDecoder};
use serde::Deserialize;

use crate::account::Expected;
use crate::client::Format;
use crate::hist::Hist;
use crate::payload;
use crate::sys;

/// How long a publish may wait for its reply.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest publish reply accepted.
const MAX_REPLY: usize = 1 << 20;

/// The outcome of one publish.
#[derive(Debug, Clone, Copy, Default)]
pub struct PubResult {
    /// Attempted (request written).
    pub sent: bool,
    /// 2xx reply.
    pub ok: bool,
    /// Reply status (0: none).
    pub status: u16,
    /// The seq the server gave it (pushedge).
    pub seq: Option<u64>,
    /// Unix ns of the send time carried in the content.
    pub sent_ns: u64,
    /// Request to reply, microseconds.
    pub reply_us: Option<u64>,
}

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// The admin (publish) address.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// Request target per channel.
    pub targets: Vec<String>,
    /// Reply format.
    pub format: Format,
    /// Content size in bytes.
    pub size: usize,
    /// Messages per channel.
    pub messages: u32,
    /// Publishes per second (0: back to back).
    pub rate: f64,
}

/// The publisher state: [`Publisher::drive`] on every turn of the reactor,
/// [`Publisher::ready`] on every event of its token.
pub struct Publisher {
    addr: SocketAddr,
    host: String,
    targets: Vec<String>,
    format: Format,
    size: usize,
    messages: u32,
    rate: f64,
    token: Token,
    sock: Option<TcpStream>,
    connected: bool,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    start: Option<Instant>,
    next: usize,
    inflight: Option<(usize, Instant)>,
    /// Per publish.
    pub results: Vec<PubResult>,
    /// Request-to-reply latency.
    pub reply_hist: Hist,
    /// Connection errors met (each fails the publish in flight).
    pub errors: u64,
    stopped: bool,
}

#[derive(Deserialize)]
struct OkReply {
    seq: Option<u64>,
}

impl Publisher {
    /// A publisher of `messages` messages to every channel (one request target each).
    pub fn new(plan: PublishPlan, token: Token) -> Self {
        let total = plan.messages as usize * plan.targets.len();
        Publisher {
            addr: plan.addr,
            host: plan.host,
            targets: plan.targets,
            format: plan.format,
            size: plan.size,
            messages: plan.messages,
            rate: plan.rate,
            token,
            sock: None,
            connected: false,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            start: None,
            next: 0,
            inflight: None,
            results: vec![PubResult::default(); total],
            reply_hist: Hist::new(),
            errors: 0,
            stopped: false,
        }
    }

    /// Total publishes of the run.
    pub fn total(&self) -> usize {
        self.results.len()
    }

    /// Publishes attempted so far.
    pub fn sent(&self) -> usize {
        self.next
    }

    /// True when every publish is answered (or failed), or after [`Publisher::stop`].
    pub fn is_done(&self) -> bool {
        self.inflight.is_none() && (self.stopped || self.next >= self.total())
    }

    /// Sends no more (the one in flight may still be answered).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Stops at once: the publish in flight, if any, counts as failed (its reply may never
    /// be read).
    pub fn abort(&mut self) {
        self.stopped = true;
        if let Some((p, _)) = self.inflight.take() {
            self.results[p].ok = false;
        }
    }

    /// The first publish's send time, unix ns.
    pub fn first_sent_ns(&self) -> Option<u64> {
        self.results.iter().find(|r| r.sent).map(|r| r.sent_ns)
    }

    /// What each channel was sent, for the subscribers' accounting.
    pub fn expected(&self) -> Vec<Expected> {
        let channels = self.targets.len();
        (0..channels)
            .map(|c| {
                let mut e = Expected::default();
                for i in 0..self.messages {
                    let r = &self.results[i as usize * channels + c];
                    if !r.sent {
                        break;
                    }
                    e.published = i + 1;
                    if !r.ok {
                        e.failed.push(i);
                    }
                }
                e
            })
            .collect()
    }

    /// Starts (if not started), sends what is due, times out a late reply. Returns how
    /// long until something is due.
    pub fn drive(&mut self, registry: &Registry, now: Instant) -> Duration {
        let start = *self.start.get_or_insert(now);
        if let Some((p, at)) = self.inflight {
            if now.duration_since(at) >= PUBLISH_TIMEOUT {
                self.fail(registry, p, 0);
            } else {
                return PUBLISH_TIMEOUT - now.duration_since(at);
            }
        }
        if self.stopped || self.next >= self.total() {
            return Duration::from_millis(100);
        }
        let due = if self.rate > 0.0 {
            start + Duration::from_secs_f64(self.next as f64 / self.rate)
        } else {
            now
        };
        if due > now {
            return due - now;
        }
        if self.sock.is_none() {
            match TcpStream::connect(self.addr) {
                Ok(mut s) => {
                    if let Err(e) = registry.register(
                        &mut s,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        eprintln!("loadgen: publisher: {e}");
                        return Duration::from_millis(100);
                    }
                    let _ = s.set_nodelay(true);
                    self.sock = Some(s);
                    self.connected = false;
                }
                Err(e) => {
                    let p = self.next;
                    self.next += 1;
                    self.results[p].sent = true;
                    self.results[p].sent_ns = sys::unix_ns();
                    self.errors += 1;
                    eprintln!("loadgen: publisher cannot connect: {e}");
                    return Duration::from_millis(10);
                }
            }
        }
        let p = self.next;
        self.next += 1;
        let channels = self.targets.len();
        let (i, c) = ((p / channels) as u32, p % channels);
        let t_ns = sys::unix_ns();
        let body = payload::encode(t_ns, i, self.size);
        self.wbuf.extend_from_slice(b"POST ");
        self.wbuf.extend_from_slice(self.targets[c].as_bytes());
        self.wbuf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.wbuf.extend_from_slice(self.host.as_bytes());
        self.wbuf
            .extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        http::push_decimal(&mut self.wbuf, body.len() as u64);
        self.wbuf.extend_from_slice(b"\r\n\r\n");
        self.wbuf.extend_from_slice(body.as_bytes());
        self.results[p].sent = true;
        self.results[p].sent_ns = t_ns;
        self.inflight = Some((p, Instant::now()));
        if self.connected {
            self.flush(registry);
        }
        PUBLISH_TIMEOUT
    }

    /// A readiness event on the publisher's socket.
    pub fn ready(&mut self, registry: &Registry) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        if !self.connected {
            match sys::connect_result(sock) {
                Ok(false) => return,
                Ok(true) => self.connected = true,
                Err(e) => {
                    eprintln!("loadgen: publisher cannot connect: {e}");
                    self.broken(registry);
                    return;
                }
            }
        }
        self.flush(registry);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            match sock.read(&mut chunk) {
                Ok(0) => {
                    self.broken(registry);
                    return;
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    if self.rbuf.len() > MAX_REPLY {
                        self.broken(registry);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken(registry);
                    return;
                }
            }
        }
        self.parse_reply(registry);
    }

    fn flush(&mut self, registry: &Registry) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        let mut off = 0;
        while off < self.wbuf.len() {
            match sock.write(&self.wbuf[off..]) {
                Ok(n) if n > 0 => off += n,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken(registry);
                    return;
                }
            }
        }
        self.wbuf.drain(..off);
    }

    fn parse_reply(&mut self, registry: &Registry) {
        let Some((p, at)) = self.inflight else {
            if !self.rbuf.is_empty() {
                // Bytes nobody asked for: the stream is out of step.
                self.broken(registry);
            }
            return;
        };
        let mut headers = [http::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&self.rbuf) {
            Ok(httparse::Status::Partial) => return,
            Ok(httparse::Status::Complete(n)) => n,
            Err(_) => {
                self.broken(registry);
                return;
            }
        };
        let status = resp.code.unwrap_or(0);
        let close = http::has_token(resp.headers, "connection", "close");
        let body: Vec<u8>;
        let used;
        if http::has_token(resp.headers, "transfer-encoding", "chunked") {
            let mut dec = ChunkedDecoder::new(MAX_REPLY);
            let mut out = Vec::new();
            match dec.decode(&self.rbuf[head_len..], &mut out) {
                Ok((n, true)) => {
                    body = out;
                    used = head_len + n;
                }
                Ok((_, false)) => return,
                Err(_) => {
                    self.broken(registry);
                    return;
                }
            }
        } else {
            let len = http::header(resp.headers, "content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if self.rbuf.len() < head_len + len {
                return;
            }
            body = self.rbuf[head_len..head_len + len].to_vec();
            used = head_len + len;
        }
        self.rbuf.drain(..used);
        let reply_us = at.elapsed().as_micros() as u64;
        self.reply_hist.record_us(reply_us);
        let r = &mut self.results[p];
        r.status = status;
        r.reply_us = Some(reply_us);
        r.ok = (200..300).contains(&status);
        if r.ok && self.format == Format::Pushedge {
            r.seq = serde_json::from_slice::<OkReply>(&body)
                .ok()
                .and_then(|o| o.seq);
        }
        self.inflight = None;
        if close {
            self.drop_socket(registry);
        }
    }

    /// The connection broke: the publish in flight failed; reconnect for the next one.
    fn broken(&mut self, registry: &Registry) {
        self.errors += 1;
        match self.inflight {
            Some((p, _)) => self.fail(registry, p, 0),
            None => self.drop_socket(registry),
        }
    }

    fn fail(&mut self, registry: &Registry, p: usize, status: u16) {
        self.results[p].ok = false;
        self.results[p].status = status;
        self.inflight = None;
        self.drop_socket(registry);
    }

    fn drop_socket(&mut self, registry: &Registry) {
        if let Some(mut s) = self.sock.take() {
            let _ = registry.deregister(&mut s);
        }
        self.connected = false;
        self.wbuf.clear();
        self.rbuf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(messages: u32, channels: usize) -> Publisher {
        Publisher::new(
            PublishPlan {
                addr: "127.0.0.1:1".parse().unwrap(),
                host: "h".into(),
                targets: (0..channels)
                    .map(|c| format!("/pub?channel=ch{c}"))
                    .collect(),
                format: Format::Pushedge,
                size: 0,
                messages,
                rate: 0.0,
            },
            Token(0),
        )
    }

    #[test]
    fn expected_per_channel() {
        let mut p = publisher(3, 2);
        // Message 0 to both channels, message 1 to channel 0 only; channel 1's failed.
        for (idx, ok) in [(0, true), (1, true), (2, true), (3, false)] {
            p.results[idx].sent = true;
            p.results[idx].ok = ok;
        }
        let e = p.expected();
        assert_eq!(
            e[0],
            Expected {
                published: 2,
                failed: vec![]
            }
        );
        assert_eq!(
            e[1],
            Expected {
                published: 2,
                failed: vec![1]
            }
        );
    }
}
