//! Counters, gauges and the fan-out latency histogram, one cache-line-aligned set per
//! worker (written only by that worker, with relaxed atomics) and summed when `/metrics`,
//! `/info`, `/events` or `stats` ask; and the process's own figures (memory, descriptors,
//! CPU) read from `/proc/self` when asked.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Transports, for the per-transport connection gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Transport {
    /// Connected, request head not yet complete (or keep-alive between requests).
    Http = 0,
    /// WebSocket.
    Ws = 1,
    /// Server-Sent Events.
    Sse = 2,
    /// Long-poll (a held request).
    Poll = 3,
    /// Chunked NDJSON stream.
    Stream = 4,
    /// Iframe streaming.
    Iframe = 5,
    /// Socket.IO sessions (over WebSocket, or long-polling between requests).
    Socketio = 6,
}

/// Number of transports.
pub const TRANSPORTS: usize = 7;

impl Transport {
    /// All transports, in gauge order.
    pub const ALL: [Transport; TRANSPORTS] = [
        Transport::Http,
        Transport::Ws,
        Transport::Sse,
        Transport::Poll,
        Transport::Stream,
        Transport::Iframe,
        Transport::Socketio,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Stream => "stream",
            Transport::Iframe => "iframe",
            Transport::Socketio => "socketio",
        }
    }
}

macro_rules! counters {
    ($($name:ident => $metric:literal, $label:literal, $help:literal;)*) => {
        /// Monotonic counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        #[allow(missing_docs)]
        pub enum Counter { $($name,)* }

        /// Number of counters.
        pub const COUNTERS: usize = [$(Counter::$name,)*].len();

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: [Counter; COUNTERS] = [$(Counter::$name,)*];
            /// Prometheus metric name, label (`key="value"` or empty) and help text.
            pub fn describe(self) -> (&'static str, &'static str, &'static str) {
                match self { $(Counter::$name => ($metric, $label, $help),)* }
            }
        }
    };
}

counters! {
    Accepted => "pushedge_connections_accepted_total", "", "Connections accepted.";
    RejectedFull => "pushedge_connections_rejected_total", "reason=\"max_connections\"", "Connections refused.";
    AcceptErrors => "pushedge_connections_rejected_total", "reason=\"accept_error\"", "Connections refused.";
    RejectedPerIp => "pushedge_connections_rejected_total", "reason=\"max_connections_per_ip\"", "Connections refused.";
    OriginRefused => "pushedge_connections_rejected_total", "reason=\"origin\"", "Connections refused.";
    Evicted => "pushedge_connections_evicted_total", "", "Connections still in their first request head closed at max_connections to make room for a newcomer.";
    CreateLimited => "pushedge_limited_total", "kind=\"channel_creates\"", "Client operations refused by a rate limit (429), by kind.";
    PublishLimited => "pushedge_limited_total", "kind=\"client_publish\"", "Client operations refused by a rate limit (429), by kind.";
    LimitCloses => "pushedge_limit_closes_total", "", "Connections closed for going on past a rate limit.";
    MessageTimeout => "pushedge_message_timeouts_total", "", "WebSocket connections closed for a message not completed in time.";
    TokenExpired => "pushedge_token_expired_closes_total", "", "Connections closed after their token expired and was not refreshed.";
    Delivered => "pushedge_messages_delivered_total", "", "Messages written to subscribers.";
    BytesOut => "pushedge_bytes_out_total", "", "Bytes written to subscriber sockets.";
    SlowConsumer => "pushedge_slow_consumer_closes_total", "", "Subscribers closed because their queue passed slow_consumer_bytes.";
    HeartbeatTimeout => "pushedge_heartbeat_timeouts_total", "", "WebSocket peers closed for not answering a ping.";
    HandshakeTimeout => "pushedge_handshake_timeouts_total", "", "Connections closed for not finishing the request head in time.";
    Http400 => "pushedge_protocol_errors_total", "kind=\"http_400\"", "Requests and frames refused, by kind.";
    Http401 => "pushedge_protocol_errors_total", "kind=\"http_401\"", "Requests and frames refused, by kind.";
    Http404 => "pushedge_protocol_errors_total", "kind=\"http_404\"", "Requests and frames refused, by kind.";
    Http405 => "pushedge_protocol_errors_total", "kind=\"http_405\"", "Requests and frames refused, by kind.";
    Http413 => "pushedge_protocol_errors_total", "kind=\"http_413\"", "Requests and frames refused, by kind.";
    Http426 => "pushedge_protocol_errors_total", "kind=\"http_426\"", "Requests and frames refused, by kind.";
    Http431 => "pushedge_protocol_errors_total", "kind=\"http_431\"", "Requests and frames refused, by kind.";
    Http5xx => "pushedge_protocol_errors_total", "kind=\"http_5xx\"", "Requests and frames refused, by kind.";
    Ws1002 => "pushedge_protocol_errors_total", "kind=\"ws_1002\"", "Requests and frames refused, by kind.";
    Ws1003 => "pushedge_protocol_errors_total", "kind=\"ws_1003\"", "Requests and frames refused, by kind.";
    Ws1007 => "pushedge_protocol_errors_total", "kind=\"ws_1007\"", "Requests and frames refused, by kind.";
    Ws1008 => "pushedge_protocol_errors_total", "kind=\"ws_1008\"", "Requests and frames refused, by kind.";
    Ws1009 => "pushedge_protocol_errors_total", "kind=\"ws_1009\"", "Requests and frames refused, by kind.";
    ClientPublished => "pushedge_client_publishes_total", "", "Messages published by WebSocket clients.";
    Kicked => "pushedge_kicked_total", "", "Connections closed by the kick command.";
    SioSessions => "pushedge_socketio_sessions_total", "", "Socket.IO (Engine.IO) sessions opened.";
    SioForwarded => "pushedge_socketio_forwarded_total", "", "Socket.IO polling requests forwarded to the worker that holds their session.";
    SioMoved => "pushedge_socketio_moved_total", "", "Socket.IO sessions moved to another worker (a WebSocket upgrade that landed there).";
    SioRecovered => "pushedge_socketio_recovered_total", "", "Socket.IO sockets that resumed with connection state recovery.";
    SioErrors => "pushedge_socketio_errors_total", "", "Socket.IO sessions closed for a protocol error (bad packet, overlapping polls, payload too large).";
}

