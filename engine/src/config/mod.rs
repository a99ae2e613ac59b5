//! Configuration: TOML file, command-line flags and `--set KEY=VALUE`, with every key
//! documented here (the fields of [`Config`]) and its default in `defaults.rs` (both also
//! in README.md).
//!
//! Precedence: embedded defaults < `--config FILE` < dedicated flags (`--listen`, ...) <
//! `--set`. Part of the configuration can be changed while the server runs (`config set`
//! on the control socket); those keys live in [`Live`] as atomics that the workers read.
//!
//! The parts: `defaults.rs` (every key's default, the default addresses and control
//! socket path), `parse.rs` (TOML, `--set` and `config get`), `validate.rs` (ranges and
//! relations between keys), `listeners.rs` (the listeners the keys describe) and
//! `live.rs` (the keys that change while the server runs).

mod defaults;
mod listeners;
mod live;
mod parse;
mod validate;

pub use defaults::{
    control_path_candidates, default_control_path, default_user_control_path, CONTROL_SOCKET_NAME,
    DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, SYSTEM_CONTROL_DIR,
};
pub use live::{Live, LIVE_KEYS};
pub use parse::split_kv;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

use crate::limits::MAX_SECS;

/// Which reactor drives the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// epoll through mio (edge-triggered).
    Epoll,
    /// io_uring.
    Uring,
}

/// What a subscriber listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1: every subscriber transport (WebSocket, SSE, long-poll, streams).
    #[default]
    Http,
}

/// One subscriber listener (`[[listener]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address (`host:port`).
    pub addr: String,
    /// What it speaks (`"http"`).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS on this listener (`tls = { cert = "...", key = "..." }`): `wss://`, `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The certificate chain (leaf first).
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// A listener's TLS: its default certificate, and more chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The default certificate chain (PEM, leaf first).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
    /// More certificates: a client asking (SNI) for a name one of them is valid for gets
    /// it; every other client gets the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<CertFiles>,
}

/// How the io_uring backend arms idle sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UringArm {
    /// Multishot POLL_ADD (an `io_kiocb`, about 260 B of kernel memory per idle socket).
    Poll,
    /// Multishot RECV with provided buffers (about 460 B more per idle socket, measured).
    Recv,
}

/// Where channel histories live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStore {
    /// In memory: a restart starts every channel again (new epochs).
    Memory,
    /// On disk at `history_path` (see `store.rs`): epochs, seqs and histories survive a
    /// restart.
    Disk,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TS LEVEL MSG key=value...`.
    Text,
    /// One JSON object per line.
    Json,
}

/// How subscribers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may subscribe.
    None,
    /// Subscribers present a JWT (HS256) signed with `token_secret`.
    Token,
}

/// Clustering through Redis (see the cluster section of README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`; empty = clustering off.
    pub redis_url: String,
    /// This node's id; empty = generated (host name, pid and start time).
    pub node_id: String,
    /// Prefix of every Redis key and of the feed channel.
    pub prefix: String,
    /// A channel's keys expire after this long without a publish.
    pub key_ttl_secs: u64,
    /// How long a subscriber's replay waits for an unreachable Redis before it is
    /// answered with an error.
    pub history_wait_secs: f64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            node_id: String::new(),
            prefix: "pushedge".into(),
            key_ttl_secs: 86_400,
            history_wait_secs: 10.0,
        }
    }
}

