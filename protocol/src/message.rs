//! The JSON message envelope (DESIGN.md section 3) and its wire forms.
//!
//! Every message a subscriber receives is one JSON object, for example
//! `{"type":"data","channel":"news","seq":12,"content":"hello"}`. [`write_json`] writes it
//! with exact string escaping: `"` and `\`, every control character (the short forms `\b`
//! `\f` `\n` `\r` `\t`, the rest as `\u00XX`), and non-ASCII UTF-8 kept as it is.
//!
//! The [`JsonStyle::Script`] style is for JSON that lands inside a `<script>` element
//! (iframe streaming, JSONP): it also escapes `<`, `>`, `&`, U+2028 and U+2029 as `\uXXXX`,
//! so a `</script>` or `<!--` inside content can never end or change the element and old
//! JavaScript parsers see no line terminator in a string. The result is still the same JSON
//! value.
//!
//! The wire forms, each written once per publish and shared by every subscriber:
//! [`write_ws_frame`] (a WebSocket text frame), [`write_sse_event`] (an SSE event),
//! [`write_ndjson_chunk`] (one NDJSON line as an HTTP chunk), [`write_iframe_chunk`] (a
//! script tag as an HTTP chunk), and for long-polling [`write_json_array`] and
//! [`write_jsonp`].

use std::fmt;

use crate::http::{push_decimal, write_chunk_header};
use crate::sse;
use crate::ws::frame::{write_frame_header, OpCode};

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest JSONP / iframe callback name.
pub const MAX_CALLBACK_LEN: usize = 64;

/// One message of the envelope. An empty `epoch` is left out of the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A published message.
    Data {
        /// The channel.
        channel: &'a str,
        /// Its sequence number in the channel's stream (first is 1).
        seq: u64,
        /// The stream's epoch (see [`crate::cursor`]).
        epoch: &'a str,
        /// Who published it, when a client did (its token's `sub`, stamped by the
        /// server); empty for backends.
        from: &'a str,
        /// The event name a Socket.IO client or an admin `event=` gave it; empty for
        /// none.
        event: &'a str,
        /// The published body.
        content: &'a str,
        /// `content` is a JSON value (published as JSON), written as it is; else it is
        /// text, written as a JSON string.
        json: bool,
    },
    /// A heartbeat (stream, iframe, long-poll timeout). `seq` is where to resume.
    Noop {
        /// The channel, when the heartbeat concerns one.
        channel: Option<&'a str>,
        /// The seq to ask for next, when known.
        seq: Option<u64>,
        /// The stream's epoch, when known.
        epoch: &'a str,
    },
    /// Where to resume: the seq the next message of the channel will carry.
    NextSeq {
        /// The channel.
        channel: &'a str,
        /// The next seq.
        seq: u64,
        /// The stream's epoch.
        epoch: &'a str,
    },
    /// Messages `from..=to` of the channel are no longer buffered.
    Gap {
        /// The channel.
        channel: &'a str,
        /// First missed seq.
        from: u64,
        /// Last missed seq.
        to: u64,
    },
    /// The client's position is not in the channel's current stream (another epoch, or a
    /// seq the stream never reached): what follows is the stream of `epoch` from its
    /// start (buffered messages from seq 1, a `gap` first for those no longer buffered),
    /// then live messages. `seq` is the stream's last seq at the reset.
    Reset {
        /// The channel.
        channel: &'a str,
        /// The current stream's epoch.
        epoch: &'a str,
        /// The current stream's last seq.
        seq: u64,
    },
    /// The server closed the channel.
    Close {
        /// The channel.
        channel: &'a str,
    },
    /// An error for the client.
    Error {
        /// An HTTP-like or WebSocket close code.
        code: u16,
        /// What went wrong.
        reason: &'a str,
    },
    /// The answer to a client `{"op":"ping"}`.
    Pong,
    /// The connection's token expired at `expires` (Unix seconds): a WebSocket sends a
    /// `refresh` op with a new one before `deadline`, a stream reconnects with one; then
    /// the connection is closed.
    Refresh {
        /// When the token expired.
        expires: u64,
        /// When the connection closes without a new token.
        deadline: u64,
    },
    /// Someone joined (`joined`) or left a channel whose presence is tracked.
    Presence {
        /// Joined, or left.
        joined: bool,
        /// The channel.
        channel: &'a str,
        /// Who: the token's `sub`, or `anon:<connection>`.
        sub: &'a str,
        /// The token's `info` claim, a JSON value written as it is ("" for none).
        info: &'a str,
    },
    /// The answer to a `refresh` op: the new token holds until `expires`.
    Refreshed {
        /// When the new token expires.
        expires: u64,
    },
    /// The answer to a publish: the message was sequenced as `seq` of `epoch`.
    Ok {
        /// The channel.
        channel: &'a str,
        /// The seq given to the message.
        seq: u64,
        /// The stream's epoch.
        epoch: &'a str,
        /// True when an idempotency key matched an earlier publish: `seq` is that one's
        /// and nothing was published again.
        duplicate: bool,
    },
}

