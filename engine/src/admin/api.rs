//! The admin API's routes: publish, broadcast, close, clear, sign, info, channels,
//! metrics, dashboard, events, and the JSON views the control socket answers with too.

use std::time::{SystemTime, UNIX_EPOCH};

use protocol::http::{self, Method};
use protocol::message::{self, Message};
use protocol::query::Query;

use super::{events, Reply};
use crate::auth;
use crate::limits::{DEFAULT_LISTING, MAX_PREFIX, MAX_TOKEN_TTL};
use crate::msg::Body;
use crate::shared::Shared;
use crate::store::Commit;
use crate::views::{channel_info_json, channel_json, totals_json};

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer <admin_token>`; for `/dashboard` and `/events` alone (a browser
/// page and its `EventSource`, which cannot send headers) `?token=<admin_token>` too.
fn authorized(shared: &Shared, req: &http::Request<'_, '_>) -> bool {
    let token = &shared.cfg.admin_token;
    if token.is_empty() {
        return true;
    }
    let bearer = req.header("authorization").and_then(|value| {
        value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
    });
    if let Some(given) = bearer {
        return constant_time_eq(given, token.as_bytes());
    }
    if matches!(req.path(), "/dashboard" | "/events") {
        if let Ok(q) = Query::parse(req.query()) {
            if let Some(given) = q.get("token") {
                return constant_time_eq(given.as_bytes(), token.as_bytes());
            }
        }
    }
    false
}

/// Answers one request; the ticket is the disk-store commit the answer waits for (0 for
/// none).
pub(super) fn route(shared: &Shared, req: &http::Request<'_, '_>, body: &[u8]) -> (Reply, u64) {
    if req.path() == "/pub" && authorized(shared, req) && req.method != Method::Head {
        if let Ok(q) = Query::parse(req.query()) {
            if matches!(req.method, Method::Get | Method::Post) {
                return publish(shared, req, &q, body);
            }
        }
    }
    (route_other(shared, req, body), 0)
}

fn route_other(shared: &Shared, req: &http::Request<'_, '_>, body: &[u8]) -> Reply {
    if !authorized(shared, req) {
        let mut r = Reply::error(
            401,
            "admin token required (Authorization: Bearer <admin_token>)",
        );
        r.extra.push(("WWW-Authenticate", "Bearer".into()));
        return r;
    }
    let q = match Query::parse(req.query()) {
        Ok(q) => q,
        Err(e) => return Reply::error(400, e.reason()),
    };
    let path = req.path();
    let allowed: &[Method] = match path {
        "/pub" => &[Method::Get, Method::Post],
        "/broadcast" | "/close" | "/clear" => &[Method::Post],
        // HEAD is GET without the body (the admin loop writes the head alone); not for
        // the event stream.
        "/sign" | "/info" | "/channels" | "/metrics" | "/dashboard" | "/presence" => {
            &[Method::Get, Method::Head]
        }
        "/events" => &[Method::Get],
        _ => return Reply::error(404, "no such endpoint"),
    };
    if !allowed.contains(&req.method) {
        let mut r = Reply::error(405, "method not allowed");
        let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        r.extra.push(("Allow", allow.join(", ")));
        return r;
    }
    match path {
        "/pub" => publish(shared, req, &q, body).0,
        "/broadcast" => match body_text(body, &q) {
            Ok(content) => match shared.broadcast(content) {
                Ok(n) => Reply::json(200, serde_json::json!({"type": "ok", "channels": n})),
                Err(e) => Reply::hub_error(e),
            },
            Err(r) => r,
        },
        "/close" | "/clear" => close_or_clear(shared, &q, path == "/close"),
        "/sign" => sign(shared, &q),
        "/info" => info(shared, &q),
        "/presence" => match q.get_any(&["channel", "cname"]) {
            None => Reply::error(400, "missing channel"),
            Some(c) => match crate::presence::answer_json(shared, c, None, true) {
                Ok(body) => Reply::json_bytes(200, body),
                Err((status, reason)) => Reply::error(status, &reason),
            },
        },
        "/channels" => channels(shared, &q),
        "/metrics" => metrics(shared),
        "/dashboard" => dashboard(),
        "/events" => event_stream(shared),
        _ => Reply::error(404, "no such endpoint"),
    }
}

fn close_or_clear(shared: &Shared, q: &Query<'_>, close: bool) -> Reply {
    let name = match channel(q) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let result = if close {
        shared.close_channel(&name)
    } else {
        shared.clear(&name)
    };
    match result {
        Ok(()) => Reply::json(200, serde_json::json!({"type": "ok", "channel": name})),
        Err(e) => Reply::hub_error(e),
    }
}

fn channels(shared: &Shared, q: &Query<'_>) -> Reply {
    let prefix = q.get("prefix").unwrap_or("");
    if prefix.len() > MAX_PREFIX {
        return Reply::error(400, "prefix too long");
    }
    let limit = match q.get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LISTING,
        Some(Ok(n)) if n > 0 => n.min(crate::limits::MAX_LISTING),
        Some(_) => return Reply::error(400, "limit must be a positive integer"),
    };
    let list: Vec<serde_json::Value> = shared
        .hub
        .channels(prefix, limit)
        .iter()
        .map(channel_json)
        .collect();
    Reply::json(
        200,
        serde_json::json!({"type": "channels", "channels": list}),
    )
}

fn metrics(shared: &Shared) -> Reply {
    let t = shared.hub.totals();
    let published = shared
        .hub
        .published
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut text = shared
        .snapshot()
        .prometheus(t.channels, t.subscriptions, published);
    crate::metrics::prometheus_server(&mut text, shared.started.elapsed().as_secs_f64());
    crate::metrics::Process::read().prometheus(&mut text);
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: text.into_bytes(),
        extra: Vec::new(),
        stream: false,
    }
}

/// `GET /dashboard`: the live page (it reads `/events`).
fn dashboard() -> Reply {
    Reply {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: events::DASHBOARD.as_bytes().to_vec(),
        extra: vec![
            ("Cache-Control", "no-store".into()),
            ("Content-Security-Policy", events::DASHBOARD_CSP.into()),
            ("Referrer-Policy", "no-referrer".into()),
            ("X-Content-Type-Options", "nosniff".into()),
        ],
        stream: false,
    }
}

/// `GET /events`: the start of a stream of stats snapshots, the first one included (the
/// admin loop sends the next ones, one a second, and holds the connection).
fn event_stream(shared: &Shared) -> Reply {
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Reply::error(503, "draining");
    }
    let (first, _) = events::snapshot(shared, None);
    let mut body = events::PREAMBLE.to_vec();
    body.extend_from_slice(&first);
    Reply {
        status: 200,
        content_type: "text/event-stream",
        body,
        extra: vec![
            ("Cache-Control", "no-store".into()),
            ("X-Accel-Buffering", "no".into()),
        ],
        stream: true,
    }
}

fn channel(q: &Query<'_>) -> Result<String, Reply> {
    let name = q
        .get_any(&["channel", "cname"])
        .ok_or_else(|| Reply::error(400, "missing channel"))?;
    // (The name is checked where it is used: `Shared`'s entry points.)
    Ok(name.to_string())
}

fn body_text<'a>(body: &'a [u8], q: &'a Query<'_>) -> Result<&'a str, Reply> {
    if body.is_empty() {
        if let Some(c) = q.get("content") {
            return Ok(c);
        }
    }
    std::str::from_utf8(body).map_err(|_| Reply::error(400, "content must be UTF-8"))
}

/// `key=`: 1-128 visible ASCII characters.
fn idempotency_key<'a>(q: &'a Query<'_>) -> Result<Option<&'a str>, Reply> {
    match q.get("key") {
        None => Ok(None),
        Some(k)
            if !k.is_empty()
                && k.len() <= crate::limits::MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k))
        }
        Some(_) => Err(Reply::error(
            400,
            "key must be 1-128 visible ASCII characters",
        )),
    }
}

/// `event=` (Socket.IO clients get the message as this event) and what the body is: JSON
/// with `Content-Type: application/json` (checked), else text.
fn event_meta(
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    content: &str,
) -> Result<Box<str>, Reply> {
    let event = q.get("event").unwrap_or("");
    if event.len() > crate::limits::SOCKETIO_MAX_EVENT || event.chars().any(char::is_control) {
        return Err(Reply::error(
            400,
            &format!(
                "event must be at most {} bytes without control characters",
                crate::limits::SOCKETIO_MAX_EVENT
            ),
        ));
    }
    if protocol::socketio::RESERVED_EVENTS.contains(&event) {
        return Err(Reply::error(
            400,
            &format!("'{event}' is a reserved Socket.IO event name"),
        ));
    }
    let json = req
        .header_str("content-type")
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if json && serde_json::from_str::<serde::de::IgnoredAny>(content).is_err() {
        return Err(Reply::error(
            400,
            "content is not valid JSON (Content-Type: application/json)",
        ));
    }
    let body = if json { Body::Json } else { Body::Text };
    Ok(crate::msg::meta("", event, body))
}

fn publish(
    shared: &Shared,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    body: &[u8],
) -> (Reply, u64) {
    let name = match channel(q) {
        Ok(n) => n,
        Err(r) => return (r, 0),
    };
    let content = match body_text(body, q) {
        Ok(c) => c,
        Err(r) => return (r, 0),
    };
    let key = match idempotency_key(q) {
        Ok(k) => k,
        Err(r) => return (r, 0),
    };
    let meta = match event_meta(req, q, content) {
        Ok(m) => m,
        Err(r) => return (r, 0),
    };
    let published = shared.publish(&name, content, &meta, key, Commit::ByCaller);
    if let Ok(a) = &published {
        crate::event!(
            Debug,
            "admin publish",
            channel = &*name,
            bytes = content.len(),
            seq = a.seq
        );
    }
    match published {
        Ok(a) => (
            Reply::envelope(
                200,
                &Message::Ok {
                    channel: &name,
                    seq: a.seq,
                    epoch: a.epoch.as_str(),
                    duplicate: a.duplicate,
                },
            ),
            a.ticket,
        ),
        Err(e) => (Reply::hub_error(e), 0),
    }
}

/// Channel names or patterns from a comma list (`*` allowed).
fn name_list<'a>(raw: &'a str, what: &str) -> Result<Vec<&'a str>, Reply> {
    let mut names = Vec::new();
    for name in raw.split(',') {
        // Patterns are allowed in tokens: validate the name with `*` taken out.
        let plain: String = name.chars().filter(|&c| c != '*').collect();
        if name != "*" {
            if let Err(e) = message::validate_channel(&plain) {
                return Err(Reply::error(400, &format!("{what}: {e}")));
            }
        }
        names.push(name);
    }
    Ok(names)
}

fn sign(shared: &Shared, q: &Query<'_>) -> Reply {
    if shared.cfg.token_secret.is_empty() {
        return Reply::error(400, "token_secret is not configured");
    }
    let Some(raw) = q.get_any(&["channel", "cname"]) else {
        return Reply::error(400, "missing channel");
    };
    let names = match name_list(raw, "channel") {
        Ok(n) => n,
        Err(r) => return r,
    };
    let publish = match q.get("pub").filter(|p| !p.is_empty()) {
        None => Vec::new(),
        Some(p) => match name_list(p, "pub") {
            Ok(n) => n,
            Err(r) => return r,
        },
    };
    let sub = q.get("sub").filter(|s| !s.is_empty());
    if sub.is_some_and(|s| s.len() > crate::limits::MAX_SUB_LEN) {
        return Reply::error(400, "sub longer than 256 bytes");
    }
    let ttl = match q.get("ttl").map(str::parse::<u64>) {
        None => shared.cfg.token_ttl_secs,
        Some(Ok(n)) if n > 0 && n <= MAX_TOKEN_TTL => n,
        Some(_) => {
            return Reply::error(400, &format!("ttl must be 1..={MAX_TOKEN_TTL} seconds"));
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + ttl;
    let claim = auth::Claim {
        channels: &names,
        publish: &publish,
        sub,
    };
    let token = auth::sign(&claim, expires, shared.cfg.token_secret.as_bytes());
    Reply::json(
        200,
        serde_json::json!({"type": "sign", "channel": raw, "token": token, "expires": expires}),
    )
}

fn info(shared: &Shared, q: &Query<'_>) -> Reply {
    if let Some(user) = q.get("user") {
        // One user's connections (every worker of this node), by their token's `sub`.
        if user.is_empty() || user.len() > crate::limits::MAX_SUB_LEN {
            return Reply::error(400, "user must be a token sub (1-256 bytes)");
        }
        let conns = shared.list_conns(crate::limits::MAX_LISTING, Some(user));
        return Reply::json(
            200,
            serde_json::json!({"type": "user", "user": user, "count": conns.len(), "conns": conns}),
        );
    }
    match q.get_any(&["channel", "cname"]) {
        None => Reply::json(200, totals_json(shared)),
        Some(name) => match channel_info_json(shared, name) {
            Ok(v) => Reply::json(200, v),
            Err(e) => Reply::hub_error(e),
        },
    }
}
