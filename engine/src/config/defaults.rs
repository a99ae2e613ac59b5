//! The embedded defaults: every key's default value ([`Config`]'s `Default`, one row per
//! key), the default addresses, and where the control socket goes.

use super::{AuthMode, BackendKind, ClusterConfig, Config, HistoryStore, LogFormat, UringArm};

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

/// Writes `impl Default for Config` from a table of `key: default` rows, one per field of
/// [`Config`] in its order (a key missing or unknown fails to compile). A table rather than
/// one long function: it is data, read by key.
macro_rules! config_defaults {
    ($($key:ident: $value:expr,)*) => {
        impl Default for Config {
            fn default() -> Self {
                Config { $($key: $value,)* }
            }
        }
    };
}

// Every key's default.
config_defaults! {
    // Ports and listeners.
    listen: DEFAULT_LISTEN.into(),
    listener: Vec::new(),
    tls_cert: String::new(),
    tls_key: String::new(),
    reuse_port: false,
    admin_listen: DEFAULT_ADMIN_LISTEN.into(),
    admin_tls_cert: String::new(),
    admin_tls_key: String::new(),
    control_path: default_control_path(),

    // Workers and the reactor.
    workers: 0,
    backend: BackendKind::Epoll,
    uring_direct: true,
    uring_arm: UringArm::Poll,

    // Authentication.
    auth: AuthMode::None,
    token_secret: String::new(),
    admin_token: String::new(),

    // Histories and idempotency.
    history_size: 64,
    history_store: HistoryStore::Memory,
    history_path: String::new(),
    history_fsync: false,
    idempotency_window_secs: 300.0,
    idempotency_max_keys: 100_000,

    // Connections: timeouts, caps and rates.
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

    // Client rights and transports.
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

    // Token keys.
    token_algorithms: vec!["HS256".into()],
    token_public_key: String::new(),
    token_jwks: String::new(),

    // Socket.IO.
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

    // Logging, proxies and shutdown.
    log_level: "info".into(),
    log_format: LogFormat::Text,
    access_log: String::new(),
    trusted_proxies: Vec::new(),
    proxy_protocol: false,
    accept_pause_ms: 100,
    sse_retry_ms: 2000,
    drain_timeout_secs: 10.0,
    close_timeout_secs: 2.0,

    // HTTP heads and the admin port.
    max_head_bytes: protocol::http::DEFAULT_MAX_HEAD_BYTES,
    max_headers: protocol::http::DEFAULT_MAX_HEADERS,
    admin_max_connections: 256,
    admin_max_connections_per_ip: 128,
    admin_head_timeout_secs: 10.0,
    admin_body_timeout_secs: 30.0,
    admin_idle_timeout_secs: 60.0,

    // The iframe transport, `/sign` and clustering.
    iframe_callback: "pushedge".into(),
    token_ttl_secs: 3600,
    cluster: ClusterConfig::default(),
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
}
