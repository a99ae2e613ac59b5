//! Socket.IO v4 over WebSocket: Engine.IO v4 (`GET PATH?EIO=4&transport=websocket`, the
//! WebSocket handshake of `ws`), one Engine.IO packet per WebSocket text message:
//!
//! - `0{"sid":..,"pingInterval":..,..}` OPEN: the client sends the Socket.IO CONNECT of
//!   [`Request::connect`] (`40{"channels":["ch0"]}`, `40/chat1,{"channels":["ch0"]}`);
//! - `2` PING (every pingInterval): answered `3` PONG (with the ping's payload, if any);
//! - `1` CLOSE: the subscription ends (`eio_close`); `3`, `5` UPGRADE, `6` NOOP: nothing;
//! - `4` MESSAGE carrying a Socket.IO packet: type, `N-` attachments (binary packets),
//!   `/nsp,` (not for the main namespace), ack id, JSON payload. Packets of other
//!   namespaces are not ours (events count as foreign). Of ours:
//!   - `0` CONNECT: the subscription is up;
//!   - `4` CONNECT_ERROR `{"message":..,"data":{"code":N}}`: fails (`connect_error_N`);
//!   - `1` DISCONNECT: ends it (`sio_disconnect`);
//!   - `2` EVENT `["message",CONTENT(,OFFSET)]`: data, CONTENT (a JSON string: the
//!     published text) the content; with pushedge's connection state recovery the last
//!     argument OFFSET (`SEQ@EPOCH/CHANNEL`) gives the seq. pushedge's `gap`
//!     `{room,from,to}` is a gap and `close` `{room}` the channel's close; other events
//!     (and `message` with a non-string argument) are foreign. An event with an ack id
//!     is acknowledged (`43[/nsp,]ID[]`);
//!   - `5` BINARY_EVENT: foreign, and its attachments (the next binary WebSocket
//!     messages) are skipped; `6` BINARY_ACK: its attachments skipped; `3` ACK: nothing.
//!
//! WebSocket pings and close frames are handled as for plain WebSocket. Nothing is
//! allocated per message beyond what the plain WebSocket client does: the event is parsed
//! in place, and only a content with JSON escapes is copied (unescaped).

use std::borrow::Cow;
use std::fmt;

use protocol::ws::mask::apply_mask;
use protocol::ws::{frame_len, write_frame_header, DataKind, Decoder, OpCode};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::ws::{mask, messages};
use super::{Event, Failure, Request};

/// Longest namespace accepted by [`check_namespace`].
pub const MAX_NAMESPACE: usize = 256;

/// The Socket.IO CONNECT packet (as an Engine.IO MESSAGE) for `room` of `namespace`
/// (`/` is the main namespace): `40{"channels":["ROOM"]}` or
/// `40/chat1,{"channels":["ROOM"]}`.
pub fn connect_packet(namespace: &str, room: &str) -> String {
    let room = serde_json::to_string(room).expect("strings always serialize");
    if namespace == "/" {
        format!("40{{\"channels\":[{room}]}}")
    } else {
        format!("40{namespace},{{\"channels\":[{room}]}}")
    }
}

/// Checks a namespace: `/`, or `/` and printable ASCII without `,` (at most
/// [`MAX_NAMESPACE`] bytes).
pub fn check_namespace(nsp: &str) -> Result<(), String> {
    let ok = nsp.starts_with('/')
        && nsp.len() <= MAX_NAMESPACE
        && nsp.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace {nsp:?} must start with '/' and be at most {MAX_NAMESPACE} printable ASCII bytes without ','"
        ))
    }
}

/// The namespace a CONNECT packet (from [`connect_packet`]) is for: `/chat1`, or `/`.
fn namespace_of(connect: &str) -> &[u8] {
    let rest = connect.as_bytes().get(2..).unwrap_or_default();
    if rest.first() == Some(&b'/') {
        let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        &rest[..end]
    } else {
        b"/"
    }
}

/// Where the Socket.IO session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the Engine.IO OPEN.
    Open,
    /// CONNECT sent, waiting for its answer.
    Connecting,
    /// Connected to the namespace: the subscription is up.
    Connected,
}

