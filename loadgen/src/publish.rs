//! The publisher of `fanout`: keep-alive HTTP/1.1 clients on the coordinator's reactor.
//!
//! Publish `p` is message `i = p / channels` to channel `c = p % channels`: every message
//! goes to every channel before the next message starts. Publishes are paced at `rate`
//! per second (0: back to back) over `publishers` keep-alive connections, each with at
//! most `pipeline` requests in flight (HTTP/1.1 pipelining: replies come back in request
//! order); each request has a timeout. The default, one connection with one request in
//! flight, measures each publish alone; several connections or a deeper pipeline measure
//! the publish rate the server sustains. With one connection the server sequences the
//! messages in the order they are sent, so subscribers see them in order; with several,
//! messages of one channel may be sequenced out of send order (counted as out of order,
//! and as `seq` errors with the pushedge format; not as lost). The content carries the
//! send time taken just before the request is queued.
//!
//! A reply counts as success on any 2xx status. With the pushedge format the body is
//! `{"type":"ok","channel":C,"seq":N}` and `seq` is kept for the report; nchan's reply
//! differs and only the status matters. A publish that fails (status, timeout, closed
//! connection) is not retried (a retry could deliver twice); its message is then neither
//! expected nor forbidden at the subscribers. When a connection breaks or a reply is late,
//! every request in flight on it fails (pipelined replies cannot be matched any more).
//! The one exception: requests pipelined behind a reply carrying `Connection: close`
//! (nginx sends one after `keepalive_requests`, 1000 by default) were not processed by
//! the server (RFC 9112, 9.6), so they are sent again, first, on a new connection, with a
//! new send time.

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
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
/// Most publisher connections.
pub const MAX_PUBLISHERS: u32 = 256;
/// Most requests in flight per publisher connection.
pub const MAX_PIPELINE: u32 = 1024;

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
    /// Keep-alive connections (at least 1).
    pub publishers: u32,
    /// Requests in flight per connection (at least 1).
    pub pipeline: u32,
}

/// One keep-alive connection.
#[derive(Default)]
struct PubConn {
    sock: Option<TcpStream>,
    connected: bool,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    /// Publishes in flight, oldest first, with their request time.
    inflight: VecDeque<(usize, Instant)>,
}

/// The publisher state: [`Publisher::drive`] on every turn of the reactor,
/// [`Publisher::ready`] on every event of one of its tokens ([`Publisher::owns`]).
pub struct Publisher {
    addr: SocketAddr,
    host: String,
    targets: Vec<String>,
    format: Format,
    size: usize,
    messages: u32,
    rate: f64,
    pipeline: usize,
    base: usize,
    conns: Vec<PubConn>,
    start: Option<Instant>,
    next: usize,
    /// Publishes to send again (unprocessed behind a `Connection: close`), before `next`.
    retry: VecDeque<usize>,
    first_send: Option<Instant>,
    last_reply: Option<Instant>,
    /// Per publish.
    pub results: Vec<PubResult>,
    /// Request-to-reply latency.
    pub reply_hist: Hist,
    /// Connection errors met (each fails the publishes in flight on that connection).
    pub errors: u64,
    stopped: bool,
}

#[derive(Deserialize)]
struct OkReply {
    seq: Option<u64>,
}

impl Publisher {
    /// A publisher of `messages` messages to every channel (one request target each);
    /// connection `j` uses `Token(base + j)`.
    pub fn new(plan: PublishPlan, base: usize) -> Self {
        let total = plan.messages as usize * plan.targets.len();
        let n = plan.publishers.clamp(1, MAX_PUBLISHERS) as usize;
        Publisher {
            addr: plan.addr,
            host: plan.host,
            targets: plan.targets,
            format: plan.format,
            size: plan.size,
            messages: plan.messages,
            rate: plan.rate,
            pipeline: plan.pipeline.clamp(1, MAX_PIPELINE) as usize,
            base,
            conns: (0..n).map(|_| PubConn::default()).collect(),
            start: None,
            next: 0,
            retry: VecDeque::new(),
            first_send: None,
            last_reply: None,
            results: vec![PubResult::default(); total],
            reply_hist: Hist::new(),
            errors: 0,
            stopped: false,
        }
    }

