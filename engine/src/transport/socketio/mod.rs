//! Socket.IO (protocol v5) over Engine.IO v4, at `socketio_path` (`/socket.io/`).
//!
//! # Sessions
//!
//! An Engine.IO session lives in one record of the worker's connection table, so that
//! it has a token, a timer and subscriptions like any subscriber:
//!
//! - over WebSocket (`transport=websocket` without a `sid`) the session is the
//!   WebSocket's own record (`SioWs`): one record per socket, as for `/ws`;
//! - over long-polling the session is a record without a socket (`SioPoll`), and each
//!   HTTP request is a connection of its own: a GET with nothing to answer waits
//!   (`SioHeld`) until the session has a packet (at the latest its next ping);
//! - an upgrade (`transport=websocket&sid=...`) is a WebSocket in `SioProbe` that answers
//!   `2probe` with `3probe` (the session's held GET is released with a `6` noop) and, on
//!   `5`, takes the session over: the session's subscriptions are re-made on the
//!   WebSocket's record from their cursors, so the hub replays exactly what was
//!   published in between, and the packets the session had queued go out first.
//!
//! The Socket.IO part of each record (its namespaces, queued packets, held GET, a binary
//! packet waiting for its attachments) is in this module's [`Table`], indexed by slot, so
//! the connection record itself stays 56 bytes.
//!
//! # Which worker, which node
//!
//! The `sid` is 15 random-looking bytes in base64url: the worker, the record's slot and
//! generation, a tag of the node, and 6 random bytes (so a sid cannot be guessed from
//! another). SO_REUSEPORT spreads TCP connections over the workers at random, so a
//! polling request often lands on a worker that does not hold its session: it is
//! forwarded through the holding worker's inbox, which answers back through the
//! requesting worker's inbox (two queue hops and at most two wake-ups per request,
//! counted in `pushedge_socketio_forwarded_total`). A WebSocket upgrade that lands on
//! another worker moves the session there (`pushedge_socketio_moved_total`). A request
//! for a session of another cluster node (its node tag differs) is answered `400
//! Session ID unknown`: across nodes, polling needs sticky routing (as Socket.IO itself
//! requires) or `transports: ["websocket"]`; the client then opens a new session, and
//! with connection state recovery it gets what it missed.
//!
//! # Namespaces, rooms and events
//!
//! Namespace `/x` is the channel family `x.` (the main namespace `/` has
//! `socketio_main_prefix`, empty by default); room `r` of it is channel `x.r`. A socket is
//! in its namespace's `socketio_broadcast_room` and in the rooms of its CONNECT's
//! `auth.channels`, joins and leaves rooms with `emit("subscribe"|"unsubscribe", rooms,
//! ack)`, and its own room (its socket id) is addressed directly: a publish to
//! `<prefix><socket id>` is handed by the hub to the worker the id names (see
//! [`own_room_worker`]), without a subscription (a channel per socket would cost ~400 B).
//! A channel is delivered to the connected namespace with the longest matching prefix.
//!
//! A published message is an event (the admin's `event=`, default `message`) whose
//! arguments are its content: a text body is one string, a JSON body one value, a client
//! emit its arguments; `{"$binary":"<base64>"}` objects become binary attachments. Each
//! message is encoded once for the first namespace that receives it and shared by every
//! socket of that namespace ([`Encoded`]).
//!
//! # Connection state recovery
//!
//! With `socketio_recovery_secs > 0`, CONNECT answers carry a `pid` and each event an
//! offset (`SEQ@EPOCH/CHANNEL`) as its last argument; when a socket's transport is lost,
//! its rooms and cursors are kept for that long ([`Recoveries`]), and a CONNECT with the
//! `pid` and `offset` resumes them: same socket id, each room replayed from the channel
//! history (the offset's channel from the offset, the others from what had been written
//! when the transport closed).
//!
//! # Hot handover
//!
//! `ctl upgrade` carries every Socket.IO record ([`handover`]): the worker restores the
//! record in its slot with its generation (so sids, socket ids and a held GET's waiter
//! name the same record), its socket (none for a polling session), subscriptions with
//! their cursors, grant and timer; this module carries the [`Table`] entry (a session's
//! namespaces, ping state and deadline as time left, polling queue, held GET, query
//! token, a binary packet waiting for attachments, packets sent later; a held GET's
//! sid; a probe's progress) and the kept [`Recoveries`]. The successor has a node id of
//! its own: it accepts the node tags of the processes it took over from as its own, so
//! the sids they made stay valid. Refused, to be retried: a client publish waiting for
//! its hub answer, and a command between workers (a forwarded polling request, its
//! answer, a session moving for an upgrade) not handled yet when every worker froze.
//!
//! # Parts
//!
//! - [`session`]: sids and socket ids, the [`Table`] of each worker and what a session
//!   holds;
//! - [`polling`]: Engine.IO over HTTP: the handshake, long-polling GETs and POSTs, and
//!   answering a held request;
//! - [`upgrade`]: Engine.IO over WebSocket: opening, the probe and the upgrade of a
//!   polling session, a session arriving on its new record;
//! - [`forward`]: the commands between workers (a polling request forwarded to the
//!   worker of its session, its answer, a session moving);
//! - [`packets`]: Engine.IO and Socket.IO packets in and out;
//! - [`connect`]: namespaces: CONNECT (token, rooms, recovery) and DISCONNECT;
//! - [`rooms`]: client events: joining and leaving rooms, publishing, their acks;
//! - [`delivery`]: published messages and envelopes as events;
//! - [`recovery`]: the sockets kept for connection state recovery;
//! - [`lifecycle`]: the record's timer and the end of a session;
//! - [`handover`]: what a hot handover carries.
//!
//! The transport's five verbs, dispatched from [`crate::transport`] like every other
//! transport's, are this module's [`start`] (in [`polling`]), [`input`], [`deliver`] (in
//! [`delivery`]), [`timer`] (in [`lifecycle`]) and [`end`].

