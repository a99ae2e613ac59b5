//! Hot handover: `ctl upgrade [--binary PATH]` (or SIGUSR2) starts a successor that takes
//! over the listeners, every established connection and every admin connection,
//! stop-the-world, so that nothing is lost and nothing is sequenced twice.
//!
//! ```text
//!   old process O                                   new process N
//!   socketpair, spawn PATH with O's arguments  -->  PUSHEDGE_HANDOVER_FD=<its end>
//!                                              <--  hello (its pid)
//!   freeze: the admin thread exports its connections and stops reading, publishes
//!   are refused (503, retry), every worker stops its I/O (`Backend::quiesce`),
//!   serializes its connections and blocks
//!   header (the hub's streams, listener ids, counts) + the listener and admin
//!   sockets + the admin connections                                            -->
//!   batches of records + their sockets (SCM_RIGHTS, HANDOVER_FDS_PER_MSG each;
//!   io_uring installs process descriptors for each batch only)                 -->
//!                                                   the hub from the snapshot; each
//!                                                   batch's sockets go to the workers'
//!                                                   backends as they come; then the
//!                                                   workers adopt the records (same
//!                                                   slot and generation), the control
//!                                                   socket is bound again
//!                                              <--  ok
//!   workers park, O exits 0 (nothing closed         serving
//!   that N holds)
//! ```
//!
//! A worker that holds something that cannot travel yet (a publish or a Redis read in
//! flight, a Socket.IO command between workers, a TLS handshake) answers "...: retry":
//! O thaws, waits [`HANDOVER_RETRY_PAUSE`] and freezes again, for up to
//! [`HANDOVER_SETTLE`]; the last attempt closes the TLS handshakes still in progress
//! (their clients have no connection yet) rather than be held off by a busy TLS port.
//!
//! Before N's `ok`, anything that goes wrong (N exits, the socket closes, a timeout of
//! [`HANDOVER_TIMEOUT`], something still in progress after the last attempt) thaws O:
//! its workers go on as if nothing happened, and the operator gets the error.
//!
//! Messages are length-prefixed JSON: an 8-byte head (body length, descriptor count,
//! little-endian u32s) sent with the frame's descriptors attached, then the body.

mod successor;
mod wire;

pub use successor::{confirm, receive, receive_records, Taken};
use wire::{recv_msg, send_msg};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

use crate::auth::Grant;
use crate::inbox::Cmd;
use crate::limits::{
    HANDOVER_FDS_PER_MSG, HANDOVER_RETRY_PAUSE, HANDOVER_SETTLE, HANDOVER_TIMEOUT,
};
use crate::reactor::ListenerId;
use crate::shared::Shared;
use crate::store::Loaded;
use crate::{info, warn};

/// The environment variable that tells a process it is a successor: the descriptor of its
/// end of the handover socket.
pub const FD_ENV: &str = "PUSHEDGE_HANDOVER_FD";

/// Tests only: the successor exits abruptly after receiving this many connection records.
pub const TEST_EXIT_AFTER_ENV: &str = "PUSHEDGE_HANDOVER_TEST_EXIT_AFTER";

/// Bytes as base64 in the JSON records.
pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// One connection as the successor needs it (its socket travels beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The worker that held it (the successor has the same number of workers).
    pub worker: usize,
    /// Its slot in that worker's table and its generation: kept, so that every token
    /// (and every Socket.IO sid, which encodes one) still names it.
    #[serde(default)]
    pub slot: usize,
    #[serde(default)]
    pub generation: u32,
    /// False for a record without a socket (a Socket.IO polling session): no descriptor
    /// travels with it.
    #[serde(default = "yes")]
    pub has_sock: bool,
    /// The listener it came from.
    pub listener: ListenerId,
    /// `State as u8`.
    pub state: u8,
    /// The connection's flag bits.
    pub flags: u8,
    /// The WebSocket session's byte.
    pub session: u8,
    /// The frame decoder's unfinished state (`Decoder::export`).
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub decoder: Vec<u8>,
    /// Subscriptions: channel name and the last seq delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subs: Vec<(String, u64)>,
    /// Received bytes not yet parsed.
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub rbuf: Vec<u8>,
    /// JSONP / iframe callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// The verified token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    /// The seq a held long-poll asked for.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub poll_seq: u64,
    /// The allowed `Origin` of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// After a token expired: milliseconds left for a `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_deadline_ms: Option<u64>,
    /// Milliseconds left on the connection's timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_ms: Option<u64>,
    /// The peer's address, when `max_connections_per_ip` counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Output the backend had not written yet.
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<u8>,
    /// The TLS layer's state (empty for a plain connection).
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<u8>,
    /// Input the backend had received and the worker not read yet.
    #[serde(with = "b64", default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<u8>,
    /// The Socket.IO part of the record (`transport::socketio`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sio: Option<Value>,
}

