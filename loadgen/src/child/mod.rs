//! A child process: one mio reactor holding its share of the connections.
//!
//! The coordinator starts `loadgen child` with pipes on stdin and stdout. The first line
//! on stdin is the [`ChildConfig`]; later lines are [`Command`]s. The child writes
//! [`ChildMsg`] lines: progress every `progress_ms`, outages (storm), and a final report
//! after `stop` (or when stdin closes, or on SIGTERM). SIGINT is ignored: a Ctrl-C on the
//! terminal reaches the coordinator, which then asks every child for its report.
//!
//! The loop, once per turn: wait for readiness (bounded by the next due time), handle
//! socket events (read until `WouldBlock`, at most [`READ_BUDGET`] bytes per connection
//! per turn), read commands, open new connections (rate and pending limits), expire
//! handshakes, churn (storm), report progress.
//!
//! Tokens carry the slab slot and a generation, so an event for a closed connection never
//! reaches the connection that reused its slot.
//!
//! The parts: `conn` (a connection's state, tokens), `pace` (token buckets), `connect`
//! (opening sockets, handshake deadlines), `read` (feeding the protocol), `lifecycle`
//! (established, closed, retried, churned), `deliver` (delivery accounting and the final
//! report). Everything the child counts is in its [`Counters`], which it sends as its
//! final report.

mod conn;
mod connect;
mod deliver;
mod lifecycle;
mod pace;
mod read;

use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::account::Expected;
use crate::counters::Counters;
use crate::sys;
use crate::tls;
use crate::wire::{ChildConfig, ChildMsg, Command, LineReader, Mode, Outage, Progress};
use conn::{Conn, Logical, Stage};
use deliver::Delivery;
use pace::Bucket;

/// Size of the read buffer shared by all connections.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Most bytes read from one connection per turn.
pub const READ_BUDGET: usize = 256 * 1024;
/// Readiness events per wait.
pub const EVENTS_CAPACITY: usize = 1024;
/// Longest wait of one turn.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Distinct TLS failure reasons a child describes on stderr (the first time each is seen).
const MAX_TLS_ERRORS_SHOWN: usize = 16;
/// Most output queued for one connection (pongs, poll requests) before it is failed.
const MAX_OUTPUT: usize = 64 * 1024;

const STDIN: Token = Token(usize::MAX);
const SIGNAL: Token = Token(usize::MAX - 1);

/// Runs a child; returns the process exit code.
pub fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            emit(&ChildMsg::Fatal {
                error: e.to_string(),
            });
            1
        }
    }
}

fn run() -> io::Result<()> {
    // A Ctrl-C goes to the whole process group: let the coordinator handle it.
    let ignored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, ignored)?;
    let (sig_rx, sig_tx) = mio::net::UnixStream::pair()?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, sig_tx)?;

    let stdin = pipe::Receiver::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut commands = LineReader::new(stdin);
    let line = commands
        .blocking_line()?
        .ok_or_else(|| io::Error::other("no configuration on stdin"))?;
    let cfg: ChildConfig = serde_json::from_slice(&line)
        .map_err(|e| io::Error::other(format!("bad configuration: {e}")))?;
    commands.rx.set_nonblocking(true)?;
    let mut child = Child::new(cfg, commands, sig_rx)?;
    child.run()
}

/// Writes one message line to stdout (errors ignored: the coordinator may be gone).
fn emit(msg: &ChildMsg) {
    let mut line = serde_json::to_vec(msg).expect("child messages always serialize");
    line.push(b'\n');
    let mut out = io::stdout().lock();
    let _ = out.write_all(&line);
    let _ = out.flush();
}

/// One child process's reactor and everything it holds.
struct Child {
    cfg: ChildConfig,
    poll: Poll,
    commands: LineReader,
    signal: mio::net::UnixStream,
    conns: Slab<Conn>,
    next_generation: u32,
    logical: Vec<Logical>,
    /// What delivery accounting needs to know of the run.
    delivery: Delivery,
    /// Everything counted for the report.
    counters: Counters,
    /// Logical connections to open now, in order.
    queue: VecDeque<u32>,
    /// Logical connections to open later (backoff).
    delayed: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Handshake deadlines, in start order (the timeout is the same for all).
    deadlines: VecDeque<(Instant, usize, u32)>,
    /// Connections that used their read budget: read them again next turn.
    again: Vec<Token>,
    connect_bucket: Bucket,
    churn_bucket: Bucket,
    /// The read buffer shared by all connections.
    scratch: Vec<u8>,
    /// Sockets connecting or handshaking.
    pending: u32,
    /// Subscriptions open now.
    open: u64,
    /// Connections whose first attempt is not resolved yet.
    untried: u64,
    /// Storm: connections dropped by the server and not back yet.
    down: u64,
    /// Storm: the outage in progress.
    outage: Option<Outage>,
    /// Fanout: what each channel was sent, once the coordinator says.
    expect: Option<Vec<Expected>>,
    /// TLS: the configuration every connection shares (with its session store), and the
    /// server name.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// TLS failure reasons already described on stderr.
    tls_errors_seen: BTreeSet<String>,
    stop: bool,
}

