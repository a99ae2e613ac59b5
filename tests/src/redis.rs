//! Cluster harness: a real `redis-server` per test, a TCP gate that can cut one node off
//! from it, and pushedge nodes that share channels through it. No mocks.
//!
//! [`Redis::start`] runs `redis-server --port P --bind 127.0.0.1 --save "" --appendonly yes
//! --dir <tempdir>`, waits for `PING`, and kills the process on drop. [`Redis::stop`]
//! (`SHUTDOWN NOSAVE`) and [`Redis::restart`] (same port, same directory: the append-only
//! file brings the data back) simulate an outage; [`Redis::wipe_data`] in between makes it
//! one that loses the data.
//!
//! The port is picked outside the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`) and checked free by binding it: a port
//! taken from `bind(0)` lies inside that range, where, while Redis is stopped, any
//! outgoing connection of the tests running in parallel may get it as its local port and
//! make the restart fail. When the range leaves nothing outside it, `bind(0)` it is. A
//! start that loses the port anyway (another test's Redis took it) is retried on another.
//!
//! `redis-server` is looked up as `$REDIS_SERVER`, then on `PATH`; when it is missing the
//! test fails and says to run `make deps-test`.
//!
//! [`Gate`] is a TCP relay in front of Redis: [`Gate::close`] cuts the connections through
//! it and refuses new ones (the node behind it sees Redis go away and keeps failing to
//! reconnect) until [`Gate::open`]. It lets a test hold one node's reconnect back while
//! the others are already up.
//!
//! [`node`] / [`node_on`] start a pushedge node (`--set cluster.redis_url=... --set
//! cluster.node_id=...`, optionally `--listen` on a given address so that two nodes share
//! a subscriber port through SO_REUSEPORT) and wait until its `/info` says
//! `"cluster":{"redis":"up",...}`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{lock, wait_until, Server, START_TIMEOUT, TIMEOUT};

/// How long a node may take to report `"redis":"up"` after it starts or after Redis comes
/// back: the largest reconnect backoff (5 s), plus a connect and the catch-up, plus slack.
pub const CLUSTER_UP_TIMEOUT: Duration = Duration::from_secs(8);

/// Attempts at starting Redis on a fresh port before giving up.
const PORT_ATTEMPTS: usize = 20;

// ------------------------------------------------------------------------------ redis

/// A `redis-server` of our own, killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its TCP port (on 127.0.0.1), kept across [`Redis::restart`].
    pub port: u16,
    dir: tempfile::TempDir,
    /// With the append-only file (`appendonly yes`, fsync every second).
    aof: bool,
}

/// Why a start failed.
enum StartError {
    /// The port was taken.
    PortInUse,
    /// Anything else (the message carries the server's log).
    Other(String),
}

impl Redis {
    /// Starts a server on a free port; panics (with its log) when it cannot, and with a
    /// pointer to `make deps-test` when `redis-server` is not installed.
    pub fn start() -> Redis {
        Redis::start_with(true)
    }

    /// Starts a server without persistence: a restart (or a `kill -9`) loses everything.
    pub fn start_volatile() -> Redis {
        Redis::start_with(false)
    }