impl Message<'_> {
    /// The value of the `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Data { .. } => "data",
            Message::Noop { .. } => "noop",
            Message::NextSeq { .. } => "next_seq",
            Message::Gap { .. } => "gap",
            Message::Reset { .. } => "reset",
            Message::Close { .. } => "close",
            Message::Error { .. } => "error",
            Message::Pong => "pong",
            Message::Refresh { .. } => "refresh",
            Message::Refreshed { .. } => "refreshed",
            Message::Ok { .. } => "ok",
            Message::Presence { joined: true, .. } => "join",
            Message::Presence { joined: false, .. } => "leave",
        }
    }

    /// The message as plain JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_json(&mut out, self, JsonStyle::Plain);
        out
    }
}

/// Where the JSON will be embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonStyle {
    /// Plain JSON (WebSocket, SSE, NDJSON, long-poll).
    Plain,
    /// JSON inside a `<script>` element (iframe, JSONP): also escapes `<`, `>`, `&`,
    /// U+2028 and U+2029.
    Script,
}

/// Appends the message as one JSON object.
pub fn write_json(out: &mut Vec<u8>, msg: &Message<'_>, style: JsonStyle) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(msg.type_name().as_bytes());
    out.push(b'"');
    match *msg {
        Message::Data {
            channel,
            seq,
            epoch,
            from,
            event,
            content,
            json,
        } => {
            field_str(out, "channel", channel, style);
            field_num(out, "seq", seq);
            field_epoch(out, epoch);
            if !from.is_empty() {
                field_str(out, "from", from, style);
            }
            if !event.is_empty() {
                field_str(out, "event", event, style);
            }
            if json {
                field_raw(out, "content", content, style);
            } else {
                field_str(out, "content", content, style);
            }
        }
        Message::Noop {
            channel,
            seq,
            epoch,
        } => {
            if let Some(c) = channel {
                field_str(out, "channel", c, style);
            }
            if let Some(s) = seq {
                field_num(out, "seq", s);
            }
            field_epoch(out, epoch);
        }
        Message::NextSeq {
            channel,
            seq,
            epoch,
        }
        | Message::Ok {
            channel,
            seq,
            epoch,
            ..
        } => {
            field_str(out, "channel", channel, style);
            field_num(out, "seq", seq);
            field_epoch(out, epoch);
            if let Message::Ok {
                duplicate: true, ..
            } = msg
            {
                out.extend_from_slice(b",\"duplicate\":true");
            }
        }
        Message::Gap { channel, from, to } => {
            field_str(out, "channel", channel, style);
            field_num(out, "from", from);
            field_num(out, "to", to);
        }
        Message::Reset {
            channel,
            epoch,
            seq,
        } => {
            field_str(out, "channel", channel, style);
            field_epoch(out, epoch);
            field_num(out, "seq", seq);
        }
        Message::Close { channel } => field_str(out, "channel", channel, style),
        Message::Error { code, reason } => {
            field_num(out, "code", u64::from(code));
            field_str(out, "reason", reason, style);
        }
        Message::Pong => {}
        Message::Refresh { expires, deadline } => {
            field_num(out, "expires", expires);
            field_num(out, "deadline", deadline);
        }
        Message::Refreshed { expires } => field_num(out, "expires", expires),
        Message::Presence {
            channel, sub, info, ..
        } => {
            field_str(out, "channel", channel, style);
            out.extend_from_slice(b",\"member\":{\"sub\":");
            write_json_string(out, sub, style);
            if !info.is_empty() {
                field_raw(out, "info", info, style);
            }
            out.push(b'}');
        }
    }
    out.push(b'}');
}