impl Child {
    fn new(
        cfg: ChildConfig,
        commands: LineReader,
        signal: mio::net::UnixStream,
    ) -> io::Result<Self> {
        if cfg.targets.is_empty() {
            return Err(io::Error::other("no channels"));
        }
        let tls = match &cfg.tls {
            None => None,
            Some(spec) => Some((
                tls::client_config(spec).map_err(io::Error::other)?,
                tls::server_name(&spec.server_name).map_err(io::Error::other)?,
            )),
        };
        let poll = Poll::new()?;
        let now = Instant::now();
        let delivery = Delivery {
            messages: cfg.messages,
            channels: cfg.targets.len() as u32,
        };
        let counters = Counters {
            publishes: if cfg.mode == Mode::Fanout {
                delivery.publishes()
            } else {
                Vec::new()
            },
            ..Counters::default()
        };
        let logical = (0..cfg.count).map(|_| Logical::new()).collect();
        Ok(Child {
            poll,
            commands,
            signal,
            conns: Slab::with_capacity(cfg.count.min(1 << 20) as usize),
            next_generation: 0,
            logical,
            delivery,
            counters,
            queue: (0..cfg.count as u32).collect(),
            delayed: BinaryHeap::new(),
            deadlines: VecDeque::new(),
            again: Vec::new(),
            connect_bucket: Bucket::new(cfg.rate, now),
            churn_bucket: Bucket::new(cfg.churn.max(0.0), now),
            scratch: vec![0; SCRATCH_BYTES],
            pending: 0,
            open: 0,
            untried: cfg.count,
            down: 0,
            outage: None,
            expect: None,
            tls,
            tls_errors_seen: BTreeSet::new(),
            stop: false,
            cfg,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut self.commands.rx, STDIN, Interest::READABLE)?;
        self.poll
            .registry()
            .register(&mut self.signal, SIGNAL, Interest::READABLE)?;
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let progress_every = Duration::from_millis(self.cfg.progress_ms.max(10));
        let mut next_progress = Instant::now();
        self.commands_ready();
        while !self.stop {
            let now = Instant::now();
            let wait = self
                .wait_time(now)
                .min(next_progress.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, Some(wait)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    STDIN => self.commands_ready(),
                    SIGNAL => {
                        let mut b = [0u8; 64];
                        while matches!(self.signal.read(&mut b), Ok(n) if n > 0) {}
                        self.stop = true;
                    }
                    t => self.conn_ready(
                        t,
                        ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        ev.is_writable(),
                    ),
                }
            }
            for t in std::mem::take(&mut self.again) {
                self.conn_ready(t, true, false);
            }
            let now = Instant::now();
            self.expire(now);
            self.open_more(now);
            self.churn(now);
            if now >= next_progress {
                emit(&ChildMsg::Progress(self.progress()));
                next_progress = now + progress_every;
            }
        }
        self.counters.stop_ns = Some(sys::unix_ns());
        emit(&ChildMsg::Final(Box::new(self.report())));
        Ok(())
    }

    /// How long the next wait may last.
    fn wait_time(&self, now: Instant) -> Duration {
        if !self.again.is_empty() {
            return Duration::ZERO;
        }
        let mut wait = MAX_WAIT;
        if let Some(&(d, _, _)) = self.deadlines.front() {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if let Some(Reverse((at, _))) = self.delayed.peek() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        if !self.queue.is_empty() && self.pending < self.cfg.max_pending {
            wait = wait.min(self.connect_bucket.wait().max(Duration::from_millis(1)));
        }
        if self.churning() {
            wait = wait.min(self.churn_bucket.wait().max(Duration::from_millis(1)));
        }
        wait
    }

    fn churning(&self) -> bool {
        self.cfg.mode == Mode::Storm && self.cfg.churn > 0.0 && self.untried == 0
    }

    fn commands_ready(&mut self) {
        for line in self.commands.poll_lines() {
            match serde_json::from_slice::<Command>(&line) {
                Ok(Command::Stop) => self.stop = true,
                Ok(Command::Expect { channels }) => self.expect = Some(channels),
                Err(e) => eprintln!("loadgen child {}: bad command: {e}", self.cfg.index),
            }
        }
        if self.commands.eof {
            self.stop = true;
        }
    }

    fn progress(&self) -> Progress {
        let incomplete = self.expect.as_ref().map(|exp| {
            self.logical
                .iter()
                .enumerate()
                .filter(|(j, l)| {
                    l.stage == Stage::Open
                        && exp
                            .get(self.channel_of(*j as u32) as usize)
                            .is_some_and(|e| !l.tracker.is_complete(e))
                })
                .count() as u64
        });
        Progress {
            open: self.open,
            attempts: self.counters.attempts,
            established: self.counters.established,
            failed: self.counters.failed_total(),
            dropped: self.counters.dropped_total(),
            received: self.counters.received,
            down: self.down,
            connect_done: self.untried == 0,
            incomplete,
        }
    }

    fn targets_len(&self) -> usize {
        self.cfg.targets.len()
    }

    fn channel_of(&self, logical: u32) -> u32 {
        ((self.cfg.first + u64::from(logical)) % self.cfg.targets.len() as u64) as u32
    }

    fn source_of(&self, logical: u32) -> Option<std::net::IpAddr> {
        if self.cfg.sources.is_empty() {
            return None;
        }
        let j = self.cfg.first + u64::from(logical);
        Some(self.cfg.sources[(j % self.cfg.sources.len() as u64) as usize])
    }
}
