//! A worker's part of a hot handover (see `crate::handover`): in the old process,
//! serializing every connection and blocking until the handover is decided; in the new
//! one, adopting the connections before the loop starts.

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
use crate::reactor::{Backend, NO_SOCK};
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

impl<B: Backend> Worker<B> {
    /// `Cmd::Freeze`: answers with every connection, then blocks until told to thaw
    /// (everything goes on untouched) or to exit (the successor holds the sockets: this
    /// thread parks, closing nothing, until the process exits).
    pub(super) fn freeze(
        &mut self,
        reply: Sender<Result<Frozen, String>>,
        resume: Receiver<Resume>,
    ) {
        self.core.finish_closes();
        let frozen = match self.core.io.quiesce() {
            Ok(()) => {
                // Sockets the backend accepted ahead (io_uring) become connections first:
                // they go over with the others.
                self.accept();
                self.core.finish_closes();
                self.export()
            }
            Err(e) => Err(format!("worker {}: cannot stop its I/O: {e}", self.core.id)),
        };
        let n = frozen.as_ref().map_or(0, |f| f.records.len());
        let _ = reply.send(frozen);
        info!(
            "worker {}: frozen for a handover ({n} connections)",
            self.core.id
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
    fn export(&mut self) -> Result<Frozen, String> {
        let cx = &mut self.core;
        if cx.draining {
            return Err("the server is draining: resume it first".into());
        }
        let mut frozen = Frozen {
            listeners: cx.io.listener_fds(),
            records: Vec::with_capacity(cx.conns.len()),
        };
        let now = std::time::Instant::now();
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
                cx.io
                    .export_conn(c.sock, token)
                    .map_err(|e| e.to_string())?
            } else {
                crate::reactor::Exported::default()
            };
            frozen.records.push((
                Record {
                    worker: cx.id,
                    slot,
                    generation: token.generation(),
                    has_sock,
                    listener: c.listener,
                    state: state as u8,
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
                    token_deadline_ms: ext
                        .and_then(|e| e.token_deadline)
                        .map(|t| millis(t.saturating_duration_since(now))),
                    timer_ms: cx
                        .wheel
                        .deadline(c.timer)
                        .map(|t| millis(t.saturating_duration_since(now))),
                    ip: cx.peer_ips.get(&slot).copied(),
                    pending: exported.pending,
                    tls: exported.tls,
                    input: exported.input,
                    sio: sio_state,
                },
                if has_sock { c.sock } else { -1 },
            ));
        }
        Ok(frozen)
    }

    /// In a successor, before the loop starts: takes over the connections the old
    /// process had, each in its old slot with its old generation (their subscriptions
    /// attached to the hub restored from its snapshot, their timers, unparsed input and
    /// unwritten output as they were). Returns how many.
    pub fn adopt(&mut self, records: Vec<(Record, Option<OwnedFd>)>) -> usize {
        let socks: Vec<(Record, i32)> = records
            .into_iter()
            .map(|(r, fd)| (r, fd.map_or(NO_SOCK, IntoRawFd::into_raw_fd)))
            .collect();
        let table = socks
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
                socks.len()
            );
            for (_, sock) in socks {
                close_sock(sock);
            }
            return 0;
        }
        let mut n = 0;
        for (r, sock) in socks {
            let slot = r.slot;
            match self.adopt_one(r, sock) {
                Ok(()) => n += 1,
                Err(e) => {
                    warn!(
                        "worker {}: handover: a connection was lost: {e}",
                        self.core.id
                    );
                    if self.core.conns.contains(slot) {
                        self.core.conns.remove(slot);
                    }
                    close_sock(sock);
                }
            }
        }
        n
    }

    fn adopt_one(&mut self, r: Record, sock: i32) -> Result<(), String> {
        let cx = &mut self.core;
        let state = State::from_u8(r.state).ok_or("an unknown state")?;
        let decoder = Decoder::import(&r.decoder).ok_or("an unreadable frame decoder state")?;
        let slot = r.slot;
        let token = cx.conns.token(slot);
        let has_input = !r.input.is_empty();
        if r.has_sock {
            let io_state = crate::reactor::Exported {
                pending: r.pending,
                tls: r.tls,
                input: r.input,
            };
            let handle = cx
                .io
                .import_conn(sock, token, io_state)
                .map_err(|e| format!("cannot watch it: {e}"))?;
            cx.conns[slot].sock = handle;
        }
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
        if has_input || (state == State::Http && cx.conns[slot].has_saved_input()) {
            cx.again.push(token);
        }
        Ok(())
    }
}
