//! Reading a socket: bytes go to the connection's protocol [`crate::client::Client`]
//! (at most [`super::READ_BUDGET`] per turn), its events to the counters and the delivery
//! accounting, its replies back out; a failure or EOF closes the socket. With TLS, the
//! records read go through rustls first, and the plaintext it yields is fed the same way.

use mio::Token;
use std::io::{self, Read};

use super::conn::{flush, Close};
use super::{Child, MAX_OUTPUT, MAX_TLS_ERRORS_SHOWN, READ_BUDGET};
use crate::client::{Event, Request};
use crate::sys;
use crate::tls::{Handshake, Input, TlsFailure};
use crate::wire::Mode;

impl Child {
    /// Reads until `WouldBlock` (or the budget), feeding the protocol.
    pub(super) fn read(&mut self, slot: usize, token: Token) {
        if self.conns.get(slot).is_some_and(|c| c.tls.is_some()) {
            self.read_tls(slot, token);
            return;
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let n = match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.eof(slot);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close_io(slot, &e);
                    return;
                }
            };
            if !self.feed(slot, n) {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(token);
                return;
            }
        }
    }

    /// [`Child::read`] of a TLS connection: records from the socket into rustls, the
    /// plaintext out of it into the protocol, rustls's own output (handshake, alerts)
    /// back to the socket.
    fn read_tls(&mut self, slot: usize, token: Token) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let Some(tls) = conn.tls.as_mut() else {
                return;
            };
            let n = match tls.read_from(&mut conn.sock) {
                Ok(Input::Read(n)) => n,
                Ok(Input::WouldBlock) => return,
                Ok(Input::Closed) => {
                    self.eof(slot);
                    return;
                }
                Err(TlsFailure::Io(e)) => {
                    self.close_io(slot, &e);
                    return;
                }
                Err(TlsFailure::Tls(reason, detail)) => {
                    // The alert rustls queued, best effort.
                    let _ = flush(conn);
                    if self.tls_errors_seen.len() < MAX_TLS_ERRORS_SHOWN
                        && self.tls_errors_seen.insert(reason.clone())
                    {
                        eprintln!("loadgen child {}: {reason}: {detail}", self.cfg.index);
                    }
                    let close = if conn.client.is_established() {
                        Close::Dropped(reason)
                    } else {
                        Close::Failed(reason)
                    };
                    self.close(slot, close);
                    return;
                }
            };
            if let Some(h) = tls.just_completed() {
                self.on_tls_handshake(slot, h);
            }
            loop {
                let Some(conn) = self.conns.get_mut(slot) else {
                    return;
                };
                let Some(tls) = conn.tls.as_mut() else {
                    return;
                };
                let m = match tls.read_plain(&mut self.scratch) {
                    Ok(m) => m,
                    Err(e) => {
                        self.close_io(slot, &e);
                        return;
                    }
                };
                if m == 0 {
                    break;
                }
                if !self.feed(slot, m) {
                    return;
                }
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if conn.tls.as_ref().is_some_and(|t| t.peer_closed()) {
                self.eof(slot);
                return;
            }
            if let Err(e) = flush(conn) {
                self.close_io(slot, &e);
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(token);
                return;
            }
        }
    }

    /// The server closed the connection.
    fn eof(&mut self, slot: usize) {
        let established = self.conns[slot].client.is_established();
        let close = if established {
            Close::Dropped("eof".into())
        } else {
            Close::Failed("closed".into())
        };
        self.close(slot, close);
    }

    /// Counts a completed TLS handshake.
    fn on_tls_handshake(&mut self, slot: usize, h: Handshake) {
        let us = self.conns[slot].started.elapsed().as_micros() as u64;
        let c = &mut self.counters;
        if h.resumed {
            c.tls_resumed += 1;
            c.tls_resumed_hist.record_us(us);
        } else {
            c.tls_full += 1;
            c.tls_full_hist.record_us(us);
        }
        crate::counters::bump(&mut c.tls_versions, h.version, 1);
    }

    /// Feeds `scratch[..n]` (bytes read, or plaintext) to the connection in `slot`;
    /// `false` when the connection was closed.
    fn feed(&mut self, slot: usize, n: usize) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let now_ns = sys::unix_ns();
        let l = conn.logical;
        let channel = ((self.cfg.first + u64::from(l)) % self.cfg.targets.len() as u64) as usize;
        let was_established = conn.client.is_established();
        let logical = &mut self.logical[l as usize];
        let delivery = &self.delivery;
        let counters = &mut self.counters;
        let mut established = false;
        let result = conn.client.feed(
            &mut self.scratch[..n],
            Request {
                host: &self.cfg.host,
                target: &self.cfg.targets[channel],
                connect: self.cfg.connect_of(channel),
            },
            &mut conn.wbuf,
            &mut |ev| match ev {
                Event::Established => established = true,
                Event::Data { seq, content } => {
                    delivery.on_data(counters, logical, channel as u32, seq, content, now_ns)
                }
                Event::Gap { .. } => counters.gaps += 1,
                Event::Foreign => counters.foreign += 1,
            },
        );
        if established {
            self.on_established(slot);
            if self.cfg.mode == Mode::Handshake {
                self.close(slot, Close::Cycle);
                return false;
            }
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if !conn.wbuf.is_empty() {
            if let Err(e) = flush(conn) {
                self.close_io(slot, &e);
                return false;
            }
            if conn.wbuf.len() > MAX_OUTPUT {
                self.close(slot, Close::Dropped("slow_output".into()));
                return false;
            }
        }
        if let Err(f) = result {
            let close = if was_established || established {
                Close::Dropped(f.reason())
            } else {
                Close::Failed(f.reason())
            };
            self.close(slot, close);
            return false;
        }
        true
    }
}
