//! The coordinator: starts the child processes, runs the phases of the run on its own
//! mio reactor (children's pipes, the publisher's socket, a signal pipe), draws the
//! progress bar and merges the children's reports.
//!
//! Phases: *connecting* (until every child has resolved the first attempt of each of its
//! connections), then by mode:
//! - hold: *holding* for the duration;
//! - storm: *storming* for the duration (children churn and reconnect on their own);
//! - fanout: *settling* (a short pause so the last subscriptions are registered), then
//!   *publishing*, then *draining* (until every open subscriber has every message, or the
//!   drain timeout);
//!
//! and finally *stopping*: each child is told what was published (fanout) and to stop, and
//! sends its final report. SIGINT or SIGTERM, or the hard cap of one hour, jumps to
//! stopping at once, so partial results are still reported.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mio::net::UnixStream;
use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, IsTerminal, Read, Write};
use std::net::IpAddr;
use std::process::{Child as Process, ChildStdin, Command as ProcessCommand, Stdio};
use std::time::{Duration, Instant};

use crate::client::{connect_packet, Format, Transport};
use crate::counters::Counters;
use crate::publish::{PublishPlan, Publisher};
use crate::report::{round3, FanoutShape, Report, SCHEMA};
use crate::sys;
use crate::tls::TlsSpec;
use crate::url::Target;
use crate::wire::{ChildConfig, ChildMsg, Command, LineReader, Mode, Outage, Progress};

/// No run lasts longer than this, whatever the options.
pub const HARD_CAP: Duration = Duration::from_secs(3600);
/// How long children get to send their final reports.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Interval of the children's progress lines.
pub const PROGRESS_MS: u64 = 100;

const SIGNAL: Token = Token(usize::MAX);
/// The publisher's connections use tokens from here on (children use their index).
const PUBLISHER_BASE: usize = usize::MAX / 2;

/// Everything a run needs, checked (see `cli`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub url: String,
    pub target: Target,
    pub publish: Option<(String, Target)>,
    pub transport: Transport,
    /// TLS under the transport (`None`: plain TCP).
    pub tls: Option<TlsSpec>,
    pub format: Format,
    /// Socket.IO: the namespace connected to (`/`: the main one).
    pub namespace: String,
    pub conns: u64,
    pub channels: Vec<String>,
    pub procs: u32,
    pub sources: Vec<IpAddr>,
    pub connect_rate: f64,
    pub max_pending: u32,
    pub timeout: Duration,
    pub duration: Duration,
    pub messages: u32,
    pub publish_rate: f64,
    pub publishers: u32,
    pub pipeline: u32,
    pub max_rows: Option<usize>,
    pub size: usize,
    pub drain: Duration,
    pub settle: Duration,
    pub churn: f64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub warnings: Vec<String>,
    /// Write one `loadgen: phase ...` line on stderr at every phase change (for scripts).
    pub phase_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Connecting,
    Holding(Instant),
    Settling(Instant),
    Publishing,
    Draining(Instant),
    Stopping(Instant),
}

struct ChildProc {
    process: Process,
    stdin: Option<ChildStdin>,
    out: LineReader,
    progress: Progress,
    report: Option<Counters>,
    gone: bool,
}

impl ChildProc {
    fn send(&mut self, cmd: &Command) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut line = serde_json::to_vec(cmd).expect("commands always serialize");
        line.push(b'\n');
        if stdin.write_all(&line).and_then(|_| stdin.flush()).is_err() {
            self.stdin = None;
        }
    }
}