fn yes() -> bool {
    true
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A channel of the hub snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapChannel {
    name: String,
    epoch: String,
    seq: u64,
    history: Vec<(u64, String)>,
}

/// An idempotency record of the hub snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapIdem {
    channel: String,
    key: String,
    epoch: String,
    seq: u64,
    expires: u64,
}

/// What goes over the handover socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// N is up and asks for everything.
    Hello { pid: u32 },
    /// O's workers, listener sockets (`(listener id, worker)` in the order of the
    /// descriptors, then the admin listener) and the hub's streams.
    Header {
        workers: usize,
        listeners: Vec<(ListenerId, usize)>,
        channels: Vec<SnapChannel>,
        idem: Vec<SnapIdem>,
        records: usize,
        /// Admin connections (sent after the listeners).
        #[serde(default)]
        admin_conns: usize,
        /// Process-wide state beyond the hub, by part (see [`export_extra`]).
        #[serde(default)]
        extra: serde_json::Map<String, Value>,
    },
    /// Listener sockets (the header's, in order, then the admin listener), in batches.
    Sockets,
    /// Connection records, one descriptor each, in order.
    Batch { records: Vec<Record> },
    /// Admin connections, one descriptor each, in order.
    Admin {
        records: Vec<crate::admin::handover::AdminRecord>,
    },
    /// N serves.
    Ok,
    /// N cannot take over.
    Error { reason: String },
}

/// What a frozen worker hands over.
#[derive(Debug, Default)]
pub struct Frozen {
    /// Its listening sockets by listener id.
    pub listeners: Vec<(ListenerId, RawFd)>,
    /// Its connections, each with its socket (`-1` for a record without one).
    pub records: Vec<(Record, RawFd)>,
}

/// What a frozen worker is told next.
#[derive(Debug)]
pub enum Resume {
    /// Process descriptors for these of its sockets, to send (`Backend::handover_fds`):
    /// `None` when its sockets are descriptors already.
    Install {
        socks: Vec<RawFd>,
        reply: mpsc::Sender<Result<Option<Vec<OwnedFd>>, String>>,
    },
    /// The handover was called off: go on as if nothing happened.
    Thaw,
    /// The successor took over: stop without closing anything.
    Exit,
}

// ---- the admin thread's gate ----

const RUNNING: u8 = 0;
const REQUESTED: u8 = 1;
const FROZEN: u8 = 2;
const GONE: u8 = 3;

struct Gate {
    state: Mutex<u8>,
    cv: Condvar,
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate {
        state: Mutex::new(RUNNING),
        cv: Condvar::new(),
    })
}

type AdminConns = Vec<(crate::admin::handover::AdminRecord, RawFd)>;

/// The admin connections the frozen admin thread handed over (emptied on a thaw).
fn admin_conns() -> std::sync::MutexGuard<'static, AdminConns> {
    static CONNS: OnceLock<Mutex<AdminConns>> = OnceLock::new();
    CONNS
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

static ADMIN_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static BUSY: AtomicBool = AtomicBool::new(false);

static ADMIN_WAKER: OnceLock<std::sync::Arc<mio::Waker>> = OnceLock::new();

