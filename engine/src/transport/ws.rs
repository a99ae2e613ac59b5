//! WebSocket subscribers (`/ws`) and the echo endpoint (`/echo`, for the conformance
//! suite).
//!
//! - **start**: the handshake is checked, the channels of the query subscribed before the
//!   101 goes out (so nothing published meanwhile is missed), then what is buffered is
//!   replayed. A bad token is answered after the 101, with close 1008, as RFC 6455
//!   clients expect.
//! - **input**: frames, through the decoder and the sans-IO session
//!   ([`protocol::ws::Session`]: pong replies, the close handshake); text messages are
//!   client operations ([`super::ws_ops`]).
//! - **timer**: the heartbeat ping, then the pong timeout.
//! - **end**: a close frame (once), then a graceful close.

use bytes::Bytes;

use protocol::http;
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::{
    self, CloseCode, Control, DataKind, Decoded, DecoderConfig, Event, OpCode, Role,
};

use crate::metrics::Counter;
use crate::reactor::{Backend, Part};
use crate::timer::jitter;
use crate::worker::http::{reject, since_points, Reject};
use crate::worker::Core;

/// Answers the upgrade and starts the session.
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    echo: bool,
) -> Result<(), Reject> {
    let accept = match ws::handshake::check_request(req) {
        Ok(a) => a,
        Err(e) => {
            let extra: &[(&str, &str)] = match e {
                ws::HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
                ws::HandshakeError::Method => &[("Allow", "GET")],
                _ => &[],
            };
            cx.respond_error(slot, e.status(), e.reason(), extra);
            return Ok(());
        }
    };
    let (mut channels, mut points) = if echo {
        (Vec::new(), Vec::new())
    } else {
        let channels = cx.channels_param(q, false)?;
        let points = since_points(q, "since", &channels)?;
        (channels, points)
    };
    let grant = if echo {
        Ok(None)
    } else {
        cx.check_token(q, &channels)
    };
    // The grant is kept before subscribing: presence names the token's `sub`.
    let refused = match grant {
        Ok(g) => {
            cx.add_user_channel(g.as_ref(), &mut channels, &mut points);
            cx.keep_grant(slot, g);
            None
        }
        Err(e) => Some(e),
    };
    let pending = match refused {
        None => {
            cx.subscribe_all(slot, &channels, &points, true, true)
                .map_err(|e| reject(e.status(), e.reason()))?
                .0
        }
        Some(_) => Vec::new(),
    };
    let mut out = Vec::with_capacity(160);
    ws::handshake::write_accept_response(&mut out, &accept);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.disarm(slot);
    cx.conns[slot].clear(crate::conn::flag::KEEP_ALIVE);
    let moved = cx.conns[slot].upgrade(echo);
    if !cx.apply(slot, moved) || echo {
        return Ok(());
    }
    if let Some(e) = refused {
        cx.stats.inc(Counter::Http401);
        close(cx, slot, CloseCode::POLICY, e.reason());
        return Ok(());
    }
    cx.replay_all(slot, pending);
    if !cx.conns[slot].write_closed() {
        let first = jitter(cx.live().heartbeat(), &mut cx.rng);
        cx.arm(slot, first);
    }
    Ok(())
}

/// Feeds frames to the decoder; returns the bytes consumed.
pub fn input<B: Backend>(cx: &mut Core<B>, slot: usize, input: &mut [u8]) -> usize {
    if cx.conns[slot].session.close_sent() {
        // After our close frame nothing more is read (only the peer's EOF matters).
        return input.len();
    }
    let sio = matches!(
        cx.conns[slot].state(),
        crate::conn::State::SioWs | crate::conn::State::SioProbe
    );
    let cfg = DecoderConfig {
        // A subscriber's oversized op is skipped (with an error); a Socket.IO session's
        // payload over maxPayload ends it (1009), as Engine.IO clients expect, and the
        // echo endpoint keeps RFC 6455's 1009.
        skip_oversized: cx.conns[slot].state() == crate::conn::State::Ws,
        role: Role::Server,
        max_message: if sio {
            cx.shared.cfg.socketio_max_payload
        } else {
            cx.live().max_message_bytes()
        },
    };
    match cx.conns[slot].ws.decode(input, &cfg) {
        Ok(Decoded { consumed, event }) => {
            if let Some(ev) = event {
                on_event(cx, slot, ev);
            }
            consumed
        }
        Err(e) => {
            crate::debug!("worker {}: ws protocol error on {slot}: {e}", cx.id);
            fail(cx, slot, e.close_code(), e.reason());
            input.len()
        }
    }
}