/// Runs a plan to the end; returns the report.
pub fn run(plan: &Plan) -> Result<Report, String> {
    let started = Instant::now();
    let start_ns = sys::unix_ns();
    let mut poll = Poll::new().map_err(|e| format!("cannot create reactor: {e}"))?;

    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    sig_rx.set_nonblocking(true).map_err(|e| e.to_string())?;
    sig_tx.set_nonblocking(true).map_err(|e| e.to_string())?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let tx = sig_tx.try_clone().map_err(|e| e.to_string())?;
        signal_hook::low_level::pipe::register(sig, tx).map_err(|e| e.to_string())?;
    }
    drop(sig_tx);
    let mut sig_rx = UnixStream::from_std(sig_rx);
    poll.registry()
        .register(&mut sig_rx, SIGNAL, Interest::READABLE)
        .map_err(|e| e.to_string())?;

    let mut children = spawn_children(plan, &poll)?;

    let mut publisher = plan.publish.as_ref().map(|(_, t)| {
        Publisher::new(
            PublishPlan {
                addr: t.addr,
                host: t.host.clone(),
                targets: plan.channels.iter().map(|c| t.target_for(c)).collect(),
                format: plan.format,
                size: plan.size,
                messages: plan.messages,
                rate: plan.publish_rate,
                publishers: plan.publishers,
                pipeline: plan.pipeline,
            },
            PUBLISHER_BASE,
        )
    });

    let bar = progress_bar(plan.conns);
    let mut outages: Vec<Outage> = Vec::new();
    let mut phase = Phase::Connecting;
    let mut interrupted = false;
    let mut capped = false;
    let mut expect_sent = false;
    let mut hold_started: Option<Instant> = None;
    let mut hold_ended: Option<Instant> = None;
    let mut events = Events::with_capacity(256);
    let mut last_draw = Instant::now();

    loop {
        let now = Instant::now();
        let mut wait = Duration::from_millis(100);
        if phase == Phase::Publishing {
            if let Some(p) = publisher.as_mut() {
                wait = wait.min(p.drive(poll.registry(), now));
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll failed: {e}"));
            }
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => {
                    let mut b = [0u8; 64];
                    while matches!(sig_rx.read(&mut b), Ok(n) if n > 0) {}
                    interrupted = true;
                }
                t if publisher.as_ref().and_then(|p| p.owns(t)).is_some() => {
                    if let Some(p) = publisher.as_mut() {
                        if let Some(j) = p.owns(t) {
                            p.ready(poll.registry(), j);
                        }
                    }
                }
                Token(k) => {
                    if let Some(c) = children.get_mut(k) {
                        read_child(k, c, &mut outages);
                    }
                }
            }
        }
        let now = Instant::now();
        let live = || children.iter().filter(|c| !c.gone);
        if live().next().is_none() {
            break;
        }
        let all_connected = live().all(|c| c.progress.connect_done);
        let all_complete = live().all(|c| c.progress.incomplete == Some(0));
        let stopping = matches!(phase, Phase::Stopping(_));
        let before = phase_name(&phase);
        if !stopping && (interrupted || now.duration_since(started) >= HARD_CAP) {
            capped = !interrupted;
            if let Some(p) = publisher.as_mut() {
                p.abort();
            }
            phase = Phase::Stopping(now + STOP_GRACE);
        } else {
            phase = match phase {
                Phase::Connecting if all_connected => {
                    hold_started = Some(now);
                    match plan.mode {
                        Mode::Fanout => Phase::Settling(now + plan.settle),
                        Mode::Hold | Mode::Storm | Mode::Handshake => {
                            Phase::Holding(now + plan.duration)
                        }
                    }
                }
                Phase::Holding(until) if now >= until => Phase::Stopping(now + STOP_GRACE),
                Phase::Settling(until) if now >= until => Phase::Publishing,
                Phase::Publishing if publisher.as_ref().is_none_or(|p| p.is_done()) => {
                    Phase::Draining(now + plan.drain)
                }
                Phase::Draining(until) if now >= until || all_complete => {
                    Phase::Stopping(now + STOP_GRACE)
                }
                Phase::Stopping(until) if now >= until => {
                    for c in children.iter_mut().filter(|c| !c.gone) {
                        eprintln!(
                            "loadgen: child {} sent no report in time; killing it",
                            c.process.id()
                        );
                        let _ = c.process.kill();
                        c.gone = true;
                    }
                    break;
                }
                p => p,
            };
        }
        if plan.phase_log && phase_name(&phase) != before {
            let sum =
                |f: fn(&Progress) -> u64| children.iter().map(|c| f(&c.progress)).sum::<u64>();
            eprintln!(
                "loadgen: phase {} elapsed_s={:.3} open={} failed={} dropped={}",
                phase_name(&phase),
                now.duration_since(started).as_secs_f64(),
                sum(|p| p.open),
                sum(|p| p.failed),
                sum(|p| p.dropped)
            );
        }
        // Side effects of entering a phase.
        if let Some(p) = publisher.as_ref() {
            let publishing_over = matches!(phase, Phase::Draining(_) | Phase::Stopping(_));
            if publishing_over && !expect_sent && plan.mode == Mode::Fanout {
                let cmd = Command::Expect {
                    channels: p.expected(),
                };
                for c in children.iter_mut() {
                    c.send(&cmd);
                }
                expect_sent = true;
            }
        }
        if let Phase::Stopping(_) = phase {
            if !stopping {
                hold_ended = Some(now);
                for c in children.iter_mut() {
                    c.send(&Command::Stop);
                }
            }
        }
        if now.duration_since(last_draw) >= Duration::from_millis(100) {
            draw(&bar, &children, &phase, publisher.as_ref());
            last_draw = now;
        }
    }
    bar.finish_and_clear();
    for c in children.iter_mut() {
        drop(c.stdin.take());
        let _ = c.process.wait();
    }

    let mut merged = Counters::default();
    let mut warnings = plan.warnings.clone();
    for (k, c) in children.iter().enumerate() {
        match &c.report {
            Some(r) => merged.add(r),
            None => warnings.push(format!("child {k} exited without a report")),
        }
    }
    merged.outages.extend(outages);
    let hold_s = match (hold_started, hold_ended) {
        (Some(a), Some(b)) => round3(b.duration_since(a).as_secs_f64()),
        _ => 0.0,
    };
    let fanout = publisher.as_ref().map(|p| {
        merged.fanout_report(
            &p.results,
            &plan.channels,
            &p.reply_hist,
            FanoutShape {
                messages: plan.messages,
                size: plan.size,
                publish_rate: plan.publish_rate,
                publishers: p.shape().0,
                pipeline: p.shape().1,
                publish_phase_s: p.phase_s(),
                max_rows: plan.max_rows,
            },
        )
    });
    let storm = (plan.mode == Mode::Storm).then(|| merged.storm_report(plan.churn, start_ns));
    let handshake = (plan.mode == Mode::Handshake)
        .then(|| merged.handshake_report(plan.conns, plan.duration.as_secs_f64()));
    let tls = plan.tls.as_ref().map(|spec| merged.tls_report(spec));
    Ok(Report {
        schema: SCHEMA,
        mode: plan.mode.name(),
        url: plan.url.clone(),
        publish_url: plan.publish.as_ref().map(|(u, _)| u.clone()),
        transport: plan.transport.name(),
        namespace: (plan.transport == Transport::Socketio).then(|| plan.namespace.clone()),
        format: match plan.format {
            Format::Pushedge => "pushedge",
            Format::Raw => "raw",
        },
        conns: plan.conns,
        channels: plan.channels.len() as u32,
        procs: plan.procs,
        sources: plan.sources.len() as u32,
        interrupted,
        capped,
        elapsed_s: round3(started.elapsed().as_secs_f64()),
        hold_s,
        warnings,
        connect: merged.connect_report(),
        drops: merged.drop_report(),
        fanout,
        storm,
        handshake,
        tls,
    })
}

