//! Long-polling (`/poll`, `/sub`), JSON or JSONP (`cb=`).
//!
//! - **start**: with `seq=` (a position), what is buffered from it answers at once;
//!   with nothing to answer, the request is held (subscribed) until a message comes or
//!   `poll_timeout_secs` passes. Without `seq=`, the answer is where each channel's
//!   stream continues (`next_seq`), read from Redis first where this cluster node does
//!   not know it.
//! - **deliver**: the first message(s) answer the held request; the connection then
//!   waits for its next request (keep-alive), unsubscribed.
//! - **input**: pipelined requests wait until the held one is answered.
//! - **timer**: a `noop` answer per channel.
//! - **end**: a `noop` answer, and no keep-alive.
//!
//! Answers are a JSON array of envelopes (JSONP: `callback([...]);`, served with
//! `X-Content-Type-Options: nosniff`), written by `protocol::message::write_poll_answer`.

use bytes::Bytes;
use std::sync::Arc;

use protocol::http;
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::ws::CloseCode;

use crate::conn::{flag, Conn};
use crate::epoch::Epoch;
use crate::hub::{Authority, Since};
use crate::msg::Msg;
use crate::reactor::{Backend, Part};
use crate::worker::http::{callback_param, reject, since_points, Reject};
use crate::worker::index::PAUSED;
use crate::worker::remote::ReqKind;
use crate::worker::Core;

/// Answers the request, or holds it.
pub fn start<B: Backend>(cx: &mut Core<B>, slot: usize, q: &Query<'_>) -> Result<(), Reject> {
    let channels = cx.channels_param(q, true)?;
    let points = since_points(q, "seq", &channels)?;
    let callback = callback_param(q)?;
    if let Err(e) = cx.check_token(q, &channels) {
        cx.auth_failed(slot, "poll", e.reason());
        return Err(reject(401, e.reason()));
    }
    let conn = &mut cx.conns[slot];
    if callback.is_some() {
        conn.set(flag::JSONP);
        conn.ext().callback = callback;
    } else {
        conn.clear(flag::JSONP);
    }
    let asked: Vec<(u64, Epoch)> = points
        .iter()
        .filter_map(|p| match p {
            Since::Seq(seq, epoch) => Some((*seq, *epoch)),
            Since::Now => None,
        })
        .collect();
    if asked.is_empty() {
        next_seq(cx, slot, &channels);
        return Ok(());
    }
    if asked.len() != channels.len() {
        return Err(reject(
            400,
            "seq: give every channel a position (or none, to learn where each continues)",
        ));
    }
    let seq = asked[0].0;
    let mut items: Vec<Bytes> = Vec::new();
    for (name, &pos) in channels.iter().zip(&asked) {
        replay_one(cx, slot, name, pos, &mut items)?;
    }
    if !items.is_empty() {
        answer(cx, slot, &items);
        return Ok(());
    }
    // Nothing yet (or waiting for Redis): hold the request.
    hold(cx, slot, seq);
    Ok(())
}

/// What one channel has from `seq` (a reset and a gap first where they apply), or its
/// Redis read asked for; the channel stays subscribed when it has nothing.
fn replay_one<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    name: &str,
    (seq, epoch): (u64, Epoch),
    items: &mut Vec<Bytes>,
) -> Result<(), Reject> {
    cx.replay.clear();
    let s = match cx.subscribe(slot, name, Since::Seq(seq, epoch), true, true) {
        Ok(s) => s,
        Err(e) => {
            cx.unsubscribe_all(slot);
            return Err(reject(e.status(), e.reason()));
        }
    };
    if s.remote {
        let local = cx.index.local(s.key).expect("subscribed");
        cx.request_remote(slot, local, &s.name, seq, epoch, ReqKind::Poll);
        return Ok(());
    }
    if s.reset {
        let reset = Message::Reset {
            channel: &s.name,
            epoch: s.epoch.as_str(),
            seq: s.seq,
        };
        items.push(item(cx, slot, &reset));
    }
    if let Some((from, to)) = s.gap {
        let gap = Message::Gap {
            channel: &s.name,
            from,
            to,
        };
        items.push(item(cx, slot, &gap));
    }
    let replay = std::mem::take(&mut cx.replay);
    for m in &replay {
        items.push(msg_item(&cx.conns[slot], m));
    }
    cx.replay = replay;
    Ok(())
}

fn hold<B: Backend>(cx: &mut Core<B>, slot: usize, seq: u64) {
    cx.conns[slot].ext().poll_seq = seq;
    let moved = cx.conns[slot].hold();
    if cx.apply(slot, moved) {
        let t = cx.live().poll_timeout();
        cx.arm(slot, t);
    }
}

/// A long-poll without `seq`: where each channel's stream continues. A cluster node
/// that does not know a channel (or whose feed is down) asks Redis first.
fn next_seq<B: Backend>(cx: &mut Core<B>, slot: usize, channels: &[String]) {
    let hub = cx.shared.hub.clone();
    let cluster = cx.shared.cluster.is_some();
    let stale = cx.authority() == Authority::Stale;
    let known: Vec<Option<(Epoch, u64)>> = channels
        .iter()
        .map(|name| match hub.local_stream(name) {
            Some((e, seq)) if e.is_some() || !cluster => Some((e, seq)),
            None if !cluster => Some((Epoch::NONE, 0)),
            _ => None,
        })
        .map(|k| k.filter(|_| !stale))
        .collect();
    let items: Vec<Option<Bytes>> = channels
        .iter()
        .zip(&known)
        .map(|(name, k)| {
            k.map(|(epoch, seq)| {
                let m = Message::NextSeq {
                    channel: name,
                    seq: seq + 1,
                    epoch: epoch.as_str(),
                };
                item(cx, slot, &m)
            })
        })
        .collect();
    if items.iter().all(Option::is_some) {
        let items: Vec<Bytes> = items.into_iter().flatten().collect();
        return answer(cx, slot, &items);
    }
    let names: Vec<Arc<str>> = channels.iter().map(|c| Arc::from(c.as_str())).collect();
    let ext = cx.conns[slot].ext();
    ext.poll_items = items;
    ext.poll_names = names.clone();
    for (i, name) in names.iter().enumerate() {
        if known[i].is_none() {
            cx.request_remote(slot, i as u32, name, 0, Epoch::NONE, ReqKind::NextSeq);
        }
    }
    hold(cx, slot, 0);
}