/// A field whose value is JSON text, written as it is (the caller checked it is JSON).
fn field_raw(out: &mut Vec<u8>, name: &str, value: &str, style: JsonStyle) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_raw_json(out, value, style);
}

/// JSON text written as it is. In a `<script>` context `<`, `>`, `&`, U+2028 and U+2029
/// become `\u` escapes: in valid JSON they can only stand inside strings, where the
/// escape means the same character, so the value is unchanged and cannot end (or
/// confuse) the script element.
pub fn write_raw_json(out: &mut Vec<u8>, value: &str, style: JsonStyle) {
    if style == JsonStyle::Plain {
        return out.extend_from_slice(value.as_bytes());
    }
    for c in value.chars() {
        match c {
            '<' => out.extend_from_slice(b"\\u003c"),
            '>' => out.extend_from_slice(b"\\u003e"),
            '&' => out.extend_from_slice(b"\\u0026"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn field_str(out: &mut Vec<u8>, name: &str, value: &str, style: JsonStyle) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_json_string(out, value, style);
}

/// `,"epoch":"..."`, unless the epoch is empty.
fn field_epoch(out: &mut Vec<u8>, epoch: &str) {
    if !epoch.is_empty() {
        field_str(out, "epoch", epoch, JsonStyle::Plain);
    }
}

fn field_num(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    push_decimal(out, value);
}

/// Appends `s` as a quoted JSON string.
pub fn write_json_string(out: &mut Vec<u8>, s: &str, style: JsonStyle) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0x00..=0x1f => None,
            b'<' | b'>' | b'&' if style == JsonStyle::Script => None,
            // U+2028 / U+2029 are E2 80 A8 / E2 80 A9.
            0xE2 if style == JsonStyle::Script
                && bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(if bytes[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]),
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a WebSocket text frame carrying `json` (server side, unmasked).
pub fn write_ws_frame(out: &mut Vec<u8>, json: &[u8]) {
    out.reserve(crate::ws::frame_len(json.len(), false));
    write_frame_header(out, true, OpCode::Text, json.len(), None);
    out.extend_from_slice(json);
}

/// Appends an SSE event whose data is `json` (one line: the JSON has no raw line breaks),
/// with `id:` when given.
pub fn write_sse_event(out: &mut Vec<u8>, id: Option<&str>, json: &[u8]) {
    if let Some(id) = id {
        sse::write_id(out, id);
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// Appends one NDJSON line (`json` + LF) as an HTTP chunk.
pub fn write_ndjson_chunk(out: &mut Vec<u8>, json: &[u8]) {
    write_chunk_header(out, json.len() + 1);
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\r\n");
}

const IFRAME_OPEN: &[u8] = b"<script>parent.";
const IFRAME_CLOSE: &[u8] = b");</script>\n";

/// Appends `<script>parent.CALLBACK(json);</script>` as an HTTP chunk. `script_json` must
/// have been written with [`JsonStyle::Script`]; `callback` must pass
/// [`validate_callback`].
pub fn write_iframe_chunk(out: &mut Vec<u8>, callback: &str, script_json: &[u8]) {
    let len = IFRAME_OPEN.len() + callback.len() + 1 + script_json.len() + IFRAME_CLOSE.len();
    write_chunk_header(out, len);
    out.extend_from_slice(IFRAME_OPEN);
    out.extend_from_slice(callback.as_bytes());
    out.push(b'(');
    out.extend_from_slice(script_json);
    out.extend_from_slice(IFRAME_CLOSE);
    out.extend_from_slice(b"\r\n");
}

/// Appends a JSON array of messages (the long-poll answer).
pub fn write_json_array(out: &mut Vec<u8>, msgs: &[Message<'_>], style: JsonStyle) {
    out.push(b'[');
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, m, style);
    }
    out.push(b']');
}

/// Appends `callback([...]);` (JSONP). `callback` must pass [`validate_callback`].
pub fn write_jsonp(out: &mut Vec<u8>, callback: &str, msgs: &[Message<'_>]) {
    out.extend_from_slice(callback.as_bytes());
    out.push(b'(');
    write_json_array(out, msgs, JsonStyle::Script);
    out.extend_from_slice(b");\n");
}

/// Appends a long-poll answer from items already written as JSON (plain style for JSON,
/// script style for JSONP): `[a,b]\n`, or `callback([a,b]);\n` with a callback, which
/// must pass [`validate_callback`].
pub fn write_poll_answer<'a>(
    out: &mut Vec<u8>,
    callback: Option<&str>,
    items: impl IntoIterator<Item = &'a [u8]>,
) {
    if let Some(cb) = callback {
        out.extend_from_slice(cb.as_bytes());
        out.push(b'(');
    }
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    if callback.is_some() {
        out.extend_from_slice(b");");
    }
    out.push(b'\n');
}

/// Why a channel name is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    TooLong,
    /// The byte at this position is not one of `A-Z a-z 0-9 _ - . : @`.
    BadByte(usize),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Empty => write!(f, "empty channel name"),
            ChannelError::TooLong => {
                write!(f, "channel name longer than {MAX_CHANNEL_LEN} bytes")
            }
            ChannelError::BadByte(i) => write!(
                f,
                "invalid character at byte {i} of channel name (allowed: A-Z a-z 0-9 _ - . : @)"
            ),
        }
    }
}

impl std::error::Error for ChannelError {}

/// Checks a channel name: 1-128 bytes of `A-Z a-z 0-9 _ - . : @`.
pub fn validate_channel(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    match name.bytes().position(|b| !is_channel_byte(b)) {
        Some(i) => Err(ChannelError::BadByte(i)),
        None => Ok(()),
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

/// A callback name that is not a plain JavaScript identifier path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackError;

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "callback must be a JavaScript identifier path ([A-Za-z_$][A-Za-z0-9_$]* joined by '.', at most {MAX_CALLBACK_LEN} bytes)"
        )
    }
}

