//! The subscriber side of every transport, without IO.
//!
//! A [`Client`] is created with the request it must send ([`Client::start`] writes it into
//! the caller's buffer), then fed whatever bytes the socket returns ([`Client::feed`]). It
//! answers with [`Event`]s through a callback and writes any reply (WebSocket pongs and
//! close echoes, the next long-poll request) into the caller's output buffer. A
//! [`Failure`] is terminal: the caller closes the connection and counts the reason.
//!
//! - WebSocket: the handshake of `protocol::ws::handshake`, then `protocol::ws::Decoder`
//!   in the client role. Pings are answered with masked pongs, a close frame is echoed.
//! - SSE: a 200 head (plain or chunked body), then `data:` lines joined per event;
//!   comments (`: ping`), `id:`, `event:` and `retry:` are skipped.
//! - Stream: a 200 chunked head, then one message per line.
//! - Long-poll: `GET ...` without `seq` answers `[{"type":"next_seq",...}]`; then
//!   `GET ...&seq=N` on the same keep-alive connection, again and again, each answer a
//!   JSON array; `N` advances past every message received.
//!
//! With [`Format::Pushedge`] each message is the JSON envelope
//! (`{"type":"data","channel":C,"seq":N,"content":S}`) and the content is `S`; with
//! [`Format::Raw`] (nchan) the message itself is the content and there is no seq.

use std::borrow::Cow;

use protocol::http::{self, ChunkedDecoder, Parsed};
use protocol::ws::handshake::{check_server_response, write_client_request, ClientHandshakeError};
use protocol::ws::{
    encode_close, encode_masked_frame, CloseCode, Decoder, DecoderConfig, Event as WsEvent, OpCode,
    Role,
};
use serde::Deserialize;

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest message (WebSocket message, SSE event, stream line, poll body).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Header fields parsed in a response head.
const MAX_HEADERS: usize = 32;

/// How subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket.
    Ws,
    /// Server-Sent Events.
    Sse,
    /// Chunked NDJSON (pushedge `/stream`).
    Stream,
    /// Long-poll (pushedge `/poll`).
    Poll,
}

impl Transport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::Poll => "poll",
        }
    }
}

/// What a delivered message looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// pushedge's JSON envelope with `seq` and `content`.
    Pushedge,
    /// The published body itself (nchan).
    Raw,
}

/// Something the server told the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription is up: 101, a 200 head, or the first long-poll answer.
    Established,
    /// A data message.
    Data {
        /// The envelope's seq (pushedge format).
        seq: Option<u64>,
        /// The content (the published body).
        content: &'a [u8],
    },
    /// pushedge `gap`: messages `from..=to` are no longer buffered.
    Gap {
        /// First missed seq.
        from: u64,
        /// Last missed seq.
        to: u64,
    },
    /// A message that is not valid JSON of the envelope (pushedge format).
    Foreign,
}

/// Why a subscription ended or never started. Terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered the request with this status.
    Status(u16),
    /// The response is not valid HTTP or not what the transport expects.
    BadResponse(&'static str),
    /// A WebSocket rule was broken.
    Protocol(&'static str),
    /// The server sent a WebSocket close frame with this code (1005: none).
    WsClose(u16),
    /// pushedge `close`: the server closed the channel.
    ChannelClosed,
    /// pushedge `error` with this code.
    ServerError(u16),
    /// The server ended the response (last chunk, or `Connection: close` on long-poll).
    Ended,
    /// A message or head larger than the limits.
    TooBig,
}

impl Failure {
    /// The reason key used in reports.
    pub fn reason(&self) -> String {
        match self {
            Failure::Status(s) => format!("status_{s}"),
            Failure::BadResponse(_) => "bad_response".into(),
            Failure::Protocol(_) => "protocol_error".into(),
            Failure::WsClose(c) => format!("ws_close_{c}"),
            Failure::ChannelClosed => "channel_closed".into(),
            Failure::ServerError(c) => format!("error_{c}"),
            Failure::Ended => "ended".into(),
            Failure::TooBig => "too_big".into(),
        }
    }
}

/// The request a client sends: `Host` and target (path and query).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `Host` header.
    pub host: &'a str,
    /// Path and query.
    pub target: &'a str,
}

