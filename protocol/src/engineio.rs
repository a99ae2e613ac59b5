//! Engine.IO protocol version 4: packets, polling payloads, the open packet and the HTTP
//! error body.
//!
//! Engine.IO is the transport layer under Socket.IO (see [`crate::socketio`]). A packet is
//! a type digit and an optional payload:
//!
//! | type    | digit | use                                                  |
//! |---------|-------|------------------------------------------------------|
//! | open    | `0`   | the server's handshake answer (JSON, [`write_open`]) |
//! | close   | `1`   | the transport may be closed                          |
//! | ping    | `2`   | sent by the server every `pingInterval`              |
//! | pong    | `3`   | the client's answer (`3probe` during an upgrade)     |
//! | message | `4`   | data; a Socket.IO packet rides in one                |
//! | upgrade | `5`   | the client completes a WebSocket upgrade             |
//! | noop    | `6`   | ends a pending poll during an upgrade                |
//!
//! Over WebSocket every packet is one frame: a text frame is `<digit><data>`
//! ([`decode_text`]), a binary frame is a message packet carrying the bytes as they are.
//!
//! Over HTTP long-polling several packets share one body, joined by the record separator
//! `0x1e` ([`SEPARATOR`]): `4hello\x1e2\x1e4world`. Binary data cannot travel as is there:
//! it is written `b` and standard base64 with padding, so `4hello\x1ebAQIDBA==` is the
//! text message `hello` then the bytes `01 02 03 04`. The whole body is UTF-8.
//! [`decode_payload`] splits a request body; [`write_text`], [`write_binary_b64`] and
//! [`push_separator`] build a response body one packet at a time.
//!
//! The decoders take whole messages and bodies (a WebSocket message, a request body read to
//! its end): an empty packet is an error, not "partial".
//!
//! A request the server refuses before a session exists gets a JSON body
//! `{"code":1,"message":"Session ID unknown"}` ([`write_error_json`], [`ErrorCode`]).

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::http::push_decimal;
use crate::message::{write_json_string, JsonStyle};

/// The protocol revision spoken (the `EIO` query parameter).
pub const PROTOCOL: u32 = 4;
/// The record separator between the packets of a polling payload.
pub const SEPARATOR: u8 = 0x1e;
/// The prefix of a base64 binary packet in a polling payload.
pub const BINARY_PREFIX: u8 = b'b';

/// The type of an Engine.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `0`: the handshake answer.
    Open,
    /// `1`: the transport may be closed.
    Close,
    /// `2`: heartbeat request (sent by the server; `2probe` from a client upgrading).
    Ping,
    /// `3`: heartbeat answer.
    Pong,
    /// `4`: data.
    Message,
    /// `5`: the client switches to the WebSocket transport.
    Upgrade,
    /// `6`: nothing (ends a pending poll).
    Noop,
}

impl PacketType {
    /// The type of a type digit (`b'0'..=b'6'`).
    pub fn from_byte(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }

    /// The type digit (`b'0'..=b'6'`).
    pub fn as_byte(self) -> u8 {
        match self {
            PacketType::Open => b'0',
            PacketType::Close => b'1',
            PacketType::Ping => b'2',
            PacketType::Pong => b'3',
            PacketType::Message => b'4',
            PacketType::Upgrade => b'5',
            PacketType::Noop => b'6',
        }
    }
}

/// One decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A text packet: its type and the text after the type digit.
    Text(PacketType, &'a str),
    /// Binary data; always a message packet. Owned when it was base64 in a payload,
    /// borrowed when it is a WebSocket binary frame.
    Binary(Cow<'a, [u8]>),
}

/// Why a packet or payload cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioError {
    /// An empty packet (or an empty body).
    Empty,
    /// The first byte is not a type digit `0`-`6` (nor `b` in a payload).
    BadType,
    /// A `b` packet whose rest is not standard base64 with padding.
    BadBase64,
    /// The payload is not UTF-8.
    NotUtf8,
    /// More packets than the caller allows.
    TooManyPackets,
}

impl EioError {
    /// A short reason, for a 400 body or a log line.
    pub fn reason(&self) -> &'static str {
        match self {
            EioError::Empty => "empty Engine.IO packet",
            EioError::BadType => "unknown Engine.IO packet type",
            EioError::BadBase64 => "invalid base64 in an Engine.IO binary packet",
            EioError::NotUtf8 => "Engine.IO payload is not valid UTF-8",
            EioError::TooManyPackets => "too many packets in an Engine.IO payload",
        }
    }
}

