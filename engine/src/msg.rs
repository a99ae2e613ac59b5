//! One published message (or channel event) and its lazily encoded wire forms.
//!
//! A message is encoded into each wire form at most once, the first time a worker needs
//! that form ([`Msg::ws_frame`], [`Msg::sse_event`], ...), and the encoding is shared by
//! reference (`bytes::Bytes`) by every subscriber on every worker. The permessage-deflate
//! frame ([`Msg::ws_frame_for`]) is made once per server window size that a subscriber
//! negotiated (in practice one: 15 bits), since no context is taken over from message to
//! message.

use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use protocol::message::{self, JsonStyle, Message};
use protocol::ws::{deflate, OpCode};

use crate::epoch::Epoch;
use crate::limits::DEFLATE_MIN_BYTES;

/// A channel's identity: slab slot and generation, so that a reclaimed and reused slot
/// never receives deliveries meant for the channel that had it before.
pub type ChanKey = u64;

/// What a delivered message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    /// A published message.
    Data,
    /// The channel was closed by the server; subscribers are unsubscribed.
    Close,
    /// Messages `from..=seq` were missed and are no longer buffered (a cluster node that
    /// lost its feed and could not fill everything in).
    Gap,
    /// The channel's stream started again under a new epoch (a cluster node learning
    /// that Redis lost the channel): subscribers are told, and their cursors restart.
    Reset,
}

/// A sequenced message, shared by reference with every worker.
#[derive(Debug)]
pub struct Msg {
    /// The channel's key.
    pub key: ChanKey,
    /// The channel's name.
    pub channel: Arc<str>,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Seq in the channel (for `Close`, the channel's last seq; for `Gap`, the last
    /// missed seq; for `Reset`, the new stream's last seq before what follows).
    pub seq: u64,
    /// For `Gap`: the first missed seq.
    pub from: u64,
    /// Data or close.
    pub kind: MsgKind,
    /// Who published it (a client's token `sub`, the envelope's `from`; empty for
    /// backends) and, after [`META_SEP`], the event it was published as (see [`meta`]).
    /// One string, so that every path that stores or carries a sender (history, the
    /// disk store, Redis) carries the event with it.
    pub sender: Box<str>,
    /// The published body.
    pub content: Box<str>,
    /// When the message was made (sequenced): the start of the fan-out latency.
    pub sequenced: Instant,
    json: OnceLock<Bytes>,
    script: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
    /// The compressed WebSocket frames, by server window bits (9-15); allocated when a
    /// subscriber with permessage-deflate first needs one.
    ws_deflate: OnceLock<Box<[OnceLock<Bytes>; 7]>>,
    sse_with_id: OnceLock<Bytes>,
    sse_data: OnceLock<Bytes>,
    ndjson: OnceLock<Bytes>,
    socketio: OnceLock<crate::transport::socketio::Encoded>,
}

/// Separates a message's sender from its event in [`Msg::sender`] (a control character
/// no sender carries: `sub` claims with one are refused).
pub const META_SEP: char = '\x1f';

/// What a message's content is, for the clients that receive it as event arguments
/// (Socket.IO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Text: one string argument.
    Text,
    /// A JSON value: one argument, that value.
    Json,
    /// A JSON array: its elements are the arguments.
    Args,
}

impl Body {
    fn tag(self) -> char {
        match self {
            Body::Text => 't',
            Body::Json => 'j',
            Body::Args => 'a',
        }
    }

    fn of_tag(c: char) -> Option<Body> {
        Some(match c {
            't' => Body::Text,
            'j' => Body::Json,
            'a' => Body::Args,
            _ => return None,
        })
    }
}

/// A message's sender, event and body kind as one string (what [`Msg::sender`] holds):
/// the sender alone for a plain text message without an event.
pub fn meta(sender: &str, event: &str, body: Body) -> Box<str> {
    if event.is_empty() && body == Body::Text {
        return sender.into();
    }
    let mut s = String::with_capacity(sender.len() + event.len() + 2);
    s.push_str(sender);
    s.push(META_SEP);
    s.push(body.tag());
    s.push_str(event);
    s.into()
}

