//! Integration test harness: the real `pushedge` binary on ephemeral loopback ports, real
//! sockets, no mocks.
//!
//! [`Server::start`] spawns the binary with `--listen 127.0.0.1:0 --admin 127.0.0.1:0
//! --control <tempdir>/pushedge.sock --workers 2` plus the test's own arguments, reads
//! stderr up to the `ready:` line (which carries the real ports), and keeps draining
//! stderr into a buffer the test can inspect ([`Server::log`]). Dropping the [`Server`]
//! kills the process.
//!
//! Environment:
//! - `PUSHEDGE_BIN`: the binary to test (default `<workspace>/target/debug/pushedge`,
//!   built with `cargo build -p pushedge` once per test run when missing or older than
//!   the engine and protocol sources).
//! - `PUSHEDGE_BACKEND`: when set, every server gets `--backend <value>`, so the whole
//!   suite can run against another reactor.
//! - `REDIS_SERVER`: the `redis-server` of the cluster tests (default: the one on `PATH`;
//!   `make deps-test` installs it).
//!
//! Running: `cargo test -p pushedge-tests` (about 26 s on 2 cores, 10 s of it the cluster
//! tests; more test threads, `-- --test-threads 16`, bring it down a lot since most tests
//! wait on short timers). `cluster::` selects the cluster tests alone.
//! Tests marked `#[ignore = "BUG: ..."]` show known server bugs: `-- --ignored` runs them.
//! The tests live in `tests/integration/`, one module per area, all in one test binary so
//! that they run in parallel.
//!
//! Clients, all on std sockets and all bounded by timeouts so that no test can hang:
//! [`Conn`] (raw HTTP: requests, heads, `Content-Length`/chunked/unframed bodies),
//! [`SseStream`], [`NdjsonStream`], [`IframeStream`], [`Ws`] (tungstenite, for well-behaved
//! WebSocket clients), [`RawWs`] (hand-made frames, for protocol errors and peers that never
//! answer), [`Ctl`] (the control socket), the admin API on [`Server`], and [`wait_until`].
//!
//! Clusters ([`redis`]): [`Redis`] (a real `redis-server` per test: stop, restart with its
//! data, wipe), [`Gate`] (a TCP relay that cuts one node off from Redis), [`node`] /
//! [`node_on`] (a pushedge node on a Redis, optionally sharing another node's subscriber
//! port), and [`Server::kill9`].

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

pub use serde_json::json;

pub mod crowd;
pub mod redis;
pub use crowd::{Crowd, Member};
pub use redis::{node, node_on, Gate, Redis, Resp, CLUSTER_UP_TIMEOUT};

/// How long the server may take to print its `ready` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for something that should happen (a message, a reply, a close).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long to watch for something that should *not* happen.
pub const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------------------ server

/// A running `pushedge serve`, killed on drop.
pub struct Server {
    child: Child,
    /// Subscriber port.
    pub addr: SocketAddr,
    /// Admin port.
    pub admin_addr: SocketAddr,
    /// Control socket path.
    pub control: PathBuf,
    /// Worker threads, from the ready line.
    pub workers: usize,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The binary under test: `PUSHEDGE_BIN`, or the workspace's debug build, (re)built once
/// per test process with `cargo build -p pushedge` when it is missing or older than the
/// engine and protocol sources.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PUSHEDGE_BIN") {
            let p = PathBuf::from(p);
            assert!(p.exists(), "PUSHEDGE_BIN={} does not exist", p.display());
            return p;
        }
        let workspace = workspace_dir();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let bin = target.join("debug").join("pushedge");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources = ["engine", "protocol", "Cargo.toml", "Cargo.lock"]
            .iter()
            .filter_map(|p| newest_mtime(&workspace.join(p)))
            .max();
        let stale = match (built, sources) {
            (None, _) => true,
            (Some(b), Some(s)) => s > b,
            (Some(_), None) => false,
        };
        if stale {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "pushedge"])
                .current_dir(&workspace)
                .status()
                .expect("cannot run cargo build -p pushedge");
            assert!(status.success(), "cargo build -p pushedge failed");
        }
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// The newest modification time of a file, or of the files under a directory (skipping
/// `target` directories).
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Runs the binary to completion (for `ctl`, `--version`, bad flags), bounded by `TIMEOUT`
/// twice over.
pub fn run_binary(args: &[&str]) -> Output {
    run_binary_with_nofile(args, None)
}

