//! Property tests of the codecs: everything that is encoded decodes back to what went in,
//! whatever the input and however the bytes are split.
//!
//! Case counts are kept modest so `cargo test` stays fast; raise them for a deeper run with
//! `PROPTEST_CASES=10000 cargo test -p pushedge-protocol --test proptests`.

use std::borrow::Cow;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

use protocol::http::{
    self, ChunkedDecoder, Header, Limits, Method, Parsed, DEFAULT_MAX_HEADERS, EMPTY_HEADER,
    LAST_CHUNK,
};
use protocol::message::{
    validate_callback, write_iframe_chunk, write_json, write_json_array, write_jsonp,
    write_ndjson_chunk, write_sse_event, write_ws_frame, JsonStyle, Message,
};
use protocol::query::{percent_decode, split_target, Query, MAX_QUERY_PAIRS};
use protocol::sse::{parse_cursor, write_cursor, Position, DEFAULT_MAX_CURSOR_ENTRIES};
use protocol::ws::mask::{apply_mask, apply_mask_bytewise};
use protocol::ws::utf8::Utf8Validator;
use protocol::ws::{
    encode_frame, encode_masked_frame, CloseCode, CloseFrame, DataKind, Decoder, DecoderConfig,
    Event, OpCode, Role,
};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 128;

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Cuts `data` at the given points (sorted, duplicates allowed: empty pieces are fine).
fn cut<'a>(data: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = points.iter().map(|i| i.index(data.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for p in at {
        pieces.push(&data[start..p]);
        start = p;
    }
    pieces.push(&data[start..]);
    pieces
}

/// Bytes from a seed (for payloads too large to generate byte by byte).
fn seeded_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            // xorshift64*
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// (a) WebSocket frames
// ---------------------------------------------------------------------------------------

/// A control frame slipped between two fragments of a message (or between messages).
#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

/// One data message, how it is cut into frames and what comes between the frames.
#[derive(Debug, Clone)]
struct WsMessage {
    kind: DataKind,
    data: Vec<u8>,
    /// Fragment boundaries (any byte offset: a text fragment may end inside a character).
    cuts: Vec<Index>,
    /// Control frames sent before fragment `i` (index taken modulo the fragment count).
    controls: Vec<(Index, Control)>,
}

#[derive(Debug, Clone)]
struct WsScript {
    messages: Vec<WsMessage>,
    /// A close frame at the end, if any.
    close: Option<(u16, String)>,
    /// Mask keys, used in turn, one per frame.
    masks: Vec<[u8; 4]>,
    /// Where the wire bytes are split into reads.
    reads: Vec<Index>,
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..8),
        1 => prop::collection::vec(any::<u8>(), 0..=125),
    ]
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        3 => control_payload().prop_map(Control::Ping),
        1 => control_payload().prop_map(Control::Pong),
    ]
}

/// Text of any characters; now and then over 65535 bytes (64-bit length field).
fn ws_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => any::<String>().prop_map(String::into_bytes),
        3 => prop::collection::vec(any::<char>(), 100..200)
            .prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
        1 => prop::collection::vec(any::<char>(), 1..8).prop_map(|c| {
            let s: String = c.into_iter().collect();
            s.repeat(65_536 / s.len() + 1).into_bytes()
        }),
    ]
}

/// Any bytes; now and then over 125 and over 65535 bytes.
fn ws_binary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => prop::collection::vec(any::<u8>(), 0..130),
        3 => (126usize..1000, any::<u64>()).prop_map(|(n, s)| seeded_bytes(n, s)),
        1 => (65_530usize..65_600, any::<u64>()).prop_map(|(n, s)| seeded_bytes(n, s)),
    ]
}

