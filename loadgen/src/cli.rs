//! The command line: parsing, checking every bound, and turning it into a [`Plan`].

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::time::Duration;

use crate::client::{check_namespace, Format, Transport};
use crate::coord::{self, Plan, HARD_CAP};
use crate::publish::{MAX_PIPELINE, MAX_PUBLISHERS};
use crate::sys;
use crate::tls::{self, TlsSpec, Versions};
use crate::url::{self, Scheme, Target};
use crate::wire::Mode;

/// Most connections one run may hold.
pub const MAX_CONNS: u64 = 2_000_000;
/// Most child processes.
pub const MAX_PROCS: u32 = 256;
/// Most channels.
pub const MAX_CHANNELS: u32 = 1_000_000;
/// Most publishes (messages x channels) in one fanout.
pub const MAX_PUBLISHES: u64 = 1_000_000;
/// Largest message content.
pub const MAX_SIZE: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for pushedge (and nchan): hold, fanout, storm, handshake; plain or TLS. Targets on this machine only, unless --allow-remote."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open N connections and hold them for a duration.
    Hold(HoldArgs),
    /// Hold N subscribers, publish M messages, measure delivery.
    Fanout(FanoutArgs),
    /// Keep N open while closing and reopening some; reconnect after drops.
    Storm(StormArgs),
    /// Keep N handshakes in flight, closing each connection once subscribed: handshakes/s.
    Handshake(HandshakeArgs),
    /// (internal) A worker process started by the coordinator.
    #[command(hide = true)]
    Child,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TransportArg {
    Ws,
    Sse,
    Stream,
    Poll,
    Socketio,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TlsVersionArg {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    Pushedge,
    Raw,
}

#[derive(Args, Debug)]
struct Common {
    /// Subscriber URL (ws://, wss://, http:// or https://; loopback unless --allow-remote);
    /// `{c}` is replaced by the channel.
    #[arg(long)]
    url: String,
    /// Allow targets (and --publish, --sources) off this machine: any host. Make sure you
    /// are allowed to load it.
    #[arg(long)]
    allow_remote: bool,
    /// Connections to open (handshake: in their handshake at once).
    #[arg(long)]
    conns: u64,
    /// Channels the connections are spread over (`ch0`, `ch1`, ...).
    #[arg(long, default_value_t = 1)]
    channels: u32,
    /// Child processes (default: enough for ~19,000 sockets each).
    #[arg(long)]
    procs: Option<u32>,
    /// Source addresses to bind, e.g. 127.0.0.2-127.0.0.40 (each gives ~64k ports).
    #[arg(long)]
    sources: Option<String>,
    /// Transport (default: from the URL: ws://, /sse, /stream, /poll, /socket.io/).
    #[arg(long, value_enum)]
    transport: Option<TransportArg>,
    /// Socket.IO: the namespace to connect to; the channels are its rooms.
    #[arg(long)]
    namespace: Option<String>,
    /// Message format: pushedge's JSON envelope, or raw bodies (nchan).
    #[arg(long, value_enum, default_value_t = FormatArg::Pushedge)]
    format: FormatArg,
    /// Connect + handshake timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Most connections in their handshake at once, per process.
    #[arg(long, default_value_t = 1000)]
    max_pending: u32,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// TLS under the transport (implied by wss:// and https:// URLs).
    #[arg(long)]
    tls: bool,
    /// TLS: trust the CA certificates of this PEM file (and check the server's name).
    #[arg(long, value_name = "FILE")]
    cacert: Option<String>,
    /// TLS: accept any certificate for any name (the handshake signature is still
    /// checked); for benchmarks.
    #[arg(long)]
    insecure: bool,
    /// TLS: the server name sent (SNI) and checked (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// TLS: no session resumption (every handshake is full).
    #[arg(long)]
    no_resume: bool,
    /// TLS: offer only this version (default: 1.2 and 1.3).
    #[arg(long, value_enum)]
    tls_version: Option<TlsVersionArg>,
}

#[derive(Args, Debug)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// New connections per second, all processes together (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to hold once connected.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Publish URL (http://; loopback unless --allow-remote); `{c}` is replaced by the
    /// channel.
    #[arg(long)]
    publish: String,
    /// Messages published to every channel.
    #[arg(long, default_value_t = 10)]
    messages: u32,
    /// Publishes per second (0: back to back).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Keep-alive publisher connections (publishes are spread over them).
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Publish requests in flight per publisher connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Most per-publish rows in the report (the first ones; default: all).
    #[arg(long)]
    max_rows: Option<usize>,
    /// New subscriber connections per second (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Content size in bytes (at least the size of the timestamp and index).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Milliseconds between "all connected" and the first publish.
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
}

