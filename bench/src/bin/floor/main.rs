//! bench-floor: how close pushedge's fan-out is to this machine's physical floor.
//!
//! ```text
//! floor [--backend epoll|uring] [--pushedge BIN] [--conns 15000] [--rounds 15] [--warmup 1]
//!       [--threads N] [--frame-size 60] [--body TEXT] [--settle-ms 200] [--deadline 120]
//!       [--out DIR]
//! ```
//!
//! Two senders, each read by its own reader process running the same minimal epoll
//! code (`floor reader`), rounds interleaved in one run (bare, pushedge, bare, ...):
//!
//! - bare: `floor sender`, no pushedge at all: one thread per core writes one ready
//!   60-byte WebSocket text frame to each of its share of the 15,000 loopback sockets,
//!   all threads released by one byte on a control connection;
//! - pushedge: `pushedge serve` with 15,000 WebSocket subscribers on one channel, and one
//!   `POST /pub` (a few bytes of content) on a kept-alive admin connection.
//!
//! A round's figure is the time from the trigger's write (in the reader) to the moment the
//! last of the sockets has its whole frame. The first `--warmup` rounds of each are
//! dropped; it prints the p50 / min / max of each, the ratio of the p50s, and writes
//! `target/bench/floor-<backend>-<unix time>.json`.
//!
//! The open-file limit (20,000) does not fit 30,000 sockets in one process, hence the
//! processes: the coordinator (this `main`), two readers, the sender and pushedge. Each
//! child leads its own process group, dies with the coordinator (PR_SET_PDEATHSIG), and
//! is killed at the end, on an error, on a panic, on SIGINT/SIGTERM/SIGHUP, and when the
//! run passes `--deadline`.

mod reader;
mod sender;
mod sys;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub type Res<T> = Result<T, String>;
pub type Args = [String];

/// The value after `name`, or `default`.
pub fn arg_str(args: &Args, name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The number after `name`, or `default`.
pub fn arg_num<T: std::str::FromStr>(args: &Args, name: &str, default: T) -> Res<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name}: expected a number")),
    }
}

const USAGE: &str = "usage: floor [--backend epoll|uring] [--pushedge BIN] [--conns 15000] \
[--rounds 15] [--warmup 1] [--threads N] [--frame-size 60] [--body TEXT] [--settle-ms 200] \
[--deadline 120] [--out DIR]
  (floor reader ... and floor sender ... are its own child processes)";

const KNOWN: &[&str] = &[
    "--backend",
    "--pushedge",
    "--conns",
    "--rounds",
    "--warmup",
    "--threads",
    "--frame-size",
    "--body",
    "--settle-ms",
    "--deadline",
    "--out",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (who, res) = match args.first().map(String::as_str) {
        Some("reader") => ("floor reader", reader::main(&args[1..])),
        Some("sender") => ("floor sender", sender::main(&args[1..])),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return;
        }
        _ => ("floor", coordinate(&args)),
    };
    if let Err(e) = res {
        kill_children();
        eprintln!("{who}: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- children

/// The pids of the running children, for the watchdog and the panic hook (no locks).
static CHILDREN: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];

fn register(pid: u32) {
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    // No slot left: kill it rather than lose track of it.
    sys::kill_tree(pid as i32);
    panic!("more than {} children", CHILDREN.len());
}

fn kill_children() {
    for slot in &CHILDREN {
        let pid = slot.swap(0, Ordering::SeqCst);
        sys::kill_tree(pid);
    }
}

/// A started child with its pipes.
struct Kid {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Kid {
    fn spawn(name: &'static str, cmd: &mut Command) -> Res<Kid> {
        let mut child = sys::spawn_guarded(cmd).map_err(|e| format!("starting {name}: {e}"))?;
        register(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Kid {
            name,
            child,
            stdin,
            stdout,
        })
    }

    /// The next line the child prints on stdout.
    fn line(&mut self) -> Res<String> {
        let out = self
            .stdout
            .as_mut()
            .ok_or_else(|| format!("{}: no stdout", self.name))?;
        let mut line = String::new();
        let n = out
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.name))?;
        if n == 0 {
            let status = self.child.try_wait().ok().flatten();
            return Err(format!("{} exited ({status:?})", self.name));
        }
        Ok(line.trim_end().to_string())
    }

    fn send(&mut self, line: &str) -> Res<()> {
        let inp = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: no stdin", self.name))?;
        writeln!(inp, "{line}")
            .and_then(|_| inp.flush())
            .map_err(|e| format!("{}: {e}", self.name))
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        for slot in &CHILDREN {
            if slot
                .compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break;
            }
        }
        sys::kill_tree(pid);
        let _ = self.child.wait();
    }
}