/// Like [`run_binary`], with the open-file limit set to `nofile` (through `prlimit`).
pub fn run_binary_with_nofile(args: &[&str], nofile: Option<u64>) -> Output {
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary());
            c
        }
        None => Command::new(binary()),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn pushedge");
    let deadline = Instant::now() + TIMEOUT * 2;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("wait_with_output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait_with_output");
            panic!(
                "pushedge {args:?} did not exit; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    /// Starts a server with the harness defaults plus `args` (`--set KEY=VALUE`, ...).
    /// Panics (with the server's stderr) when it does not become ready in time.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_nofile(args, None)
    }

    /// Like [`Server::start`], with the process's open-file limit set to `nofile` (through
    /// `prlimit`), to exercise accept errors (EMFILE).
    pub fn start_with_nofile(args: &[&str], nofile: Option<u64>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("pushedge-test")
            .tempdir()
            .expect("cannot create a temp dir");
        // A `--control PATH` in `args` replaces the harness's own socket path.
        let control = args
            .iter()
            .position(|a| *a == "--control")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| dir.path().join("pushedge.sock"), PathBuf::from);
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        if !args.contains(&"--control") {
            cmd.arg("--control").arg(&control);
        }
        if !args.iter().any(|a| a.starts_with("--workers")) {
            cmd.args(["--workers", "2"]);
        }
        if let Ok(backend) = std::env::var("PUSHEDGE_BACKEND") {
            if !backend.is_empty() && !args.iter().any(|a| a.starts_with("--backend")) {
                cmd.args(["--backend", &backend]);
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot spawn pushedge");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            thread::Builder::new()
                .name("pushedge-stderr".into())
                .spawn(move || {
                    let mut reader = BufReader::new(stderr);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        match reader.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let text = String::from_utf8_lossy(&line).into_owned();
                        lock(&log).push_str(&text);
                        if text.contains(" ready: ") {
                            let _ = tx.send(text);
                        }
                    }
                })
                .expect("cannot start the stderr thread");
        }
        let ready = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // Give the reader a moment to collect what was printed.
                thread::sleep(Duration::from_millis(50));
                panic!(
                    "pushedge did not become ready ({e}); args {args:?}; stderr:\n{}",
                    lock(&log)
                );
            }
        };
        let field = |name: &str| -> String {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in ready line: {ready}"))
                .to_string()
        };
        Server {
            addr: field("subscriber=").parse().expect("subscriber address"),
            admin_addr: field("admin=").parse().expect("admin address"),
            workers: field("workers=").parse().expect("worker count"),
            control,
            child,
            log,
            _dir: dir,
        }
    }

    /// Everything the server printed on stderr so far.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || lock(&self.log).contains(needle))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped
        // (it is reaped only by `wait_exit` or drop), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the process to exit; `None` when it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    // ---------------------------------------------------------------- subscriber port

    /// A raw connection to the subscriber port.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// One GET on the subscriber port (`Connection: close`), the whole response.
    pub fn get(&self, target: &str) -> Response {
        self.get_with(target, &[])
    }

    /// One GET on the subscriber port with extra header fields.
    pub fn get_with(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        let mut c = self.connect();
        c.send_request("GET", target, headers, b"", true);
        c.read_response(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"))
    }

    /// A WebSocket client on `target` (`/ws?channel=a`).
    pub fn ws(&self, target: &str) -> Ws {
        Ws::connect(self.addr, target)
    }

    /// An SSE stream; panics unless the answer is 200.
    pub fn sse(&self, target: &str) -> SseStream {
        self.sse_with(target, &[])
    }

    /// An SSE stream with extra request header fields (`Last-Event-ID`).
    pub fn sse_with(&self, target: &str, headers: &[(&str, &str)]) -> SseStream {
        let s = SseStream::open(self.addr, target, headers);
        assert_eq!(s.head.status, 200, "GET {target}: {:?}", s.head);
        s
    }

    /// An NDJSON stream; panics unless the answer is 200.
    pub fn stream(&self, target: &str) -> NdjsonStream {
        let s = NdjsonStream::open(self.addr, target);
        assert_eq!(s.head.status, 200, "GET {target}: {:?}", s.head);
        s
    }

    /// An iframe stream; panics unless the answer is 200.
    pub fn iframe(&self, target: &str) -> IframeStream {
        let s = IframeStream::open(self.addr, target);
        assert_eq!(s.head.status, 200, "GET {target}: {:?}", s.head);
        s
    }

    // ---------------------------------------------------------------- admin port

    /// One admin request (`Connection: close`).
    pub fn admin(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut c = Conn::connect(self.admin_addr);
        c.send_request(method, target, headers, body, true);
        c.read_response(TIMEOUT)
            .unwrap_or_else(|e| panic!("admin {method} {target}: {e:?}"))
    }

    /// Admin GET.
    pub fn admin_get(&self, target: &str) -> Response {
        self.admin("GET", target, &[], b"")
    }

    /// Admin POST with a body.
    pub fn admin_post(&self, target: &str, body: &[u8]) -> Response {
        self.admin("POST", target, &[], body)
    }

    /// Publishes through `POST /pub`; returns the seq.
    pub fn publish(&self, channel: &str, content: &str) -> u64 {
        let r = self.admin_post(&format!("/pub?channel={channel}"), content.as_bytes());
        assert_eq!(r.status, 200, "publish to {channel}: {}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "ok", "{v}");
        assert_eq!(v["channel"], channel, "{v}");
        v["seq"].as_u64().expect("seq")
    }

    /// `GET /info?channel=C`.
    pub fn channel_info(&self, channel: &str) -> Value {
        let r = self.admin_get(&format!("/info?channel={channel}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The epoch of a channel's stream, from `/info?channel=` (panics when it has none).
    pub fn epoch(&self, channel: &str) -> String {
        let v = self.channel_info(channel);
        let e = v["epoch"].as_str().unwrap_or_default().to_string();
        assert!(is_epoch(&e), "{channel} has no epoch: {v}");
        e
    }

    /// `GET /info`.
    pub fn info(&self) -> Value {
        let r = self.admin_get("/info");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Waits until the channel has exactly `n` subscribers (subscribing happens right
    /// after the handshake answer is written, so tests wait for it before publishing).
    pub fn wait_subscribers(&self, channel: &str, n: u64) {
        let ok = wait_until(TIMEOUT, || {
            self.channel_info(channel)["subscribers"].as_u64() == Some(n)
        });
        assert!(
            ok,
            "channel {channel} never had {n} subscribers: {}",
            self.channel_info(channel)
        );
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text().to_string()
    }

    /// One sample of `/metrics`, by its full name with labels
    /// (`pushedge_protocol_errors_total{kind="ws_1002"}`); 0 when absent.
    pub fn metric(&self, key: &str) -> f64 {
        metric_value(&self.metrics(), key).unwrap_or(0.0)
    }

    // ---------------------------------------------------------------- control socket

    /// A control socket client.
    pub fn ctl(&self) -> Ctl {
        Ctl::connect(&self.control)
    }

    /// Runs `pushedge ctl --control <path> ARGS...`.
    pub fn ctl_binary(&self, args: &[&str]) -> Output {
        let control = self.control.to_str().expect("UTF-8 temp path");
        let mut all = vec!["ctl", "--control", control];
        all.extend_from_slice(args);
        run_binary(&all)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sample of Prometheus text by its full key (name plus `{labels}`).
pub fn metric_value(text: &str, key: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

// ------------------------------------------------------------------------------ waiting

/// Polls `cond` every 10 ms until it is true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` every 10 ms until it gives a value or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------------------ raw HTTP

/// Why a read ended without what was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Nothing (complete) arrived in time.
    Timeout,
    /// The peer closed the connection (EOF, or a reset).
    Closed,
    /// The bytes do not parse.
    Malformed(String),
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Head.
    pub head: Head,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// A header field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text (panics when not UTF-8).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// The body as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// A buffered client socket whose every read has a deadline.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects (panics on failure).
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects from the loopback address `source` (127.0.0.2, ...): another client
    /// address for the per-address limits.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> io::Result<Conn> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(source, 0).into())?;
        sock.connect_timeout(&addr.into(), TIMEOUT)?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes all of `data`.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// Writes a request: `Host`, the given fields, `Content-Length` when there is a body
    /// (or the method is POST), and `Connection: close` when `close`.
    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes)
            .unwrap_or_else(|e| panic!("send {method} {target}: {e}"));
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    pub fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Consumes and returns the bytes up to and including the first `pat`.
    pub fn take_until(&mut self, pat: &[u8], timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut from = 0;
        loop {
            if let Some(i) = find(&self.buf[from..], pat) {
                let end = from + i + pat.len();
                return Ok(self.buf.drain(..end).collect());
            }
            from = self.buf.len().saturating_sub(pat.len());
            self.fill(deadline)?;
        }
    }

    /// Consumes and returns exactly `n` bytes.
    pub fn take_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n {
            self.fill(deadline)?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a response head.
    pub fn read_head(&mut self, timeout: Duration) -> Result<Head, ReadError> {
        let raw = self.take_until(b"\r\n\r\n", timeout)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            other => {
                return Err(ReadError::Malformed(format!(
                    "bad response head {other:?}: {:?}",
                    String::from_utf8_lossy(&raw)
                )))
            }
        }
        Ok(Head {
            status: resp.code.unwrap_or(0),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        })
    }

    /// Reads one chunk of a chunked body; `None` for the last chunk (trailers consumed).
    pub fn read_chunk(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ReadError> {
        let deadline = Instant::now() + timeout;
        let line = self.take_until(b"\r\n", timeout)?;
        let size_text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ReadError::Malformed(format!("bad chunk size line {size_text:?}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let l = self.take_until(b"\r\n", left)?;
                if l.len() == 2 {
                    return Ok(None);
                }
            }
        }
        let data = self.take_exact(size + 2, left)?;
        if &data[size..] != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
        Ok(Some(data[..size].to_vec()))
    }

    /// Reads a whole response: head, then a body framed by `Content-Length`, chunked
    /// encoding, or the end of the connection.
    pub fn read_response(&mut self, timeout: Duration) -> Result<Response, ReadError> {
        let deadline = Instant::now() + timeout;
        let head = self.read_head(timeout)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        let body = if let Some(len) = head.header("content-length") {
            let n: usize = len
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {len:?}")))?;
            self.take_exact(n, left())?
        } else if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk(left())? {
                body.extend_from_slice(&chunk);
            }
            body
        } else if head.status == 101 || head.status == 204 || head.status == 304 {
            Vec::new()
        } else {
            self.read_to_eof(left())?
        };
        Ok(Response {
            status: head.status,
            head,
            body,
        })
    }

    /// Reads until the peer closes; returns everything not consumed before.
    pub fn read_to_eof(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(_) => {}
                Err(ReadError::Closed) => return Ok(std::mem::take(&mut self.buf)),
                Err(e) => return Err(e),
            }
        }
    }

    /// True when the peer closes (EOF or reset) within `timeout`, whatever it sends
    /// before.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.read_to_eof(timeout).is_ok()
    }
}

fn find(hay: &[u8], pat: &[u8]) -> Option<usize> {
    if pat.is_empty() || hay.len() < pat.len() {
        return None;
    }
    hay.windows(pat.len()).position(|w| w == pat)
}

// ------------------------------------------------------------------------------ streams

/// A blank-line-separated SSE block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines joined with LF.
    pub data: Option<String>,
    /// `retry:`.
    pub retry: Option<u64>,
    /// Comment lines (without the leading colon and space).
    pub comments: Vec<String>,
}

/// One SSE event with data.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `id:` (the connection's resume cursor).
    pub id: Option<String>,
    /// The data, parsed as JSON.
    pub data: Value,
}

/// A `text/event-stream` response read incrementally.
pub struct SseStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
}

impl SseStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut conn = Conn::connect(addr);
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        conn.send_request("GET", target, &all, b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        SseStream { conn, head }
    }

    /// The next block (event, comment or retry).
    pub fn next_block(&mut self, timeout: Duration) -> Result<SseBlock, ReadError> {
        let raw = self.conn.take_until(b"\n\n", timeout)?;
        let text = String::from_utf8(raw).map_err(|e| ReadError::Malformed(e.to_string()))?;
        let mut block = SseBlock::default();
        for line in text.trim_end_matches('\n').split('\n') {
            if let Some(c) = line.strip_prefix(':') {
                block.comments.push(c.trim_start().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_string();
            match field {
                "id" => block.id = Some(value),
                "event" => block.event = Some(value),
                "retry" => block.retry = value.parse().ok(),
                "data" => {
                    block.data = Some(match block.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value,
                    })
                }
                other => return Err(ReadError::Malformed(format!("unknown field {other:?}"))),
            }
        }
        Ok(block)
    }

    /// The next event with data, skipping comments and `retry:` blocks.
    pub fn next_event(&mut self, timeout: Duration) -> Result<SseEvent, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let block = self.next_block(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(data) = block.data {
                let data = serde_json::from_str(&data)
                    .map_err(|e| ReadError::Malformed(format!("data {data:?}: {e}")))?;
                return Ok(SseEvent { id: block.id, data });
            }
        }
    }

    /// The next event; panics on anything else.
    pub fn expect_event(&mut self) -> SseEvent {
        self.next_event(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an SSE event: {e:?}"))
    }
}

/// A chunked `application/x-ndjson` response read incrementally.
pub struct NdjsonStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
    pending: Vec<u8>,
    lines: VecDeque<Value>,
    ended: bool,
}

