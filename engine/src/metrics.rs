//! Counters and gauges, one cache-line-aligned set per worker (written only by that
//! worker, with relaxed atomics) and summed when `/metrics`, `/info` or `stats` ask.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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

/// One worker's figures.
#[repr(align(128))]
#[derive(Debug)]
pub struct WorkerStats {
    conns: [AtomicI64; TRANSPORTS],
    counters: [AtomicU64; COUNTERS],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            conns: std::array::from_fn(|_| AtomicI64::new(0)),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
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
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            conns: [0; TRANSPORTS],
            counters: [0; COUNTERS],
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
        out
    }
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
}