/// Kills every child and exits when a termination signal arrives or the deadline passes.
fn start_watchdog(deadline: Duration) {
    let t0 = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(sig) = sys::signalled() {
            kill_children();
            remove_run_dir();
            eprintln!("floor: stopped by signal {sig}; every child killed");
            std::process::exit(128 + sig);
        }
        if t0.elapsed() > deadline {
            kill_children();
            remove_run_dir();
            eprintln!(
                "floor: the run passed its deadline of {} s; every child killed",
                deadline.as_secs()
            );
            std::process::exit(1);
        }
    });
}

// ---------------------------------------------------------------- coordinator

/// The directory of pushedge's control socket, removed at the end and by the watchdog.
static RUN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
const RUN_DIR_PREFIX: &str = "pushedge-floor-";

/// A fresh `<tmp>/pushedge-floor-<pid>`, after removing those of earlier runs whose
/// coordinator is gone (one killed with SIGKILL could not remove its own).
fn make_run_dir() -> Res<PathBuf> {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(RUN_DIR_PREFIX) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = RUN_DIR.set(dir.clone());
    Ok(dir)
}

fn remove_run_dir() {
    if let Some(d) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A free port on 127.0.0.1 (bound and released; the server binds it right after).
fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// One HTTP/1.1 GET on its own connection; the body of the answer.
fn http_get(addr: SocketAddr, path: &str) -> Res<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

/// The number after `"key":` in a flat JSON text.
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `key=value` fields of a reader's `done` line.
fn field(line: &str, key: &str) -> Res<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key}= in {line:?}"))
}

/// One round's figures, as the reader reported them.
#[derive(Clone, Copy)]
struct Round {
    last_us: u64,
    first_us: u64,
    ctl_us: u64,
    frame: u64,
    stray: u64,
}

fn run_round(kid: &mut Kid) -> Res<Round> {
    kid.send("go")?;
    let line = kid.line()?;
    if !line.starts_with("done ") {
        return Err(format!("{}: unexpected answer {line:?}", kid.name));
    }
    Ok(Round {
        last_us: field(&line, "last_us")?,
        first_us: field(&line, "first_us")?,
        ctl_us: field(&line, "ctl_us")?,
        frame: field(&line, "frame")?,
        stray: field(&line, "stray")?,
    })
}