impl NdjsonStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str) -> NdjsonStream {
        let mut conn = Conn::connect(addr);
        conn.send_request("GET", target, &[], b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        NdjsonStream {
            conn,
            head,
            pending: Vec::new(),
            lines: VecDeque::new(),
            ended: false,
        }
    }

    /// The next line as JSON; `Err(Closed)` after the last chunk.
    pub fn next(&mut self, timeout: Duration) -> Result<Value, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines.pop_front() {
                return Ok(v);
            }
            if self.ended {
                return Err(ReadError::Closed);
            }
            match self
                .conn
                .read_chunk(deadline.saturating_duration_since(Instant::now()))?
            {
                None => self.ended = true,
                Some(chunk) => {
                    self.pending.extend_from_slice(&chunk);
                    while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.pending.drain(..=i).collect();
                        let v = serde_json::from_slice(&line[..i]).map_err(|e| {
                            ReadError::Malformed(format!(
                                "line {:?}: {e}",
                                String::from_utf8_lossy(&line)
                            ))
                        })?;
                        self.lines.push_back(v);
                    }
                }
            }
        }
    }

    /// The next line; panics on anything else.
    pub fn expect(&mut self) -> Value {
        self.next(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an NDJSON line: {e:?}"))
    }

    /// True once the last chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// A chunked `text/html` iframe stream read incrementally.
pub struct IframeStream {
    /// The connection.
    pub conn: Conn,
    /// The response head.
    pub head: Head,
    /// Chunks that were not scripts (the preamble).
    pub other: Vec<String>,
    ended: bool,
}

impl IframeStream {
    /// Sends the GET and reads the head (any status).
    pub fn open(addr: SocketAddr, target: &str) -> IframeStream {
        let mut conn = Conn::connect(addr);
        conn.send_request("GET", target, &[], b"", false);
        let head = conn
            .read_head(TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {target}: {e:?}"));
        IframeStream {
            conn,
            head,
            other: Vec::new(),
            ended: false,
        }
    }

    /// The next `<script>parent.CB(JSON);</script>` as `(CB, JSON)`; `Err(Closed)` after
    /// the last chunk.
    pub fn next(&mut self, timeout: Duration) -> Result<(String, Value), ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ended {
                return Err(ReadError::Closed);
            }
            let Some(chunk) = self
                .conn
                .read_chunk(deadline.saturating_duration_since(Instant::now()))?
            else {
                self.ended = true;
                continue;
            };
            let text = String::from_utf8(chunk).map_err(|e| ReadError::Malformed(e.to_string()))?;
            let Some(rest) = text.strip_prefix("<script>parent.") else {
                self.other.push(text);
                continue;
            };
            let bad = || ReadError::Malformed(format!("bad script chunk {text:?}"));
            let body = rest.strip_suffix(");</script>\n").ok_or_else(bad)?;
            let (cb, json) = body.split_once('(').ok_or_else(bad)?;
            let v = serde_json::from_str(json).map_err(|_| bad())?;
            return Ok((cb.to_string(), v));
        }
    }

    /// The next script's JSON; panics on anything else.
    pub fn expect(&mut self) -> (String, Value) {
        self.next(TIMEOUT)
            .unwrap_or_else(|e| panic!("expected an iframe script: {e:?}"))
    }
}