/// One Socket.IO connection's state after the 101.
#[derive(Debug)]
pub(super) struct Sio {
    decoder: Decoder,
    phase: Phase,
    /// Binary attachments still to come (of a BINARY_EVENT or BINARY_ACK).
    attachments: u32,
}

impl Sio {
    pub(super) fn new() -> Sio {
        Sio {
            decoder: Decoder::new(),
            phase: Phase::Open,
            attachments: 0,
        }
    }

    /// True once the namespace's CONNECT was answered.
    pub(super) fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Bytes held for an unfinished frame or message.
    pub(super) fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Decodes frames from `input`: Engine.IO packets in text messages, attachments in
    /// binary ones.
    pub(super) fn frames(
        &mut self,
        input: &mut [u8],
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        let Sio {
            decoder,
            phase,
            attachments,
        } = self;
        messages(decoder, input, out, |kind, data, out| match kind {
            DataKind::Text => engine_packet(phase, attachments, data, req, out, sink),
            DataKind::Binary => {
                if *attachments > 0 {
                    *attachments -= 1;
                } else {
                    sink(Event::Foreign);
                }
                Ok(())
            }
        })
    }
}

/// One Engine.IO packet.
fn engine_packet(
    phase: &mut Phase,
    attachments: &mut u32,
    data: &[u8],
    req: Request<'_>,
    out: &mut Vec<u8>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let Some((&ty, rest)) = data.split_first() else {
        return Err(Failure::BadResponse("empty Engine.IO packet"));
    };
    match ty {
        b'0' => {
            if *phase == Phase::Open {
                if rest.first() != Some(&b'{') {
                    return Err(Failure::BadResponse("Engine.IO OPEN without its JSON"));
                }
                text_frame(out, &[req.connect.as_bytes()]);
                *phase = Phase::Connecting;
            }
            Ok(())
        }
        b'1' => Err(Failure::EioClose),
        b'2' => {
            text_frame(out, &[b"3", rest]);
            Ok(())
        }
        b'3' | b'5' | b'6' => Ok(()),
        b'4' => socket_packet(phase, attachments, rest, req, out, sink),
        _ => Err(Failure::BadResponse("unknown Engine.IO packet type")),
    }
}

/// A Socket.IO packet, split (see [`parse_packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packet<'a> {
    /// `0` CONNECT .. `6` BINARY_ACK (the ASCII digit).
    ty: u8,
    /// Binary attachments (BINARY_EVENT, BINARY_ACK).
    attachments: u32,
    /// The namespace (`/` when none is written).
    nsp: &'a [u8],
    /// The ack id's digits (empty: none).
    ack: &'a [u8],
    /// The JSON payload (possibly empty).
    payload: &'a [u8],
}

/// Splits a Socket.IO packet: `TYPE[N-][/nsp,][ID][JSON]`.
fn parse_packet(p: &[u8]) -> Result<Packet<'_>, Failure> {
    const BAD: Failure = Failure::BadResponse("malformed Socket.IO packet");
    let (&ty, mut rest) = p.split_first().ok_or(BAD)?;
    if !(b'0'..=b'6').contains(&ty) {
        return Err(BAD);
    }
    let mut attachments = 0;
    if ty == b'5' || ty == b'6' {
        let dash = rest.iter().position(|&b| b == b'-').ok_or(BAD)?;
        attachments = std::str::from_utf8(&rest[..dash])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BAD)?;
        rest = &rest[dash + 1..];
    }
    let mut nsp: &[u8] = b"/";
    if rest.first() == Some(&b'/') {
        let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (ack, payload) = rest.split_at(digits);
    Ok(Packet {
        ty,
        attachments,
        nsp,
        ack,
        payload,
    })
}