    fn start_with(aof: bool) -> Redis {
        let bin = redis_server();
        let dir = tempfile::Builder::new()
            .prefix("pushedge-redis")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = pick_port();
            match spawn(&bin, port, dir.path(), aof) {
                Ok(child) => {
                    return Redis {
                        child: Some(child),
                        port,
                        dir,
                        aof,
                    }
                }
                Err(StartError::PortInUse) => last = format!("port {port} was taken"),
                Err(StartError::Other(e)) => panic!("{e}"),
            }
        }
        panic!("could not start redis-server on a free port in {PORT_ATTEMPTS} attempts ({last})");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// True while the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// One command; panics when the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        command(self.addr(), args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Stops the server with `SHUTDOWN NOSAVE` (the append-only file keeps what was
    /// written), killing it if it does not exit within `TIMEOUT`.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server closes the connection as it exits: no reply is the normal answer.
        let _ = command(self.addr(), &["SHUTDOWN", "NOSAVE"]);
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// Starts the server again on the same port and directory (the data comes back from
    /// the append-only file). Retries for a while if the port is busy.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() of a running redis-server");
        let bin = redis_server();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match spawn(&bin, self.port, self.dir.path(), self.aof) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(StartError::PortInUse) => {
                    panic!(
                        "cannot restart redis-server: port {} stays taken",
                        self.port
                    )
                }
                Err(StartError::Other(e)) => panic!("{e}"),
            }
        }
    }

    /// Kills the server with SIGKILL (no goodbye; with AOF, up to a second of writes may
    /// be lost) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("a running redis-server");
        // SAFETY: kill(2) with our own child's pid and a plain signal number.
        let r = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(r, 0, "kill({sig}) of redis-server failed");
    }

    /// Deletes the data files (only while stopped): the next [`Redis::restart`] comes back
    /// empty, like a Redis without persistence.
    pub fn wipe_data(&mut self) {
        assert!(
            self.child.is_none(),
            "wipe_data() of a running redis-server"
        );
        for entry in std::fs::read_dir(self.dir.path()).expect("read the redis dir") {
            let path = entry.expect("dir entry").path();
            if path.file_name().is_some_and(|n| n == "redis.log") {
                continue;
            }
            let r = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
        }
    }

    /// What the server logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `redis-server` binary: `$REDIS_SERVER`, or the first one on `PATH`.
pub fn redis_server() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "REDIS_SERVER={} does not exist; unset it, or run `make deps-test` to install \
             redis-server",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("redis-server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed (not on PATH): the cluster tests need a real \
                 Redis. Run `make deps-test` to install it (or set REDIS_SERVER to its path)."
            )
        })
}

