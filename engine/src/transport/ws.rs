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
//! - **deliver**: a text frame per message (compressed once per window size and shared).
//! - **timer**: the heartbeat ping, then the pong timeout.
//! - **end**: a close frame (once), then a graceful close.
//!
//! permessage-deflate (RFC 7692, with `ws_deflate`): negotiated on `/ws` and `/echo`
//! (Socket.IO's WebSocket stays uncompressed: its handshake answers no extension), always
//! with no context takeover both ways, so the connection keeps only its window bits (in
//! its [`protocol::ws::Session`] byte). Compressed client messages are inflated with the
//! worker's one inflater (a thread-local, reset per message) under `max_message_bytes`
//! (a bomb is closed with 1009); published messages are compressed once per window size
//! and shared ([`crate::msg::Msg::ws_frame_for`]); answers and envelopes to one
//! connection, and messages under [`DEFLATE_MIN_BYTES`], go out uncompressed.

use bytes::Bytes;
use std::cell::RefCell;

use protocol::http;
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::deflate::{self, InflateError};
use protocol::ws::{
    self, CloseCode, Control, DataKind, Decoded, DecoderConfig, Event, OpCode, Role,
};

use crate::auth::TokenError;
use crate::limits::{DEFLATE_LEVEL, DEFLATE_MIN_BYTES, INFLATE_KEEP_BYTES};
use crate::metrics::Counter;
use crate::reactor::{Backend, Part};
use crate::timer::jitter;
use crate::worker::http::{reject, since_points, Reject};
use crate::worker::index::PendingReplay;
use crate::worker::Core;

/// Answers the upgrade and starts the session.
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    echo: bool,
) -> Result<(), Reject> {
    let Some(accept) = check_handshake(cx, slot, req) else {
        return Ok(());
    };
    let (refused, pending) = subscribe(cx, slot, q, echo)?;
    if !send_accept(cx, slot, req, &accept, echo) || echo {
        return Ok(());
    }
    if let Some(e) = refused {
        cx.stats.inc(Counter::Http401);
        cx.auth_failed(slot, "ws", e.reason());
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

/// The `Sec-WebSocket-Accept` value of a valid upgrade request; a bad one is answered
/// (with `Sec-WebSocket-Version` or `Allow` where they help) and gets `None`.
fn check_handshake<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
) -> Option<[u8; 28]> {
    match ws::handshake::check_request(req) {
        Ok(a) => Some(a),
        Err(e) => {
            let extra: &[(&str, &str)] = match e {
                ws::HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
                ws::HandshakeError::Method => &[("Allow", "GET")],
                _ => &[],
            };
            cx.respond_error(slot, e.status(), e.reason(), extra);
            None
        }
    }
}

/// Checks the token and subscribes the channels of the query (none for `/echo`), before
/// the 101 goes out: the token's refusal (answered after the 101), and what is to be
/// replayed.
fn subscribe<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    q: &Query<'_>,
    echo: bool,
) -> Result<(Option<TokenError>, Vec<PendingReplay>), Reject> {
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
    Ok((refused, pending))
}