    /// The connection index of a token, if it is one of the publisher's.
    pub fn owns(&self, token: Token) -> Option<usize> {
        let j = token.0.checked_sub(self.base)?;
        (j < self.conns.len()).then_some(j)
    }

    /// Total publishes of the run.
    pub fn total(&self) -> usize {
        self.results.len()
    }

    /// Publishes attempted so far.
    pub fn sent(&self) -> usize {
        self.next
    }

    /// Connections and requests in flight per connection.
    pub fn shape(&self) -> (u32, u32) {
        (self.conns.len() as u32, self.pipeline as u32)
    }

    /// From the first request to the last reply, seconds (0 before any reply).
    pub fn phase_s(&self) -> f64 {
        match (self.first_send, self.last_reply) {
            (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn inflight(&self) -> usize {
        self.conns.iter().map(|c| c.inflight.len()).sum()
    }

    /// True when every publish is answered (or failed), or after [`Publisher::stop`].
    pub fn is_done(&self) -> bool {
        self.inflight() == 0
            && (self.stopped || (self.retry.is_empty() && self.next >= self.total()))
    }

    /// Sends no more (those in flight may still be answered).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Stops at once: the publishes in flight, if any, count as failed (their replies may
    /// never be read).
    pub fn abort(&mut self) {
        self.stopped = true;
        for c in &mut self.conns {
            for (p, _) in c.inflight.drain(..) {
                self.results[p].ok = false;
            }
        }
        for p in self.retry.drain(..) {
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

    /// Starts (if not started), sends what is due, times out late replies. Returns how
    /// long until something is due.
    pub fn drive(&mut self, registry: &Registry, now: Instant) -> Duration {
        let start = *self.start.get_or_insert(now);
        let mut wait = Duration::from_millis(100);
        for j in 0..self.conns.len() {
            if let Some(&(_, at)) = self.conns[j].inflight.front() {
                let age = now.duration_since(at);
                if age >= PUBLISH_TIMEOUT {
                    self.broken(registry, j);
                } else {
                    wait = wait.min(PUBLISH_TIMEOUT - age);
                }
            }
        }
        let mut touched = vec![false; self.conns.len()];
        while !self.stopped && (!self.retry.is_empty() || self.next < self.total()) {
            if self.rate > 0.0 && self.retry.is_empty() {
                let due = start + Duration::from_secs_f64(self.next as f64 / self.rate);
                if due > now {
                    wait = wait.min(due - now);
                    break;
                }
            }
            // The connection with the fewest requests in flight, if any has room.
            let Some(j) = (0..self.conns.len())
                .filter(|&j| self.conns[j].inflight.len() < self.pipeline)
                .min_by_key(|&j| self.conns[j].inflight.len())
            else {
                break;
            };
            if self.conns[j].sock.is_none() && !self.open(registry, j) {
                // Could not even connect: that publish failed; try again shortly.
                let p = match self.retry.pop_front() {
                    Some(p) => p,
                    None => {
                        self.next += 1;
                        self.next - 1
                    }
                };
                self.results[p].sent = true;
                self.results[p].sent_ns = sys::unix_ns();
                self.errors += 1;
                wait = wait.min(Duration::from_millis(10));
                break;
            }
            self.queue(j);
            touched[j] = true;
        }
        for (j, t) in touched.into_iter().enumerate() {
            if t && self.conns[j].connected {
                self.flush(registry, j);
            }
        }
        wait
    }

    fn open(&mut self, registry: &Registry, j: usize) -> bool {
        match TcpStream::connect(self.addr) {
            Ok(mut s) => {
                if let Err(e) = registry.register(
                    &mut s,
                    Token(self.base + j),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    eprintln!("loadgen: publisher: {e}");
                    return false;
                }
                let _ = s.set_nodelay(true);
                let c = &mut self.conns[j];
                c.sock = Some(s);
                c.connected = false;
                true
            }
            Err(e) => {
                eprintln!("loadgen: publisher cannot connect: {e}");
                false
            }
        }
    }

    /// Writes the next publish's request (a retry first) into connection `j`'s buffer.
    fn queue(&mut self, j: usize) {
        let p = match self.retry.pop_front() {
            Some(p) => p,
            None => {
                self.next += 1;
                self.next - 1
            }
        };
        let channels = self.targets.len();
        let (i, c) = ((p / channels) as u32, p % channels);
        let t_ns = sys::unix_ns();
        let body = payload::encode(t_ns, i, self.size);
        let w = &mut self.conns[j].wbuf;
        w.extend_from_slice(b"POST ");
        w.extend_from_slice(self.targets[c].as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        w.extend_from_slice(self.host.as_bytes());
        w.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        http::push_decimal(w, body.len() as u64);
        w.extend_from_slice(b"\r\n\r\n");
        w.extend_from_slice(body.as_bytes());
        self.results[p].sent = true;
        self.results[p].sent_ns = t_ns;
        let now = Instant::now();
        self.first_send.get_or_insert(now);
        self.conns[j].inflight.push_back((p, now));
    }

    /// A readiness event on connection `j`'s socket.
    pub fn ready(&mut self, registry: &Registry, j: usize) {
        let Some(sock) = self.conns[j].sock.as_ref() else {
            return;
        };
        if !self.conns[j].connected {
            match sys::connect_result(sock) {
                Ok(false) => return,
                Ok(true) => self.conns[j].connected = true,
                Err(e) => {
                    eprintln!("loadgen: publisher cannot connect: {e}");
                    self.broken(registry, j);
                    return;
                }
            }
        }
        self.flush(registry, j);
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let c = &mut self.conns[j];
            let Some(sock) = c.sock.as_mut() else {
                return;
            };
            match sock.read(&mut chunk) {
                Ok(0) => {
                    self.parse_replies(registry, j);
                    self.broken(registry, j);
                    return;
                }
                Ok(n) => {
                    c.rbuf.extend_from_slice(&chunk[..n]);
                    if c.rbuf.len() > MAX_REPLY {
                        self.broken(registry, j);
                        return;
                    }
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken(registry, j);
                    return;
                }
            }
        }
        self.parse_replies(registry, j);
    }

    fn flush(&mut self, registry: &Registry, j: usize) {
        let c = &mut self.conns[j];
        let Some(sock) = c.sock.as_mut() else {
            return;
        };
        let mut off = 0;
        while off < c.wbuf.len() {
            match sock.write(&c.wbuf[off..]) {
                Ok(n) if n > 0 => off += n,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.broken(registry, j);
                    return;
                }
            }
        }
        c.wbuf.drain(..off);
    }

    /// Matches every complete reply in connection `j`'s buffer with its request.
    fn parse_replies(&mut self, registry: &Registry, j: usize) {
        loop {
            let c = &mut self.conns[j];
            if c.rbuf.is_empty() {
                return;
            }
            let Some(&(p, at)) = c.inflight.front() else {
                // Bytes nobody asked for: the stream is out of step.
                self.broken(registry, j);
                return;
            };
            let mut headers = [http::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let head_len = match resp.parse(&c.rbuf) {
                Ok(httparse::Status::Partial) => return,
                Ok(httparse::Status::Complete(n)) => n,
                Err(_) => {
                    self.broken(registry, j);
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
                match dec.decode(&c.rbuf[head_len..], &mut out) {
                    Ok((n, true)) => {
                        body = out;
                        used = head_len + n;
                    }
                    Ok((_, false)) => return,
                    Err(_) => {
                        self.broken(registry, j);
                        return;
                    }
                }
            } else {
                let len = http::header(resp.headers, "content-length")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if c.rbuf.len() < head_len + len {
                    return;
                }
                body = c.rbuf[head_len..head_len + len].to_vec();
                used = head_len + len;
            }
            c.rbuf.drain(..used);
            c.inflight.pop_front();
            let now = Instant::now();
            self.last_reply = Some(now);
            let reply_us = now.duration_since(at).as_micros() as u64;
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
            if close {
                // What was pipelined behind this reply was not processed: send it again.
                let c = &mut self.conns[j];
                for (p, _) in c.inflight.drain(..).rev() {
                    self.retry.push_front(p);
                }
                self.broken(registry, j);
                return;
            }
        }
    }

    /// Connection `j` broke (or its oldest reply is late): every publish in flight on it
    /// failed; the next publish reconnects.
    fn broken(&mut self, registry: &Registry, j: usize) {
        let c = &mut self.conns[j];
        if !c.inflight.is_empty() {
            self.errors += 1;
        }
        for (p, _) in c.inflight.drain(..) {
            self.results[p].ok = false;
        }
        if let Some(mut s) = c.sock.take() {
            let _ = registry.deregister(&mut s);
        }
        c.connected = false;
        c.wbuf.clear();
        c.rbuf.clear();
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
                publishers: 1,
                pipeline: 1,
            },
            0,
        )
    }

    /// A keep-alive server that answers `limit` requests per connection, the last one
    /// with `Connection: close`, and ignores what was pipelined behind it.
    fn closing_server(limit: usize) -> (SocketAddr, std::thread::JoinHandle<usize>) {
        use std::io::{Read as _, Write as _};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut answered = 0;
            l.set_nonblocking(false).unwrap();
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                let mut buf = Vec::new();
                let mut served = 0;
                let mut chunk = [0u8; 4096];
                'conn: loop {
                    // One request = head + Content-Length body.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        if head.starts_with("QUIT") {
                            return answered;
                        }
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        buf.drain(..end + 4 + len);
                        served += 1;
                        answered += 1;
                        let last = served == limit;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{}\r\nok",
                            if last { "Connection: close\r\n" } else { "" }
                        );
                        s.write_all(reply.as_bytes()).unwrap();
                        if last {
                            // Lingering close (as nginx does): closing with unread
                            // input would reset the connection and could destroy the
                            // reply before the client reads it.
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
                            break 'conn;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
            answered
        });
        (addr, h)
    }

    #[test]
    fn requests_behind_connection_close_are_sent_again() {
        let (addr, server) = closing_server(7);
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(64);
        let mut p = Publisher::new(
            PublishPlan {
                addr,
                host: "h".into(),
                targets: vec!["/pub?id=a".into()],
                format: Format::Raw,
                size: 0,
                messages: 50,
                rate: 0.0,
                publishers: 1,
                pipeline: 5,
            },
            100,
        );
        let start = Instant::now();
        while !p.is_done() {
            assert!(start.elapsed() < Duration::from_secs(10), "stuck");
            let wait = p.drive(poll.registry(), Instant::now());
            poll.poll(&mut events, Some(wait.min(Duration::from_millis(50))))
                .unwrap();
            for ev in events.iter() {
                let j = p.owns(ev.token()).expect("only publisher tokens");
                p.ready(poll.registry(), j);
            }
        }
        assert!(p.results.iter().all(|r| r.sent && r.ok && r.status == 200));
        assert_eq!(p.shape(), (1, 5));
        assert!(p.phase_s() > 0.0);
        // Close the publisher's connection, then stop the server thread.
        drop(p);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, b"QUIT / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(server.join().unwrap(), 50);
    }

    #[test]
    fn tokens_map_to_connections() {
        let mut plan = publisher(1, 1);
        assert_eq!(plan.owns(Token(0)), Some(0));
        assert_eq!(plan.owns(Token(1)), None);
        plan = Publisher::new(
            PublishPlan {
                addr: "127.0.0.1:1".parse().unwrap(),
                host: "h".into(),
                targets: vec!["/".into()],
                format: Format::Raw,
                size: 0,
                messages: 1,
                rate: 0.0,
                publishers: 3,
                pipeline: 0,
            },
            10,
        );
        assert_eq!(plan.owns(Token(9)), None);
        assert_eq!(plan.owns(Token(12)), Some(2));
        assert_eq!(plan.owns(Token(13)), None);
        assert_eq!(plan.shape(), (3, 1));
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