// ------------------------------------------------------------------------------ WebSocket

/// What a WebSocket read produced.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A text message, parsed as JSON.
    Json(Value),
    /// A text message that is not JSON.
    Other(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping from the server (tungstenite answers it).
    Ping,
    /// A close frame: code and reason (`None` when the frame had no code).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (or after it).
    Ended(String),
    /// Nothing arrived in time.
    Timeout,
}

/// A well-behaved WebSocket client (tungstenite over a std `TcpStream`).
pub struct Ws {
    /// The socket.
    pub ws: tungstenite::WebSocket<TcpStream>,
}

impl Ws {
    /// Connects and completes the handshake; panics on failure.
    pub fn connect(addr: SocketAddr, target: &str) -> Ws {
        Ws::try_connect(addr, target).unwrap_or_else(|e| panic!("WebSocket {target}: {e}"))
    }

    /// Connects; a non-101 answer is `Err(tungstenite::Error::Http(response))`.
    pub fn try_connect(addr: SocketAddr, target: &str) -> Result<Ws, tungstenite::Error> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let url = format!("ws://{addr}{target}");
        match tungstenite::client(url.as_str(), stream) {
            Ok((ws, _resp)) => Ok(Ws { ws }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(
                io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
            )),
        }
    }

    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(tungstenite::Message::text(text))
            .unwrap_or_else(|e| panic!("WebSocket send: {e}"));
    }

    /// Sends a JSON value as a text message.
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// The next event (including pings), waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> WsEvent {
        use tungstenite::{Error, Message};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WsEvent::Timeout;
            }
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return match serde_json::from_str(t.as_str()) {
                        Ok(v) => WsEvent::Json(v),
                        Err(_) => WsEvent::Other(t.as_str().to_string()),
                    }
                }
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Ping(_)) => return WsEvent::Ping,
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => {
                    return WsEvent::Close(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                    )
                }
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return WsEvent::Ended(e.to_string()),
            }
        }
    }

    /// The next JSON message, skipping pings; panics on anything else.
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_within(TIMEOUT)
    }

    /// The next JSON message within `timeout`, skipping pings; panics on anything else.
    pub fn recv_json_within(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Ping => continue,
                WsEvent::Json(v) => return v,
                other => panic!("expected a JSON message, got {other:?}"),
            }
        }
    }

    /// Skips messages and pings until a close frame or the end; `Some(code)` for a close
    /// frame with a code, panics when nothing ends the connection within `timeout`.
    pub fn recv_close(&mut self, timeout: Duration) -> Option<u16> {
        self.recv_close_frame(timeout).map(|(code, _)| code)
    }

    /// Like [`Ws::recv_close`], with the close reason.
    pub fn recv_close_frame(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Close(frame) => return frame,
                WsEvent::Ended(_) => return None,
                WsEvent::Timeout => panic!("the connection was not closed within {timeout:?}"),
                _ => continue,
            }
        }
    }

    /// Asserts that no data message arrives for `QUIET` (pings are fine).
    pub fn expect_quiet(&mut self) {
        let deadline = Instant::now() + QUIET;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now())) {
                WsEvent::Timeout => return,
                WsEvent::Ping => continue,
                other => panic!("expected nothing, got {other:?}"),
            }
        }
    }
}

