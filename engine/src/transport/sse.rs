//! Server-Sent Events (`/sse`).
//!
//! - **start**: `since=` or `Last-Event-ID` (the whole cursor, one position per channel)
//!   say where each channel resumes; every channel is subscribed, the head and `retry:`
//!   go out, then what is buffered is replayed.
//! - **deliver**: one event per message; its `id:` is the connection's whole cursor. With
//!   one channel the event's encoding is shared by every subscriber; with several the
//!   `id:` line is written per connection in front of the shared `data:`.
//! - **input**: ignored (a stream takes no client bytes).
//! - **timer**: `: ping` every `heartbeat_secs`.
//! - **end**: the response ends (the connection closes).

use std::sync::Arc;

use protocol::http::{self, ResponseBody};
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::CloseCode;

use crate::conn::State;
use crate::epoch::Epoch;
use crate::hub::Since;
use crate::msg::Msg;
use crate::reactor::{Backend, Part};
use crate::worker::http::{reject, since_points, Reject};
use crate::worker::index::PAUSED;
use crate::worker::Core;

/// Answers the request and starts the stream.
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
) -> Result<(), Reject> {
    let channels = cx.channels_param(q, true)?;
    let points = resume_points(cx, req, q, &channels)?;
    let pending = cx.subscribe_stream(slot, q, channels, points)?;
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("X-Accel-Buffering", "no"),
    ];
    cx.add_cors(slot, &mut headers);
    let mut out = Vec::with_capacity(256);
    http::write_response_head(&mut out, 200, &headers, ResponseBody::Unframed, false);
    protocol::sse::write_retry(&mut out, cx.shared.cfg.sse_retry_ms);
    cx.send(slot, &[Part::Copy(&out)]);
    super::begin_stream(cx, slot, State::Sse, pending);
    Ok(())
}

/// `since` for each channel: from `Last-Event-ID` (resume after) or `since=`.
fn resume_points<B: Backend>(
    cx: &Core<B>,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    channels: &[String],
) -> Result<Vec<Since>, Reject> {
    let mut points = since_points(q, "since", channels)?;
    let last_id = req
        .header_str("last-event-id")
        .or_else(|| q.get("lastEventId"))
        .filter(|s| !s.trim().is_empty());
    if let Some(id) = last_id {
        let cursor = protocol::sse::parse_cursor(id, cx.shared.cfg.max_channels_per_conn)
            .map_err(|e| reject(400, format!("bad Last-Event-ID: {e}")))?;
        for (name, pos) in cursor {
            if let Some(i) = channels.iter().position(|c| c == name) {
                let epoch = pos.epoch.and_then(Epoch::parse).unwrap_or(Epoch::NONE);
                points[i] = Since::Seq(pos.seq.saturating_add(1), epoch);
            }
        }
    }
    Ok(points)
}

/// Input is ignored: an event stream takes no client bytes (all are used).
#[inline]
pub fn input<B: Backend>(_cx: &mut Core<B>, _slot: usize, input: &mut [u8]) -> usize {
    input.len()
}

/// One message as an event.
pub fn deliver<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Arc<Msg>) {
    if cx.conns[slot].subs.len() == 1 {
        return cx.send(slot, &[Part::Shared(msg.sse_event())]);
    }
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    write_cursor_line(cx, slot, &mut out);
    cx.send(slot, &[Part::Copy(&out), Part::Shared(msg.sse_data())]);
    cx.out = out;
}

/// An envelope as an event (with the cursor as its id).
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Plain);
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    write_cursor_line(cx, slot, &mut out);
    message::write_sse_event(&mut out, None, &json);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}

/// The heartbeat comment.
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    cx.send(slot, &[Part::Copy(protocol::sse::PING_COMMENT)]);
    let heartbeat = cx.live().heartbeat();
    cx.rearm(slot, heartbeat);
}

/// Ends the response: the connection closes once what is written is out (the code and
/// reason have no place in an event stream).
#[inline]
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, _code: CloseCode, _reason: &str) {
    cx.close_graceful(slot)
}

/// Appends `id: <cursor>\n`: each channel's position (while one is read from Redis, the
/// position the client asked for).
fn write_cursor_line<B: Backend>(cx: &Core<B>, slot: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"id: ");
    let conn = &cx.conns[slot];
    let token = cx.conns.token(slot);
    protocol::cursor::write_cursor(
        out,
        conn.subs.as_slice().iter().map(|s| {
            let chan = cx.index.chan(s.local);
            if s.last_seq & PAUSED == 0 {
                return (&*chan.name, s.last_seq, chan.epoch.as_str());
            }
            let asked = cx
                .remote
                .asked(token, s.local)
                .map_or(chan.epoch.as_str(), |r| r.epoch.as_str());
            (&*chan.name, s.last_seq & !PAUSED, asked)
        }),
    );
    out.push(b'\n');
}
