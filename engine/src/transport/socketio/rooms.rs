//! Client events: joining and leaving rooms (`subscribe`, `unsubscribe`), publishing
//! (`publish`, any other event to the broadcast room), and their acks or `error`
//! events, including those of publishes answered later.

use std::sync::Arc;

use protocol::message::{self, JsonStyle};

use crate::auth::Grant;
use crate::config::pattern_matches;
use crate::hub::Since;
use crate::inbox::PubDone;
use crate::limits::{SOCKETIO_MAX_EVENT, SOCKETIO_MAX_PENDING_ACKS};
use crate::metrics::Counter;
use crate::msg::{meta, Body};
use crate::reactor::Backend;
use crate::shared::ClientPublish;
use crate::worker::http::unix_now;
use crate::worker::limiter::Limit;
use crate::worker::Core;

use super::packets::emit;
use super::session::Session;

fn ack_json(ok: bool, fields: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(64);
    out.push_str(if ok { "{\"ok\":true" } else { "{\"ok\":false" });
    for (k, v) in fields {
        out.push_str(",\"");
        out.push_str(k);
        out.push_str("\":");
        out.push_str(v);
    }
    out.push('}');
    out
}

pub(super) fn json_str(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    message::write_json_string(&mut out, s, JsonStyle::Plain);
    String::from_utf8(out).unwrap_or_default()
}

/// A client's request to answer: its socket, namespace, ack id and event. The answer
/// is the ack when the client asked for one; a refusal without an ack is an `error`
/// event `{event, code, error}`.
#[derive(Clone, Copy)]
struct Ask<'a> {
    s: usize,
    nsp: &'a str,
    id: Option<u64>,
    event: &'a str,
}

impl<'a> Ask<'a> {
    fn new(s: usize, nsp: &'a str, id: Option<u64>, event: &'a str) -> Ask<'a> {
        Ask { s, nsp, id, event }
    }

    /// Done: `{"ok":true, ...extra}`.
    fn ok<B: Backend>(self, cx: &mut Core<B>, extra: &[(&str, String)]) {
        if let Some(id) = self.id {
            let a = ack_json(true, extra);
            emit(cx, self.s, self.nsp, Some(id), true, "", &[&a]);
        }
    }

    /// Refused: `{"ok":false,"code":N,"error":"..."}`.
    fn refuse<B: Backend>(self, cx: &mut Core<B>, code: u16, text: &str) {
        if let Some(id) = self.id {
            let fields = [("code", code.to_string()), ("error", json_str(text))];
            let a = ack_json(false, &fields);
            emit(cx, self.s, self.nsp, Some(id), true, "", &[&a]);
        } else {
            let e = format!(
                "{{\"event\":{},\"code\":{code},\"error\":{}}}",
                json_str(self.event),
                json_str(text)
            );
            emit(cx, self.s, self.nsp, None, false, "error", &[&e]);
        }
    }
}

pub(super) fn on_event<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    id: Option<u64>,
    name: &str,
    args: &[String],
) {
    let ask = Ask::new(s, nsp, id, name);
    if cx.shared.cfg.socketio_test {
        let raw: Vec<&str> = args.iter().map(String::as_str).collect();
        match name {
            "message" => return emit(cx, s, nsp, None, false, "message-back", &raw),
            "message-with-ack" => {
                if let Some(id) = id {
                    emit(cx, s, nsp, Some(id), true, "", &raw);
                }
                return;
            }
            _ => {}
        }
    }
    if name.len() > SOCKETIO_MAX_EVENT || name.chars().any(char::is_control) {
        return ask.refuse(cx, 400, "bad event name");
    }
    match name {
        "subscribe" | "unsubscribe" => rooms_op(cx, s, nsp, id, name, args),
        "publish" => {
            #[derive(serde::Deserialize)]
            struct To {
                room: String,
                #[serde(default)]
                event: Option<String>,
                #[serde(default)]
                data: Option<Box<serde_json::value::RawValue>>,
            }
            let to: Option<To> = args.first().and_then(|a| serde_json::from_str(a).ok());
            let Some(to) = to else {
                return ask.refuse(cx, 400, "publish needs {room, event, data}");
            };
            let event = to.event.unwrap_or_else(|| "message".into());
            if event.len() > SOCKETIO_MAX_EVENT || event.chars().any(char::is_control) {
                return ask.refuse(cx, 400, "bad event name");
            }
            let data = to
                .data
                .map_or_else(|| "null".to_string(), |d| d.get().to_string());
            client_publish(cx, s, nsp, id, &to.room, &event, Body::Json, &data);
        }
        _ => {
            let room = cx.shared.cfg.socketio_broadcast_room.clone();
            let (body, content) = if args.len() == 1 {
                (Body::Json, args[0].clone())
            } else {
                (Body::Args, format!("[{}]", args.join(",")))
            };
            client_publish(cx, s, nsp, id, &room, name, body, &content);
        }
    }
}

