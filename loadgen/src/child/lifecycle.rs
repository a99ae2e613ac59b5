//! What happens to a logical connection when its socket is established or closed:
//! the counters, storm outages (connections down after a server drop, until all are
//! back), retries with full-jitter exponential backoff, and churn (storm closes on
//! purpose, reopened at once).

use std::cmp::Reverse;
use std::io;
use std::time::{Duration, Instant};

use super::conn::{flush, Close, Conn, Stage};
use super::{emit, Child};
use crate::client;
use crate::counters::bump;
use crate::sys;
use crate::wire::{ChildMsg, Mode, Outage};

impl Child {
    /// The subscription of the socket in `slot` is up.
    pub(super) fn on_established(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        let l = conn.logical as usize;
        self.counters
            .connect_hist
            .record_us(conn.started.elapsed().as_micros() as u64);
        self.pending -= 1;
        self.open += 1;
        self.counters.established += 1;
        let lg = &mut self.logical[l];
        lg.stage = Stage::Open;
        lg.failures = 0;
        if lg.ever_open {
            self.counters.reconnects += 1;
        }
        lg.ever_open = true;
        if !lg.tried {
            lg.tried = true;
            self.untried -= 1;
            self.counters.initial_established += 1;
            self.counters.last_initial_ns = Some(sys::unix_ns());
        }
        if lg.down {
            lg.down = false;
            self.down -= 1;
            if self.down == 0 {
                if let Some(mut o) = self.outage.take() {
                    o.end_ns = Some(sys::unix_ns());
                    emit(&ChildMsg::Outage(o));
                }
            }
        }
    }

    /// Closes the socket in `slot` after an IO error: a failed attempt or a drop.
    pub(super) fn close_io(&mut self, slot: usize, e: &io::Error) {
        let reason = sys::classify(e).to_string();
        let established = self.conns[slot].client.is_established();
        self.close(
            slot,
            if established {
                Close::Dropped(reason)
            } else {
                Close::Failed(reason)
            },
        );
    }

    /// Closes a socket and decides what happens to its logical connection.
    pub(super) fn close(&mut self, slot: usize, why: Close) {
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        let l = conn.logical;
        let now = Instant::now();
        let was_open = self.logical[l as usize].stage == Stage::Open;
        if was_open {
            self.open -= 1;
        } else {
            self.pending -= 1;
        }
        let storm = self.cfg.mode == Mode::Storm;
        match why {
            Close::Failed(reason) => {
                drop(conn);
                self.attempt_failed(l, reason, now);
            }
            Close::Dropped(reason) => {
                drop(conn);
                bump(&mut self.counters.dropped, &reason, 1);
                let lg = &mut self.logical[l as usize];
                if storm {
                    lg.stage = Stage::Waiting;
                    if !lg.down {
                        lg.down = true;
                        self.down += 1;
                        let o = self.outage.get_or_insert(Outage {
                            start_ns: sys::unix_ns(),
                            end_ns: None,
                            peak: 0,
                        });
                        o.peak = o.peak.max(self.down);
                    }
                    self.schedule_retry(l, now);
                } else {
                    lg.stage = Stage::Dropped;
                }
            }
            purpose @ (Close::Churn | Close::Cycle) => {
                self.goodbye(&mut conn);
                drop(conn);
                if matches!(purpose, Close::Churn) {
                    self.counters.churn_closed += 1;
                } else {
                    self.counters.cycles += 1;
                }
                self.logical[l as usize].stage = Stage::Waiting;
                self.queue.push_back(l);
            }
        }
    }

    /// Before a close on purpose: a WebSocket close frame (WebSocket, Socket.IO) and a
    /// TLS close_notify, written once, best effort; the socket is closed right after.
    fn goodbye(&self, conn: &mut Conn) {
        conn.wbuf.clear();
        if matches!(
            self.cfg.transport,
            client::Transport::Ws | client::Transport::Socketio
        ) {
            protocol::ws::encode_close(
                &mut conn.wbuf,
                protocol::ws::CloseCode::NORMAL,
                "",
                Some(fastrand::u32(..).to_ne_bytes()),
            );
        }
        if let Some(tls) = conn.tls.as_mut() {
            tls.close();
        }
        let _ = flush(conn);
    }

    /// Counts a failed attempt; storm retries it later, the other modes give it up.
    pub(super) fn attempt_failed(&mut self, l: u32, reason: String, now: Instant) {
        bump(&mut self.counters.failed, &reason, 1);
        let lg = &mut self.logical[l as usize];
        if !lg.tried {
            lg.tried = true;
            self.untried -= 1;
        }
        lg.failures = lg.failures.saturating_add(1);
        if matches!(self.cfg.mode, Mode::Storm | Mode::Handshake) {
            lg.stage = Stage::Waiting;
            self.schedule_retry(l, now);
        } else {
            lg.stage = Stage::Failed;
        }
    }

    /// Full-jitter exponential backoff.
    fn schedule_retry(&mut self, l: u32, now: Instant) {
        let failures = self.logical[l as usize].failures.min(20);
        let ceiling = self
            .cfg
            .backoff_base_ms
            .saturating_mul(1 << failures)
            .min(self.cfg.backoff_cap_ms)
            .max(1);
        let delay = Duration::from_millis(fastrand::u64(0..=ceiling));
        self.delayed.push(Reverse((now + delay, l)));
    }

    /// Storm: closes a few random open connections; they are reopened at once.
    pub(super) fn churn(&mut self, now: Instant) {
        if !self.churning() {
            return;
        }
        let mut closes = 0;
        while self.open > 0 && closes < 10_000 && self.churn_bucket.take(now) {
            closes += 1;
            for _ in 0..32 {
                let cap = self.conns.capacity().max(1);
                let slot = fastrand::usize(..cap);
                let open = self
                    .conns
                    .get(slot)
                    .is_some_and(|c| self.logical[c.logical as usize].stage == Stage::Open);
                if open {
                    self.close(slot, Close::Churn);
                    break;
                }
            }
        }
    }
}
