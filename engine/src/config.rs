//! Configuration: TOML file, command-line flags and `--set KEY=VALUE`, with every key's
//! default documented here (and in README.md).
//!
//! Precedence: embedded defaults < `--config FILE` < dedicated flags (`--listen`, ...) <
//! `--set`. Part of the configuration can be changed while the server runs (`config set`
//! on the control socket); those keys live in [`Live`] as atomics that the workers read.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::limits::{
    HEADERS_CAP, HEAD_BYTES_RANGE, MAX_ACCEPT_PAUSE_MS, MAX_ADMIN_CONNECTIONS,
    MAX_CHANNELS_PER_CONN, MAX_HISTORY_SIZE, MAX_LISTENERS, MAX_MESSAGE_BYTES_LIMIT, MAX_RATE,
    MAX_SECS, MAX_SOCKETIO_PATH, MAX_WORKERS, MIN_HEADERS, MIN_MESSAGE_BYTES,
    MIN_SLOW_CONSUMER_BYTES, SOCKETIO_PAYLOAD_RANGE,
};
use crate::log::{self, Level};

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

/// Default subscriber address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8100";
/// Default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8000";
/// The control socket's file name in the default directories.
pub const CONTROL_SOCKET_NAME: &str = "pushedge.sock";
/// The system-wide control socket directory (root, or a service with
/// `RuntimeDirectory=pushedge`).
pub const SYSTEM_CONTROL_DIR: &str = "/run/pushedge";

/// The default `control_path`, the same from any working directory:
/// `$XDG_RUNTIME_DIR/pushedge.sock` when XDG_RUNTIME_DIR is set (an absolute path), else
/// `/run/pushedge/pushedge.sock` when that directory is writable or can be created (root),
/// else `/tmp/pushedge-<uid>/pushedge.sock` (the directory is created mode 0700 at start).
pub fn default_control_path() -> String {
    control_path_candidates()
        .into_iter()
        .find_map(|(path, usable)| usable.then_some(path))
        .unwrap_or_else(default_user_control_path)
}

/// The default locations in order, each with whether a server would pick it (what
/// `pushedge ctl` looks through for a running server).
pub fn control_path_candidates() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        let dir = std::path::PathBuf::from(dir);
        if dir.is_absolute() {
            let p = dir.join(CONTROL_SOCKET_NAME).to_string_lossy().into_owned();
            out.push((p, true));
        }
    }
    let system = format!("{SYSTEM_CONTROL_DIR}/{CONTROL_SOCKET_NAME}");
    out.push((system, system_dir_usable()));
    out.push((default_user_control_path(), true));
    out
}

/// The last default: `/tmp/pushedge-<uid>/pushedge.sock`.
pub fn default_user_control_path() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    format!("/tmp/pushedge-{uid}/{CONTROL_SOCKET_NAME}")
}