/// One item of an answer, in the connection's JSON style.
pub fn item<B: Backend>(cx: &Core<B>, slot: usize, m: &Message<'_>) -> Bytes {
    let style = if cx.conns[slot].has(flag::JSONP) {
        JsonStyle::Script
    } else {
        JsonStyle::Plain
    };
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, m, style);
    Bytes::from(json)
}

/// A published message as an item (its shared encoding in the connection's style).
pub fn msg_item(conn: &Conn, m: &Msg) -> Bytes {
    if conn.has(flag::JSONP) {
        m.script_json().clone()
    } else {
        m.json().clone()
    }
}

/// Input waits: pipelined requests are read after the held one is answered (none is
/// used).
#[inline]
pub fn input<B: Backend>(_cx: &mut Core<B>, _slot: usize, _input: &mut [u8]) -> usize {
    0
}

/// A message answers the held request.
pub fn deliver<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Msg) {
    let item = msg_item(&cx.conns[slot], msg);
    answer(cx, slot, &[item]);
}

/// Messages (fresh ones, in order) answer the held request.
pub fn deliver_run<B: Backend>(cx: &mut Core<B>, slot: usize, msgs: &[Arc<Msg>]) {
    let items: Vec<Bytes> = msgs.iter().map(|m| msg_item(&cx.conns[slot], m)).collect();
    answer(cx, slot, &items);
}

/// The poll timed out: a `noop` answer.
#[inline]
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    answer_noop(cx, slot)
}

/// Ends the held request with a `noop` answer, and the connection after it (the code and
/// reason have no place in an answer).
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize, _code: CloseCode, _reason: &str) {
    cx.conns[slot].clear(flag::KEEP_ALIVE);
    answer_noop(cx, slot);
}

/// An envelope made for this connection answers the held request.
pub fn envelope<B: Backend>(cx: &mut Core<B>, slot: usize, msg: &Message<'_>) {
    let item = item(cx, slot, msg);
    answer(cx, slot, &[item]);
}

/// The timeout's answer: a `noop` per channel (with the asked seq).
fn answer_noop<B: Backend>(cx: &mut Core<B>, slot: usize) {
    let conn = &cx.conns[slot];
    let seq = conn.ext.as_ref().map_or(0, |e| e.poll_seq);
    // Where each channel goes on: its cursor (the asked position until something came).
    let chans: Vec<(Arc<str>, Epoch, u64)> = conn
        .subs
        .as_slice()
        .iter()
        .map(|s| {
            let c = cx.index.chan(s.local);
            (c.name.clone(), c.epoch, (s.last_seq & !PAUSED) + 1)
        })
        .collect();
    let mut items = Vec::new();
    if chans.is_empty() {
        let noop = Message::Noop {
            channel: None,
            seq: Some(seq),
            epoch: "",
        };
        items.push(item(cx, slot, &noop));
    }
    for (name, epoch, next) in &chans {
        let noop = Message::Noop {
            channel: Some(name),
            seq: Some(*next),
            epoch: epoch.as_str(),
        };
        items.push(item(cx, slot, &noop));
    }
    answer(cx, slot, &items);
}

/// Answers the request with a JSON array (or JSONP) of the given items.
pub fn answer<B: Backend>(cx: &mut Core<B>, slot: usize, items: &[Bytes]) {
    cx.unsubscribe_all(slot);
    let token = cx.conns.token(slot);
    cx.remote.forget(token, None);
    if let Some(e) = cx.conns[slot].ext.as_mut() {
        e.poll_items = Vec::new();
        e.poll_names = Vec::new();
    }
    let conn = &cx.conns[slot];
    let keep_alive = conn.has(flag::KEEP_ALIVE) && !cx.draining;
    let callback = conn
        .ext
        .as_ref()
        .and_then(|e| e.callback.clone())
        .filter(|_| conn.has(flag::JSONP));
    let mut body = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 64);
    message::write_poll_answer(&mut body, callback.as_deref(), items.iter().map(|i| &i[..]));
    let content_type = if callback.is_some() {
        "application/javascript; charset=utf-8"
    } else {
        "application/json"
    };
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
        // A JSONP answer must not be taken for anything but script (nor JSON for anything
        // but JSON).
        ("X-Content-Type-Options", "nosniff"),
    ];
    cx.add_cors(slot, &mut headers);
    let mut out = Vec::with_capacity(256 + body.len());
    http::write_response(&mut out, 200, &headers, &body, keep_alive);
    if !keep_alive {
        cx.conns[slot].clear(flag::KEEP_ALIVE);
    }
    cx.send(slot, &[Part::Copy(&out)]);
    cx.access_answered(slot, 200, body.len());
    cx.after_response(slot);
}
