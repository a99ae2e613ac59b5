//! iframe streaming (`/iframe`): a chunked HTML document into which every message is a
//! `<script>` calling the page's callback (`cb=`, default `iframe_callback`), for old
//! browsers without EventSource. It shares the chunked response with
//! [`super::ndjson`].
//!
//! - **start**: the head, then a padded preamble so that browsers start rendering (and
//!   running scripts) at once, then the replay.
//! - **input**: ignored (a stream takes no client bytes).
//! - **deliver**: one script chunk per message, encoded once per callback name per
//!   message (subscribers with the default callback share it).
//! - **timer**: a `noop` script every `heartbeat_secs`.
//! - **end**: the last chunk.

use bytes::Bytes;
use std::sync::Arc;

use protocol::http;
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::CloseCode;

use crate::conn::State;
use crate::msg::Msg;
use crate::reactor::{Backend, Part};
use crate::worker::http::Reject;
use crate::worker::Core;

/// Sent first: a document to hold the scripts, padded so that old browsers start
/// rendering (and running scripts) at once.
const IFRAME_PREAMBLE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>";
/// Bytes of padding after the preamble.
const PREAMBLE_PADDING: usize = 1024;

/// Answers the request and starts the stream.
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
) -> Result<(), Reject> {
    super::ndjson::start_chunked(cx, slot, req, q, State::Iframe)
}

/// Appends the preamble as the first chunk.
pub fn write_preamble(out: &mut Vec<u8>) {
    let mut pre = IFRAME_PREAMBLE.as_bytes().to_vec();
    pre.extend_from_slice(b"<!--");
    pre.resize(pre.len() + PREAMBLE_PADDING, b' ');
    pre.extend_from_slice(b"-->\n");
    http::write_chunk(out, &pre);
}

fn callback<B: Backend>(cx: &Core<B>, slot: usize) -> Box<str> {
    cx.conns[slot]
        .ext
        .as_ref()
        .and_then(|e| e.callback.clone())
        .unwrap_or_else(|| cx.shared.cfg.iframe_callback.clone().into_boxed_str())
}

/// Sends `msg` as a script chunk; `cache` keeps the chunk for the next subscriber with
/// the same callback.
pub fn deliver<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    msg: &Arc<Msg>,
    cache: &mut Option<(Box<str>, Bytes)>,
) {
    let cb = callback(cx, slot);
    let chunk = match cache {
        Some((name, bytes)) if *name == cb => bytes.clone(),
        _ => {
            let mut out = Vec::with_capacity(msg.script_json().len() + 64);
            message::write_iframe_chunk(&mut out, &cb, msg.script_json());
            let b = Bytes::from(out);
            *cache = Some((cb, b.clone()));
            b
        }
    };
    cx.send(slot, &[Part::Shared(&chunk)]);
}

/// Input is ignored: a stream takes no client bytes (all are used).
#[inline]
pub fn input<B: Backend>(_cx: &mut Core<B>, _slot: usize, input: &mut [u8]) -> usize {
    input.len()
}

/// The heartbeat: a `noop` script, and the timer again.
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    envelope(cx, slot, &super::ndjson::NOOP);
    let heartbeat = cx.live().heartbeat();
    cx.rearm(slot, heartbeat);
}

/// Ends the stream with the last chunk, as [`super::ndjson::end`] does.
#[inline]
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, code: CloseCode, reason: &str) {
    super::ndjson::end(cx, slot, code, reason)
}

/// An envelope as a script chunk.
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Script);
    let cb = callback(cx, slot);
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    message::write_iframe_chunk(&mut out, &cb, &json);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}
