//! Engine.IO over HTTP: a request's checks and routing, the handshake of a polling
//! session, long-polling GETs and POSTs, and the answer to a held request (here or on
//! its worker).

use protocol::engineio::{self as eio, ErrorCode, PacketType};
use protocol::http;
use protocol::query::Query;

use crate::conn::{flag, State};
use crate::limits::{SOCKETIO_FORWARD_WAIT, SOCKETIO_MAX_PACKETS, SOCKETIO_MIN_QUEUE};
use crate::metrics::Counter;
use crate::reactor::{Backend, Part, NO_SOCK};
use crate::worker::http::{reject, Reject};
use crate::worker::Core;

use super::forward::{forward_to_owner, on_forwarded, push_cmd, Forwarded, SioCmd};
use super::lifecycle::close_session;
use super::packets::on_packet;
use super::session::{make_id, ours, parse_id, Entry, Session, Waiter};
use super::upgrade::open_ws;
use super::{arm_ping, path_is, timing, ECHO_PATH};

pub(super) fn eio_error<B: Backend>(cx: &mut Core<B>, slot: usize, code: ErrorCode) {
    let mut body = Vec::with_capacity(64);
    eio::write_error_json(&mut body, code);
    respond(cx, slot, code.status(), true, &body, true);
}

/// Writes a complete answer on connection `slot` (a request in `Http` or `SioHeld`);
/// `close` ends the connection after it.
pub(super) fn respond<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    status: u16,
    json: bool,
    body: &[u8],
    close: bool,
) {
    if status >= 400 {
        if let Some(c) = Counter::for_status(status) {
            cx.stats.inc(c);
        }
    }
    let keep_alive = !close && cx.conns[slot].has(flag::KEEP_ALIVE) && !cx.draining;
    let content_type = if json {
        "application/json"
    } else {
        "text/plain; charset=UTF-8"
    };
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    cx.add_cors(slot, &mut headers);
    let mut out = Vec::with_capacity(256 + body.len());
    http::write_response(&mut out, status, &headers, body, keep_alive);
    if !keep_alive {
        cx.conns[slot].clear(flag::KEEP_ALIVE);
    }
    cx.send(slot, &[Part::Copy(&out)]);
    cx.access_answered(slot, status, body.len());
    cx.after_response(slot);
}

/// Answers a waiting connection, here or on its worker.
pub(super) fn answer<B: Backend>(
    cx: &mut Core<B>,
    to: Waiter,
    status: u16,
    json: bool,
    body: &[u8],
) {
    if to.worker != cx.id {
        push_cmd(
            cx,
            to.worker,
            SioCmd::Answer {
                token: to.token,
                status,
                json,
                body: body.to_vec(),
            },
        );
        return;
    }
    if !cx.conns.alive(to.token) {
        return;
    }
    let slot = to.token.slot();
    if cx.conns[slot].state() != State::SioHeld {
        return;
    }
    cx.sio.take(slot);
    respond(cx, slot, status, json, body, false);
}

pub(super) fn answer_error<B: Backend>(cx: &mut Core<B>, to: Waiter, code: ErrorCode) {
    let mut body = Vec::with_capacity(64);
    eio::write_error_json(&mut body, code);
    answer(cx, to, code.status(), true, &body);
}

/// A request to `/socket.io/` (its head parsed and checked; `body` for a POST).
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    body: Option<&[u8]>,
) -> Result<(), Reject> {
    if q.get("EIO") != Some("4") {
        eio_error(cx, slot, ErrorCode::UnsupportedProtocolVersion);
        return Ok(());
    }
    let websocket = match q.get("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => {
            eio_error(cx, slot, ErrorCode::TransportUnknown);
            return Ok(());
        }
    };
    let sid = q.get("sid").filter(|s| !s.is_empty());
    if websocket {
        if req.method != http::Method::Get {
            eio_error(cx, slot, ErrorCode::BadHandshakeMethod);
            return Ok(());
        }
        return open_ws(cx, slot, req, q, sid);
    }
    let Some(sid) = sid else {
        if req.method != http::Method::Get {
            eio_error(cx, slot, ErrorCode::BadHandshakeMethod);
            return Ok(());
        }
        let echo = cx.shared.cfg.socketio_test && path_is(req.path(), ECHO_PATH);
        return open_polling(cx, slot, q, echo);
    };
    poll_request(cx, slot, req.method, sid, body);
    Ok(())
}

