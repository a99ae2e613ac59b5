//! Engine.IO and Socket.IO packets: from the client (decoding, binary attachments,
//! dispatch by type) and to it (a text or binary packet, an event, an ack, an encoded
//! message), over WebSocket or queued for the next GET.

use protocol::engineio::{self as eio, Packet, PacketType};
use protocol::socketio::{self as sio, SioType};
use protocol::ws::{CloseCode, OpCode};

use crate::conn::State;
use crate::metrics::Counter;
use crate::reactor::{Backend, Part};
use crate::worker::Core;

use super::arm_ping;
use super::connect::{connect, disconnect_nsp};
use super::delivery::{encode_packet, Encoded};
use super::lifecycle::{close_session, close_session_with};
use super::polling::flush;
use super::rooms::on_event;
use super::session::{Partial, Session};
use super::upgrade::send_frame;

pub(super) fn protocol_error<B: Backend>(cx: &mut Core<B>, slot: usize, why: &str) {
    crate::debug!(
        "worker {}: socket.io protocol error on {slot}: {why}",
        cx.id
    );
    cx.stats.inc(Counter::SioErrors);
    match cx.conns[slot].state() {
        State::SioWs | State::SioProbe => {
            cx.sio.take(slot);
            crate::transport::ws::fail(cx, slot, CloseCode::PROTOCOL, why);
        }
        _ => close_session(cx, slot, false),
    }
}

fn echo<B: Backend>(cx: &Core<B>, s: usize) -> bool {
    cx.sio.session(s).is_some_and(|x| x.echo)
}

/// Sends one binary message to the session in `s`.
fn send_binary<B: Backend>(cx: &mut Core<B>, s: usize, data: &[u8]) {
    match cx.conns[s].state() {
        State::SioWs => send_frame(cx, s, OpCode::Binary, data),
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                eio::write_binary_b64(&mut session.r().queue, data);
                flush(cx, s);
            }
        }
        _ => {}
    }
}

/// One Engine.IO packet from the client of session `s`.
pub(super) fn on_packet<B: Backend>(cx: &mut Core<B>, s: usize, p: Packet<'_>) {
    match p {
        Packet::Binary(data) if echo(cx, s) => send_binary(cx, s, &data),
        Packet::Text(PacketType::Message, data) if echo(cx, s) => {
            send_text(cx, s, PacketType::Message, data.as_bytes())
        }
        Packet::Binary(data) => on_attachment(cx, s, data.into_owned()),
        Packet::Text(PacketType::Pong, _) => {
            if let Some(session) = cx.sio.session_mut(s) {
                if session.awaiting_pong {
                    session.awaiting_pong = false;
                    arm_ping(cx, s);
                }
            }
        }
        Packet::Text(PacketType::Message, data) => on_sio_text(cx, s, data),
        // A client closing its Engine.IO session may come back for its state (as socket.io
        // recovers "transport close"); only a DISCONNECT is for good.
        Packet::Text(PacketType::Close, _) => close_session_with(cx, s, true, PacketType::Noop),
        Packet::Text(PacketType::Ping, data) => {
            // Not sent by v4 clients outside a probe; answered all the same.
            send_text(cx, s, PacketType::Pong, data.as_bytes());
        }
        Packet::Text(PacketType::Noop, _) => {}
        Packet::Text(PacketType::Open | PacketType::Upgrade, _) => {
            protocol_error(cx, s, "unexpected packet type")
        }
    }
}

fn on_sio_text<B: Backend>(cx: &mut Core<B>, s: usize, text: &str) {
    if cx
        .sio
        .session(s)
        .and_then(Session::rare_ref)
        .is_some_and(|r| r.partial.is_some())
    {
        return protocol_error(cx, s, "a text packet while attachments were expected");
    }
    let p = match sio::decode(text) {
        Ok(p) => p,
        Err(e) => return protocol_error(cx, s, &e.to_string()),
    };
    if matches!(p.kind, SioType::BinaryEvent | SioType::BinaryAck) && p.attachments > 0 {
        let partial = Partial {
            kind: p.kind,
            nsp: p.nsp.into(),
            id: p.id,
            data: p.data.unwrap_or("[]").to_string(),
            need: p.attachments as usize,
            got: Vec::new(),
        };
        if let Some(session) = cx.sio.session_mut(s) {
            session.r().partial = Some(Box::new(partial));
        }
        return;
    }
    on_sio_packet(cx, s, p.kind, p.nsp, p.id, p.data.map(str::to_string));
}