/// Starts `plan.procs` children and registers their stdout pipes.
fn spawn_children(plan: &Plan, poll: &Poll) -> Result<Vec<ChildProc>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let procs = u64::from(plan.procs.max(1));
    let mut children = Vec::new();
    let mut first = 0;
    for k in 0..procs {
        let count = plan.conns / procs + u64::from(k < plan.conns % procs);
        let cfg = ChildConfig {
            index: k as u32,
            mode: plan.mode,
            transport: plan.transport,
            format: plan.format,
            server: plan.target.addr,
            host: plan.target.host.clone(),
            tls: plan.tls.clone(),
            targets: plan
                .channels
                .iter()
                .map(|c| match plan.transport {
                    Transport::Socketio => plan.target.socketio_target_for(c),
                    _ => plan.target.target_for(c),
                })
                .collect(),
            connects: match plan.transport {
                Transport::Socketio => plan
                    .channels
                    .iter()
                    .map(|c| connect_packet(&plan.namespace, c))
                    .collect(),
                _ => Vec::new(),
            },
            first,
            count,
            sources: plan.sources.clone(),
            rate: plan.connect_rate / procs as f64,
            max_pending: plan.max_pending,
            timeout_ms: plan.timeout.as_millis() as u64,
            messages: plan.messages,
            churn: plan.churn / procs as f64,
            backoff_base_ms: plan.backoff_base_ms,
            backoff_cap_ms: plan.backoff_cap_ms,
            progress_ms: PROGRESS_MS,
        };
        first += count;
        let mut process = ProcessCommand::new(&exe)
            .arg("child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start child process: {e}"))?;
        let mut stdin = process.stdin.take().expect("stdin was piped");
        let stdout = process.stdout.take().expect("stdout was piped");
        let mut line = serde_json::to_vec(&cfg).expect("configurations always serialize");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .map_err(|e| format!("cannot configure child {k}: {e}"))?;
        let mut rx = pipe::Receiver::from(stdout);
        rx.set_nonblocking(true).map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut rx, Token(k as usize), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        children.push(ChildProc {
            process,
            stdin: Some(stdin),
            out: LineReader::new(rx),
            progress: Progress::default(),
            report: None,
            gone: false,
        });
    }
    Ok(children)
}

