//! The descriptor budget: how many subscriber connections fit in `RLIMIT_NOFILE` after
//! everything else the process needs is kept aside.
//!
//! Subscriber sockets, admin connections, the control socket, Redis links and the disk
//! store's files share one descriptor table. If subscribers could take all of it, the
//! admin port and the control socket would stop answering exactly when they are needed
//! (the table full, "too many connections" never sent). So the server reads the limit at
//! start, reserves what the rest needs, and `max_connections` defaults to what is left (a
//! configured value above it is refused). Subscriber accepts reserve their slot before
//! they accept ([`crate::server::Shared::reserve_conns`]), so the table never fills.
//!
//! With io_uring direct descriptors (`backend = "uring"`, `uring_direct = true`)
//! subscriber sockets live in each ring's own table, capped at `RLIMIT_NOFILE` per worker:
//! the budget is then `workers x that` (less room for refusals), each worker keeps to
//! its own table, and the process table keeps its reserve.

use crate::config::{Config, HistoryStore};

/// The process itself: standard streams, the log, the signal thread, files read from
/// `/proc`, and spare.
pub const FD_BASE: u64 = 64;
/// Connections a full worker still accepts per turn, only to answer them 503.
pub const REJECT_BATCH: usize = 16;
/// Per worker: its epoll (or ring) descriptor, its waker, its listener, one spare, and
/// room for the [`REJECT_BATCH`] refused connections it may hold for a moment.
pub const FD_PER_WORKER: u64 = 4 + REJECT_BATCH as u64;
/// The admin thread: listener, poll and waker (plus `admin_max_connections`).
pub const FD_ADMIN: u64 = 3;
/// The control socket's listener (plus `MAX_CONTROL_CONNS`).
pub const FD_CONTROL: u64 = 1;
/// Redis: the feed, its catch-up link, the publisher, the reporter, the helper, spare.
pub const FD_CLUSTER: u64 = 8;
/// Disk store: segment files kept open (fjall's `max_cached_files`).
pub const STORE_CACHED_FILES: usize = 128;
/// Disk store: those, its journals and lock files, spare.
pub const FD_STORE: u64 = STORE_CACHED_FILES as u64 + 32;
/// The fewest subscriber connections a budget may leave (else the server does not start).
pub const MIN_SUBSCRIBER_FDS: u64 = 16;

/// How the descriptor table is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// `RLIMIT_NOFILE` (soft).
    pub limit: u64,
    /// Kept for everything but subscriber sockets.
    pub reserved: u64,
    /// Subscriber connections that fit.
    pub connections: usize,
    /// Subscriber sockets are io_uring direct descriptors.
    pub direct: bool,
}

/// The process's `RLIMIT_NOFILE` (soft limit).
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// The budget for `cfg` with `workers` workers under `limit` descriptors. `ring_slots`:
/// each worker's own table when subscriber sockets are io_uring direct descriptors
/// ([`crate::reactor::Backend::slots`]).
pub fn fd_budget(cfg: &Config, workers: usize, limit: u64, ring_slots: Option<usize>) -> FdBudget {
    let mut reserved = FD_BASE
        + workers as u64 * FD_PER_WORKER
        + FD_ADMIN
        + cfg.admin_max_connections as u64
        + FD_CONTROL
        + crate::control::MAX_CONTROL_CONNS as u64;
    if !cfg.cluster.redis_url.is_empty() {
        reserved += FD_CLUSTER;
    }
    if cfg.history_store == HistoryStore::Disk {
        reserved += FD_STORE;
    }
    let connections = match ring_slots {
        Some(slots) => workers as u64 * slots as u64,
        None => limit.saturating_sub(reserved),
    };
    FdBudget {
        limit,
        reserved,
        connections: connections.min(usize::MAX as u64) as usize,
        direct: ring_slots.is_some(),
    }
}

impl FdBudget {
    /// Resolves `max_connections` (0 = the budget); an error when it is above the
    /// budget or the budget is too small to serve.
    pub fn resolve(&self, configured: usize) -> Result<usize, String> {
        if !self.direct && (self.connections as u64) < MIN_SUBSCRIBER_FDS {
            return Err(format!(
                "RLIMIT_NOFILE is {}: {} descriptors are kept for the admin port \
                 (admin_max_connections), the control socket, Redis and the disk store, \
                 which leaves {} for subscribers; raise `ulimit -n` or lower \
                 admin_max_connections",
                self.limit, self.reserved, self.connections
            ));
        }
        match configured {
            0 => Ok(self.connections),
            n if n > self.connections => Err(format!(
                "max_connections {n} is above what RLIMIT_NOFILE {} allows: {} after {} kept \
                 for the admin port, the control socket, Redis and the disk store; raise \
                 `ulimit -n` or lower max_connections (0 = the largest that fits)",
                self.limit, self.connections, self.reserved
            )),
            n => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_room_for_the_rest() {
        let cfg = Config::default();
        let b = fd_budget(&cfg, 2, 20_000, None);
        assert_eq!(b.reserved, 64 + 2 * 20 + 3 + 256 + 1 + 32);
        assert_eq!(b.connections as u64, 20_000 - b.reserved);
        assert_eq!(b.resolve(0), Ok(b.connections));
        assert_eq!(b.resolve(100), Ok(100));
        assert!(b
            .resolve(1_000_000)
            .unwrap_err()
            .contains("above what RLIMIT_NOFILE"));
        let mut disk = cfg.clone();
        disk.history_store = HistoryStore::Disk;
        disk.history_path = "/tmp/x".into();
        assert_eq!(
            fd_budget(&disk, 2, 20_000, None).reserved,
            b.reserved + FD_STORE
        );
        assert!(
            fd_budget(&cfg, 2, 300, None).resolve(0).is_err(),
            "too small to serve"
        );
        let u = fd_budget(&cfg, 4, 20_000, Some(19_968));
        assert!(u.direct);
        assert_eq!(u.connections, 4 * 19_968);
        assert!(fd_budget(&cfg, 2, 300, Some(268)).resolve(0).is_ok());
    }
}