/// Starts `redis-server` on `port` with its data and log in `dir`, and waits for `PING`.
fn spawn(bin: &Path, port: u16, dir: &Path, aof: bool) -> Result<Child, StartError> {
    let log_path = dir.join("redis.log");
    let before = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("cannot open the redis log");
    let mut child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--daemonize", "no"])
        .args(["--appendonly", if aof { "yes" } else { "no" }])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("clone the log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let text = text.get(before..).unwrap_or(&text);
            if text.contains("Address already in use") {
                return Err(StartError::PortInUse);
            }
            return Err(StartError::Other(format!(
                "redis-server exited at start (port {port}); log:\n{text}"
            )));
        }
        // Another test's Redis may own the port: only ours has our child's pid.
        if command(addr, &["PING"]).is_ok_and(|r| r == Resp::Simple("PONG".into())) {
            let info = command(addr, &["INFO", "server"])
                .ok()
                .and_then(|r| r.text())
                .unwrap_or_default();
            let pid = format!("process_id:{}", child.id());
            if info.lines().any(|l| l.trim_end() == pid) {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(StartError::Other(format!(
                "redis-server did not answer PING on port {port} within {START_TIMEOUT:?}; \
                 log:\n{}",
                text.get(before..).unwrap_or(&text)
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A port that is free now, outside the ephemeral range when possible (see the module
/// doc).
fn pick_port() -> u16 {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the range (not under 10000, where well-known services live, unless that is
    // all there is), and above it.
    let below_start = if lo > 11000 { 10000 } else { 1024 };
    let below = lo.saturating_sub(below_start);
    let above = 65535u32.saturating_sub(hi);
    for _ in 0..100 {
        let total = below + above;
        if total == 0 {
            break;
        }
        let n = (next_random() % u64::from(total)) as u32;
        let port = if n < below {
            below_start + n
        } else {
            hi + 1 + (n - below)
        };
        let port = u16::try_from(port).expect("ports are below 65536");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A pseudo-random number (xorshift over time, pid and a counter); good enough to keep
/// parallel tests from trying the same ports in step.
fn next_random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

// ------------------------------------------------------------------------------ RESP

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` (`None` for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*n` (`None` for the null array).
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// A bulk or simple string as text (`None` for null and other types).
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Sends one command on a new connection and reads the reply (every step bounded by
/// `TIMEOUT`).
pub fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Resp> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req)?;
    read_resp(&mut BufReader::new(stream))
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let int = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad line {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(int()?),
        "$" => match usize::try_from(int()?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut b = vec![0; n + 2];
                r.read_exact(&mut b)?;
                b.truncate(n);
                Resp::Bulk(Some(b))
            }
        },
        "*" => match usize::try_from(int()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(bad(format!("bad reply line {line:?}"))),
    })
}

// ------------------------------------------------------------------------------ gate

/// A TCP relay to an upstream address that a test can close (cut every connection and
/// refuse new ones) and open again. Stopped on drop.
pub struct Gate {
    /// Where the relay listens.
    pub addr: SocketAddr,
    state: Arc<GateState>,
    thread: Option<JoinHandle<()>>,
}

struct GateState {
    upstream: SocketAddr,
    open: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every relayed connection, to cut them on `close`.
    conns: Mutex<Vec<TcpStream>>,
}

impl Gate {
    /// A relay on a fresh loopback port to `upstream`, open.
    pub fn new(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the gate");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("gate address");
        let state = Arc::new(GateState {
            upstream,
            open: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        let thread = thread::Builder::new()
            .name("gate-accept".into())
            .spawn(move || s.accept_loop(&listener))
            .expect("cannot start the gate thread");
        Gate {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// `redis://` + the relay's address.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts every relayed connection and refuses new ones (accepted, then closed at once).
    pub fn close(&self) {
        let mut conns = lock(&self.state.conns);
        self.state.open.store(false, Ordering::SeqCst);
        for c in conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn open(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GateState {
    fn accept_loop(&self, listener: &TcpListener) {
        while !self.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => self.relay(client),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn relay(&self, client: TcpStream) {
        if !self.open.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&self.upstream, TIMEOUT) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            return;
        };
        {
            // Checked under the lock that `close` takes: a connection is either cut by
            // it or refused here.
            let mut conns = lock(&self.conns);
            if !self.open.load(Ordering::SeqCst) {
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                return;
            }
            conns.push(c3);
            conns.push(u3);
        }
        let spawn = |from: TcpStream, to: TcpStream| {
            let _ = thread::Builder::new()
                .name("gate-pump".into())
                .spawn(move || pump(from, to));
        };
        spawn(client, upstream);
        spawn(u2, c2);
    }
}

/// Copies `from` to `to` until either ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ------------------------------------------------------------------------------ nodes

/// Starts a pushedge node sharing channels through `redis_url` as `node_id` (plus
/// `extra` arguments), and waits until its feed is up.
pub fn node(redis_url: &str, node_id: &str, extra: &[&str]) -> Server {
    start_node(redis_url, node_id, None, extra)
}

/// Like [`node`], listening for subscribers on `listen` (an address another node already
/// has: SO_REUSEPORT lets both serve it).
pub fn node_on(redis_url: &str, node_id: &str, listen: SocketAddr, extra: &[&str]) -> Server {
    start_node(redis_url, node_id, Some(listen), extra)
}

fn start_node(
    redis_url: &str,
    node_id: &str,
    listen: Option<SocketAddr>,
    extra: &[&str],
) -> Server {
    let url = format!("cluster.redis_url={redis_url}");
    let id = format!("cluster.node_id={node_id}");
    let listen = listen.map(|a| a.to_string());
    let mut args: Vec<&str> = vec!["--set", &url, "--set", &id];
    if let Some(l) = &listen {
        args.extend(["--listen", l]);
    }
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    s.wait_redis_up();
    s
}

impl Server {
    /// `"up"` or `"down"` from `/info`'s `cluster.redis` (`None` outside a cluster).
    pub fn redis_state(&self) -> Option<String> {
        self.info()["cluster"]["redis"].as_str().map(str::to_string)
    }

    /// Waits until `/info` shows `"cluster":{"redis":"up",...}`; panics (with the log)
    /// after [`CLUSTER_UP_TIMEOUT`].
    pub fn wait_redis_up(&self) {
        self.wait_redis("up", CLUSTER_UP_TIMEOUT);
    }

    /// Waits until `/info`'s `cluster.redis` is `state`; panics (with the log) after
    /// `timeout`.
    pub fn wait_redis(&self, state: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.redis_state().as_deref() == Some(state));
        assert!(
            ok,
            "node never had redis {state} within {timeout:?}: {}\nlog:\n{}",
            self.info(),
            self.log()
        );
    }

    /// Kills the process with SIGKILL (no drain, no goodbye) and reaps it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        assert!(
            self.wait_exit(TIMEOUT).is_some(),
            "pushedge did not die of SIGKILL"
        );
    }
}
