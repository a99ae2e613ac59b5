//! Hot handover of Socket.IO (`crate::handover`): the Socket.IO part of each record and
//! the kept recoveries, as JSON, for the successor.
//!
//! The worker carries the record itself in the same slot with the same generation (its
//! socket, or none for a polling session; its state, subscriptions with their cursors,
//! grant, timer and unwritten output), so every sid, socket id, `pid` and held GET's
//! waiter still names the same record in the successor. This module carries the rest:
//!
//! - a session (`SioWs`, `SioPoll`): its sid, namespaces (name, prefix, socket id,
//!   `pid`), the ping state (`awaiting_pong`, the deadline as milliseconds left), its
//!   age (for the connect timeout), `upgrading`, `echo`, `connected`, the polling queue
//!   (packets for the next GET), the held GET's waiter (worker and token, the same in
//!   the successor), the handshake's query token, a binary packet waiting for its
//!   attachments (with those received) and the packets sent "later" (re-armed);
//! - a held GET (`SioHeld`): the sid it waits on (the session holds its waiter);
//! - an upgrade probe (`SioProbe`): its sid, whether the `5` came, what the client sent
//!   meanwhile;
//! - process-wide: the recoveries kept, each with its time left; and the node tags of
//!   this process and of those it took over from, which the successor (with a node id
//!   of its own) accepts in sids as its own.
//!
//! What cannot be carried is refused with a "...: retry" error (the old process thaws
//! and serves on, the caller retries): a client publish waiting for its hub answer (the
//! answer would come to the old process), and a command between workers not handled yet
//! (a forwarded polling request, its answer, a session moving for an upgrade: counted
//! in [`Recoveries`]' `in_flight`, checked by [`export_shared`], which runs once every
//! worker is frozen, so that no command can be pushed any more).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use protocol::socketio::SioType;
use protocol::ws::DataKind;

use super::recovery::Record;
use super::session::{node_tag, Entry, Id, Nsp, Partial, Rare, Session, Waiter};
use super::LATER_TAG;
use crate::conn::State;
use crate::epoch::Epoch;
use crate::limits::SOCKETIO_LATER_DELAY;
use crate::reactor::{Backend, Token};
use crate::worker::Core;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("bad base64 in the Socket.IO state: {e}"))
}

fn id(s: &str) -> Result<Id, String> {
    Id::parse(s).ok_or_else(|| format!("a bad Socket.IO id {s:?}"))
}