/// p50 (the mean of the two middle values for an even count), min, max.
fn stats(v: &[u64]) -> (f64, u64, u64) {
    if v.is_empty() {
        return (0.0, 0, 0);
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    let p50 = if n % 2 == 1 {
        s[n / 2] as f64
    } else {
        (s[n / 2 - 1] + s[n / 2]) as f64 / 2.0
    };
    (p50, s[0], s[n - 1])
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

fn side_json(rounds: &[Round], warmup: usize) -> serde_json::Value {
    let kept = &rounds[warmup.min(rounds.len())..];
    let last: Vec<u64> = kept.iter().map(|r| r.last_us).collect();
    let (p50, min, max) = stats(&last);
    let (first_p50, _, _) = stats(&kept.iter().map(|r| r.first_us).collect::<Vec<_>>());
    let (ctl_p50, _, _) = stats(&kept.iter().map(|r| r.ctl_us).collect::<Vec<_>>());
    serde_json::json!({
        "frame_bytes": rounds.first().map_or(0, |r| r.frame),
        "last_arrival_us": { "p50": p50, "min": min, "max": max },
        "first_arrival_p50_us": first_p50,
        "trigger_answer_p50_us": ctl_p50,
        "stray_bytes": rounds.iter().map(|r| r.stray).sum::<u64>(),
        "rounds": rounds.iter().enumerate().map(|(i, r)| serde_json::json!({
            "warmup": i < warmup,
            "last_arrival_us": r.last_us,
            "first_arrival_us": r.first_us,
            "trigger_answer_us": r.ctl_us,
        })).collect::<Vec<_>>(),
    })
}

/// The machine's CPU time (/proc/stat) summed over the pauses between rounds.
#[derive(Default)]
struct Pauses {
    /// Deltas of the `cpu` line's fields: user nice system idle iowait irq softirq steal.
    sum: Vec<u64>,
}

impl Pauses {
    fn fields() -> Vec<u64> {
        let stat = read_file("/proc/stat");
        let line = stat.lines().next().unwrap_or_default();
        line.split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect()
    }

    fn pause(&mut self, d: Duration) {
        let a = Self::fields();
        std::thread::sleep(d);
        let b = Self::fields();
        self.sum.resize(a.len().min(b.len()).max(self.sum.len()), 0);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            self.sum[i] += y.saturating_sub(*x);
        }
    }

    /// (busy, steal) shares of the machine's time during the pauses.
    fn shares(&self) -> (f64, f64) {
        let total: u64 = self.sum.iter().sum();
        if total == 0 || self.sum.len() < 8 {
            return (0.0, 0.0);
        }
        let idle = self.sum[3] + self.sum[4];
        (
            (total - idle) as f64 / total as f64,
            self.sum[7] as f64 / total as f64,
        )
    }
}

fn read_file(p: &str) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn coordinate(args: &Args) -> Res<()> {
    if let Some(a) = args
        .iter()
        .step_by(2)
        .find(|a| !KNOWN.contains(&a.as_str()))
    {
        return Err(format!("unknown option {a}\n{USAGE}"));
    }
    let backend = arg_str(args, "--backend", "epoll");
    if backend != "epoll" && backend != "uring" {
        return Err(format!("--backend {backend}: expected epoll or uring"));
    }
    let default_bin = std::env::var("PUSHEDGE_BIN")
        .unwrap_or_else(|_| target_dir().join("release/pushedge").display().to_string());
    let pushedge = arg_str(args, "--pushedge", &default_bin);
    let conns: usize = arg_num(args, "--conns", 15_000)?;
    let rounds: usize = arg_num(args, "--rounds", 15)?;
    let warmup: usize = arg_num(args, "--warmup", 1)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: usize = arg_num(args, "--threads", cores)?;
    let frame_size: usize = arg_num(args, "--frame-size", 60)?;
    let body = arg_str(args, "--body", "floor");
    let settle = Duration::from_millis(arg_num(args, "--settle-ms", 200)?);
    let deadline = Duration::from_secs(arg_num(args, "--deadline", 120)?);
    let out_dir = PathBuf::from(arg_str(
        args,
        "--out",
        &target_dir().join("bench").display().to_string(),
    ));
    if rounds <= warmup {
        return Err(format!(
            "--rounds {rounds} leaves nothing after --warmup {warmup}"
        ));
    }
    sender::frame(frame_size)?;
    if body.is_empty() || body.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("--body: expected printable ASCII without spaces".into());
    }
    if !Path::new(&pushedge).is_file() {
        return Err(format!(
            "{pushedge} is missing: cargo build --release -p pushedge (or set PUSHEDGE_BIN)"
        ));
    }

    sys::catch_termination_signals();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_children();
        default_hook(info);
    }));
    start_watchdog(deadline);
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;

    let version = Command::new(&pushedge)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let run_dir = make_run_dir()?;
    let res = (|| {
        // ---- pushedge
        let (port, admin_port) = (free_port()?, free_port()?);
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let control = run_dir.join("floor.sock");
        let mut pe = Kid::spawn(
            "pushedge",
            Command::new(&pushedge)
                .args([
                    "serve",
                    "--listen",
                    &listen.to_string(),
                    "--admin",
                    &admin.to_string(),
                ])
                .arg("--control")
                .arg(&control)
                .args(["--backend", &backend, "--set", "heartbeat_secs=300"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )?;
        let log_lines = watch_log(&mut pe)?;
        eprintln!("floor: pushedge {version} ({backend}) ready on {listen}, admin {admin}");

        // ---- the bare sender
        let mut sender = Kid::spawn(
            "sender",
            Command::new(&exe)
                .args([
                    "sender",
                    "--conns",
                    &conns.to_string(),
                    "--threads",
                    &threads.to_string(),
                ])
                .args(["--frame-size", &frame_size.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )?;
        let l = sender.line()?;
        let sender_port: u16 = l
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("sender: unexpected {l:?}"))?;

        // ---- the two readers (connecting at the same time)
        let reader = |mode: &str, addr: SocketAddr| {
            let mut c = Command::new(&exe);
            c.args(["reader", "--mode", mode, "--addr", &addr.to_string()])
                .args(["--conns", &conns.to_string(), "--admin", &admin.to_string()])
                .args(["--channel", "floor", "--body", &body])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            c
        };
        let mut bare = Kid::spawn(
            "bare reader",
            &mut reader("bare", ([127, 0, 0, 1], sender_port).into()),
        )?;
        let mut wsr = Kid::spawn("pushedge reader", &mut reader("ws", listen))?;
        let l = sender.line()?;
        if l != "ready" {
            return Err(format!("sender: unexpected {l:?}"));
        }
        let bare_ready = bare.line()?;
        let ws_ready = wsr.line()?;
        eprintln!("floor: bare reader {bare_ready}; pushedge reader {ws_ready}");
        let t = Instant::now();
        loop {
            let info = http_get(admin, "/info?channel=floor")?;
            if json_u64(&info, "subscribers") == Some(conns as u64) {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "pushedge does not report {conns} subscribers: {info}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "floor: {conns} subscribers on pushedge and {conns} bare sockets, {:.1} s after start; \
             {rounds} rounds of each ({warmup} warm-up), sender threads {threads}",
            started.elapsed().as_secs_f64()
        );

        // ---- the rounds, interleaved
        let load0 = read_file("/proc/loadavg");
        let (mut b, mut p) = (Vec::new(), Vec::new());
        let mut idle = Pauses::default();
        for i in 0..rounds {
            idle.pause(settle);
            let rb = run_round(&mut bare)?;
            idle.pause(settle);
            let rp = run_round(&mut wsr)?;
            eprintln!(
                "floor: round {:>2}{} bare {:>6} ms  pushedge {:>6} ms",
                i + 1,
                if i < warmup {
                    " (warm-up)"
                } else {
                    "          "
                },
                ms(rb.last_us as f64),
                ms(rp.last_us as f64)
            );
            if rb.stray + rp.stray > 0 {
                eprintln!(
                    "floor: warning: {} stray bytes after the round's frames",
                    rb.stray + rp.stray
                );
            }
            b.push(rb);
            p.push(rp);
        }
        let warn_lines: Vec<String> = log_lines
            .try_iter()
            .filter(|l| l.contains(" warn ") || l.contains(" error "))
            .take(10)
            .collect();
        let status = pe.child.try_wait().ok().flatten();
        if let Some(s) = status {
            return Err(format!("pushedge exited during the run ({s})"));
        }
        Ok((b, p, warn_lines, load0, idle, bare_ready, ws_ready))
        // The children (Kid) are killed and reaped as they drop here.
    })();
    kill_children();
    remove_run_dir();
    let (b, p, warn_lines, load0, idle, bare_ready, ws_ready) = res?;
    let (busy, steal) = idle.shares();

    let bj = side_json(&b, warmup);
    let pj = side_json(&p, warmup);
    let kept = |v: &[Round]| v[warmup..].iter().map(|r| r.last_us).collect::<Vec<_>>();
    let (bp50, bmin, bmax) = stats(&kept(&b));
    let (pp50, pmin, pmax) = stats(&kept(&p));
    let ratio = if bp50 > 0.0 { pp50 / bp50 } else { 0.0 };
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = serde_json::json!({
        "bench": "floor",
        "backend": backend,
        "conns": conns,
        "rounds": rounds,
        "warmup": warmup,
        "sender_threads": threads,
        "settle_ms": settle.as_millis() as u64,
        "publish_body": body,
        "unix_time": unix,
        "machine": {
            "kernel": read_file("/proc/sys/kernel/osrelease"),
            "cpus": cores,
            "loadavg_before": load0,
            // The machine's CPU use while every process of the run sat idle (the pauses
            // between rounds): what others ran on it, as shares of all its CPU time.
            "background_busy_share": busy,
            "background_steal_share": steal,
            "ip_local_port_range": read_file("/proc/sys/net/ipv4/ip_local_port_range"),
        },
        "pushedge_version": version,
        "pushedge_bin": pushedge,
        "readers": { "bare": bare_ready, "pushedge": ws_ready },
        "bare": bj,
        "pushedge": pj,
        "ratio_p50": ratio,
        "server_log_warnings": warn_lines,
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let path = out_dir.join(format!("floor-{backend}-{unix}.json"));
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;

    let n = rounds - warmup;
    println!("bench-floor ({backend}): last arrival at {conns} sockets, {n} rounds each after {warmup} warm-up");
    println!(
        "  bare      p50 {:>6} ms  min {:>6} ms  max {:>6} ms  ({} B frames, {threads} sending threads)",
        ms(bp50),
        ms(bmin as f64),
        ms(bmax as f64),
        b[0].frame
    );
    println!(
        "  pushedge  p50 {:>6} ms  min {:>6} ms  max {:>6} ms  ({} B frames, {} {backend})",
        ms(pp50),
        ms(pmin as f64),
        ms(pmax as f64),
        p[0].frame,
        version
    );
    println!(
        "  background load between rounds: busy {:.0}%, steal {:.0}% of the machine{}",
        busy * 100.0,
        steal * 100.0,
        if busy > 0.1 {
            " (something else was running: the figures are noisy)"
        } else {
            ""
        }
    );
    println!(
        "  wrote {}",
        path.strip_prefix(root()).unwrap_or(&path).display()
    );
    println!(
        "{backend}: bare p50 {} ms, pushedge p50 {} ms, ratio {ratio:.2}",
        ms(bp50),
        ms(pp50)
    );
    Ok(())
}

/// Reads pushedge's stderr on a thread, waits for its ready line, and hands back the
/// later lines (the run keeps its warnings and errors in the JSON).
fn watch_log(pe: &mut Kid) -> Res<mpsc::Receiver<String>> {
    let err = pe.child.stderr.take().ok_or("pushedge: no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = Duration::from_secs(20).saturating_sub(t.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(" ready: ") => return Ok(rx),
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "pushedge printed no ready line in 20 s:\n{}",
                    seen.join("\n")
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("pushedge exited at startup:\n{}", seen.join("\n")))
            }
        }
    }
}