/// `subscribe` / `unsubscribe` (`op`) of a room or a list of rooms of namespace `nsp`;
/// the ack lists the rooms.
fn rooms_op<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    id: Option<u64>,
    op: &str,
    args: &[String],
) {
    let ask = Ask::new(s, nsp, id, op);
    if !cx.shared.cfg.socketio_client_subscribe {
        return ask.refuse(
            cx,
            403,
            "clients may not join rooms (socketio_client_subscribe)",
        );
    }
    let Some(rooms) = room_list(args) else {
        return ask.refuse(cx, 400, "rooms must be a name or a list of names");
    };
    let Some(prefix) = nsp_prefix(cx, s, nsp) else {
        return;
    };
    let mut names = Vec::with_capacity(rooms.len());
    for r in &rooms {
        let name = format!("{prefix}{r}");
        if let Err(e) = message::validate_channel(&name) {
            return ask.refuse(cx, 400, &e.to_string());
        }
        names.push(name);
    }
    let listed = format!(
        "[{}]",
        rooms
            .iter()
            .map(|r| json_str(r))
            .collect::<Vec<_>>()
            .join(",")
    );
    if op == "unsubscribe" {
        for n in &names {
            if let Some(local) = cx.index.by_name(cx.conns[s].subs.as_slice(), n) {
                cx.unsubscribe(s, local);
            }
        }
        return ask.ok(cx, &[("rooms", listed)]);
    }
    join(cx, ask, names, listed);
}

