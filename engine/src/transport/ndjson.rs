//! Chunked NDJSON streaming (`/stream`), and the chunked response the iframe stream
//! shares with it.
//!
//! - **start**: every channel subscribed, the chunked head out, then the replay.
//! - **input**: ignored (a stream takes no client bytes).
//! - **deliver**: one chunk per message (its encoding shared by every subscriber).
//! - **timer**: a `noop` line every `heartbeat_secs`.
//! - **end**: the last chunk.

use protocol::http::{self, ResponseBody};
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::CloseCode;

use crate::conn::State;
use crate::msg::Msg;
use crate::reactor::{Backend, Part};
use crate::worker::http::{callback_param, reject, since_points, Reject};
use crate::worker::Core;

/// The heartbeat envelope of a chunked stream (NDJSON and iframe).
pub(super) const NOOP: Message<'static> = Message::Noop {
    channel: None,
    seq: None,
    epoch: "",
};

/// Answers the request and starts the stream.
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
) -> Result<(), Reject> {
    start_chunked(cx, slot, req, q, State::Stream)
}

/// Starts a chunked stream: NDJSON (`State::Stream`) or iframe (`State::Iframe`, with its
/// callback and preamble).
pub fn start_chunked<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    state: State,
) -> Result<(), Reject> {
    if req.version == 0 {
        return Err(reject(505, "streaming needs HTTP/1.1 (chunked encoding)"));
    }
    let iframe = state == State::Iframe;
    let channels = cx.channels_param(q, true)?;
    let points = since_points(q, "since", &channels)?;
    let callback = if iframe { callback_param(q)? } else { None };
    let pending = cx.subscribe_stream(slot, q, channels, points)?;
    let content_type = if iframe {
        "text/html; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    ];
    cx.add_cors(slot, &mut headers);
    let mut out = Vec::with_capacity(1024);
    http::write_response_head(&mut out, 200, &headers, ResponseBody::Chunked, true);
    if iframe {
        super::iframe::write_preamble(&mut out);
    }
    cx.send(slot, &[Part::Copy(&out)]);
    if let Some(cb) = callback {
        cx.conns[slot].ext().callback = Some(cb);
    }
    super::begin_stream(cx, slot, state, pending);
    Ok(())
}

/// Input is ignored: a stream takes no client bytes (all are used).
#[inline]
pub fn input<B: Backend>(_cx: &mut Core<B>, _slot: usize, input: &mut [u8]) -> usize {
    input.len()
}

/// One message as a chunk, its encoding shared by every subscriber.
#[inline]
pub fn deliver<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Msg) {
    cx.send(slot, &[Part::Shared(msg.ndjson_chunk())])
}

/// The heartbeat: a `noop` line, and the timer again.
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    envelope(cx, slot, &NOOP);
    let heartbeat = cx.live().heartbeat();
    cx.rearm(slot, heartbeat);
}

/// Ends the stream with the last chunk, then closes once it is out (the code and reason
/// have no place in a chunked response). The iframe stream ends the same way.
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, _code: CloseCode, _reason: &str) {
    cx.send(slot, &[Part::Copy(http::LAST_CHUNK)]);
    cx.close_graceful(slot);
}

/// An envelope as a chunk.
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Plain);
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    message::write_ndjson_chunk(&mut out, &json);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}