use std::time::Duration;

use protocol::message;
use protocol::ws::CloseCode;

use crate::config::{pattern_matches, secs};
use crate::conn::State;
use crate::limits::SOCKETIO_TEST_PING;
use crate::reactor::Backend;
use crate::worker::Core;

mod connect;
mod delivery;
mod forward;
mod handover;
mod lifecycle;
mod packets;
mod polling;
mod recovery;
mod rooms;
mod session;
mod upgrade;

pub use delivery::{deliver, deliver_direct, envelope, is_own_room, Encoded};
pub use forward::{on_cmd, Forwarded, SioCmd};
pub use handover::{export, export_shared, import, import_shared};
pub use lifecycle::{closed, on_later, on_ws_closed, timer};
pub use polling::{start, too_large};
pub use recovery::Recoveries;
pub use rooms::on_pub_done;
pub use session::{own_room_worker, Entry, Id, Session, Table, Waiter};
pub use upgrade::{on_ws_message, Snapshot};

/// Takes input bytes of a session's record: WebSocket frames (`SioWs`, `SioProbe`); a
/// held GET's pipelined requests wait for its answer (`SioHeld`: none used); a polling
/// session's record has no socket (`SioPoll`: all used).
pub fn input<B: Backend>(cx: &mut Core<B>, slot: usize, input: &mut [u8]) -> usize {
    match cx.conns[slot].state() {
        State::SioWs | State::SioProbe => super::ws::input(cx, slot, input),
        State::SioHeld => 0,
        _ => input.len(),
    }
}

/// Ends the session gracefully (drain, kick, token expiry) the Engine.IO way (see
/// [`lifecycle`]); the code and reason are not sent.
#[inline]
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, _code: CloseCode, _reason: &str) {
    lifecycle::end(cx, slot)
}

/// Length of a sid (and of a socket id).
pub const SID_LEN: usize = 20;
/// Timer entries tagged with this are a session's packets sent a moment later
/// ([`on_later`]).
pub const LATER_TAG: u8 = 2;

// ------------------------------------------------------------------ settings

struct Timing {
    interval: Duration,
    timeout: Duration,
}

fn timing<B: Backend>(cx: &Core<B>) -> Timing {
    let cfg = &cx.shared.cfg;
    if cfg.socketio_test {
        let (interval, timeout) = SOCKETIO_TEST_PING;
        return Timing { interval, timeout };
    }
    Timing {
        interval: secs(cfg.socketio_ping_interval_secs),
        timeout: secs(cfg.socketio_ping_timeout_secs),
    }
}

fn recovery_on<B: Backend>(cx: &Core<B>) -> bool {
    cx.shared.cfg.socketio_recovery_secs > 0.0
}

/// Path of the plain Engine.IO echo of the conformance switch.
const ECHO_PATH: &str = "/engine.io";

fn path_is(path: &str, base: &str) -> bool {
    path.strip_prefix(base.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest == "/")
}

/// Arms the session's ping (after `interval`); without an answer to it, the session is
/// dead `interval + timeout` from now.
fn arm_ping<B: Backend>(cx: &mut Core<B>, s: usize) {
    let t = timing(cx);
    let deadline = cx.now + t.interval + t.timeout;
    if let Some(session) = cx.sio.session_mut(s) {
        session.deadline = deadline;
    }
    cx.rearm(s, t.interval);
}

/// The path of the Socket.IO endpoint, with or without its last `/` (and, with
/// `socketio_test`, `/engine.io/`).
pub fn is_path(cfg: &crate::config::Config, path: &str) -> bool {
    cfg.socketio
        && (path_is(path, &cfg.socketio_path) || (cfg.socketio_test && path_is(path, ECHO_PATH)))
}

/// Channel prefix of a namespace; `None` for a name that cannot be one.
fn prefix_of(cfg: &crate::config::Config, nsp: &str) -> Option<Box<str>> {
    if nsp == "/" {
        return Some(cfg.socketio_main_prefix.as_str().into());
    }
    let name = nsp.strip_prefix('/')?;
    message::validate_channel(name).ok()?;
    if name.contains('/') {
        return None;
    }
    Some(format!("{name}.").into())
}

fn nsp_allowed(cfg: &crate::config::Config, nsp: &str) -> bool {
    if cfg.socketio_test {
        // The test suites' server: the main namespace and `/custom`.
        return nsp == "/" || nsp == "/custom";
    }
    cfg.socketio_namespaces
        .iter()
        .any(|p| pattern_matches(p, nsp))
}