/// One Socket.IO packet (the payload of an Engine.IO MESSAGE).
fn socket_packet(
    phase: &mut Phase,
    attachments: &mut u32,
    data: &[u8],
    req: Request<'_>,
    out: &mut Vec<u8>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let p = parse_packet(data)?;
    let ours = p.nsp == namespace_of(req.connect);
    if p.ty == b'5' || p.ty == b'6' {
        *attachments = p.attachments;
    }
    if !ours {
        if p.ty == b'2' || p.ty == b'5' {
            sink(Event::Foreign);
        }
        return Ok(());
    }
    match p.ty {
        b'0' => {
            if *phase == Phase::Connecting {
                *phase = Phase::Connected;
                sink(Event::Established);
            }
            Ok(())
        }
        b'1' => Err(Failure::SioDisconnect),
        b'4' => Err(Failure::ConnectError(connect_error_code(p.payload))),
        b'2' | b'5' => {
            if !p.ack.is_empty() {
                let nsp: &[u8] = if p.nsp == b"/" { b"" } else { p.nsp };
                let comma: &[u8] = if nsp.is_empty() { b"" } else { b"," };
                text_frame(out, &[b"43", nsp, comma, p.ack, b"[]"]);
            }
            if p.ty == b'5' {
                sink(Event::Foreign);
                return Ok(());
            }
            event(p.payload, sink)
        }
        _ => Ok(()),
    }
}

/// The `data.code` of a CONNECT_ERROR payload (0: none).
fn connect_error_code(payload: &[u8]) -> u16 {
    #[derive(Deserialize)]
    struct Err {
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        code: Option<u16>,
    }
    serde_json::from_slice::<Err>(payload)
        .ok()
        .and_then(|e| e.data)
        .and_then(|d| d.code)
        .unwrap_or(0)
}

/// An EVENT's arguments array.
fn event(payload: &[u8], sink: &mut dyn FnMut(Event<'_>)) -> Result<(), Failure> {
    match serde_json::from_slice::<Args<'_>>(payload) {
        Ok(Args::Message { content, offset }) => sink(Event::Data {
            seq: offset.as_deref().and_then(offset_seq),
            content: content.as_bytes(),
        }),
        Ok(Args::Gap { from, to }) => sink(Event::Gap { from, to }),
        Ok(Args::Close) => return Err(Failure::ChannelClosed),
        Ok(Args::Other) | Err(_) => sink(Event::Foreign),
    }
    Ok(())
}

/// The seq of a recovery offset `SEQ@EPOCH/CHANNEL`.
fn offset_seq(offset: &str) -> Option<u64> {
    offset.split_once('@')?.0.parse().ok()
}

/// A JSON string, borrowed from the input when it has no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The arguments of an EVENT, as far as loadgen looks at them.
#[derive(Debug, PartialEq, Eq)]
enum Args<'a> {
    /// `["message", CONTENT(, OFFSET)]`.
    Message {
        content: Cow<'a, str>,
        offset: Option<Cow<'a, str>>,
    },
    /// pushedge `["gap", {"room":R,"from":F,"to":T}]`.
    Gap { from: u64, to: u64 },
    /// pushedge `["close", {"room":R}]`.
    Close,
    /// Any other event.
    Other,
}

impl<'de> Deserialize<'de> for Args<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ArgsVisitor)
    }
}

struct ArgsVisitor;

impl<'de> Visitor<'de> for ArgsVisitor {
    type Value = Args<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Socket.IO event: [name, args...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args<'de>, A::Error> {
        #[derive(Deserialize)]
        struct GapArg {
            from: Option<u64>,
            to: Option<u64>,
        }
        let Some(Str(name)) = seq.next_element::<Str<'de>>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let args = match name.as_ref() {
            "message" => match seq.next_element::<Str<'de>>()? {
                Some(Str(content)) => {
                    let offset = seq.next_element::<Option<Str<'de>>>()?.flatten();
                    Args::Message {
                        content,
                        offset: offset.map(|s| s.0),
                    }
                }
                None => Args::Other,
            },
            "gap" => match seq.next_element::<GapArg>()? {
                Some(g) => Args::Gap {
                    from: g.from.unwrap_or(0),
                    to: g.to.unwrap_or(0),
                },
                None => Args::Other,
            },
            "close" => Args::Close,
            _ => Args::Other,
        };
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(args)
    }
}