/// One subscriber connection's protocol state. See the module documentation.
#[derive(Debug)]
pub struct Client {
    format: Format,
    state: State,
    /// Response head bytes, and for line-based bodies the unfinished line.
    buf: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the 101.
    WsHead { key: [u8; 24] },
    /// Frames.
    Ws(Decoder),
    /// Waiting for the 200 of SSE or stream.
    HttpHead { sse: bool },
    /// SSE events; `data` collects the lines of the event in progress.
    Sse {
        chunked: Option<ChunkedDecoder>,
        data: Vec<u8>,
        has_data: bool,
    },
    /// NDJSON lines.
    Stream { chunked: Option<ChunkedDecoder> },
    /// Long-poll; `seq` is what to ask for next (`None` before `next_seq`).
    Poll { seq: Option<u64>, phase: PollPhase },
    /// Failed: nothing more is accepted.
    Done,
}

#[derive(Debug)]
enum PollPhase {
    Head,
    Body {
        framing: PollBody,
        close_after: bool,
    },
}

#[derive(Debug)]
enum PollBody {
    Length(usize),
    Chunked(ChunkedDecoder, Vec<u8>),
}

/// The fields of the envelope loadgen looks at.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    from: Option<u64>,
    to: Option<u64>,
    code: Option<u16>,
}

impl Client {
    /// A client for `transport`; writes its first request into `out`. `nonce` is the
    /// WebSocket key material (16 random bytes).
    pub fn start(
        transport: Transport,
        format: Format,
        req: Request<'_>,
        nonce: [u8; 16],
        out: &mut Vec<u8>,
    ) -> Client {
        let state = match transport {
            Transport::Ws => State::WsHead {
                key: write_client_request(out, req.host, req.target, nonce),
            },
            Transport::Sse => {
                write_get(out, req, "text/event-stream", None);
                State::HttpHead { sse: true }
            }
            Transport::Stream => {
                write_get(out, req, "application/x-ndjson", None);
                State::HttpHead { sse: false }
            }
            Transport::Poll => {
                write_get(out, req, "application/json", None);
                State::Poll {
                    seq: None,
                    phase: PollPhase::Head,
                }
            }
        };
        Client {
            format,
            state,
            buf: Vec::new(),
        }
    }

    /// True once the subscription is up.
    pub fn is_established(&self) -> bool {
        match &self.state {
            State::Ws(_) | State::Sse { .. } | State::Stream { .. } => true,
            State::Poll { seq, .. } => seq.is_some(),
            State::WsHead { .. } | State::HttpHead { .. } | State::Done => false,
        }
    }