/// The rooms of a `subscribe` / `unsubscribe`: its first argument, a name or a list of
/// names.
fn room_list(args: &[String]) -> Option<Vec<String>> {
    match args
        .first()
        .map(|a| serde_json::from_str::<serde_json::Value>(a))
    {
        Some(Ok(serde_json::Value::String(r))) => Some(vec![r]),
        Some(Ok(serde_json::Value::Array(v))) if v.iter().all(|x| x.is_string()) => Some(
            v.into_iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// A `subscribe` of channels `names` (`listed`: its rooms, for the ack): checked (the
/// token, `max_channels_per_conn`, the rate of joins), then subscribed from now; the
/// channels subscribed already are left as they are.
fn join<B: Backend>(cx: &mut Core<B>, ask: Ask<'_>, mut names: Vec<String>, listed: String) {
    let s = ask.s;
    if cx.shared.token_auth() {
        let expired = grant(cx, s).is_some_and(|g| g.exp <= unix_now());
        let denied = names
            .iter()
            .find(|n| !grant(cx, s).is_some_and(|g| g.allows(n)));
        if expired {
            return ask.refuse(cx, 401, "token expired");
        }
        if let Some(n) = denied {
            let why = format!("the token does not grant {n}");
            return ask.refuse(cx, 403, &why);
        }
    }
    names.retain(|n| cx.index.by_name(cx.conns[s].subs.as_slice(), n).is_none());
    let max = cx.shared.cfg.max_channels_per_conn;
    if cx.conns[s].subs.len() + names.len() > max {
        let why = format!("too many rooms (max_channels_per_conn {max})");
        return ask.refuse(cx, 400, &why);
    }
    let now = cx.now;
    for _ in &names {
        if !cx.limiters.take(s, Limit::Creates, now) {
            cx.stats.inc(Counter::CreateLimited);
            return ask.refuse(cx, 429, "joining rooms too fast");
        }
    }
    let points = vec![Since::Now; names.len()];
    match cx.subscribe_all(s, &names, &points, true, false) {
        Ok((pending, _)) => {
            ask.ok(cx, &[("rooms", listed)]);
            cx.replay_all(s, pending);
        }
        Err(e) => ask.refuse(cx, e.status(), &e.reason()),
    }
}

/// The channel prefix of namespace `nsp` of session `s`, when it is connected.
fn nsp_prefix<B: Backend>(cx: &Core<B>, s: usize, nsp: &str) -> Option<Box<str>> {
    cx.sio
        .session(s)
        .and_then(|x| x.nsp(nsp))
        .map(|n| n.prefix.clone())
}

fn grant<B: Backend>(cx: &Core<B>, s: usize) -> Option<&Grant> {
    cx.conns[s].ext.as_ref()?.grant.as_deref()
}

/// A client publish of `content` to `room` of namespace `nsp` (`event`, `body`: how it
/// is delivered), answered at once or when its outcome comes ([`on_pub_done`]).
#[allow(clippy::too_many_arguments)]
fn client_publish<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    id: Option<u64>,
    room: &str,
    event: &str,
    body: Body,
    content: &str,
) {
    let ask = Ask::new(s, nsp, id, event);
    let Some(prefix) = nsp_prefix(cx, s, nsp) else {
        return;
    };
    let channel = format!("{prefix}{room}");
    if let Err((status, why)) = may_publish(cx, s, &channel, content) {
        return ask.refuse(cx, status, &why);
    }
    let sub = grant(cx, s).and_then(|g| g.sub.clone()).unwrap_or_default();
    let sender = meta(&sub, event, body);
    let token = cx.conns.token(s);
    let to = crate::cluster::helper::ReplyTo {
        worker: cx.id,
        token,
    };
    match cx.shared.publish_client(&channel, content, sender, to) {
        Ok(ClientPublish::Now(a)) => {
            cx.stats.inc(Counter::ClientPublished);
            let fields = [
                ("seq", a.seq.to_string()),
                ("epoch", json_str(a.epoch.as_str())),
            ];
            ask.ok(cx, &fields);
        }
        Ok(ClientPublish::Later) => {
            if let Some(session) = cx.sio.session_mut(s) {
                session
                    .r()
                    .acks
                    .push_back((Arc::from(channel.as_str()), nsp.into(), id));
            }
        }
        Err(e) => ask.refuse(cx, e.status(), &e.reason()),
    }
}

/// Whether session `s` may publish `content` to `channel` now, else why not (status,
/// reason), in this order: the channel's name (checked again by the hub, but here
/// before the rest, so that a bad name is a 400 whatever follows), `client_publish`,
/// the token (expiry, its `pub` claim), `max_message_bytes`, the publishes waiting for
/// their outcome and `client_publish_rate` (a token of the rate taken when all else
/// passed).
fn may_publish<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    channel: &str,
    content: &str,
) -> Result<(), (u16, String)> {
    if let Err(e) = message::validate_channel(channel) {
        return Err((400, e.to_string()));
    }
    let allowed = cx
        .shared
        .cfg
        .client_publish
        .iter()
        .any(|p| pattern_matches(p, channel));
    if !allowed {
        let why = "clients may not publish to this channel (client_publish)";
        return Err((403, why.into()));
    }
    if cx.shared.token_auth() {
        let g = grant(cx, s);
        if g.is_some_and(|g| g.exp <= unix_now()) {
            return Err((401, "token expired".into()));
        }
        if !g.is_some_and(|g| g.may_publish(channel)) {
            let why = "the token does not grant publishing to this channel (its pub claim)";
            return Err((403, why.into()));
        }
    }
    if content.len() > cx.live().max_message_bytes() {
        return Err((413, "message too large (max_message_bytes)".into()));
    }
    let now = cx.now;
    let waiting = cx
        .sio
        .session(s)
        .and_then(Session::rare_ref)
        .map_or(0, |r| r.acks.len());
    if waiting >= SOCKETIO_MAX_PENDING_ACKS || !cx.limiters.take(s, Limit::Publishes, now) {
        cx.stats.inc(Counter::PublishLimited);
        return Err((429, "publishing too fast (client_publish_rate)".into()));
    }
    Ok(())
}

/// A client publish's outcome (disk store, cluster).
pub fn on_pub_done<B: Backend>(cx: &mut Core<B>, done: PubDone) {
    let s = done.token.slot();
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    let Some(i) = session
        .r()
        .acks
        .iter()
        .position(|(c, _, _)| *c == done.channel)
    else {
        return;
    };
    let (_, nsp, id) = session.r().acks.remove(i).expect("found");
    match done.result {
        Ok((seq, epoch, _)) => {
            cx.stats.inc(Counter::ClientPublished);
            let fields = [
                ("seq", seq.to_string()),
                ("epoch", json_str(epoch.as_str())),
            ];
            Ask::new(s, &nsp, id, "").ok(cx, &fields);
        }
        Err((status, reason)) => Ask::new(s, &nsp, id, "").refuse(cx, status, &reason),
    }
}
