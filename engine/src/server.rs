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
use std::os::unix::net::UnixListener;
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
use crate::limits::DRAIN_POLL;
use crate::limits::{self, FdBudget};
use crate::reactor::epoll::Epoll;
use crate::reactor::uring::{self, Uring};
use crate::reactor::{Backend, ListenerId};
use crate::shared::{Shared, Stop};
use crate::store::Store;
use crate::tls::{self, layer::Tls};
use crate::worker::Worker;
use crate::{admin, control, error, handover, info, warn};

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
    crate::log::start(
        cfg.log_format == crate::config::LogFormat::Json,
        &cfg.access_log,
    )
    .map_err(StartError::config)?;
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
    let tls = TlsSetup::load(&cfg).map_err(StartError::config)?;
    let (bound, adopt) = match std::env::var(handover::FD_ENV) {
        Ok(fd) => {
            // A successor: the listeners and connections come from the old process.
            let t = handover::receive(&fd, workers, cfg.listeners().len())?;
            let (bound, adopt) = taken_over(t)?;
            (bound, Some(adopt))
        }
        Err(_) => (bind_all(&cfg, workers)?, None),
    };
    // A successor runs the configured backend whatever the old process ran: the records
    // carry what each backend held, in the same form for both.
    if cfg.backend == BackendKind::Uring {
        if let Some(rings) = rings(&cfg, workers) {
            let rings = rings.into_iter().map(|r| tls.layer(r)).collect();
            return run(cfg, rings, bound, tls, adopt);
        }
    }
    let epolls = (0..workers)
        .map(|_| Epoll::new().map(|e| tls.layer(e)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot create a reactor: {e}"))?;
    run(cfg, epolls, bound, tls, adopt)
}

/// What a successor adopts once its workers exist.
struct Adopt {
    sock: std::os::unix::net::UnixStream,
    loaded: crate::store::Loaded,
    records: usize,
    started: Instant,
    extra: serde_json::Map<String, serde_json::Value>,
    admin_conns: Vec<(admin::handover::AdminRecord, std::os::fd::OwnedFd)>,
}

/// The sockets a successor received, as if it had bound them.
fn taken_over(t: handover::Taken) -> Result<(Bound, Adopt), StartError> {
    let mut listeners = Vec::with_capacity(t.listeners.len());
    for socks in t.listeners {
        let addr = socks
            .first()
            .ok_or_else(|| "a listener without sockets".to_string())?
            .local_addr()
            .map_err(|e| format!("cannot read a listener's address: {e}"))?;
        listeners.push((addr, socks));
    }
    let admin_addr = t
        .admin
        .local_addr()
        .map_err(|e| format!("cannot read the admin address: {e}"))?;
    Ok((
        Bound {
            listeners,
            admin: (admin_addr, t.admin),
        },
        Adopt {
            sock: t.sock,
            loaded: t.loaded,
            records: t.records,
            started: t.started,
            extra: t.extra,
            admin_conns: t.admin_conns,
        },
    ))
}

/// The TLS of every listener (by listener id) and of the admin port, loaded before
/// anything is bound: a certificate that does not load stops the start (exit 2).
struct TlsSetup {
    listeners: Vec<Option<Arc<tls::Context>>>,
    admin: Option<Arc<tls::Context>>,
}

impl TlsSetup {
    fn load(cfg: &Config) -> Result<TlsSetup, String> {
        let listeners = cfg.listeners();
        let wanted = listeners.iter().any(|l| l.tls.is_some()) || cfg.admin_tls().is_some();
        if !wanted {
            return Ok(TlsSetup {
                listeners: Vec::new(),
                admin: None,
            });
        }
        let ticketer = tls::ticketer()?;
        let mut out = Vec::with_capacity(listeners.len());
        for l in &listeners {
            out.push(match &l.tls {
                Some(files) => Some(Arc::new(tls::Context::new(
                    format!("listener {}", l.addr),
                    files.clone(),
                    ticketer.clone(),
                )?)),
                None => None,
            });
        }
        let admin = match cfg.admin_tls() {
            Some(files) => Some(Arc::new(tls::Context::new(
                "admin".into(),
                files,
                ticketer,
            )?)),
            None => None,
        };
        Ok(TlsSetup {
            listeners: out,
            admin,
        })
    }

    /// A worker's backend under the TLS layer.
    fn layer<B: Backend>(&self, backend: B) -> Tls<B> {
        Tls::new(backend, self.listeners.clone())
    }

    /// Every context, for reloads.
    fn all(&self) -> Vec<Arc<tls::Context>> {
        self.listeners
            .iter()
            .flatten()
            .chain(self.admin.iter())
            .cloned()
            .collect()
    }
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

/// Refuses an address another process already listens on, unless sharing it is meant
/// (`reuse_port = true`, or a cluster node): a bind without SO_REUSEPORT, closed at once,
/// fails with EADDRINUSE when anyone holds the address (SO_REUSEADDR keeps connections in
/// TIME_WAIT from counting). Exit status 1: the address is taken, not malformed.
fn check_not_shared(addr: SocketAddr) -> Result<(), StartError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .and_then(|s| s.set_reuse_address(true).map(|()| s))
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(StartError {
            code: 1,
            message: format!(
                "cannot listen on {addr}: the address is already in use by another process (another pushedge?); set reuse_port = true to share it on purpose (several processes of one service), or cluster.redis_url for nodes of one cluster"
            ),
        }),
        Err(e) => Err(format!("cannot listen on {addr}: {e}").into()),
    }
}

