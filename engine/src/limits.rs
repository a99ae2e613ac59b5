//! Every bound, budget and fixed timeout of the server, named once, each with its value
//! and what it bounds. The bounds a deployment tunes are configuration keys instead
//! (`config/`: each key with its doc, and its default in `config/defaults.rs`); the
//! README's "Limits and abuse" table lists both, with what a client gets when it hits one.
//!
//! # The descriptor budget
//!
//! How many subscriber connections fit in `RLIMIT_NOFILE` after everything else the
//! process needs is kept aside.
//!
//! Subscriber sockets, admin connections, the control socket, Redis links and the disk
//! store's files share one descriptor table. If subscribers could take all of it, the
//! admin port and the control socket would stop answering exactly when they are needed
//! (the table full, "too many connections" never sent). So the server reads the limit at
//! start, reserves what the rest needs, and `max_connections` defaults to what is left (a
//! configured value above it is refused). Subscriber accepts reserve their slot before
//! they accept ([`crate::shared::Shared::reserve_conns`]), so the table never fills.
//!
//! With io_uring direct descriptors (`backend = "uring"`, `uring_direct = true`)
//! subscriber sockets live in each ring's own table, capped at `RLIMIT_NOFILE` per worker:
//! the budget is then `workers x that` (less room for refusals), each worker keeps to
//! its own table, and the process table keeps its reserve.

use std::time::Duration;

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

// ------------------------------------------------------------ ports and accepting

/// Listen backlog of the subscriber and admin sockets.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Most `[[listener]]` entries.
pub const MAX_LISTENERS: usize = 16;
/// TLS 1.3 session tickets sent after each full handshake (each resumes one reconnect).
pub const TLS13_TICKETS: usize = 2;
/// TLS 1.2 sessions remembered by id for clients without ticket support (tickets, which
/// keep nothing on the server, are used by every current client).
pub const TLS12_SESSION_CACHE: usize = 1024;

/// Most connections accepted per turn.
pub const ACCEPT_BATCH: usize = 512;