    /// Bytes held for unfinished heads, lines and frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + match &self.state {
                State::Ws(d) => d.buffered(),
                State::Sse { data, .. } => data.len(),
                State::Poll {
                    phase:
                        PollPhase::Body {
                            framing: PollBody::Chunked(_, b),
                            ..
                        },
                    ..
                } => b.len(),
                _ => 0,
            }
    }

    /// Feeds bytes read from the socket (they may be modified: WebSocket payloads are
    /// unmasked in place). Replies go into `out`; events to `sink`.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        let r = self.feed_inner(input, req, out, sink);
        if r.is_err() {
            self.state = State::Done;
            self.buf = Vec::new();
        }
        r
    }

    fn feed_inner(
        &mut self,
        input: &mut [u8],
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        match &mut self.state {
            State::Done => Err(Failure::BadResponse("data after the end")),
            State::WsHead { key } => {
                let key = *key;
                self.buf.extend_from_slice(input);
                let head_len = match check_server_response(&self.buf, &key) {
                    Ok(Parsed::Partial) => return self.check_head_size(),
                    Ok(Parsed::Complete(n)) => n,
                    Err(ClientHandshakeError::Status(s)) => return Err(Failure::Status(s)),
                    Err(ClientHandshakeError::Malformed) => {
                        return Err(Failure::BadResponse("malformed handshake response"))
                    }
                    Err(ClientHandshakeError::BadAccept) => {
                        return Err(Failure::BadResponse("wrong Sec-WebSocket-Accept"))
                    }
                };
                self.state = State::Ws(Decoder::new());
                sink(Event::Established);
                let mut rest = std::mem::take(&mut self.buf).split_off(head_len);
                self.feed_inner(&mut rest, req, out, sink)
            }
            State::Ws(decoder) => ws_frames(decoder, self.format, input, out, sink),
            State::HttpHead { sse } => {
                let sse = *sse;
                self.buf.extend_from_slice(input);
                let (head_len, status, chunked, _) = match parse_head(&self.buf)? {
                    Some(h) => h,
                    None => return self.check_head_size(),
                };
                if status != 200 {
                    return Err(Failure::Status(status));
                }
                let chunked = chunked.then(|| ChunkedDecoder::new(usize::MAX));
                self.state = if sse {
                    State::Sse {
                        chunked,
                        data: Vec::new(),
                        has_data: false,
                    }
                } else {
                    State::Stream { chunked }
                };
                sink(Event::Established);
                let mut rest = std::mem::take(&mut self.buf).split_off(head_len);
                self.feed_inner(&mut rest, req, out, sink)
            }
            State::Sse {
                chunked,
                data,
                has_data,
            } => {
                let format = self.format;
                let body = dechunk(chunked, input)?;
                lines(&mut self.buf, &body, |line| {
                    sse_line(line, data, has_data, format, sink)
                })?;
                if body.ended {
                    return Err(Failure::Ended);
                }
                Ok(())
            }
            State::Stream { chunked } => {
                let format = self.format;
                let body = dechunk(chunked, input)?;
                lines(&mut self.buf, &body, |line| {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        return Ok(());
                    }
                    deliver(format, line, sink)
                })?;
                if body.ended {
                    return Err(Failure::Ended);
                }
                Ok(())
            }
            State::Poll { .. } => {
                self.buf.extend_from_slice(input);
                self.poll_progress(req, out, sink)
            }
        }
    }

    fn check_head_size(&self) -> Result<(), Failure> {
        if self.buf.len() > MAX_HEAD_BYTES {
            Err(Failure::TooBig)
        } else {
            Ok(())
        }
    }

    /// Handles every complete long-poll response in `buf`.
    fn poll_progress(
        &mut self,
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        loop {
            let State::Poll { seq, phase } = &mut self.state else {
                unreachable!("poll_progress runs in the poll state");
            };
            match phase {
                PollPhase::Head => {
                    let Some((head_len, status, chunked, close)) = parse_head(&self.buf)? else {
                        return self.check_head_size();
                    };
                    if status != 200 {
                        return Err(Failure::Status(status));
                    }
                    let framing = if chunked {
                        PollBody::Chunked(ChunkedDecoder::new(MAX_MESSAGE_BYTES), Vec::new())
                    } else {
                        let len = content_length(&self.buf[..head_len])?;
                        if len > MAX_MESSAGE_BYTES {
                            return Err(Failure::TooBig);
                        }
                        PollBody::Length(len)
                    };
                    self.buf.drain(..head_len);
                    *phase = PollPhase::Body {
                        framing,
                        close_after: close,
                    };
                }
                PollPhase::Body {
                    framing,
                    close_after,
                } => {
                    let body: Vec<u8> = match framing {
                        PollBody::Length(n) => {
                            if self.buf.len() < *n {
                                return Ok(());
                            }
                            let rest = self.buf.split_off(*n);
                            std::mem::replace(&mut self.buf, rest)
                        }
                        PollBody::Chunked(dec, body) => {
                            let (used, done) = dec
                                .decode(&self.buf, body)
                                .map_err(|_| Failure::BadResponse("bad chunked body"))?;
                            self.buf.drain(..used);
                            if !done {
                                return Ok(());
                            }
                            std::mem::take(body)
                        }
                    };
                    let close_after = *close_after;
                    let was_established = seq.is_some();
                    poll_items(&body, seq, sink)?;
                    let Some(next) = *seq else {
                        return Err(Failure::BadResponse("long-poll answer without next_seq"));
                    };
                    if !was_established {
                        sink(Event::Established);
                    }
                    if close_after {
                        return Err(Failure::Ended);
                    }
                    write_get(out, req, "application/json", Some(next));
                    *phase = PollPhase::Head;
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Writes `GET target` (with `seq=N` appended when given).
fn write_get(out: &mut Vec<u8>, req: Request<'_>, accept: &str, seq: Option<u64>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.target.as_bytes());
    if let Some(n) = seq {
        out.push(if req.target.contains('?') { b'&' } else { b'?' });
        out.extend_from_slice(b"seq=");
        http::push_decimal(out, n);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(req.host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-cache\r\n\r\n");
}

/// Parses a response head: `(head length, status, chunked, connection close)`, or `None`
/// when incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, bool, bool)>, Failure> {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            let chunked = http::has_token(resp.headers, "transfer-encoding", "chunked");
            let close =
                http::has_token(resp.headers, "connection", "close") || resp.version == Some(0);
            Ok(Some((n, status, chunked, close)))
        }
        Err(_) => Err(Failure::BadResponse("malformed response head")),
    }
}

/// The `Content-Length` of a complete head (0 when absent).
fn content_length(head: &[u8]) -> Result<usize, Failure> {
    let mut headers = [http::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(head)
        .map_err(|_| Failure::BadResponse("malformed response head"))?;
    match http::header(resp.headers, "content-length") {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Failure::BadResponse("bad Content-Length")),
    }
}

/// Body bytes after removing the chunked framing, and whether the body ended.
struct Body<'a> {
    bytes: Cow<'a, [u8]>,
    ended: bool,
}

impl std::ops::Deref for Body<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

fn dechunk<'a>(chunked: &mut Option<ChunkedDecoder>, input: &'a [u8]) -> Result<Body<'a>, Failure> {
    match chunked {
        None => Ok(Body {
            bytes: Cow::Borrowed(input),
            ended: false,
        }),
        Some(dec) => {
            let mut out = Vec::with_capacity(input.len());
            let (_, done) = dec
                .decode(input, &mut out)
                .map_err(|_| Failure::BadResponse("bad chunked body"))?;
            Ok(Body {
                bytes: Cow::Owned(out),
                ended: done,
            })
        }
    }
}