fn on_event<B: Backend>(cx: &mut Core<B>, slot: usize, ev: Event<'_>) {
    let mut reply = Vec::new();
    match cx.conns[slot].session.on_event(&ev, &mut reply) {
        Control::Pinged => cx.send(slot, &[Part::Copy(&reply)]),
        Control::Ponged { awaited: true } => {
            let hb = cx.live().heartbeat();
            cx.arm(slot, hb);
        }
        Control::Ponged { awaited: false } => {}
        Control::Closed => {
            if cx.conns[slot].state() == crate::conn::State::SioWs {
                super::socketio::on_ws_closed(cx, slot);
            }
            cx.send(slot, &[Part::Copy(&reply)]);
            cx.close_graceful(slot);
        }
        Control::Data => match ev {
            Event::Message { kind, data } => on_message(cx, slot, kind, &data),
            Event::Skipped { len, .. } => {
                // Read through and dropped: the connection goes on.
                cx.stats.inc(Counter::Ws1009);
                let reason = format!(
                    "message of {len} bytes over max_message_bytes ({}): skipped",
                    cx.live().max_message_bytes()
                );
                envelope(
                    cx,
                    slot,
                    &Message::Error {
                        code: 413,
                        reason: &reason,
                    },
                );
            }
            _ => unreachable!("the session passes only data messages"),
        },
    }
}

fn on_message<B: Backend>(cx: &mut Core<B>, slot: usize, kind: DataKind, data: &[u8]) {
    let state = cx.conns[slot].state();
    if matches!(
        state,
        crate::conn::State::SioWs | crate::conn::State::SioProbe
    ) {
        return super::socketio::on_ws_message(cx, slot, kind, data);
    }
    if state == crate::conn::State::Echo {
        let op = match kind {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        let mut frame = Vec::with_capacity(ws::frame_len(data.len(), false));
        ws::encode_frame(&mut frame, true, op, data);
        cx.send(slot, &[Part::Shared(&Bytes::from(frame))]);
    } else if kind == DataKind::Binary {
        fail(
            cx,
            slot,
            CloseCode::UNSUPPORTED,
            "binary messages are not supported",
        );
    } else {
        super::ws_ops::on_op(cx, slot, data);
    }
}

/// The heartbeat: a ping, or, when the last one went unanswered, the end.
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    if cx.conns[slot].session.awaiting_pong() {
        cx.stats.inc(Counter::HeartbeatTimeout);
        crate::debug!("worker {}: pong timeout on {slot}", cx.id);
        // The peer is gone or stuck: no close handshake to wait for.
        let mut frame = Vec::with_capacity(32);
        if cx.conns[slot]
            .session
            .close(CloseCode::POLICY, "heartbeat timeout", &mut frame)
        {
            cx.send(slot, &[Part::Copy(&frame)]);
        }
        cx.close(slot);
        return;
    }
    let ping = cx.conns[slot].session.ping();
    cx.send(slot, &[Part::Copy(ping)]);
    let pong = cx.live().pong_timeout();
    cx.rearm(slot, pong);
}

/// An envelope as a text frame.
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Plain);
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    message::write_ws_frame(&mut out, &json);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}

/// Fails the connection: close frame with `code` (counted), then close.
pub fn fail<B: Backend>(cx: &mut Core<B>, slot: usize, code: CloseCode, reason: &str) {
    if let Some(c) = Counter::for_close(code.0) {
        cx.stats.inc(c);
    }
    close(cx, slot, code, reason);
}

/// Sends a close frame (once) and closes gracefully.
pub fn close<B: Backend>(cx: &mut Core<B>, slot: usize, code: CloseCode, reason: &str) {
    let mut frame = Vec::with_capacity(reason.len() + 4);
    if cx.conns[slot].session.close(code, reason, &mut frame) {
        cx.send(slot, &[Part::Copy(&frame)]);
    }
    cx.close_graceful(slot);
}