#[derive(Args, Debug)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of churn once connected.
    #[arg(long)]
    duration: f64,
    /// New connections per second (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Connections closed (and reopened) per second (default: 5% of --conns).
    #[arg(long)]
    churn: Option<f64>,
    /// First reconnect backoff after a drop, milliseconds (full jitter, doubling).
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
    /// Largest reconnect backoff, milliseconds.
    #[arg(long, default_value_t = 5000)]
    backoff_cap_ms: u64,
}

#[derive(Args, Debug)]
struct HandshakeArgs {
    /// `--conns` is the number of handshakes in flight at once.
    #[command(flatten)]
    common: Common,
    /// Seconds of handshakes once the first ones are resolved.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// New connections per second, all processes together (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// First retry backoff after a failed attempt, milliseconds (full jitter, doubling).
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
}

/// Runs the command line; returns the exit code (0 ok, 1 the run failed, 2 usage).
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let (plan, json) = match cli.cmd {
        Cmd::Child => return crate::child::main(),
        cmd => match plan(cmd) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("loadgen: {e}");
                return 2;
            }
        },
    };
    for w in &plan.warnings {
        eprintln!("loadgen: warning: {w}");
    }
    match coord::run(&plan) {
        Ok(report) => {
            let text = if json {
                let mut j = serde_json::to_string(&report).expect("reports always serialize");
                j.push('\n');
                j
            } else {
                report.text()
            };
            // A closed stdout (`| head`) is not worth a panic.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
            0
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            1
        }
    }
}

fn secs(name: &str, v: f64, max: Duration) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("--{name} must be a non-negative number of seconds"));
    }
    let d = Duration::from_secs_f64(v);
    if d > max {
        return Err(format!("--{name} is capped at {} s", max.as_secs()));
    }
    Ok(d)
}

fn rate(name: &str, v: f64) -> Result<f64, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("--{name} must be a non-negative number"));
    }
    Ok(v)
}

/// Infers the transport from the URL when not given. Socket.IO takes a ws:// or an
/// http:// URL (it connects over WebSocket either way); a path ending in `/socket.io/`
/// (or `/socket.io`) means Socket.IO.
fn transport_of(t: &Target, arg: Option<TransportArg>) -> Result<Transport, String> {
    let from_arg = arg.map(|a| match a {
        TransportArg::Ws => Transport::Ws,
        TransportArg::Sse => Transport::Sse,
        TransportArg::Stream => Transport::Stream,
        TransportArg::Poll => Transport::Poll,
        TransportArg::Socketio => Transport::Socketio,
    });
    let socketio_path = t.path().trim_end_matches('/').ends_with("/socket.io");
    match (t.scheme, from_arg) {
        (_, Some(Transport::Socketio)) => Ok(Transport::Socketio),
        (_, None) if socketio_path => Ok(Transport::Socketio),
        (Scheme::Ws, None | Some(Transport::Ws)) => Ok(Transport::Ws),
        (Scheme::Ws, Some(_)) => Err("a ws:// URL needs --transport ws".into()),
        (Scheme::Http, Some(Transport::Ws)) => Err("--transport ws needs a ws:// URL".into()),
        (Scheme::Http, Some(tr)) => Ok(tr),
        (Scheme::Http, None) => {
            let path = t.path();
            let last = path.rsplit('/').next().unwrap_or("");
            match last {
                "sse" => Ok(Transport::Sse),
                "stream" => Ok(Transport::Stream),
                "poll" => Ok(Transport::Poll),
                _ => Err(format!(
                    "cannot tell the transport from the path {path:?}; use --transport sse|stream|poll|socketio"
                )),
            }
        }
    }
}

