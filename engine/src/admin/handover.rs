//! The admin port's part of a hot handover (see `crate::handover`): the publishers' open
//! connections go to the successor with what was read and not parsed yet and what was
//! answered and not written yet, so a keep-alive publisher (and a request it sends
//! during the freeze, which waits in the kernel) notices nothing; `/events` streams go on
//! from the successor.
//!
//! Not carried, so closed when the old process exits: TLS connections of an admin port
//! with TLS (the buffered rustls connection has no export), and a connection whose
//! answer still waits for a disk-store commit (committed and answered just before, so
//! only one whose commit failed).

use mio::{Interest, Token};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{Admin, AdminConn, Phase};
use crate::tls::stream::AdminStream;
use crate::warn;

/// One admin connection as the successor needs it (its socket travels beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRecord {
    peer: IpAddr,
    /// Received, not parsed yet (a request not complete yet).
    #[serde(with = "crate::handover::b64")]
    rbuf: Vec<u8>,
    /// Answered, not written yet.
    #[serde(with = "crate::handover::b64")]
    wbuf: Vec<u8>,
    close: bool,
    close_pending: bool,
    phase: Phase,
    /// Milliseconds the current phase has lasted (its timeout goes on).
    in_phase_ms: u64,
    stream: bool,
}

impl Admin {
    /// In the old process, when the handover freezes the admin thread: answers what
    /// waits for the store, then every connection that can go, with its socket. Changes
    /// nothing else (the handover may be called off).
    pub(super) fn export_conns(&mut self) -> Vec<(AdminRecord, RawFd)> {
        if let Some(store) = self.shared.hub.store() {
            store.commit_pending();
            self.release_all();
        }
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.conns.len());
        let mut left = 0;
        for (_, c) in self.conns.iter() {
            // A chunked body half decoded is decoded again from the request's start
            // (`rbuf` holds all of it) by the successor.
            if c.sock.is_tls() || !c.held.is_empty() {
                left += 1;
                continue;
            }
            out.push((
                AdminRecord {
                    peer: c.peer,
                    rbuf: c.rbuf.clone(),
                    wbuf: c.wbuf[c.woff..].to_vec(),
                    close: c.close,
                    close_pending: c.close_pending,
                    phase: c.phase,
                    in_phase_ms: u64::try_from(now.duration_since(c.since).as_millis())
                        .unwrap_or(u64::MAX),
                    stream: c.stream,
                },
                c.sock.raw_fd(),
            ));
        }
        if left > 0 {
            warn!("handover: {left} admin connections cannot go to the new process (TLS, or an answer held): closed when this one exits");
        }
        out
    }

    /// In a successor, before the loop: the connections the old process handed over.
    pub(super) fn adopt(&mut self, records: Vec<(AdminRecord, OwnedFd)>) {
        let now = Instant::now();
        for (r, fd) in records {
            let std_sock = std::net::TcpStream::from(fd);
            if std_sock.set_nonblocking(true).is_err() {
                continue;
            }
            let mut sock = mio::net::TcpStream::from_std(std_sock);
            let entry = self.conns.vacant_entry();
            if self
                .poll
                .registry()
                .register(
                    &mut sock,
                    Token(entry.key()),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            entry.insert(AdminConn {
                sock: AdminStream::plain(sock),
                peer: r.peer,
                rbuf: r.rbuf,
                wbuf: r.wbuf,
                woff: 0,
                close: r.close,
                close_pending: r.close_pending,
                held: VecDeque::new(),
                phase: r.phase,
                since: now
                    .checked_sub(Duration::from_millis(r.in_phase_ms))
                    .unwrap_or(now),
                chunked: None,
                stream: r.stream,
            });
            *self.per_ip.entry(r.peer).or_insert(0) += 1;
            if r.stream {
                self.stream_started();
            }
        }
    }
}
