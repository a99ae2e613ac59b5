//! The subscriber port's HTTP side: parsing a request head, routing it to a transport,
//! CORS and origins, the parameters every transport shares (channels, positions,
//! callback, token), and the plain answers (errors, `/ping`, `/healthz`, preflights).

use protocol::http::{self, Method, Parsed, ResponseBody, EMPTY_HEADER};
use protocol::message::{self, Message};
use protocol::query::Query;

use super::Core;
use crate::auth::{self, Grant};
use crate::conn::{flag, State};
use crate::epoch::Epoch;
use crate::hub::Since;
use crate::limits::HEADERS_CAP;
use crate::metrics::Counter;
use crate::reactor::{Backend, Part};
use crate::transport::{self, Route};

/// The channel of user `U` is `user:U` (with `user_channels`).
pub const USER_PREFIX: &str = "user:";

/// How long browsers may keep the client library and the demo.
const STATIC_CACHE: &str = "public, max-age=300";

/// An error answered on the HTTP level: status and reason.
pub type Reject = (u16, String);

/// A [`Reject`].
pub fn reject(status: u16, reason: impl Into<String>) -> Reject {
    (status, reason.into())
}

/// The files the subscriber port serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticFile {
    /// `/pushedge.js`: the browser client library, a classic script.
    Library,
    /// `/pushedge.mjs`: the same as an ES module.
    Module,
    /// `/demo`: the demo chat (with `demo = true`).
    Demo,
}

/// The client library's source (`engine/static/pushedge.js`).
const LIBRARY: &str = include_str!("../../static/pushedge.js");
/// What makes the library an ES module.
const MODULE_TAIL: &str = "\nexport default Pushedge;\nexport { Pushedge };\n";
/// The demo chat (`engine/static/demo.html`).
const DEMO: &str = include_str!("../../static/demo.html");

impl StaticFile {
    /// Content type and the body's parts.
    fn body(self) -> (&'static str, [&'static str; 2]) {
        match self {
            StaticFile::Library => ("text/javascript; charset=utf-8", [LIBRARY, ""]),
            StaticFile::Module => ("text/javascript; charset=utf-8", [LIBRARY, MODULE_TAIL]),
            StaticFile::Demo => ("text/html; charset=utf-8", [DEMO, ""]),
        }
    }
}

/// The routes of the subscriber port.
fn route_of(cfg: &crate::config::Config, path: &str) -> Option<Route> {
    if transport::socketio::is_path(cfg, path) {
        return Some(Route::SocketIo);
    }
    match path {
        "/pushedge.js" if cfg.client_library => return Some(Route::Static(StaticFile::Library)),
        "/pushedge.mjs" if cfg.client_library => return Some(Route::Static(StaticFile::Module)),
        "/demo" | "/demo/" if cfg.demo => return Some(Route::Static(StaticFile::Demo)),
        _ => {}
    }
    let echo = cfg.ws_echo;
    Some(match path {
        "/ws" => Route::Ws,
        "/echo" if echo => Route::Echo,
        "/sse" => Route::Sse,
        "/poll" | "/sub" => Route::Poll,
        "/stream" => Route::Stream,
        "/iframe" => Route::Iframe,
        "/ping" => Route::Ping,
        "/presence" if cfg.presence_public => Route::Presence,
        "/healthz" => Route::Health,
        _ => return None,
    })
}

