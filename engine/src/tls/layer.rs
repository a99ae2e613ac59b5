//! The TLS layer: a [`Backend`] over the worker's backend that speaks TLS on the
//! connections of TLS listeners and passes every other connection straight through.
//!
//! Per TLS connection it keeps one boxed [`Session`]: while handshaking, the rustls
//! unbuffered connection; once established, only the record keys ([`Keys`], see
//! `record.rs` for why). Buffers exist only while they hold something: ciphertext of a
//! record not received whole yet, plaintext the worker's buffer had no room for, and
//! plaintext held back while the socket is backed up.
//!
//! # Output
//!
//! What the worker sends is encrypted at once when the connection has nothing in flight;
//! otherwise it is held as plaintext and encrypted, all of it in one go (fewer, fuller
//! records), when the backend reports the earlier bytes written. So the backend holds at
//! most one ciphertext buffer per connection, and a slow-consumer cut drops only whole
//! plaintext frames that were never encrypted: the record sequence stays intact and the
//! transport's last words (a close frame) still decrypt. A graceful close sends
//! close_notify before the write side is shut.
//!
//! # Input
//!
//! Ciphertext read from the backend (within its read budget) is decrypted in the
//! session's buffer and handed over as plaintext; a record that does not fit the worker's
//! buffer is kept and handed over on the next call. The peer's close_notify is the end
//! of input. A bad record or a failed handshake is an error (the worker closes); rustls
//! sends its alert first.

use bytes::Bytes;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::record::{Keys, Record};
use super::Context;
use crate::reactor::{Backend, Event, Exported, ListenerId, Part, Sock, Token, TokenState};

/// A TLS connection's state.
enum Phase {
    /// Handshaking with rustls.
    Handshake(Box<UnbufferedServerConnection>),
    /// Established: the record keys.
    Open(Keys),
    /// Failed or closed: nothing more is read or written.
    Done,
}

/// One TLS connection.
struct Session {
    sock: Sock,
    phase: Phase,
    /// Ciphertext not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Plaintext the worker's buffer had no room for, from `plain_off`.
    plain: Vec<u8>,
    plain_off: usize,
    /// Plaintext waiting for the backend to write what is in flight.
    held: Vec<Bytes>,
    held_bytes: usize,
    /// The peer sent close_notify: input has ended.
    eof: bool,
    /// The write side is to be shut once the close_notify is written.
    shut: bool,
}

impl Session {
    fn new(sock: Sock, conn: UnbufferedServerConnection) -> Session {
        Session {
            sock,
            phase: Phase::Handshake(Box::new(conn)),
            incoming: Vec::new(),
            plain: Vec::new(),
            plain_off: 0,
            held: Vec::new(),
            held_bytes: 0,
            eof: false,
            shut: false,
        }
    }

    /// An established session as bytes (a hot handover): its keys, the ciphertext of a
    /// record begun, plaintext not handed to the worker yet, plaintext held back, and
    /// the ends seen. `None` while handshaking.
    fn export(&self) -> Option<Vec<u8>> {
        let Phase::Open(keys) = &self.phase else {
            return None;
        };
        let mut out = Vec::new();
        let mut put = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        };
        put(&keys.export());
        put(&self.incoming);
        put(&self.plain[self.plain_off..]);
        let held: Vec<u8> = self.held.iter().flat_map(|b| b.iter().copied()).collect();
        put(&held);
        out.push(u8::from(self.eof));
        out.push(u8::from(self.shut));
        Some(out)
    }

    /// A session from [`Session::export`].
    fn import(sock: Sock, mut b: &[u8]) -> Option<Session> {
        let mut take = || -> Option<Vec<u8>> {
            let n = usize::try_from(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)).ok()?;
            let v = b.get(8..8 + n)?.to_vec();
            b = &b[8 + n..];
            Some(v)
        };
        let keys = Keys::import(&take()?)?;
        let incoming = take()?;
        let plain = take()?;
        let held = take()?;
        let (eof, shut) = match b {
            [e, s] => (*e != 0, *s != 0),
            _ => return None,
        };
        let held_bytes = held.len();
        Some(Session {
            sock,
            phase: Phase::Open(keys),
            incoming,
            plain,
            plain_off: 0,
            held: if held.is_empty() {
                Vec::new()
            } else {
                vec![Bytes::from(held)]
            },
            held_bytes,
            eof,
            shut,
        })
    }

    /// Hands over kept plaintext; 0 when there is none.
    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.plain[self.plain_off..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.plain_off += n;
        if self.plain_off == self.plain.len() {
            self.plain = Vec::new();
            self.plain_off = 0;
        }
        n
    }

    /// Puts plaintext in `buf` from `*at`, keeping what does not fit.
    fn give(&mut self, data: &[u8], buf: &mut [u8], at: &mut usize) {
        give(&mut self.plain, data, buf, at);
    }
}