/// The Socket.IO part of one record.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Saved {
    /// No Socket.IO part (a record about to close).
    None,
    Session(Box<SavedSession>),
    Held {
        sid: String,
    },
    Probe {
        sid: String,
        asked: bool,
        /// Messages the client sent meanwhile: binary?, base64.
        early: Vec<(bool, String)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedNsp {
    name: String,
    prefix: String,
    sid: String,
    pid: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPartial {
    /// The Socket.IO type digit.
    kind: u8,
    nsp: String,
    id: Option<u64>,
    data: String,
    need: usize,
    /// The attachments received, base64.
    got: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSession {
    sid: String,
    nsps: Vec<SavedNsp>,
    /// Milliseconds left before the session is dead without a pong.
    deadline_ms: u64,
    /// Milliseconds since it opened.
    age_ms: u64,
    awaiting_pong: bool,
    upgrading: bool,
    echo: bool,
    connected: bool,
    /// Polling: the packets for the next GET, base64.
    queue: String,
    /// Polling: the held GET (worker, slot, generation).
    get: Option<(usize, usize, u32)>,
    query_token: Option<String>,
    partial: Option<SavedPartial>,
    /// Packets sent a moment later: namespace, auth.
    later: Vec<(String, String)>,
}

fn save_session(s: &Session, now: Instant) -> Result<SavedSession, String> {
    let rare = s.rare.as_deref();
    if rare.is_some_and(|r| !r.acks.is_empty()) {
        return Err("a Socket.IO client publish waits for its hub answer: retry".into());
    }
    let rare_default = Rare::default();
    let r = rare.unwrap_or(&rare_default);
    Ok(SavedSession {
        sid: s.sid.as_str().to_string(),
        nsps: s
            .nsps
            .iter()
            .map(|n| SavedNsp {
                name: n.name.to_string(),
                prefix: n.prefix.to_string(),
                sid: n.sid.as_str().to_string(),
                pid: n.pid.map(|p| p.as_str().to_string()),
            })
            .collect(),
        deadline_ms: millis(s.deadline.saturating_duration_since(now)),
        age_ms: millis(now.saturating_duration_since(s.born)),
        awaiting_pong: s.awaiting_pong,
        upgrading: s.upgrading,
        echo: s.echo,
        connected: s.connected,
        queue: b64(&r.queue),
        get: r
            .get
            .map(|w| (w.worker, w.token.slot(), w.token.generation())),
        query_token: r.query_token.as_deref().map(str::to_string),
        partial: r.partial.as_deref().map(|p| SavedPartial {
            kind: p.kind.as_byte(),
            nsp: p.nsp.to_string(),
            id: p.id,
            data: p.data.clone(),
            need: p.need,
            got: p.got.iter().map(|g| b64(g)).collect(),
        }),
        later: r
            .later
            .iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect(),
    })
}

fn load_session(v: SavedSession, now: Instant) -> Result<Session, String> {
    let mut nsps = Vec::with_capacity(v.nsps.len());
    for n in v.nsps {
        nsps.push(Nsp {
            name: n.name.into(),
            prefix: n.prefix.into(),
            sid: id(&n.sid)?,
            pid: n.pid.as_deref().map(id).transpose()?,
        });
    }
    let partial = match v.partial {
        Some(p) => {
            let kind = SioType::from_byte(p.kind).ok_or("a bad Socket.IO packet type")?;
            let got = p
                .got
                .iter()
                .map(|g| unb64(g))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Box::new(Partial {
                kind,
                nsp: p.nsp.into(),
                id: p.id,
                data: p.data,
                need: p.need,
                got,
            }))
        }
        None => None,
    };
    let rare = Rare {
        queue: unb64(&v.queue)?,
        get: v.get.map(|(worker, slot, generation)| Waiter {
            worker,
            token: Token::new(slot, generation),
        }),
        query_token: v.query_token.map(Into::into),
        partial,
        acks: Default::default(),
        later: v.later.into_iter().map(|(n, a)| (n.into(), a)).collect(),
    };
    let has_rare = !rare.queue.is_empty()
        || rare.get.is_some()
        || rare.query_token.is_some()
        || rare.partial.is_some()
        || !rare.later.is_empty();
    Ok(Session {
        sid: id(&v.sid)?,
        nsps,
        deadline: now + Duration::from_millis(v.deadline_ms),
        born: now
            .checked_sub(Duration::from_millis(v.age_ms))
            .unwrap_or(now),
        awaiting_pong: v.awaiting_pong,
        upgrading: v.upgrading,
        echo: v.echo,
        connected: v.connected,
        rare: has_rare.then(|| Box::new(rare)),
    })
}

/// Hot handover (`crate::handover`): the Socket.IO part of the record in `slot` (a
/// `SioWs`, `SioPoll`, `SioHeld` or `SioProbe` connection), for [`import`] in the
/// successor, which restores the record in the same slot with the same generation. An
/// error names what cannot be handed over now (ending in "retry").
pub fn export<B: Backend>(cx: &Core<B>, slot: usize) -> Result<Value, String> {
    let now = Instant::now();
    let state = cx.conns[slot].state();
    let entry = cx.sio.slots.get(slot).and_then(|e| e.as_deref());
    let saved = match (state, entry) {
        (_, None) => Saved::None,
        (State::SioWs | State::SioPoll, Some(Entry::Session(s))) => {
            Saved::Session(Box::new(save_session(s, now)?))
        }
        (State::SioHeld, Some(Entry::Held { sid })) => Saved::Held {
            sid: sid.to_string(),
        },
        (State::SioProbe, Some(Entry::Probe { sid, asked, early })) => Saved::Probe {
            sid: sid.to_string(),
            asked: *asked,
            early: early
                .iter()
                .map(|(k, d)| (*k == DataKind::Binary, b64(d)))
                .collect(),
        },
        (state, Some(_)) => {
            return Err(format!(
                "a Socket.IO record in state {state:?} with another kind of state"
            ))
        }
    };
    serde_json::to_value(saved).map_err(|e| e.to_string())
}

/// In a successor: restores what [`export`] took, on the record already restored in
/// `slot` (state, socket, subscriptions and timer done by the worker).
pub fn import<B: Backend>(cx: &mut Core<B>, slot: usize, state: Value) -> Result<(), String> {
    let saved: Saved =
        serde_json::from_value(state).map_err(|e| format!("an unreadable Socket.IO state: {e}"))?;
    let now = cx.now;
    let st = cx.conns[slot].state();
    let entry = match (st, saved) {
        (_, Saved::None) => return Ok(()),
        (State::SioWs | State::SioPoll, Saved::Session(v)) => {
            let session = load_session(*v, now)?;
            if session.rare_ref().is_some_and(|r| !r.later.is_empty()) {
                let token = cx.conns.token(slot);
                let at = now + SOCKETIO_LATER_DELAY;
                cx.wheel.insert(at, token.tagged(LATER_TAG));
            }
            Entry::Session(session)
        }
        (State::SioHeld, Saved::Held { sid }) => Entry::Held { sid: sid.into() },
        (State::SioProbe, Saved::Probe { sid, asked, early }) => Entry::Probe {
            sid: sid.into(),
            asked,
            early: early
                .iter()
                .map(|(binary, d)| {
                    let kind = if *binary {
                        DataKind::Binary
                    } else {
                        DataKind::Text
                    };
                    unb64(d).map(|d| (kind, d))
                })
                .collect::<Result<Vec<_>, _>>()?,
        },
        (st, _) => {
            return Err(format!(
                "a Socket.IO state that does not fit a record in state {st:?}"
            ))
        }
    };
    cx.sio.put(slot, entry);
    Ok(())
}

/// A kept recovery.
#[derive(Debug, Serialize, Deserialize)]
struct SavedRecovery {
    pid: String,
    nsp: String,
    sid: String,
    /// Channel, last seq seen, epoch.
    channels: Vec<(String, u64, String)>,
    /// Milliseconds left.
    left_ms: u64,
}

/// Hot handover: the process-wide Socket.IO state (the recoveries kept). Called once
/// every worker is frozen: refuses while a Socket.IO command between workers is in
/// flight (it would be lost).
pub fn export_shared(shared: &crate::shared::Shared) -> Result<Value, String> {
    let rec = &shared.sio_recovery;
    let n = rec.in_flight.load(Ordering::Acquire);
    if n > 0 {
        return Err(format!(
            "{n} Socket.IO requests between workers are in flight: retry"
        ));
    }
    let now = Instant::now();
    let g = rec.inner.lock().unwrap_or_else(|p| p.into_inner());
    let mut kept: Vec<SavedRecovery> =
        g.0.iter()
            .filter(|(_, r)| r.until > now)
            .map(|(pid, r)| SavedRecovery {
                pid: pid.to_string(),
                nsp: r.nsp.to_string(),
                sid: r.sid.as_str().to_string(),
                channels: r
                    .channels
                    .iter()
                    .map(|(c, seq, e)| (c.to_string(), *seq, e.as_str().to_string()))
                    .collect(),
                left_ms: millis(r.until.saturating_duration_since(now)),
            })
            .collect();
    // Kept again in the order they expire.
    kept.sort_by_key(|k| k.left_ms);
    let mut nodes = rec.known_tags();
    let own = node_tag(&shared.node_id);
    if !nodes.contains(&own) {
        nodes.push(own);
    }
    serde_json::to_value(SavedShared {
        recoveries: kept,
        nodes,
    })
    .map_err(|e| e.to_string())
}

/// The process-wide part.
#[derive(Debug, Serialize, Deserialize)]
struct SavedShared {
    recoveries: Vec<SavedRecovery>,
    /// The node tags whose sids name sessions of this process: the old process's own and
    /// those it took over from (the successor has a node id of its own).
    nodes: Vec<u8>,
}

/// In a successor: restores what [`export_shared`] took.
pub fn import_shared(shared: &crate::shared::Shared, state: Value) -> Result<(), String> {
    if state.is_null() {
        return Ok(());
    }
    let saved: SavedShared = serde_json::from_value(state)
        .map_err(|e| format!("unreadable Socket.IO process state: {e}"))?;
    let own = node_tag(&shared.node_id);
    for t in saved.nodes {
        if t != own {
            shared.sio_recovery.add_tag(t);
        }
    }
    let now = Instant::now();
    for k in saved.recoveries {
        let rec = Record {
            nsp: k.nsp.into(),
            sid: id(&k.sid)?,
            channels: k
                .channels
                .into_iter()
                .map(|(c, seq, e)| (c.into(), seq, Epoch::parse(&e).unwrap_or(Epoch::NONE)))
                .collect(),
            until: now + Duration::from_millis(k.left_ms),
        };
        shared.sio_recovery.keep(k.pid.into(), rec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_round_trips_with_its_clocks_and_parts() {
        let now = Instant::now();
        let sid = Id::parse("AAECAwQFBgcICQoLDA0O").unwrap();
        let other = Id::parse("AQECAwQFBgcICQoLDA0O").unwrap();
        let mut s = Session::new(sid, Some("tok".into()), now - Duration::from_secs(3));
        s.deadline = now + Duration::from_secs(20);
        s.awaiting_pong = true;
        s.connected = true;
        s.nsps.push(Nsp {
            name: "/chat1".into(),
            prefix: "chat1.".into(),
            sid: other,
            pid: Some(sid),
        });
        s.r().queue = b"42[\"a\"]".to_vec();
        s.r().get = Some(Waiter {
            worker: 1,
            token: Token::new(9, 4),
        });
        s.r().partial = Some(Box::new(Partial {
            kind: SioType::BinaryEvent,
            nsp: "/".into(),
            id: Some(7),
            data: "[\"up\",{\"_placeholder\":true,\"num\":0}]".into(),
            need: 2,
            got: vec![vec![1, 2, 3]],
        }));
        let v =
            serde_json::to_value(Saved::Session(Box::new(save_session(&s, now).unwrap()))).unwrap();
        let Saved::Session(back) = serde_json::from_value(v).unwrap() else {
            panic!("not a session");
        };
        let later = now + Duration::from_secs(100);
        let t = load_session(*back, later).unwrap();
        assert_eq!(t.sid, sid);
        assert_eq!(t.nsps.len(), 1);
        assert_eq!((t.nsps[0].sid, t.nsps[0].pid), (other, Some(sid)));
        assert_eq!(&*t.nsps[0].prefix, "chat1.");
        assert!(t.awaiting_pong && t.connected && !t.upgrading && !t.echo);
        let left = t.deadline.duration_since(later);
        assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(19));
        assert!(later.duration_since(t.born) >= Duration::from_secs(3));
        let r = t.rare_ref().unwrap();
        assert_eq!(r.queue, b"42[\"a\"]");
        assert_eq!(
            r.get.map(|w| (w.worker, w.token)),
            Some((1, Token::new(9, 4)))
        );
        assert_eq!(r.query_token.as_deref(), Some("tok"));
        let p = r.partial.as_deref().unwrap();
        assert_eq!((p.kind, p.id, p.need), (SioType::BinaryEvent, Some(7), 2));
        assert_eq!(p.got, vec![vec![1, 2, 3]]);
    }

    #[test]
    fn a_session_waiting_for_a_publish_answer_is_refused() {
        let now = Instant::now();
        let mut s = Session::new(Id::parse("AAECAwQFBgcICQoLDA0O").unwrap(), None, now);
        s.r()
            .acks
            .push_back((std::sync::Arc::from("c"), "/".into(), Some(1)));
        let e = save_session(&s, now).unwrap_err();
        assert!(e.ends_with("retry"), "{e}");
    }
}
