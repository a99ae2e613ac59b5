//! Output over the backend: send, the slow-consumer cut, the graceful close (shut the
//! write side once everything is written, then wait, bounded, for the peer's EOF) and
//! the close.
//!
//! The backend takes every byte offered and keeps, in order, what the kernel did not take
//! at once (see [`crate::reactor`]); what is backed up because the peer does not read
//! counts toward `slow_consumer_bytes`, past which the connection is cut: its backlog is
//! dropped (a buffer already partly written is kept whole, so the stream stays
//! well-formed), its transport's end is written behind it, and it closes gracefully.

use super::Core;
use crate::config::secs;
use crate::conn::{flag, State};
use crate::metrics::Counter;
use crate::reactor::{Backend, Part};
use crate::transport;

impl<B: Backend> Core<B> {
    /// Writes the parts (nothing once the connection is closing or closed).
    pub(crate) fn send(&mut self, slot: usize, parts: &[Part<'_>]) {
        let conn = &self.conns[slot];
        if conn.write_closed() {
            return;
        }
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        if total == 0 {
            return;
        }
        let token = self.conns.token(slot);
        if self.io.send(conn.sock, token, parts).is_err() {
            self.close(slot);
            return;
        }
        self.stats.add(Counter::BytesOut, total as u64);
        if self.io.backlog(token) > self.shared.live.slow_consumer_bytes() {
            self.slow_consumer(slot);
        }
    }

    /// The backend wrote everything it held: a graceful close can go on.
    pub(crate) fn on_written(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        if self.io.pending(token) > 0 {
            return;
        }
        let conn = &mut self.conns[slot];
        if conn.has(flag::CLOSE_AFTER_FLUSH) {
            self.shutdown_write(slot);
        } else {
            conn.shrink();
        }
    }

    fn slow_consumer(&mut self, slot: usize) {
        self.stats.inc(Counter::SlowConsumer);
        let code = if self.conns[slot].state().is_ws() {
            1008
        } else {
            0
        };
        self.note_close(slot, code, "slow consumer");
        let token = self.conns.token(slot);
        self.io.truncate(token);
        let mut tail = Vec::with_capacity(32);
        transport::cut_tail(self, slot, &mut tail);
        if !tail.is_empty() {
            let sock = self.conns[slot].sock;
            // Behind the kept buffer, whatever the backlog: the end must go out.
            if self.io.send(sock, token, &[Part::Copy(&tail)]).is_err() {
                self.close(slot);
                return;
            }
        }
        self.close_graceful(slot);
    }

    /// Stops deliveries and shuts the write side once the output is written.
    pub(crate) fn close_graceful(&mut self, slot: usize) {
        self.note_channels(slot);
        self.unsubscribe_all(slot);
        let conn = &mut self.conns[slot];
        if conn.doomed() || conn.state() == State::Closing {
            return;
        }
        conn.set(flag::CLOSE_AFTER_FLUSH);
        let token = self.conns.token(slot);
        if self.io.pending(token) > 0 {
            let t = secs(self.shared.cfg.close_timeout_secs);
            self.arm(slot, t);
        } else {
            self.shutdown_write(slot);
        }
    }

    /// Shuts the write side and waits (bounded) for the peer to close, so that unread
    /// input does not turn our last bytes into a reset.
    fn shutdown_write(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        let conn = &mut self.conns[slot];
        if self.io.shutdown_write(conn.sock, token).is_err() {
            self.close(slot);
            return;
        }
        conn.clear(flag::CLOSE_AFTER_FLUSH);
        if let Some(ext) = conn.ext.as_mut() {
            ext.rbuf = Vec::new();
            ext.callback = None;
            ext.grant = None;
        }
        conn.shrink();
        let moved = self.conns[slot].shut();
        if self.apply(slot, moved) {
            let t = secs(self.shared.cfg.close_timeout_secs);
            self.arm(slot, t);
        }
    }

    /// Closes the connection once the current handler returns (see `conns`).
    pub(crate) fn close(&mut self, slot: usize) {
        self.conns.doom(slot);
    }
}
