//! The transports: how a subscriber connection starts, takes input, receives messages,
//! keeps alive and ends, one file each:
//!
//! | transport | file | starts from | input | deliver | timer | end |
//! |---|---|---|---|---|---|---|
//! | WebSocket | [`ws`] (client ops in [`ws_ops`]) | `GET /ws` (101) | frames, ops | a text frame per message | ping / pong timeout | close frame |
//! | WebSocket echo | [`ws`] | `GET /echo` | frames, echoed | - | - | close frame |
//! | Server-Sent Events | [`sse`] | `GET /sse` | ignored | `id:` (the cursor) + `data:` | `: ping` | end of the response |
//! | NDJSON stream | [`ndjson`] | `GET /stream` | ignored | a chunk per message | `noop` | last chunk |
//! | iframe stream | [`iframe`] | `GET /iframe` | ignored | a `<script>` chunk per message | `noop` | last chunk |
//! | long-poll | [`poll`] | `GET /poll` | kept for after the answer | the answer (JSON / JSONP array) | `noop` answer | a `noop` answer |
//! | Socket.IO | [`socketio`] | `GET`/`POST /socket.io/` | Engine.IO packets (WebSocket or POST) | an event per message | Engine.IO ping, pong timeout | close packet |
//!
//! Every verb is dispatched statically here from the connection's state (no table of
//! function pointers in the connection record), so a new transport is a new file and a
//! new arm in each function below. Each arm is one call to the verb of the same name in
//! the transport's file (`start`, `input`, `deliver`, `timer`, `end`; Socket.IO's are
//! exported by [`socketio`]); what the transports share stays here: the cursor, gaps
//! and resets, batched delivery ([`deliver_run`]), [`envelope`] routing and [`closed`].
//! A plain HTTP connection (between requests) ends in the worker's HTTP side.

pub mod iframe;
pub mod ndjson;
pub mod poll;
pub mod socketio;
pub mod sse;
pub mod ws;
pub mod ws_ops;

use bytes::Bytes;
use std::sync::Arc;

use protocol::http;
use protocol::message::Message;
use protocol::query::Query;
use protocol::ws::CloseCode;

use crate::conn::State;
use crate::msg::{Msg, MsgKind};
use crate::reactor::{Backend, Part};
use crate::worker::http::Reject;
use crate::worker::Core;

/// The routes of the subscriber port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/ws`.
    Ws,
    /// `/echo` (with `ws_echo`).
    Echo,
    /// `/sse`.
    Sse,
    /// `/poll`, `/sub`.
    Poll,
    /// `/stream`.
    Stream,
    /// `/iframe`.
    Iframe,
    /// `/ping`.
    Ping,
    /// `/healthz`.
    Health,
    /// `/presence?channel=` (with `presence_public`).
    Presence,
    /// A static file: the client library (`/pushedge.js`, `/pushedge.mjs`) or the demo
    /// (`/demo`).
    Static(crate::worker::http::StaticFile),
    /// `/socket.io/` (Engine.IO; started by the worker's HTTP side, which reads its
    /// POST bodies).
    SocketIo,
}

/// Starts the transport of a request (its head is parsed and checked).
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    route: Route,
) -> Result<(), Reject> {
    match route {
        Route::Ws => ws::start(cx, slot, req, q, false),
        Route::Echo => ws::start(cx, slot, req, q, true),
        Route::Sse => sse::start(cx, slot, req, q),
        Route::Stream => ndjson::start(cx, slot, req, q),
        Route::Iframe => iframe::start(cx, slot, req, q),
        Route::Poll => poll::start(cx, slot, q),
        Route::SocketIo => socketio::start(cx, slot, req, q, None),
        Route::Ping | Route::Health | Route::Static(_) | Route::Presence => Ok(()),
    }
}

/// Takes input bytes of a connection that is past its request head; returns how many
/// were used.
pub fn input<B: Backend>(cx: &mut Core<B>, slot: usize, input: &mut [u8]) -> usize {
    match cx.conns[slot].state() {
        State::Ws | State::Echo => ws::input(cx, slot, input),
        State::Sse => sse::input(cx, slot, input),
        State::Stream => ndjson::input(cx, slot, input),
        State::Iframe => iframe::input(cx, slot, input),
        State::Poll => poll::input(cx, slot, input),
        State::SioWs | State::SioPoll | State::SioProbe | State::SioHeld => {
            socketio::input(cx, slot, input)
        }
        State::Http => unreachable!("requests are parsed by the worker"),
        // After the end only the peer's EOF matters.
        State::Closing => input.len(),
    }
}

