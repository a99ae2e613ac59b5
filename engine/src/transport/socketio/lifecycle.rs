//! A Socket.IO record's timer (ping, pong timeout, connect timeout, a held request's
//! bound) and its end: closing a session, a drain, the record removed.

use protocol::engineio::{self as eio, PacketType};
use protocol::ws::{CloseCode, OpCode};

use crate::conn::{flag, State};
use crate::limits::{SOCKETIO_CONNECT_TIMEOUT, SOCKETIO_TEST_CONNECT_TIMEOUT};
use crate::metrics::Counter;
use crate::reactor::Backend;
use crate::worker::Core;

use super::packets::{emit, send_text};
use super::polling::{answer, cancel, respond};
use super::recovery::keep_for_recovery;
use super::session::Entry;
use super::upgrade::send_frame;

/// The record's timer (see the table in `conn`).
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.conns[slot].state() {
        State::SioWs | State::SioPoll => {
            let Some(session) = cx.sio.session_mut(slot) else {
                return cx.close(slot);
            };
            if session.awaiting_pong {
                cx.stats.inc(Counter::HeartbeatTimeout);
                return close_session(cx, slot, true);
            }
            let connect_by = if cx.shared.cfg.socketio_test {
                SOCKETIO_TEST_CONNECT_TIMEOUT
            } else {
                SOCKETIO_CONNECT_TIMEOUT
            };
            if !session.connected && !session.echo && cx.now >= session.born + connect_by {
                return close_session(cx, slot, false);
            }
            session.awaiting_pong = true;
            let left = session.deadline.saturating_duration_since(cx.now);
            send_text(cx, slot, PacketType::Ping, b"");
            cx.rearm(slot, left);
        }
        State::SioProbe => cx.close(slot),
        State::SioHeld => {
            // A held request past its bound: released with a noop (its session is gone
            // or stuck).
            cancel(cx, slot);
            respond(cx, slot, 200, false, b"6", false);
        }
        _ => {}
    }
}

/// The packets a session sends a moment later (see [`Rare::later`](super::session::Rare::later)).
pub fn on_later<B: Backend>(cx: &mut Core<B>, s: usize) {
    let later = match cx.sio.session_mut(s) {
        Some(session) => std::mem::take(&mut session.r().later),
        None => return,
    };
    for (nsp, auth) in later {
        emit(cx, s, &nsp, None, false, "auth", &[&auth]);
    }
}

/// Ends a session: `lost` (its transport failed: kept for recovery) or on purpose; a
/// held GET gets the close packet.
pub(super) fn close_session<B: Backend>(cx: &mut Core<B>, s: usize, lost: bool) {
    close_session_with(cx, s, lost, PacketType::Close)
}

/// [`close_session`], the held GET answered with `last` (a noop when the client asked
/// for the close).
pub(super) fn close_session_with<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    lost: bool,
    last: PacketType,
) {
    if lost {
        keep_for_recovery(cx, s);
    }
    let state = cx.conns[s].state();
    let Some(entry) = cx.sio.take(s) else {
        return cx.close(s);
    };
    if let Entry::Session(mut session) = *entry {
        if let Some(to) = session.r().get.take() {
            let mut body = std::mem::take(&mut session.r().queue);
            eio::push_separator(&mut body);
            eio::write_text(&mut body, last, b"");
            answer(cx, to, 200, false, &body);
        }
    }
    match state {
        State::SioWs => {
            let mut text = Vec::with_capacity(2);
            eio::write_text(&mut text, PacketType::Close, b"");
            send_frame(cx, s, OpCode::Text, &text);
            crate::transport::ws::close(cx, s, CloseCode::NORMAL, "");
        }
        _ => cx.close(s),
    }
}

/// Ends the record gracefully (drain, kick, token expiry).
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.conns[slot].state() {
        State::SioWs | State::SioPoll => close_session(cx, slot, false),
        State::SioProbe => {
            cx.sio.take(slot);
            crate::transport::ws::close(cx, slot, CloseCode::GOING_AWAY, "server shutting down");
        }
        State::SioHeld => {
            cancel(cx, slot);
            cx.conns[slot].clear(flag::KEEP_ALIVE);
            respond(cx, slot, 200, false, b"6", true);
        }
        _ => {}
    }
}

/// The WebSocket's close handshake ended the session (the client's close frame).
pub fn on_ws_closed<B: Backend>(cx: &mut Core<B>, slot: usize) {
    keep_for_recovery(cx, slot);
    cx.sio.take(slot);
}

/// The record is being removed (after its handler): what is left of it goes. A session
/// whose transport went away under it (EOF, a reset) is kept for recovery.
pub fn closed<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.sio.get_mut(slot) {
        None => return,
        Some(Entry::Held { .. }) => return cancel(cx, slot),
        Some(Entry::Session(_)) => keep_for_recovery(cx, slot),
        Some(Entry::Probe { .. }) => {}
    }
    if let Some(Entry::Session(mut session)) = cx.sio.take(slot).map(|b| *b) {
        if let Some(to) = session.r().get.take() {
            let mut body = Vec::new();
            eio::write_text(&mut body, PacketType::Close, b"");
            answer(cx, to, 200, false, &body);
        }
    }
}