impl fmt::Display for EioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for EioError {}

/// Splits one WebSocket text message into its type and the rest (`4hello` ->
/// `(Message, "hello")`).
pub fn decode_text(s: &str) -> Result<(PacketType, &str), EioError> {
    let first = *s.as_bytes().first().ok_or(EioError::Empty)?;
    let t = PacketType::from_byte(first).ok_or(EioError::BadType)?;
    // The type digit is ASCII, so index 1 is a character boundary.
    Ok((t, &s[1..]))
}

/// Decodes a polling request body: packets separated by [`SEPARATOR`]; a packet starting
/// with `b` is binary data in standard base64 with padding. The whole body must be UTF-8.
/// At most `max_packets` packets (else [`EioError::TooManyPackets`], found before anything
/// is decoded); an empty body or an empty packet is [`EioError::Empty`].
pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet<'_>>, EioError> {
    if body.is_empty() {
        return Err(EioError::Empty);
    }
    let count = body.iter().filter(|&&b| b == SEPARATOR).count() + 1;
    if count > max_packets {
        return Err(EioError::TooManyPackets);
    }
    let text = std::str::from_utf8(body).map_err(|_| EioError::NotUtf8)?;
    let mut packets = Vec::with_capacity(count);
    for part in text.split(char::from(SEPARATOR)) {
        packets.push(decode_payload_packet(part)?);
    }
    Ok(packets)
}

fn decode_payload_packet(part: &str) -> Result<Packet<'_>, EioError> {
    match part.as_bytes().first() {
        None => Err(EioError::Empty),
        Some(&BINARY_PREFIX) => STANDARD
            .decode(&part.as_bytes()[1..])
            .map(|bytes| Packet::Binary(Cow::Owned(bytes)))
            .map_err(|_| EioError::BadBase64),
        Some(_) => decode_text(part).map(|(t, data)| Packet::Text(t, data)),
    }
}

/// Appends one text packet: the type digit, then `data`. `data` must not contain
/// [`SEPARATOR`] when the packet goes into a polling payload.
pub fn write_text(out: &mut Vec<u8>, t: PacketType, data: &[u8]) {
    out.reserve(1 + data.len());
    out.push(t.as_byte());
    out.extend_from_slice(data);
}

/// Appends one binary packet as a polling payload carries it: `b`, then `data` in
/// standard base64 with padding.
pub fn write_binary_b64(out: &mut Vec<u8>, data: &[u8]) {
    out.push(BINARY_PREFIX);
    push_base64(out, data);
}

/// Appends `data` in standard base64 with padding.
pub(crate) fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    // A length that overflows cannot be the length of a slice held in memory.
    let Some(len) = base64::encoded_len(data.len(), true) else {
        return;
    };
    out.resize(start + len, 0);
    match STANDARD.encode_slice(data, &mut out[start..]) {
        Ok(written) => out.truncate(start + written),
        Err(_) => out.truncate(start),
    }
}

/// Appends [`SEPARATOR`] when `out` already holds a packet, so a payload can be built one
/// packet at a time: `push_separator(out); write_text(out, ...)`. `out` must hold nothing
/// but the payload; see [`push_separator_from`] when it starts with something else.
pub fn push_separator(out: &mut Vec<u8>) {
    push_separator_from(out, 0);
}

/// Like [`push_separator`] for a payload that starts at `out[start]` (after an HTTP
/// head, say): appends [`SEPARATOR`] when `out` holds more than `start` bytes.
pub fn push_separator_from(out: &mut Vec<u8>, start: usize) {
    if out.len() > start {
        out.push(SEPARATOR);
    }
}

/// The handshake data of the open packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open<'a> {
    /// The session id, sent back by the client in the `sid` query parameter.
    pub sid: &'a str,
    /// Transports the client may upgrade to (`["websocket"]` on a polling session, `[]`
    /// on a WebSocket one).
    pub upgrades: &'a [&'a str],
    /// How often the server pings, in milliseconds.
    pub ping_interval_ms: u64,
    /// How long the server waits for a pong, in milliseconds.
    pub ping_timeout_ms: u64,
    /// The most bytes a client may put in one polling payload.
    pub max_payload: u64,
}