impl<B: Backend> Core<B> {
    /// Parses and serves one request from `buf`; `None` when the head is incomplete.
    pub(crate) fn on_request(&mut self, slot: usize, buf: &[u8]) -> Option<usize> {
        let cfg = &self.shared.cfg;
        let limits = http::Limits {
            max_head_bytes: cfg.max_head_bytes,
            max_headers: cfg.max_headers,
            max_body_bytes: 0,
        };
        let mut headers = [EMPTY_HEADER; HEADERS_CAP];
        let max_headers = cfg.max_headers.min(HEADERS_CAP);
        let req = match http::parse_request(buf, &mut headers[..max_headers], &limits) {
            Ok(Parsed::Partial) => return None,
            Ok(Parsed::Complete(r)) => r,
            Err(e) => {
                self.respond_error(slot, e.status(), e.reason(), &[]);
                return Some(buf.len());
            }
        };
        self.on_request_seen(slot, &req);
        match self.check_request(slot, &req, &limits) {
            Ok(Some((Route::SocketIo, query))) => self.serve_socketio(slot, &req, &query, buf),
            Ok(Some((route, query))) => {
                self.serve(slot, &req, &query, route);
                Some(req.head_len)
            }
            Ok(None) => Some(req.head_len),
            Err((status, reason, allow)) => {
                let extra: &[(&str, &str)] = match allow {
                    Some(a) => &[("Allow", a)],
                    None => &[],
                };
                self.respond_error(slot, status, &reason, extra);
                Some(buf.len())
            }
        }
    }