/// `/run/pushedge` exists and is writable by this process, or it can be created (root).
fn system_dir_usable() -> bool {
    use std::os::unix::ffi::OsStrExt;
    let writable = |p: &str| {
        let c = std::ffi::CString::new(std::ffi::OsStr::new(p).as_bytes()).ok();
        // SAFETY: access(2) reads a NUL-terminated path that lives through the call.
        c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0)
    };
    if std::path::Path::new(SYSTEM_CONTROL_DIR).is_dir() {
        return writable(SYSTEM_CONTROL_DIR);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && writable("/run")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.into(),
            listener: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            reuse_port: false,
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            admin_tls_cert: String::new(),
            admin_tls_key: String::new(),
            control_path: default_control_path(),
            workers: 0,
            backend: BackendKind::Epoll,
            uring_direct: true,
            uring_arm: UringArm::Poll,
            auth: AuthMode::None,
            token_secret: String::new(),
            admin_token: String::new(),
            history_size: 64,
            history_store: HistoryStore::Memory,
            history_path: String::new(),
            history_fsync: false,
            idempotency_window_secs: 300.0,
            idempotency_max_keys: 100_000,
            heartbeat_secs: 25.0,
            pong_timeout_secs: 10.0,
            poll_timeout_secs: 30.0,
            handshake_timeout_secs: 10.0,
            idle_timeout_secs: 60.0,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_channels: 1_000_000,
            max_channels_per_conn: 16,
            max_message_bytes: 65_536,
            message_timeout_secs: 20.0,
            max_channel_creates_per_conn: 20.0,
            channel_creates_burst: 64,
            client_publish_rate: 20.0,
            client_publish_burst: 50,
            token_grace_secs: 30.0,
            allowed_origins: vec!["*".into()],
            slow_consumer_bytes: 1_048_576,
            channel_ttl_secs: 300.0,
            client_publish: Vec::new(),
            ws_echo: false,
            ws_deflate: true,
            presence: Vec::new(),
            presence_public: false,
            user_channels: false,
            demo: false,
            client_library: true,
            token_algorithms: vec!["HS256".into()],
            token_public_key: String::new(),
            token_jwks: String::new(),
            socketio: true,
            socketio_path: "/socket.io/".into(),
            socketio_ping_interval_secs: 25.0,
            socketio_ping_timeout_secs: 20.0,
            socketio_max_payload: 1_000_000,
            socketio_namespaces: vec!["*".into()],
            socketio_main_prefix: String::new(),
            socketio_broadcast_room: "all".into(),
            socketio_own_room: true,
            socketio_client_subscribe: true,
            socketio_recovery_secs: 0.0,
            socketio_test: false,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            access_log: String::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            accept_pause_ms: 100,
            sse_retry_ms: 2000,
            drain_timeout_secs: 10.0,
            close_timeout_secs: 2.0,
            max_head_bytes: protocol::http::DEFAULT_MAX_HEAD_BYTES,
            max_headers: protocol::http::DEFAULT_MAX_HEADERS,
            admin_max_connections: 256,
            admin_max_connections_per_ip: 128,
            admin_head_timeout_secs: 10.0,
            admin_body_timeout_secs: 30.0,
            admin_idle_timeout_secs: 60.0,
            iframe_callback: "pushedge".into(),
            token_ttl_secs: 3600,
            cluster: ClusterConfig::default(),
        }
    }
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

/// Keys that `config set` may change while the server runs.
pub const LIVE_KEYS: &[&str] = &[
    "heartbeat_secs",
    "pong_timeout_secs",
    "idle_timeout_secs",
    "poll_timeout_secs",
    "handshake_timeout_secs",
    "max_connections",
    "max_message_bytes",
    "history_size",
    "slow_consumer_bytes",
    "log_level",
    "accept_pause_ms",
];

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {path}: {e}")))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{path}: {}", e.0)))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies `KEY=VALUE` (TOML value; a bare word is taken as a string). `KEY` may be
    /// dotted (`cluster.redis_url`). Validated like [`Config::set`].
    pub fn set_kv(&mut self, kv: &str) -> Result<(), ConfigError> {
        let (key, value) = split_kv(kv)?;
        self.set(key, value)
    }
}

/// Splits `KEY=VALUE`.
pub fn split_kv(kv: &str) -> Result<(&str, &str), ConfigError> {
    match kv.split_once('=') {
        Some((k, v)) => Ok((k.trim(), v.trim())),
        None => err(format!("--set expects KEY=VALUE, got '{kv}'")),
    }
}

impl Config {
    /// Sets one key from its textual value and validates the result.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut next = self.clone();
        next.set_unchecked(key, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Sets one key (type-checked) without checking relations between keys: for the
    /// command line, where `--set auth=token --set token_secret=...` must work in any
    /// order; call [`Config::validate`] once at the end.
    pub fn set_unchecked(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut doc = toml::Value::try_from(&*self)
            .map_err(|e| ConfigError(format!("internal: cannot serialize config: {e}")))?;
        let parsed = parse_value(value);
        let mut table = doc.as_table_mut();
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(t) = table else {
                return err(format!("unknown key '{key}'"));
            };
            if i + 1 == parts.len() {
                let Some(old) = t.get(*part) else {
                    return err(format!("unknown key '{key}'"));
                };
                let new = coerce(old, parsed.clone())
                    .ok_or_else(|| ConfigError(format!("invalid value for {key}: '{value}'")))?;
                t.insert((*part).to_string(), new);
                break;
            }
            table = t.get_mut(*part).and_then(|v| v.as_table_mut());
        }
        let cfg: Config = doc
            .try_into()
            .map_err(|e| ConfigError(format!("invalid value for {key}: {e}")))?;
        *self = cfg;
        Ok(())
    }

