//! WebSocket client operations (`{"op":...}`: `sub`, `unsub`, `pub`, `ping`, `refresh`,
//! `presence`).
//!
//! Every op may carry an `"id"` (any JSON value), echoed in its answer, which also names
//! the op (and its channel): `{"type":"ok","op":"sub","channel":"a","seq":12,...,"id":1}`.
//! A `sub`'s `ok` comes first, then what it replays, then what is published after. A bad
//! operation is answered with an `error` naming the op, channel and id, and the
//! connection stays open. What bounds
//! one connection so that it cannot hurt the others:
//!
//! - **Its token's rights last as long as the token** (see `worker::checks`): once `exp`
//!   has passed, `sub` and `pub` are refused (401) until a `refresh`.
//! - **What it may publish** is `client_publish` and, with `auth = "token"`, its token's
//!   `pub` claim too; the token's `sub` is stamped on what it publishes (`"from"`).
//! - **Rate limits** ([`crate::worker::limiter`]): channel creations by `sub` and
//!   publishes are answered 429 past their bucket; going on past the limits closes the
//!   connection (1008).

use std::borrow::Cow;
use std::sync::Arc;

use protocol::message::{self, Message};
use protocol::ws::CloseCode;

use crate::auth;
use crate::cluster::helper::ReplyTo;
use crate::conn::State;
use crate::epoch::Epoch;
use crate::hub::{HubError, Since};
use crate::inbox::PubDone;
use crate::metrics::Counter;
use crate::msg::Body;
use crate::reactor::Backend;
use crate::shared::ClientPublish;
use crate::worker::http::unix_now;
use crate::worker::limiter::Limit;
use crate::worker::Core;

/// A client operation on a WebSocket (`{"op":"sub",...}`).
#[derive(serde::Deserialize)]
pub(crate) struct Op<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    since: Option<SinceValue<'a>>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    /// Any JSON value: a string is published as text, anything else as JSON.
    #[serde(borrow, default)]
    content: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    /// Echoed in the answer.
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
}

/// What an answer names: the op, its channel and its id.
#[derive(Clone, Copy)]
pub(crate) struct Asked<'a> {
    op: &'a str,
    channel: Option<&'a str>,
    id: Option<&'a str>,
}

impl<'a> Asked<'a> {
    fn of(op: &'a Op<'a>) -> Asked<'a> {
        Asked {
            op: &op.op,
            channel: op.channel.as_deref(),
            id: op.id.map(|r| r.get()),
        }
    }
}

/// Sends `msg` with the op, channel and id of what it answers added.
fn answer<B: Backend>(cx: &mut Core<B>, slot: usize, asked: Asked<'_>, msg: &Message<'_>) {
    let mut json = Vec::with_capacity(128);
    message::write_json(&mut json, msg, message::JsonStyle::Plain);
    if json.last() == Some(&b'}') {
        json.pop();
        // An error names what it refuses; every answer carries the op's id.
        if matches!(msg, Message::Error { .. }) {
            if !asked.op.is_empty() {
                json.extend_from_slice(b",\"op\":");
                message::write_json_string(&mut json, asked.op, message::JsonStyle::Plain);
            }
            if let Some(c) = asked.channel {
                json.extend_from_slice(b",\"channel\":");
                message::write_json_string(&mut json, c, message::JsonStyle::Plain);
            }
        }
        push_id(&mut json, asked.id);
        json.push(b'}');
    }
    send_frame(cx, slot, &json);
}

/// Adds `"id":ID` (raw JSON) when the op had one.
fn push_id(json: &mut Vec<u8>, id: Option<&str>) {
    if let Some(id) = id {
        json.extend_from_slice(b",\"id\":");
        json.extend_from_slice(id.as_bytes());
    }
}

/// One JSON answer as a text frame.
fn send_frame<B: Backend>(cx: &mut Core<B>, slot: usize, json: &[u8]) {
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    message::write_ws_frame(&mut out, json);
    cx.send(slot, &[crate::reactor::Part::Copy(&out)]);
    cx.out = out;
}