/// Sends the 101 (with permessage-deflate when `ws_deflate` and the client agree) and
/// makes the connection a WebSocket; false when the connection is gone.
fn send_accept<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    accept: &[u8; 28],
    echo: bool,
) -> bool {
    let agreed = if cx.shared.cfg.ws_deflate {
        deflate::negotiate(
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                .map(|h| h.value),
        )
    } else {
        None
    };
    let mut extension = Vec::new();
    if let Some(a) = &agreed {
        deflate::write_response_header(&mut extension, a);
    }
    let mut out = Vec::with_capacity(160 + extension.len());
    ws::handshake::write_accept_response_with(&mut out, accept, &extension);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.disarm(slot);
    cx.conns[slot].clear(crate::conn::flag::KEEP_ALIVE);
    cx.conns[slot]
        .session
        .set_deflate(agreed.map(|a| a.window_bits));
    let moved = cx.conns[slot].upgrade(echo);
    cx.apply(slot, moved)
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
    let deflate = cx.conns[slot].session.deflate().is_some();
    match cx.conns[slot].ws.decode_ext(input, &cfg, deflate) {
        Ok(Decoded {
            consumed,
            event: Some(Event::Message { kind, data }),
            compressed: true,
        }) => {
            on_compressed(cx, slot, kind, &data, cfg.max_message);
            consumed
        }
        Ok(Decoded {
            consumed, event, ..
        }) => {
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
            cx.note_peer_close(slot, &ev);
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

/// The worker's inflater and its output buffer (one per worker thread, reset per
/// message: the client compresses with no context takeover).
struct Inflate {
    inflater: deflate::Decompress,
    buf: Vec<u8>,
}

thread_local! {
    static INFLATE: RefCell<Option<Inflate>> = const { RefCell::new(None) };
    /// The worker's compressors, by server window bits (9-15), made on first use.
    static COMPRESSORS: RefCell<[Option<deflate::Compress>; 7]> = RefCell::new(Default::default());
}

/// A compressed client message: inflated (at most `limit` bytes, else 1009), its text
/// checked (1007), then handled as any message.
fn on_compressed<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    kind: DataKind,
    data: &[u8],
    limit: usize,
) {
    let mut z = INFLATE
        .with(|cell| cell.borrow_mut().take())
        .unwrap_or_else(|| Inflate {
            inflater: deflate::inflater(),
            buf: Vec::new(),
        });
    z.buf.clear();
    match deflate::inflate(&mut z.inflater, data, limit, &mut z.buf) {
        Ok(()) if kind == DataKind::Text && std::str::from_utf8(&z.buf).is_err() => {
            fail(
                cx,
                slot,
                CloseCode::INVALID_PAYLOAD,
                "invalid UTF-8 in text",
            );
        }
        Ok(()) => on_message(cx, slot, kind, &z.buf),
        Err(InflateError::TooBig) => {
            crate::debug!(
                "worker {}: inflated message over the limit on {slot}",
                cx.id
            );
            fail(cx, slot, CloseCode::TOO_BIG, "message too big");
        }
        Err(InflateError::Corrupt) => {
            fail(
                cx,
                slot,
                CloseCode::INVALID_PAYLOAD,
                "invalid compressed data",
            );
        }
    }
    z.buf.clear();
    if z.buf.capacity() > INFLATE_KEEP_BYTES {
        z.buf = Vec::new();
    }
    INFLATE.with(|cell| *cell.borrow_mut() = Some(z));
}

/// A server frame of one message (`op`) compressed with a window of `window_bits`, or
/// `None` when it is under [`DEFLATE_MIN_BYTES`] or does not shrink (send it plain).
pub fn deflated_frame(op: OpCode, payload: &[u8], window_bits: u8) -> Option<Vec<u8>> {
    if payload.len() < DEFLATE_MIN_BYTES {
        return None;
    }
    let bits = window_bits.clamp(deflate::MIN_WINDOW_BITS, deflate::MAX_WINDOW_BITS);
    let mut z = Vec::with_capacity(payload.len() / 2 + 32);
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let c = all[usize::from(bits - deflate::MIN_WINDOW_BITS)]
            .get_or_insert_with(|| deflate::compressor(DEFLATE_LEVEL, bits));
        deflate::deflate(c, payload, &mut z);
    });
    if z.len() >= payload.len() {
        return None;
    }
    let mut frame = Vec::with_capacity(ws::frame_len(z.len(), false));
    deflate::write_compressed_frame(&mut frame, op, &z);
    Some(frame)
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
        let compressed = cx.conns[slot]
            .session
            .deflate()
            .and_then(|bits| deflated_frame(op, data, bits));
        let frame = compressed.unwrap_or_else(|| {
            let mut frame = Vec::with_capacity(ws::frame_len(data.len(), false));
            ws::encode_frame(&mut frame, true, op, data);
            frame
        });
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
        cx.note_close(slot, CloseCode::POLICY.0, "heartbeat timeout");
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

/// One published message as a text frame, its encoding shared by every subscriber (the
/// fan-out hot path).
#[inline]
pub fn deliver<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &crate::msg::Msg) {
    let deflate = cx.conns[slot].session.deflate();
    cx.send(slot, &[Part::Shared(msg.ws_frame_for(deflate))])
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
    cx.note_close(slot, code.0, reason);
    let mut frame = Vec::with_capacity(reason.len() + 4);
    if cx.conns[slot].session.close(code, reason, &mut frame) {
        cx.send(slot, &[Part::Copy(&frame)]);
    }
    cx.close_graceful(slot);
}

/// Ends the connection gracefully: a close frame (once), then a graceful close.
#[inline]
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, code: CloseCode, reason: &str) {
    close(cx, slot, code, reason)
}
