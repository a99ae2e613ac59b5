//! Engine.IO over WebSocket: a WebSocket session's handshake, the probe of an upgrade
//! (`2probe`, `5`), a polling session taken out of its record ([`Snapshot`]) and
//! installed on the probing WebSocket.

use std::sync::Arc;
use std::time::Instant;

use protocol::engineio::{self as eio, ErrorCode, Packet};
use protocol::http;
use protocol::query::Query;
use protocol::ws::{self, DataKind, OpCode};

use crate::auth::Grant;
use crate::conn::{flag, State};
use crate::epoch::Epoch;
use crate::hub::Since;
use crate::limits::SOCKETIO_MAX_EARLY;
use crate::reactor::{Backend, Part, Token};
use crate::worker::http::{reject, Reject};
use crate::worker::index::PAUSED;
use crate::worker::Core;

use super::forward::{forward_to_owner, Forwarded};
use super::packets::{on_packet, protocol_error};
use super::polling::{eio_error, new_session, open_packet, release_get};
use super::session::{ours, parse_id, Entry, Id, Nsp, Session, Waiter};
use super::{arm_ping, path_is, ECHO_PATH};

/// A session on its way to another record (an upgrade) or kept for recovery.
#[derive(Debug)]
pub struct Snapshot {
    pub(super) sid: Id,
    pub(super) nsps: Vec<Nsp>,
    pub(super) channels: Vec<(Arc<str>, u64, Epoch)>,
    pub(super) queue: Vec<u8>,
    pub(super) grant: Option<Box<Grant>>,
    pub(super) query_token: Option<Box<str>>,
    pub(super) born: Instant,
    pub(super) echo: bool,
}

pub(super) fn open_ws<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    sid: Option<&str>,
) -> Result<(), Reject> {
    let accept = match ws::handshake::check_request(req) {
        Ok(a) => a,
        Err(_) => {
            eio_error(cx, slot, ErrorCode::BadRequest);
            return Ok(());
        }
    };
    // A sid that cannot be one of this node's is refused; one that names a record that
    // is not (or no longer) a polling session is accepted and then closed, as WebSocket
    // clients expect of a session that went away (or moved on to another WebSocket).
    let foreign = sid.is_some_and(|sid| {
        parse_id(sid).is_none_or(|p| !ours(cx, p.node) || p.worker >= cx.shared.inboxes.len())
    });
    if foreign {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return Ok(());
    }
    if sid.is_none() && cx.draining {
        return Err(reject(503, "server shutting down"));
    }
    let mut out = Vec::with_capacity(160);
    ws::handshake::write_accept_response(&mut out, &accept);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.disarm(slot);
    cx.conns[slot].clear(flag::KEEP_ALIVE);
    let moved = cx.conns[slot].upgrade_sio(sid.is_some());
    if !cx.apply(slot, moved) {
        return Ok(());
    }
    if let Some(sid) = sid {
        open_probe(cx, slot, sid);
        return Ok(());
    }
    let echo = cx.shared.cfg.socketio_test && path_is(req.path(), ECHO_PATH);
    let session = new_session(cx, slot, q, echo);
    let open = open_packet(cx, session.sid.as_str(), &[]);
    cx.sio.put(slot, Entry::Session(session));
    send_frame(cx, slot, OpCode::Text, &open);
    arm_ping(cx, slot);
    Ok(())
}

/// The WebSocket of an upgrade of session `sid` (accepted): it waits for its probe,
/// and the session's worker is asked whether it is a polling session (a sid that
/// cannot be one is answered at once: the session is gone).
fn open_probe<B: Backend>(cx: &mut Core<B>, slot: usize, sid: &str) {
    cx.sio.put(
        slot,
        Entry::Probe {
            sid: sid.into(),
            asked: false,
            early: Vec::new(),
        },
    );
    let t = cx.live().handshake_timeout();
    cx.arm(slot, t);
    let me = Waiter {
        worker: cx.id,
        token: cx.conns.token(slot),
    };
    let known = parse_id(sid).filter(|p| ours(cx, p.node) && p.worker < cx.shared.inboxes.len());
    if known.is_none() {
        install(cx, me.token, None);
    } else {
        forward_to_owner(cx, me, sid, Forwarded::Check);
    }
}