impl Msg {
    /// A new message (not yet encoded in any form).
    pub fn new(
        key: ChanKey,
        channel: Arc<str>,
        epoch: Epoch,
        seq: u64,
        kind: MsgKind,
        content: Box<str>,
    ) -> Msg {
        Msg {
            key,
            channel,
            epoch,
            seq,
            from: 0,
            kind,
            sender: Box::default(),
            content,
            sequenced: Instant::now(),
            json: OnceLock::new(),
            script: OnceLock::new(),
            ws: OnceLock::new(),
            ws_deflate: OnceLock::new(),
            sse_with_id: OnceLock::new(),
            sse_data: OnceLock::new(),
            ndjson: OnceLock::new(),
            socketio: OnceLock::new(),
        }
    }

    /// Who published it (a client's `sub`; empty for backends).
    pub fn from(&self) -> &str {
        self.sender.split(META_SEP).next().unwrap_or("")
    }

    /// The event it was published as (empty: none) and what its content is.
    pub fn event(&self) -> (&str, Body) {
        match self.sender.split_once(META_SEP) {
            Some((_, rest)) => {
                let mut chars = rest.chars();
                let body = chars.next().and_then(Body::of_tag).unwrap_or(Body::Text);
                (chars.as_str(), body)
            }
            None => ("", Body::Text),
        }
    }

    /// The Socket.IO packets of this message for the first namespace that asked (see
    /// [`crate::transport::socketio::Encoded`]).
    pub fn socketio_cache(&self) -> &OnceLock<crate::transport::socketio::Encoded> {
        &self.socketio
    }

    /// The message, published by `sender` (a client's `sub`).
    pub fn with_sender(mut self, sender: Box<str>) -> Msg {
        self.sender = sender;
        self
    }

    /// A `Gap` for `from..=to`.
    pub fn gap(key: ChanKey, channel: Arc<str>, epoch: Epoch, from: u64, to: u64) -> Msg {
        let mut m = Msg::new(key, channel, epoch, to, MsgKind::Gap, "".into());
        m.from = from;
        m
    }

    /// The envelope of this message.
    pub fn envelope(&self) -> Message<'_> {
        match self.kind {
            MsgKind::Data => Message::Data {
                channel: &self.channel,
                seq: self.seq,
                epoch: self.epoch.as_str(),
                from: self.from(),
                event: self.event().0,
                content: &self.content,
                json: self.event().1 != Body::Text,
            },
            MsgKind::Close => Message::Close {
                channel: &self.channel,
            },
            MsgKind::Gap => Message::Gap {
                channel: &self.channel,
                from: self.from,
                to: self.seq,
            },
            MsgKind::Reset => Message::Reset {
                channel: &self.channel,
                epoch: self.epoch.as_str(),
                seq: self.seq,
            },
        }
    }

    /// Plain JSON.
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(self.envelope().to_json()))
    }

    /// JSON for a `<script>` context.
    pub fn script_json(&self) -> &Bytes {
        self.script.get_or_init(|| {
            let mut out = Vec::with_capacity(self.content.len() + 64);
            message::write_json(&mut out, &self.envelope(), JsonStyle::Script);
            Bytes::from(out)
        })
    }

    /// A WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 10);
            message::write_ws_frame(&mut out, self.json());
            Bytes::from(out)
        })
    }

    /// The WebSocket frame for a subscriber whose permessage-deflate is `deflate` (its
    /// server window bits, or `None`): compressed (RSV1) when the extension is on and the
    /// JSON is at least [`DEFLATE_MIN_BYTES`] and shrinks, else the plain frame.
    pub fn ws_frame_for(&self, deflate: Option<u8>) -> &Bytes {
        let Some(bits) = deflate else {
            return self.ws_frame();
        };
        let json = self.json();
        if json.len() < DEFLATE_MIN_BYTES {
            return self.ws_frame();
        }
        // A message no longer than the window has no back-reference past it, so its
        // 15-bit compression is valid for every window: one frame for all.
        let bits = if json.len() <= 1usize << bits {
            deflate::MAX_WINDOW_BITS
        } else {
            bits.clamp(deflate::MIN_WINDOW_BITS, deflate::MAX_WINDOW_BITS)
        };
        let forms = self.ws_deflate.get_or_init(Default::default);
        forms[usize::from(bits - deflate::MIN_WINDOW_BITS)].get_or_init(|| {
            crate::transport::ws::deflated_frame(OpCode::Text, json, bits)
                .map_or_else(|| self.ws_frame().clone(), Bytes::from)
        })
    }

    /// An SSE event with `id: channel:seq@epoch` (the cursor of a one-channel connection).
    pub fn sse_event(&self) -> &Bytes {
        self.sse_with_id.get_or_init(|| {
            let mut id = Vec::with_capacity(self.channel.len() + 40);
            protocol::cursor::write_cursor(
                &mut id,
                [(&*self.channel, self.seq, self.epoch.as_str())],
            );
            let id = String::from_utf8(id).expect("channel names, digits and epochs are ASCII");
            let mut out = Vec::with_capacity(self.json().len() + id.len() + 16);
            message::write_sse_event(&mut out, Some(&id), self.json());
            Bytes::from(out)
        })
    }

    /// An SSE event without `id:` (a multi-channel connection writes its own id line).
    pub fn sse_data(&self) -> &Bytes {
        self.sse_data.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 10);
            message::write_sse_event(&mut out, None, self.json());
            Bytes::from(out)
        })
    }

    /// An NDJSON line as an HTTP chunk.
    pub fn ndjson_chunk(&self) -> &Bytes {
        self.ndjson.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json().len() + 12);
            message::write_ndjson_chunk(&mut out, self.json());
            Bytes::from(out)
        })
    }
}

