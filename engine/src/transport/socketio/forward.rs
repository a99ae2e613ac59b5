//! Socket.IO commands between workers ([`SioCmd`]): a polling request or an upgrade
//! step forwarded to the worker of its session, the answer, a session moving; counted
//! in flight for the hot handover.

use std::sync::atomic::Ordering;

use protocol::engineio::ErrorCode;

use crate::conn::State;
use crate::inbox::Cmd;
use crate::metrics::Counter;
use crate::reactor::{Backend, Token};
use crate::worker::Core;

use super::lifecycle::close_session;
use super::polling::{answer, answer_error, poll_get, poll_post, release_get, respond};
use super::session::{parse_id, Waiter};
use super::upgrade::{install, take_session, Snapshot};

/// A polling request for a session on another worker.
#[derive(Debug)]
pub enum Forwarded {
    /// A GET.
    Get,
    /// A POST and its body.
    Post(Vec<u8>),
    /// A probe began: release the held GET.
    Release,
    /// The upgrade is done: send the session over.
    Take,
    /// The waiting request is gone (its connection closed, or it timed out).
    Cancel,
    /// A probe for the session began: answered (an `Install` without a session) only
    /// when there is no such polling session.
    Check,
    /// A request broke the protocol (a body over `socketio_max_payload`): the session
    /// is closed.
    Close,
}

/// Socket.IO commands between workers.
#[derive(Debug)]
pub enum SioCmd {
    /// A request for a session of the receiving worker.
    Forward {
        /// Who waits for the answer.
        from: Waiter,
        /// The session.
        sid: Box<str>,
        /// What.
        req: Forwarded,
    },
    /// The answer to a forwarded request.
    Answer {
        /// The waiting connection.
        token: Token,
        /// HTTP status.
        status: u16,
        /// A JSON error (else text/plain).
        json: bool,
        /// The body.
        body: Vec<u8>,
    },
    /// A session for an upgrade (`None`: it is gone).
    Install {
        /// The probing WebSocket.
        token: Token,
        /// The session.
        snapshot: Option<Box<Snapshot>>,
    },
}

/// A polling request (or an upgrade step) for a session of this worker.
pub(super) fn on_forwarded<B: Backend>(cx: &mut Core<B>, from: Waiter, sid: &str, req: Forwarded) {
    let found = parse_id(sid)
        .filter(|p| p.worker == cx.id && cx.conns.alive(p.token))
        .map(|p| p.token.slot())
        .filter(|&s| cx.sio.session(s).is_some_and(|x| x.sid.as_str() == sid));
    let Some(s) = found else {
        match req {
            Forwarded::Take | Forwarded::Check => install_remote(cx, from, None),
            Forwarded::Release | Forwarded::Cancel | Forwarded::Close => {}
            Forwarded::Get | Forwarded::Post(_) => answer_error(cx, from, ErrorCode::UnknownSid),
        }
        return;
    };
    let polling = cx.conns[s].state() == State::SioPoll;
    let dead = cx
        .sio
        .session(s)
        .is_some_and(|x| x.awaiting_pong && cx.now >= x.deadline);
    if dead && matches!(req, Forwarded::Get | Forwarded::Post(_)) {
        cx.stats.inc(Counter::HeartbeatTimeout);
        close_session(cx, s, true);
        return answer_error(cx, from, ErrorCode::UnknownSid);
    }
    match req {
        Forwarded::Get if polling => poll_get(cx, s, from),
        Forwarded::Post(body) if polling => {
            let ok = poll_post(cx, s, &body);
            if ok {
                answer(cx, from, 200, false, b"ok");
            } else {
                answer_error(cx, from, ErrorCode::BadRequest);
            }
        }
        Forwarded::Get | Forwarded::Post(_) => answer_error(cx, from, ErrorCode::BadRequest),
        Forwarded::Check if !polling => install_remote(cx, from, None),
        Forwarded::Check => {}
        Forwarded::Close => {
            cx.stats.inc(Counter::SioErrors);
            close_session(cx, s, false);
        }
        Forwarded::Release => release_get(cx, s),
        Forwarded::Cancel => {
            if let Some(session) = cx.sio.session_mut(s) {
                if session.r().get == Some(from) {
                    session.r().get = None;
                }
            }
        }
        Forwarded::Take => {
            let snap = take_session(cx, s);
            install_remote(cx, from, snap);
        }
    }
}

/// Pushes a Socket.IO command to a worker's inbox, counted until that worker handles it
/// (a handover refuses while one is in flight: see [`handover`](super::handover)).
pub(super) fn push_cmd<B: Backend>(cx: &Core<B>, worker: usize, cmd: SioCmd) {
    if let Some(inbox) = cx.shared.inboxes.get(worker) {
        cx.shared
            .sio_recovery
            .in_flight
            .fetch_add(1, Ordering::AcqRel);
        inbox.push(Cmd::Sio(Box::new(cmd)));
    }
}

fn install_remote<B: Backend>(cx: &mut Core<B>, to: Waiter, snap: Option<Box<Snapshot>>) {
    if to.worker == cx.id {
        return install(cx, to.token, snap);
    }
    cx.stats.inc(Counter::SioMoved);
    push_cmd(
        cx,
        to.worker,
        SioCmd::Install {
            token: to.token,
            snapshot: snap,
        },
    );
}

/// A Socket.IO command from another worker.
pub fn on_cmd<B: Backend>(cx: &mut Core<B>, cmd: SioCmd) {
    cx.shared
        .sio_recovery
        .in_flight
        .fetch_sub(1, Ordering::AcqRel);
    match cmd {
        SioCmd::Forward { from, sid, req } => on_forwarded(cx, from, &sid, req),
        SioCmd::Answer {
            token,
            status,
            json,
            body,
        } => {
            if cx.conns.alive(token) && cx.conns[token.slot()].state() == State::SioHeld {
                let slot = token.slot();
                cx.sio.take(slot);
                respond(cx, slot, status, json, &body, false);
            }
        }
        SioCmd::Install { token, snapshot } => install(cx, token, snapshot),
    }
}

pub(super) fn forward_to_owner<B: Backend>(
    cx: &mut Core<B>,
    from: Waiter,
    sid: &str,
    req: Forwarded,
) {
    match parse_id(sid) {
        Some(p) if p.worker == cx.id => on_forwarded(cx, from, sid, req),
        Some(p) => push_cmd(
            cx,
            p.worker,
            SioCmd::Forward {
                from,
                sid: sid.into(),
                req,
            },
        ),
        None => {}
    }
}