/// The whole configuration. Field docs give each key's meaning; [`Config::default`] gives
/// the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Subscriber port address: the one listener when there is no `[[listener]]`.
    pub listen: String,
    /// Subscriber listeners (`[[listener]]` entries: `addr`, `protocol = "http"`); when
    /// there are none, one on `listen`.
    pub listener: Vec<ListenerConfig>,
    /// TLS certificate chain (PEM) of the `listen` listener; with `tls_key`, that
    /// listener speaks TLS. (`[[listener]]` entries have their own `tls`.)
    pub tls_cert: String,
    /// TLS private key (PEM) of the `listen` listener.
    pub tls_key: String,
    /// Share the subscriber addresses with other processes on purpose (SO_REUSEPORT
    /// across processes). Off: a start on an address another process already listens on
    /// is refused, unless `cluster.redis_url` is set (nodes of one cluster share a port).
    pub reuse_port: bool,
    /// Admin (publisher) port address.
    pub admin_listen: String,
    /// TLS certificate chain (PEM) of the admin port; with `admin_tls_key`, the admin
    /// port speaks HTTPS only.
    pub admin_tls_cert: String,
    /// TLS private key (PEM) of the admin port.
    pub admin_tls_key: String,
    /// Control socket path (created with mode 0600).
    pub control_path: String,
    /// Worker threads; 0 = one per available core.
    pub workers: usize,
    /// `epoll` or `uring`.
    pub backend: BackendKind,
    /// io_uring: put accepted sockets in the ring's direct descriptor table (they then take
    /// no slot in the process's descriptor table).
    pub uring_direct: bool,
    /// io_uring: how idle sockets wait for input, `poll` (multishot POLL_ADD, then RECV)
    /// or `recv` (multishot RECV).
    pub uring_arm: UringArm,
    /// `none` or `token`.
    pub auth: AuthMode,
    /// HS256 secret for subscriber tokens (`auth = "token"`, `/sign`).
    pub token_secret: String,
    /// When set, every admin request needs `Authorization: Bearer <admin_token>`.
    pub admin_token: String,
    /// Messages kept per channel for resuming (live).
    pub history_size: usize,
    /// `memory` or `disk`.
    pub history_store: HistoryStore,
    /// Directory of the disk store (`history_store = "disk"`).
    pub history_path: String,
    /// Disk store: `fdatasync` every batch (survives a power loss; slower). Without it a
    /// batch is written to the OS, which survives a crash of the process.
    pub history_fsync: bool,
    /// How long a publish's idempotency key (`/pub?key=`) is remembered.
    pub idempotency_window_secs: f64,
    /// Most idempotency keys remembered (memory and disk modes); past it the oldest are
    /// forgotten early.
    pub idempotency_max_keys: usize,
    /// Heartbeat interval: WebSocket ping, SSE comment, stream/iframe noop (live).
    pub heartbeat_secs: f64,
    /// A WebSocket peer that does not answer a ping within this is closed.
    pub pong_timeout_secs: f64,
    /// A held long-poll is answered with `noop` after this (live).
    pub poll_timeout_secs: f64,
    /// A connection must finish its request head / handshake within this (slowloris).
    pub handshake_timeout_secs: f64,
    /// A keep-alive HTTP connection waiting for its next request is closed after this (live).
    pub idle_timeout_secs: f64,
    /// Most open subscriber connections per process (live); 0 = what the descriptor
    /// budget allows (`RLIMIT_NOFILE` minus what the admin port, the control socket,
    /// Redis and the disk store need).
    pub max_connections: usize,
    /// Most subscriber connections from one source address; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Most channels; an idle empty channel is reclaimed after `channel_ttl_secs`.
    pub max_channels: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_conn: usize,
    /// Largest published message and largest WebSocket message from a client (live).
    pub max_message_bytes: usize,
    /// A WebSocket message (or frame) begun must be complete within this.
    pub message_timeout_secs: f64,
    /// Channels one connection may create per second with `sub` ops (a token bucket).
    pub max_channel_creates_per_conn: f64,
    /// The bucket's size: creations allowed at once.
    pub channel_creates_burst: u32,
    /// Messages one WebSocket client may publish per second (a token bucket).
    pub client_publish_rate: f64,
    /// The bucket's size: publishes allowed at once.
    pub client_publish_burst: u32,
    /// After a token's `exp`, how long the connection has to send a `refresh` op (or,
    /// for streams, to reconnect) before it is closed.
    pub token_grace_secs: f64,
    /// Origins allowed to connect (patterns with `*`; `["*"]` = any): WebSocket
    /// upgrades from another `Origin` get 403; CORS answers name the origin.
    pub allowed_origins: Vec<String>,
    /// A subscriber whose unsent queue passes this is closed as a slow consumer (live).
    pub slow_consumer_bytes: usize,
    /// An empty channel (no subscribers) is reclaimed after this long without activity.
    pub channel_ttl_secs: f64,
    /// Channel patterns WebSocket clients may publish to (`chat.*`, `*`, exact names).
    pub client_publish: Vec<String>,
    /// Serve `/echo`, a plain WebSocket echo (for the conformance suite).
    pub ws_echo: bool,
    /// Negotiate permessage-deflate (RFC 7692) on `/ws` and `/echo`. On by default:
    /// browsers offer it on every WebSocket, and with no context takeover both ways (what
    /// the server always answers) it costs no memory per connection; each published
    /// message is compressed once per window size and shared by every subscriber, so the
    /// fan-out's CPU barely moves (measured: README, Compression).
    pub ws_deflate: bool,
    /// Channel patterns whose subscribers are told who joins and leaves (`join` / `leave`
    /// envelopes) and whose members are listed by `presence`.
    pub presence: Vec<String>,
    /// `GET /presence` and the `presence` WebSocket op on the subscriber port (the admin
    /// port always answers `/presence`).
    pub presence_public: bool,
    /// A connection whose token has `sub = U` is also subscribed to `user:U`.
    pub user_channels: bool,
    /// Serve the demo chat at `/demo` on the subscriber port.
    pub demo: bool,
    /// Serve the browser client library at `/pushedge.js` and `/pushedge.mjs`.
    pub client_library: bool,
    /// Token algorithms accepted (`HS256`, `RS256`, `ES256`).
    pub token_algorithms: Vec<String>,
    /// PEM file with the public key for `RS256` / `ES256` tokens.
    pub token_public_key: String,
    /// JWKS file with the public keys for `RS256` / `ES256` tokens (by `kid`).
    pub token_jwks: String,
    /// Serve Socket.IO (Engine.IO v4) at `socketio_path`.
    pub socketio: bool,
    /// Where Socket.IO is served (`/socket.io/`; with or without the last `/`).
    pub socketio_path: String,
    /// Engine.IO `pingInterval`: the server pings each session this often.
    pub socketio_ping_interval_secs: f64,
    /// Engine.IO `pingTimeout`: a session that does not answer a ping within this is
    /// closed.
    pub socketio_ping_timeout_secs: f64,
    /// Engine.IO `maxPayload`: the largest polling request body and WebSocket message a
    /// client may send (bytes).
    pub socketio_max_payload: usize,
    /// Namespaces a client may connect to (patterns with `*`: `"/"`, `"/chat*"`, `"*"`).
    pub socketio_namespaces: Vec<String>,
    /// Channel prefix of the main namespace `/` (namespace `/x` has `x.`).
    pub socketio_main_prefix: String,
    /// The room every socket of a namespace is in (channel `<prefix><room>`).
    pub socketio_broadcast_room: String,
    /// Each socket is also in the room named by its socket id.
    pub socketio_own_room: bool,
    /// Clients may join and leave rooms with `emit("subscribe"|"unsubscribe", rooms)`.
    pub socketio_client_subscribe: bool,
    /// Connection state recovery: how long a disconnected socket's rooms and positions
    /// are kept for it to resume (0 = off; then events carry no offset).
    pub socketio_recovery_secs: f64,
    /// Conformance switch: behave as the official Socket.IO / Engine.IO protocol test
    /// suites' test server (short pings, `/custom`, `message-back`, ...).
    pub socketio_test: bool,
    /// `error`, `warn`, `info`, `debug` or `trace` (live).
    pub log_level: String,
    /// `text` (`TS LEVEL MSG key=value...`) or `json` (one object per line: `ts`,
    /// `level`, `msg` and the event's fields); the access log follows it too.
    pub log_format: LogFormat,
    /// The access log: `""` (off), `"-"` (stderr) or a file (appended to). One line per
    /// HTTP request answered and per WebSocket / stream session when it ends; written by
    /// a thread of its own through a bounded queue (lines are dropped, and counted, when
    /// it falls behind).
    pub access_log: String,
    /// Proxies whose word on the client's address is taken (addresses or CIDR blocks):
    /// from one of them, `X-Forwarded-For` (its right-most address that is not itself
    /// trusted) or a PROXY protocol header names the client in logs, `ctl conns` and the
    /// access log. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Subscriber listeners read a PROXY protocol header (v1 or v2) at the start of a
    /// connection from a `trusted_proxies` peer; a header from any other peer is refused
    /// (closed). A connection without one is served as it is. Not on TLS listeners.
    pub proxy_protocol: bool,
    /// After accept fails with EMFILE/ENFILE, accepting pauses this long (live).
    pub accept_pause_ms: u64,
    /// `retry:` sent at the start of an SSE stream.
    pub sse_retry_ms: u64,
    /// On SIGTERM / `shutdown`, connections get this long to close before exit.
    pub drain_timeout_secs: f64,
    /// After sending a WebSocket close frame, wait this long for the peer's.
    pub close_timeout_secs: f64,
    /// Largest request head (subscriber and admin ports).
    pub max_head_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Most admin connections at once.
    pub admin_max_connections: usize,
    /// Most admin connections from one source address.
    pub admin_max_connections_per_ip: usize,
    /// An admin request head must arrive within this.
    pub admin_head_timeout_secs: f64,
    /// An admin request body (and an answer's write) must finish within this.
    pub admin_body_timeout_secs: f64,
    /// An idle keep-alive admin connection is closed after this.
    pub admin_idle_timeout_secs: f64,
    /// Default callback of `/iframe` when `cb` is not given.
    pub iframe_callback: String,
    /// Default lifetime of tokens minted by `/sign` (seconds).
    pub token_ttl_secs: u64,
    /// Clustering.
    pub cluster: ClusterConfig,
}

/// A configuration error, reported with exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Converts seconds to a duration (validated finite and positive).
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, MAX_SECS))
}

/// True when `channel` matches `pattern`: `*` matches any run of characters, everything
/// else matches itself (`chat.*`, `*`, `room:*:public`, `news`).
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let p = pattern.as_bytes();
    let s = channel.as_bytes();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("chat.*", "chat.room1"));
        assert!(pattern_matches("chat.*", "chat."));
        assert!(!pattern_matches("chat.*", "chat"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("news", "news"));
        assert!(!pattern_matches("news", "news2"));
        assert!(pattern_matches("room:*:public", "room:42:public"));
        assert!(!pattern_matches("room:*:public", "room:42:private"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
    }
}