/// `since` of a `sub` op: a number, or a position string (`"12@k3x9ab2q"`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SinceValue<'a> {
    Num(u64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

fn op_error<B: Backend>(cx: &mut Core<B>, slot: usize, asked: Asked<'_>, code: u16, reason: &str) {
    answer(cx, slot, asked, &Message::Error { code, reason });
}

/// A text message from the client.
pub fn on_op<B: Backend>(cx: &mut Core<B>, slot: usize, text: &[u8]) {
    let op: Op<'_> = match serde_json::from_slice(text) {
        Ok(op) => op,
        Err(e) => {
            let reason = format!("invalid op: {e}");
            let asked = Asked {
                op: "",
                channel: None,
                id: None,
            };
            return op_error(cx, slot, asked, 400, &reason);
        }
    };
    let asked = Asked::of(&op);
    match &*op.op {
        "ping" => answer(cx, slot, asked, &Message::Pong),
        "sub" => sub(cx, slot, &op),
        "unsub" => {
            let Some(name) = op.channel.as_deref() else {
                return op_error(cx, slot, asked, 400, "unsub needs a channel");
            };
            match cx.index.by_name(cx.conns[slot].subs.as_slice(), name) {
                Some(local) => {
                    cx.unsubscribe(slot, local);
                    answer_ok(cx, slot, asked, name, None);
                }
                None => op_error(cx, slot, asked, 404, "not subscribed"),
            }
        }
        "pub" => publish(cx, slot, &op),
        "refresh" => refresh(cx, slot, asked, op.token.as_deref()),
        "presence" => crate::worker::presence::op(cx, slot, asked.channel, asked.id),
        other => {
            let reason = format!(
                "unknown op '{}'",
                other.chars().take(32).collect::<String>()
            );
            op_error(cx, slot, asked, 400, &reason);
        }
    }
}

/// `{"type":"ok","op":...,"channel":...}`, with the stream's position when known.
fn answer_ok<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    asked: Asked<'_>,
    channel: &str,
    at: Option<(u64, Epoch, bool)>,
) {
    let (seq, epoch, duplicate) = at.unwrap_or((0, Epoch::NONE, false));
    let mut json = Vec::with_capacity(96);
    json.extend_from_slice(b"{\"type\":\"ok\",\"op\":");
    message::write_json_string(&mut json, asked.op, message::JsonStyle::Plain);
    json.extend_from_slice(b",\"channel\":");
    message::write_json_string(&mut json, channel, message::JsonStyle::Plain);
    if at.is_some() {
        json.extend_from_slice(format!(",\"seq\":{seq}").as_bytes());
        if epoch.is_some() {
            json.extend_from_slice(b",\"epoch\":");
            message::write_json_string(&mut json, epoch.as_str(), message::JsonStyle::Plain);
        }
    }
    if duplicate {
        json.extend_from_slice(b",\"duplicate\":true");
    }
    push_id(&mut json, asked.id);
    json.push(b'}');
    send_frame(cx, slot, &json);
}

/// What refuses a `sub` before the hub is asked.
fn sub_refusal<B: Backend>(cx: &Core<B>, slot: usize, name: &str) -> Option<(u16, String)> {
    if let Err(e) = message::validate_channel(name) {
        return Some((400, e.to_string()));
    }
    if cx
        .index
        .by_name(cx.conns[slot].subs.as_slice(), name)
        .is_some()
    {
        return Some((409, "already subscribed".into()));
    }
    let max = cx.shared.cfg.max_channels_per_conn;
    if cx.conns[slot].subs.len() >= max {
        return Some((
            400,
            format!("too many channels on one connection (max {max})"),
        ));
    }
    if let Err((code, reason)) = token_rights(cx, slot) {
        return Some((code, reason.into()));
    }
    if cx.shared.token_auth() && !grant(cx, slot).is_some_and(|g| g.allows(name)) {
        return Some((403, auth::TokenError::Channel.reason().into()));
    }
    None
}

