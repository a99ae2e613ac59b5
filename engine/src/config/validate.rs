//! Validation: the ranges of single keys and the relations between keys, checked after
//! every change ([`Config::validate`]).

use super::{err, AuthMode, BackendKind, Config, ConfigError, HistoryStore};
use crate::limits::{
    HEADERS_CAP, HEAD_BYTES_RANGE, MAX_ACCEPT_PAUSE_MS, MAX_ADMIN_CONNECTIONS,
    MAX_CHANNELS_PER_CONN, MAX_HISTORY_SIZE, MAX_LISTENERS, MAX_MESSAGE_BYTES_LIMIT, MAX_RATE,
    MAX_SECS, MAX_SOCKETIO_PATH, MAX_WORKERS, MIN_HEADERS, MIN_MESSAGE_BYTES,
    MIN_SLOW_CONSUMER_BYTES, SOCKETIO_PAYLOAD_RANGE,
};
use crate::log::Level;

impl Config {
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
}