fn read_child(k: usize, c: &mut ChildProc, outages: &mut Vec<Outage>) {
    for line in c.out.poll_lines() {
        match serde_json::from_slice::<ChildMsg>(&line) {
            Ok(ChildMsg::Progress(p)) => c.progress = p,
            Ok(ChildMsg::Outage(o)) => outages.push(o),
            Ok(ChildMsg::Final(r)) => c.report = Some(*r),
            Ok(ChildMsg::Fatal { error }) => eprintln!("loadgen: child {k} failed: {error}"),
            Err(e) => eprintln!("loadgen: child {k} sent a bad line: {e}"),
        }
    }
    if c.out.eof {
        c.gone = true;
    }
}

fn progress_bar(conns: u64) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(conns), ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} open  {wide_msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Connecting => "connecting",
        Phase::Holding(_) => "holding",
        Phase::Settling(_) => "settling",
        Phase::Publishing => "publishing",
        Phase::Draining(_) => "draining",
        Phase::Stopping(_) => "stopping",
    }
}

fn draw(bar: &ProgressBar, children: &[ChildProc], phase: &Phase, publisher: Option<&Publisher>) {
    let sum = |f: fn(&Progress) -> u64| children.iter().map(|c| f(&c.progress)).sum::<u64>();
    bar.set_position(sum(|p| p.open));
    let name = phase_name(phase);
    let mut msg = format!(
        "{name}  failed {}  dropped {}",
        sum(|p| p.failed),
        sum(|p| p.dropped)
    );
    if let Some(p) = publisher {
        msg += &format!(
            "  published {}/{}  received {}",
            p.sent(),
            p.total(),
            sum(|p| p.received)
        );
    }
    let down = sum(|p| p.down);
    if down > 0 {
        msg += &format!("  down {down}");
    }
    bar.set_message(msg);
}