/// The TLS side of a run: on with `--tls` or a `wss://` / `https://` URL; it then needs
/// `--cacert FILE` or `--insecure`. The TLS options without TLS are an error.
fn tls_of(t: &Target, c: &Common) -> Result<Option<TlsSpec>, String> {
    if !(t.tls || c.tls) {
        let given = [
            ("--cacert", c.cacert.is_some()),
            ("--insecure", c.insecure),
            ("--sni", c.sni.is_some()),
            ("--no-resume", c.no_resume),
            ("--tls-version", c.tls_version.is_some()),
        ];
        if let Some((name, _)) = given.iter().find(|(_, on)| *on) {
            return Err(format!(
                "{name} is a TLS option: use a wss:// or https:// URL, or --tls"
            ));
        }
        return Ok(None);
    }
    let ca_pem =
        match (&c.cacert, c.insecure) {
            (Some(_), true) => return Err("--cacert and --insecure exclude each other".into()),
            (Some(path), false) => Some(tls::read_ca_file(path)?),
            (None, true) => None,
            (None, false) => return Err(
                "TLS needs --cacert FILE (the CA to trust) or --insecure (no certificate check)"
                    .into(),
            ),
        };
    let server_name = c.sni.clone().unwrap_or_else(|| t.hostname().to_string());
    tls::server_name(&server_name).map_err(|e| format!("--sni: {e}"))?;
    Ok(Some(TlsSpec {
        server_name,
        ca_pem,
        resume: !c.no_resume,
        versions: match c.tls_version {
            None => Versions::Any,
            Some(TlsVersionArg::V12) => Versions::Tls12,
            Some(TlsVersionArg::V13) => Versions::Tls13,
        },
    }))
}

/// The one stderr line of a run against remote hosts (`--allow-remote`).
fn remote_warning(hosts: &[&str]) -> String {
    format!(
        "loading a remote target: {}; make sure you are allowed to",
        hosts.join(", ")
    )
}