/// Calls `f` for every complete line (without CR LF) of `pending` + `data`; keeps the
/// unfinished rest in `pending`. Lines are taken from `data` in place when nothing is
/// pending.
fn lines(
    pending: &mut Vec<u8>,
    data: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut each = |mut s: &[u8]| -> Result<usize, Failure> {
        let mut used = 0;
        while let Some(nl) = s.iter().position(|&b| b == b'\n') {
            let line = &s[..nl];
            f(line.strip_suffix(b"\r").unwrap_or(line))?;
            used += nl + 1;
            s = &s[nl + 1..];
        }
        Ok(used)
    };
    if pending.is_empty() {
        let used = each(data)?;
        pending.extend_from_slice(&data[used..]);
    } else {
        pending.extend_from_slice(data);
        let used = each(pending)?;
        pending.drain(..used);
        if pending.is_empty() {
            *pending = Vec::new();
        }
    }
    if pending.len() > MAX_MESSAGE_BYTES {
        return Err(Failure::TooBig);
    }
    Ok(())
}

/// One SSE line: collects `data:` and dispatches the event on the blank line.
fn sse_line(
    line: &[u8],
    data: &mut Vec<u8>,
    has_data: &mut bool,
    format: Format,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    if line.is_empty() {
        if *has_data {
            *has_data = false;
            let event = std::mem::take(data);
            deliver(format, &event, sink)?;
        }
        return Ok(());
    }
    if line[0] == b':' {
        return Ok(());
    }
    let (field, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    if field == b"data" {
        if *has_data {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
        *has_data = true;
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(Failure::TooBig);
        }
    }
    Ok(())
}

/// Decodes frames from `input`, answering pings and close frames.
fn ws_frames(
    decoder: &mut Decoder,
    format: Format,
    input: &mut [u8],
    out: &mut Vec<u8>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let cfg = DecoderConfig {
        role: Role::Client,
        max_message: MAX_MESSAGE_BYTES,
    };
    let mut pos = 0;
    while pos < input.len() {
        let d = decoder
            .decode(&mut input[pos..], &cfg)
            .map_err(|e| Failure::Protocol(e.reason()))?;
        pos += d.consumed;
        match d.event {
            None => {}
            Some(WsEvent::Message { data, .. }) => deliver(format, &data, sink)?,
            Some(WsEvent::Ping(p)) => {
                encode_masked_frame(out, true, OpCode::Pong, &p, mask());
            }
            Some(WsEvent::Pong(_)) => {}
            Some(WsEvent::Close(c)) => {
                let code = c.map_or(CloseCode::NO_STATUS, |c| c.code);
                let echo = if code == CloseCode::NO_STATUS {
                    CloseCode::NORMAL
                } else {
                    code
                };
                encode_close(out, echo, "", Some(mask()));
                return Err(Failure::WsClose(code.0));
            }
        }
    }
    Ok(())
}

fn mask() -> [u8; 4] {
    fastrand::u32(..).to_ne_bytes()
}

/// One message, by format.
fn deliver(format: Format, msg: &[u8], sink: &mut dyn FnMut(Event<'_>)) -> Result<(), Failure> {
    match format {
        Format::Raw => {
            sink(Event::Data {
                seq: None,
                content: msg,
            });
            Ok(())
        }
        Format::Pushedge => match serde_json::from_slice::<Envelope<'_>>(msg) {
            Ok(env) => envelope(&env, sink),
            Err(_) => {
                sink(Event::Foreign);
                Ok(())
            }
        },
    }
}

fn envelope(env: &Envelope<'_>, sink: &mut dyn FnMut(Event<'_>)) -> Result<(), Failure> {
    match env.ty.as_ref() {
        "data" => match &env.content {
            Some(c) => sink(Event::Data {
                seq: env.seq,
                content: c.as_bytes(),
            }),
            None => sink(Event::Foreign),
        },
        "gap" => sink(Event::Gap {
            from: env.from.unwrap_or(0),
            to: env.to.unwrap_or(0),
        }),
        "close" => return Err(Failure::ChannelClosed),
        "error" => return Err(Failure::ServerError(env.code.unwrap_or(0))),
        // noop, next_seq, pong: nothing to count.
        _ => {}
    }
    Ok(())
}

