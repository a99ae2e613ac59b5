//! Namespaces: a CONNECT (namespace, token, rooms, connection state recovery) and its
//! answer or CONNECT_ERROR, and a DISCONNECT.

use protocol::message::{self, JsonStyle};
use protocol::socketio::SioType;

use crate::auth::Grant;
use crate::epoch::Epoch;
use crate::hub::Since;
use crate::limits::{SOCKETIO_LATER_DELAY, SOCKETIO_MAX_NAMESPACES};
use crate::metrics::Counter;
use crate::reactor::Backend;
use crate::worker::http::unix_now;
use crate::worker::Core;

use super::packets::send_sio;
use super::recovery::Record;
use super::session::{make_id, Id, Nsp, Session};
use super::{nsp_allowed, prefix_of, recovery_on, LATER_TAG};

fn connect_error<B: Backend>(cx: &mut Core<B>, s: usize, nsp: &str, why: &str, code: u16) {
    let mut data = Vec::with_capacity(why.len() + 40);
    data.extend_from_slice(b"{\"message\":");
    message::write_json_string(&mut data, why, JsonStyle::Plain);
    if code != 0 {
        data.extend_from_slice(format!(",\"data\":{{\"code\":{code}}}").as_bytes());
    }
    data.push(b'}');
    send_sio(cx, s, SioType::ConnectError, nsp, None, Some(&data));
}

/// What a CONNECT's `auth` carries.
#[derive(Default, serde::Deserialize)]
struct ConnectAuth {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    pid: Option<String>,
    #[serde(default)]
    offset: Option<String>,
}

/// A CONNECT to namespace `nsp` (`data`: its `auth`, raw JSON): answered with the socket
/// id (and, with recovery on, the `pid`), or refused with a CONNECT_ERROR.
pub(super) fn connect<B: Backend>(cx: &mut Core<B>, s: usize, nsp: &str, data: Option<&str>) {
    let Some((prefix, auth)) = connect_check(cx, s, nsp, data) else {
        return;
    };
    let Ok(grant) = connect_grant(cx, s, nsp, &auth) else {
        return;
    };
    // Recovery: the same socket id and the rooms from where they were.
    let recovered = match (&auth.pid, recovery_on(cx)) {
        (Some(pid), true) => cx.shared.sio_recovery.take(pid, nsp),
        _ => None,
    };
    let channels = connect_channels(
        cx,
        s,
        (nsp, &prefix),
        &auth,
        recovered.as_ref(),
        grant.as_ref(),
    );
    let Some((names, points)) = channels else {
        return;
    };
    // The grant is kept before subscribing: presence names the token's `sub`.
    if grant.is_some() {
        cx.keep_grant(s, grant);
    }
    let pending = match cx.subscribe_all(s, &names, &points, true, false) {
        Ok((p, _)) => p,
        Err(e) => {
            for p in names.iter() {
                if let Some(local) = cx.index.by_name(cx.conns[s].subs.as_slice(), p) {
                    cx.unsubscribe(s, local);
                }
            }
            return connect_error(cx, s, nsp, &e.reason(), e.status());
        }
    };
    let (sid, pid) = connect_ids(cx, s, recovered, auth.pid.as_deref());
    accept(cx, s, nsp, prefix, (sid, pid), data);
    cx.replay_all(s, pending);
}

/// The checks of a CONNECT before its token: the namespace (its channel prefix), one
/// connected already (answered again), how many are, the `auth` object. `None` once
/// answered.
fn connect_check<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    data: Option<&str>,
) -> Option<(Box<str>, ConnectAuth)> {
    let cfg = &cx.shared.cfg;
    let prefix = match prefix_of(cfg, nsp) {
        Some(p) if nsp_allowed(cfg, nsp) => p,
        _ => {
            connect_error(cx, s, nsp, "Invalid namespace", 0);
            return None;
        }
    };
    let session = cx.sio.session(s)?;
    if let Some(n) = session.nsp(nsp) {
        // Connected already: the same answer again.
        let reply = connect_reply(n.sid.as_str(), n.pid.as_ref().map(Id::as_str));
        send_sio(cx, s, SioType::Connect, nsp, None, Some(&reply));
        return None;
    }
    if session.nsps.len() >= SOCKETIO_MAX_NAMESPACES {
        connect_error(cx, s, nsp, "too many namespaces on one connection", 0);
        return None;
    }
    match data.map(serde_json::from_str) {
        None => Some((prefix, ConnectAuth::default())),
        Some(Ok(a)) => Some((prefix, a)),
        Some(Err(_)) => {
            connect_error(cx, s, nsp, "auth must be an object (token, channels)", 400);
            None
        }
    }
}