pub(super) fn send_frame<B: Backend>(cx: &mut Core<B>, slot: usize, op: OpCode, data: &[u8]) {
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    ws::encode_frame(&mut out, true, op, data);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}

/// A WebSocket message of a `SioWs` or `SioProbe` connection.
pub fn on_ws_message<B: Backend>(cx: &mut Core<B>, slot: usize, kind: DataKind, data: &[u8]) {
    let state = cx.conns[slot].state();
    if state == State::SioProbe {
        return on_probe_message(cx, slot, kind, data);
    }
    let packet = match kind {
        DataKind::Binary => Packet::Binary(std::borrow::Cow::Borrowed(data)),
        DataKind::Text => {
            let Ok(text) = std::str::from_utf8(data) else {
                return protocol_error(cx, slot, "not UTF-8");
            };
            match eio::decode_text(text) {
                Ok((t, rest)) => Packet::Text(t, rest),
                Err(e) => return protocol_error(cx, slot, e.reason()),
            }
        }
    };
    on_packet(cx, slot, packet);
}

fn on_probe_message<B: Backend>(cx: &mut Core<B>, slot: usize, kind: DataKind, data: &[u8]) {
    let Some(Entry::Probe { sid, asked, early }) = cx.sio.get_mut(slot) else {
        return;
    };
    if *asked {
        // The session is on its way: what comes meanwhile waits for it.
        let held: usize = early.iter().map(|(_, d)| d.len()).sum();
        if held + data.len() > SOCKETIO_MAX_EARLY {
            return protocol_error(cx, slot, "too much sent during the upgrade");
        }
        early.push((kind, data.to_vec()));
        return;
    }
    let sid = sid.clone();
    match (kind, data) {
        (DataKind::Text, b"2probe") => {
            send_frame(cx, slot, OpCode::Text, b"3probe");
            let me = Waiter {
                worker: cx.id,
                token: cx.conns.token(slot),
            };
            forward_to_owner(cx, me, &sid, Forwarded::Release);
        }
        (DataKind::Text, b"5") => {
            if let Some(Entry::Probe { asked, .. }) = cx.sio.get_mut(slot) {
                *asked = true;
            }
            let me = Waiter {
                worker: cx.id,
                token: cx.conns.token(slot),
            };
            forward_to_owner(cx, me, &sid, Forwarded::Take);
        }
        (DataKind::Text, b"6") => {}
        _ => protocol_error(cx, slot, "unexpected packet during the upgrade"),
    }
}

/// Takes a polling session out of its record (an upgrade): its held GET released, its
/// subscriptions ended with their cursors kept, the record closed.
pub(super) fn take_session<B: Backend>(cx: &mut Core<B>, s: usize) -> Option<Box<Snapshot>> {
    release_get(cx, s);
    let Some(Entry::Session(session)) = cx.sio.take(s).map(|b| *b) else {
        return None;
    };
    let mut channels = cursors(cx, s);
    channels.extend(own_rooms(cx, s, &session.nsps));
    let grant = cx.conns[s].ext.as_mut().and_then(|e| e.grant.take());
    cx.unsubscribe_all(s);
    cx.close(s);
    let rare = session.rare.map(|r| *r).unwrap_or_default();
    Some(Box::new(Snapshot {
        sid: session.sid,
        nsps: session.nsps,
        channels,
        queue: rare.queue,
        grant,
        query_token: rare.query_token,
        born: session.born,
        echo: session.echo,
    }))
}