    /// One key as JSON, or the whole configuration when `key` is `None`.
    pub fn get_json(&self, key: Option<&str>) -> Result<serde_json::Value, ConfigError> {
        let all = serde_json::to_value(self)
            .map_err(|e| ConfigError(format!("internal: cannot serialize config: {e}")))?;
        let Some(key) = key else {
            return Ok(redact(all));
        };
        let mut v = &all;
        for part in key.split('.') {
            v = v
                .get(part)
                .ok_or_else(|| ConfigError(format!("unknown key '{key}'")))?;
        }
        if key == "token_secret" || key == "admin_token" {
            return Ok(serde_json::Value::String(redacted(v)));
        }
        Ok(v.clone())
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_durations()?;
        self.validate_sizes()?;
        self.validate_clients()?;
        self.validate_ports()?;
        self.validate_cluster()?;
        self.validate_socketio()?;
        if self.history_store == HistoryStore::Disk {
            if self.history_path.is_empty() {
                return err("history_store = \"disk\" needs history_path (a directory)");
            }
            if !self.cluster.redis_url.is_empty() {
                return err(
                    "history_store = \"disk\" cannot be used with cluster.redis_url: in a cluster the history lives in Redis (run Redis with persistence)",
                );
            }
        }
        if Level::parse(&self.log_level).is_none() {
            return err(format!(
                "log_level must be error, warn, info, debug or trace, got '{}'",
                self.log_level
            ));
        }
        self.validate_proxies()?;
        Ok(())
    }

    fn validate_durations(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("heartbeat_secs", self.heartbeat_secs),
            ("pong_timeout_secs", self.pong_timeout_secs),
            ("poll_timeout_secs", self.poll_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("channel_ttl_secs", self.channel_ttl_secs),
            ("drain_timeout_secs", self.drain_timeout_secs),
            ("close_timeout_secs", self.close_timeout_secs),
            ("idempotency_window_secs", self.idempotency_window_secs),
            ("message_timeout_secs", self.message_timeout_secs),
            ("token_grace_secs", self.token_grace_secs),
            ("admin_head_timeout_secs", self.admin_head_timeout_secs),
            ("admin_body_timeout_secs", self.admin_body_timeout_secs),
            ("admin_idle_timeout_secs", self.admin_idle_timeout_secs),
            ("cluster.history_wait_secs", self.cluster.history_wait_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_SECS) {
                return err(format!("{name} must be > 0 and <= {MAX_SECS}, got {v}"));
            }
        }
        if self.accept_pause_ms == 0 || self.accept_pause_ms > MAX_ACCEPT_PAUSE_MS {
            return err(format!("accept_pause_ms must be 1..={MAX_ACCEPT_PAUSE_MS}"));
        }
        Ok(())
    }

    fn validate_sizes(&self) -> Result<(), ConfigError> {
        if self.workers > MAX_WORKERS {
            return err(format!("workers must be <= {MAX_WORKERS}"));
        }
        if self.history_size == 0 || self.history_size > MAX_HISTORY_SIZE {
            return err(format!("history_size must be 1..={MAX_HISTORY_SIZE}"));
        }
        if self.max_channels == 0 {
            return err("max_channels must be > 0");
        }
        if self.max_channels_per_conn == 0 || self.max_channels_per_conn > MAX_CHANNELS_PER_CONN {
            return err(format!(
                "max_channels_per_conn must be 1..={MAX_CHANNELS_PER_CONN}"
            ));
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            return err(format!(
                "max_message_bytes must be {MIN_MESSAGE_BYTES}..={MAX_MESSAGE_BYTES_LIMIT}"
            ));
        }
        if self.slow_consumer_bytes < MIN_SLOW_CONSUMER_BYTES {
            return err(format!(
                "slow_consumer_bytes must be >= {MIN_SLOW_CONSUMER_BYTES}"
            ));
        }
        if !HEAD_BYTES_RANGE.contains(&self.max_head_bytes) {
            return err(format!(
                "max_head_bytes must be {}..={}",
                HEAD_BYTES_RANGE.start(),
                HEAD_BYTES_RANGE.end()
            ));
        }
        if !(MIN_HEADERS..=HEADERS_CAP).contains(&self.max_headers) {
            return err(format!("max_headers must be {MIN_HEADERS}..={HEADERS_CAP}"));
        }
        if self.idempotency_max_keys == 0 {
            return err("idempotency_max_keys must be > 0");
        }
        Ok(())
    }