/// Delivers one message to one subscriber. `iframe_cache` keeps the iframe chunk of this
/// `msg` for the next iframe subscriber with the same callback.
pub fn deliver<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    local: u32,
    msg: &Arc<Msg>,
    iframe_cache: &mut Option<(Box<str>, Bytes)>,
) {
    match msg.kind {
        MsgKind::Gap => return deliver_gap(cx, slot, local, msg),
        MsgKind::Reset => return deliver_reset(cx, slot, local, msg),
        MsgKind::Data | MsgKind::Close => {}
    }
    if !advance_cursor(cx, slot, local, msg) {
        return;
    }
    cx.stats.inc(crate::metrics::Counter::Delivered);
    match cx.conns[slot].state() {
        State::Ws => ws::deliver(cx, slot, msg),
        State::Sse => sse::deliver(cx, slot, msg),
        State::Stream => ndjson::deliver(cx, slot, msg),
        State::Iframe => iframe::deliver(cx, slot, msg, iframe_cache),
        State::Poll => return poll::deliver(cx, slot, msg),
        State::SioWs | State::SioPoll => socketio::deliver(cx, slot, msg),
        State::Http | State::Echo | State::Closing | State::SioProbe | State::SioHeld => return,
    }
    if msg.kind == MsgKind::Close {
        cx.unsubscribe(slot, local);
        if cx.conns[slot].subs.is_empty() && cx.conns[slot].state().is_stream() {
            end(cx, slot, CloseCode::NORMAL, "");
        }
    }
}

/// Sends the data messages a subscriber has not seen yet, in one write (or one
/// long-poll answer). Only for the transports whose wire form is shared (WebSocket,
/// NDJSON, SSE with one channel, long-poll).
pub fn deliver_run<B: Backend>(cx: &mut Core<B>, slot: usize, local: u32, msgs: &[Arc<Msg>]) {
    let Some(sub) = cx.conns[slot].subs.find_mut(local) else {
        return;
    };
    let start = msgs.partition_point(|m| m.seq <= sub.last_seq);
    let Some(last) = msgs.last().filter(|_| start < msgs.len()) else {
        return;
    };
    sub.last_seq = last.seq;
    let fresh = &msgs[start..];
    cx.stats
        .add(crate::metrics::Counter::Delivered, fresh.len() as u64);
    let state = cx.conns[slot].state();
    if state == State::Poll {
        return poll::deliver_run(cx, slot, fresh);
    }
    let deflate = cx.conns[slot].session.deflate();
    let mut parts: [Part<'_>; crate::limits::DELIVER_BATCH] =
        [Part::Copy(&[]); crate::limits::DELIVER_BATCH];
    for (p, m) in parts.iter_mut().zip(fresh) {
        *p = Part::Shared(match state {
            State::Ws => m.ws_frame_for(deflate),
            State::Stream => m.ndjson_chunk(),
            _ => m.sse_event(),
        });
    }
    cx.send(
        slot,
        &parts[..fresh.len().min(crate::limits::DELIVER_BATCH)],
    );
}

/// Advances the connection's cursor for `msg`; false for a duplicate.
fn advance_cursor<B: Backend>(cx: &mut Core<B>, slot: usize, local: u32, msg: &Msg) -> bool {
    let Some(sub) = cx.conns[slot].subs.find_mut(local) else {
        return false;
    };
    if msg.kind == MsgKind::Data {
        if msg.seq <= sub.last_seq {
            return false;
        }
        sub.last_seq = msg.seq;
    }
    true
}

/// Tells a subscriber that the channel's stream started again (a subscription whose
/// position is being read from Redis catches up on it after the read).
fn deliver_reset<B: Backend>(cx: &mut Core<B>, slot: usize, local: u32, msg: &Arc<Msg>) {
    let Some(sub) = cx.conns[slot].subs.find_mut(local) else {
        return;
    };
    if sub.last_seq & crate::worker::index::PAUSED != 0 {
        return;
    }
    sub.last_seq = msg.seq;
    envelope(cx, slot, &msg.envelope());
}

/// Tells a subscriber what it missed (`msg.from..=msg.seq`, minus what it already had).
fn deliver_gap<B: Backend>(cx: &mut Core<B>, slot: usize, local: u32, msg: &Msg) {
    let Some(sub) = cx.conns[slot].subs.find_mut(local) else {
        return;
    };
    if msg.seq <= sub.last_seq {
        return;
    }
    let from = msg.from.max(sub.last_seq + 1);
    sub.last_seq = msg.seq;
    let gap = Message::Gap {
        channel: &msg.channel,
        from,
        to: msg.seq,
    };
    envelope(cx, slot, &gap);
}

/// Sends an envelope made for this connection (gap, reset, noop, error, pong, refresh,
/// next_seq) in the connection's wire form; a held long-poll is answered with it.
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    match cx.conns[slot].state() {
        State::Ws | State::Echo => ws::envelope(cx, slot, msg),
        State::Sse => sse::envelope(cx, slot, msg),
        State::Stream => ndjson::envelope(cx, slot, msg),
        State::Iframe => iframe::envelope(cx, slot, msg),
        State::Poll => poll::envelope(cx, slot, msg),
        State::SioWs | State::SioPoll => socketio::envelope(cx, slot, msg),
        State::Http | State::Closing | State::SioProbe | State::SioHeld => {}
    }
}