/// The grant of a CONNECT's token (`auth.token`, else the handshake's `token=`), when
/// tokens are checked; `Err` once refused.
fn connect_grant<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    auth: &ConnectAuth,
) -> Result<Option<Grant>, ()> {
    if !cx.shared.token_auth() {
        return Ok(None);
    }
    let session = cx.sio.session(s);
    let token = auth
        .token
        .as_deref()
        .or(session
            .and_then(Session::rare_ref)
            .and_then(|r| r.query_token.as_deref()))
        .unwrap_or("");
    match cx.shared.verifier.verify(token, unix_now()) {
        Ok(g) => Ok(Some(g)),
        Err(e) => {
            cx.stats.inc(Counter::Http401);
            cx.auth_failed(s, "socket.io connect", e.reason());
            connect_error(cx, s, nsp, e.reason(), 401);
            Err(())
        }
    }
}

/// The channels a CONNECT to namespace `nsp` (channel prefix `prefix`) subscribes to,
/// each with where it starts: a recovered socket's from where it was, the broadcast
/// room and `auth.channels` from now, and the user's own channel; checked (names, the
/// grant, `max_channels_per_conn`). `None` once refused.
fn connect_channels<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    (nsp, prefix): (&str, &str),
    auth: &ConnectAuth,
    recovered: Option<&Record>,
    grant: Option<&Grant>,
) -> Option<(Vec<String>, Vec<Since>)> {
    let (mut names, mut points) = recovered_channels(recovered, auth.offset.as_deref());
    let mut rooms: Vec<String> = vec![cx.shared.cfg.socketio_broadcast_room.clone()];
    for r in auth.channels.iter().flatten() {
        if !rooms.contains(r) {
            rooms.push(r.clone());
        }
    }
    for r in &rooms {
        let name = format!("{prefix}{r}");
        if message::validate_channel(&name).is_err() {
            connect_error(cx, s, nsp, &format!("bad room name '{r}'"), 400);
            return None;
        }
        if !names.contains(&name) {
            names.push(name);
            points.push(Since::Now);
        }
    }
    if let Some(g) = grant {
        if let Some(n) = names.iter().find(|n| !g.allows(n)) {
            let why = format!("the token does not grant {n}");
            connect_error(cx, s, nsp, &why, 403);
            return None;
        }
    }
    // The user's own channel (`user_channels`), granted by the token's `sub` itself: a
    // channel of the main namespace (`user:U` has no namespace prefix).
    if nsp == "/" {
        cx.add_user_channel(grant, &mut names, &mut points);
    }
    let existing = cx.conns[s].subs.len();
    if existing + names.len() > cx.shared.cfg.max_channels_per_conn {
        let why = format!(
            "too many rooms (max_channels_per_conn {})",
            cx.shared.cfg.max_channels_per_conn
        );
        connect_error(cx, s, nsp, &why, 400);
        return None;
    }
    Some((names, points))
}

/// A recovered socket's channels, each from where it was (the channel of the CONNECT's
/// `offset` from the offset).
fn recovered_channels(rec: Option<&Record>, offset: Option<&str>) -> (Vec<String>, Vec<Since>) {
    let offset = offset.and_then(parse_offset);
    let mut names: Vec<String> = Vec::new();
    let mut points: Vec<Since> = Vec::new();
    if let Some(rec) = rec {
        for (name, seq, epoch) in &rec.channels {
            let from = match &offset {
                Some((c, oseq, oepoch)) if c == &**name => Since::Seq(oseq + 1, *oepoch),
                _ => Since::Seq(seq + 1, *epoch),
            };
            names.push(name.to_string());
            points.push(from);
        }
    }
    (names, points)
}

/// The socket id and `pid` of a connected namespace: a recovered socket's (the `pid` it
/// came with), else new ones (a `pid` with recovery on).
fn connect_ids<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    recovered: Option<Record>,
    pid: Option<&str>,
) -> (Id, Option<Id>) {
    match recovered {
        Some(rec) => {
            cx.stats.inc(Counter::SioRecovered);
            (rec.sid, pid.and_then(Id::parse))
        }
        None => {
            let token = cx.conns.token(s);
            let sid = make_id(cx, token);
            let pid = recovery_on(cx).then(|| {
                let token = cx.conns.token(s);
                make_id(cx, token)
            });
            (sid, pid)
        }
    }
}