    /// Everything about a request that is not its transport: the route, the origin, a
    /// preflight (answered here: `Ok(None)`), the method, the body, the query.
    #[allow(clippy::type_complexity)]
    fn check_request<'q>(
        &mut self,
        slot: usize,
        req: &'q http::Request<'_, '_>,
        limits: &http::Limits,
    ) -> Result<Option<(Route, Query<'q>)>, (u16, String, Option<&'static str>)> {
        // The framing first: a request whose body framing is malformed or ambiguous gets
        // the same answer whatever its path.
        let framing = http::body_framing(req, limits);
        if let Err(e) = &framing {
            if *e != http::HttpError::BodyTooLarge {
                return Err((e.status(), e.reason().into(), None));
            }
        }
        let Some(route) = route_of(&self.shared.cfg, req.path()) else {
            return Err((404, "no such endpoint".into(), None));
        };
        if !self.check_origin(slot, req) {
            self.stats.inc(Counter::OriginRefused);
            return Err((403, "origin not allowed (allowed_origins)".into(), None));
        }
        let keep_alive = req.keep_alive() && !self.draining;
        let conn = &mut self.conns[slot];
        conn.set(flag::SERVED);
        if keep_alive {
            conn.set(flag::KEEP_ALIVE);
        } else {
            conn.clear(flag::KEEP_ALIVE);
        }
        if req.method == Method::Options {
            self.respond_preflight(slot, req, route == Route::SocketIo);
            return Ok(None);
        }
        if route == Route::SocketIo {
            // Engine.IO answers a bad method itself (400); the body is read by
            // `serve_socketio`.
            let query =
                Query::parse(req.query()).map_err(|e| (400, e.reason().to_string(), None))?;
            return Ok(Some((route, query)));
        }
        let simple = matches!(route, Route::Ping | Route::Health | Route::Static(_));
        if req.method != Method::Get && !(simple && req.method == Method::Head) {
            let allow = if simple {
                "GET, HEAD, OPTIONS"
            } else {
                "GET, OPTIONS"
            };
            return Err((405, "method not allowed".into(), Some(allow)));
        }
        match framing {
            Ok(http::BodyFraming::None) => {}
            Ok(_) | Err(http::HttpError::BodyTooLarge) => {
                return Err((400, "subscriber requests carry no body".into(), None));
            }
            Err(e) => return Err((e.status(), e.reason().into(), None)),
        }
        let query = Query::parse(req.query()).map_err(|e| (400, e.reason().to_string(), None))?;
        Ok(Some((route, query)))
    }

    /// A Socket.IO request: its body (a POST's, up to `socketio_max_payload`, with
    /// `Content-Length`) is waited for, then the transport takes it. Returns the bytes
    /// used, `None` until the body is complete.
    fn serve_socketio(
        &mut self,
        slot: usize,
        req: &http::Request<'_, '_>,
        q: &Query<'_>,
        buf: &[u8],
    ) -> Option<usize> {
        let cfg = &self.shared.cfg;
        let limits = http::Limits {
            max_head_bytes: cfg.max_head_bytes,
            max_headers: cfg.max_headers,
            max_body_bytes: cfg.socketio_max_payload,
        };
        let (body, used) = match http::body_framing(req, &limits) {
            Ok(http::BodyFraming::None) => {
                let body = (req.method == Method::Post).then_some(&[][..]);
                (body, req.head_len)
            }
            Ok(http::BodyFraming::Length(n)) => {
                let end = req.head_len + n as usize;
                if buf.len() < end {
                    self.conns[slot].set(flag::BODY);
                    return None;
                }
                (Some(&buf[req.head_len..end]), end)
            }
            Ok(http::BodyFraming::Chunked) => {
                self.conns[slot].clear(flag::BODY);
                let reason = "Socket.IO request bodies need Content-Length";
                self.respond_error(slot, 411, reason, &[]);
                return Some(buf.len());
            }
            Err(http::HttpError::BodyTooLarge) => {
                self.conns[slot].clear(flag::BODY);
                transport::socketio::too_large(self, slot, q);
                return Some(buf.len());
            }
            Err(e) => {
                self.conns[slot].clear(flag::BODY);
                self.respond_error(slot, e.status(), e.reason(), &[]);
                return Some(buf.len());
            }
        };
        self.conns[slot].clear(flag::BODY);
        if let Err((status, reason)) = transport::socketio::start(self, slot, req, q, body) {
            self.respond_error(slot, status, &reason, &[]);
        }
        Some(used)
    }

    fn serve(&mut self, slot: usize, req: &http::Request<'_, '_>, q: &Query<'_>, route: Route) {
        let head_only = req.method == Method::Head;
        let result = match route {
            Route::Ping => {
                let body = b"{\"type\":\"ping\"}\n";
                self.respond_simple(slot, "application/json", body, head_only);
                Ok(())
            }
            Route::Health => {
                self.respond_simple(slot, "text/plain; charset=utf-8", b"ok\n", head_only);
                Ok(())
            }
            Route::Presence => self.presence_request(slot, q, head_only),
            Route::Static(file) => {
                let (content_type, [a, b]) = file.body();
                let mut body = Vec::with_capacity(a.len() + b.len());
                body.extend_from_slice(a.as_bytes());
                body.extend_from_slice(b.as_bytes());
                self.respond_cached(slot, content_type, &body, head_only);
                Ok(())
            }
            _ => transport::start(self, slot, req, q, route),
        };
        if let Err((status, reason)) = result {
            let extra: &[(&str, &str)] = if status == 401 {
                &[("WWW-Authenticate", "Bearer")]
            } else {
                &[]
            };
            self.respond_error(slot, status, &reason, extra);
        }
    }

    /// Checks the request's `Origin` against `allowed_origins` and keeps what its answers
    /// say; false when the origin is not allowed. A request without `Origin` (not from a
    /// browser) is allowed.
    fn check_origin(&mut self, slot: usize, req: &http::Request<'_, '_>) -> bool {
        let conn = &mut self.conns[slot];
        conn.clear(flag::CORS_ANY);
        if let Some(e) = conn.ext.as_mut() {
            e.origin = None;
        }
        let patterns = &self.shared.cfg.allowed_origins;
        let any = patterns.iter().any(|p| p == "*");
        let Some(origin) = req.header_str("origin") else {
            if any {
                conn.set(flag::CORS_ANY);
            }
            return true;
        };
        if patterns
            .iter()
            .any(|p| p != "*" && crate::config::pattern_matches(p, origin))
        {
            conn.ext().origin = Some(origin.into());
            return true;
        }
        if any {
            conn.set(flag::CORS_ANY);
            return true;
        }
        false
    }

    /// The CORS headers of the connection's current request.
    pub(crate) fn add_cors<'a>(&'a self, slot: usize, headers: &mut Vec<(&'a str, &'a str)>) {
        let conn = &self.conns[slot];
        if let Some(origin) = conn.ext.as_ref().and_then(|e| e.origin.as_deref()) {
            headers.push(("Access-Control-Allow-Origin", origin));
            headers.push(("Access-Control-Allow-Credentials", "true"));
            headers.push(("Vary", "Origin"));
        } else if conn.has(flag::CORS_ANY) {
            headers.push(("Access-Control-Allow-Origin", "*"));
        }
    }

    /// Answers a CORS preflight (`OPTIONS`) for an allowed origin.
    fn respond_preflight(&mut self, slot: usize, req: &http::Request<'_, '_>, post: bool) {
        // Echo the requested headers when they are a plain list of header names.
        let asked = req
            .header_str("access-control-request-headers")
            .filter(|h| {
                h.len() <= 256
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b' ')
                    })
            });
        let keep_alive = self.conns[slot].has(flag::KEEP_ALIVE);
        let mut headers: Vec<(&str, &str)> = vec![
            (
                "Access-Control-Allow-Methods",
                if post {
                    "GET, POST, OPTIONS"
                } else {
                    "GET, OPTIONS"
                },
            ),
            ("Access-Control-Max-Age", "600"),
        ];
        if let Some(h) = asked {
            headers.push(("Access-Control-Allow-Headers", h));
        }
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(384);
        http::write_response_head(&mut out, 200, &headers, ResponseBody::Length(0), keep_alive);
        self.send(slot, &[Part::Copy(&out)]);
        self.access_answered(slot, 200, 0);
        self.after_response(slot);
    }

    /// Answers with an error envelope and closes (gracefully).
    pub(crate) fn respond_error(
        &mut self,
        slot: usize,
        status: u16,
        reason: &str,
        extra: &[(&str, &str)],
    ) {
        if let Some(c) = Counter::for_status(status) {
            self.stats.inc(c);
        }
        let mut body = Message::Error {
            code: status,
            reason,
        }
        .to_json();
        body.push(b'\n');
        let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        self.add_cors(slot, &mut headers);
        headers.extend_from_slice(extra);
        let mut out = Vec::with_capacity(256 + body.len());
        http::write_response(&mut out, status, &headers, &body, false);
        let conn = &mut self.conns[slot];
        if conn.state() == State::Http {
            // Nothing more will be read from this request stream.
            if let Some(e) = conn.ext.as_mut() {
                e.rbuf = Vec::new();
            }
        }
        self.send(slot, &[Part::Copy(&out)]);
        self.note_close(slot, status, reason);
        self.access_answered(slot, status, body.len());
        self.close_graceful(slot);
    }

    /// Answers a small request with a complete 200 response and goes back to waiting for
    /// the next request (or closes, per keep-alive).
    fn respond_simple(&mut self, slot: usize, content_type: &str, body: &[u8], head_only: bool) {
        self.respond_200(slot, content_type, "no-cache", body, head_only);
    }

    /// `GET /presence?channel=` on the subscriber port (`presence_public`): with tokens,
    /// the token must grant the channel.
    fn presence_request(
        &mut self,
        slot: usize,
        q: &Query<'_>,
        head_only: bool,
    ) -> Result<(), Reject> {
        let channel = q
            .get_any(&["channel", "cname"])
            .ok_or_else(|| reject(400, "missing channel"))?
            .to_string();
        if let Err(e) = self.check_token(q, std::slice::from_ref(&channel)) {
            self.auth_failed(slot, "presence", e.reason());
            return Err(reject(401, e.reason()));
        }
        let mut body = crate::presence::answer_json(&self.shared, &channel, None, false)?;
        body.push(b'\n');
        self.respond_simple(slot, "application/json", &body, head_only);
        Ok(())
    }

    /// A static file: cached by browsers for a while.
    fn respond_cached(&mut self, slot: usize, content_type: &str, body: &[u8], head_only: bool) {
        self.respond_200(slot, content_type, STATIC_CACHE, body, head_only);
    }

    fn respond_200(
        &mut self,
        slot: usize,
        content_type: &str,
        cache: &str,
        body: &[u8],
        head_only: bool,
    ) {
        let keep_alive = self.conns[slot].has(flag::KEEP_ALIVE);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", content_type),
            ("Cache-Control", cache),
            ("X-Content-Type-Options", "nosniff"),
        ];
        self.add_cors(slot, &mut headers);
        let mut out = Vec::with_capacity(256 + body.len());
        http::write_response_head(
            &mut out,
            200,
            &headers,
            ResponseBody::Length(body.len()),
            keep_alive,
        );
        if !head_only {
            out.extend_from_slice(body);
        }
        self.send(slot, &[Part::Copy(&out)]);
        self.access_answered(slot, 200, if head_only { 0 } else { body.len() });
        self.after_response(slot);
    }

    /// After a complete response: wait for the next request, or close.
    pub(crate) fn after_response(&mut self, slot: usize) {
        if self.conns[slot].doomed() {
            return;
        }
        let moved = self.conns[slot].answered();
        if !self.apply(slot, moved) {
            return;
        }
        let conn = &mut self.conns[slot];
        conn.clear(flag::JSONP);
        if let Some(e) = conn.ext.as_mut() {
            e.callback = None;
            e.poll_seq = 0;
            e.origin = None;
        }
        if conn.has(flag::KEEP_ALIVE) && !self.draining {
            let pipelined = conn.has_saved_input();
            let t = if pipelined {
                self.live().handshake_timeout()
            } else {
                self.live().idle_timeout()
            };
            self.arm(slot, t);
            if pipelined {
                // Pipelined requests waited while this one was held: serve them next turn.
                let token = self.conns.token(slot);
                self.again.push(token);
            }
        } else {
            self.close_graceful(slot);
        }
    }

    /// Ends a connection that is between requests (or reading one) gracefully: an answer
    /// still being written (a poll answered just before) goes out first.
    pub(crate) fn end_http(&mut self, slot: usize) {
        let token = self.conns.token(slot);
        if self.io.pending(token) > 0 {
            self.close_graceful(slot);
        } else {
            self.close(slot);
        }
    }

    /// Channel list from `channel` / `cname`: deduplicated, bounded (the names are
    /// checked where they are subscribed).
    pub(crate) fn channels_param(
        &self,
        q: &Query<'_>,
        required: bool,
    ) -> Result<Vec<String>, Reject> {
        let Some(raw) = q.get_any(&["channel", "cname"]) else {
            return if required {
                Err(reject(400, "missing channel"))
            } else {
                Ok(Vec::new())
            };
        };
        let max = self.shared.cfg.max_channels_per_conn;
        let mut out: Vec<String> = Vec::new();
        for name in raw.split(',') {
            message::validate_channel(name).map_err(|e| reject(400, e.to_string()))?;
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
            if out.len() > max {
                return Err(reject(400, format!("too many channels (max {max})")));
            }
        }
        Ok(out)
    }

    /// Verifies `token=` for the channels (auth = "token"); `None` when auth is off.
    pub(crate) fn check_token(
        &self,
        q: &Query<'_>,
        channels: &[String],
    ) -> Result<Option<Grant>, auth::TokenError> {
        if !self.shared.token_auth() {
            return Ok(None);
        }
        let token = q.get("token").unwrap_or("");
        let grant = self.shared.verifier.verify(token, unix_now())?;
        if channels.iter().any(|c| !grant.allows(c)) {
            return Err(auth::TokenError::Channel);
        }
        Ok(Some(grant))
    }

    /// With `user_channels`, a connection whose token has `sub = U` is also subscribed
    /// to `user:U` (from now), so that a backend reaches one user on all their devices.
    pub(crate) fn add_user_channel(
        &self,
        grant: Option<&Grant>,
        channels: &mut Vec<String>,
        points: &mut Vec<Since>,
    ) {
        if !self.shared.cfg.user_channels {
            return;
        }
        let Some(user) = grant.and_then(|g| g.sub.as_deref()) else {
            return;
        };
        let name = format!("{USER_PREFIX}{user}");
        if message::validate_channel(&name).is_ok() && !channels.contains(&name) {
            channels.push(name);
            points.push(Since::Now);
        }
    }

    /// A streaming subscriber's start (SSE, NDJSON, iframe): the token checked for the
    /// channels, the user's own channel added, the grant kept (before subscribing, so
    /// that presence names the token's `sub`), every channel subscribed; returns what to
    /// replay.
    pub(crate) fn subscribe_stream(
        &mut self,
        slot: usize,
        q: &Query<'_>,
        mut channels: Vec<String>,
        mut points: Vec<Since>,
    ) -> Result<Vec<super::index::PendingReplay>, Reject> {
        let grant = match self.check_token(q, &channels) {
            Ok(g) => g,
            Err(e) => {
                self.auth_failed(slot, "subscribe", e.reason());
                return Err(reject(401, e.reason()));
            }
        };
        self.add_user_channel(grant.as_ref(), &mut channels, &mut points);
        self.keep_grant(slot, grant);
        let (pending, _) = self
            .subscribe_all(slot, &channels, &points, true, true)
            .map_err(|e| reject(e.status(), e.reason()))?;
        Ok(pending)
    }

    /// Keeps a verified token with its connection, whose rights end with it.
    pub(crate) fn keep_grant(&mut self, slot: usize, grant: Option<Grant>) {
        if let Some(g) = grant {
            self.conns[slot].ext().grant = Some(Box::new(g));
            self.watch_token(slot);
        }
    }
}

