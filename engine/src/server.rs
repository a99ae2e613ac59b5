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
use crate::limits::{self};
use crate::limits::{DRAIN_POLL, LISTEN_BACKLOG};
use crate::reactor::epoll::Epoll;
use crate::reactor::uring::{self, Uring};
use crate::reactor::Backend;
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

/// Addresses actually bound.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Subscriber address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Control socket path.
    pub control: String,
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

/// Runs the server until it is told to stop. Returns the process exit status.
pub fn serve(mut cfg: Config) -> Result<(), StartError> {
    let workers = cfg.worker_count();
    if cfg.auth == AuthMode::None
        && !cfg.client_publish.is_empty()
        && cfg.allowed_origins.iter().any(|o| o == "*")
    {
        warn!(
            "auth = \"none\", client_publish is set and allowed_origins = [\"*\"]: any web page can publish to {:?} through its visitors' browsers; set allowed_origins or auth = \"token\"",
            cfg.client_publish
        );
    }

    // Bind everything first.
    let listen_addr = resolve(&cfg.listen, "listen")?;
    let mut listeners = Vec::with_capacity(workers);
    let first =
        bind_reuseport(listen_addr).map_err(|e| format!("cannot listen on {listen_addr}: {e}"))?;
    let listen_addr = first
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    listeners.push(first);
    for _ in 1..workers {
        listeners.push(
            bind_reuseport(listen_addr)
                .map_err(|e| format!("cannot listen on {listen_addr}: {e}"))?,
        );
    }
    let admin_addr = resolve(&cfg.admin_listen, "admin")?;
    let admin_listener = admin::bind(admin_addr)
        .map_err(|e| format!("cannot listen on admin address {admin_addr}: {e}"))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| format!("cannot read the admin address: {e}"))?;

    let mut backends = Backends::Epoll(Vec::new());
    if cfg.backend == BackendKind::Uring {
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
                    rings.clear();
                    break;
                }
            }
        }
        if !rings.is_empty() {
            backends = Backends::Uring(rings);
        }
    }
    if let Backends::Epoll(v) = &mut backends {
        for _ in 0..workers {
            v.push(Epoll::new().map_err(|e| format!("cannot create a reactor: {e}"))?);
        }
    }
    // The budget is known once the rings say whether they hold their own tables.
    let ring_slots = match &backends {
        Backends::Epoll(_) => None,
        Backends::Uring(v) => v.iter().map(|r| r.slots()).min().flatten(),
    };
    let fds = limits::fd_budget(&cfg, workers, limits::nofile_limit(), ring_slots);
    cfg.max_connections = fds
        .resolve(cfg.max_connections)
        .map_err(StartError::config)?;
    let live = Arc::new(Live::new(&cfg));
    let control_listener = control::bind(&cfg.control_path).map_err(|e| StartError {
        code: if e.starts_with("control_path") { 2 } else { 1 },
        message: e,
    })?;
    let inboxes: Vec<Arc<Inbox>> = match &backends {
        Backends::Epoll(v) => v.iter().map(|b| Arc::new(Inbox::new(b.waker()))).collect(),
        Backends::Uring(v) => v.iter().map(|b| Arc::new(Inbox::new(b.waker()))).collect(),
    };
    let backend_name = match &backends {
        Backends::Epoll(v) => v[0].name(),
        Backends::Uring(v) => v[0].name(),
    };
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
        inboxes.clone(),
        HubConfig::from_config(&cfg, live.clone(), replica),
        store,
    ));
    if let Some(s) = &disk {
        s.start(hub.clone())?;
    }
    let (stop_tx, stop_rx) = mpsc::channel();
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
    if let Some(c) = &cluster {
        c.start(hub.clone(), inboxes.clone())?;
        info!(
            "cluster: node {node} sharing channels through {}",
            cfg.cluster.redis_url
        );
    }
    let mut shared = Shared::new(cfg, live, hub, inboxes.clone(), node, cluster);
    shared.stop = Mutex::new(Some(stop_tx));
    shared.fds = fds;
    let shared = Arc::new(shared);

    let handles = match backends {
        Backends::Epoll(v) => spawn_workers(&shared, v, listeners, &inboxes)?,
        Backends::Uring(v) => spawn_workers(&shared, v, listeners, &inboxes)?,
    };
    {
        let shared = shared.clone();
        thread::Builder::new()
            .name("admin".into())
            .spawn(move || admin::run(shared, admin_listener))
            .map_err(|e| format!("cannot start admin thread: {e}"))?;
    }
    {
        let shared = shared.clone();
        thread::Builder::new()
            .name("control".into())
            .spawn(move || control::run(shared, control_listener))
            .map_err(|e| format!("cannot start control thread: {e}"))?;
    }
    start_signal_thread(shared.clone())?;

    let bound = Bound {
        listen: listen_addr,
        admin: admin_addr,
        control: shared.cfg.control_path.clone(),
    };
    info!(
        "descriptors: RLIMIT_NOFILE {}, {} kept for the admin port, control socket, Redis and the disk store; max_connections {}{}",
        fds.limit,
        fds.reserved,
        shared.cfg.max_connections,
        if fds.direct { " (io_uring direct descriptors)" } else { "" }
    );
    info!(
        "ready: pushedge {} subscriber={} admin={} control={} workers={} backend={} node={}",
        env!("CARGO_PKG_VERSION"),
        bound.listen,
        bound.admin,
        bound.control,
        workers,
        backend_name.split(' ').next().unwrap_or(backend_name),
        shared.node_id
    );

    wait_and_stop(&shared, stop_rx);
    for inbox in &shared.inboxes {
        inbox.push(Cmd::Shutdown);
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(s) = &disk {
        s.close();
    }
    let _ = std::fs::remove_file(&bound.control);
    info!("stopped");
    Ok(())
}

/// The workers' reactors, all of one kind.
enum Backends {
    Epoll(Vec<Epoll>),
    Uring(Vec<Uring>),
}

fn spawn_workers<B: Backend + Send + 'static>(
    shared: &Arc<Shared>,
    backends: Vec<B>,
    listeners: Vec<StdTcpListener>,
    inboxes: &[Arc<Inbox>],
) -> Result<Vec<thread::JoinHandle<()>>, String> {
    if let Some(b) = backends.first() {
        info!("reactor: {}", b.name());
    }
    let mut handles = Vec::with_capacity(backends.len());
    for (id, (io, listener)) in backends.into_iter().zip(listeners).enumerate() {
        let worker = Worker::new(id, shared.clone(), io, listener, inboxes[id].clone())
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
