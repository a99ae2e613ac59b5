//! What the coordinator and its child processes say to each other, one JSON object per
//! line: the coordinator writes a [`ChildConfig`] then [`Command`]s to the child's stdin;
//! the child writes [`ChildMsg`]s to its stdout, the last one its [`Counters`].
//! Histograms travel as base64 of the HdrHistogram V2 serialization ([`crate::hist`]).

use mio::unix::pipe;
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};

use crate::account::Expected;
use crate::client::{Format, Transport};
use crate::counters::Counters;
use crate::tls::TlsSpec;

/// Longest line accepted on a pipe (a configuration or a final report).
pub const MAX_LINE: usize = 256 << 20;

/// The three kinds of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open and hold.
    Hold,
    /// Hold subscribers, publish, measure delivery.
    Fanout,
    /// Churn, and reconnect after drops.
    Storm,
    /// Open connections and close each as soon as it is subscribed, again and again:
    /// handshakes per second.
    Handshake,
}

impl Mode {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Hold => "hold",
            Mode::Fanout => "fanout",
            Mode::Storm => "storm",
            Mode::Handshake => "handshake",
        }
    }
}

/// Everything a child needs; the first line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildConfig {
    /// Which child this is (0-based).
    pub index: u32,
    /// The kind of run.
    pub mode: Mode,
    /// How to subscribe.
    pub transport: Transport,
    /// What messages look like.
    pub format: Format,
    /// The server's subscriber address.
    pub server: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// TLS under the transport (`None`: plain TCP).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Request target per channel.
    pub targets: Vec<String>,
    /// Socket.IO: the CONNECT packet per channel (empty for the other transports).
    #[serde(default)]
    pub connects: Vec<String>,
    /// The child's connections are `first .. first + count` of the run; connection `j`
    /// subscribes to channel `j % channels` from source `j % sources`.
    pub first: u64,
    /// Number of connections.
    pub count: u64,
    /// Source addresses (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
    /// New connections per second for this child (0: no limit).
    pub rate: f64,
    /// Most connections in their handshake at once.
    pub max_pending: u32,
    /// Connect + handshake timeout, milliseconds.
    pub timeout_ms: u64,
    /// Messages of the run (fanout), to recognise ours.
    pub messages: u32,
    /// Storm: connections closed and reopened per second by this child.
    pub churn: f64,
    /// Storm: first reconnect backoff, milliseconds (full jitter, doubling).
    pub backoff_base_ms: u64,
    /// Storm: largest reconnect backoff, milliseconds.
    pub backoff_cap_ms: u64,
    /// Interval of progress lines, milliseconds.
    pub progress_ms: u64,
}

impl ChildConfig {
    /// The Socket.IO CONNECT packet of `channel` (empty for the other transports).
    pub fn connect_of(&self, channel: usize) -> &str {
        self.connects.get(channel).map_or("", String::as_str)
    }
}

/// A command from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Fanout: publishing is over; what each channel was sent.
    Expect {
        /// Per channel.
        channels: Vec<Expected>,
    },
    /// Send the final report and exit.
    Stop,
}

/// A line from a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChildMsg {
    /// Running totals, every `progress_ms`.
    Progress(Progress),
    /// Storm: an interval during which some connections dropped by the server were down.
    Outage(Outage),
    /// The final report: everything the child counted; it exits after it.
    Final(Box<Counters>),
    /// The child cannot run.
    Fatal {
        /// Why.
        error: String,
    },
}

/// Running totals of one child (a snapshot of its [`Counters`] and connection states).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Connections open now (subscription established).
    pub open: u64,
    /// Connect attempts so far.
    pub attempts: u64,
    /// Subscriptions established so far.
    pub established: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Established connections the server dropped.
    pub dropped: u64,
    /// Data messages received.
    pub received: u64,
    /// Storm: connections dropped by the server and not back yet.
    pub down: u64,
    /// Every connection's first attempt has succeeded or failed.
    pub connect_done: bool,
    /// Fanout, after `Expect`: open subscribers still missing messages.
    pub incomplete: Option<u64>,
}

/// An outage as one child saw it (unix nanoseconds).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outage {
    /// When the first connection went down.
    pub start_ns: u64,
    /// When the last one was back (`None`: not by the end of the run).
    pub end_ns: Option<u64>,
    /// Most connections down at once.
    pub peak: u64,
}

/// Reads `\n`-terminated lines from a pipe, keeping what follows a line.
pub struct LineReader {
    /// The pipe.
    pub rx: pipe::Receiver,
    buf: Vec<u8>,
    /// The writer closed the pipe (or it failed, or sent an overlong line).
    pub eof: bool,
}

impl LineReader {
    /// A reader of `rx`.
    pub fn new(rx: pipe::Receiver) -> Self {
        LineReader {
            rx,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let nl = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
        line.pop();
        Some(line)
    }

    /// The first line, reading in blocking mode.
    pub fn blocking_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.rx.set_nonblocking(false)?;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(l) = self.take_line() {
                return Ok(Some(l));
            }
            match self.rx.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::other("configuration line too long"));
            }
        }
    }

    /// Reads what is available (non-blocking) and returns complete lines.
    pub fn poll_lines(&mut self) -> Vec<Vec<u8>> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.rx.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
            if self.buf.len() > MAX_LINE {
                self.eof = true;
                break;
            }
        }
        std::iter::from_fn(|| self.take_line()).collect()
    }
}
