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

use mio::net::TcpStream;
use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::account::{Arrival, Expected, PubAgg, SeqTracker, Tally};
use crate::client::{self, Client, Event, Request};
use crate::hist::Hist;
use crate::payload;
use crate::sys;
use crate::wire::{
    bump, ChildConfig, ChildMsg, ChildReport, Command, LineReader, Mode, Outage, Progress,
};

/// Size of the read buffer shared by all connections.
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Most bytes read from one connection per turn.
pub const READ_BUDGET: usize = 256 * 1024;
/// Readiness events per wait.
pub const EVENTS_CAPACITY: usize = 1024;
/// Longest wait of one turn.
const MAX_WAIT: Duration = Duration::from_millis(50);
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

/// Where a logical connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting to be opened (first time, or after churn / a backoff).
    Waiting,
    /// A socket is connecting or handshaking.
    Connecting,
    /// Subscribed.
    Open,
    /// The attempt failed and will not be retried.
    Failed,
    /// The server dropped it and it will not be reopened.
    Dropped,
}

/// One of the child's `count` connections, across reconnects.
#[derive(Debug)]
struct Logical {
    stage: Stage,
    /// Has its first attempt been resolved?
    tried: bool,
    /// Was it ever established?
    ever_open: bool,
    /// Down after a server drop (storm), until established again.
    down: bool,
    /// Consecutive failures since the last success (for the backoff).
    failures: u32,
    tracker: SeqTracker,
    /// `seq - i` of the first data message (pushedge): later ones must agree.
    seq_offset: Option<i64>,
}

/// A socket in use.
struct Conn {
    generation: u32,
    logical: u32,
    sock: TcpStream,
    started: Instant,
    connected: bool,
    client: Client,
    wbuf: Vec<u8>,
}

/// Why a socket is being closed.
enum Close {
    /// The attempt failed before the subscription was up.
    Failed(String),
    /// The server (or the network) ended an established subscription.
    Dropped(String),
    /// Closed on purpose (storm churn).
    Churn,
}

/// Delivery accounting shared by every connection of the child.
struct Acct {
    messages: u32,
    channels: u32,
    latency: Hist,
    pubs: Vec<PubAgg>,
    received: u64,
    foreign: u64,
    gaps: u64,
    seq_errors: u64,
    first_arrival_ns: Option<u64>,
    last_arrival_ns: Option<u64>,
}

impl Acct {
    fn on_data(
        &mut self,
        l: &mut Logical,
        channel: u32,
        seq: Option<u64>,
        content: &[u8],
        now_ns: u64,
    ) {
        self.received += 1;
        let Some((t_ns, i)) = payload::decode(content) else {
            self.foreign += 1;
            return;
        };
        let p = i as usize * self.channels as usize + channel as usize;
        match l.tracker.record(i, self.messages) {
            Arrival::OutOfRange => {
                self.foreign += 1;
                return;
            }
            Arrival::Duplicate => {
                if let Some(agg) = self.pubs.get_mut(p) {
                    agg.duplicates += 1;
                }
            }
            a @ (Arrival::InOrder | Arrival::OutOfOrder) => {
                let lat_ns = now_ns.saturating_sub(t_ns);
                self.latency.record_us(lat_ns / 1000);
                if let Some(agg) = self.pubs.get_mut(p) {
                    agg.arrive(lat_ns);
                    if a == Arrival::OutOfOrder {
                        agg.out_of_order += 1;
                    }
                }
                self.first_arrival_ns =
                    Some(self.first_arrival_ns.map_or(now_ns, |f| f.min(now_ns)));
                self.last_arrival_ns = Some(self.last_arrival_ns.map_or(now_ns, |f| f.max(now_ns)));
            }
        }
        if let Some(seq) = seq {
            let off = seq as i64 - i64::from(i);
            match l.seq_offset {
                None => l.seq_offset = Some(off),
                Some(o) if o != off => self.seq_errors += 1,
                Some(_) => {}
            }
        }
    }
}