impl Counter {
    /// The counter for an HTTP error status.
    pub fn for_status(status: u16) -> Option<Counter> {
        Some(match status {
            400 => Counter::Http400,
            401 => Counter::Http401,
            404 => Counter::Http404,
            405 => Counter::Http405,
            413 => Counter::Http413,
            426 => Counter::Http426,
            431 => Counter::Http431,
            500..=599 => Counter::Http5xx,
            _ => return None,
        })
    }

    /// The counter for a WebSocket close code sent because of a peer error.
    pub fn for_close(code: u16) -> Option<Counter> {
        Some(match code {
            1002 => Counter::Ws1002,
            1003 => Counter::Ws1003,
            1007 => Counter::Ws1007,
            1008 => Counter::Ws1008,
            1009 => Counter::Ws1009,
            _ => return None,
        })
    }
}

/// Upper bounds (seconds) of the fan-out latency histogram's buckets (`+Inf` follows).
pub const FANOUT_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds (what a recording compares with).
const FANOUT_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets of the fan-out histogram, `+Inf` included (each counts its own range, not
/// cumulatively: the exposition sums them).
pub const FANOUT_SLOTS: usize = FANOUT_BUCKETS.len() + 1;

/// One worker's figures.
#[repr(align(128))]
#[derive(Debug)]
pub struct WorkerStats {
    conns: [AtomicI64; TRANSPORTS],
    counters: [AtomicU64; COUNTERS],
    fanout: [AtomicU64; FANOUT_SLOTS],
    fanout_ns: AtomicU64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            conns: std::array::from_fn(|_| AtomicI64::new(0)),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            fanout: std::array::from_fn(|_| AtomicU64::new(0)),
            fanout_ns: AtomicU64::new(0),
        }
    }
}

impl WorkerStats {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    #[inline]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Moves the gauge by `delta` for a transport.
    #[inline]
    pub fn conn_delta(&self, t: Transport, delta: i64) {
        self.conns[t as usize].fetch_add(delta, Ordering::Relaxed);
    }

    /// Records the end of this worker's fan-out of messages sequenced at `sequenced`
    /// (one clock read for the batch, one bucket increment per message).
    #[inline]
    pub fn fanout_done(&self, sequenced: impl IntoIterator<Item = Instant>) {
        let now = Instant::now();
        let mut total: u64 = 0;
        for at in sequenced {
            let ns =
                u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
            let slot = FANOUT_BOUNDS_NS
                .iter()
                .position(|&b| ns <= b)
                .unwrap_or(FANOUT_BOUNDS_NS.len());
            self.fanout[slot].fetch_add(1, Ordering::Relaxed);
            total = total.saturating_add(ns);
        }
        if total > 0 {
            self.fanout_ns.fetch_add(total, Ordering::Relaxed);
        }
    }

    /// A counter's value.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// A transport's gauge.
    pub fn conns(&self, t: Transport) -> i64 {
        self.conns[t as usize].load(Ordering::Relaxed)
    }
}