/// Puts plaintext in `buf` from `*at`; what does not fit goes to `kept`.
fn give(kept: &mut Vec<u8>, data: &[u8], buf: &mut [u8], at: &mut usize) {
    let room = buf.len() - *at;
    let n = data.len().min(room);
    buf[*at..*at + n].copy_from_slice(&data[..n]);
    *at += n;
    if n < data.len() {
        kept.extend_from_slice(&data[n..]);
    }
}

fn invalid(why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// The TLS layer over a backend `B`.
pub struct Tls<B> {
    inner: B,
    /// By listener id: its TLS context, if it has one.
    contexts: Vec<Option<Arc<Context>>>,
    /// True when some listener has TLS (otherwise every call passes straight through).
    any: bool,
    /// Accepted sockets of TLS listeners, until they are added (or refused).
    fresh: HashMap<Sock, ListenerId>,
    sessions: HashMap<Token, Box<Session>, TokenState>,
    /// Scratch for outgoing records.
    out: Vec<u8>,
}

/// What one turn of the handshake loop came to.
enum Turn {
    /// Go round again.
    More,
    /// rustls waits for more ciphertext, or the peer closed.
    Blocked,
    /// Established.
    Done,
    /// Failed (rustls may have an alert queued).
    Failed(rustls::Error),
}

/// The record keys of a handshake that has just finished (`phase` is the handshake).
fn open_keys(phase: Phase) -> io::Result<Keys> {
    let Phase::Handshake(conn) = phase else {
        unreachable!("checked above");
    };
    let version = conn.protocol_version();
    let limit = conn.negotiated_cipher_suite().map_or(0, |c| match c {
        rustls::SupportedCipherSuite::Tls12(t) => t.common.confidentiality_limit,
        rustls::SupportedCipherSuite::Tls13(t) => t.common.confidentiality_limit,
    });
    let (secrets, _) = conn.dangerous_into_kernel_connection().map_err(invalid)?;
    Keys::new(
        version.ok_or_else(|| invalid("no protocol version"))?,
        limit,
        secrets,
    )
    .map_err(invalid)
}

impl<B: Backend> Tls<B> {
    /// `contexts[id]`: the TLS of listener `id`, if any.
    pub fn new(inner: B, contexts: Vec<Option<Arc<Context>>>) -> Tls<B> {
        let any = contexts.iter().any(Option::is_some);
        Tls {
            inner,
            contexts,
            any,
            fresh: HashMap::new(),
            sessions: HashMap::default(),
            out: Vec::new(),
        }
    }

    /// The backend underneath.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Number of TLS connections (handshaking or established).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sends `self.out` (whole records) and clears it.
    fn flush_out(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.inner.send(sock, token, &[Part::Copy(&self.out)]);
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        r
    }

    /// Moves the handshake on with what is in `incoming`; plaintext that came with it
    /// goes to `buf` from `*at`.
    fn handshake(
        &mut self,
        token: Token,
        s: &mut Session,
        buf: &mut [u8],
        at: &mut usize,
    ) -> io::Result<()> {
        let Phase::Handshake(conn) = &mut s.phase else {
            return Ok(());
        };
        let mut plain = Vec::new();
        let turn = loop {
            let st = conn.process_tls_records(&mut s.incoming);
            let discard = st.discard;
            let turn = self.handshake_turn(st.state, s.sock, token, &mut plain, &mut s.eof)?;
            s.incoming.drain(..discard);
            if !matches!(turn, Turn::More) {
                break turn;
            }
        };
        if let Turn::Failed(e) = turn {
            // rustls queued its alert: one more turn writes it.
            let st = conn.process_tls_records(&mut []);
            if let Ok(ConnectionState::EncodeTlsData(mut enc)) = st.state {
                let start = self.out.len();
                self.out.resize(start + 512, 0);
                let n = enc.encode(&mut self.out[start..]).unwrap_or(0);
                self.out.truncate(start + n);
            }
            s.phase = Phase::Done;
            let _ = self.flush_out(s.sock, token);
            return Err(invalid(format!("TLS handshake failed: {e}")));
        }
        if !plain.is_empty() {
            s.give(&plain, buf, at);
        }
        self.flush_out(s.sock, token)?;
        if matches!(turn, Turn::Done) {
            let phase = std::mem::replace(&mut s.phase, Phase::Done);
            s.phase = Phase::Open(open_keys(phase)?);
        }
        Ok(())
    }

    /// One state of the handshake: early plaintext goes to `plain`, handshake records are
    /// encoded into `self.out` and sent when rustls says so (an error sending is returned
    /// as is; a TLS error is [`Turn::Failed`]).
    fn handshake_turn(
        &mut self,
        state: Result<ConnectionState<'_, '_, ServerConnectionData>, rustls::Error>,
        sock: Sock,
        token: Token,
        plain: &mut Vec<u8>,
        eof: &mut bool,
    ) -> io::Result<Turn> {
        Ok(match state {
            Err(e) => Turn::Failed(e),
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => plain.extend_from_slice(rec.payload),
                        Err(e) => return Ok(Turn::Failed(e)),
                    }
                }
                Turn::More
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => match self.encode_handshake(&mut enc) {
                Ok(()) => Turn::More,
                Err(e) => Turn::Failed(e),
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                let out = std::mem::take(&mut self.out);
                let r = self.inner.send(sock, token, &[Part::Copy(&out)]);
                self.out = out;
                self.out.clear();
                r?;
                Turn::More
            }
            Ok(ConnectionState::BlockedHandshake) => Turn::Blocked,
            Ok(ConnectionState::WriteTraffic(_)) => Turn::Done,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                *eof = true;
                Turn::Blocked
            }
            Ok(_) => Turn::Failed(rustls::Error::General("unexpected TLS state".into())),
        })
    }

    /// Appends the handshake records `enc` holds to `self.out` (nothing on an error).
    fn encode_handshake(
        &mut self,
        enc: &mut EncodeTlsData<'_, ServerConnectionData>,
    ) -> Result<(), rustls::Error> {
        let start = self.out.len();
        self.out.resize(start + 4096, 0);
        let n = match enc.encode(&mut self.out[start..]) {
            Ok(n) => Ok(n),
            Err(EncodeError::InsufficientSize(need)) => {
                self.out.resize(start + need.required_size, 0);
                enc.encode(&mut self.out[start..])
            }
            Err(e) => Err(e),
        };
        match n {
            Ok(n) => {
                self.out.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                self.out.truncate(start);
                Err(rustls::Error::General(e.to_string()))
            }
        }
    }

    /// Decrypts the complete records in `incoming` into `buf` from `*at`.
    fn records(s: &mut Session, buf: &mut [u8], at: &mut usize) -> io::Result<()> {
        let Phase::Open(keys) = &mut s.phase else {
            return Ok(());
        };
        let mut pos = 0;
        let mut incoming = std::mem::take(&mut s.incoming);
        let result = loop {
            if s.eof {
                break Ok(());
            }
            match Keys::complete(&incoming[pos..]) {
                Ok(Some(len)) => match keys.open(&mut incoming[pos..pos + len], len) {
                    Ok(Record::Data { start, end }) => {
                        let data = &incoming[pos + start..pos + end];
                        give(&mut s.plain, data, buf, at);
                        pos += len;
                    }
                    Ok(Record::CloseNotify) => {
                        s.eof = true;
                        pos += len;
                    }
                    Err(e) => break Err(invalid(e)),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(invalid(e)),
            }
        };
        incoming.drain(..pos);
        if !incoming.is_empty() {
            s.incoming = incoming;
        }
        result
    }

    /// Encrypts what the session holds and sends it (the backend has nothing in flight).
    fn send_held(&mut self, token: Token, s: &mut Session) -> io::Result<()> {
        if s.held.is_empty() {
            return Ok(());
        }
        let Phase::Open(keys) = &mut s.phase else {
            s.held.clear();
            s.held_bytes = 0;
            return Ok(());
        };
        let r = keys.seal(super::record::content::DATA, &s.held, &mut self.out);
        s.held.clear();
        s.held_bytes = 0;
        r.map_err(invalid)?;
        self.flush_out(s.sock, token)
    }

    /// After a write completed: held plaintext goes out; a pending shutdown happens.
    /// The event to pass on: `Writable` when nothing more is in flight, none while the
    /// held bytes are being written, `Failed` when they cannot be.
    fn on_writable(&mut self, token: Token) -> Option<Event> {
        let Some(mut s) = self.sessions.remove(&token) else {
            return Some(Event::Writable(token));
        };
        let failed = !s.held.is_empty() && self.send_held(token, &mut s).is_err();
        let idle = self.inner.pending(token) == 0;
        if s.shut && idle && !failed {
            s.shut = false;
            let _ = self.inner.shutdown_write(s.sock, token);
        }
        self.sessions.insert(token, s);
        match (failed, idle) {
            (true, _) => Some(Event::Failed(token)),
            (false, true) => Some(Event::Writable(token)),
            (false, false) => None,
        }
    }
}