/// The own rooms of a session's sockets that it is not subscribed to, each with where
/// its stream is now (what the socket has seen): a session that moves (an upgrade, a
/// recovery) subscribes to them, as its sockets' ids name a record that is gone.
pub(super) fn own_rooms<B: Backend>(
    cx: &Core<B>,
    s: usize,
    nsps: &[Nsp],
) -> Vec<(Arc<str>, u64, Epoch)> {
    if !cx.shared.cfg.socketio_own_room {
        return Vec::new();
    }
    let subs = cx.conns[s].subs.as_slice();
    nsps.iter()
        .map(|n| format!("{}{}", n.prefix, n.sid.as_str()))
        .filter(|name| cx.index.by_name(subs, name).is_none())
        .map(|name| {
            let (epoch, seq) = cx
                .shared
                .hub
                .local_stream(&name)
                .unwrap_or((Epoch::NONE, 0));
            (Arc::from(name), seq, epoch)
        })
        .collect()
}

/// Each subscription's channel and the last seq delivered.
pub(super) fn cursors<B: Backend>(cx: &Core<B>, slot: usize) -> Vec<(Arc<str>, u64, Epoch)> {
    cx.conns[slot]
        .subs
        .as_slice()
        .iter()
        .map(|sub| {
            let c = cx.index.chan(sub.local);
            (c.name.clone(), sub.last_seq & !PAUSED, c.epoch)
        })
        .collect()
}

/// The session arrives at the probing WebSocket.
pub(super) fn install<B: Backend>(cx: &mut Core<B>, token: Token, snap: Option<Box<Snapshot>>) {
    if !cx.conns.alive(token) || cx.conns[token.slot()].state() != State::SioProbe {
        return;
    }
    let slot = token.slot();
    let Some(snap) = snap else {
        return protocol_error(cx, slot, "the session is gone");
    };
    let early = match cx.sio.take(slot).map(|b| *b) {
        Some(Entry::Probe { early, .. }) => early,
        _ => Vec::new(),
    };
    let snap = *snap;
    let moved = cx.conns[slot].take_session();
    if !cx.apply(slot, moved) {
        return;
    }
    if let Some(g) = snap.grant {
        cx.conns[slot].ext().grant = Some(g);
        cx.watch_token(slot);
    }
    let names: Vec<String> = snap
        .channels
        .iter()
        .map(|(n, _, _)| n.to_string())
        .collect();
    let points: Vec<Since> = snap
        .channels
        .iter()
        .map(|&(_, seq, epoch)| Since::Seq(seq + 1, epoch))
        .collect();
    let pending = cx
        .subscribe_all(slot, &names, &points, true, false)
        .map(|p| p.0)
        .unwrap_or_default();
    let mut session = Session::new(snap.sid, snap.query_token, snap.born);
    session.nsps = snap.nsps;
    session.echo = snap.echo;
    cx.sio.put(slot, Entry::Session(session));
    send_queued(cx, slot, &snap.queue);
    cx.replay_all(slot, pending);
    arm_ping(cx, slot);
    for (kind, data) in early {
        if cx.conns[slot].write_closed() {
            break;
        }
        on_ws_message(cx, slot, kind, &data);
    }
}

/// Sends, as WebSocket frames, the packets a polling session had queued (a payload).
fn send_queued<B: Backend>(cx: &mut Core<B>, slot: usize, queue: &[u8]) {
    if queue.is_empty() {
        return;
    }
    if let Ok(packets) = eio::decode_payload(queue, usize::MAX) {
        let mut out = Vec::with_capacity(queue.len() + 16);
        for p in packets {
            match p {
                Packet::Text(t, d) => {
                    let mut text = Vec::with_capacity(d.len() + 1);
                    eio::write_text(&mut text, t, d.as_bytes());
                    ws::encode_frame(&mut out, true, OpCode::Text, &text);
                }
                Packet::Binary(b) => ws::encode_frame(&mut out, true, OpCode::Binary, &b),
            }
        }
        cx.send(slot, &[Part::Copy(&out)]);
    }
}
