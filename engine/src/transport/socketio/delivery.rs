//! Published messages and envelopes to sessions: a message as an event of the
//! receiving namespace, encoded once per namespace ([`Encoded`]); a socket's own room.

use bytes::Bytes;
use std::sync::Arc;

use protocol::engineio::{self as eio, PacketType};
use protocol::message::{self, JsonStyle, Message};
use protocol::socketio::{self as sio, SioType};
use protocol::ws::{self, OpCode};

use crate::metrics::Counter;
use crate::msg::{Body, Msg, MsgKind};
use crate::reactor::Backend;
use crate::worker::Core;

use super::packets::{emit, send_encoded};
use super::rooms::json_str;
use super::session::{own_room_worker, parse_id};
use super::{recovery_on, SID_LEN};

/// A message's packets for one namespace: the WebSocket frames and the polling payload
/// (an event and its attachments each).
#[derive(Debug)]
pub struct Encoded {
    pub(super) nsp: Box<str>,
    pub(super) ws: Bytes,
    pub(super) poll: Bytes,
}

/// Encodes a packet whose data may hold `{"$binary":...}` objects.
pub(super) fn encode_packet(kind: SioType, nsp: &str, id: Option<u64>, data: &str) -> Encoded {
    let (data, atts) = if data.contains("\"$binary\"") {
        sio::extract_binaries(data).unwrap_or_else(|_| (data.to_string(), Vec::new()))
    } else {
        (data.to_string(), Vec::new())
    };
    let kind = match (kind, atts.is_empty()) {
        (SioType::Event, false) => SioType::BinaryEvent,
        (SioType::Ack, false) => SioType::BinaryAck,
        (k, _) => k,
    };
    let mut text = Vec::with_capacity(data.len() + 32);
    text.push(PacketType::Message.as_byte());
    sio::write(
        &mut text,
        kind,
        nsp,
        id,
        atts.len() as u32,
        Some(data.as_bytes()),
    );
    let mut ws_out = Vec::with_capacity(text.len() + 16);
    ws::encode_frame(&mut ws_out, true, OpCode::Text, &text);
    let mut poll = text;
    for a in &atts {
        ws::encode_frame(&mut ws_out, true, OpCode::Binary, a);
        eio::push_separator(&mut poll);
        eio::write_binary_b64(&mut poll, a);
    }
    Encoded {
        nsp: nsp.into(),
        ws: Bytes::from(ws_out),
        poll: Bytes::from(poll),
    }
}

/// A data message as an event of namespace `nsp`.
fn encode_msg(msg: &Msg, nsp: &str, offset: bool) -> Encoded {
    let (event, body) = msg.event();
    let name = if event.is_empty() { "message" } else { event };
    let text_arg;
    let mut args: Vec<&str> = Vec::with_capacity(2);
    let split;
    match body {
        Body::Text => {
            text_arg = json_str(&msg.content);
            args.push(&text_arg);
        }
        Body::Json => args.push(&msg.content),
        Body::Args => {
            split = sio::split_args(&msg.content).unwrap_or_else(|_| vec![msg.content.to_string()]);
            args.extend(split.iter().map(String::as_str));
        }
    }
    let off;
    if offset {
        let mut pos = Vec::with_capacity(msg.channel.len() + 32);
        protocol::cursor::write_position(&mut pos, msg.seq, msg.epoch.as_str());
        pos.push(b'/');
        pos.extend_from_slice(msg.channel.as_bytes());
        off = json_str(std::str::from_utf8(&pos).unwrap_or(""));
        args.push(&off);
    }
    let mut data = Vec::with_capacity(msg.content.len() + 48);
    sio::write_event_data(&mut data, name, &args);
    encode_packet(
        SioType::Event,
        nsp,
        None,
        std::str::from_utf8(&data).unwrap_or("[]"),
    )
}