/// A token bucket: `rate` per second, bursts of `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        let burst = (rate / 100.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst.min(1.0),
            at: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Time until the next token.
    fn wait(&self) -> Duration {
        if self.unlimited() || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }
}

struct Child {
    cfg: ChildConfig,
    poll: Poll,
    commands: LineReader,
    signal: mio::net::UnixStream,
    conns: Slab<Conn>,
    next_generation: u32,
    logical: Vec<Logical>,
    acct: Acct,
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
    scratch: Vec<u8>,
    pending: u32,
    open: u64,
    untried: u64,
    down: u64,
    outage: Option<Outage>,
    expect: Option<Vec<Expected>>,
    stop: bool,
    // Counters for the report.
    attempts: u64,
    established: u64,
    reconnects: u64,
    failed: BTreeMap<String, u64>,
    failed_total: u64,
    dropped: BTreeMap<String, u64>,
    dropped_total: u64,
    churn_closed: u64,
    connect_hist: Hist,
    first_attempt_ns: Option<u64>,
    last_initial_ns: Option<u64>,
    initial_established: u64,
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
        let poll = Poll::new()?;
        let now = Instant::now();
        let channels = cfg.targets.len() as u32;
        let pubs = if cfg.mode == Mode::Fanout {
            vec![PubAgg::default(); cfg.messages as usize * channels as usize]
        } else {
            Vec::new()
        };
        let logical = (0..cfg.count)
            .map(|_| Logical {
                stage: Stage::Waiting,
                tried: false,
                ever_open: false,
                down: false,
                failures: 0,
                tracker: SeqTracker::new(),
                seq_offset: None,
            })
            .collect();
        Ok(Child {
            poll,
            commands,
            signal,
            conns: Slab::with_capacity(cfg.count.min(1 << 20) as usize),
            next_generation: 0,
            logical,
            acct: Acct {
                messages: cfg.messages,
                channels,
                latency: Hist::new(),
                pubs,
                received: 0,
                foreign: 0,
                gaps: 0,
                seq_errors: 0,
                first_arrival_ns: None,
                last_arrival_ns: None,
            },
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
            stop: false,
            attempts: 0,
            established: 0,
            reconnects: 0,
            failed: BTreeMap::new(),
            failed_total: 0,
            dropped: BTreeMap::new(),
            dropped_total: 0,
            churn_closed: 0,
            connect_hist: Hist::new(),
            first_attempt_ns: None,
            last_initial_ns: None,
            initial_established: 0,
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
            attempts: self.attempts,
            established: self.established,
            failed: self.failed_total,
            dropped: self.dropped_total,
            received: self.acct.received,
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

    /// Opens waiting connections while the rate and pending limits allow.
    fn open_more(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, l))) = self.delayed.pop() else {
                break;
            };
            self.queue.push_back(l);
        }
        while let Some(&l) = self.queue.front() {
            if self.pending >= self.cfg.max_pending || !self.connect_bucket.take(now) {
                break;
            }
            self.queue.pop_front();
            self.open_one(l, now);
        }
    }

    fn open_one(&mut self, l: u32, now: Instant) {
        self.attempts += 1;
        if self.first_attempt_ns.is_none() {
            self.first_attempt_ns = Some(sys::unix_ns());
        }
        self.logical[l as usize].stage = Stage::Connecting;
        let mut sock = match sys::connect(self.cfg.server, self.source_of(l)) {
            Ok(s) => s,
            Err(e) => {
                self.attempt_failed(l, sys::classify(&e).to_string(), now);
                return;
            }
        };
        let channel = self.channel_of(l) as usize;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        let token = token_of(slot, generation);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.attempt_failed(l, sys::classify(&e).to_string(), now);
            return;
        }
        let mut wbuf = Vec::new();
        let client = Client::start(
            self.cfg.transport,
            self.cfg.format,
            Request {
                host: &self.cfg.host,
                target: &self.cfg.targets[channel],
            },
            fastrand::u128(..).to_ne_bytes()[..16]
                .try_into()
                .expect("a u128 has 16 bytes"),
            &mut wbuf,
        );
        entry.insert(Conn {
            generation,
            logical: l,
            sock,
            started: now,
            connected: false,
            client,
            wbuf,
        });
        self.pending += 1;
        self.deadlines.push_back((
            now + Duration::from_millis(self.cfg.timeout_ms),
            slot,
            generation,
        ));
    }

    /// A socket event (or a re-run after the read budget).
    fn conn_ready(&mut self, token: Token, readable: bool, writable: bool) {
        let (slot, generation) = split_token(token);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        if !conn.connected {
            match sys::connect_result(&conn.sock) {
                Ok(false) => return,
                Ok(true) => conn.connected = true,
                Err(e) => {
                    let reason = sys::classify(&e).to_string();
                    self.close(slot, Close::Failed(reason));
                    return;
                }
            }
            // The request was written into wbuf at start.
            if let Err(e) = flush(conn) {
                let reason = sys::classify(&e).to_string();
                self.close(slot, Close::Failed(reason));
                return;
            }
        } else if writable {
            if let Err(e) = flush(conn) {
                self.close_io(slot, &e);
                return;
            }
        }
        if readable {
            self.read(slot, token);
        }
    }

    /// Reads until `WouldBlock` (or the budget), feeding the protocol.
    fn read(&mut self, slot: usize, token: Token) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            let n = match conn.sock.read(&mut self.scratch) {
                Ok(0) => {
                    let reason = "eof".to_string();
                    let close = if conn.client.is_established() {
                        Close::Dropped(reason)
                    } else {
                        Close::Failed("closed".into())
                    };
                    self.close(slot, close);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close_io(slot, &e);
                    return;
                }
            };
            let now_ns = sys::unix_ns();
            let l = conn.logical;
            let channel =
                ((self.cfg.first + u64::from(l)) % self.cfg.targets.len() as u64) as usize;
            let was_established = conn.client.is_established();
            let logical = &mut self.logical[l as usize];
            let acct = &mut self.acct;
            let mut established = false;
            let result = conn.client.feed(
                &mut self.scratch[..n],
                Request {
                    host: &self.cfg.host,
                    target: &self.cfg.targets[channel],
                },
                &mut conn.wbuf,
                &mut |ev| match ev {
                    Event::Established => established = true,
                    Event::Data { seq, content } => {
                        acct.on_data(logical, channel as u32, seq, content, now_ns)
                    }
                    Event::Gap { .. } => acct.gaps += 1,
                    Event::Foreign => acct.foreign += 1,
                },
            );
            if established {
                self.on_established(slot);
            }
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            if !conn.wbuf.is_empty() {
                if let Err(e) = flush(conn) {
                    self.close_io(slot, &e);
                    return;
                }
                if conn.wbuf.len() > MAX_OUTPUT {
                    self.close(slot, Close::Dropped("slow_output".into()));
                    return;
                }
            }
            if let Err(f) = result {
                let close = if was_established || established {
                    Close::Dropped(f.reason())
                } else {
                    Close::Failed(f.reason())
                };
                self.close(slot, close);
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(token);
                return;
            }
        }
    }

    fn on_established(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        let l = conn.logical as usize;
        self.connect_hist
            .record_us(conn.started.elapsed().as_micros() as u64);
        self.pending -= 1;
        self.open += 1;
        self.established += 1;
        let lg = &mut self.logical[l];
        lg.stage = Stage::Open;
        lg.failures = 0;
        if lg.ever_open {
            self.reconnects += 1;
        }
        lg.ever_open = true;
        if !lg.tried {
            lg.tried = true;
            self.untried -= 1;
            self.initial_established += 1;
            self.last_initial_ns = Some(sys::unix_ns());
        }
        if lg.down {
            lg.down = false;
            self.down -= 1;
            if self.down == 0 {
                if let Some(mut o) = self.outage.take() {
                    o.end_ns = Some(sys::unix_ns());
                    emit(&ChildMsg::Outage(o));
                }
            }
        }
    }

    fn close_io(&mut self, slot: usize, e: &io::Error) {
        let reason = sys::classify(e).to_string();
        let established = self.conns[slot].client.is_established();
        self.close(
            slot,
            if established {
                Close::Dropped(reason)
            } else {
                Close::Failed(reason)
            },
        );
    }

    /// Closes a socket and decides what happens to its logical connection.
    fn close(&mut self, slot: usize, why: Close) {
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        let l = conn.logical;
        let now = Instant::now();
        let was_open = self.logical[l as usize].stage == Stage::Open;
        if was_open {
            self.open -= 1;
        } else {
            self.pending -= 1;
        }
        let storm = self.cfg.mode == Mode::Storm;
        match why {
            Close::Failed(reason) => {
                drop(conn);
                self.attempt_failed(l, reason, now);
            }
            Close::Dropped(reason) => {
                drop(conn);
                bump(&mut self.dropped, &reason, 1);
                self.dropped_total += 1;
                let lg = &mut self.logical[l as usize];
                if storm {
                    lg.stage = Stage::Waiting;
                    if !lg.down {
                        lg.down = true;
                        self.down += 1;
                        let o = self.outage.get_or_insert(Outage {
                            start_ns: sys::unix_ns(),
                            end_ns: None,
                            peak: 0,
                        });
                        o.peak = o.peak.max(self.down);
                    }
                    self.schedule_retry(l, now);
                } else {
                    lg.stage = Stage::Dropped;
                }
            }
            Close::Churn => {
                if self.cfg.transport == client::Transport::Ws {
                    // Say goodbye properly; the socket is closed right after.
                    let mut bye = Vec::new();
                    protocol::ws::encode_close(
                        &mut bye,
                        protocol::ws::CloseCode::NORMAL,
                        "",
                        Some(fastrand::u32(..).to_ne_bytes()),
                    );
                    let _ = conn.sock.write(&bye);
                }
                drop(conn);
                self.churn_closed += 1;
                self.logical[l as usize].stage = Stage::Waiting;
                self.queue.push_back(l);
            }
        }
    }

    fn attempt_failed(&mut self, l: u32, reason: String, now: Instant) {
        bump(&mut self.failed, &reason, 1);
        self.failed_total += 1;
        let lg = &mut self.logical[l as usize];
        if !lg.tried {
            lg.tried = true;
            self.untried -= 1;
        }
        lg.failures = lg.failures.saturating_add(1);
        if self.cfg.mode == Mode::Storm {
            lg.stage = Stage::Waiting;
            self.schedule_retry(l, now);
        } else {
            lg.stage = Stage::Failed;
        }
    }

    /// Full-jitter exponential backoff.
    fn schedule_retry(&mut self, l: u32, now: Instant) {
        let failures = self.logical[l as usize].failures.min(20);
        let ceiling = self
            .cfg
            .backoff_base_ms
            .saturating_mul(1 << failures)
            .min(self.cfg.backoff_cap_ms)
            .max(1);
        let delay = Duration::from_millis(fastrand::u64(0..=ceiling));
        self.delayed.push(Reverse((now + delay, l)));
    }

    /// Fails handshakes that passed their deadline.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, slot, generation)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let live = self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation && !c.client.is_established());
            if live {
                self.close(slot, Close::Failed("timeout".into()));
            }
        }
    }

    /// Storm: closes a few random open connections; they are reopened at once.
    fn churn(&mut self, now: Instant) {
        if !self.churning() {
            return;
        }
        let mut closes = 0;
        while self.open > 0 && closes < 10_000 && self.churn_bucket.take(now) {
            closes += 1;
            for _ in 0..32 {
                let cap = self.conns.capacity().max(1);
                let slot = fastrand::usize(..cap);
                let open = self
                    .conns
                    .get(slot)
                    .is_some_and(|c| self.logical[c.logical as usize].stage == Stage::Open);
                if open {
                    self.close(slot, Close::Churn);
                    break;
                }
            }
        }
    }

    fn report(&self) -> ChildReport {
        let mut tally = Tally::default();
        let mut tally_dropped = Tally::default();
        let (mut complete, mut incomplete) = (0, 0);
        let mut publishes = self.acct.pubs.clone();
        let channels = self.targets_len();
        if let Some(exp) = &self.expect {
            for (j, l) in self.logical.iter().enumerate() {
                if !l.ever_open {
                    continue;
                }
                let Some(e) = exp.get(self.channel_of(j as u32) as usize) else {
                    continue;
                };
                let t = l.tracker.tally(e);
                if l.stage == Stage::Open {
                    tally.add(&t);
                    if t.lost == 0 {
                        complete += 1;
                    } else {
                        incomplete += 1;
                        let c = self.channel_of(j as u32) as usize;
                        for i in l.tracker.missing(e) {
                            if let Some(agg) = publishes.get_mut(i as usize * channels + c) {
                                agg.missing += 1;
                            }
                        }
                    }
                } else {
                    tally_dropped.add(&t);
                }
            }
        }
        ChildReport {
            attempts: self.attempts,
            established: self.established,
            reconnects: self.reconnects,
            failed: self.failed.clone(),
            dropped: self.dropped.clone(),
            open_at_end: self.open,
            churn_closed: self.churn_closed,
            first_attempt_ns: self.first_attempt_ns,
            last_initial_ns: self.last_initial_ns,
            initial_established: self.initial_established,
            connect_hist: self.connect_hist.to_base64(),
            latency_hist: self.acct.latency.to_base64(),
            received: self.acct.received,
            foreign: self.acct.foreign,
            gaps: self.acct.gaps,
            seq_errors: self.acct.seq_errors,
            tally,
            tally_dropped,
            complete,
            incomplete,
            publishes,
            first_arrival_ns: self.acct.first_arrival_ns,
            last_arrival_ns: self.acct.last_arrival_ns,
            outages_open: self.outage.iter().copied().collect(),
        }
    }
}