fn ws_message() -> impl Strategy<Value = WsMessage> {
    let data = prop_oneof![
        ws_text().prop_map(|d| (DataKind::Text, d)),
        ws_binary().prop_map(|d| (DataKind::Binary, d)),
    ];
    (
        data,
        prop::collection::vec(any::<Index>(), 0..6),
        prop::collection::vec((any::<Index>(), control()), 0..4),
    )
        .prop_map(|((kind, data), cuts, controls)| WsMessage {
            kind,
            data,
            cuts,
            controls,
        })
}

fn ws_script() -> impl Strategy<Value = WsScript> {
    (
        prop::collection::vec(ws_message(), 0..5),
        prop::option::of((
            prop_oneof![Just(1000u16), 1000u16..=1003, 1007u16..=1014, 3000u16..5000],
            "\\PC{0,30}",
        )),
        prop::collection::vec(any::<[u8; 4]>(), 1..6),
        prop::collection::vec(any::<Index>(), 0..12),
    )
        .prop_map(|(messages, close, masks, reads)| WsScript {
            messages,
            close,
            masks,
            reads,
        })
}

/// Writes the script as frames (masked with the script's keys when `masked`) and returns
/// the wire bytes and the events a decoder must produce, in order.
fn ws_encode(script: &WsScript, masked: bool) -> (Vec<u8>, Vec<Event<'static>>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut keys = script.masks.iter().cycle();
    let mut frame = |wire: &mut Vec<u8>, fin: bool, op: OpCode, payload: &[u8]| {
        if masked {
            let key = *keys.next().expect("the key list is not empty");
            encode_masked_frame(wire, fin, op, payload, key);
        } else {
            encode_frame(wire, fin, op, payload);
        }
    };
    for m in &script.messages {
        let fragments = cut(&m.data, &m.cuts);
        let n = fragments.len();
        for (i, fragment) in fragments.iter().enumerate() {
            if i > 0 {
                // Control frames may only come between fragments of a message.
                for (at, c) in &m.controls {
                    if at.index(n - 1) + 1 != i {
                        continue;
                    }
                    let (op, payload) = match c {
                        Control::Ping(p) => (OpCode::Ping, p),
                        Control::Pong(p) => (OpCode::Pong, p),
                    };
                    frame(&mut wire, true, op, payload);
                    expected.push(match c {
                        Control::Ping(p) => Event::Ping(Cow::Owned(p.clone())),
                        Control::Pong(p) => Event::Pong(Cow::Owned(p.clone())),
                    });
                }
            }
            let op = match (i, m.kind) {
                (0, DataKind::Text) => OpCode::Text,
                (0, DataKind::Binary) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            frame(&mut wire, i + 1 == n, op, fragment);
        }
        expected.push(Event::Message {
            kind: m.kind,
            data: Cow::Owned(m.data.clone()),
        });
    }
    if let Some((code, reason)) = &script.close {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        frame(&mut wire, true, OpCode::Close, &payload);
        expected.push(Event::Close(Some(CloseFrame {
            code: CloseCode(*code),
            reason: Cow::Owned(reason.clone()),
        })));
    }
    (wire, expected)
}

/// Feeds `reads` to a fresh decoder, checking the progress rules, and collects the events.
fn ws_decode(reads: &[&[u8]], cfg: &DecoderConfig) -> Result<Vec<Event<'static>>, TestCaseError> {
    let mut d = Decoder::new();
    let mut events = Vec::new();
    for read in reads {
        let mut buf = read.to_vec();
        let len = buf.len();
        let mut pos = 0;
        while pos < len {
            let r = d
                .decode(&mut buf[pos..], cfg)
                .map_err(|e| TestCaseError::fail(format!("decode error: {e:?}")))?;
            prop_assert!(r.consumed > 0, "no progress on non-empty input");
            prop_assert!(pos + r.consumed <= len, "consumed more than given");
            pos += r.consumed;
            if let Some(e) = r.event {
                events.push(e.into_owned());
            }
        }
        // Empty input is a no-op.
        let r = d
            .decode(&mut [], cfg)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(r.consumed, 0);
        prop_assert!(r.event.is_none());
    }
    prop_assert!(d.is_idle(), "decoder holds state after the last frame");
    prop_assert_eq!(d.buffered(), 0);
    Ok(events)
}