/// Delivers one message (its cursor already advanced) to session `s`.
pub fn deliver<B: Backend>(cx: &mut Core<B>, s: usize, msg: &Arc<Msg>) {
    if msg.kind != MsgKind::Data {
        let env = msg.envelope();
        return envelope(cx, s, &env);
    }
    let Some(nsp) = cx
        .sio
        .session(s)
        .and_then(|x| x.nsp_of(&msg.channel))
        .map(|n| n.name.clone())
    else {
        return;
    };
    let offset = recovery_on(cx);
    let cache = msg.socketio_cache();
    let cached = cache.get_or_init(|| encode_msg(msg, &nsp, offset));
    if cached.nsp == nsp {
        send_encoded(cx, s, cached);
    } else {
        let enc = encode_msg(msg, &nsp, offset);
        send_encoded(cx, s, &enc);
    }
}

/// A message for a socket's own room (no subscription: the socket id names the worker).
pub fn deliver_direct<B: Backend>(cx: &mut Core<B>, msg: &Arc<Msg>) {
    if msg.kind != MsgKind::Data || !cx.shared.cfg.socketio_own_room {
        return;
    }
    let id = &msg.channel[msg.channel.len() - SID_LEN..];
    let Some(parts) = parse_id(id) else {
        return;
    };
    if parts.worker != cx.id || !cx.conns.alive(parts.token) {
        return;
    }
    let s = parts.token.slot();
    let prefix = &msg.channel[..msg.channel.len() - SID_LEN];
    let nsp = cx.sio.session(s).and_then(|x| {
        x.nsps
            .iter()
            .find(|n| n.sid.as_str() == id && &*n.prefix == prefix)
            .map(|n| n.name.clone())
    });
    let Some(nsp) = nsp else {
        return;
    };
    if cx
        .index
        .by_name(cx.conns[s].subs.as_slice(), &msg.channel)
        .is_some()
    {
        // Subscribed to it as well (a recovered socket): delivered through that.
        return;
    }
    let enc = encode_msg(msg, &nsp, recovery_on(cx));
    send_encoded(cx, s, &enc);
    cx.stats.inc(Counter::Delivered);
}

/// True for a channel that may be a socket's own room.
pub fn is_own_room(channel: &str) -> bool {
    channel.len() >= SID_LEN && own_room_worker(channel, usize::MAX).is_some()
}

/// An envelope (gap, reset, close, refresh, error) as an event named by its type, with
/// the envelope as its argument, to the namespace of its channel.
pub fn envelope<B: Backend>(cx: &mut Core<B>, s: usize, msg: &Message<'_>) {
    let channel = match msg {
        Message::Gap { channel, .. }
        | Message::Reset { channel, .. }
        | Message::Close { channel } => Some(*channel),
        _ => None,
    };
    let Some(session) = cx.sio.session(s) else {
        return;
    };
    let nsp = match channel {
        Some(c) => session.nsp_of(c),
        None => session.nsps.first(),
    };
    let Some(nsp) = nsp.map(|n| n.name.clone()) else {
        return;
    };
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Plain);
    let arg = String::from_utf8(json).unwrap_or_default();
    emit(cx, s, &nsp, None, false, msg.type_name(), &[&arg]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::Epoch;
    use crate::msg::meta;

    #[test]
    fn a_message_is_an_event_with_its_arguments() {
        let e = Epoch::parse("e1").unwrap();
        let m = |content: &str, ev: &str, body: Body| {
            Msg::new(
                1,
                Arc::from("chat1.lobby"),
                e,
                3,
                MsgKind::Data,
                content.into(),
            )
            .with_sender(meta("", ev, body))
        };
        let enc = encode_msg(&m("hi \"you\"", "", Body::Text), "/chat1", false);
        assert_eq!(&enc.poll[..], br#"42/chat1,["message","hi \"you\""]"#);
        let enc = encode_msg(&m(r#"{"a":1}"#, "news", Body::Json), "/", true);
        assert_eq!(&enc.poll[..], br#"42["news",{"a":1},"3@e1/chat1.lobby"]"#);
        let enc = encode_msg(&m(r#"[1,"2"]"#, "chat", Body::Args), "/", false);
        assert_eq!(&enc.poll[..], br#"42["chat",1,"2"]"#);
        let enc = encode_msg(&m(r#"{"$binary":"AQID"}"#, "", Body::Json), "/", false);
        assert_eq!(
            &enc.poll[..],
            b"451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID"
        );
        // Over WebSocket: the text frame, then the attachment as a binary frame.
        assert_eq!(enc.ws[0], 0x81);
        assert_eq!(*enc.ws.last().unwrap(), 3);
    }
}