    /// What clients may do: rates, origins, tokens, publishing.
    fn validate_clients(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            (
                "max_channel_creates_per_conn",
                self.max_channel_creates_per_conn,
            ),
            ("client_publish_rate", self.client_publish_rate),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_RATE) {
                return err(format!("{name} must be > 0 and <= {MAX_RATE}, got {v}"));
            }
        }
        if self.channel_creates_burst == 0 || self.client_publish_burst == 0 {
            return err("channel_creates_burst and client_publish_burst must be > 0");
        }
        for p in &self.allowed_origins {
            if p.is_empty() || p.bytes().any(|b| b.is_ascii_whitespace() || b == b',') {
                return err(format!("allowed_origins: bad pattern '{p}'"));
            }
        }
        self.validate_tokens()?;
        if protocol::message::validate_callback(&self.iframe_callback).is_err() {
            return err("iframe_callback must be a JavaScript identifier path");
        }
        if self.client_publish.iter().any(String::is_empty) {
            return err("client_publish patterns must not be empty");
        }
        Ok(())
    }

    /// `token_algorithms`, `token_secret`, `token_public_key` and `token_jwks` (the key
    /// files themselves are read at start, by `auth::Verifier::new`).
    fn validate_tokens(&self) -> Result<(), ConfigError> {
        crate::auth::check_algorithms(&self.token_algorithms)?;
        if self.auth != AuthMode::Token {
            return Ok(());
        }
        let has = |a: &str| self.token_algorithms.iter().any(|n| n == a);
        if self.token_algorithms.is_empty() {
            return err("auth = \"token\" needs at least one of token_algorithms");
        }
        if has("HS256") && self.token_secret.is_empty() {
            return err("auth = \"token\" needs token_secret (token_algorithms has HS256)");
        }
        let public = has("RS256") || has("ES256");
        match (self.token_public_key.is_empty(), self.token_jwks.is_empty()) {
            (false, false) => err("set token_public_key or token_jwks, not both"),
            (true, true) if public => err(
                "token_algorithms has RS256 or ES256: set token_public_key (PEM) or token_jwks (JWKS)",
            ),
            (true, true) => Ok(()),
            _ if !public => err(
                "token_public_key / token_jwks are set but token_algorithms has neither RS256 nor ES256",
            ),
            _ => Ok(()),
        }
    }

    /// The Socket.IO keys.
    fn validate_socketio(&self) -> Result<(), ConfigError> {
        let p = &self.socketio_path;
        if !p.starts_with('/')
            || p.len() < 2
            || p.len() > MAX_SOCKETIO_PATH
            || !p
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'%')
        {
            return err(format!(
                "socketio_path must start with '/', be 2..={MAX_SOCKETIO_PATH} printable bytes without '?' or '%', got '{p}'"
            ));
        }
        for (name, v) in [
            (
                "socketio_ping_interval_secs",
                self.socketio_ping_interval_secs,
            ),
            (
                "socketio_ping_timeout_secs",
                self.socketio_ping_timeout_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= MAX_SECS) {
                return err(format!("{name} must be > 0 and <= {MAX_SECS}, got {v}"));
            }
        }
        let r = self.socketio_recovery_secs;
        if !(r.is_finite() && (0.0..=MAX_SECS).contains(&r)) {
            return err(format!(
                "socketio_recovery_secs must be 0 (off) to {MAX_SECS}, got {r}"
            ));
        }
        if !SOCKETIO_PAYLOAD_RANGE.contains(&self.socketio_max_payload) {
            return err(format!(
                "socketio_max_payload must be {}..={}",
                SOCKETIO_PAYLOAD_RANGE.start(),
                SOCKETIO_PAYLOAD_RANGE.end()
            ));
        }
        let prefix = &self.socketio_main_prefix;
        if !prefix.is_empty() && protocol::message::validate_channel(prefix).is_err() {
            return err(format!(
                "socketio_main_prefix must be empty or made of channel-name bytes, got '{prefix}'"
            ));
        }
        if protocol::message::validate_channel(&self.socketio_broadcast_room).is_err() {
            return err("socketio_broadcast_room must be a valid channel name");
        }
        if self
            .socketio_namespaces
            .iter()
            .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace()))
        {
            return err("socketio_namespaces patterns must not be empty or hold spaces");
        }
        Ok(())
    }

    /// Listeners and connection caps.
    fn validate_ports(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() || self.admin_listen.is_empty() {
            return err("listen and admin_listen must be set");
        }
        if self.listener.len() > MAX_LISTENERS {
            return err(format!("at most {MAX_LISTENERS} [[listener]] entries"));
        }
        if self.listener.iter().any(|l| l.addr.is_empty()) {
            return err("every [[listener]] needs an addr");
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return err("tls_cert and tls_key go together");
        }
        if self.admin_tls_cert.is_empty() != self.admin_tls_key.is_empty() {
            return err("admin_tls_cert and admin_tls_key go together");
        }
        if !self.tls_cert.is_empty() && !self.listener.is_empty() {
            return err(
                "tls_cert and tls_key are for the `listen` listener; with [[listener]] entries, give each its own tls = { cert, key }",
            );
        }
        let files = self.listener.iter().filter_map(|l| l.tls.as_ref());
        for t in files {
            let empty = |c: &str, k: &str| c.is_empty() || k.is_empty();
            if empty(&t.cert, &t.key) || t.sni.iter().any(|s| empty(&s.cert, &s.key)) {
                return err(
                    "a listener's tls needs both cert and key (and so does each sni entry)",
                );
            }
        }
        if self.admin_max_connections == 0 || self.admin_max_connections_per_ip == 0 {
            return err("admin_max_connections and admin_max_connections_per_ip must be > 0");
        }
        if self.admin_max_connections > MAX_ADMIN_CONNECTIONS {
            return err(format!(
                "admin_max_connections must be <= {MAX_ADMIN_CONNECTIONS}"
            ));
        }
        if self.max_connections_per_ip > 0
            && self.backend == BackendKind::Uring
            && self.uring_direct
        {
            return err(
                "max_connections_per_ip needs the peer's address, which io_uring direct descriptors do not give cheaply: use backend = \"epoll\" or uring_direct = false",
            );
        }
        Ok(())
    }

    /// `trusted_proxies` and `proxy_protocol`.
    fn validate_proxies(&self) -> Result<(), ConfigError> {
        if let Err(bad) = crate::peer::Trusted::parse(&self.trusted_proxies) {
            return err(format!(
                "trusted_proxies: '{bad}' is not an IP address or a CIDR block (10.0.0.0/8, fd00::/8)"
            ));
        }
        if self.proxy_protocol {
            if self.trusted_proxies.is_empty() {
                return err(
                    "proxy_protocol needs trusted_proxies (the load balancers whose PROXY header is taken)",
                );
            }
            if self.listeners().iter().any(|l| l.tls.is_some()) {
                return err("proxy_protocol is not supported on TLS listeners yet");
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.prefix.is_empty()
            || c.prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'{' || b == b'}')
        {
            return err("cluster.prefix must be non-empty, without spaces or braces");
        }
        if c.key_ttl_secs == 0 {
            return err("cluster.key_ttl_secs must be > 0");
        }
        if c.node_id.bytes().any(|b| b.is_ascii_whitespace()) {
            return err("cluster.node_id must not contain spaces");
        }
        Ok(())
    }

    /// The subscriber listeners: the `[[listener]]` entries, or one on `listen`.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        if self.listener.is_empty() {
            let tls = (!self.tls_cert.is_empty()).then(|| TlsFiles {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                sni: Vec::new(),
            });
            vec![ListenerConfig {
                addr: self.listen.clone(),
                protocol: ListenerProtocol::Http,
                tls,
            }]
        } else {
            self.listener.clone()
        }
    }

    /// The admin port's TLS, if it has one.
    pub fn admin_tls(&self) -> Option<TlsFiles> {
        (!self.admin_tls_cert.is_empty()).then(|| TlsFiles {
            cert: self.admin_tls_cert.clone(),
            key: self.admin_tls_key.clone(),
            sni: Vec::new(),
        })
    }

    /// Number of workers to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