fn sub<B: Backend>(cx: &mut Core<B>, slot: usize, op: &Op<'_>) {
    let asked = Asked::of(op);
    let Some(name) = op.channel.as_deref() else {
        return op_error(cx, slot, asked, 400, "sub needs a channel");
    };
    if let Some((code, reason)) = sub_refusal(cx, slot, name) {
        if code == 401 || code == 403 {
            cx.auth_failed(slot, "sub", &reason);
        }
        return op_error(cx, slot, asked, code, &reason);
    }
    let since = match op_since(op.since.as_ref(), op.epoch.as_deref()) {
        Ok(s) => s,
        Err(e) => return op_error(cx, slot, asked, 400, &e),
    };
    // A sub that creates a channel takes from the connection's bucket; once it is empty,
    // subs to channels that exist still work.
    let now = cx.now;
    let may_create = cx.limiters.available(slot, Limit::Creates, now);
    let names = [name.to_string()];
    match cx.subscribe_all(slot, &names, &[since], may_create, false) {
        Ok((pending, created)) => {
            if created {
                cx.limiters.take(slot, Limit::Creates, now);
            }
            // The ok first (where the stream was), then the replay, then what comes.
            let at = pending.first().map(|p| (p.seq, p.epoch, false));
            answer_ok(cx, slot, asked, name, at);
            cx.replay_all(slot, pending);
        }
        Err(HubError::NoChannel) if !may_create => {
            cx.stats.inc(Counter::CreateLimited);
            op_error(
                cx,
                slot,
                asked,
                429,
                "creating channels too fast (max_channel_creates_per_conn)",
            );
            count_refusal(cx, slot);
        }
        Err(e) => op_error(cx, slot, asked, e.status(), &e.reason()),
    }
}

/// What refuses a `pub` (its rights and its rate).
fn pub_refusal<B: Backend>(cx: &mut Core<B>, slot: usize, name: &str) -> Option<(u16, String)> {
    let allowed = cx
        .shared
        .cfg
        .client_publish
        .iter()
        .any(|p| crate::config::pattern_matches(p, name));
    if !allowed {
        return Some((403, "clients may not publish to this channel".into()));
    }
    if let Err((code, reason)) = token_rights(cx, slot) {
        return Some((code, reason.into()));
    }
    if cx.shared.token_auth() && !grant(cx, slot).is_some_and(|g| g.may_publish(name)) {
        return Some((
            403,
            "the token does not grant publishing to this channel (its pub claim)".into(),
        ));
    }
    None
}

fn publish<B: Backend>(cx: &mut Core<B>, slot: usize, op: &Op<'_>) {
    let asked = Asked::of(op);
    let Some(name) = op.channel.as_deref() else {
        return op_error(cx, slot, asked, 400, "pub needs a channel");
    };
    let Some(raw) = op.content else {
        return op_error(cx, slot, asked, 400, "pub needs a content (any JSON value)");
    };
    // A string is published as text; any other value as JSON.
    let (content, body): (Cow<'_, str>, Body) = if raw.get().starts_with('"') {
        match serde_json::from_str::<Cow<'_, str>>(raw.get()) {
            Ok(t) => (t, Body::Text),
            Err(e) => return op_error(cx, slot, asked, 400, &format!("content: {e}")),
        }
    } else {
        (Cow::Borrowed(raw.get()), Body::Json)
    };
    if let Some((code, reason)) = pub_refusal(cx, slot, name) {
        if code == 401 || code == 403 {
            cx.auth_failed(slot, "pub", &reason);
        }
        return op_error(cx, slot, asked, code, &reason);
    }
    let now = cx.now;
    if !cx.limiters.take(slot, Limit::Publishes, now) {
        cx.stats.inc(Counter::PublishLimited);
        op_error(
            cx,
            slot,
            asked,
            429,
            "publishing too fast (client_publish_rate)",
        );
        count_refusal(cx, slot);
        return;
    }
    let token = cx.conns.token(slot);
    let sub: Box<str> = grant(cx, slot)
        .and_then(|g| g.sub.clone())
        .unwrap_or_default();
    let sender = crate::msg::meta(&sub, "", body);
    crate::event!(
        Debug,
        "client publish",
        conn = cx.conn_id(slot),
        peer = cx.peer(slot),
        channel = name,
        bytes = content.len()
    );
    let to = ReplyTo {
        worker: cx.id,
        token,
    };
    match cx.shared.publish_client(name, &content, sender, to) {
        Ok(ClientPublish::Now(a)) => {
            cx.stats.inc(Counter::ClientPublished);
            answer_ok(cx, slot, asked, name, Some((a.seq, a.epoch, a.duplicate)));
        }
        Ok(ClientPublish::Later) => {
            // Answered when the outcome comes (`on_pub_done`): the id waits for it.
            let ids = &mut cx.conns[slot].ext().pub_ids;
            if ids.len() >= crate::limits::MAX_PENDING_PUBS {
                ids.pop_front();
            }
            ids.push_back((Arc::from(name), asked.id.map(Into::into)));
        }
        Err(e) => op_error(cx, slot, asked, e.status(), &e.reason()),
    }
}