/// A polling GET or POST of session `sid`: held until the session answers, here or on
/// the session's worker.
fn poll_request<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    method: http::Method,
    sid: &str,
    body: Option<&[u8]>,
) {
    let me = Waiter {
        worker: cx.id,
        token: cx.conns.token(slot),
    };
    let what = match (method, body) {
        (http::Method::Get, _) => Forwarded::Get,
        (http::Method::Post, Some(b)) => Forwarded::Post(b.to_vec()),
        _ => {
            eio_error(cx, slot, ErrorCode::BadRequest);
            return;
        }
    };
    let Some(parts) = parse_id(sid).filter(|p| ours(cx, p.node)) else {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return;
    };
    if parts.worker >= cx.shared.inboxes.len() {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return;
    }
    // The request waits for its session's answer, here or on the session's worker.
    if !hold(cx, slot, sid) {
        return;
    }
    if parts.worker == cx.id {
        on_forwarded(cx, me, sid, what);
    } else {
        cx.stats.inc(Counter::SioForwarded);
        push_cmd(
            cx,
            parts.worker,
            SioCmd::Forward {
                from: me,
                sid: sid.into(),
                req: what,
            },
        );
    }
}

/// The request waits for the answer of session `sid`. A session answers a GET at its
/// next ping at the latest, so the timer is only a bound.
fn hold<B: Backend>(cx: &mut Core<B>, slot: usize, sid: &str) -> bool {
    let moved = cx.conns[slot].hold_sio();
    if !cx.apply(slot, moved) {
        return false;
    }
    cx.sio.put(slot, Entry::Held { sid: sid.into() });
    let t = timing(cx);
    cx.arm(slot, t.interval + t.timeout + SOCKETIO_FORWARD_WAIT);
    true
}

/// A held request gives up: its session forgets it.
pub(super) fn cancel<B: Backend>(cx: &mut Core<B>, slot: usize) {
    if let Some(Entry::Held { sid }) = cx.sio.take(slot).map(|b| *b) {
        let me = Waiter {
            worker: cx.id,
            token: cx.conns.token(slot),
        };
        forward_to_owner(cx, me, &sid, Forwarded::Cancel);
    }
}

/// A POST body over `socketio_max_payload`: 413, and the session is closed.
pub fn too_large<B: Backend>(cx: &mut Core<B>, slot: usize, q: &Query<'_>) {
    if let Some(sid) = q.get("sid").filter(|s| !s.is_empty()) {
        let me = Waiter {
            worker: cx.id,
            token: cx.conns.token(slot),
        };
        forward_to_owner(cx, me, sid, Forwarded::Close);
    }
    respond(
        cx,
        slot,
        413,
        true,
        br#"{"code":3,"message":"Payload too large"}"#,
        true,
    );
}

pub(super) fn new_session<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    q: &Query<'_>,
    echo: bool,
) -> Session {
    let token = cx.conns.token(slot);
    let sid = make_id(cx, token);
    let query_token = q.get("token").filter(|t| !t.is_empty()).map(Into::into);
    cx.stats.inc(Counter::SioSessions);
    let mut s = Session::new(sid, query_token, cx.now);
    s.echo = echo;
    s
}

pub(super) fn open_packet<B: Backend>(cx: &Core<B>, sid: &str, upgrades: &[&str]) -> Vec<u8> {
    let t = timing(cx);
    let mut out = Vec::with_capacity(160);
    eio::write_open(
        &mut out,
        &eio::Open {
            sid,
            upgrades,
            ping_interval_ms: t.interval.as_millis() as u64,
            ping_timeout_ms: t.timeout.as_millis() as u64,
            max_payload: cx.shared.cfg.socketio_max_payload as u64,
        },
    );
    out
}

