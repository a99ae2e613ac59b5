//! The successor's side of a hot handover: hello, the header and the listeners, then the
//! connection records batch by batch, then `ok` once it serves.

use serde_json::Value;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::wire::{recv_msg, send_msg};
use super::{Message, Record, FD_ENV, TEST_EXIT_AFTER_ENV};
use crate::epoch::Epoch;
use crate::limits::HANDOVER_TIMEOUT;
use crate::store::{Loaded, LoadedChannel, LoadedIdem};
use crate::{info, warn};

/// What a successor received from the old process.
pub struct Taken {
    /// The handover socket, to say `ok` on.
    pub sock: UnixStream,
    /// Per listener id, one socket per worker.
    pub listeners: Vec<Vec<std::net::TcpListener>>,
    /// The admin listener.
    pub admin: std::net::TcpListener,
    /// The hub's streams.
    pub loaded: Loaded,
    /// How many connection records follow ([`receive_records`]).
    pub records: usize,
    /// When the handover began here.
    pub started: Instant,
    /// Process-wide state beyond the hub ([`import_extra`]).
    pub extra: serde_json::Map<String, Value>,
    /// The admin port's open connections.
    pub admin_conns: Vec<(crate::admin::handover::AdminRecord, OwnedFd)>,
}

pub(super) fn refuse(sock: &UnixStream, reason: String) -> String {
    let _ = send_msg(
        sock,
        &Message::Error {
            reason: reason.clone(),
        },
        &[],
    );
    reason
}

/// In a successor (`PUSHEDGE_HANDOVER_FD` set): says hello and receives the listeners,
/// the hub and the connections. `workers` and `listeners` are this process's counts:
/// they must be the old process's.
pub fn receive(fd: &str, workers: usize, listeners: usize) -> Result<Taken, String> {
    let sock = handover_socket(fd)?;
    let started = Instant::now();
    let io_err = |e: io::Error| format!("handover: {e}");
    send_msg(
        &sock,
        &Message::Hello {
            pid: std::process::id(),
        },
        &[],
    )
    .map_err(io_err)?;
    let (header, _) = recv_msg(&sock).map_err(io_err)?;
    let Message::Header {
        workers: theirs,
        listeners: ids,
        channels,
        idem,
        records: total,
        admin_conns: admin_total,
        extra,
    } = header
    else {
        return Err(refuse(&sock, "expected the handover header".into()));
    };
    if theirs != workers {
        return Err(refuse(
            &sock,
            format!("the old process has {theirs} workers, this one {workers}: keep `workers` unchanged across an upgrade"),
        ));
    }
    let mut fds = Vec::new();
    while fds.len() < ids.len() + 1 {
        let (m, more) = recv_msg(&sock).map_err(io_err)?;
        if !matches!(m, Message::Sockets) || more.is_empty() {
            return Err(refuse(&sock, "expected the listener sockets".into()));
        }
        fds.extend(more);
    }
    let admin = std::net::TcpListener::from(fds.pop().ok_or("no admin listener")?);
    let admin_conns = receive_admin_conns(&sock, admin_total)?;
    let listener_socks = by_listener(&sock, ids, fds, workers, listeners)?;
    Ok(Taken {
        sock,
        listeners: listener_socks,
        admin,
        loaded: loaded_from(channels, idem),
        records: total,
        started,
        extra,
        admin_conns,
    })
}

/// This process's end of the old process's socket pair, from `PUSHEDGE_HANDOVER_FD`.
fn handover_socket(fd: &str) -> Result<UnixStream, String> {
    let fd: RawFd = fd
        .trim()
        .parse()
        .map_err(|_| format!("{FD_ENV}={fd} is not a descriptor"))?;
    // SAFETY: FD_CLOEXEC is set on a descriptor number; a bad one just fails.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(format!("{FD_ENV}={fd}: {}", io::Error::last_os_error()));
    }
    // SAFETY: the old process passed this descriptor, our end of its socket pair, to this
    // process only; nothing else here owns it.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = sock.set_read_timeout(Some(HANDOVER_TIMEOUT));
    let _ = sock.set_write_timeout(Some(HANDOVER_TIMEOUT));
    Ok(sock)
}

