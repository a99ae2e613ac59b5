//! Opening connections: taking waiting ones off the queue within the rate and pending
//! limits, starting the non-blocking connect with the transport's request queued, seeing
//! the connect complete, and failing handshakes that outlive the timeout.

use mio::{Interest, Token};
use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::conn::{flush, split_token, token_of, Close, Conn, Stage};
use super::Child;
use crate::client::{Client, Request};
use crate::sys;
use crate::tls::TlsConn;

impl Child {
    /// Opens waiting connections while the rate and pending limits allow.
    pub(super) fn open_more(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, l))) = self.delayed.pop() else {
                break;
            };
            self.queue.push_back(l);
        }
        while let Some(&l) = self.queue.front() {
            if self.pending >= self.cfg.max_pending || !self.connect_bucket.take(now) {
                break;
            }
            self.queue.pop_front();
            self.open_one(l, now);
        }
    }

    fn open_one(&mut self, l: u32, now: Instant) {
        self.counters.attempts += 1;
        if self.counters.first_attempt_ns.is_none() {
            self.counters.first_attempt_ns = Some(sys::unix_ns());
        }
        self.logical[l as usize].stage = Stage::Connecting;
        let mut sock = match sys::connect(self.cfg.server, self.source_of(l)) {
            Ok(s) => s,
            Err(e) => {
                self.attempt_failed(l, sys::classify(&e).to_string(), now);
                return;
            }
        };
        let tls = match &self.tls {
            None => None,
            Some((config, name)) => match TlsConn::new(config, name.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(reason) => {
                    self.attempt_failed(l, reason, now);
                    return;
                }
            },
        };
        let channel = self.channel_of(l) as usize;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let token = token_of(slot, generation);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.attempt_failed(l, sys::classify(&e).to_string(), now);
            return;
        }
        let mut wbuf = Vec::new();
        let client = Client::start(
            self.cfg.transport,
            self.cfg.format,
            Request {
                host: &self.cfg.host,
                target: &self.cfg.targets[channel],
                connect: self.cfg.connect_of(channel),
            },
            fastrand::u128(..).to_ne_bytes()[..16]
                .try_into()
                .expect("a u128 has 16 bytes"),
            &mut wbuf,
        );
        entry.insert(Conn {
            generation,
            logical: l,
            sock,
            started: now,
            connected: false,
            client,
            wbuf,
            tls,
        });
        self.pending += 1;
        self.deadlines.push_back((
            now + Duration::from_millis(self.cfg.timeout_ms),
            slot,
            generation,
        ));
    }

    /// A socket event (or a re-run after the read budget).
    pub(super) fn conn_ready(&mut self, token: Token, readable: bool, writable: bool) {
        let (slot, generation) = split_token(token);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        if !conn.connected {
            match sys::connect_result(&conn.sock) {
                Ok(false) => return,
                Ok(true) => conn.connected = true,
                Err(e) => {
                    let reason = sys::classify(&e).to_string();
                    self.close(slot, Close::Failed(reason));
                    return;
                }
            }
            // The request was written into wbuf at start.
            if let Err(e) = flush(conn) {
                let reason = sys::classify(&e).to_string();
                self.close(slot, Close::Failed(reason));
                return;
            }
        } else if writable {
            if let Err(e) = flush(conn) {
                self.close_io(slot, &e);
                return;
            }
        }
        if readable {
            self.read(slot, token);
        }
    }

    /// Fails handshakes that passed their deadline.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, slot, generation)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let live = self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation && !c.client.is_established());
            if live {
                self.close(slot, Close::Failed("timeout".into()));
            }
        }
    }
}