fn ws_round_trip(script: &WsScript, role: Role) -> Result<(), TestCaseError> {
    let (wire, expected) = ws_encode(script, role == Role::Server);
    let cfg = DecoderConfig {
        role,
        max_message: 1 << 20,
        skip_oversized: false,
    };
    let pieces = cut(&wire, &script.reads);
    let events = ws_decode(&pieces, &cfg)?;
    prop_assert_eq!(&events, &expected);
    // One read with everything.
    let events = ws_decode(&[&wire], &cfg)?;
    prop_assert_eq!(&events, &expected);
    // Byte by byte, for the small ones.
    if wire.len() <= 2048 {
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let events = ws_decode(&bytes, &cfg)?;
        prop_assert_eq!(&events, &expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn ws_masked_client_frames_round_trip(script in ws_script()) {
        ws_round_trip(&script, Role::Server)?;
    }

    #[test]
    fn ws_server_frames_round_trip(script in ws_script()) {
        ws_round_trip(&script, Role::Client)?;
    }

    /// A message over the limit is refused with 1009 however it is fragmented and split.
    #[test]
    fn ws_message_limit_holds(script in ws_script(), limit in 0usize..300) {
        let cfg = DecoderConfig { role: Role::Server, max_message: limit, skip_oversized: false };
        let (wire, _) = ws_encode(&script, true);
        let over = script.messages.iter().any(|m| m.data.len() > limit);
        let mut d = Decoder::new();
        let mut result = Ok(());
        'outer: for read in cut(&wire, &script.reads) {
            let mut buf = read.to_vec();
            let mut pos = 0;
            while pos < buf.len() {
                match d.decode(&mut buf[pos..], &cfg) {
                    Ok(r) => {
                        pos += r.consumed;
                        if let Some(Event::Message { data, .. }) = r.event {
                            prop_assert!(data.len() <= limit);
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break 'outer;
                    }
                }
            }
        }
        if over {
            prop_assert_eq!(result.unwrap_err().close_code(), CloseCode::TOO_BIG);
        } else {
            prop_assert!(result.is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------
// (b) The JSON envelope and its wire forms
// ---------------------------------------------------------------------------------------

/// Strings that stress the escaper: any characters, plus the ones with special treatment.
fn nasty_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("</script>".to_string()),
        Just("<!--".to_string()),
        Just("&amp;".to_string()),
        Just("\u{2028}".to_string()),
        Just("\u{2029}".to_string()),
        Just("\u{2027}\u{202a}".to_string()),
        Just("\u{7f}".to_string()),
        Just("\r\n".to_string()),
        Just("é€𝄞".to_string()),
        (0u8..0x20).prop_map(|b| char::from(b).to_string()),
        "[a-z ]{0,5}",
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        3 => prop::collection::vec(piece, 0..12).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// An owned `Message`, so strategies can generate it.
#[derive(Debug, Clone)]
enum OwnedMessage {
    Data(String, u64, String, String),
    Noop(Option<String>, Option<u64>, String),
    NextSeq(String, u64, String),
    Gap(String, u64, u64),
    Reset(String, String, u64),
    Close(String),
    Error(u16, String),
    Pong,
    Ok(String, u64, String, bool),
}

impl OwnedMessage {
    fn borrow(&self) -> Message<'_> {
        match self {
            OwnedMessage::Data(c, s, e, t) => Message::Data {
                channel: c,
                seq: *s,
                epoch: e,
                from: "",
                event: "",
                content: t,
                json: false,
            },
            OwnedMessage::Noop(c, s, e) => Message::Noop {
                channel: c.as_deref(),
                seq: *s,
                epoch: e,
            },
            OwnedMessage::NextSeq(c, s, e) => Message::NextSeq {
                channel: c,
                seq: *s,
                epoch: e,
            },
            OwnedMessage::Reset(c, e, s) => Message::Reset {
                channel: c,
                epoch: e,
                seq: *s,
            },
            OwnedMessage::Gap(c, from, to) => Message::Gap {
                channel: c,
                from: *from,
                to: *to,
            },
            OwnedMessage::Close(c) => Message::Close { channel: c },
            OwnedMessage::Error(code, r) => Message::Error {
                code: *code,
                reason: r,
            },
            OwnedMessage::Pong => Message::Pong,
            OwnedMessage::Ok(c, s, e, d) => Message::Ok {
                channel: c,
                seq: *s,
                epoch: e,
                duplicate: *d,
            },
        }
    }

    /// The JSON object the message must decode to.
    fn expected(&self) -> Value {
        match self {
            OwnedMessage::Data(c, s, e, t) => with_epoch(
                json!({"type": "data", "channel": c, "seq": s, "content": t}),
                e,
            ),
            OwnedMessage::Noop(c, s, e) => {
                let mut v = json!({"type": "noop"});
                if let Some(c) = c {
                    v["channel"] = json!(c);
                }
                if let Some(s) = s {
                    v["seq"] = json!(s);
                }
                with_epoch(v, e)
            }
            OwnedMessage::NextSeq(c, s, e) => {
                with_epoch(json!({"type": "next_seq", "channel": c, "seq": s}), e)
            }
            OwnedMessage::Reset(c, e, s) => {
                json!({"type": "reset", "channel": c, "epoch": e, "seq": s})
            }
            OwnedMessage::Gap(c, f, t) => {
                json!({"type": "gap", "channel": c, "from": f, "to": t})
            }
            OwnedMessage::Close(c) => json!({"type": "close", "channel": c}),
            OwnedMessage::Error(code, r) => json!({"type": "error", "code": code, "reason": r}),
            OwnedMessage::Pong => json!({"type": "pong"}),
            OwnedMessage::Ok(c, s, e, d) => {
                let mut v = with_epoch(json!({"type": "ok", "channel": c, "seq": s}), e);
                if *d {
                    v["duplicate"] = json!(true);
                }
                v
            }
        }
    }
}

/// `v` with `"epoch"` added, unless the epoch is empty (the writer leaves it out).
fn with_epoch(mut v: Value, epoch: &str) -> Value {
    if !epoch.is_empty() {
        v["epoch"] = json!(epoch);
    }
    v
}

/// An epoch as the engine makes them, or none.
fn epoch() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[0-9a-z]{1,16}"]
}

fn owned_message() -> impl Strategy<Value = OwnedMessage> {
    let s = nasty_string;
    let n = any::<u64>;
    prop_oneof![
        4 => (s(), n(), epoch(), s()).prop_map(|(c, q, e, t)| OwnedMessage::Data(c, q, e, t)),
        1 => (prop::option::of(s()), prop::option::of(n()), epoch())
            .prop_map(|(c, q, e)| OwnedMessage::Noop(c, q, e)),
        1 => (s(), n(), epoch()).prop_map(|(c, q, e)| OwnedMessage::NextSeq(c, q, e)),
        1 => (s(), "[0-9a-z]{1,16}", n()).prop_map(|(c, e, q)| OwnedMessage::Reset(c, e, q)),
        1 => (s(), n(), n()).prop_map(|(c, f, t)| OwnedMessage::Gap(c, f, t)),
        1 => s().prop_map(OwnedMessage::Close),
        1 => (any::<u16>(), s()).prop_map(|(c, r)| OwnedMessage::Error(c, r)),
        1 => Just(OwnedMessage::Pong),
        1 => (s(), n(), epoch(), any::<bool>())
            .prop_map(|(c, q, e, d)| OwnedMessage::Ok(c, q, e, d)),
    ]
}

fn callback_name() -> impl Strategy<Value = String> {
    "[A-Za-z_$][A-Za-z0-9_$]{0,8}(\\.[A-Za-z_$][A-Za-z0-9_$]{0,8}){0,3}"
}

fn json_of(msg: &Message<'_>, style: JsonStyle) -> Vec<u8> {
    let mut out = Vec::new();
    write_json(&mut out, msg, style);
    out
}

fn parse_value(bytes: &[u8]) -> Result<Value, TestCaseError> {
    serde_json::from_slice(bytes).map_err(|e| {
        TestCaseError::fail(format!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        ))
    })
}

/// Decodes a whole chunked body (it must end with the last chunk).
fn dechunk(body: &[u8]) -> Result<Vec<u8>, TestCaseError> {
    let mut d = ChunkedDecoder::new(usize::MAX / 2);
    let mut out = Vec::new();
    let (used, done) = d
        .decode(body, &mut out)
        .map_err(|e| TestCaseError::fail(format!("chunked: {e:?}")))?;
    prop_assert!(done);
    prop_assert_eq!(used, body.len());
    Ok(out)
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn envelope_decodes_to_the_same_fields(m in owned_message()) {
        let msg = m.borrow();
        let expected = m.expected();
        for style in [JsonStyle::Plain, JsonStyle::Script] {
            let out = json_of(&msg, style);
            prop_assert!(out.starts_with(b"{\"type\":\""), "type comes first");
            prop_assert!(!out.iter().any(|&b| b < 0x20), "raw control character");
            let value = parse_value(&out)?;
            let obj = value.as_object().expect("an object");
            let want = expected.as_object().expect("an object");
            prop_assert_eq!(obj.len(), want.len(), "{:?}", value);
            for (k, v) in want {
                prop_assert_eq!(obj.get(k), Some(v), "field {}", k);
            }
            if style == JsonStyle::Script {
                let text = std::str::from_utf8(&out).expect("UTF-8");
                prop_assert!(!text.contains(['<', '>', '&', '\u{2028}', '\u{2029}']), "{}", text);
            }
        }
        prop_assert_eq!(msg.to_json(), json_of(&msg, JsonStyle::Plain));
    }

    #[test]
    fn wire_forms_carry_the_same_json(
        msgs in prop::collection::vec(owned_message(), 1..4),
        callback in callback_name(),
        id in prop::option::of("[a-z0-9:,]{1,20}"),
    ) {
        prop_assert!(validate_callback(&callback).is_ok());
        let borrowed: Vec<Message<'_>> = msgs.iter().map(OwnedMessage::borrow).collect();
        let expected: Vec<Value> = msgs.iter().map(OwnedMessage::expected).collect();
        let first = &borrowed[0];
        let plain = json_of(first, JsonStyle::Plain);
        let script = json_of(first, JsonStyle::Script);

        // Long-poll array, both styles.
        for style in [JsonStyle::Plain, JsonStyle::Script] {
            let mut out = Vec::new();
            write_json_array(&mut out, &borrowed, style);
            prop_assert_eq!(parse_value(&out)?, Value::Array(expected.clone()));
        }

        // JSONP: callback([...]);\n
        let mut out = Vec::new();
        write_jsonp(&mut out, &callback, &borrowed);
        let inner = out
            .strip_prefix(format!("{callback}(").as_bytes())
            .and_then(|r| r.strip_suffix(b");\n"))
            .expect("callback(...);");
        prop_assert_eq!(parse_value(inner)?, Value::Array(expected.clone()));
        prop_assert!(!out.windows(2).any(|w| w == b"</"));

        // NDJSON chunk.
        let mut out = Vec::new();
        write_ndjson_chunk(&mut out, &plain);
        out.extend_from_slice(LAST_CHUNK);
        let line = dechunk(&out)?;
        let body = line.strip_suffix(b"\n").expect("a line");
        prop_assert!(!body.contains(&b'\n'));
        prop_assert_eq!(parse_value(body)?, expected[0].clone());

        // Iframe chunk.
        let mut out = Vec::new();
        write_iframe_chunk(&mut out, &callback, &script);
        out.extend_from_slice(LAST_CHUNK);
        let tag = dechunk(&out)?;
        let inner = tag
            .strip_prefix(format!("<script>parent.{callback}(").as_bytes())
            .and_then(|r| r.strip_suffix(b");</script>\n"))
            .expect("<script>parent.cb(...);</script>");
        prop_assert!(!inner.windows(2).any(|w| w == b"</"));
        prop_assert_eq!(parse_value(inner)?, expected[0].clone());

        // SSE event: optional id line, then exactly one data line.
        let mut out = Vec::new();
        write_sse_event(&mut out, id.as_deref(), &plain);
        let text = String::from_utf8(out).expect("UTF-8");
        let rest = match &id {
            Some(id) => text.strip_prefix(&format!("id: {id}\n")).expect("id line"),
            None => &text,
        };
        let data = rest
            .strip_prefix("data: ")
            .and_then(|r| r.strip_suffix("\n\n"))
            .expect("data: ...\\n\\n");
        prop_assert!(!data.contains(['\r', '\n']), "one data line");
        prop_assert_eq!(parse_value(data.as_bytes())?, expected[0].clone());

        // WebSocket text frame, decoded as a client would.
        let mut out = Vec::new();
        write_ws_frame(&mut out, &plain);
        let cfg = DecoderConfig { role: Role::Client, max_message: 1 << 20, skip_oversized: false };
        let events = ws_decode(&[&out], &cfg)?;
        match &events[..] {
            [Event::Message { kind: DataKind::Text, data }] => {
                prop_assert_eq!(parse_value(data)?, expected[0].clone());
            }
            other => prop_assert!(false, "one text message expected, got {:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) HTTP heads and chunked bodies
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Head {
    method: Method,
    target: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(if self.version == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Options,
        Method::Patch,
        Method::Connect,
        Method::Trace,
    ])
}

/// A header value: visible ASCII, inner spaces and tabs, and obs-text (bytes >= 0x80);
/// no leading or trailing whitespace (httparse does not return it).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        8 => 0x21u8..=0x7e,
        1 => Just(b' '),
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    prop::collection::vec(byte, 0..40).prop_map(|mut v| {
        while matches!(v.first(), Some(b' ' | b'\t')) {
            v.remove(0);
        }
        while matches!(v.last(), Some(b' ' | b'\t')) {
            v.pop();
        }
        v
    })
}

fn head() -> impl Strategy<Value = Head> {
    (
        method(),
        prop_oneof![
            "/[A-Za-z0-9._~!$&'()*+,;=:@/%-]{0,40}(\\?[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,40})?",
            Just("*".to_string()),
        ],
        0u8..=1,
        prop::collection::vec(("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}", header_value()), 0..16),
    )
        .prop_map(|(method, target, version, mut headers)| {
            // HTTP/1.1 needs exactly one Host (RFC 9112 3.2): one first, none generated.
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
            headers.insert(0, ("Host".to_string(), b"p".to_vec()));
            Head {
                method,
                target,
                version,
                headers,
            }
        })
}

fn parse(buf: &[u8]) -> Result<Parsed<usize>, http::HttpError> {
    let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
    http::parse_request(buf, &mut headers, &Limits::default()).map(|p| match p {
        Parsed::Complete(r) => Parsed::Complete(r.head_len),
        Parsed::Partial => Parsed::Partial,
    })
}

proptest! {
    #![proptest_config(config(CASES / 2))]

    #[test]
    fn http_head_prefixes_are_partial_and_the_head_parses(
        h in head(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let bytes = h.bytes();
        for n in 0..bytes.len() {
            prop_assert_eq!(parse(&bytes[..n]), Ok(Parsed::Partial), "prefix {}", n);
        }
        let mut buf = bytes.clone();
        buf.extend_from_slice(&tail);
        let mut headers = [EMPTY_HEADER; DEFAULT_MAX_HEADERS];
        let req = match http::parse_request(&buf, &mut headers, &Limits::default()) {
            Ok(Parsed::Complete(r)) => r,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(req.method, h.method);
        prop_assert_eq!(req.target, h.target.as_str());
        prop_assert_eq!(req.version, h.version);
        prop_assert_eq!(req.head_len, bytes.len());
        let got: Vec<(&str, &[u8])> = req.headers.iter().map(|x: &Header<'_>| (x.name, x.value)).collect();
        let want: Vec<(&str, &[u8])> =
            h.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        prop_assert_eq!(got, want);
        for (name, _) in &h.headers {
            // Lookups are case-insensitive and find the first field of that name.
            let first = h.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
            prop_assert_eq!(
                req.header(&name.to_ascii_uppercase()),
                first.map(|(_, v)| v.as_slice())
            );
        }
    }

    #[test]
    fn chunked_bodies_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..600),
        chunks in prop::collection::vec(any::<Index>(), 0..8),
        reads in prop::collection::vec(any::<Index>(), 0..8),
        after in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for piece in cut(&data, &chunks) {
            http::write_chunk(&mut wire, piece);
        }
        wire.extend_from_slice(LAST_CHUNK);
        let body_len = wire.len();
        wire.extend_from_slice(&after);

        let mut d = ChunkedDecoder::new(data.len());
        let mut out = Vec::new();
        let mut pos = 0;
        for read in cut(&wire, &reads) {
            if d.is_done() {
                break;
            }
            let (used, done) = d
                .decode(read, &mut out)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert!(used <= read.len());
            if !done {
                prop_assert_eq!(used, read.len(), "everything is consumed before the end");
            }
            pos += used;
            if done {
                break;
            }
        }
        prop_assert!(d.is_done());
        prop_assert_eq!(pos, body_len, "bytes after the body are not consumed");
        prop_assert_eq!(out, data);
    }
}

// ---------------------------------------------------------------------------------------
// (d) Query strings
// ---------------------------------------------------------------------------------------

/// Percent-encodes everything but unreserved characters; spaces as `+` when `plus`.
/// `upper` picks the case of the hex digits.
fn percent_encode(s: &str, plus: bool, upper: bool) -> String {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = String::new();
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' if plus => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(hex[usize::from(b >> 4)]));
                out.push(char::from(hex[usize::from(b & 15)]));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn percent_encoding_round_trips(s in nasty_string(), upper in any::<bool>()) {
        let with_plus = percent_encode(&s, true, upper);
        prop_assert_eq!(percent_decode(&with_plus, true).unwrap(), s.as_str());
        let no_plus = percent_encode(&s, false, upper);
        prop_assert_eq!(percent_decode(&no_plus, false).unwrap(), s.as_str());
        prop_assert_eq!(percent_decode(&no_plus, true).unwrap(), s.as_str());
    }

    #[test]
    fn queries_round_trip(
        path in "/[a-z0-9/._-]{0,20}",
        pairs in prop::collection::vec((nasty_string(), nasty_string()), 0..MAX_QUERY_PAIRS),
    ) {
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k, true, false), percent_encode(v, true, true)))
            .collect::<Vec<_>>()
            .join("&");
        let target = format!("{path}?{query}#fragment");
        let (p, q) = split_target(&target);
        prop_assert_eq!(p, path.as_str());
        prop_assert_eq!(q, Some(query.as_str()));
        let parsed = Query::parse(&query).unwrap();
        let got: Vec<(&str, &str)> = parsed.iter().collect();
        let want: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        prop_assert_eq!(got, want);
        for (k, _) in &pairs {
            let first = pairs.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(parsed.get(k), first);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (e) The SSE resume cursor
// ---------------------------------------------------------------------------------------

fn cursor_entries() -> impl Strategy<Value = Vec<(String, u64, String)>> {
    prop::collection::vec(
        (
            "[A-Za-z0-9_.:@-]{1,20}",
            prop_oneof![0u64..1000, any::<u64>(), Just(u64::MAX)],
            epoch(),
        ),
        1..=DEFAULT_MAX_CURSOR_ENTRIES,
    )
    .prop_map(|mut v| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|(name, _, _)| seen.insert(name.clone()));
        v
    })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn cursor_round_trips(entries in cursor_entries()) {
        let mut out = Vec::new();
        write_cursor(&mut out, entries.iter().map(|(n, s, e)| (n.as_str(), *s, e.as_str())));
        let text = String::from_utf8(out).expect("UTF-8");
        let parsed = parse_cursor(&text, DEFAULT_MAX_CURSOR_ENTRIES)
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let want: Vec<(&str, Position<'_>)> = entries
            .iter()
            .map(|(n, s, e)| {
                let epoch = (!e.is_empty()).then_some(e.as_str());
                (n.as_str(), Position { seq: *s, epoch })
            })
            .collect();
        prop_assert_eq!(parsed, want);
    }
}

// ---------------------------------------------------------------------------------------
// (f) UTF-8 validation and masking
// ---------------------------------------------------------------------------------------

/// Mostly-valid UTF-8 with the odd broken byte, or plain noise.
fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        (
            any::<String>(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 1..3)
        )
            .prop_map(|(s, edits)| {
                let mut b = s.into_bytes();
                for (at, byte) in edits {
                    if b.is_empty() {
                        b.push(byte);
                    } else {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                }
                b
            }),
        (any::<String>(), 1usize..4).prop_map(|(s, cut)| {
            // Truncated inside a character, when there is one to cut.
            let mut b = s.into_bytes();
            b.extend_from_slice(&"\u{10348}".as_bytes()[..cut]);
            b
        }),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(config(CASES * 2))]

    #[test]
    fn utf8_validator_agrees_with_std(data in utf8ish(), splits in prop::collection::vec(any::<Index>(), 0..6)) {
        let std_result = std::str::from_utf8(&data);
        let mut v = Utf8Validator::new();
        let mut start = 0;
        let mut failed_in = None;
        for piece in cut(&data, &splits) {
            if v.feed(piece).is_err() {
                failed_in = Some(start..start + piece.len());
                break;
            }
            start += piece.len();
        }
        let ok = failed_in.is_none() && v.finish().is_ok();
        prop_assert_eq!(ok, std_result.is_ok());
        match std_result {
            Ok(_) => {}
            Err(e) => match e.error_len() {
                // An unfinished character at the end: only `finish` can tell.
                None => prop_assert!(failed_in.is_none()),
                // Fail fast: in the piece holding the byte that made the text invalid,
                // which is the last byte of the bad sequence or the one after it.
                Some(len) => {
                    let bad = e.valid_up_to() + len;
                    let piece = failed_in.expect("the error comes from feed");
                    prop_assert!(piece.start <= bad && piece.end + 1 > bad, "{:?} bad {}", piece, bad);
                }
            },
        }
    }

    #[test]
    fn apply_mask_equals_bytewise(
        data in prop::collection::vec(any::<u8>(), 0..100),
        mask in any::<[u8; 4]>(),
        offset in prop_oneof![0usize..16, any::<usize>(), (usize::MAX - 8)..=usize::MAX],
        split in any::<Index>(),
    ) {
        let mut fast = data.clone();
        let mut slow = data.clone();
        apply_mask(&mut fast, mask, offset);
        apply_mask_bytewise(&mut slow, mask, offset);
        prop_assert_eq!(&fast, &slow);
        // In two pieces, the second at its offset into the payload.
        let at = split.index(data.len() + 1);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(at);
        apply_mask(a, mask, offset);
        apply_mask(b, mask, offset.wrapping_add(at));
        prop_assert_eq!(&pieces, &fast);
        // Masking twice is the identity.
        apply_mask(&mut fast, mask, offset);
        prop_assert_eq!(fast, data);
    }
}