/// Appends a masked text frame whose payload is `parts` one after the other.
fn text_frame(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    let m = mask();
    out.reserve(frame_len(len, true));
    write_frame_header(out, true, OpCode::Text, len, Some(m));
    let start = out.len();
    for p in parts {
        out.extend_from_slice(p);
    }
    apply_mask(&mut out[start..], m, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packets_and_namespaces() {
        assert_eq!(connect_packet("/", "bench"), r#"40{"channels":["bench"]}"#);
        assert_eq!(
            connect_packet("/chat1", "lob\"by"),
            r#"40/chat1,{"channels":["lob\"by"]}"#
        );
        assert_eq!(namespace_of(&connect_packet("/", "a")), b"/");
        assert_eq!(namespace_of(&connect_packet("/chat1", "a")), b"/chat1");
        assert!(check_namespace("/").is_ok());
        assert!(check_namespace("/chat1").is_ok());
        for bad in ["", "chat", "/a,b", "/a b", &format!("/{}", "x".repeat(256))] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn packets_split() {
        let p = parse_packet(br#"2["message","x"]"#).unwrap();
        assert_eq!((p.ty, p.nsp, p.ack), (b'2', &b"/"[..], &b""[..]));
        assert_eq!(p.payload, br#"["message","x"]"#);
        let p = parse_packet(br#"2/chat1,17["message","x"]"#).unwrap();
        assert_eq!((p.nsp, p.ack), (&b"/chat1"[..], &b"17"[..]));
        assert_eq!(p.payload, br#"["message","x"]"#);
        let p = parse_packet(br#"51-/chat1,["m",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.ty, p.attachments, p.nsp), (b'5', 1, &b"/chat1"[..]));
        let p = parse_packet(b"0/chat1,").unwrap();
        assert_eq!((p.ty, p.nsp, p.payload), (b'0', &b"/chat1"[..], &b""[..]));
        let p = parse_packet(b"1").unwrap();
        assert_eq!((p.ty, p.nsp, p.payload), (b'1', &b"/"[..], &b""[..]));
        assert!(parse_packet(b"").is_err());
        assert!(parse_packet(b"9").is_err());
        assert!(parse_packet(b"5x[]").is_err());
    }

    #[test]
    fn event_arguments() {
        let a: Args<'_> = serde_json::from_slice(br#"["message","plain"]"#).unwrap();
        assert_eq!(
            a,
            Args::Message {
                content: Cow::Borrowed("plain"),
                offset: None
            }
        );
        let a: Args<'_> =
            serde_json::from_slice(br#"["message","{\"t\":5,\"i\":1}","12@ep/ch0"]"#).unwrap();
        let Args::Message { content, offset } = a else {
            panic!("{a:?}")
        };
        assert_eq!(content, r#"{"t":5,"i":1}"#);
        assert_eq!(offset.as_deref().and_then(offset_seq), Some(12));
        let a: Args<'_> =
            serde_json::from_slice(br#"["gap",{"room":"r","from":3,"to":9}]"#).unwrap();
        assert_eq!(a, Args::Gap { from: 3, to: 9 });
        let a: Args<'_> = serde_json::from_slice(br#"["close",{"room":"r"}]"#).unwrap();
        assert_eq!(a, Args::Close);
        let a: Args<'_> = serde_json::from_slice(br#"["news","x",[1,{"a":2}]]"#).unwrap();
        assert_eq!(a, Args::Other);
        let a: Args<'_> = serde_json::from_slice(br#"["message"]"#).unwrap();
        assert_eq!(a, Args::Other);
        assert!(serde_json::from_slice::<Args<'_>>(br#"["message",{"a":1}]"#).is_err());
        assert!(serde_json::from_slice::<Args<'_>>(b"[]").is_err());
        assert!(serde_json::from_slice::<Args<'_>>(br#"{"a":1}"#).is_err());
        assert_eq!(offset_seq("7@e/c"), Some(7));
        assert_eq!(offset_seq("x@e/c"), None);
        assert_eq!(
            connect_error_code(br#"{"message":"no","data":{"code":403}}"#),
            403
        );
        assert_eq!(connect_error_code(br#"{"message":"Invalid namespace"}"#), 0);
    }
}
