//! Accepting connections, within the connection budget.
//!
//! A slot is reserved under `max_connections` before its socket is accepted
//! ([`crate::shared::Shared::reserve_conns`]), so the descriptor table never fills. Past
//! the cap a newcomer takes the place of this worker's oldest connection still in its
//! first request head (a slowloris, or a client about to be cut by the handshake timeout
//! anyway); with none, it is answered 503, a few at a time, and accepting pauses for
//! `accept_pause_ms`. With `max_connections_per_ip`, a source address past its share is
//! answered 503. The per-address count is the TCP peer's: it is taken at accept, before
//! any `X-Forwarded-For` or PROXY header could name a client behind a proxy.

use std::collections::VecDeque;
use std::io;
use std::sync::LazyLock;
use std::time::Instant;

use super::Worker;
use crate::conn::{flag, State};
use crate::limits::{ACCEPT_BATCH, ACCEPT_WARN_INTERVAL, REJECT_BATCH};
use crate::metrics::{Counter, Transport};
use crate::msg::error_response;
use crate::reactor::{is_resource_error, Backend, ListenerId, Sock, Token};
use crate::warn;

/// The answer when `max_connections` is reached.
pub static FULL_RESPONSE: LazyLock<Vec<u8>> =
    LazyLock::new(|| error_response(503, "too many connections (max_connections)"));
/// The answer when one address has `max_connections_per_ip`.
pub static PER_IP_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    error_response(
        503,
        "too many connections from your address (max_connections_per_ip)",
    )
});
/// The answer while draining.
pub static DRAINING_RESPONSE: LazyLock<Vec<u8>> =
    LazyLock::new(|| error_response(503, "server shutting down"));

/// A worker's accepting state.
#[derive(Debug, Default)]
pub struct Acceptor {
    /// Still listening (not draining).
    pub listening: bool,
    /// Listeners that may have connections waiting.
    pub ready: Vec<ListenerId>,
    /// Accepting pauses until then (full, or out of descriptors).
    pub paused_until: Option<Instant>,
    last_warn: Option<Instant>,
    accepted: Vec<Sock>,
    /// Connections that have not finished their first request, oldest first (stale
    /// entries are skipped when popped).
    handshaking: VecDeque<Token>,
}

impl Acceptor {
    /// Listening on `listeners`.
    pub fn new(listeners: &[ListenerId]) -> Acceptor {
        Acceptor {
            listening: true,
            ready: listeners.to_vec(),
            ..Acceptor::default()
        }
    }

    /// True when there is accepting to do now.
    pub fn due(&self) -> bool {
        self.listening && self.paused_until.is_none() && !self.ready.is_empty()
    }

    /// `id` may have connections waiting.
    pub fn mark(&mut self, id: ListenerId) {
        if !self.ready.contains(&id) {
            self.ready.push(id);
        }
    }

    fn warning_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_WARN_INTERVAL);
        if due {
            self.last_warn = Some(now);
        }
        due
    }
}

impl<B: Backend> Worker<B> {
    /// Accepts on every listener that may have connections waiting.
    pub(super) fn accept(&mut self) {
        let ready = std::mem::take(&mut self.acceptor.ready);
        for (i, &id) in ready.iter().enumerate() {
            if !self.acceptor.due_now() {
                // Paused (full): the rest wait for the next turn.
                self.acceptor.ready.extend_from_slice(&ready[i..]);
                return;
            }
            self.accept_from(id);
        }
    }

    fn accept_from(&mut self, id: ListenerId) {
        let cx = &mut self.core;
        let room = cx
            .io
            .slots()
            .map_or(ACCEPT_BATCH, |n| n.saturating_sub(cx.conns.len()));
        let mut granted = if cx.draining {
            0
        } else {
            cx.shared.reserve_conns(ACCEPT_BATCH.min(room))
        };
        let want = if granted == 0 { REJECT_BATCH } else { granted };
        let mut fds = std::mem::take(&mut self.acceptor.accepted);
        let result = self.core.io.accept(id, &mut fds, want);
        let mut used = 0;
        for fd in fds.drain(..) {
            if used >= granted && !self.core.draining && self.evict_handshake() {
                // The slot of a connection that had not finished its request head.
                granted += self.core.shared.reserve_conns(1);
            }
            if used < granted {
                if self.add_conn(fd, id) {
                    used += 1;
                }
            } else {
                self.reject(fd, Counter::RejectedFull);
            }
        }
        self.acceptor.accepted = fds;
        self.core.shared.release_conns(granted - used);
        if granted == 0 {
            return self.on_full(id);
        }
        match result {
            Ok(true) => self.acceptor.mark(id),
            Ok(false) => {}
            Err(e) => self.on_accept_error(&e),
        }
    }