fn bind_all(cfg: &Config, workers: usize) -> Result<Bound, StartError> {
    let mut listeners = Vec::new();
    // Sharing a port across processes is meant by `reuse_port`, or by a cluster (its
    // nodes share channels through one Redis); the workers of this process always share.
    let shared_on_purpose = cfg.reuse_port || !cfg.cluster.redis_url.is_empty();
    for l in cfg.listeners() {
        let addr = resolve(&l.addr, "listen").map_err(StartError::config)?;
        if !shared_on_purpose && addr.port() != 0 {
            check_not_shared(addr)?;
        }
        let first = crate::reactor::bind_reuseport(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // Port 0: the other workers share the port the first one got.
        let addr = first
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let mut socks = vec![first];
        for _ in 1..workers {
            socks.push(
                crate::reactor::bind_reuseport(addr)
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
            );
        }
        listeners.push((addr, socks));
    }
    let admin_addr = resolve(&cfg.admin_listen, "admin").map_err(StartError::config)?;
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
    tls: TlsSetup,
    adopt: Option<Adopt>,
) -> Result<(), StartError> {
    let workers = backends.len();
    // The budget is known once the rings say whether they hold their own tables.
    let ring_slots = backends.iter().map(|b| b.slots()).min().flatten();
    let fds = limits::fd_budget(&cfg, workers, limits::nofile_limit(), ring_slots);
    cfg.max_connections = fds
        .resolve(cfg.max_connections)
        .map_err(StartError::config)?;
    // A successor binds its control socket beside the old process's, and moves it onto
    // the path once everything else is up.
    let control = bind_control(&cfg.control_path, adopt.is_some())?;
    let inboxes: Vec<Arc<Inbox>> = backends
        .iter()
        .map(|b| Arc::new(Inbox::new(b.waker())))
        .collect();
    let backend = backends[0].name();
    let (sock, loaded, records, started, extra, admin_conns) = match adopt {
        Some(a) => (
            Some(a.sock),
            Some(a.loaded),
            a.records,
            Some(a.started),
            a.extra,
            a.admin_conns,
        ),
        None => (None, None, 0, None, serde_json::Map::new(), Vec::new()),
    };
    let node = crate::cluster::handover::inherited_node(&extra).unwrap_or_else(|| node_id(&cfg));
    let (shared, stop_rx) = build_shared(cfg, fds, &inboxes, tls.all(), loaded, node)?;
    if sock.is_some() {
        handover::import_extra(&shared, extra);
    }
    let (addrs, socks): (Vec<SocketAddr>, Vec<_>) = bound.listeners.into_iter().unzip();
    let taking = sock.as_ref().map(|s| (s, records));
    let (handles, adopted) = spawn_workers(&shared, backends, socks, &inboxes, taking)?;
    if sock.is_some() {
        // A cluster node's hub was restored frozen: its feed fills in now that the
        // connections it fills in for are adopted (`crate::cluster`, "Hot handover").
        shared.hub.set_frozen(false);
    }
    let (admin_addr, admin) = bound.admin;
    spawn_services(&shared, admin, tls.admin.clone(), admin_conns, control)?;
    start_signal_thread(shared.clone())?;
    if let (Some(sock), Some(started)) = (sock, started) {
        handover::confirm(&sock, adopted, started);
    }
    log_ready(&shared, backend, &addrs, admin_addr);
    wait_and_stop(&shared, stop_rx);
    stop_workers(&shared, handles);
    info!("stopped");
    Ok(())
}

/// The control socket, on its path; a successor's beside the old process's, with the
/// temporary path it moves from once everything else is up.
fn bind_control(path: &str, successor: bool) -> Result<(UnixListener, Option<String>), StartError> {
    let bound = if successor {
        control::bind_beside(path).map(|(l, tmp)| (l, Some(tmp)))
    } else {
        control::bind(path).map(|l| (l, None))
    };
    bound.map_err(|e| StartError {
        code: if e.starts_with("control_path") { 2 } else { 1 },
        message: e,
    })
}

/// The admin and control threads; then a successor's control socket moves onto its
/// path.
fn spawn_services(
    shared: &Arc<Shared>,
    admin: StdTcpListener,
    admin_tls: Option<Arc<tls::Context>>,
    admin_conns: Vec<(admin::handover::AdminRecord, std::os::fd::OwnedFd)>,
    (control, control_tmp): (UnixListener, Option<String>),
) -> Result<(), StartError> {
    {
        use std::os::fd::AsRawFd;
        handover::set_admin_fd(admin.as_raw_fd());
    }
    spawn(shared, "admin", move |s| {
        admin::run(s, admin, admin_tls, admin_conns)
    })?;
    spawn(shared, "control", move |s| control::run(s, control))?;
    if let Some(tmp) = control_tmp {
        if let Err(e) = std::fs::rename(&tmp, &shared.cfg.control_path) {
            error!(
                "handover: cannot move the control socket {tmp} to {}: {e}",
                shared.cfg.control_path
            );
        }
    }
    Ok(())
}

/// Stops the workers and waits for them; then closes the store and removes the control
/// socket.
fn stop_workers(shared: &Shared, handles: Vec<thread::JoinHandle<()>>) {
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
}

/// The store, the hub, the cluster and the shared state around them.
fn build_shared(
    cfg: Config,
    fds: FdBudget,
    inboxes: &[Arc<Inbox>],
    tls: Vec<Arc<tls::Context>>,
    loaded: Option<crate::store::Loaded>,
    node: String,
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
    if let Some(l) = loaded {
        // A successor: the streams of the old process (memory mode).
        hub.restore(l);
    }
    if let Some(s) = &disk {
        s.start(hub.clone())?;
    }
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
    shared.tls = tls;
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
    taking: Option<(&std::os::unix::net::UnixStream, usize)>,
) -> Result<(Vec<thread::JoinHandle<()>>, usize), String> {
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
    let mut made = Vec::with_capacity(backends.len());
    for (id, (io, listeners)) in backends.into_iter().zip(per_worker).enumerate() {
        let worker = Worker::new(id, shared.clone(), io, listeners, inboxes[id].clone())
            .map_err(|e| format!("cannot start worker {id}: {e}"))?;
        made.push(worker);
    }
    let mut adopted = 0;
    if let Some((sock, total)) = taking {
        // Each worker's backend takes its sockets over as they come; then the records.
        let mut prepared: Vec<Vec<_>> = made.iter().map(|_| Vec::new()).collect();
        let workers = made.len();
        let t0 = Instant::now();
        handover::receive_records(sock, total, workers, |r, fd| {
            let w = r.worker;
            if let Some(p) = made[w].take_over(r, fd) {
                prepared[w].push(p);
            }
        })?;
        let received = t0.elapsed();
        for (worker, records) in made.iter_mut().zip(prepared) {
            adopted += worker.adopt(records);
        }
        info!(
            "handover: {total} connection records received in {:.1} ms, adopted in {:.1} ms",
            received.as_secs_f64() * 1000.0,
            (t0.elapsed() - received).as_secs_f64() * 1000.0
        );
    }
    let mut handles = Vec::with_capacity(made.len());
    for (id, worker) in made.into_iter().enumerate() {
        let h = thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker.run())
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        handles.push(h);
    }
    Ok((handles, adopted))
}

fn wait_and_stop(shared: &Shared, stop_rx: Receiver<Stop>) {
    let how = stop_rx.recv().unwrap_or(Stop::Immediate);
    if how == Stop::Immediate {
        return;
    }
    shared.drain_to_exit();
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
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGUSR2 {
                    info!("SIGUSR2: upgrading (hot handover)");
                    if handover::upgrade(&shared, None).is_ok() {
                        std::process::exit(0);
                    }
                    continue;
                }
                if sig == SIGHUP {
                    match shared.reload_tls() {
                        Ok(n) => info!("SIGHUP: TLS certificates reloaded ({n})"),
                        Err(e) => {
                            warn!("SIGHUP: TLS reload failed, the old certificates stay: {e}")
                        }
                    }
                    continue;
                }
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
