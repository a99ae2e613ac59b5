//! Startup, the shared state, and shutdown.
//!
//! `serve` binds everything first (so a bad address fails before any thread starts),
//! prints one `ready` line with the actual addresses (tests start the server on port 0
//! and read it), starts the workers, the admin thread, the control thread and the signal
//! thread, then waits for a shutdown request: SIGTERM/SIGINT or `shutdown` on the control
//! socket. Shutdown drains (stop accepting, close WebSockets with 1001, end streams and
//! polls) for at most `drain_timeout_secs`, then stops the workers and exits.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crate::cluster::Cluster;
use crate::config::{self, AuthMode, Config, Live};
use crate::config::{BackendKind, HistoryStore, UringArm};
use crate::hub::{Hub, HubConfig};
use crate::inbox::{Cmd, Inbox};
use crate::limits::{self, FdBudget};
use crate::limits::{DRAIN_POLL, LISTEN_BACKLOG};
use crate::reactor::epoll::Epoll;
use crate::reactor::uring::{self, Uring};
use crate::reactor::{Backend, ListenerId};
use crate::shared::{Shared, Stop};
use crate::store::Store;
use crate::worker::Worker;
use crate::{admin, control, error, info, warn};

/// Why the server could not start: `code` is the exit status (2 for a configuration
/// that cannot work, 1 for anything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// Exit status.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError { code: 1, message }
    }
}

impl StartError {
    /// A configuration that cannot work (exit status 2).
    pub fn config(message: String) -> StartError {
        StartError { code: 2, message }
    }
}

/// Everything bound before any thread starts (a bad address fails first).
struct Bound {
    /// Per listener: its address, and one socket per worker (SO_REUSEPORT).
    listeners: Vec<(SocketAddr, Vec<StdTcpListener>)>,
    /// The admin port.
    admin: (SocketAddr, StdTcpListener),
}

fn resolve(addr: &str, what: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("invalid {what} address '{addr}': {e}"))?
        .next()
        .ok_or_else(|| format!("invalid {what} address '{addr}'"))
}

/// Binds a listener with SO_REUSEPORT (several workers and several processes share the
/// port; the kernel spreads the accepts).
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<StdTcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt
    // here instead of one per connection.
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

fn node_id(cfg: &Config) -> String {
    if !cfg.cluster.node_id.is_empty() {
        return cfg.cluster.node_id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{host}-{}-{:x}", std::process::id(), t & 0xFFFF_FFFF)
}

/// Runs the server until it is told to stop.
pub fn serve(cfg: Config) -> Result<(), StartError> {
    if cfg.auth == AuthMode::None
        && !cfg.client_publish.is_empty()
        && cfg.allowed_origins.iter().any(|o| o == "*")
    {
        warn!(
            "auth = \"none\", client_publish is set and allowed_origins = [\"*\"]: any web page can publish to {:?} through its visitors' browsers; set allowed_origins or auth = \"token\"",
            cfg.client_publish
        );
    }
    let workers = cfg.worker_count();
    let bound = bind_all(&cfg, workers)?;
    if cfg.backend == BackendKind::Uring {
        if let Some(rings) = rings(&cfg, workers) {
            return run(cfg, rings, bound);
        }
    }
    let epolls = (0..workers)
        .map(|_| Epoll::new())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot create a reactor: {e}"))?;
    run(cfg, epolls, bound)
}

/// One io_uring per worker; `None` (after a warning) when io_uring cannot be used.
fn rings(cfg: &Config, workers: usize) -> Option<Vec<Uring>> {
    let arm = match cfg.uring_arm {
        UringArm::Poll => uring::Arm::Poll,
        UringArm::Recv => uring::Arm::Recv,
    };
    let mut rings = Vec::with_capacity(workers);
    for _ in 0..workers {
        match Uring::new(cfg.uring_direct, arm) {
            Ok(r) => rings.push(r),
            Err(e) => {
                warn!("io_uring unavailable ({e}); running on epoll");
                return None;
            }
        }
    }
    Some(rings)
}

fn bind_all(cfg: &Config, workers: usize) -> Result<Bound, String> {
    let mut listeners = Vec::new();
    for l in cfg.listeners() {
        let addr = resolve(&l.addr, "listen")?;
        let first = bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // Port 0: the other workers share the port the first one got.
        let addr = first
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
        }
        listeners.push((addr, socks));
    }
    let admin_addr = resolve(&cfg.admin_listen, "admin")?;
    let admin = admin::bind(admin_addr)
        .map_err(|e| format!("cannot listen on admin address {admin_addr}: {e}"))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| format!("cannot read the admin address: {e}"))?;
    Ok(Bound {
        listeners,
        admin: (admin_addr, admin),
    })
}