fn open_polling<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    q: &Query<'_>,
    echo: bool,
) -> Result<(), Reject> {
    if cx.draining {
        return Err(reject(503, "server shutting down"));
    }
    // A polling session takes a connection's place: it counts against max_connections
    // and, from its client's address, against max_connections_per_ip.
    let ip = cx.peer_ips.get(&slot).copied();
    if ip.is_some_and(|ip| !cx.shared.enter_ip(ip)) {
        cx.stats.inc(Counter::RejectedPerIp);
        return Err(reject(
            503,
            "too many connections from this address (max_connections_per_ip)",
        ));
    }
    if cx.shared.reserve_conns(1) == 0 {
        if let Some(ip) = ip {
            cx.shared.leave_ip(ip);
        }
        cx.stats.inc(Counter::RejectedFull);
        return Err(reject(503, "too many connections (max_connections)"));
    }
    let listener = cx.conns[slot].listener;
    let token = cx.conns.insert_session(NO_SOCK, listener);
    if let Some(ip) = ip {
        cx.peer_ips.insert(token.slot(), ip);
    }
    cx.stats.conn_delta(crate::metrics::Transport::Socketio, 1);
    let s = token.slot();
    let session = new_session(cx, s, q, echo);
    let open = open_packet(cx, session.sid.as_str(), &["websocket"]);
    cx.sio.put(s, Entry::Session(session));
    arm_ping(cx, s);
    respond(cx, slot, 200, false, &open, false);
    Ok(())
}

pub(super) fn poll_get<B: Backend>(cx: &mut Core<B>, s: usize, from: Waiter) {
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    if session.r().get.is_some() {
        // Overlapping GETs: the protocol's answer is an error and the end of the session.
        cx.stats.inc(Counter::SioErrors);
        answer_error(cx, from, ErrorCode::BadRequest);
        close_session(cx, s, false);
        return;
    }
    if session.upgrading {
        let mut body = std::mem::take(&mut session.r().queue);
        eio::push_separator(&mut body);
        eio::write_text(&mut body, PacketType::Noop, b"");
        return answer(cx, from, 200, false, &body);
    }
    if session.r().queue.is_empty() {
        session.r().get = Some(from);
        return;
    }
    let body = std::mem::take(&mut session.r().queue);
    answer(cx, from, 200, false, &body);
}

/// Answers the held GET with what is queued.
pub(super) fn flush<B: Backend>(cx: &mut Core<B>, s: usize) {
    let limit = cx.live().slow_consumer_bytes().max(SOCKETIO_MIN_QUEUE);
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    if session.r().queue.is_empty() {
        return;
    }
    if let Some(to) = session.r().get.take() {
        let body = std::mem::take(&mut session.r().queue);
        answer(cx, to, 200, false, &body);
    } else if session.r().queue.len() > limit {
        cx.stats.inc(Counter::SlowConsumer);
        close_session(cx, s, true);
    }
}

/// A probe began: the held GET (and each one after it) is answered at once, with a
/// noop behind what is queued.
pub(super) fn release_get<B: Backend>(cx: &mut Core<B>, s: usize) {
    if let Some(session) = cx.sio.session_mut(s) {
        session.upgrading = true;
        if let Some(to) = session.r().get.take() {
            let mut body = std::mem::take(&mut session.r().queue);
            eio::push_separator(&mut body);
            eio::write_text(&mut body, PacketType::Noop, b"");
            answer(cx, to, 200, false, &body);
        }
    }
}

/// The packets of a POST; false (and the session closed) for a bad payload.
pub(super) fn poll_post<B: Backend>(cx: &mut Core<B>, s: usize, body: &[u8]) -> bool {
    let packets = match eio::decode_payload(body, SOCKETIO_MAX_PACKETS) {
        Ok(p) => p,
        Err(e) => {
            crate::debug!("worker {}: socket.io payload refused: {e}", cx.id);
            cx.stats.inc(Counter::SioErrors);
            close_session(cx, s, false);
            return false;
        }
    };
    for p in packets {
        if cx.conns[s].doomed() || cx.sio.session(s).is_none() {
            break;
        }
        on_packet(cx, s, p);
    }
    true
}