/// `since=` / `seq=` for each of `channels`: one position for all (`N`, `N@EPOCH`), or
/// one per channel, `CHANNEL:POS` items joined by `,` (split at the last `:`, as channel
/// names may hold one); a channel without an item starts now.
pub fn since_points(q: &Query<'_>, key: &str, channels: &[String]) -> Result<Vec<Since>, Reject> {
    let Some(v) = q.get(key) else {
        return Ok(vec![Since::Now; channels.len()]);
    };
    if !v.contains(':') {
        let one = since_param(q, key)?.unwrap_or(Since::Now);
        return Ok(vec![one; channels.len()]);
    }
    let mut points = vec![Since::Now; channels.len()];
    for item in v.split(',') {
        let Some((name, pos)) = item.rsplit_once(':') else {
            return Err(reject(
                400,
                format!("{key}: '{item}' is not CHANNEL:POS (with several channels, give each its own position)"),
            ));
        };
        let Some(i) = channels.iter().position(|c| c == name) else {
            return Err(reject(
                400,
                format!("{key}: '{name}' is not one of the channels"),
            ));
        };
        points[i] = parse_since(key, pos)?;
    }
    Ok(points)
}

fn parse_since(key: &str, v: &str) -> Result<Since, Reject> {
    let p = protocol::cursor::parse_position(v).map_err(|e| {
        reject(
            400,
            format!("{key} must be a seq or seq@epoch (a non-negative integer, then 1-16 characters of 0-9 a-z): {e}"),
        )
    })?;
    let epoch = p.epoch.and_then(Epoch::parse).unwrap_or(Epoch::NONE);
    Ok(Since::Seq(p.seq, epoch))
}

/// `since=` / `seq=`: a position, `N` or `N@EPOCH`.
pub fn since_param(q: &Query<'_>, key: &str) -> Result<Option<Since>, Reject> {
    q.get(key).map(|v| parse_since(key, v)).transpose()
}

/// `cb=` / `callback=`: a JSONP or iframe callback name.
pub fn callback_param(q: &Query<'_>) -> Result<Option<Box<str>>, Reject> {
    match q.get("cb").or_else(|| q.get("callback")) {
        None | Some("") => Ok(None),
        Some(cb) => {
            message::validate_callback(cb).map_err(|e| reject(400, e.to_string()))?;
            Ok(Some(cb.into()))
        }
    }
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