/// What wakes the admin thread for a freeze.
pub fn set_admin_waker(w: std::sync::Arc<mio::Waker>) {
    let _ = ADMIN_WAKER.set(w);
}

/// The admin thread's listening socket (handed to the successor).
pub fn set_admin_fd(fd: RawFd) {
    ADMIN_FD.store(fd, Ordering::Release);
}

/// Called by the admin thread between its turns: while a handover holds the world still
/// it reads nothing (what arrives waits in the kernel, and is read by whoever serves
/// next).
pub fn admin_gate(export: impl FnOnce() -> Vec<(crate::admin::handover::AdminRecord, RawFd)>) {
    let g = gate();
    let mut s = g.state.lock().unwrap_or_else(|p| p.into_inner());
    if *s != REQUESTED {
        return;
    }
    *admin_conns() = export();
    *s = FROZEN;
    g.cv.notify_all();
    while *s == FROZEN || *s == GONE {
        s = g.cv.wait(s).unwrap_or_else(|p| p.into_inner());
    }
}

fn set_gate(to: u8) {
    let g = gate();
    *g.state.lock().unwrap_or_else(|p| p.into_inner()) = to;
    g.cv.notify_all();
}

/// Asks the admin thread to stop and waits until it has.
fn freeze_admin() -> Result<(), String> {
    let g = gate();
    let mut s = g.state.lock().unwrap_or_else(|p| p.into_inner());
    *s = REQUESTED;
    if let Some(w) = ADMIN_WAKER.get() {
        let _ = w.wake();
    }
    let deadline = Instant::now() + HANDOVER_TIMEOUT;
    while *s == REQUESTED {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            *s = RUNNING;
            return Err("the admin thread did not stop".into());
        }
        s =
            g.cv.wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
    }
    Ok(())
}

// ---- the old process ----

/// Can this server be upgraded at all (before a successor is started)?
fn check_supported(shared: &Shared) -> Result<(), String> {
    // A cluster node hands over too: see `crate::cluster`, "Hot handover".
    if shared.draining.load(Ordering::SeqCst) {
        return Err("the server is draining: resume it first".into());
    }
    Ok(())
}

/// What the old process sends its successor.
struct Payload {
    workers: usize,
    listeners: Vec<(ListenerId, usize)>,
    listener_fds: Vec<RawFd>,
    records: Vec<(Record, RawFd)>,
}

/// Freezes every worker; on an error the ones frozen are thawed again.
fn freeze_workers(
    shared: &Shared,
    resumes: &mut Vec<mpsc::Sender<Resume>>,
    last: bool,
) -> Result<Payload, String> {
    let mut replies = Vec::new();
    for inbox in &shared.inboxes {
        let (tx, rx) = mpsc::channel();
        let (rtx, rrx) = mpsc::channel();
        inbox.push(Cmd::Freeze {
            reply: tx,
            resume: rrx,
            last,
        });
        resumes.push(rtx);
        replies.push(rx);
    }
    let mut payload = Payload {
        workers: shared.inboxes.len(),
        listeners: Vec::new(),
        listener_fds: Vec::new(),
        records: Vec::new(),
    };
    let mut failed = None;
    for (w, rx) in replies.into_iter().enumerate() {
        match rx.recv_timeout(HANDOVER_TIMEOUT) {
            Ok(Ok(frozen)) => {
                for (id, fd) in frozen.listeners {
                    payload.listeners.push((id, w));
                    payload.listener_fds.push(fd);
                }
                payload.records.extend(frozen.records);
            }
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some(format!("worker {w} did not freeze"))),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(payload),
    }
}

/// An error that goes away by itself in a moment (the worker says "retry").
fn is_transient(e: &str) -> bool {
    e.ends_with("retry")
}

fn thaw(shared: &Shared, resumes: &[mpsc::Sender<Resume>]) {
    if let Some(store) = shared.hub.store() {
        if let Err(e) = store.reopen(&shared.cfg.history_path) {
            // Publishes fail (503) from now on rather than be accepted unwritten.
            crate::error!("upgrade called off: cannot open the history store again: {e}");
        }
    }
    for r in resumes {
        let _ = r.send(Resume::Thaw);
    }
    admin_conns().clear();
    set_gate(RUNNING);
    shared.hub.set_frozen(false);
}