fn parse_value(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

/// Converts `new` to the type of `old` where the conversion is obvious (an integer for a
/// float key, a number written as a string).
fn coerce(old: &toml::Value, new: toml::Value) -> Option<toml::Value> {
    use toml::Value as V;
    match (old, new) {
        (V::Float(_), V::Integer(i)) => Some(V::Float(i as f64)),
        (V::Float(_), V::Float(f)) => Some(V::Float(f)),
        (V::Integer(_), V::Integer(i)) => Some(V::Integer(i)),
        (V::Boolean(_), V::Boolean(b)) => Some(V::Boolean(b)),
        (V::String(_), V::String(s)) => Some(V::String(s)),
        (V::String(_), v @ (V::Integer(_) | V::Float(_) | V::Boolean(_))) => {
            Some(V::String(v.to_string()))
        }
        (V::Array(_), V::Array(a)) => Some(V::Array(a)),
        (V::Array(_), V::String(s)) => Some(V::Array(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| V::String(p.to_string()))
                .collect(),
        )),
        _ => None,
    }
}

fn redacted(v: &serde_json::Value) -> String {
    match v.as_str() {
        Some("") => String::new(),
        _ => "<redacted>".into(),
    }
}

fn redact(mut all: serde_json::Value) -> serde_json::Value {
    for key in ["token_secret", "admin_token"] {
        if let Some(v) = all.get_mut(key) {
            *v = serde_json::Value::String(redacted(v));
        }
    }
    all
}