fn plan(cmd: Cmd) -> Result<(Plan, bool), String> {
    let (mode, common) = match &cmd {
        Cmd::Hold(a) => (Mode::Hold, &a.common),
        Cmd::Fanout(a) => (Mode::Fanout, &a.common),
        Cmd::Storm(a) => (Mode::Storm, &a.common),
        Cmd::Handshake(a) => (Mode::Handshake, &a.common),
        Cmd::Child => unreachable!("the child subcommand has no plan"),
    };
    let allow_remote = common.allow_remote;
    let target = Target::parse_with(&common.url, allow_remote).map_err(|e| e.to_string())?;
    let transport = transport_of(&target, common.transport)?;
    let tls = tls_of(&target, common)?;
    let format = match common.format {
        FormatArg::Pushedge => Format::Pushedge,
        FormatArg::Raw => Format::Raw,
    };
    if transport == Transport::Poll && format == Format::Raw {
        return Err(
            "long-poll is pushedge's protocol: --format raw is not supported with it".into(),
        );
    }
    let namespace = match (&common.namespace, transport) {
        (None, _) => "/".to_string(),
        (Some(n), Transport::Socketio) => {
            check_namespace(n).map_err(|e| format!("--namespace: {e}"))?;
            n.clone()
        }
        (Some(_), _) => return Err("--namespace is for --transport socketio".into()),
    };
    if common.conns == 0 || common.conns > MAX_CONNS {
        return Err(format!("--conns must be 1..={MAX_CONNS}"));
    }
    if common.channels == 0 || common.channels > MAX_CHANNELS {
        return Err(format!("--channels must be 1..={MAX_CHANNELS}"));
    }
    let sources = match &common.sources {
        Some(s) => url::parse_sources(s, allow_remote).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    if target.is_remote() {
        if let Some(s) = sources.iter().find(|s| s.is_loopback()) {
            return Err(format!(
                "source {s} is a loopback address: it cannot reach the remote target {}",
                target.hostname()
            ));
        }
    }
    if sources.iter().any(|s| s.is_ipv4() != target.addr.is_ipv4()) {
        return Err("source addresses must be of the same family as the target".into());
    }
    let per_proc = sys::sockets_per_proc();
    let needed = common.conns.div_ceil(per_proc) as u32;
    let procs = common.procs.unwrap_or(needed).max(1);
    if procs > MAX_PROCS {
        return Err(format!("--procs must be 1..={MAX_PROCS}"));
    }
    if u64::from(procs) * per_proc < common.conns {
        return Err(format!(
            "{} connections in {procs} process(es) is more than {per_proc} sockets each (the open-file limit is {}); use --procs {needed} or more",
            common.conns,
            sys::nofile_limit()
        ));
    }
    if u64::from(procs) > common.conns {
        return Err("--procs is larger than --conns".into());
    }
    if common.max_pending == 0 {
        return Err("--max-pending must be at least 1".into());
    }
    let timeout = secs("timeout", common.timeout, Duration::from_secs(600))?;
    if timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    let mut warnings = sys::preflight(common.conns, sources.len());

    let mut plan = Plan {
        mode,
        url: common.url.clone(),
        target,
        publish: None,
        transport,
        tls,
        format,
        namespace,
        conns: common.conns,
        channels: Vec::new(),
        procs,
        sources,
        connect_rate: 0.0,
        max_pending: common.max_pending,
        timeout,
        duration: Duration::ZERO,
        messages: 0,
        publish_rate: 0.0,
        publishers: 1,
        pipeline: 1,
        max_rows: None,
        size: 0,
        drain: Duration::ZERO,
        settle: Duration::ZERO,
        churn: 0.0,
        backoff_base_ms: 100,
        backoff_cap_ms: 5000,
        warnings: Vec::new(),
        phase_log: common.json,
    };
    let json = common.json;
    match cmd {
        Cmd::Hold(a) => {
            plan.connect_rate = rate("rate", a.rate)?;
            plan.duration = secs("duration", a.duration, HARD_CAP)?;
            plan.channels = url::channel_names(&[&plan.target], a.common.channels)
                .map_err(|e| e.to_string())?;
        }
        Cmd::Fanout(a) => {
            let publish = Target::parse_with(&a.publish, allow_remote)
                .map_err(|e| format!("--publish: {e}"))?;
            if publish.tls {
                return Err("--publish must be a plain http:// URL (no TLS)".into());
            }
            if publish.scheme != Scheme::Http {
                return Err("--publish must be an http:// URL".into());
            }
            plan.channels = url::channel_names(&[&plan.target, &publish], a.common.channels)
                .map_err(|e| e.to_string())?;
            plan.publish = Some((a.publish.clone(), publish));
            if a.messages == 0 {
                return Err("--messages must be at least 1".into());
            }
            if u64::from(a.messages) * u64::from(a.common.channels) > MAX_PUBLISHES {
                return Err(format!(
                    "--messages x --channels is capped at {MAX_PUBLISHES} publishes"
                ));
            }
            if a.size > MAX_SIZE {
                return Err(format!("--size is capped at {MAX_SIZE} bytes"));
            }
            plan.messages = a.messages;
            plan.publish_rate = rate("rate", a.rate)?;
            if a.publishers == 0 || a.publishers > MAX_PUBLISHERS {
                return Err(format!("--publishers must be 1..={MAX_PUBLISHERS}"));
            }
            if a.pipeline == 0 || a.pipeline > MAX_PIPELINE {
                return Err(format!("--pipeline must be 1..={MAX_PIPELINE}"));
            }
            plan.publishers = a.publishers;
            plan.pipeline = a.pipeline;
            plan.max_rows = a.max_rows;
            plan.connect_rate = rate("connect-rate", a.connect_rate)?;
            plan.size = a.size;
            plan.drain = secs("drain", a.drain, Duration::from_secs(600))?;
            plan.settle = Duration::from_millis(a.settle_ms.min(60_000));
            if plan.publish_rate > 0.0 {
                let total = f64::from(a.messages) * f64::from(a.common.channels);
                if total / plan.publish_rate > HARD_CAP.as_secs_f64() {
                    warnings.push(format!(
                        "{total} publishes at {} /s take longer than the hard cap of {} s",
                        plan.publish_rate,
                        HARD_CAP.as_secs()
                    ));
                }
            }
        }
        Cmd::Storm(a) => {
            plan.connect_rate = rate("rate", a.rate)?;
            plan.duration = secs("duration", a.duration, HARD_CAP)?;
            plan.churn = rate("churn", a.churn.unwrap_or(a.common.conns as f64 / 20.0))?;
            plan.backoff_base_ms = a.backoff_ms.clamp(1, 60_000);
            plan.backoff_cap_ms = a.backoff_cap_ms.clamp(plan.backoff_base_ms, 600_000);
            plan.channels = url::channel_names(&[&plan.target], a.common.channels)
                .map_err(|e| e.to_string())?;
        }
        Cmd::Handshake(a) => {
            plan.connect_rate = rate("rate", a.rate)?;
            plan.duration = secs("duration", a.duration, HARD_CAP)?;
            plan.backoff_base_ms = a.backoff_ms.clamp(1, 60_000);
            plan.backoff_cap_ms = plan.backoff_base_ms.max(5000);
            plan.channels = url::channel_names(&[&plan.target], a.common.channels)
                .map_err(|e| e.to_string())?;
        }
        Cmd::Child => unreachable!("handled above"),
    }
    let mut remote: Vec<&str> = Vec::new();
    for t in std::iter::once(&plan.target).chain(plan.publish.as_ref().map(|(_, t)| t)) {
        if t.is_remote() && !remote.contains(&t.hostname()) {
            remote.push(t.hostname());
        }
    }
    if !remote.is_empty() {
        warnings.push(remote_warning(&remote));
    }
    plan.warnings = warnings;
    Ok((plan, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        plan(cli.cmd).map(|(p, _)| p)
    }

    #[test]
    fn hold_defaults_and_procs() {
        let p = parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1:8100/ws?channel={c}",
            "--conns",
            "100",
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Hold);
        assert_eq!(p.transport, Transport::Ws);
        assert_eq!(p.procs, 1);
        assert_eq!(p.channels, vec!["ch0"]);
        assert_eq!(p.duration, Duration::from_secs(10));
        let per = sys::sockets_per_proc();
        let n = (per * 2 + 1).to_string();
        let p = parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1:8100/ws",
            "--conns",
            &n,
            "--sources",
            "127.0.0.2-127.0.0.3",
        ])
        .unwrap();
        assert_eq!(p.procs, 3);
        assert_eq!(p.sources.len(), 2);
        assert!(parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1:8100/ws",
            "--conns",
            &n,
            "--procs",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn transports_from_urls() {
        let t = |u: &str, extra: &[&str]| {
            let mut args = vec!["hold", "--url", u, "--conns", "1"];
            args.extend_from_slice(extra);
            parse(&args).map(|p| p.transport)
        };
        assert_eq!(t("http://127.0.0.1:8100/sse", &[]), Ok(Transport::Sse));
        assert_eq!(
            t("http://127.0.0.1:8100/stream?channel={c}", &[]),
            Ok(Transport::Stream)
        );
        assert_eq!(t("http://127.0.0.1:8100/poll", &[]), Ok(Transport::Poll));
        assert!(t("http://127.0.0.1/sub?id={c}", &[]).is_err());
        assert_eq!(
            t("http://127.0.0.1/sub?id={c}", &["--transport", "sse"]),
            Ok(Transport::Sse)
        );
        assert!(t("ws://127.0.0.1/sub?id={c}", &["--transport", "sse"]).is_err());
        assert!(t("http://127.0.0.1/poll", &["--format", "raw"]).is_err());
        assert!(t("http://192.168.1.1/sse", &[]).is_err());
        assert_eq!(
            t(
                "ws://127.0.0.1:8100/socket.io/?EIO=4&transport=websocket",
                &[]
            ),
            Ok(Transport::Socketio)
        );
        assert_eq!(
            t("http://127.0.0.1:8100/socket.io", &[]),
            Ok(Transport::Socketio)
        );
        assert_eq!(
            t("ws://127.0.0.1:8100/sio/", &["--transport", "socketio"]),
            Ok(Transport::Socketio)
        );
        assert_eq!(
            t("ws://127.0.0.1:8100/socket.io/", &["--namespace", "/chat1"]),
            Ok(Transport::Socketio)
        );
        assert!(t("ws://127.0.0.1:8100/socket.io/", &["--namespace", "chat1"]).is_err());
        assert!(t("ws://127.0.0.1:8100/ws", &["--namespace", "/chat1"]).is_err());
    }

    #[test]
    fn socketio_plan() {
        let p = parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8100/socket.io/",
            "--publish",
            "http://127.0.0.1:8000/pub?channel=chat1.{c}",
            "--conns",
            "4",
            "--channels",
            "2",
            "--namespace",
            "/chat1",
        ])
        .unwrap();
        assert_eq!(p.transport, Transport::Socketio);
        assert_eq!(p.namespace, "/chat1");
        assert_eq!(p.channels, vec!["ch0", "ch1"]);
        assert_eq!(
            p.target.socketio_target_for("ch1"),
            "/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            p.publish.as_ref().unwrap().1.target_for("ch1"),
            "/pub?channel=chat1.ch1"
        );
    }

    #[test]
    fn fanout_checks() {
        let p = parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8100/ws?channel={c}",
            "--publish",
            "http://127.0.0.1:8000/pub?channel={c}",
            "--conns",
            "50",
            "--channels",
            "2",
            "--messages",
            "20",
        ])
        .unwrap();
        assert_eq!(p.channels, vec!["ch0", "ch1"]);
        assert_eq!(p.messages, 20);
        assert_eq!(
            p.publish.as_ref().unwrap().1.target_for("ch1"),
            "/pub?channel=ch1"
        );
        // nchan
        let p = parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8080/sub?id={c}",
            "--publish",
            "http://127.0.0.1:8080/pub?id={c}",
            "--conns",
            "5",
            "--format",
            "raw",
        ])
        .unwrap();
        assert_eq!(p.format, Format::Raw);
        assert!(parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8100/ws",
            "--publish",
            "ws://127.0.0.1:8000/pub",
            "--conns",
            "5",
        ])
        .is_err());
        assert!(parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8100/ws",
            "--publish",
            "http://10.1.1.1/pub",
            "--conns",
            "5",
        ])
        .is_err());
        assert!(parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:8100/ws",
            "--publish",
            "http://127.0.0.1/pub",
            "--conns",
            "5",
            "--messages",
            "1000000",
            "--channels",
            "2",
        ])
        .is_err());
    }

    #[test]
    fn tls_options() {
        let p = parse(&[
            "hold",
            "--url",
            "wss://127.0.0.1:8443/ws?channel={c}",
            "--conns",
            "2",
            "--insecure",
        ])
        .unwrap();
        assert_eq!(p.transport, Transport::Ws);
        let t = p.tls.unwrap();
        assert_eq!(t.server_name, "127.0.0.1");
        assert_eq!(t.ca_pem, None);
        assert!(t.resume);
        assert_eq!(t.versions, Versions::Any);
        // --tls under a ws:// URL; --sni, --no-resume, --tls-version.
        let p = parse(&[
            "handshake",
            "--url",
            "http://127.0.0.1:8443/sse",
            "--tls",
            "--insecure",
            "--sni",
            "push.example",
            "--no-resume",
            "--tls-version",
            "1.2",
            "--conns",
            "10",
            "--duration",
            "2",
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Handshake);
        assert_eq!(p.transport, Transport::Sse);
        assert_eq!(p.duration, Duration::from_secs(2));
        let t = p.tls.unwrap();
        assert_eq!(t.server_name, "push.example");
        assert!(!t.resume);
        assert_eq!(t.versions, Versions::Tls12);
        // Plain runs have none, and refuse the TLS options.
        let p = parse(&["hold", "--url", "ws://127.0.0.1/ws", "--conns", "1"]).unwrap();
        assert!(p.tls.is_none());
        for extra in [
            &["--insecure"][..],
            &["--cacert", "/etc/hostname"],
            &["--sni", "a"],
            &["--no-resume"],
            &["--tls-version", "1.3"],
        ] {
            let mut a = vec!["hold", "--url", "ws://127.0.0.1/ws", "--conns", "1"];
            a.extend_from_slice(extra);
            assert!(parse(&a).is_err(), "{extra:?}");
        }
        // TLS needs a CA or --insecure, not both; the CA file must hold certificates.
        let wss = ["hold", "--url", "wss://localhost/ws", "--conns", "1"];
        assert!(parse(&wss).is_err());
        let with = |extra: &[&str]| {
            let mut a = wss.to_vec();
            a.extend_from_slice(extra);
            parse(&a)
        };
        assert!(with(&["--cacert", "/nonexistent.pem"]).is_err());
        assert!(with(&["--cacert", "Cargo.toml"]).is_err());
        assert!(with(&["--cacert", "Cargo.toml", "--insecure"]).is_err());
        assert!(with(&["--insecure", "--sni", "not a name"]).is_err());
        // No TLS publishing.
        assert!(parse(&[
            "fanout",
            "--url",
            "wss://127.0.0.1/ws",
            "--insecure",
            "--publish",
            "https://127.0.0.1/pub",
            "--conns",
            "1",
        ])
        .is_err());
    }

    #[test]
    fn bounds() {
        assert!(parse(&["hold", "--url", "ws://127.0.0.1/ws", "--conns", "0"]).is_err());
        assert!(parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1/ws",
            "--conns",
            "1",
            "--duration",
            "3601"
        ])
        .is_err());
        assert!(parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1/ws",
            "--conns",
            "1",
            "--duration",
            "-1"
        ])
        .is_err());
        assert!(parse(&[
            "hold",
            "--url",
            "ws://127.0.0.1/ws",
            "--conns",
            "1",
            "--rate",
            "NaN"
        ])
        .is_err());
        assert!(parse(&["storm", "--url", "ws://127.0.0.1/ws", "--conns", "1"]).is_err());
        let p = parse(&[
            "storm",
            "--url",
            "ws://127.0.0.1/ws",
            "--conns",
            "100",
            "--duration",
            "5",
        ])
        .unwrap();
        assert_eq!(p.churn, 5.0);
    }

    #[test]
    fn remote_targets_need_the_flag() {
        let remote = |sub: &str, url: &str, extra: &[&str]| {
            let mut a = vec![sub, "--url", url, "--conns", "2", "--duration", "1"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        // Every subcommand that takes a URL refuses a remote one, naming the flag.
        for sub in ["hold", "storm", "handshake"] {
            let e = remote(sub, "ws://192.0.2.1:8100/ws", &[]).unwrap_err();
            assert!(e.contains("--allow-remote"), "{sub}: {e}");
            let p = remote(sub, "ws://192.0.2.1:8100/ws", &["--allow-remote"]).unwrap();
            assert_eq!(p.target.addr, "192.0.2.1:8100".parse().unwrap());
            assert!(
                p.warnings.contains(&remote_warning(&["192.0.2.1"])),
                "{sub}"
            );
            assert_eq!(
                p.warnings.iter().filter(|w| w.contains("remote")).count(),
                1
            );
        }
        assert_eq!(
            remote_warning(&["192.0.2.1"]),
            "loading a remote target: 192.0.2.1; make sure you are allowed to"
        );
        // A loopback target: no warning, flag or not.
        for extra in [&[][..], &["--allow-remote"]] {
            let p = remote("hold", "ws://127.0.0.1:8100/ws", extra).unwrap();
            assert!(!p.warnings.iter().any(|w| w.contains("remote")));
        }
        // fanout: the target and the publish URL are both checked.
        let fanout = |url: &str, publish: &str, extra: &[&str]| {
            let mut a = vec!["fanout", "--url", url, "--publish", publish, "--conns", "2"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        let (local_sub, local_pub) = ("ws://127.0.0.1:8100/ws", "http://127.0.0.1:8000/pub");
        let (far_sub, far_pub) = ("ws://192.0.2.1:8100/ws", "http://192.0.2.2:8000/pub");
        let e = fanout(local_sub, far_pub, &[]).unwrap_err();
        assert!(
            e.starts_with("--publish: ") && e.contains("--allow-remote"),
            "{e}"
        );
        assert!(fanout(far_sub, local_pub, &[]).is_err());
        let p = fanout(far_sub, far_pub, &["--allow-remote"]).unwrap();
        assert!(p
            .warnings
            .contains(&remote_warning(&["192.0.2.1", "192.0.2.2"])));
        let p = fanout(local_sub, far_pub, &["--allow-remote"]).unwrap();
        assert!(p.warnings.contains(&remote_warning(&["192.0.2.2"])));
        // Source addresses: loopback only without the flag; a remote target cannot be
        // reached from a loopback source.
        let e = remote("hold", "ws://127.0.0.1/ws", &["--sources", "10.0.0.1"]).unwrap_err();
        assert!(e.contains("--allow-remote"), "{e}");
        let p = remote(
            "hold",
            "ws://192.0.2.1/ws",
            &["--allow-remote", "--sources", "10.0.0.1-10.0.0.2"],
        )
        .unwrap();
        assert_eq!(p.sources.len(), 2);
        assert!(remote(
            "hold",
            "ws://192.0.2.1/ws",
            &["--allow-remote", "--sources", "127.0.0.2"]
        )
        .is_err());
        // TLS to a remote name-less IP still needs --cacert or --insecure.
        assert!(remote("hold", "wss://192.0.2.1/ws", &["--allow-remote"]).is_err());
        assert!(remote(
            "hold",
            "wss://192.0.2.1/ws",
            &["--allow-remote", "--insecure"]
        )
        .is_ok());
    }
}