/// A client publish's outcome.
pub fn on_pub_done<B: Backend>(cx: &mut Core<B>, done: PubDone) {
    if !cx.conns.alive(done.token) {
        return;
    }
    let slot = done.token.slot();
    if cx.conns[slot].state().is_sio_session() {
        return super::socketio::on_pub_done(cx, done);
    }
    if cx.conns[slot].state() != State::Ws {
        return;
    }
    let id = cx.conns[slot].ext.as_mut().and_then(|e| {
        let i = e.pub_ids.iter().position(|(c, _)| *c == done.channel)?;
        e.pub_ids.remove(i).and_then(|(_, id)| id)
    });
    let asked = Asked {
        op: "pub",
        channel: Some(&done.channel),
        id: id.as_deref(),
    };
    match done.result {
        Ok((seq, epoch, duplicate)) => {
            cx.stats.inc(Counter::ClientPublished);
            answer_ok(
                cx,
                slot,
                asked,
                &done.channel,
                Some((seq, epoch, duplicate)),
            );
        }
        Err((status, reason)) => op_error(cx, slot, asked, status, &reason),
    }
}

/// `{"op":"refresh","token":T}`: a new token for the connection, without reconnecting.
/// It must grant every channel the connection is subscribed to.
fn refresh<B: Backend>(cx: &mut Core<B>, slot: usize, asked: Asked<'_>, token: Option<&str>) {
    if !cx.shared.token_auth() {
        return op_error(cx, slot, asked, 400, "refresh needs auth = \"token\"");
    }
    let Some(token) = token else {
        return op_error(cx, slot, asked, 400, "refresh needs a token");
    };
    let grant = match cx.shared.verifier.verify(token, unix_now()) {
        Ok(g) => g,
        Err(e) => {
            cx.auth_failed(slot, "refresh", e.reason());
            return op_error(cx, slot, asked, 401, e.reason());
        }
    };
    let missing = cx.conns[slot]
        .subs
        .as_slice()
        .iter()
        .map(|s| &cx.index.chan(s.local).name)
        .find(|name| !grant.allows(name))
        .cloned();
    if let Some(name) = missing {
        let reason = format!("the new token does not grant {name}");
        cx.auth_failed(slot, "refresh", &reason);
        return op_error(cx, slot, asked, 403, &reason);
    }
    let expires = grant.exp;
    let ext = cx.conns[slot].ext();
    ext.grant = Some(Box::new(grant));
    ext.token_deadline = None;
    cx.watch_token(slot);
    answer(cx, slot, asked, &Message::Refreshed { expires });
}

/// One more refusal past a rate limit; past the bound the connection is closed.
fn count_refusal<B: Backend>(cx: &mut Core<B>, slot: usize) {
    let now = cx.now;
    if cx.limiters.refuse(slot, now) {
        cx.stats.inc(Counter::LimitCloses);
        super::ws::close(
            cx,
            slot,
            CloseCode::POLICY,
            "too many operations past the rate limits",
        );
    }
}

fn grant<B: Backend>(cx: &Core<B>, slot: usize) -> Option<&auth::Grant> {
    cx.conns[slot].ext.as_ref()?.grant.as_deref()
}

/// `Err` once the connection's token has expired (until a `refresh`).
fn token_rights<B: Backend>(cx: &Core<B>, slot: usize) -> Result<(), (u16, &'static str)> {
    match grant(cx, slot) {
        Some(g) if g.exp <= unix_now() => Err((401, "token expired: send a refresh op")),
        _ => Ok(()),
    }
}

/// The start of a `sub` op: `since` as a number or a position (`"12@k3x9ab2q"`), and an
/// optional `epoch` field.
fn op_since(since: Option<&SinceValue<'_>>, epoch: Option<&str>) -> Result<Since, String> {
    let epoch = match epoch {
        None => Epoch::NONE,
        Some(e) => Epoch::parse(e).ok_or("epoch must be 1-16 characters of 0-9 a-z")?,
    };
    match since {
        None => Ok(Since::Now),
        Some(SinceValue::Num(n)) => Ok(Since::Seq(*n, epoch)),
        Some(SinceValue::Text(t)) => {
            let p = protocol::cursor::parse_position(t).map_err(|e| format!("since: {e}"))?;
            let e = p.epoch.and_then(Epoch::parse).unwrap_or(epoch);
            Ok(Since::Seq(p.seq, e))
        }
    }
}