/// Sums over workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections by transport.
    pub conns: [i64; TRANSPORTS],
    /// Counters.
    pub counters: [u64; COUNTERS],
    /// The fan-out latency histogram (per bucket, not cumulative).
    pub fanout: Histogram,
}

/// Fan-outs (one per message and worker) by latency bucket, and their total time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram {
    /// Per bucket of [`FANOUT_BUCKETS`], then `+Inf` (not cumulative).
    pub buckets: [u64; FANOUT_SLOTS],
    /// Sum of the latencies, nanoseconds.
    pub sum_ns: u64,
}

impl Histogram {
    /// Observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was observed since `earlier` (a previous reading of the same counters).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does (the `+Inf` bucket answers the largest
    /// bound); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = FANOUT_BUCKETS.get(i) else {
                    return Some(FANOUT_BUCKETS[FANOUT_BUCKETS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { FANOUT_BUCKETS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(FANOUT_BUCKETS[FANOUT_BUCKETS.len() - 1])
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            conns: [0; TRANSPORTS],
            counters: [0; COUNTERS],
            fanout: Histogram::default(),
        }
    }
}

impl Snapshot {
    /// Sums the workers' figures.
    pub fn collect<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> Snapshot {
        let mut s = Snapshot::default();
        for w in workers {
            for t in Transport::ALL {
                s.conns[t as usize] += w.conns(t);
            }
            for c in Counter::ALL {
                s.counters[c as usize] += w.get(c);
            }
            for (i, b) in w.fanout.iter().enumerate() {
                s.fanout.buckets[i] += b.load(Ordering::Relaxed);
            }
            s.fanout.sum_ns += w.fanout_ns.load(Ordering::Relaxed);
        }
        s
    }

    /// Total open connections.
    pub fn connections(&self) -> i64 {
        self.conns.iter().sum()
    }

    /// A counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// Prometheus text exposition, with the hub's gauges added.
    pub fn prometheus(&self, channels: usize, subscriptions: u64, published: u64) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP pushedge_connections Open subscriber connections by transport.\n");
        out.push_str("# TYPE pushedge_connections gauge\n");
        for t in Transport::ALL {
            let _ = writeln!(
                out,
                "pushedge_connections{{transport=\"{}\"}} {}",
                t.as_str(),
                self.conns[t as usize]
            );
        }
        for (name, help, v) in [
            ("pushedge_channels", "Channels in the hub.", channels as u64),
            (
                "pushedge_subscriptions",
                "Channel subscriptions of connected clients.",
                subscriptions,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP pushedge_messages_published_total Messages sequenced by this node.\n# TYPE pushedge_messages_published_total counter\npushedge_messages_published_total {published}"
        );
        let mut last = "";
        for c in Counter::ALL {
            let (name, label, help) = c.describe();
            if name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                last = name;
            }
            if label.is_empty() {
                let _ = writeln!(out, "{name} {}", self.get(c));
            } else {
                let _ = writeln!(out, "{name}{{{label}}} {}", self.get(c));
            }
        }
        let name = "pushedge_fanout_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a message being sequenced to the end of one worker's fan-out of it (one observation per message and worker with subscribers of its channel).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0u64;
        for (i, n) in self.fanout.buckets.iter().enumerate() {
            cumulative += n;
            match FANOUT_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {cumulative}",
            self.fanout.sum_ns as f64 / 1e9
        );
        out
    }
}

/// The process's own figures, from `/proc/self` (a figure that cannot be read is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Process {
    /// Resident memory, bytes.
    pub rss_bytes: Option<u64>,
    /// Open descriptors (io_uring direct descriptors are not in the table: not counted).
    pub open_fds: Option<u64>,
    /// `RLIMIT_NOFILE` (soft).
    pub max_fds: u64,
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// When the process started, Unix seconds.
    pub start_time: Option<f64>,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf takes an integer and returns one; no memory is involved.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// The fields of `/proc/self/stat` after the command (which may hold spaces and
/// parentheses): the first is field 3 (`state`).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')')
        .map_or(Vec::new(), |i| stat[i + 1..].split_whitespace().collect())
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl Process {
    /// Reads them now (a few small reads of `/proc`; the descriptor count lists
    /// `/proc/self/fd`).
    pub fn read() -> Process {
        let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
        let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f = stat_fields(&stat);
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        // utime, stime: fields 14, 15; starttime: 22; rss (pages): 24.
        let cpu_seconds = match (num(11), num(12)) {
            (Some(u), Some(s)) => Some((u + s) as f64 / ticks),
            _ => None,
        };
        static START: OnceLock<Option<f64>> = OnceLock::new();
        let start_time = *START.get_or_init(|| {
            let since_boot = num(19)? as f64 / ticks;
            Some(boot_time()? as f64 + since_boot)
        });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| (d.count() as u64).saturating_sub(1)); // the listing's own descriptor
        Process {
            rss_bytes: num(21).map(|p| p * page),
            open_fds,
            max_fds: crate::limits::nofile_limit(),
            cpu_seconds,
            start_time,
        }
    }

    /// The standard process collector's families (`process_*`), those that could be read.
    pub fn prometheus(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        };
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.rss_bytes.map(|v| v.to_string()),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            Some(self.max_fds.to_string()),
        );
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| format!("{v:.2}")),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time.map(|v| format!("{v:.2}")),
        );
    }
}