    /// EMFILE, ENFILE, ENOBUFS, ENOMEM (or anything unexpected): keep serving what we
    /// have, retry after a pause instead of spinning on a listener that stays readable.
    fn on_accept_error(&mut self, e: &io::Error) {
        let cx = &mut self.core;
        cx.stats.inc(Counter::AcceptErrors);
        let pause = cx.live().accept_pause();
        if self.acceptor.warning_due(cx.now) {
            let kind = if is_resource_error(e) {
                "out of descriptors or memory"
            } else {
                "unexpected error"
            };
            warn!(
                "worker {}: accept failed ({kind}): {e}; pausing accepts for {} ms ({} connections open)",
                cx.id,
                pause.as_millis(),
                cx.conns.len()
            );
        }
        self.acceptor.paused_until = Some(cx.now + pause);
    }

    /// `max_connections` reached (or draining): what waits is answered 503 a few at a
    /// time, and accepting pauses for `accept_pause_ms`.
    fn on_full(&mut self, id: ListenerId) {
        let cx = &mut self.core;
        let pause = cx.live().accept_pause();
        if !cx.draining && self.acceptor.warning_due(cx.now) {
            warn!(
                "worker {}: max_connections ({}) reached: new subscribers are answered 503, accepting pauses {} ms at a time",
                cx.id,
                cx.live().max_connections(),
                pause.as_millis()
            );
        }
        cx.io.pause_accept(id);
        self.acceptor.paused_until = Some(cx.now + pause);
        self.acceptor.mark(id);
    }

    /// Closes this worker's oldest connection still in its first request head, to make
    /// room for a newcomer; false when there is none.
    fn evict_handshake(&mut self) -> bool {
        while let Some(token) = self.acceptor.handshaking.pop_front() {
            let waiting =
                self.core.conns.get(token).is_some_and(|c| {
                    !c.doomed() && c.state() == State::Http && !c.has(flag::SERVED)
                });
            if waiting {
                let slot = token.slot();
                self.core.stats.inc(Counter::Evicted);
                let reason = "server full: request head too slow";
                self.core.respond_error(slot, 503, reason, &[]);
                self.core.close(slot);
                self.core.finish_closes();
                return true;
            }
        }
        false
    }

    /// Answers a socket that will not be served and closes it.
    fn reject(&mut self, sock: Sock, why: Counter) {
        self.core.stats.inc(why);
        let answer: &'static [u8] = match why {
            Counter::RejectedPerIp => &PER_IP_RESPONSE,
            _ if self.core.draining => &DRAINING_RESPONSE,
            _ => &FULL_RESPONSE,
        };
        self.core.io.reject(sock, answer);
    }

    /// Takes a new connection into the table (its slot is reserved); false when it was
    /// refused instead.
    fn add_conn(&mut self, sock: Sock, listener: ListenerId) -> bool {
        let cx = &mut self.core;
        let mut ip = None;
        if cx.shared.cfg.max_connections_per_ip > 0 {
            let Some(addr) = cx.io.peer_addr(sock) else {
                cx.io.reject(sock, &FULL_RESPONSE);
                return false;
            };
            if !cx.shared.enter_ip(addr.ip()) {
                self.reject(sock, Counter::RejectedPerIp);
                return false;
            }
            ip = Some(addr.ip());
        }
        let token = cx.conns.insert(sock, listener);
        if let Err(e) = cx.io.add(sock, token) {
            warn!("worker {}: cannot watch a new connection: {e}", cx.id);
            cx.conns.remove(token.slot());
            cx.io.close(sock, token);
            if let Some(ip) = ip {
                cx.shared.leave_ip(ip);
            }
            return false;
        }
        let deadline = cx.now + cx.live().handshake_timeout();
        let slot = token.slot();
        cx.conns[slot].timer = cx.wheel.insert(deadline, token.raw());
        if let Some(ip) = ip {
            cx.peer_ips.insert(slot, ip);
        }
        cx.stats.inc(Counter::Accepted);
        cx.stats.conn_delta(Transport::Http, 1);
        cx.on_accepted(slot);
        self.track_handshake(token);
        true
    }

    fn track_handshake(&mut self, token: Token) {
        let a = &mut self.acceptor;
        a.handshaking.push_back(token);
        if a.handshaking.len() > 2 * self.core.conns.len() + 64 {
            // Drop the entries of connections that are served or gone.
            let conns = &self.core.conns;
            a.handshaking
                .retain(|&t| conns.get(t).is_some_and(|c| !c.has(flag::SERVED)));
        }
    }
}

impl Acceptor {
    fn due_now(&self) -> bool {
        self.listening && self.paused_until.is_none()
    }
}