fn on_attachment<B: Backend>(cx: &mut Core<B>, s: usize, data: Vec<u8>) {
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    let Some(partial) = session.r().partial.as_mut() else {
        return protocol_error(cx, s, "a binary packet without its event");
    };
    partial.got.push(data);
    if partial.got.len() < partial.need {
        return;
    }
    let p = session.r().partial.take().expect("checked");
    let atts: Vec<&[u8]> = p.got.iter().map(Vec::as_slice).collect();
    match sio::inline_attachments(&p.data, &atts) {
        Ok(data) => on_sio_packet(cx, s, p.kind, &p.nsp, p.id, Some(data)),
        Err(e) => protocol_error(cx, s, &e.to_string()),
    }
}

fn on_sio_packet<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    kind: SioType,
    nsp: &str,
    id: Option<u64>,
    data: Option<String>,
) {
    match kind {
        SioType::Connect => connect(cx, s, nsp, data.as_deref()),
        SioType::Disconnect => disconnect_nsp(cx, s, nsp),
        SioType::Event | SioType::BinaryEvent => {
            let Some(data) = data else {
                return protocol_error(cx, s, "an event without data");
            };
            if cx.sio.session(s).and_then(|x| x.nsp(nsp)).is_none() {
                // Not connected to that namespace: the packet is for nobody.
                return;
            }
            match sio::split_event(&data) {
                Ok((name, args)) => on_event(cx, s, nsp, id, &name, &args),
                Err(e) => protocol_error(cx, s, &e.to_string()),
            }
        }
        // The server asks no acks.
        SioType::Ack | SioType::BinaryAck => {}
        SioType::ConnectError => protocol_error(cx, s, "CONNECT_ERROR from a client"),
    }
}

/// Sends a Socket.IO packet (raw JSON data) to session `s`.
pub(super) fn send_sio<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    kind: SioType,
    nsp: &str,
    id: Option<u64>,
    data: Option<&[u8]>,
) {
    let mut text = Vec::with_capacity(32 + data.map_or(0, <[u8]>::len));
    sio::write(&mut text, kind, nsp, id, 0, data);
    send_text(cx, s, PacketType::Message, &text);
}

/// Emits `name(args...)` (raw JSON args), binary objects as attachments.
pub(super) fn emit<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    id: Option<u64>,
    ack: bool,
    name: &str,
    args: &[&str],
) {
    let mut data = Vec::with_capacity(64);
    if ack {
        data.push(b'[');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            data.extend_from_slice(a.as_bytes());
        }
        data.push(b']');
    } else {
        sio::write_event_data(&mut data, name, args);
    }
    let enc = encode_packet(
        if ack { SioType::Ack } else { SioType::Event },
        nsp,
        id,
        std::str::from_utf8(&data).unwrap_or("[]"),
    );
    send_encoded(cx, s, &enc);
}

/// Sends one text packet to the session in `s` (a WebSocket frame, or queued for the
/// next GET).
pub(super) fn send_text<B: Backend>(cx: &mut Core<B>, s: usize, t: PacketType, data: &[u8]) {
    match cx.conns[s].state() {
        State::SioWs => {
            let mut text = Vec::with_capacity(data.len() + 1);
            eio::write_text(&mut text, t, data);
            send_frame(cx, s, OpCode::Text, &text);
        }
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                eio::write_text(&mut session.r().queue, t, data);
                flush(cx, s);
            }
        }
        _ => {}
    }
}

pub(super) fn send_encoded<B: Backend>(cx: &mut Core<B>, s: usize, enc: &Encoded) {
    match cx.conns[s].state() {
        State::SioWs => cx.send(s, &[Part::Shared(&enc.ws)]),
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                session.r().queue.extend_from_slice(&enc.poll);
                flush(cx, s);
            }
        }
        _ => {}
    }
}
