//! Input: bytes from the backend to the connection's parser (its request head, or its
//! transport).
//!
//! Reads go into one per-worker scratch buffer; only what is not parsed yet (the tail of
//! an incomplete request head, requests pipelined behind a held poll) is kept with the
//! connection, bounded by `max_head_bytes` (WebSocket frames are taken whole by the
//! decoder, which keeps its own partial frame).

use std::io;

use super::Core;
use crate::conn::{flag, State};
use crate::reactor::Backend;
use crate::transport;

impl<B: Backend> Core<B> {
    /// Reads what the backend has for the connection (within its read budget).
    pub(crate) fn read(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        let mut scratch = std::mem::take(&mut self.scratch);
        while !self.conns[slot].doomed() {
            let sock = self.conns[slot].sock;
            match self.io.recv(sock, token, &mut scratch) {
                Ok(0) => {
                    self.note_close(slot, 0, "closed by the peer");
                    self.close(slot);
                    break;
                }
                Ok(n) => self.on_data(slot, &mut scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if crate::log::enabled(crate::log::Level::Debug) {
                        self.note_close(slot, 0, &format!("read failed: {e}"));
                    }
                    self.close(slot);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Handles received bytes, joined with any saved unparsed input.
    pub(crate) fn on_data(&mut self, slot: usize, data: &mut [u8]) {
        let saved = self.conns[slot]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.rbuf))
            .unwrap_or_default();
        if saved.is_empty() {
            let used = self.process(slot, data);
            self.keep_unparsed(slot, &data[used..], true);
        } else {
            let mut buf = saved;
            buf.extend_from_slice(data);
            let used = self.process(slot, &mut buf);
            // Still a head begun before (unless a request was taken from it).
            let fresh = used > 0;
            self.keep_unparsed(slot, &buf[used..], fresh);
        }
        if !self.conns[slot].doomed() && self.conns[slot].state().is_ws() {
            self.watch_message(slot);
        }
    }

    /// Keeps input not parsed yet. `fresh`: it begins a new request head (the previous
    /// input was all taken), whose clock starts now.
    fn keep_unparsed(&mut self, slot: usize, rest: &[u8], fresh: bool) {
        let cfg = &self.shared.cfg;
        let conn = &mut self.conns[slot];
        let limit = if conn.has(flag::BODY) {
            cfg.max_head_bytes + cfg.socketio_max_payload
        } else {
            cfg.max_head_bytes
        };
        if conn.doomed() {
            return;
        }
        if rest.is_empty() {
            conn.shrink();
            return;
        }
        let before = conn.ext.as_ref().map_or(0, |e| e.rbuf.len());
        if before + rest.len() > limit {
            // Only a held long-poll can get here (the head parser enforces the limit
            // itself): a client pipelining this much while waiting is misbehaving.
            self.close(slot);
            return;
        }
        conn.ext().rbuf.extend_from_slice(rest);
        if fresh && before == 0 && conn.state() == State::Http && conn.has(flag::SERVED) {
            // The next request on a keep-alive connection has begun: its head gets the
            // handshake timeout, not what is left of the idle one.
            let t = self.live().handshake_timeout();
            self.arm(slot, t);
        }
    }

    /// Feeds input to the connection's state machine; returns the bytes consumed.
    fn process(&mut self, slot: usize, input: &mut [u8]) -> usize {
        // A PROXY protocol header first (with `proxy_protocol`), kept whole until it is
        // complete.
        let mut pos = match self.proxy_header(slot, input) {
            Some(n) => n,
            None if self.conns[slot].doomed() => return input.len(),
            None => return 0,
        };
        while pos < input.len() && !self.conns[slot].doomed() {
            if self.conns[slot].state() != State::Http {
                let n = transport::input(self, slot, &mut input[pos..]);
                if n == 0 {
                    return pos;
                }
                pos += n;
                continue;
            }
            match self.on_request(slot, &input[pos..]) {
                Some(n) => pos += n,
                None => return pos,
            }
        }
        if self.conns[slot].doomed() {
            return input.len();
        }
        pos
    }
}