/// A complete HTTP answer carrying an error envelope, for a connection that is closed
/// after it (`Connection: close`): what a refused connection is sent.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let mut body = Message::Error {
        code: status,
        reason,
    }
    .to_json();
    body.push(b'\n');
    let mut out = Vec::with_capacity(160 + body.len());
    let headers = [("Content-Type", "application/json")];
    protocol::http::write_response(&mut out, status, &headers, &body, false);
    out
}

/// A message's sender and content as one stored string (Redis history and feed, the
/// disk store): `<sender length>:<sender><content>`.
pub fn pack(sender: &str, content: &str) -> String {
    let mut s = String::with_capacity(sender.len() + content.len() + 4);
    s.push_str(&sender.len().to_string());
    s.push(':');
    s.push_str(sender);
    s.push_str(content);
    s
}

/// Splits what [`pack`] made into sender and content; something else is all content.
pub fn unpack(s: &str) -> (&str, &str) {
    let split = s.split_once(':').and_then(|(len, rest)| {
        let n: usize = len.parse().ok().filter(|_| len.len() <= 3)?;
        rest.is_char_boundary(n).then(|| rest.split_at(n))
    });
    split.unwrap_or(("", s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_made_once_and_agree() {
        let e = Epoch::parse("e1").unwrap();
        let m = Msg::new(
            1,
            Arc::from("news"),
            e,
            7,
            MsgKind::Data,
            "hi</script>".into(),
        );
        let a = m.ws_frame().clone();
        let b = m.ws_frame().clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not re-encoded");
        assert_eq!(
            &m.json()[..],
            br#"{"type":"data","channel":"news","seq":7,"epoch":"e1","content":"hi</script>"}"#
        );
        assert!(m.sse_event().starts_with(b"id: news:7@e1\ndata: {"));
        assert!(m.sse_data().starts_with(b"data: {"));
        assert!(!m.script_json().windows(2).any(|w| w == b"</"));
        assert!(m.ndjson_chunk().ends_with(b"}\n\r\n"));
    }

    #[test]
    fn deflated_frames_are_made_once_per_window_and_shared() {
        let e = Epoch::parse("e1").unwrap();
        let small = Msg::new(1, Arc::from("news"), e, 1, MsgKind::Data, "hi".into());
        assert_eq!(
            small.ws_frame_for(Some(15)).as_ptr(),
            small.ws_frame().as_ptr(),
            "under DEFLATE_MIN_BYTES: the plain frame"
        );
        let text = "the quick brown fox jumps over the lazy dog; ".repeat(40);
        let m = Msg::new(1, Arc::from("news"), e, 2, MsgKind::Data, text.into());
        assert_eq!(m.ws_frame_for(None).as_ptr(), m.ws_frame().as_ptr());
        let z = m.ws_frame_for(Some(15)).clone();
        assert_eq!(z[0], 0xC1, "FIN, RSV1, text");
        assert!(z.len() < m.ws_frame().len() / 4);
        assert_eq!(z.as_ptr(), m.ws_frame_for(Some(15)).as_ptr(), "made once");
        // 1.8 KB of JSON: windows of 2 KiB and more share the 15-bit frame.
        assert_eq!(z.as_ptr(), m.ws_frame_for(Some(11)).as_ptr());
        let z9 = m.ws_frame_for(Some(9)).clone();
        assert_ne!(z9.as_ptr(), z.as_ptr(), "a 512-byte window: its own frame");
        for frame in [&z, &z9] {
            let mut d = deflate::inflater();
            let mut out = Vec::new();
            let header = if frame[1] & 0x7f == 126 { 4 } else { 2 };
            let payload = &frame[header..];
            deflate::inflate(&mut d, payload, 1 << 20, &mut out).unwrap();
            assert_eq!(&out[..], &m.json()[..]);
        }
    }

    #[test]
    fn senders_are_packed_with_the_content() {
        for (sender, content) in [("", "x"), ("bob", "hi: there"), ("é:1", ""), ("", "12:ab")] {
            assert_eq!(unpack(&pack(sender, content)), (sender, content));
        }
        assert_eq!(unpack("not packed"), ("", "not packed"));
        assert_eq!(unpack("99:short"), ("", "99:short"));
        let e = Epoch::parse("e1").unwrap();
        let m =
            Msg::new(1, Arc::from("c"), e, 1, MsgKind::Data, "hi".into()).with_sender("bob".into());
        assert_eq!(
            &m.json()[..],
            br#"{"type":"data","channel":"c","seq":1,"epoch":"e1","from":"bob","content":"hi"}"#
        );
    }

    #[test]
    fn events_ride_with_the_sender() {
        let e = Epoch::parse("e1").unwrap();
        let m = Msg::new(1, Arc::from("c"), e, 1, MsgKind::Data, "[1,2]".into()).with_sender(meta(
            "bob",
            "chat",
            Body::Args,
        ));
        assert_eq!(m.from(), "bob");
        assert_eq!(m.event(), ("chat", Body::Args));
        assert_eq!(
            &m.json()[..],
            br#"{"type":"data","channel":"c","seq":1,"epoch":"e1","from":"bob","event":"chat","content":[1,2]}"#
        );
        let plain = Msg::new(1, Arc::from("c"), e, 2, MsgKind::Data, "x".into()).with_sender(meta(
            "",
            "",
            Body::Text,
        ));
        assert_eq!((plain.from(), plain.event()), ("", ("", Body::Text)));
        assert_eq!(&*meta("", "", Body::Json), "\x1fj");
        let packed = pack(&meta("", "news", Body::Json), "{}");
        assert_eq!(unpack(&packed), ("\x1fjnews", "{}"));
    }

    #[test]
    fn gaps_and_resets() {
        let e = Epoch::parse("e2").unwrap();
        let g = Msg::gap(1, Arc::from("c"), e, 2, 7);
        assert_eq!(
            &g.json()[..],
            br#"{"type":"gap","channel":"c","from":2,"to":7}"#
        );
        let r = Msg::new(1, Arc::from("c"), e, 0, MsgKind::Reset, "".into());
        assert_eq!(
            &r.json()[..],
            br#"{"type":"reset","channel":"c","epoch":"e2","seq":0}"#
        );
    }
}