impl<B: Backend> Backend for Tls<B> {
    type Waker = B::Waker;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn waker(&self) -> Arc<Self::Waker> {
        self.inner.waker()
    }

    fn listen(&mut self, id: ListenerId, listener: std::net::TcpListener) -> io::Result<()> {
        self.inner.listen(id, listener)
    }

    fn stop_listening(&mut self) {
        self.inner.stop_listening();
    }

    fn slots(&self) -> Option<usize> {
        self.inner.slots()
    }

    fn pause_accept(&mut self, id: ListenerId) {
        self.inner.pause_accept(id);
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        let start = events.len();
        self.inner.wait(timeout, events)?;
        if self.sessions.is_empty() {
            return Ok(());
        }
        // Keeps the order: a Writable of a connection still writing (what was held went
        // out now) is dropped, it comes again when that is written.
        let mut w = start;
        for r in start..events.len() {
            let ev = match events[r] {
                Event::Writable(t) if self.sessions.contains_key(&t) => self.on_writable(t),
                other => Some(other),
            };
            if let Some(ev) = ev {
                events[w] = ev;
                w += 1;
            }
        }
        events.truncate(w);
        Ok(())
    }

    fn accept(&mut self, id: ListenerId, out: &mut Vec<Sock>, max: usize) -> io::Result<bool> {
        let before = out.len();
        let r = self.inner.accept(id, out, max);
        if self
            .contexts
            .get(usize::from(id))
            .is_some_and(Option::is_some)
        {
            for &sock in &out[before..] {
                self.fresh.insert(sock, id);
            }
        }
        r
    }

    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let Some(id) = self.fresh.remove(&sock) else {
            return self.inner.add(sock, token);
        };
        let Some(Some(ctx)) = self.contexts.get(usize::from(id)) else {
            return self.inner.add(sock, token);
        };
        let conn = UnbufferedServerConnection::new(ctx.config())
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        self.inner.add(sock, token)?;
        self.sessions
            .insert(token, Box::new(Session::new(sock, conn)));
        Ok(())
    }

    fn recv(&mut self, sock: Sock, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        if !self.any {
            return self.inner.recv(sock, token, buf);
        }
        let Some(mut s) = self.sessions.remove(&token) else {
            return self.inner.recv(sock, token, buf);
        };
        let r = self.recv_tls(token, &mut s, buf);
        self.sessions.insert(token, s);
        r
    }

    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<()> {
        if !self.any {
            return self.inner.send(sock, token, parts);
        }
        let Some(mut s) = self.sessions.remove(&token) else {
            return self.inner.send(sock, token, parts);
        };
        let r = self.send_tls(token, &mut s, parts);
        self.sessions.insert(token, s);
        r
    }

    fn pending(&self, token: Token) -> usize {
        let held = self.sessions.get(&token).map_or(0, |s| s.held_bytes);
        self.inner.pending(token) + held
    }

    fn backlog(&self, token: Token) -> usize {
        let backlog = self.inner.backlog(token);
        if backlog == 0 {
            return 0;
        }
        backlog + self.sessions.get(&token).map_or(0, |s| s.held_bytes)
    }

    fn truncate(&mut self, token: Token) {
        if let Some(s) = self.sessions.get_mut(&token) {
            // Never encrypted: dropping them leaves the record sequence whole.
            s.held.clear();
            s.held_bytes = 0;
        }
        self.inner.truncate(token);
    }

    fn shutdown_write(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let Some(mut s) = self.sessions.remove(&token) else {
            return self.inner.shutdown_write(sock, token);
        };
        let r = (|| {
            self.send_held(token, &mut s)?;
            if let Phase::Open(keys) = &mut s.phase {
                keys.close_notify(&mut self.out).map_err(invalid)?;
                self.flush_out(sock, token)?;
            }
            if self.inner.pending(token) == 0 {
                self.inner.shutdown_write(sock, token)
            } else {
                s.shut = true;
                Ok(())
            }
        })();
        self.sessions.insert(token, s);
        r
    }

    fn close(&mut self, sock: Sock, token: Token) {
        self.sessions.remove(&token);
        self.fresh.remove(&sock);
        self.inner.close(sock, token);
    }

    fn reject(&mut self, sock: Sock, answer: &'static [u8]) {
        if self.fresh.remove(&sock).is_some() {
            // A TLS client cannot read a plain answer: it is just closed.
            self.inner.reject(sock, b"");
        } else {
            self.inner.reject(sock, answer);
        }
    }

    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr> {
        self.inner.peer_addr(sock)
    }

    fn shutdown(&mut self) {
        self.sessions.clear();
        self.fresh.clear();
        self.inner.shutdown();
    }

    fn shrink(&mut self) {
        self.inner.shrink();
    }

    fn export_conn(&self, sock: Sock, token: Token) -> io::Result<Exported> {
        // "Would block": in a moment the handshake is done and the connection can go.
        let unsupported = |why: &str| io::Error::new(io::ErrorKind::WouldBlock, why.to_string());
        if self.fresh.contains_key(&sock) {
            return Err(unsupported("a TLS connection is being accepted: retry"));
        }
        let mut state = self.inner.export_conn(sock, token)?;
        if let Some(s) = self.sessions.get(&token) {
            state.tls = s
                .export()
                .ok_or_else(|| unsupported("a TLS handshake is in progress: retry"))?;
        }
        Ok(state)
    }

    fn import_conn(&mut self, fd: Sock, token: Token, mut state: Exported) -> io::Result<Sock> {
        let tls = std::mem::take(&mut state.tls);
        if tls.is_empty() {
            return self.inner.import_conn(fd, token, state);
        }
        // Read before the socket is taken over, so that an error leaves `fd` the caller's.
        let mut s =
            Session::import(fd, &tls).ok_or_else(|| invalid("a TLS state it cannot read"))?;
        s.sock = self.inner.import_conn(fd, token, state)?;
        let sock = s.sock;
        self.sessions.insert(token, Box::new(s));
        Ok(sock)
    }

    fn quiesce(&mut self) -> io::Result<()> {
        self.inner.quiesce()
    }

    fn thaw(&mut self) {
        self.inner.thaw()
    }

    fn handover_fds(&mut self, socks: &[Sock]) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>> {
        self.inner.handover_fds(socks)
    }

    fn listener_fds(&self) -> Vec<(ListenerId, i32)> {
        self.inner.listener_fds()
    }
}

