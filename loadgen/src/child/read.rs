//! Reading a socket: bytes go to the connection's protocol [`crate::client::Client`]
//! (at most [`super::READ_BUDGET`] per turn), its events to the counters and the delivery
//! accounting, its replies back out; a failure or EOF closes the socket.

use mio::Token;
use std::io::{self, Read};

use super::conn::{flush, Close};
use super::{Child, MAX_OUTPUT, READ_BUDGET};
use crate::client::{Event, Request};
use crate::sys;

impl Child {
    /// Reads until `WouldBlock` (or the budget), feeding the protocol.
    pub(super) fn read(&mut self, slot: usize, token: Token) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let n = match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = "eof".to_string();
                    let close = if conn.client.is_established() {
                        Close::Dropped(reason)
                    } else {
                        Close::Failed("closed".into())
                    };
                    self.close(slot, close);
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
            let now_ns = sys::unix_ns();
            let l = conn.logical;
            let channel =
                ((self.cfg.first + u64::from(l)) % self.cfg.targets.len() as u64) as usize;
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
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if !conn.wbuf.is_empty() {
                if let Err(e) = flush(conn) {
                    self.close_io(slot, &e);
                    return;
                }
                if conn.wbuf.len() > MAX_OUTPUT {
                    self.close(slot, Close::Dropped("slow_output".into()));
                    return;
                }
            }
            if let Err(f) = result {
                let close = if was_established || established {
                    Close::Dropped(f.reason())
                } else {
                    Close::Failed(f.reason())
                };
                self.close(slot, close);
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(token);
                return;
            }
        }
    }
}