/// The rest of the start, the wait and the stop, on `backends` (one per worker).
fn run<B: Backend + Send + 'static>(
    mut cfg: Config,
    backends: Vec<B>,
    bound: Bound,
) -> Result<(), StartError> {
    let workers = backends.len();
    // The budget is known once the rings say whether they hold their own tables.
    let ring_slots = backends.iter().map(|b| b.slots()).min().flatten();
    let fds = limits::fd_budget(&cfg, workers, limits::nofile_limit(), ring_slots);
    cfg.max_connections = fds
        .resolve(cfg.max_connections)
        .map_err(StartError::config)?;
    let control = control::bind(&cfg.control_path).map_err(|e| StartError {
        code: if e.starts_with("control_path") { 2 } else { 1 },
        message: e,
    })?;
    let inboxes: Vec<Arc<Inbox>> = backends
        .iter()
        .map(|b| Arc::new(Inbox::new(b.waker())))
        .collect();
    let backend = backends[0].name();
    let (shared, stop_rx) = build_shared(cfg, fds, &inboxes)?;
    let (addrs, socks): (Vec<SocketAddr>, Vec<_>) = bound.listeners.into_iter().unzip();
    let handles = spawn_workers(&shared, backends, socks, &inboxes)?;
    let (admin_addr, admin) = bound.admin;
    spawn(&shared, "admin", move |s| admin::run(s, admin))?;
    spawn(&shared, "control", move |s| control::run(s, control))?;
    start_signal_thread(shared.clone())?;
    log_ready(&shared, backend, &addrs, admin_addr);
    wait_and_stop(&shared, stop_rx);
    for inbox in &shared.inboxes {
        inbox.push(Cmd::Shutdown);
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(s) = shared.hub.store() {
        s.close();
    }
    let _ = std::fs::remove_file(&shared.cfg.control_path);
    info!("stopped");
    Ok(())
}

/// The store, the hub, the cluster and the shared state around them.
fn build_shared(
    cfg: Config,
    fds: FdBudget,
    inboxes: &[Arc<Inbox>],
) -> Result<(Arc<Shared>, Receiver<Stop>), StartError> {
    let verifier = crate::auth::Verifier::new(&cfg).map_err(|e| StartError::config(e.0))?;
    let live = Arc::new(Live::new(&cfg));
    let store = match cfg.history_store {
        HistoryStore::Memory => None,
        HistoryStore::Disk => Some(Store::open(
            &cfg.history_path,
            cfg.history_fsync,
            live.clone(),
        )?),
    };
    let disk = store.as_ref().map(|(s, _)| s.clone());
    let replica = !cfg.cluster.redis_url.is_empty();
    let hub = Arc::new(Hub::new(
        inboxes.to_vec(),
        HubConfig::from_config(&cfg, live.clone(), replica),
        store,
    ));
    if let Some(s) = &disk {
        s.start(hub.clone())?;
    }
    let node = node_id(&cfg);
    let cluster = if cfg.cluster.redis_url.is_empty() {
        None
    } else {
        Some(Arc::new(Cluster::new(
            &cfg.cluster,
            node.clone(),
            config::secs(cfg.idempotency_window_secs),
        )?))
    };
    let presence = Arc::new(crate::presence::Presence::default());
    if let Some(c) = &cluster {
        c.start(hub.clone(), inboxes.to_vec(), presence.clone())?;
        info!(
            "cluster: node {node} sharing channels through {}",
            cfg.cluster.redis_url
        );
    }
    let (stop_tx, stop_rx) = mpsc::channel();
    let mut shared = Shared::new(cfg, live, hub, inboxes.to_vec(), node, cluster);
    shared.stop = Mutex::new(Some(stop_tx));
    shared.fds = fds;
    shared.verifier = verifier;
    shared.presence = presence;
    Ok((Arc::new(shared), stop_rx))
}

fn spawn(
    shared: &Arc<Shared>,
    name: &str,
    f: impl FnOnce(Arc<Shared>) + Send + 'static,
) -> Result<(), String> {
    let shared = shared.clone();
    thread::Builder::new()
        .name(name.into())
        .spawn(move || f(shared))
        .map(drop)
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}

/// The descriptor budget, then the `ready` line tests and scripts wait for, with the
/// addresses actually bound.
fn log_ready(shared: &Shared, backend: &str, addrs: &[SocketAddr], admin: SocketAddr) {
    let fds = &shared.fds;
    info!(
        "descriptors: RLIMIT_NOFILE {}, {} kept for the admin port, control socket, Redis and the disk store; max_connections {}{}",
        fds.limit,
        fds.reserved,
        shared.cfg.max_connections,
        if fds.direct { " (io_uring direct descriptors)" } else { "" }
    );
    let mut line = format!(
        "ready: pushedge {} subscriber={} admin={admin} control={} workers={} backend={} node={}",
        env!("CARGO_PKG_VERSION"),
        addrs[0],
        shared.cfg.control_path,
        shared.inboxes.len(),
        backend.split(' ').next().unwrap_or(backend),
        shared.node_id
    );
    if addrs.len() > 1 {
        let all: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        line.push_str(&format!(" listeners={}", all.join(",")));
    }
    info!("{line}");
}

fn spawn_workers<B: Backend + Send + 'static>(
    shared: &Arc<Shared>,
    backends: Vec<B>,
    listeners: Vec<Vec<StdTcpListener>>,
    inboxes: &[Arc<Inbox>],
) -> Result<Vec<thread::JoinHandle<()>>, String> {
    if let Some(b) = backends.first() {
        info!("reactor: {}", b.name());
    }
    // Worker w gets socket w of every listener.
    let mut per_worker: Vec<Vec<(ListenerId, StdTcpListener)>> =
        (0..backends.len()).map(|_| Vec::new()).collect();
    for (id, socks) in listeners.into_iter().enumerate() {
        for (w, sock) in socks.into_iter().enumerate() {
            per_worker[w].push((id as ListenerId, sock));
        }
    }
    let mut handles = Vec::with_capacity(backends.len());
    for (id, (io, listeners)) in backends.into_iter().zip(per_worker).enumerate() {
        let worker = Worker::new(id, shared.clone(), io, listeners, inboxes[id].clone())
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        let h = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker.run())
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        handles.push(h);
    }
    Ok(handles)
}

fn wait_and_stop(shared: &Shared, stop_rx: Receiver<Stop>) {
    let how = stop_rx.recv().unwrap_or(Stop::Immediate);
    if how == Stop::Immediate {
        return;
    }
    shared.drain();
    let deadline = Instant::now() + config::secs(shared.cfg.drain_timeout_secs);
    loop {
        let open = shared.conns.load(Ordering::Relaxed);
        if open == 0 {
            info!("drained");
            return;
        }
        if Instant::now() >= deadline {
            warn!("drain timeout: {open} connections still open, closing them");
            return;
        }
        if let Ok(Stop::Immediate) = stop_rx.recv_timeout(DRAIN_POLL) {
            return;
        }
    }
}

fn start_signal_thread(shared: Arc<Shared>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    info!("signal {sig}: draining (send again to exit at once)");
                    shared.request_stop(Stop::Graceful);
                } else {
                    error!("signal {sig} again: exiting now");
                    shared.request_stop(Stop::Immediate);
                }
            }
        })
        .map_err(|e| format!("cannot start signal thread: {e}"))?;
    Ok(())
}