impl<B: Backend> Tls<B> {
    fn recv_tls(&mut self, token: Token, s: &mut Session, buf: &mut [u8]) -> io::Result<usize> {
        if !s.plain.is_empty() {
            return Ok(s.take_plain(buf));
        }
        loop {
            if s.eof {
                return Ok(0);
            }
            if matches!(s.phase, Phase::Done) {
                return Err(invalid("TLS connection failed"));
            }
            let n = self.inner.recv(s.sock, token, buf)?;
            if n == 0 {
                return Ok(0);
            }
            s.incoming.extend_from_slice(&buf[..n]);
            let mut at = 0;
            if matches!(s.phase, Phase::Handshake(_)) {
                self.handshake(token, s, buf, &mut at)?;
            }
            Self::records(s, buf, &mut at)?;
            if at > 0 {
                return Ok(at);
            }
        }
    }

    fn send_tls(&mut self, token: Token, s: &mut Session, parts: &[Part<'_>]) -> io::Result<()> {
        match s.phase {
            // Nothing can be said before the handshake ends (an eviction's 503): dropped.
            Phase::Handshake(_) => return Ok(()),
            Phase::Done => return Err(io::ErrorKind::BrokenPipe.into()),
            Phase::Open(_) => {}
        }
        if !s.held.is_empty() || self.inner.pending(token) > 0 {
            for p in parts {
                s.held_bytes += p.bytes().len();
                s.held.push(p.to_bytes(0));
            }
            return Ok(());
        }
        let Phase::Open(keys) = &mut s.phase else {
            unreachable!("checked above");
        };
        keys.seal(super::record::content::DATA, parts, &mut self.out)
            .map_err(invalid)?;
        self.flush_out(s.sock, token)
    }
}