/// A received raw WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// RSV bits (shifted down: 0..=7).
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// Payload (unmasked).
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: the code and reason.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != 0x8 || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// A hand-driven WebSocket client: writes arbitrary frames, never answers pings.
pub struct RawWs {
    /// The connection (after the 101 head).
    pub conn: Conn,
}

/// Opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

impl RawWs {
    /// The handshake request for `target`, with a given version.
    pub fn handshake_request(target: &str, version: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    }

    /// Sends a handshake with extra header fields; the connection on 101, else the
    /// answer.
    pub fn try_connect_with(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawWs, Response> {
        let mut conn = Conn::connect(addr);
        let mut req = RawWs::handshake_request(target, "13");
        req.truncate(req.len() - 2);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.send(req.as_bytes()).expect("send handshake");
        let head = conn.read_head(TIMEOUT).expect("handshake answer");
        if head.status == 101 {
            return Ok(RawWs { conn });
        }
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = conn.take_exact(len, TIMEOUT).expect("the refusal's body");
        Err(Response {
            status: head.status,
            head,
            body,
        })
    }

    /// Connects and completes the handshake; panics unless the answer is 101 with the
    /// right `Sec-WebSocket-Accept`.
    pub fn connect(addr: SocketAddr, target: &str) -> RawWs {
        let mut conn = Conn::connect(addr);
        conn.send(RawWs::handshake_request(target, "13").as_bytes())
            .expect("send handshake");
        let head = conn.read_head(TIMEOUT).expect("handshake answer");
        assert_eq!(head.status, 101, "handshake for {target}: {head:?}");
        // The RFC 6455 section 1.3 example key and its accept value.
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head:?}"
        );
        RawWs { conn }
    }

    /// Writes one frame: `fin`, `rsv` (0..=7), `opcode`, masked with a fixed key when
    /// `masked`.
    pub fn send_frame(&mut self, fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) {
        let bytes = encode_frame(
            fin,
            rsv,
            opcode,
            masked.then_some([0x37, 0xfa, 0x21, 0x3d]),
            payload,
        );
        self.conn.send(&bytes).expect("send frame");
    }

    /// Writes a masked, final text frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0, op::TEXT, true, text.as_bytes());
    }

    /// Reads one frame from the server.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let h = self.conn.take_exact(2, timeout)?;
        let fin = h[0] & 0x80 != 0;
        let rsv = (h[0] >> 4) & 0x7;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let b = self.conn.take_exact(2, left())?;
            len = u64::from(u16::from_be_bytes([b[0], b[1]]));
        } else if len == 127 {
            let b = self.conn.take_exact(8, left())?;
            len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
        }
        let mask = if masked {
            Some(self.conn.take_exact(4, left())?)
        } else {
            None
        };
        let len = usize::try_from(len).map_err(|_| ReadError::Malformed("huge frame".into()))?;
        let mut payload = self.conn.take_exact(len, left())?;
        if let Some(m) = mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        Ok(Frame {
            fin,
            rsv,
            opcode,
            payload,
        })
    }

    /// The next data frame's payload as JSON, skipping pings.
    pub fn recv_json(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self
                .read_frame(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("expected a frame: {e:?}"));
            match f.opcode {
                op::PING | op::PONG => continue,
                op::TEXT => {
                    return serde_json::from_slice(&f.payload).unwrap_or_else(|e| {
                        panic!("{e}: {:?}", String::from_utf8_lossy(&f.payload))
                    })
                }
                _ => panic!("expected a text frame, got {f:?}"),
            }
        }
    }

    /// Skips frames until a close frame (`Some((code, reason))`, or `Some((0, ""))` for a
    /// close frame without a code) or the end of the connection (`None`). Panics when
    /// neither happens within `timeout`.
    pub fn recv_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline.saturating_duration_since(Instant::now())) {
                Ok(f) if f.opcode == op::CLOSE => {
                    return Some(f.close_code().unwrap_or((0, String::new())))
                }
                Ok(_) => continue,
                Err(ReadError::Closed) => return None,
                Err(ReadError::Timeout) => {
                    panic!("the connection was not closed within {timeout:?}")
                }
                Err(e) => panic!("reading frames: {e:?}"),
            }
        }
    }
}