/// The items of one long-poll answer; advances `seq`.
fn poll_items(
    body: &[u8],
    seq: &mut Option<u64>,
    sink: &mut dyn FnMut(Event<'_>),
) -> Result<(), Failure> {
    let items: Vec<Envelope<'_>> = serde_json::from_slice(body)
        .map_err(|_| Failure::BadResponse("long-poll answer is not a JSON array of messages"))?;
    for env in &items {
        match env.ty.as_ref() {
            "next_seq" => {
                if let Some(s) = env.seq {
                    *seq = Some(s);
                }
            }
            "data" => {
                if let Some(s) = env.seq {
                    *seq = Some(seq.map_or(s + 1, |cur| cur.max(s + 1)));
                }
            }
            "gap" => {
                if let Some(to) = env.to {
                    *seq = Some(seq.map_or(to + 1, |cur| cur.max(to + 1)));
                }
            }
            "noop" if seq.is_none() => *seq = env.seq,
            _ => {}
        }
        envelope(env, sink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ws::accept_key;
    use protocol::ws::encode_frame;

    const REQ: Request<'static> = Request {
        host: "127.0.0.1:8100",
        target: "/x?channel=a",
    };

    /// Feeds `input` in pieces of `step` bytes; collects events as strings.
    fn feed_all(
        c: &mut Client,
        input: &[u8],
        step: usize,
        out: &mut Vec<u8>,
    ) -> (Vec<String>, Result<(), Failure>) {
        let mut events = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut piece = piece.to_vec();
            let r = c.feed(&mut piece, REQ, out, &mut |e| {
                events.push(match e {
                    Event::Established => "up".to_string(),
                    Event::Data { seq, content } => {
                        format!("{seq:?}:{}", String::from_utf8_lossy(content))
                    }
                    Event::Gap { from, to } => format!("gap {from}-{to}"),
                    Event::Foreign => "foreign".to_string(),
                })
            });
            if r.is_err() {
                return (events, r);
            }
        }
        (events, Ok(()))
    }

    fn data_json(seq: u64, content: &str) -> String {
        serde_json::json!({"type":"data","channel":"a","seq":seq,"content":content}).to_string()
    }

    #[test]
    fn websocket_handshake_frames_ping_and_close() {
        for step in [1, 3, 7, 1000] {
            let mut out = Vec::new();
            let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [9; 16], &mut out);
            let req = String::from_utf8(out.clone()).unwrap();
            assert!(req.starts_with("GET /x?channel=a HTTP/1.1\r\n"), "{req}");
            let key_line = req
                .lines()
                .find(|l| l.starts_with("Sec-WebSocket-Key: "))
                .unwrap();
            let key = key_line.trim_start_matches("Sec-WebSocket-Key: ");
            let mut input = Vec::new();
            protocol::ws::handshake::write_accept_response(&mut input, &accept_key(key.as_bytes()));
            encode_frame(
                &mut input,
                true,
                OpCode::Text,
                data_json(1, "{\"t\":5,\"i\":0}").as_bytes(),
            );
            encode_frame(&mut input, true, OpCode::Ping, b"hb");
            encode_frame(&mut input, true, OpCode::Text, data_json(2, "b").as_bytes());
            encode_frame(&mut input, true, OpCode::Text, b"{\"type\":\"noop\"}");
            encode_frame(&mut input, true, OpCode::Text, b"not json");
            out.clear();
            let (events, r) = feed_all(&mut c, &input, step, &mut out);
            assert_eq!(r, Ok(()));
            assert!(c.is_established());
            assert_eq!(
                events,
                vec!["up", "Some(1):{\"t\":5,\"i\":0}", "Some(2):b", "foreign"],
                "step {step}"
            );
            // The pong is masked and carries the ping's payload.
            let mut d = Decoder::new();
            let cfg = DecoderConfig {
                role: Role::Server,
                max_message: 1024,
            };
            let r = d.decode(&mut out, &cfg).unwrap();
            assert_eq!(r.event, Some(WsEvent::Pong(Cow::Borrowed(&b"hb"[..]))));

            let mut close = Vec::new();
            encode_close(&mut close, CloseCode::GOING_AWAY, "bye", None);
            out.clear();
            let (_, r) = feed_all(&mut c, &close, step, &mut out);
            assert_eq!(r, Err(Failure::WsClose(1001)));
            assert_eq!(Failure::WsClose(1001).reason(), "ws_close_1001");
            assert!(!out.is_empty(), "close is echoed");
        }
    }

    #[test]
    fn websocket_rejections() {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
        let (_, r) = feed_all(
            &mut c,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            5,
            &mut out,
        );
        assert_eq!(r, Err(Failure::Status(503)));
        assert_eq!(Failure::Status(503).reason(), "status_503");

        let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
        let (_, r) = feed_all(
            &mut c,
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n",
            100,
            &mut out,
        );
        assert!(matches!(r, Err(Failure::BadResponse(_))));

        let mut c = Client::start(Transport::Ws, Format::Pushedge, REQ, [1; 16], &mut out);
        let (_, r) = feed_all(&mut c, &[b'x'; MAX_HEAD_BYTES + 2], 4096, &mut out);
        assert!(r.is_err());
    }

    #[test]
    fn sse_events_plain_and_chunked() {
        let mut body = String::from("retry: 2000\n\n: ping\n\n");
        body += &format!("id: a:1\ndata: {}\n\n", data_json(1, "x"));
        body += &format!("id: a:2\r\ndata: {}\r\n\r\n", data_json(2, "line1\nline2"));
        body += ": ping\n\n";
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        for step in [1, 2, 5, 64, 4096] {
            let mut out = Vec::new();
            let mut c = Client::start(Transport::Sse, Format::Pushedge, REQ, [0; 16], &mut out);
            let req = String::from_utf8(out.clone()).unwrap();
            assert!(req.contains("\r\nAccept: text/event-stream\r\n"), "{req}");
            let input = format!("{head}{body}");
            let (events, r) = feed_all(&mut c, input.as_bytes(), step, &mut out);
            assert_eq!(r, Ok(()));
            assert_eq!(events, vec!["up", "Some(1):x", "Some(2):line1\nline2"]);
        }
        // nchan-style: chunked, raw bodies, a multi-line data event.
        let mut chunked = Vec::new();
        for piece in [
            ": hi\n\n",
            "id: 1:0\ndata: {\"t\":1,",
            "\"i\":0}\n\ndata: a\ndata: b\n\n",
        ] {
            http::write_chunk(&mut chunked, piece.as_bytes());
        }
        let mut input =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                .to_vec();
        input.extend_from_slice(&chunked);
        for step in [1, 3, 1000] {
            let mut out = Vec::new();
            let mut c = Client::start(Transport::Sse, Format::Raw, REQ, [0; 16], &mut out);
            let (events, r) = feed_all(&mut c, &input, step, &mut out);
            assert_eq!(r, Ok(()));
            assert_eq!(events, vec!["up", "None:{\"t\":1,\"i\":0}", "None:a\nb"]);
            let (_, r) = feed_all(&mut c, http::LAST_CHUNK, step, &mut out);
            assert_eq!(r, Err(Failure::Ended));
        }
    }

    #[test]
    fn sse_refused() {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Sse, Format::Pushedge, REQ, [0; 16], &mut out);
        let (events, r) = feed_all(
            &mut c,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno",
            7,
            &mut out,
        );
        assert!(events.is_empty());
        assert_eq!(r, Err(Failure::Status(400)));
    }

    #[test]
    fn stream_lines_and_channel_close() {
        let mut body = Vec::new();
        http::write_chunk(&mut body, format!("{}\n", data_json(7, "p")).as_bytes());
        http::write_chunk(
            &mut body,
            b"{\"type\":\"noop\"}\n{\"type\":\"gap\",\"channel\":\"a\",\"from\":1,\"to\":3}\n",
        );
        http::write_chunk(&mut body, b"{\"type\":\"close\",\"channel\":\"a\"}\n");
        let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        input.extend_from_slice(&body);
        for step in [1, 9, 1000] {
            let mut out = Vec::new();
            let mut c = Client::start(Transport::Stream, Format::Pushedge, REQ, [0; 16], &mut out);
            let (events, r) = feed_all(&mut c, &input, step, &mut out);
            assert_eq!(events, vec!["up", "Some(7):p", "gap 1-3"]);
            assert_eq!(r, Err(Failure::ChannelClosed));
        }
    }

    #[test]
    fn long_poll_cycle() {
        fn answer(items: &str) -> Vec<u8> {
            let mut v = Vec::new();
            http::write_response(
                &mut v,
                200,
                &[("Content-Type", "application/json")],
                items.as_bytes(),
                true,
            );
            v
        }
        for step in [1, 4, 4096] {
            let mut out = Vec::new();
            let mut c = Client::start(Transport::Poll, Format::Pushedge, REQ, [0; 16], &mut out);
            assert!(String::from_utf8_lossy(&out).starts_with("GET /x?channel=a HTTP/1.1\r\n"));
            out.clear();
            let (events, r) = feed_all(
                &mut c,
                &answer("[{\"type\":\"next_seq\",\"channel\":\"a\",\"seq\":5}]"),
                step,
                &mut out,
            );
            assert_eq!(r, Ok(()));
            assert_eq!(events, vec!["up"]);
            assert!(c.is_established());
            assert!(
                String::from_utf8_lossy(&out).starts_with("GET /x?channel=a&seq=5 HTTP/1.1\r\n")
            );
            out.clear();
            let two = format!("[{},{}]", data_json(5, "a"), data_json(6, "b"));
            let mut input = answer(&two);
            input.extend_from_slice(&answer("[{\"type\":\"noop\"}]"));
            let (events, r) = feed_all(&mut c, &input, step, &mut out);
            assert_eq!(r, Ok(()));
            assert_eq!(events, vec!["Some(5):a", "Some(6):b"]);
            let reqs = String::from_utf8_lossy(&out).to_string();
            assert_eq!(
                reqs.matches("GET /x?channel=a&seq=7 HTTP/1.1\r\n").count(),
                2,
                "{reqs}"
            );
        }
    }

    #[test]
    fn long_poll_connection_close_ends() {
        let mut out = Vec::new();
        let mut c = Client::start(Transport::Poll, Format::Pushedge, REQ, [0; 16], &mut out);
        let mut v = Vec::new();
        http::write_response(
            &mut v,
            200,
            &[],
            b"[{\"type\":\"next_seq\",\"seq\":1}]",
            false,
        );
        let (events, r) = feed_all(&mut c, &v, 1000, &mut out);
        assert_eq!(events, vec!["up"]);
        assert_eq!(r, Err(Failure::Ended));
    }
}