/// Writes queued output until done or `WouldBlock`.
fn flush(conn: &mut Conn) -> io::Result<()> {
    let mut off = 0;
    while off < conn.wbuf.len() {
        match conn.sock.write(&conn.wbuf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.drain(..off);
    if conn.wbuf.is_empty() && conn.wbuf.capacity() > 4096 {
        conn.wbuf = Vec::new();
    }
    Ok(())
}

/// Slot in the low 32 bits, generation in the high 32.
fn token_of(slot: usize, generation: u32) -> Token {
    Token((u64::from(generation) << 32 | slot as u64) as usize)
}

fn split_token(t: Token) -> (usize, u32) {
    (
        (t.0 as u64 & 0xFFFF_FFFF) as usize,
        (t.0 as u64 >> 32) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_slot_and_generation() {
        for (slot, generation) in [(0, 0), (5, 1), (19_999, u32::MAX - 2)] {
            let t = token_of(slot, generation);
            assert_ne!(t, STDIN);
            assert_ne!(t, SIGNAL);
            assert_eq!(split_token(t), (slot, generation));
        }
    }

    #[test]
    fn bucket_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, t0);
        let mut n = 0;
        for ms in 0..=100 {
            let now = t0 + Duration::from_millis(ms);
            while b.take(now) {
                n += 1;
            }
        }
        assert!((95..=112).contains(&n), "{n}");
        let mut u = Bucket::new(0.0, t0);
        assert!((0..1000).all(|_| u.take(t0)));
    }
}