fn snapshot(loaded: Loaded) -> (Vec<SnapChannel>, Vec<SnapIdem>) {
    let channels = loaded
        .channels
        .into_iter()
        .map(|c| SnapChannel {
            name: c.name,
            epoch: c.epoch.as_str().to_string(),
            seq: c.seq,
            history: c.history,
        })
        .collect();
    let idem = loaded
        .idem
        .into_iter()
        .map(|r| SnapIdem {
            channel: r.channel,
            key: r.key,
            epoch: r.epoch.as_str().to_string(),
            seq: r.seq,
            expires: r.expires,
        })
        .collect();
    (channels, idem)
}

/// `ctl upgrade [PATH]` and SIGUSR2: hands everything to a new process running `binary`
/// (default: this executable) with this process's arguments. `Ok` means the successor
/// serves and this process is to exit now (status 0) without closing anything; on an
/// error this process goes on serving.
pub fn upgrade(shared: &Shared, binary: Option<&str>) -> Result<Value, String> {
    check_supported(shared)?;
    if BUSY.swap(true, Ordering::SeqCst) {
        return Err("an upgrade is already under way".into());
    }
    let r = run_upgrade(shared, binary);
    if let Err(e) = &r {
        warn!("upgrade failed: {e}, still serving");
        BUSY.store(false, Ordering::SeqCst);
    }
    r
}

fn run_upgrade(shared: &Shared, binary: Option<&str>) -> Result<Value, String> {
    use std::os::unix::process::CommandExt;
    let path = match binary {
        Some(p) => std::path::PathBuf::from(p),
        None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
    };
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
    let child_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(&path);
    cmd.args(std::env::args_os().skip(1))
        .env(FD_ENV, child_fd.to_string())
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; it clears
    // FD_CLOEXEC on the child's end of the socket pair only (a copy in the child).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    drop(theirs);
    info!(
        "upgrade: started {} as pid {}, handing over",
        path.display(),
        child.id()
    );
    let r = hand_over(shared, &ours, child.id());
    if r.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    r
}

fn hand_over(shared: &Shared, sock: &UnixStream, pid: u32) -> Result<Value, String> {
    let _ = sock.set_read_timeout(Some(HANDOVER_TIMEOUT));
    let _ = sock.set_write_timeout(Some(HANDOVER_TIMEOUT));
    let exited = |e: io::Error| format!("the new process (pid {pid}) did not take over: {e}");
    match recv_msg(sock).map_err(exited)? {
        (Message::Hello { .. }, _) => {}
        (other, _) => return Err(format!("the new process said {other:?} instead of hello")),
    }
    let started = Instant::now();
    let settle_until = started + HANDOVER_SETTLE;
    let mut resumes = Vec::new();
    let frozen = loop {
        // The admin port first (its publishers wait, unanswered, instead of getting a
        // 503), then the WebSocket clients' publishes (503, retry).
        freeze_admin()?;
        shared.hub.set_frozen(true);
        // Disk mode: what the store has queued is committed (and delivered) before the
        // workers freeze; the successor opens the store once this process has closed it.
        if let Some(store) = shared.hub.store() {
            store.commit_pending();
        }
        // The last attempt closes TLS handshakes still in progress (no client had a
        // connection yet; it retries), so that a busy TLS port cannot hold an upgrade
        // off for ever.
        let last = Instant::now() >= settle_until;
        resumes.clear();
        match freeze_workers(shared, &mut resumes, last) {
            Ok(p) => break Ok(p),
            Err(e) if !last && is_transient(&e) => {
                // A publish or a Redis read in flight, a TLS handshake: thaw, let it
                // finish, try again.
                thaw(shared, &resumes);
                std::thread::sleep(HANDOVER_RETRY_PAUSE);
            }
            Err(e) => break Err(e),
        }
    };
    let sent = frozen.and_then(|p| {
        if let Some(store) = shared.hub.store() {
            store.suspend()?;
        }
        send_all(shared, sock, p, &resumes, exited)
    });
    let count = match sent {
        Ok(n) => n,
        Err(e) => {
            thaw(shared, &resumes);
            return Err(e);
        }
    };
    match recv_msg(sock) {
        Ok((Message::Ok, _)) => {}
        Ok((Message::Error { reason }, _)) => {
            thaw(shared, &resumes);
            return Err(format!("the new process (pid {pid}) refused: {reason}"));
        }
        Ok((other, _)) => {
            thaw(shared, &resumes);
            return Err(format!("the new process said {other:?} instead of ok"));
        }
        Err(e) => {
            thaw(shared, &resumes);
            return Err(exited(e));
        }
    }
    for r in &resumes {
        let _ = r.send(Resume::Exit);
    }
    set_gate(GONE);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    info!("handover: {count} connections in {ms:.1} ms to pid {pid}; exiting");
    Ok(
        json!({"type": "ok", "upgraded": true, "pid": pid, "connections": count, "ms": ms, "exit": true}),
    )
}

