//! The server under test: [`Server`] (spawn, stderr log, signals, the subscriber, admin
//! and control clients), locating and (re)building the binary ([`binary`]), one-shot runs
//! ([`run_binary`]), and reading `/metrics` samples ([`metric_value`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::{
    is_epoch, wait_until, Conn, Ctl, IframeStream, NdjsonStream, Response, SseStream, Ws,
    START_TIMEOUT, TIMEOUT,
};

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
        Server::start_full(args, nofile, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the process.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_full(args, None, env)
    }

    fn start_full(args: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Server {
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
        cmd.envs(env.iter().copied());
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
                        // Text, or `log_format = "json"` ({"msg":"ready: ..."}).
                        if text.contains(" ready: ") || text.contains("\"msg\":\"ready: ") {
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
                .trim_end_matches(['"', '}'])
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sample of Prometheus text by its full key (name plus `{labels}`).
pub fn metric_value(text: &str, key: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}