/// Appends the open packet:
/// `0{"sid":"...","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`
/// (the strings JSON-escaped).
pub fn write_open(out: &mut Vec<u8>, open: &Open<'_>) {
    out.push(PacketType::Open.as_byte());
    out.extend_from_slice(b"{\"sid\":");
    write_json_string(out, open.sid, JsonStyle::Plain);
    out.extend_from_slice(b",\"upgrades\":[");
    for (i, up) in open.upgrades.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, up, JsonStyle::Plain);
    }
    out.extend_from_slice(b"],\"pingInterval\":");
    push_decimal(out, open.ping_interval_ms);
    out.extend_from_slice(b",\"pingTimeout\":");
    push_decimal(out, open.ping_timeout_ms);
    out.extend_from_slice(b",\"maxPayload\":");
    push_decimal(out, open.max_payload);
    out.push(b'}');
}

/// The error codes of an Engine.IO server's HTTP error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `transport` missing or not `polling` / `websocket`.
    TransportUnknown = 0,
    /// `sid` names no session.
    UnknownSid = 1,
    /// A handshake (no `sid`) that is not a GET.
    BadHandshakeMethod = 2,
    /// Anything else wrong with the request.
    BadRequest = 3,
    /// Refused (origin, authentication).
    Forbidden = 4,
    /// `EIO` missing or not [`PROTOCOL`].
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    /// The numeric code (`"code"` in the body).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The message of the reference server (`"message"` in the body).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::TransportUnknown => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The HTTP status to answer with: 403 for [`ErrorCode::Forbidden`], else 400.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Forbidden => 403,
            _ => 400,
        }
    }
}