/// Encodes a frame (for [`RawWs`] and for tests that build byte strings).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(u8::from(fin) << 7 | (rsv & 0x7) << 4 | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

// ------------------------------------------------------------------------------ control

/// A control socket client: one command line in, one JSON line out.
pub struct Ctl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Ctl {
    /// Connects (panics on failure).
    pub fn connect(path: &Path) -> Ctl {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_write_timeout(Some(TIMEOUT)).expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Ctl {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// Sends one command and reads its reply (within `TIMEOUT`).
    pub fn cmd(&mut self, line: &str) -> Value {
        self.cmd_within(line, TIMEOUT)
    }

    /// Sends one command and reads its reply within `timeout`.
    pub fn cmd_within(&mut self, line: &str, timeout: Duration) -> Value {
        self.send_line(line);
        self.read_reply(timeout)
            .unwrap_or_else(|e| panic!("control `{line}`: {e:?}"))
    }

    /// Sends one line.
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.writer, "{line}").unwrap_or_else(|e| panic!("control send: {e}"));
    }

    /// Reads one reply line as JSON.
    pub fn read_reply(&mut self, timeout: Duration) -> Result<Value, ReadError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => serde_json::from_str(&line)
                .map_err(|e| ReadError::Malformed(format!("{e}: {line:?}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(_) => Err(ReadError::Closed),
        }
    }
}

// ------------------------------------------------------------------------------ tokens

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A JWT with the given header and claims JSON, signed HS256 with `secret` (whatever the
/// header says, so tests can forge `alg` values).
pub fn jwt(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{sig}")
}

/// An HS256 token granting `channels` until `exp`.
pub fn token_for(channels: &[&str], exp: u64, secret: &[u8]) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"channels": channels, "exp": exp}),
        secret,
    )
}