/// `pushedge_build_info` and `pushedge_uptime_seconds`.
pub fn prometheus_server(out: &mut String, uptime_secs: f64) {
    let _ = writeln!(
        out,
        "# HELP pushedge_build_info The running pushedge's version (always 1).\n# TYPE pushedge_build_info gauge\npushedge_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP pushedge_uptime_seconds Seconds since the server started.\n# TYPE pushedge_uptime_seconds gauge\npushedge_uptime_seconds {uptime_secs:.3}"
    );
    let (written, dropped) = crate::log::access_counts();
    let _ = writeln!(
        out,
        "# HELP pushedge_access_log_lines_total Access-log lines queued for writing.\n# TYPE pushedge_access_log_lines_total counter\npushedge_access_log_lines_total {written}\n# HELP pushedge_access_log_dropped_total Access-log lines dropped because the writer was behind.\n# TYPE pushedge_access_log_dropped_total counter\npushedge_access_log_dropped_total {dropped}"
    );
}

/// Now, Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_exposes() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.conn_delta(Transport::Ws, 3);
        b.conn_delta(Transport::Ws, 2);
        b.conn_delta(Transport::Sse, 1);
        a.inc(Counter::Http400);
        b.add(Counter::BytesOut, 100);
        let s = Snapshot::collect([&a, &b]);
        assert_eq!(s.connections(), 6);
        let text = s.prometheus(4, 5, 6);
        assert!(text.contains("pushedge_connections{transport=\"ws\"} 5\n"));
        assert!(text.contains("pushedge_protocol_errors_total{kind=\"http_400\"} 1\n"));
        assert!(text.contains("pushedge_bytes_out_total 100\n"));
        assert!(text.contains("pushedge_channels 4\n"));
        assert_eq!(
            text.matches("# TYPE pushedge_protocol_errors_total counter")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE pushedge_connections_rejected_total counter")
                .count(),
            1
        );
    }

    #[test]
    fn fanout_histogram_buckets_and_quantiles() {
        let w = WorkerStats::default();
        let now = Instant::now();
        // Sequenced "in the future": a zero latency, the first bucket.
        w.fanout_done([now + std::time::Duration::from_secs(1)]);
        let s = Snapshot::collect([&w]);
        assert_eq!(s.fanout.count(), 1);
        assert_eq!(s.fanout.buckets[0], 1);
        w.fanout_done(std::iter::repeat_n(now, 3));
        let s = Snapshot::collect([&w]);
        assert_eq!(s.fanout.count(), 4);
        assert!(s.fanout.sum_ns > 0);
        let text = s.prometheus(0, 0, 0);
        assert!(text.contains("# TYPE pushedge_fanout_latency_seconds histogram\n"));
        assert!(text.contains("pushedge_fanout_latency_seconds_bucket{le=\"0.0001\"} "));
        assert!(text.contains("pushedge_fanout_latency_seconds_bucket{le=\"10\"} 4\n"));
        assert!(text.contains("pushedge_fanout_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("pushedge_fanout_latency_seconds_count 4\n"));
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        h.buckets[3] = 10; // (0.0005, 0.001]
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.00075).abs() < 1e-9, "{p50}");
        h.buckets[FANOUT_SLOTS - 1] = 1000;
        assert_eq!(h.quantile(0.99), Some(10.0));
        let earlier = Histogram {
            buckets: std::array::from_fn(|i| u64::from(i == 3)),
            sum_ns: 0,
        };
        assert_eq!(h.since(&earlier).buckets[3], 9);
    }

    #[test]
    fn process_figures_from_proc() {
        let p = Process::read();
        assert!(p.rss_bytes.unwrap() > 1 << 20);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.max_fds >= p.open_fds.unwrap());
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let start = p.start_time.unwrap();
        let now = unix_now();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        let mut text = String::new();
        p.prometheus(&mut text);
        prometheus_server(&mut text, 1.5);
        for family in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{family} ")), "{family} in {text}");
        }
        assert!(text.contains("pushedge_build_info{version=\""));
        assert!(text.contains("pushedge_uptime_seconds 1.500\n"));
    }
}