/// Converts seconds to a duration (validated finite and positive).
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, MAX_SECS))
}

/// The keys that can change while the server runs, read by the workers on every use.
#[derive(Debug)]
pub struct Live {
    heartbeat_ms: AtomicU64,
    pong_timeout_ms: AtomicU64,
    idle_timeout_ms: AtomicU64,
    poll_timeout_ms: AtomicU64,
    handshake_timeout_ms: AtomicU64,
    accept_pause_ms: AtomicU64,
    max_connections: AtomicUsize,
    max_message_bytes: AtomicUsize,
    history_size: AtomicUsize,
    slow_consumer_bytes: AtomicUsize,
}

fn ms(v: f64) -> u64 {
    (v * 1000.0).round().max(1.0) as u64
}

impl Live {
    /// Live values from a configuration.
    pub fn new(cfg: &Config) -> Live {
        let live = Live {
            heartbeat_ms: AtomicU64::new(0),
            pong_timeout_ms: AtomicU64::new(0),
            idle_timeout_ms: AtomicU64::new(0),
            poll_timeout_ms: AtomicU64::new(0),
            handshake_timeout_ms: AtomicU64::new(0),
            accept_pause_ms: AtomicU64::new(0),
            max_connections: AtomicUsize::new(0),
            max_message_bytes: AtomicUsize::new(0),
            history_size: AtomicUsize::new(0),
            slow_consumer_bytes: AtomicUsize::new(0),
        };
        live.apply(cfg);
        live
    }