/// The descriptors to send with a batch, in its order (one per record with a socket):
/// each worker's backend gives them for its own records (installed for the moment by
/// io_uring, whose sockets are direct descriptors; closed once `kept` is dropped).
fn descriptors(
    resumes: &[mpsc::Sender<Resume>],
    batch: &[Record],
    socks: &[RawFd],
    kept: &mut Vec<OwnedFd>,
) -> Result<Vec<RawFd>, String> {
    let mut out: Vec<RawFd> = Vec::with_capacity(batch.len());
    let mut at = 0;
    while at < batch.len() {
        let w = batch[at].worker;
        let end = at + batch[at..].iter().take_while(|r| r.worker == w).count();
        let wanted: Vec<RawFd> = (at..end)
            .filter(|&i| batch[i].has_sock)
            .map(|i| socks[i])
            .collect();
        at = end;
        if wanted.is_empty() {
            continue;
        }
        let resume = resumes.get(w).ok_or("a record of an unknown worker")?;
        let (tx, rx) = mpsc::channel();
        resume
            .send(Resume::Install {
                socks: wanted.clone(),
                reply: tx,
            })
            .map_err(|_| format!("worker {w} is gone"))?;
        match rx.recv_timeout(HANDOVER_TIMEOUT) {
            Ok(Ok(None)) => out.extend(wanted),
            Ok(Ok(Some(fds))) if fds.len() == wanted.len() => {
                out.extend(fds.iter().map(AsRawFd::as_raw_fd));
                kept.extend(fds);
            }
            Ok(Ok(Some(_))) => return Err(format!("worker {w} gave the wrong descriptors")),
            Ok(Err(e)) => return Err(format!("worker {w}: {e}")),
            Err(_) => return Err(format!("worker {w} did not give its descriptors")),
        }
    }
    Ok(out)
}