/// The connection's timer fired (see the table in `conn`).
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.conns[slot].state() {
        State::Ws => ws::timer(cx, slot),
        // The echo endpoint has no heartbeat.
        State::Echo => {}
        State::Sse => sse::timer(cx, slot),
        State::Stream => ndjson::timer(cx, slot),
        State::Iframe => iframe::timer(cx, slot),
        State::Poll => poll::timer(cx, slot),
        State::SioWs | State::SioPoll | State::SioProbe | State::SioHeld => {
            socketio::timer(cx, slot)
        }
        State::Http | State::Closing => unreachable!("handled by the worker"),
    }
}

/// Ends a connection gracefully, the way its transport ends (drain, kick, token expiry,
/// the last channel closed).
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, code: CloseCode, reason: &str) {
    let ws = cx.conns[slot].state().is_ws();
    cx.note_close(slot, if ws { code.0 } else { 0 }, reason);
    match cx.conns[slot].state() {
        State::Http => cx.end_http(slot),
        State::Ws | State::Echo => ws::end(cx, slot, code, reason),
        State::Sse => sse::end(cx, slot, code, reason),
        State::Stream => ndjson::end(cx, slot, code, reason),
        State::Iframe => iframe::end(cx, slot, code, reason),
        State::Poll => poll::end(cx, slot, code, reason),
        State::SioWs | State::SioPoll | State::SioProbe | State::SioHeld => {
            socketio::end(cx, slot, code, reason)
        }
        State::Closing => {}
    }
}

/// The record is being removed: the transport lets go of what it keeps beside it.
pub fn closed<B: Backend>(cx: &mut Core<B>, slot: usize) {
    if matches!(
        cx.conns[slot].state(),
        State::SioWs | State::SioPoll | State::SioProbe | State::SioHeld
    ) {
        socketio::closed(cx, slot);
    }
}

/// What a slow consumer's cut ends its stream with, behind what is kept.
pub fn cut_tail<B: Backend>(cx: &mut Core<B>, slot: usize, out: &mut Vec<u8>) {
    match cx.conns[slot].state() {
        State::Ws | State::Echo | State::SioWs | State::SioProbe => {
            cx.conns[slot]
                .session
                .close(CloseCode::POLICY, "slow consumer", out);
        }
        State::Stream | State::Iframe => out.extend_from_slice(http::LAST_CHUNK),
        State::Http
        | State::Sse
        | State::Poll
        | State::Closing
        | State::SioPoll
        | State::SioHeld => {}
    }
}

/// A streaming response's head is out: the connection becomes the stream, what is
/// buffered is replayed, and the heartbeat starts (the first one jittered).
pub fn begin_stream<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    state: State,
    pending: Vec<crate::worker::index::PendingReplay>,
) {
    cx.conns[slot].clear(crate::conn::flag::KEEP_ALIVE);
    let moved = cx.conns[slot].stream(state);
    if !cx.apply(slot, moved) {
        return;
    }
    cx.disarm(slot);
    cx.replay_all(slot, pending);
    if !cx.conns[slot].write_closed() {
        let first = crate::timer::jitter(cx.live().heartbeat(), &mut cx.rng);
        cx.arm(slot, first);
    }
}
