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
//! - Socket.IO v4 over WebSocket (Engine.IO v4): the WebSocket handshake, then the
//!   Engine.IO OPEN packet is answered with the Socket.IO CONNECT of
//!   [`Request::connect`] (the rooms in its auth); the CONNECT answer makes the
//!   subscription; Engine.IO pings are answered; `message` events are the data.
//!
//! With [`Format::Pushedge`] each message is the JSON envelope
//! (`{"type":"data","channel":C,"seq":N,"content":S}`) and the content is `S`; with
//! [`Format::Raw`] (nchan) the message itself is the content and there is no seq.
//! Socket.IO has no envelope whatever the format: the content is the event's first
//! argument (a JSON string), the seq comes from the recovery offset when there is one.
//!
//! The parts: `ws` (WebSocket handshake and frames), `stream` (the 200 head and body
//! of SSE and stream), `poll` (the long-poll request/answer cycle), `socketio` (Engine.IO
//! and Socket.IO packets over the WebSocket of `ws`), `http` (HTTP/1.1 heads, chunked
//! bodies and lines, shared by the HTTP transports), `envelope` (the message format:
//! pushedge envelope or raw).

mod envelope;
mod http;
mod poll;
mod socketio;
mod stream;
#[cfg(test)]
mod tests;
mod ws;

use protocol::http::ChunkedDecoder;
use protocol::ws::handshake::write_client_request;
use protocol::ws::Decoder;
use serde::Deserialize;

use http::write_get;
use poll::{PollBody, PollPhase};
use socketio::Sio;
pub use socketio::{check_namespace, connect_packet, MAX_NAMESPACE};

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest message (WebSocket message, SSE event, stream line, poll body).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

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
    /// Socket.IO v4 over WebSocket (Engine.IO v4, `transport=websocket`).
    Socketio,
}

impl Transport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::Poll => "poll",
            Transport::Socketio => "socketio",
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
    /// Socket.IO CONNECT_ERROR, with the `data.code` it carried (0: none).
    ConnectError(u16),
    /// Socket.IO DISCONNECT of the namespace by the server.
    SioDisconnect,
    /// Engine.IO CLOSE.
    EioClose,
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
            Failure::ConnectError(0) => "connect_error".into(),
            Failure::ConnectError(c) => format!("connect_error_{c}"),
            Failure::SioDisconnect => "sio_disconnect".into(),
            Failure::EioClose => "eio_close".into(),
        }
    }
}

/// The request a client sends: `Host` and target (path and query), and for Socket.IO
/// the CONNECT packet.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `Host` header.
    pub host: &'a str,
    /// Path and query.
    pub target: &'a str,
    /// Socket.IO: the CONNECT packet sent once Engine.IO is open ([`connect_packet`]);
    /// empty for the other transports.
    pub connect: &'a str,
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
    /// Socket.IO: waiting for the 101.
    SioHead { key: [u8; 24] },
    /// Socket.IO: Engine.IO packets in WebSocket frames.
    Sio(Sio),
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
            Transport::Socketio => State::SioHead {
                key: write_client_request(out, req.host, req.target, nonce),
            },
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
            State::Sio(s) => s.is_connected(),
            State::WsHead { .. } | State::SioHead { .. } | State::HttpHead { .. } | State::Done => {
                false
            }
        }
    }

    /// Bytes held for unfinished heads, lines and frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + match &self.state {
                State::Ws(d) => d.buffered(),
                State::Sio(s) => s.buffered(),
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
                self.ws_head(key, State::Ws(Decoder::new()), req, out, sink)
            }
            State::Ws(decoder) => ws::frames(decoder, self.format, input, out, sink),
            State::SioHead { key } => {
                let key = *key;
                self.buf.extend_from_slice(input);
                self.ws_head(key, State::Sio(Sio::new()), req, out, sink)
            }
            State::Sio(sio) => sio.frames(input, req, out, sink),
            State::HttpHead { sse } => {
                let sse = *sse;
                self.buf.extend_from_slice(input);
                self.http_head(sse, req, out, sink)
            }
            State::Sse {
                chunked,
                data,
                has_data,
            } => stream::sse_body(
                &mut self.buf,
                chunked,
                data,
                has_data,
                self.format,
                input,
                sink,
            ),
            State::Stream { chunked } => {
                stream::ndjson_body(&mut self.buf, chunked, self.format, input, sink)
            }
            State::Poll { .. } => {
                self.buf.extend_from_slice(input);
                self.poll_progress(req, out, sink)
            }
        }
    }

    /// The response head (`head_len` bytes of `buf`) was accepted: switches to `state`
    /// (the subscription is up, except for Socket.IO, whose namespace CONNECT follows) and
    /// feeds what followed the head.
    fn after_head(
        &mut self,
        state: State,
        head_len: usize,
        req: Request<'_>,
        out: &mut Vec<u8>,
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), Failure> {
        self.state = state;
        if self.is_established() {
            sink(Event::Established);
        }
        let mut rest = std::mem::take(&mut self.buf).split_off(head_len);
        self.feed_inner(&mut rest, req, out, sink)
    }

    /// An unfinished head (in `buf`) past [`MAX_HEAD_BYTES`] fails.
    fn check_head_size(&self) -> Result<(), Failure> {
        if self.buf.len() > MAX_HEAD_BYTES {
            Err(Failure::TooBig)
        } else {
            Ok(())
        }
    }
}