/// A CONNECT accepted: the namespace joins the session and gets its answer (and, in
/// conformance mode, its `auth` event a moment later).
fn accept<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    prefix: Box<str>,
    (sid, pid): (Id, Option<Id>),
    data: Option<&str>,
) {
    let reply = connect_reply(sid.as_str(), pid.as_ref().map(Id::as_str));
    if let Some(session) = cx.sio.session_mut(s) {
        session.connected = true;
        // One namespace is the rule: room for exactly it (a Vec's first growth would
        // make room for four).
        session.nsps.reserve_exact(1);
        session.nsps.push(Nsp {
            name: nsp.into(),
            prefix,
            sid,
            pid,
        });
    }
    send_sio(cx, s, SioType::Connect, nsp, None, Some(&reply));
    if cx.shared.cfg.socketio_test {
        let auth_json = data.unwrap_or("{}").to_string();
        if let Some(session) = cx.sio.session_mut(s) {
            session.r().later.push((nsp.into(), auth_json));
        }
        let token = cx.conns.token(s);
        let at = cx.now + SOCKETIO_LATER_DELAY;
        cx.wheel.insert(at, token.tagged(LATER_TAG));
    }
}

fn connect_reply(sid: &str, pid: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"sid\":");
    message::write_json_string(&mut out, sid, JsonStyle::Plain);
    if let Some(pid) = pid {
        out.extend_from_slice(b",\"pid\":");
        message::write_json_string(&mut out, pid, JsonStyle::Plain);
    }
    out.push(b'}');
    out
}

/// `SEQ@EPOCH/CHANNEL` (the offset of a delivered event).
fn parse_offset(s: &str) -> Option<(String, u64, Epoch)> {
    let (pos, channel) = s.split_once('/')?;
    let p = protocol::cursor::parse_position(pos).ok()?;
    let epoch = p.epoch.and_then(Epoch::parse).unwrap_or(Epoch::NONE);
    Some((channel.to_string(), p.seq, epoch))
}

/// The subscriptions of a session that belong to namespace `nsp`.
fn nsp_locals<B: Backend>(cx: &Core<B>, s: usize, nsp: &str) -> Vec<u32> {
    let Some(session) = cx.sio.session(s) else {
        return Vec::new();
    };
    cx.conns[s]
        .subs
        .as_slice()
        .iter()
        .filter(|sub| {
            let name = &cx.index.chan(sub.local).name;
            session.nsp_of(name).is_some_and(|n| &*n.name == nsp)
        })
        .map(|sub| sub.local)
        .collect()
}

pub(super) fn disconnect_nsp<B: Backend>(cx: &mut Core<B>, s: usize, nsp: &str) {
    for local in nsp_locals(cx, s, nsp) {
        cx.unsubscribe(s, local);
    }
    if let Some(session) = cx.sio.session_mut(s) {
        session.nsps.retain(|n| &*n.name != nsp);
    }
}

#[cfg(test)]
mod tests {
    use super::super::is_path;
    use super::*;

    #[test]
    fn offsets_and_namespaces() {
        assert_eq!(
            parse_offset("12@k3x9ab2q/chat1.lobby"),
            Some(("chat1.lobby".into(), 12, Epoch::parse("k3x9ab2q").unwrap()))
        );
        assert_eq!(parse_offset("12/c"), Some(("c".into(), 12, Epoch::NONE)));
        assert_eq!(parse_offset("x/c"), None);
        let cfg = crate::config::Config::default();
        assert_eq!(prefix_of(&cfg, "/").as_deref(), Some(""));
        assert_eq!(prefix_of(&cfg, "/chat1").as_deref(), Some("chat1."));
        assert_eq!(prefix_of(&cfg, "/a/b"), None);
        assert_eq!(prefix_of(&cfg, "/a b"), None);
        assert!(is_path(&cfg, "/socket.io/") && is_path(&cfg, "/socket.io"));
        assert!(!is_path(&cfg, "/socket.iox") && !is_path(&cfg, "/engine.io/"));
    }
}