/// Appends the HTTP error body `{"code":N,"message":"..."}`.
pub fn write_error_json(out: &mut Vec<u8>, code: ErrorCode) {
    out.extend_from_slice(b"{\"code\":");
    push_decimal(out, u64::from(code.code()));
    out.extend_from_slice(b",\"message\":");
    write_json_string(out, code.message(), JsonStyle::Plain);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_TYPES: [PacketType; 7] = [
        PacketType::Open,
        PacketType::Close,
        PacketType::Ping,
        PacketType::Pong,
        PacketType::Message,
        PacketType::Upgrade,
        PacketType::Noop,
    ];

    #[test]
    fn type_digits() {
        for (i, t) in ALL_TYPES.iter().enumerate() {
            let digit = b'0' + i as u8;
            assert_eq!(t.as_byte(), digit);
            assert_eq!(PacketType::from_byte(digit), Some(*t));
        }
        for b in [b'7', b'9', b'b', b'/', 0, 0xff] {
            assert_eq!(PacketType::from_byte(b), None);
        }
    }

    #[test]
    fn text_frames() {
        assert_eq!(decode_text("4hello"), Ok((PacketType::Message, "hello")));
        assert_eq!(decode_text("2probe"), Ok((PacketType::Ping, "probe")));
        assert_eq!(decode_text("3probe"), Ok((PacketType::Pong, "probe")));
        assert_eq!(decode_text("5"), Ok((PacketType::Upgrade, "")));
        assert_eq!(decode_text("4€"), Ok((PacketType::Message, "€")));
        assert_eq!(decode_text(""), Err(EioError::Empty));
        assert_eq!(decode_text("7"), Err(EioError::BadType));
        assert_eq!(decode_text("bAQID"), Err(EioError::BadType));
        assert_eq!(decode_text("€"), Err(EioError::BadType));
    }

    #[test]
    fn payload_examples_from_the_protocol() {
        assert_eq!(
            decode_payload(b"4hello\x1e2\x1e4world", 16),
            Ok(vec![
                Packet::Text(PacketType::Message, "hello"),
                Packet::Text(PacketType::Ping, ""),
                Packet::Text(PacketType::Message, "world"),
            ])
        );
        assert_eq!(
            decode_payload(b"4hello\x1ebAQIDBA==", 16),
            Ok(vec![
                Packet::Text(PacketType::Message, "hello"),
                Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])),
            ])
        );
        assert_eq!(
            decode_payload("42[\"hello\"]\x1e42[\"world\"]".as_bytes(), 16),
            Ok(vec![
                Packet::Text(PacketType::Message, "2[\"hello\"]"),
                Packet::Text(PacketType::Message, "2[\"world\"]"),
            ])
        );
        assert_eq!(
            decode_payload(b"b", 1),
            Ok(vec![Packet::Binary(Cow::Owned(Vec::new()))])
        );
    }

    #[test]
    fn payload_errors() {
        assert_eq!(decode_payload(b"", 16), Err(EioError::Empty));
        assert_eq!(decode_payload(b"\x1e", 16), Err(EioError::Empty));
        assert_eq!(decode_payload(b"4a\x1e", 16), Err(EioError::Empty));
        assert_eq!(decode_payload(b"4a\x1e\x1e2", 16), Err(EioError::Empty));
        assert_eq!(decode_payload(b"4a\x1e9", 16), Err(EioError::BadType));
        assert_eq!(decode_payload(b"x", 16), Err(EioError::BadType));
        assert_eq!(decode_payload(b"bAQIDBA", 16), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b"bAQIDBA=", 16), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b"b!!!!", 16), Err(EioError::BadBase64));
        assert_eq!(decode_payload(b"4\xff", 16), Err(EioError::NotUtf8));
        assert_eq!(
            decode_payload(b"2\x1e2\x1e2", 2),
            Err(EioError::TooManyPackets)
        );
        assert_eq!(decode_payload(b"2", 0), Err(EioError::TooManyPackets));
        assert_eq!(decode_payload(b"2\x1e2", 2).map(|p| p.len()), Ok(2));
    }

    #[test]
    fn build_a_payload() {
        let mut out = Vec::new();
        push_separator(&mut out);
        write_text(&mut out, PacketType::Message, b"hello");
        push_separator(&mut out);
        write_binary_b64(&mut out, &[1, 2, 3, 4]);
        push_separator(&mut out);
        write_text(&mut out, PacketType::Noop, b"");
        assert_eq!(out, b"4hello\x1ebAQIDBA==\x1e6");

        let mut out = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let start = out.len();
        push_separator_from(&mut out, start);
        write_text(&mut out, PacketType::Ping, b"");
        push_separator_from(&mut out, start);
        write_text(&mut out, PacketType::Ping, b"");
        assert_eq!(&out[start..], b"2\x1e2");
    }

    #[test]
    fn binary_encodings() {
        for (data, b64) in [
            (&b""[..], &b"b"[..]),
            (b"\x01", b"bAQ=="),
            (b"\x01\x02", b"bAQI="),
            (b"\x01\x02\x03", b"bAQID"),
            (b"\x01\x02\x03\x04", b"bAQIDBA=="),
        ] {
            let mut out = Vec::new();
            write_binary_b64(&mut out, data);
            assert_eq!(out, b64);
        }
    }

    #[test]
    fn open_packet() {
        let mut out = Vec::new();
        write_open(
            &mut out,
            &Open {
                sid: "lv_VI97HAXpY6yYWAAAC",
                upgrades: &["websocket"],
                ping_interval_ms: 25000,
                ping_timeout_ms: 20000,
                max_payload: 1_000_000,
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "0{\"sid\":\"lv_VI97HAXpY6yYWAAAC\",\"upgrades\":[\"websocket\"],\
             \"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );

        let mut out = Vec::new();
        write_open(
            &mut out,
            &Open {
                sid: "a\"b\\c\n",
                upgrades: &[],
                ping_interval_ms: 0,
                ping_timeout_ms: u64::MAX,
                max_payload: 1,
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "0{\"sid\":\"a\\\"b\\\\c\\n\",\"upgrades\":[],\"pingInterval\":0,\
             \"pingTimeout\":18446744073709551615,\"maxPayload\":1}"
        );
    }

    #[test]
    fn error_bodies() {
        let all = [
            (ErrorCode::TransportUnknown, 0, "Transport unknown", 400),
            (ErrorCode::UnknownSid, 1, "Session ID unknown", 400),
            (
                ErrorCode::BadHandshakeMethod,
                2,
                "Bad handshake method",
                400,
            ),
            (ErrorCode::BadRequest, 3, "Bad request", 400),
            (ErrorCode::Forbidden, 4, "Forbidden", 403),
            (
                ErrorCode::UnsupportedProtocolVersion,
                5,
                "Unsupported protocol version",
                400,
            ),
        ];
        for (code, n, message, status) in all {
            assert_eq!(code.code(), n);
            assert_eq!(code.message(), message);
            assert_eq!(code.status(), status);
            let mut out = Vec::new();
            write_error_json(&mut out, code);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{{\"code\":{n},\"message\":\"{message}\"}}")
            );
        }
    }

    #[test]
    fn error_texts() {
        for e in [
            EioError::Empty,
            EioError::BadType,
            EioError::BadBase64,
            EioError::NotUtf8,
            EioError::TooManyPackets,
        ] {
            assert!(!e.reason().is_empty());
            assert_eq!(e.to_string(), e.reason());
        }
    }
}