/// Accept errors are logged at most once per this interval.
pub const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Access-log lines queued for the writer thread; past this a worker drops the line (and
/// counts it) rather than wait for the disk.
pub const ACCESS_LOG_QUEUE: usize = 65_536;

/// Longest request path kept in an access-log line (bytes; longer ones are cut).
pub const ACCESS_LOG_PATH_BYTES: usize = 512;

// ------------------------------------------------------------ workers

/// Size of the per-worker read buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// Most bytes read from one connection per turn.
pub const READ_BUDGET: usize = 256 * 1024;

/// Most consecutive messages of one channel delivered together (one write per subscriber).
pub const DELIVER_BATCH: usize = 64;

/// permessage-deflate: a message (its JSON) shorter than this goes out uncompressed (RSV1
/// clear is allowed per message): below it deflate saves a few bytes at most and costs
/// the client an inflate (see the bench `deflate/envelope`).
pub const DEFLATE_MIN_BYTES: usize = 128;

/// permessage-deflate: zlib's compression level (1 fastest .. 9 smallest). Each message
/// is compressed once for all its subscribers, so this is a per-message cost, not a
/// per-subscriber one. Level 1 (zlib-rs' "quick": static Huffman codes only) hardly
/// shrinks small JSON (a 301-byte envelope to 91%); level 2 gets level 6's ratio on it
/// (74%; a 1.7 KB one to 26% against 25%) at about half level 6's time (bench
/// `deflate/envelope`).
pub const DEFLATE_LEVEL: u32 = 2;

/// The worker's inflate buffer keeps up to this much capacity between client messages
/// (a larger one, after a large message, is freed).
pub const INFLATE_KEEP_BYTES: usize = 64 * 1024;

/// Most inbox commands handled per turn.
pub const INBOX_BATCH: usize = 1024;

/// Most queued buffers offered to the backend at once.
pub const WORKER_MAX_IOV: usize = 64;

/// Upper bound on header fields (the configured `max_headers` is at most this).
pub const HEADERS_CAP: usize = 256;

/// Most commands queued for one worker; a publish that would pass it is refused with 503
/// rather than letting memory grow without bound.
pub const MAX_INBOX: usize = 1 << 20;

// ------------------------------------------------------------ client operations

/// Refusals past a rate limit after which a connection is closed.
pub const REFUSALS_BEFORE_CLOSE: u32 = 100;

/// How often idle rate-limit buckets are dropped.
pub const LIMITER_SWEEP: Duration = Duration::from_secs(1);

/// The soonest a token check is scheduled again.
pub const MIN_CHECK_DELAY: Duration = Duration::from_millis(20);

/// WebSocket `pub` ops one connection may have waiting for their outcome (their ids are
/// kept to answer them); past it the oldest id is forgotten (its answer has no `id`).
pub const MAX_PENDING_PUBS: usize = 1024;

/// Longest `info` claim of a token (bytes of JSON), shown by presence.
pub const MAX_INFO_LEN: usize = 1024;

/// Most members listed by one presence answer (the count is always whole).
pub const MAX_PRESENCE_LIST: usize = 1000;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Longest `sub` claim (it is stamped on every message the client publishes).
pub const MAX_SUB_LEN: usize = 256;

// ------------------------------------------------------------ Socket.IO

/// Longest `socketio_path`.
pub const MAX_SOCKETIO_PATH: usize = 64;

/// `socketio_max_payload` bounds (bytes of one POST body or WebSocket message).
pub const SOCKETIO_PAYLOAD_RANGE: std::ops::RangeInclusive<usize> = 64..=16 * 1024 * 1024;

/// Most Engine.IO packets in one polling request body.
pub const SOCKETIO_MAX_PACKETS: usize = 1024;

/// Most namespaces one Engine.IO session may have connected at once.
pub const SOCKETIO_MAX_NAMESPACES: usize = 8;

/// Longest event name (bytes) of an admin `event=` or a client emit.
pub const SOCKETIO_MAX_EVENT: usize = 128;

/// Bytes of packets a polling session may have waiting for its next GET; past it the
/// session is closed as a slow consumer. The larger of this and `slow_consumer_bytes`.
pub const SOCKETIO_MIN_QUEUE: usize = 64 * 1024;

/// A forwarded polling request (to the worker that holds its session) not answered
/// within `pingInterval` plus this is answered 504.
pub const SOCKETIO_FORWARD_WAIT: Duration = Duration::from_secs(10);

/// Most connection-state-recovery records a process keeps (the oldest go first).
pub const SOCKETIO_MAX_RECOVERY: usize = 100_000;

/// A session that has not connected a namespace within this is closed (socket.io's
/// `connectTimeout`).
pub const SOCKETIO_CONNECT_TIMEOUT: Duration = Duration::from_secs(45);

/// Conformance mode (`socketio_test`): the connect timeout.
pub const SOCKETIO_TEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes a probing WebSocket keeps of what its client sends after `5` while its
/// session is on its way from another worker.
pub const SOCKETIO_MAX_EARLY: usize = 1 << 20;

/// Conformance mode (`socketio_test`): the test suites' ping interval and timeout.
pub const SOCKETIO_TEST_PING: (Duration, Duration) =
    (Duration::from_millis(300), Duration::from_millis(200));

/// Most client publishes one Socket.IO session may have waiting for their outcome (disk
/// store, cluster); past it a publish is refused 429.
pub const SOCKETIO_MAX_PENDING_ACKS: usize = 256;

/// Conformance mode (`socketio_test`): how long after its CONNECT answer a namespace's
/// `auth` event goes out (the test suites read one write at a time).
pub const SOCKETIO_LATER_DELAY: Duration = TICK.saturating_mul(2);

// ------------------------------------------------------------ timers

/// Length of one tick. Timers fire at most one tick late.
pub const TICK: Duration = Duration::from_millis(10);

/// Slots in the wheel (a power of two): one revolution is `SLOTS * TICK` (~41 s).
pub const TIMER_SLOTS: usize = 4096;

// ------------------------------------------------------------ channels

/// Channels checked per [`Hub::sweep`] call (the sweep walks the table incrementally).
pub const SWEEP_BATCH: usize = 4096;

/// Most channels returned by one listing.
pub const MAX_LISTING: usize = 100_000;

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// How often idle channels are swept.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

// ------------------------------------------------------------ admin port

/// Most bytes of output queued per admin connection before it stops reading.
pub const MAX_ADMIN_OUTPUT: usize = 4 * 1024 * 1024;

/// Most answers held for one connection before it stops being read.
pub const MAX_HELD_ANSWERS: usize = 65_536;

/// How often the admin thread looks for timed-out connections.
pub const ADMIN_TIMEOUT_CHECK: Duration = Duration::from_millis(100);

/// Bytes read from one admin connection at a time.
pub const ADMIN_READ_CHUNK: usize = 64 * 1024;

/// Default and largest `limit` of `/channels`.
pub const DEFAULT_LISTING: usize = 1000;

/// Longest `prefix` of `/channels`.
pub const MAX_PREFIX: usize = 128;

/// Longest `ttl` accepted by `/sign` (seconds).
pub const MAX_TOKEN_TTL: u64 = 366 * 86_400;

/// How often `/events` sends a snapshot.
pub const EVENTS_EVERY: Duration = Duration::from_secs(1);

/// `/events` gives no rate over a longer span than this (the first snapshot after a
/// pause).
pub const EVENTS_MAX_RATE_SPAN: Duration = Duration::from_secs(5);

// ------------------------------------------------------------ control socket

/// Most control connections at once.
pub const MAX_CONTROL_CONNS: usize = 32;

/// Default and largest `conns` listing.
pub const CTL_DEFAULT_CONNS: usize = 100;

/// Largest `conns` limit.
pub const MAX_CONNS_LISTING: usize = 100_000;

/// How long `conns` and `kick` wait for a worker to answer.
pub const WORKER_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Hot handover: descriptors passed in one `sendmsg` (SCM_RIGHTS), well under the
/// kernel's limit of 253 per message.
pub const HANDOVER_FDS_PER_MSG: usize = 200;

/// Hot handover: how long the old process waits for each step of its successor (its
/// hello, its final ok) and for its workers to freeze, before it calls the handover off
/// and goes on serving.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Hot handover: how long the old process keeps trying to freeze while something that
/// cannot be handed over is in progress (a client publish or a Redis read in flight, a
/// TLS handshake), thawing between attempts; the last attempt closes the TLS handshakes
/// still in progress.
pub const HANDOVER_SETTLE: Duration = Duration::from_secs(3);

/// Hot handover: the pause between two freeze attempts.
pub const HANDOVER_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Hot handover of a cluster node: how long the freeze waits for the WebSocket clients'
/// publishes and the subscriptions' reads already handed to Redis to be answered (one
/// helper round trip: a connect and two attempts, each bounded by the Redis timeouts);
/// past it the handover is called off ("... in flight: retry").
pub const HANDOVER_REDIS_WAIT: Duration = Duration::from_secs(3);

/// Hot handover: the largest message on the handover socket (a batch of records with
/// their unparsed input and unwritten output).
pub const HANDOVER_MAX_FRAME: usize = 1 << 30;

/// Longest `drain` wait.
pub const MAX_DRAIN_WAIT_SECS: u64 = 3600;

// ------------------------------------------------------------ shutdown and the disk store

/// How often the waiting main thread checks whether a drain has finished.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Longest wait for a disk-store commit by a thread that answers after it.
pub const STORE_WAIT: Duration = Duration::from_secs(10);

/// How long a draining cluster node waits for its acknowledged publishes to come back
/// through the feed before it closes its subscribers.
pub const DRAIN_FEED_WAIT: Duration = Duration::from_secs(2);

/// Attempts at writing one batch before the store is declared failed.
pub const STORE_WRITE_ATTEMPTS: u32 = 5;

/// Pause between those attempts.
pub const STORE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Most ops written in one batch (a larger queue is written in several).
pub const STORE_MAX_BATCH_OPS: usize = 65_536;

// ------------------------------------------------------------ memory

/// Frees (connections closed, channels dropped) on a thread after which it gives
/// memory back.
pub const RELEASE_AFTER_FREES: u64 = 1024;

/// How often a thread looks at its free count (mimalloc's own delay is 10-100 ms).
pub const RELEASE_CHECK: Duration = Duration::from_secs(1);

/// Checks in a row that give memory back once a thread has freed in bulk (what other
/// threads still held for it comes back in the later ones).
pub const RELEASE_ROUNDS: u8 = 3;

/// Tables with room for more than this many entries shrink when three quarters empty.
pub const SHRINK_ABOVE: usize = 4096;

// ------------------------------------------------------------ bounds on configuration values

/// Largest value accepted for any `*_secs` key (one year).
pub const MAX_SECS: f64 = 365.0 * 86_400.0;

/// Largest `history_size`.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

/// Largest `max_message_bytes` (the conformance suite needs 16 MiB messages).
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Most worker threads.
pub const MAX_WORKERS: usize = 256;

/// Largest `admin_max_connections`.
pub const MAX_ADMIN_CONNECTIONS: usize = 65_536;

/// Largest `max_channels_per_conn`.
pub const MAX_CHANNELS_PER_CONN: usize = 1024;

/// Smallest `max_message_bytes` (a WebSocket control frame's payload).
pub const MIN_MESSAGE_BYTES: usize = 125;

/// Smallest `slow_consumer_bytes`.
pub const MIN_SLOW_CONSUMER_BYTES: usize = 4096;

/// The range of `max_head_bytes`.
pub const HEAD_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=1 << 20;

/// Fewest `max_headers` (the most is [`HEADERS_CAP`]).
pub const MIN_HEADERS: usize = 8;

/// Longest `accept_pause_ms`.
pub const MAX_ACCEPT_PAUSE_MS: u64 = 60_000;

/// Highest per-second rate of the rate-limit keys.
pub const MAX_RATE: f64 = 1e6;

/// The smallest RSA modulus accepted for `RS256` keys (`token_public_key`, `token_jwks`),
/// in bits.
pub const MIN_RSA_BITS: usize = 2048;

// ------------------------------------------------------------ redis

/// How often a node reports its subscriber counts.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A Redis link unused for this long is checked with a `PING` before a request.
pub const LINK_CHECK_AFTER: Duration = Duration::from_secs(1);

/// A node whose last report is older than this is considered gone.
pub const NODE_TTL: u64 = 5;

/// Most jobs waiting for the helper thread; past it a worker's request is answered 503.
pub const MAX_HELPER_JOBS: usize = 65_536;

/// The feed is pinged after this long without traffic, to notice a dead link.
pub const FEED_IDLE_PING: Duration = Duration::from_secs(5);

/// Channels re-seeded / filled in per Redis call after a reconnect.
pub const RESEED_BATCH: usize = 500;

/// How long connecting to Redis may take.
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Read and write timeout of the command connections.
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(1);

/// First reconnect backoff after a failed connect.
pub const REDIS_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Largest reconnect backoff.
pub const REDIS_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Most jobs sent in one pipeline.
pub const HELPER_BATCH: usize = 512;

/// How often reads waiting for Redis are tried again.
pub const HELPER_RETRY_PAUSE: Duration = Duration::from_millis(100);

// ------------------------------------------------------------ reactor backends

/// Readiness events fetched per wait.
pub const EPOLL_EVENTS: usize = 1024;

/// Most buffers in one `writev`.
pub const EPOLL_MAX_IOV: usize = 64;

/// Submission queue entries per worker ring.
pub const URING_SQ_ENTRIES: u32 = 4096;

/// Completion queue size as a multiple of the submission queue.
pub const URING_CQ_FACTOR: u32 = 4;

/// Completions copied out of the ring and handled at a time (a turn handles batch after
/// batch until the queue is empty).
pub const URING_REAP_BATCH: usize = 256;

/// Provided buffers per worker (a power of two). The kernel takes them in ring order, so
/// a worker that has read from a few hundred connections has written every one of them:
/// they are resident memory of every busy worker (64 x 4 KB, 256 KB; 128 cost 512 KB,
/// 27 B per connection more at 19,000 idle WebSockets on two workers). A receive that
/// finds none free is retried on the next turn.
pub const URING_BUFFERS: u16 = 64;

/// Size of each provided buffer.
pub const URING_BUFFER_SIZE: usize = 4096;

/// Most buffers gathered into one SENDMSG.
pub const URING_MAX_SEND_IOV: usize = 64;

/// Send ops kept for reuse per worker (each ~150 B plus its vectors' capacity): enough
/// for a burst of small sends; a fan-out to more subscribers allocates the rest.
pub const URING_SEND_POOL: usize = 256;

/// How long a send may still run after its connection was closed (the peer then gets
/// what was written before the close, as with epoll) before it is cancelled.
pub const URING_CLOSE_SEND_GRACE: Duration = Duration::from_secs(2);

/// How long shutdown waits for in-flight operations.
pub const URING_SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Hot handover: how long an io_uring worker waits for the operations it cancelled to
/// complete (`Backend::quiesce`), and for the descriptors it installs for the successor,
/// before it calls the handover off.
pub const URING_QUIESCE_WAIT: Duration = Duration::from_secs(2);

/// How long a peer-address lookup on a direct descriptor (`ctl conns`) waits for the
/// descriptor it installs for the moment.
pub const URING_INSTALL_WAIT: Duration = Duration::from_millis(200);

// ------------------------------------------------------------ the descriptor budget

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
    let mut reserved: u64 = FD_BASE
        + workers as u64 * FD_PER_WORKER
        + FD_ADMIN
        + cfg.admin_max_connections as u64
        + FD_CONTROL
        + MAX_CONTROL_CONNS as u64;
    // A worker holds one socket per listener beyond the first too.
    reserved += workers as u64 * cfg.listeners().len().saturating_sub(1) as u64;
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