/// The admin port's open connections, each with its socket.
fn receive_admin_conns(
    sock: &UnixStream,
    total: usize,
) -> Result<Vec<(crate::admin::handover::AdminRecord, OwnedFd)>, String> {
    let mut conns = Vec::with_capacity(total);
    while conns.len() < total {
        let (m, more) = recv_msg(sock).map_err(|e| format!("handover: {e}"))?;
        let Message::Admin { records } = m else {
            return Err(refuse(sock, "expected the admin connections".into()));
        };
        if records.len() != more.len() {
            return Err(refuse(
                sock,
                "admin connections without their sockets".into(),
            ));
        }
        conns.extend(records.into_iter().zip(more));
    }
    Ok(conns)
}

/// The listener sockets (`ids`: listener id and worker of each) as this configuration has
/// them: per listener id, one per worker; a mismatch is refused.
fn by_listener(
    sock: &UnixStream,
    ids: Vec<(crate::reactor::ListenerId, usize)>,
    fds: Vec<OwnedFd>,
    workers: usize,
    listeners: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    let mut by_id: Vec<Vec<Option<std::net::TcpListener>>> = (0..listeners)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    for ((id, w), fd) in ids.into_iter().zip(fds) {
        let Some(slot) = by_id.get_mut(usize::from(id)).and_then(|l| l.get_mut(w)) else {
            return Err(refuse(
                sock,
                format!("listener {id} of the old process is not in this configuration: keep the listeners unchanged across an upgrade"),
            ));
        };
        *slot = Some(std::net::TcpListener::from(fd));
    }
    let mut out = Vec::with_capacity(listeners);
    for (id, socks) in by_id.into_iter().enumerate() {
        let all: Option<Vec<_>> = socks.into_iter().collect();
        let Some(all) = all else {
            return Err(refuse(
                sock,
                format!("listener {id} of this configuration is not in the old process: keep the listeners unchanged across an upgrade"),
            ));
        };
        out.push(all);
    }
    Ok(out)
}

/// The hub's streams and idempotency records from the header.
fn loaded_from(channels: Vec<super::SnapChannel>, idem: Vec<super::SnapIdem>) -> Loaded {
    Loaded {
        channels: channels
            .into_iter()
            .map(|c| LoadedChannel {
                name: c.name,
                epoch: Epoch::parse(&c.epoch).unwrap_or(Epoch::NONE),
                seq: c.seq,
                history: c.history,
            })
            .collect(),
        idem: idem
            .into_iter()
            .map(|r| LoadedIdem {
                channel: r.channel,
                key: r.key,
                epoch: Epoch::parse(&r.epoch).unwrap_or(Epoch::NONE),
                seq: r.seq,
                expires: r.expires,
            })
            .collect(),
    }
}

/// In a successor, once its workers exist: receives the `total` connection records batch
/// by batch and hands each, with its socket, to `each` (the worker's backend takes the
/// descriptor over at once, so at most one batch of descriptors is open here beyond what
/// the backend holds: io_uring's direct descriptors hold none). An error of `each` is one
/// connection lost (logged); an error here ends the handover.
pub fn receive_records(
    sock: &UnixStream,
    total: usize,
    workers: usize,
    mut each: impl FnMut(Record, Option<OwnedFd>),
) -> Result<(), String> {
    let io_err = |e: io::Error| format!("handover: {e}");
    let exit_after: Option<usize> = std::env::var(TEST_EXIT_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let mut got = 0;
    while got < total {
        let (m, fds) = recv_msg(sock).map_err(io_err)?;
        let Message::Batch { records: batch } = m else {
            return Err(refuse(sock, "expected a batch of records".into()));
        };
        if batch.iter().filter(|r| r.has_sock).count() != fds.len() {
            return Err(refuse(sock, "a batch without one socket per record".into()));
        }
        if let Some(r) = batch.iter().find(|r| r.worker >= workers) {
            return Err(refuse(sock, format!("a record of worker {}", r.worker)));
        }
        got += batch.len();
        let mut fds = fds.into_iter();
        for r in batch {
            let fd = if r.has_sock { fds.next() } else { None };
            each(r, fd);
        }
        if exit_after.is_some_and(|n| got >= n) {
            crate::error!("handover: {TEST_EXIT_AFTER_ENV}: exiting after {got} records");
            // SAFETY: ends the process at once, as a crash would (tests).
            unsafe { libc::_exit(3) };
        }
    }
    Ok(())
}

/// In a successor serving everything: tells the old process to exit.
pub fn confirm(sock: &UnixStream, count: usize, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match send_msg(sock, &Message::Ok, &[]) {
        Ok(()) => info!(
            "handover: pid {} took over {count} connections in {ms:.1} ms",
            std::process::id()
        ),
        Err(e) => warn!("handover: cannot tell the old process to exit: {e}"),
    }
}