    /// Publishes every live key of `cfg`.
    pub fn apply(&self, cfg: &Config) {
        let r = Ordering::Relaxed;
        self.heartbeat_ms.store(ms(cfg.heartbeat_secs), r);
        self.pong_timeout_ms.store(ms(cfg.pong_timeout_secs), r);
        self.idle_timeout_ms.store(ms(cfg.idle_timeout_secs), r);
        self.poll_timeout_ms.store(ms(cfg.poll_timeout_secs), r);
        self.handshake_timeout_ms
            .store(ms(cfg.handshake_timeout_secs), r);
        self.accept_pause_ms.store(cfg.accept_pause_ms, r);
        self.max_connections.store(cfg.max_connections, r);
        self.max_message_bytes.store(cfg.max_message_bytes, r);
        self.history_size.store(cfg.history_size, r);
        self.slow_consumer_bytes.store(cfg.slow_consumer_bytes, r);
        if let Some(level) = Level::parse(&cfg.log_level) {
            log::set_level(level);
        }
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }
    /// Pong timeout.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(self.pong_timeout_ms.load(Ordering::Relaxed))
    }
    /// Keep-alive idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed))
    }
    /// Long-poll timeout.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_millis(self.poll_timeout_ms.load(Ordering::Relaxed))
    }
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.load(Ordering::Relaxed))
    }
    /// Accept pause after EMFILE.
    pub fn accept_pause(&self) -> Duration {
        Duration::from_millis(self.accept_pause_ms.load(Ordering::Relaxed))
    }
    /// Connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
    /// Message size cap.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.load(Ordering::Relaxed)
    }
    /// History ring size.
    pub fn history_size(&self) -> usize {
        self.history_size.load(Ordering::Relaxed)
    }
    /// Slow-consumer cap.
    pub fn slow_consumer_bytes(&self) -> usize {
        self.slow_consumer_bytes.load(Ordering::Relaxed)
    }
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
    fn defaults_validate() {
        Config::default().validate().unwrap();
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn toml_and_set() {
        let mut cfg = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\nheartbeat_secs = 5\nclient_publish = [\"chat.*\"]\n[cluster]\nredis_url = \"redis://x\"\n",
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000");
        assert_eq!(cfg.heartbeat_secs, 5.0);
        assert_eq!(cfg.cluster.redis_url, "redis://x");
        cfg.set_kv("heartbeat_secs=0.5").unwrap();
        assert_eq!(cfg.heartbeat_secs, 0.5);
        cfg.set_kv("ws_echo=true").unwrap();
        assert!(cfg.ws_echo);
        assert!(cfg.ws_deflate, "on by default");
        cfg.set_kv("ws_deflate=false").unwrap();
        assert!(!cfg.ws_deflate);
        cfg.set_kv("log_level=debug").unwrap();
        assert_eq!(cfg.log_level, "debug");
        cfg.set_kv("log_format=json").unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        cfg.set_kv("trusted_proxies=127.0.0.1,10.0.0.0/8").unwrap();
        assert_eq!(cfg.trusted_proxies, vec!["127.0.0.1", "10.0.0.0/8"]);
        cfg.set_kv("proxy_protocol=true").unwrap();
        cfg.set_kv("client_publish=a.*,b").unwrap();
        assert_eq!(cfg.client_publish, vec!["a.*", "b"]);
        cfg.set_kv("cluster.node_id=n1").unwrap();
        assert_eq!(cfg.cluster.node_id, "n1");
        cfg.set_kv("token_secret=123").unwrap();
        assert_eq!(cfg.token_secret, "123");
    }

    #[test]
    fn bad_input_is_reported() {
        let mut cfg = Config::default();
        assert!(cfg.set_kv("nope=1").unwrap_err().0.contains("unknown key"));
        assert!(cfg.set_kv("history_size=abc").is_err());
        assert!(cfg.set_kv("history_size=0").is_err());
        assert!(cfg.set_kv("heartbeat_secs=-1").is_err());
        assert!(cfg.set_kv("log_level=loud").is_err());
        assert!(cfg.set_kv("log_format=xml").is_err());
        assert!(cfg.set_kv("trusted_proxies=10.0.0.0/40").is_err());
        assert!(
            cfg.set_kv("proxy_protocol=true").is_err(),
            "needs trusted_proxies"
        );
        assert!(cfg.set_kv("noequals").is_err());
        assert!(
            cfg.set_kv("auth=token").is_err(),
            "token auth needs a secret"
        );
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::from_toml("workers = \"two\"").is_err());
        assert_eq!(cfg, Config::default(), "failed sets change nothing");
    }

    #[test]
    fn get_json_redacts_secrets() {
        let mut cfg = Config::default();
        cfg.set_kv("token_secret=s3cret").unwrap();
        let all = cfg.get_json(None).unwrap();
        assert_eq!(all["token_secret"], "<redacted>");
        assert_eq!(all["admin_token"], "");
        assert_eq!(cfg.get_json(Some("history_size")).unwrap(), 64);
        assert!(cfg.get_json(Some("nope")).is_err());
    }

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