fn send_all(
    shared: &Shared,
    sock: &UnixStream,
    p: Payload,
    resumes: &[mpsc::Sender<Resume>],
    err: impl Fn(io::Error) -> String,
) -> Result<usize, String> {
    let admin_fd = ADMIN_FD.load(Ordering::Acquire);
    if admin_fd < 0 {
        return Err("the admin listener is not known".into());
    }
    let admin = std::mem::take(&mut *admin_conns());
    // Disk mode: the successor reads the streams from the store. A cluster node: each
    // stream where its handed-over subscribers are (the successor fills in the rest from
    // Redis, see `crate::cluster`).
    let (channels, idem) = match (shared.hub.store(), &shared.cluster) {
        (Some(_), _) => (Vec::new(), Vec::new()),
        (None, Some(_)) => snapshot(
            shared.hub.replica_snapshot(
                p.records
                    .iter()
                    .flat_map(|(r, _)| r.subs.iter().map(|(c, s)| (c.as_str(), *s))),
            ),
        ),
        (None, None) => snapshot(shared.hub.snapshot()),
    };
    let count = p.records.len();
    let header = Message::Header {
        workers: p.workers,
        listeners: p.listeners,
        channels,
        idem,
        records: count,
        admin_conns: admin.len(),
        extra: export_extra(shared)?,
    };
    let mut fds = p.listener_fds;
    fds.push(admin_fd);
    send_msg(sock, &header, &[]).map_err(&err)?;
    for chunk in fds.chunks(HANDOVER_FDS_PER_MSG) {
        send_msg(sock, &Message::Sockets, chunk).map_err(&err)?;
    }
    for chunk in admin.chunks(HANDOVER_FDS_PER_MSG) {
        let (records, fds): (Vec<_>, Vec<RawFd>) = chunk.iter().cloned().unzip();
        send_msg(sock, &Message::Admin { records }, &fds).map_err(&err)?;
    }
    let mut records = p.records;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(HANDOVER_FDS_PER_MSG));
        let (batch, socks): (Vec<Record>, Vec<RawFd>) = records.into_iter().unzip();
        let mut kept = Vec::new();
        let fds = descriptors(resumes, &batch, &socks, &mut kept)?;
        send_msg(sock, &Message::Batch { records: batch }, &fds).map_err(&err)?;
        drop(kept);
        records = rest;
    }
    Ok(count)
}

/// Process-wide state beyond the hub and the connections, by part: Socket.IO's kept
/// recoveries (`"sio"`), a cluster node's id and stream floors (`"cluster"`).
fn export_extra(shared: &Shared) -> Result<serde_json::Map<String, Value>, String> {
    let mut m = serde_json::Map::new();
    m.insert(
        "sio".into(),
        crate::transport::socketio::export_shared(shared)?,
    );
    if shared.cluster.is_some() {
        m.insert(
            crate::cluster::handover::EXTRA_KEY.into(),
            crate::cluster::handover::export(shared),
        );
    }
    Ok(m)
}

/// In a successor, once `Shared` exists and before the workers adopt their connections:
/// what [`export_extra`] took.
pub fn import_extra(shared: &Shared, mut extra: serde_json::Map<String, Value>) {
    if let Some(v) = extra.remove("sio") {
        if let Err(e) = crate::transport::socketio::import_shared(shared, v) {
            warn!("handover: Socket.IO state lost: {e}");
        }
    }
    if let Some(v) = extra.remove(crate::cluster::handover::EXTRA_KEY) {
        if let Err(e) = crate::cluster::handover::import(shared, v) {
            warn!("handover: the cluster's stream floors lost: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<std::fs::File> = (0..3).map(|_| tempfile_like()).collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_msg(&a, &Message::Hello { pid: 7 }, &fds).unwrap();
        send_msg(&a, &Message::Ok, &[]).unwrap();
        let (m, got) = recv_msg(&b).unwrap();
        assert!(matches!(m, Message::Hello { pid: 7 }));
        assert_eq!(got.len(), 3);
        let (m, got) = recv_msg(&b).unwrap();
        assert!(matches!(m, Message::Ok));
        assert!(got.is_empty());
        drop(a);
        assert!(recv_msg(&b).is_err());
    }

    fn tempfile_like() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = Record {
            worker: 1,
            slot: 3,
            generation: 9,
            has_sock: true,
            listener: 0,
            state: 1,
            flags: 8,
            session: 0,
            decoder: vec![1, 2, 3],
            subs: vec![("news".into(), 4)],
            rbuf: b"GET /".to_vec(),
            callback: None,
            grant: None,
            poll_seq: 0,
            origin: None,
            token_deadline_ms: None,
            timer_ms: Some(1500),
            ip: Some("127.0.0.1".parse().unwrap()),
            pending: vec![0, 255],
            tls: Vec::new(),
            input: b"more".to_vec(),
            sio: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&j).unwrap();
        assert_eq!(back.decoder, r.decoder);
        assert_eq!(back.pending, r.pending);
        assert_eq!(back.subs, r.subs);
    }
}