impl std::error::Error for CallbackError {}

/// Checks a JSONP / iframe callback: identifiers (`[A-Za-z_$][A-Za-z0-9_$]*`) joined by
/// dots, at most [`MAX_CALLBACK_LEN`] bytes. Nothing else can reach a script.
pub fn validate_callback(name: &str) -> Result<(), CallbackError> {
    if name.is_empty() || name.len() > MAX_CALLBACK_LEN {
        return Err(CallbackError);
    }
    for part in name.split('.') {
        let mut bytes = part.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b'$' => {}
            _ => return Err(CallbackError),
        }
        if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') {
            return Err(CallbackError);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(msg: &Message<'_>) -> String {
        String::from_utf8(msg.to_json()).unwrap()
    }

    #[test]
    fn envelope_shapes() {
        assert_eq!(
            json(&Message::Data {
                channel: "news",
                seq: 12,
                epoch: "k3x9ab2q",
                from: "",
                event: "",
                content: "hello",
                json: false,
            }),
            r#"{"type":"data","channel":"news","seq":12,"epoch":"k3x9ab2q","content":"hello"}"#
        );
        assert_eq!(
            json(&Message::Data {
                channel: "chat",
                seq: 3,
                epoch: "e1",
                from: "bob \"b\"",
                event: "",
                content: "hi",
                json: false,
            }),
            r#"{"type":"data","channel":"chat","seq":3,"epoch":"e1","from":"bob \"b\"","content":"hi"}"#
        );
        assert_eq!(
            json(&Message::Data {
                channel: "news",
                seq: 12,
                epoch: "",
                from: "",
                event: "",
                content: "hello",
                json: false,
            }),
            r#"{"type":"data","channel":"news","seq":12,"content":"hello"}"#,
            "an unknown epoch is left out"
        );
        assert_eq!(
            json(&Message::Gap {
                channel: "c",
                from: 3,
                to: 9
            }),
            r#"{"type":"gap","channel":"c","from":3,"to":9}"#
        );
        assert_eq!(
            json(&Message::Reset {
                channel: "c",
                epoch: "e2",
                seq: 3
            }),
            r#"{"type":"reset","channel":"c","epoch":"e2","seq":3}"#
        );
        assert_eq!(
            json(&Message::NextSeq {
                channel: "c",
                seq: 4,
                epoch: "e1"
            }),
            r#"{"type":"next_seq","channel":"c","seq":4,"epoch":"e1"}"#
        );
        assert_eq!(
            json(&Message::Noop {
                channel: None,
                seq: None,
                epoch: ""
            }),
            r#"{"type":"noop"}"#
        );
        assert_eq!(
            json(&Message::Noop {
                channel: Some("c"),
                seq: Some(5),
                epoch: "e1"
            }),
            r#"{"type":"noop","channel":"c","seq":5,"epoch":"e1"}"#
        );
        assert_eq!(
            json(&Message::Close { channel: "c" }),
            r#"{"type":"close","channel":"c"}"#
        );
        assert_eq!(
            json(&Message::Error {
                code: 400,
                reason: "bad \"x\""
            }),
            r#"{"type":"error","code":400,"reason":"bad \"x\""}"#
        );
        assert_eq!(json(&Message::Pong), r#"{"type":"pong"}"#);
        assert_eq!(
            json(&Message::Refresh {
                expires: 10,
                deadline: 40
            }),
            r#"{"type":"refresh","expires":10,"deadline":40}"#
        );
        assert_eq!(
            json(&Message::Refreshed { expires: 99 }),
            r#"{"type":"refreshed","expires":99}"#
        );
        assert_eq!(
            json(&Message::Ok {
                channel: "c",
                seq: 1,
                epoch: "e1",
                duplicate: false
            }),
            r#"{"type":"ok","channel":"c","seq":1,"epoch":"e1"}"#
        );
        assert_eq!(
            json(&Message::Ok {
                channel: "c",
                seq: 1,
                epoch: "e1",
                duplicate: true
            }),
            r#"{"type":"ok","channel":"c","seq":1,"epoch":"e1","duplicate":true}"#
        );
    }

    fn escaped(s: &str, style: JsonStyle) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s, style);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn string_escaping() {
        assert_eq!(escaped("a\"b\\c", JsonStyle::Plain), r#""a\"b\\c""#);
        assert_eq!(
            escaped("\n\r\t\u{8}\u{c}", JsonStyle::Plain),
            r#""\n\r\t\b\f""#
        );
        assert_eq!(
            escaped("\u{0}\u{1f}\u{7f}", JsonStyle::Plain),
            "\"\\u0000\\u001f\u{7f}\""
        );
        assert_eq!(escaped("héllo €𝄞", JsonStyle::Plain), "\"héllo €𝄞\"");
        assert_eq!(escaped("</script>", JsonStyle::Plain), "\"</script>\"");
        assert_eq!(
            escaped("</script><!--&\u{2028}\u{2029}", JsonStyle::Script),
            r#""\u003c/script\u003e\u003c!--\u0026\u2028\u2029""#
        );
        assert_eq!(
            escaped("\u{2027}\u{202a}", JsonStyle::Script),
            "\"\u{2027}\u{202a}\""
        );
    }

    #[test]
    fn every_control_character_round_trips_through_serde() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        for style in [JsonStyle::Plain, JsonStyle::Script] {
            let s = escaped(&all, style);
            assert!(!s.bytes().any(|b| b < 0x20), "raw control character left");
            let back: String = serde_json::from_str(&s).unwrap();
            assert_eq!(back, all);
        }
    }

    #[test]
    fn wire_forms() {
        let msg = Message::Data {
            channel: "news",
            seq: 1,
            epoch: "e1",
            from: "",
            event: "",
            content: "a</script>b",
            json: false,
        };
        let plain = msg.to_json();
        let mut script = Vec::new();
        write_json(&mut script, &msg, JsonStyle::Script);

        let mut out = Vec::new();
        write_ws_frame(&mut out, &plain);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, plain.len());
        assert_eq!(&out[2..], &plain[..]);

        out.clear();
        write_sse_event(&mut out, Some("news:1"), &plain);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            format!("id: news:1\ndata: {}\n\n", String::from_utf8_lossy(&plain))
        );

        out.clear();
        write_ndjson_chunk(&mut out, &plain);
        let text = String::from_utf8(out.clone()).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), plain.len() + 1);
        assert!(rest.ends_with("\n\r\n"));

        out.clear();
        write_iframe_chunk(&mut out, "cb", &script);
        let text = String::from_utf8(out.clone()).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let body = rest.strip_suffix("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), body.len());
        assert!(body.starts_with("<script>parent.cb({"));
        assert!(body.ends_with(");</script>\n"));
        assert_eq!(
            body.matches("</script>").count(),
            1,
            "content cannot close the tag"
        );

        out.clear();
        write_jsonp(&mut out, "fn", &[msg, Message::Pong]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("fn([{"));
        assert!(text.ends_with("},{\"type\":\"pong\"}]);\n"));
        assert!(!text.contains("</script>"));
    }

    #[test]
    fn channel_names() {
        assert!(validate_channel("news").is_ok());
        assert!(validate_channel("a-Z_0.9:x@y").is_ok());
        assert!(validate_channel(&"a".repeat(128)).is_ok());
        assert_eq!(validate_channel(""), Err(ChannelError::Empty));
        assert_eq!(
            validate_channel(&"a".repeat(129)),
            Err(ChannelError::TooLong)
        );
        assert_eq!(validate_channel("ab c"), Err(ChannelError::BadByte(2)));
        assert_eq!(validate_channel("a,b"), Err(ChannelError::BadByte(1)));
        assert_eq!(validate_channel("é"), Err(ChannelError::BadByte(0)));
        assert!(ChannelError::BadByte(2).to_string().contains("byte 2"));
    }

    #[test]
    fn callbacks() {
        for ok in ["cb", "_x", "$", "jQuery123_456", "window.app.onMsg"] {
            assert!(validate_callback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1cb",
            "a-b",
            "a..b",
            "a.",
            "alert(1)//",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_callback(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn poll_answers_wrap_their_items() {
        let mut out = Vec::new();
        write_poll_answer(&mut out, None, [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(out, b"[{\"a\":1},{\"b\":2}]\n");
        out.clear();
        write_poll_answer(&mut out, Some("cb"), [&b"{}"[..]]);
        assert_eq!(out, b"cb([{}]);\n");
        out.clear();
        write_poll_answer(&mut out, None, std::iter::empty());
        assert_eq!(out, b"[]\n");
    }
}