// ------------------------------------------------------------------------------ misc

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `seq` of each data message in `msgs`.
pub fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

// ------------------------------------------------------------------------------ epochs

/// True for an epoch of the form the server writes: 1-16 characters of `0-9 a-z`.
pub fn is_epoch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// `v` without its `"epoch"` fields (in an object, or in each object of an array), each
/// checked to be a valid epoch first: for assertions about the other fields. Tests about
/// epochs compare them exactly.
pub fn no_epoch(mut v: Value) -> Value {
    match &mut v {
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = no_epoch(item.take());
            }
        }
        Value::Object(map) => {
            if let Some(e) = map.remove("epoch") {
                let e = e
                    .as_str()
                    .unwrap_or_else(|| panic!("epoch is not a string: {e}"));
                assert!(is_epoch(e), "bad epoch {e:?}");
            }
        }
        _ => {}
    }
    v
}

/// A resume cursor without its `@epoch` parts (`a:1@x,b:2@y` -> `a:1,b:2`), each checked
/// to be a valid epoch first.
pub fn no_epochs_in_cursor(cursor: &str) -> String {
    cursor
        .split(',')
        .map(|entry| {
            let (name, pos) = entry.rsplit_once(':').unwrap_or((entry, ""));
            match pos.split_once('@') {
                Some((seq, e)) => {
                    assert!(is_epoch(e), "bad epoch {e:?} in cursor {cursor:?}");
                    format!("{name}:{seq}")
                }
                None => entry.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

// ------------------------------------------------------------------------------ publishing

/// The answer to one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAnswer {
    /// HTTP status; 0 when no answer came (the connection ended first).
    pub status: u16,
    /// The seq of a 200.
    pub seq: Option<u64>,
    /// The epoch of a 200.
    pub epoch: Option<String>,
    /// What was published.
    pub content: String,
}

/// Publishes over one admin connection with `depth` requests in flight: `next(i)` gives
/// the i-th content (`None` ends), `stop` ends early. Returns one answer per request sent,
/// in order; requests left unanswered when the connection ends get status 0.
pub fn publish_pipelined(
    admin: SocketAddr,
    channel: &str,
    depth: usize,
    stop: &std::sync::atomic::AtomicBool,
    mut next: impl FnMut(usize) -> Option<String>,
) -> Vec<PubAnswer> {
    let mut conn = Conn::connect(admin);
    let mut answers = Vec::new();
    let mut done = false;
    while !done && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut batch = Vec::with_capacity(depth);
        let mut out = Vec::new();
        for _ in 0..depth {
            let Some(c) = next(answers.len() + batch.len()) else {
                done = true;
                break;
            };
            out.extend_from_slice(
                format!(
                    "POST /pub?channel={channel} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    c.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(c.as_bytes());
            batch.push(c);
        }
        if batch.is_empty() {
            break;
        }
        let sent = conn.send(&out).is_ok();
        for content in batch {
            let r = if sent {
                conn.read_response(TIMEOUT * 2).ok()
            } else {
                None
            };
            let (status, seq, epoch) = match r {
                Some(r) => {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    (
                        r.status,
                        v["seq"].as_u64().filter(|_| r.status == 200),
                        v["epoch"].as_str().map(str::to_string),
                    )
                }
                None => {
                    done = true;
                    (0, None, None)
                }
            };
            answers.push(PubAnswer {
                status,
                seq,
                epoch,
                content,
            });
        }
    }
    answers
}
