//! A worker's part of a hot handover (see `crate::handover`): in the old process,
//! serializing every connection and blocking until the handover is decided; in the new
//! one, adopting the connections before the loop starts.

use std::io::ErrorKind;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use protocol::ws::{Decoder, Session};

use super::index::PAUSED;
use super::Worker;
use crate::conn::{Conn, State};
use crate::handover::{Frozen, Record, Resume};
use crate::hub::Since;
use crate::reactor::{Backend, Sock, Token, NO_SOCK};
use crate::{info, warn};

fn close_sock(sock: i32) {
    if sock >= 0 {
        // SAFETY: the descriptor came with a record, is owned by this worker and was not
        // registered with the backend.
        unsafe {
            libc::close(sock);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The record of the connection in `slot`, with what its backend holds and its
/// Socket.IO part.
fn record<B: Backend>(
    cx: &crate::worker::Core<B>,
    slot: usize,
    exported: crate::reactor::Exported,
    sio: Option<serde_json::Value>,
    now: std::time::Instant,
) -> Record {
    let c = &cx.conns[slot];
    let ext = c.ext.as_deref();
    let left = |t: std::time::Instant| millis(t.saturating_duration_since(now));
    Record {
        worker: cx.id,
        slot,
        generation: cx.conns.token(slot).generation(),
        has_sock: c.sock != NO_SOCK,
        listener: c.listener,
        state: c.state() as u8,
        flags: c.flags,
        session: c.session.to_bits(),
        decoder: c.ws.export(),
        subs: c
            .subs
            .as_slice()
            .iter()
            .map(|s| (cx.index.chan(s.local).name.to_string(), s.last_seq))
            .collect(),
        rbuf: ext.map(|e| e.rbuf.clone()).unwrap_or_default(),
        callback: ext.and_then(|e| e.callback.as_deref().map(str::to_string)),
        grant: ext.and_then(|e| e.grant.as_deref().cloned()),
        poll_seq: ext.map_or(0, |e| e.poll_seq),
        origin: ext.and_then(|e| e.origin.as_deref().map(str::to_string)),
        token_deadline_ms: ext.and_then(|e| e.token_deadline).map(left),
        timer_ms: cx.wheel.deadline(c.timer).map(left),
        ip: cx.peer_ips.get(&slot).copied(),
        pending: exported.pending,
        tls: exported.tls,
        input: exported.input,
        sio,
    }
}

impl<B: Backend> Worker<B> {
    /// `Cmd::Freeze`: answers with every connection, then blocks until told to thaw
    /// (everything goes on untouched) or to exit (the successor holds the sockets: this
    /// thread parks, closing nothing, until the process exits).
    pub(super) fn freeze(
        &mut self,
        reply: Sender<Result<Frozen, String>>,
        resume: Receiver<Resume>,
        last: bool,
    ) {
        self.core.finish_closes();
        let t0 = std::time::Instant::now();
        let mut quiesced_ms = 0.0;
        let frozen = match self.core.io.quiesce() {
            Ok(()) => {
                // Sockets the backend accepted ahead (io_uring) become connections first:
                // they go over with the others.
                quiesced_ms = t0.elapsed().as_secs_f64() * 1000.0;
                self.accept();
                self.core.finish_closes();
                self.export(last)
            }
            Err(e) => Err(format!("worker {}: cannot stop its I/O: {e}", self.core.id)),
        };
        let n = frozen.as_ref().map_or(0, |f| f.records.len());
        let _ = reply.send(frozen);
        info!(
            "worker {}: frozen for a handover ({n} connections; I/O stopped in {quiesced_ms:.1} ms, exported in {:.1} ms)",
            self.core.id,
            t0.elapsed().as_secs_f64() * 1000.0 - quiesced_ms
        );
        loop {
            match resume.recv() {
                Ok(Resume::Install { socks, reply }) => {
                    let _ =
                        reply.send(self.core.io.handover_fds(&socks).map_err(|e| e.to_string()));
                }
                Ok(Resume::Thaw) | Err(_) => {
                    info!("worker {}: handover called off, serving on", self.core.id);
                    self.core.io.thaw();
                    self.core.now = std::time::Instant::now();
                    return;
                }
                Ok(Resume::Exit) => loop {
                    std::thread::park();
                },
            }
        }
    }

    /// Every connection as a record with its socket; an error names what cannot be
    /// handed over yet.
    fn export(&mut self, last: bool) -> Result<Frozen, String> {
        let cx = &mut self.core;
        if cx.draining {
            return Err("the server is draining: resume it first".into());
        }
        let mut frozen = Frozen {
            listeners: cx.io.listener_fds(),
            records: Vec::with_capacity(cx.conns.len()),
        };
        let now = std::time::Instant::now();
        let mut cut = 0;
        for slot in cx.conns.slots() {
            let c = &cx.conns[slot];
            let state = c.state();
            if c.doomed() || state == State::Closing {
                // Closed when this process exits: it was closing anyway.
                continue;
            }
            let is_sio = matches!(
                state,
                State::SioWs | State::SioPoll | State::SioHeld | State::SioProbe
            );
            let sio_state = if is_sio {
                Some(crate::transport::socketio::export(cx, slot)?)
            } else {
                None
            };
            let c = &cx.conns[slot];
            let has_sock = c.sock != NO_SOCK;
            // permessage-deflate keeps no state per connection (no context takeover either
            // way): what it negotiated rides in the session bits, a compressed message in
            // progress in the decoder's export.
            let ext = c.ext.as_deref();
            if ext.is_some_and(|e| !e.pub_ids.is_empty() || !e.poll_names.is_empty()) {
                return Err("a client publish or a Redis read is in flight: retry".into());
            }
            if c.subs.as_slice().iter().any(|s| s.last_seq & PAUSED != 0) {
                return Err("a subscription waits for Redis: retry".into());
            }
            let token = cx.conns.token(slot);
            let exported = if has_sock {
                match cx.io.export_conn(c.sock, token) {
                    Ok(e) => e,
                    Err(e) if last && state == State::Http && e.kind() == ErrorKind::WouldBlock => {
                        // A TLS handshake in progress: the client has no connection yet,
                        // and retries.
                        cut += 1;
                        cx.close(slot);
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            } else {
                crate::reactor::Exported::default()
            };
            let sock = if has_sock { c.sock } else { -1 };
            let record = record(cx, slot, exported, sio_state, now);
            frozen.records.push((record, sock));
        }
        if cut > 0 {
            cx.finish_closes();
            warn!(
                "worker {}: handover: {cut} TLS handshakes in progress were closed",
                cx.id
            );
        }
        Ok(frozen)
    }

    /// In a successor, as its record arrives: the backend takes the connection's socket
    /// over (with the input it had received, the output it still had to write and its
    /// TLS keys) under the token it had. `None`: the connection is lost (logged, closed).
    pub fn take_over(&mut self, mut r: Record, fd: Option<OwnedFd>) -> Option<(Record, Sock)> {
        let Some(fd) = fd else {
            return Some((r, NO_SOCK));
        };
        let token = Token::new(r.slot, r.generation);
        let state = crate::reactor::Exported {
            pending: std::mem::take(&mut r.pending),
            tls: std::mem::take(&mut r.tls),
            input: std::mem::take(&mut r.input),
        };
        let raw = fd.into_raw_fd();
        match self.core.io.import_conn(raw, token, state) {
            Ok(handle) => Some((r, handle)),
            Err(e) => {
                warn!(
                    "worker {}: handover: a connection was lost: cannot watch it: {e}",
                    self.core.id
                );
                close_sock(raw);
                None
            }
        }
    }

    /// In a successor, before the loop starts: the connections the backend took over
    /// ([`Worker::take_over`]), each in its old slot with its old generation (their
    /// subscriptions attached to the hub restored from its snapshot, their timers and
    /// unparsed input as they were). Returns how many.
    pub fn adopt(&mut self, records: Vec<(Record, Sock)>) -> usize {
        let table = records
            .iter()
            .map(|(r, sock)| {
                let c = if r.has_sock {
                    Conn::new(*sock, r.generation, r.listener)
                } else {
                    Conn::session(*sock, r.generation, r.listener)
                };
                (r.slot, c)
            })
            .collect();
        if let Err(e) = self.core.conns.restore(table) {
            warn!(
                "worker {}: handover: {e}: {} connections lost",
                self.core.id,
                records.len()
            );
            for (r, sock) in records {
                if r.has_sock {
                    self.core.io.close(sock, Token::new(r.slot, r.generation));
                }
            }
            return 0;
        }
        let mut n = 0;
        for (r, sock) in records {
            let slot = r.slot;
            if State::from_u8(r.state).is_none() || Decoder::import(&r.decoder).is_none() {
                warn!(
                    "worker {}: handover: a connection was lost: a state it cannot read",
                    self.core.id
                );
                self.core.conns.remove(slot);
                if r.has_sock {
                    self.core.io.close(sock, Token::new(r.slot, r.generation));
                }
                continue;
            }
            // From here the connection is counted: a failure closes it as any close.
            match self.adopt_one(r) {
                Ok(()) => n += 1,
                Err(e) => {
                    warn!(
                        "worker {}: handover: a connection was lost: {e}",
                        self.core.id
                    );
                    self.core.close(slot);
                }
            }
        }
        self.core.finish_closes();
        n
    }

    fn adopt_one(&mut self, r: Record) -> Result<(), String> {
        let cx = &mut self.core;
        let state = State::from_u8(r.state).ok_or("an unknown state")?;
        let decoder = Decoder::import(&r.decoder).ok_or("an unreadable frame decoder state")?;
        let slot = r.slot;
        let token = cx.conns.token(slot);
        {
            let c = &mut cx.conns[slot];
            let moved = c.restore(state);
            cx.stats.conn_delta(moved.to, 1);
            c.flags = r.flags;
            c.session = Session::from_bits(r.session);
            c.ws = decoder;
            let has_ext = !r.rbuf.is_empty()
                || r.callback.is_some()
                || r.grant.is_some()
                || r.poll_seq != 0
                || r.origin.is_some()
                || r.token_deadline_ms.is_some();
            if has_ext {
                let e = c.ext();
                e.rbuf = r.rbuf;
                e.callback = r.callback.map(Into::into);
                e.grant = r.grant.map(Box::new);
                e.poll_seq = r.poll_seq;
                e.origin = r.origin.map(Into::into);
                e.token_deadline = r
                    .token_deadline_ms
                    .map(|ms| cx.now + Duration::from_millis(ms));
            }
        }
        cx.shared.conns.fetch_add(1, Ordering::AcqRel);
        if let Some(ip) = r.ip {
            cx.shared.enter_ip(ip);
            cx.peer_ips.insert(slot, ip);
        }
        let poll = state == State::Poll;
        for (name, last_seq) in r.subs {
            match cx.subscribe(slot, &name, Since::Now, poll, true) {
                Ok(s) if s.registered => {
                    if let Some(sub) = cx.conns[slot].subs.as_mut_slice().last_mut() {
                        sub.last_seq = last_seq;
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(
                    "worker {}: handover: cannot subscribe a connection to {name} again: {}",
                    cx.id,
                    e.reason()
                ),
            }
        }
        if let Some(ms) = r.timer_ms {
            cx.arm(slot, Duration::from_millis(ms));
        }
        if let Some(v) = r.sio {
            crate::transport::socketio::import(cx, slot, v)?;
        }
        cx.watch_token(slot);
        cx.watch_message(slot);
        if r.has_sock {
            // Input the old process had received, or that came during the handover:
            // read now (a connection with nothing to read answers "would block").
            cx.again.push(token);
        }
        Ok(())
    }
}
