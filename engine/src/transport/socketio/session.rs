//! Socket.IO sessions and their ids: the sid (and socket id) format, naming a worker,
//! a record and a node; the [`Table`] holding each record's Socket.IO part, and what a
//! session, a namespace and a binary packet waiting for attachments hold.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use protocol::socketio::SioType;
use protocol::ws::DataKind;

use crate::reactor::{Backend, Token};
use crate::worker::Core;

use super::SID_LEN;

/// Bytes of a sid before base64: worker, slot (4), generation (4), node tag, random (5).
const SID_BYTES: usize = 15;

// ------------------------------------------------------------------ ids

/// What a sid (or a socket id) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SidParts {
    pub(super) worker: usize,
    pub(super) token: Token,
    pub(super) node: u8,
}

pub(super) fn node_tag(node_id: &str) -> u8 {
    node_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) as u8
}

/// True when a sid's node tag is this process's, or that of a process it took over from
/// (a hot handover keeps every session: see
/// [`Recoveries::knows_tag`](super::Recoveries::knows_tag)).
pub(super) fn ours<B: Backend>(cx: &Core<B>, tag: u8) -> bool {
    tag == node_tag(&cx.shared.node_id) || cx.shared.sio_recovery.knows_tag(tag)
}

/// A sid or socket id, kept inline (no allocation per socket).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Id([u8; SID_LEN]);

impl Id {
    pub(super) fn as_str(&self) -> &str {
        // Made from base64url text only.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub(super) fn parse(s: &str) -> Option<Id> {
        let b: [u8; SID_LEN] = s.as_bytes().try_into().ok()?;
        b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            .then_some(Id(b))
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(super) fn make_id<B: Backend>(cx: &mut Core<B>, token: Token) -> Id {
    use base64::Engine as _;
    let mut raw = [0u8; SID_BYTES];
    raw[0] = cx.id as u8;
    raw[1..5].copy_from_slice(&(token.slot() as u32).to_le_bytes());
    raw[5..9].copy_from_slice(&token.generation().to_le_bytes());
    raw[9] = node_tag(&cx.shared.node_id);
    let r = cx.rng.next_u64().to_le_bytes();
    raw[10..15].copy_from_slice(&r[..5]);
    let mut out = [0u8; SID_LEN];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(raw, &mut out)
        .unwrap_or(0);
    debug_assert_eq!(n, SID_LEN);
    Id(out)
}

pub(super) fn parse_id(s: &str) -> Option<SidParts> {
    use base64::Engine as _;
    if s.len() != SID_LEN {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let raw: [u8; SID_BYTES] = raw.try_into().ok()?;
    let slot = u32::from_le_bytes(raw[1..5].try_into().ok()?) as usize;
    let generation = u32::from_le_bytes(raw[5..9].try_into().ok()?);
    Some(SidParts {
        worker: raw[0] as usize,
        token: Token::new(slot, generation),
        node: raw[9],
    })
}

/// The worker a channel named `<prefix><socket id>` goes to when no subscriber of it
/// is there: the hub hands such a message to that worker, which gives it to the socket
/// (its own room).
pub fn own_room_worker(channel: &str, workers: usize) -> Option<usize> {
    let id = channel.get(channel.len().checked_sub(SID_LEN)?..)?;
    if channel.len() > SID_LEN && !channel[..channel.len() - SID_LEN].ends_with('.') {
        return None;
    }
    parse_id(id).map(|p| p.worker).filter(|&w| w < workers)
}

// ------------------------------------------------------------------ state

/// Where an answer goes: a connection on some worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The worker holding the connection.
    pub worker: usize,
    /// The connection.
    pub token: Token,
}

/// One connected namespace of a session.
#[derive(Debug)]
pub(super) struct Nsp {
    /// `/`, `/chat1`.
    pub(super) name: Box<str>,
    /// Its channel prefix.
    pub(super) prefix: Box<str>,
    /// The socket id.
    pub(super) sid: Id,
    /// The recovery id (with recovery on).
    pub(super) pid: Option<Id>,
}

/// A binary packet waiting for its attachments.
#[derive(Debug)]
pub(super) struct Partial {
    pub(super) kind: SioType,
    pub(super) nsp: Box<str>,
    pub(super) id: Option<u64>,
    pub(super) data: String,
    pub(super) need: usize,
    pub(super) got: Vec<Vec<u8>>,
}

/// An Engine.IO session. What only some sessions need (polling, binary packets,
/// publishes waiting for their outcome) is in [`Rare`], so that an idle WebSocket
/// session is its id, its namespaces and its clocks.
#[derive(Debug)]
pub struct Session {
    pub(super) sid: Id,
    pub(super) nsps: Vec<Nsp>,
    /// Without a pong, the session is dead at this time (checked by its timer, and by
    /// each polling request, which the timer's granularity could let in first).
    pub(super) deadline: Instant,
    /// When it opened (a session that connects no namespace in time is closed).
    pub(super) born: Instant,
    /// A ping went out and its pong has not come.
    pub(super) awaiting_pong: bool,
    /// A probe began (`2probe`): polling requests are answered at once, with a noop.
    pub(super) upgrading: bool,
    /// Plain Engine.IO echo (the conformance switch's `/engine.io/`): no Socket.IO.
    pub(super) echo: bool,
    /// A namespace was connected once (the connect timeout is over).
    pub(super) connected: bool,
    pub(super) rare: Option<Box<Rare>>,
}

/// The parts of a session that most sessions do without.
#[derive(Debug, Default)]
pub(super) struct Rare {
    /// Polling: packets waiting for the next GET, joined as a payload.
    pub(super) queue: Vec<u8>,
    /// Polling: the GET waiting for packets.
    pub(super) get: Option<Waiter>,
    /// The handshake's `token=` (a CONNECT without `auth.token` uses it).
    pub(super) query_token: Option<Box<str>>,
    pub(super) partial: Option<Box<Partial>>,
    /// Client publishes waiting for their outcome: channel, namespace, ack id.
    pub(super) acks: VecDeque<(Arc<str>, Box<str>, Option<u64>)>,
    /// Conformance switch: `auth` events sent a moment after their CONNECT answer
    /// (namespace, auth), as the test suites read them one write at a time.
    pub(super) later: Vec<(Box<str>, String)>,
}

impl Session {
    pub(super) fn new(sid: Id, query_token: Option<Box<str>>, born: Instant) -> Session {
        Session {
            sid,
            nsps: Vec::new(),
            deadline: born,
            born,
            awaiting_pong: false,
            upgrading: false,
            echo: false,
            connected: false,
            rare: query_token.map(|t| {
                Box::new(Rare {
                    query_token: Some(t),
                    ..Rare::default()
                })
            }),
        }
    }

    /// The rare parts, made on first use.
    pub(super) fn r(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    pub(super) fn rare_ref(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    /// The namespace a channel is delivered to: the longest matching prefix.
    pub(super) fn nsp_of(&self, channel: &str) -> Option<&Nsp> {
        self.nsps
            .iter()
            .filter(|n| channel.starts_with(&*n.prefix))
            .max_by_key(|n| n.prefix.len())
    }

    pub(super) fn nsp(&self, name: &str) -> Option<&Nsp> {
        self.nsps.iter().find(|n| &*n.name == name)
    }
}

/// What a record's Socket.IO part is.
#[derive(Debug)]
pub enum Entry {
    /// A session (`SioWs`, `SioPoll`).
    Session(Session),
    /// A polling request waiting (`SioHeld`) for the answer of session `sid` (on this
    /// worker or another).
    Held { sid: Box<str> },
    /// An upgrade in progress (`SioProbe`) for the session `sid`; `asked`: the `5` came
    /// and the session is on its way from another worker, `early` what the client sent
    /// meanwhile (handled once the session is here).
    Probe {
        sid: Box<str>,
        asked: bool,
        early: Vec<(DataKind, Vec<u8>)>,
    },
}

/// The Socket.IO part of each record of a worker, by slot.
#[derive(Debug, Default)]
pub struct Table {
    pub(super) slots: Vec<Option<Box<Entry>>>,
}

impl Table {
    pub(super) fn put(&mut self, slot: usize, e: Entry) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(Box::new(e));
    }

    pub(super) fn take(&mut self, slot: usize) -> Option<Box<Entry>> {
        self.slots.get_mut(slot).and_then(Option::take)
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Entry> {
        self.slots.get_mut(slot)?.as_deref_mut()
    }

    pub(super) fn session(&self, slot: usize) -> Option<&Session> {
        match self.slots.get(slot)?.as_deref()? {
            Entry::Session(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn session_mut(&mut self, slot: usize) -> Option<&mut Session> {
        match self.get_mut(slot)? {
            Entry::Session(s) => Some(s),
            _ => None,
        }
    }

    /// Gives back the room of closed records.
    pub fn shrink(&mut self) {
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        if crate::memory::sparse(self.slots.len(), self.slots.capacity()) {
            self.slots.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_worker_slot_and_generation() {
        let t = Token::new(77, 5);
        let mut raw = [0u8; SID_BYTES];
        raw[0] = 1;
        raw[1..5].copy_from_slice(&77u32.to_le_bytes());
        raw[5..9].copy_from_slice(&5u32.to_le_bytes());
        raw[9] = node_tag("node-a");
        use base64::Engine as _;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(id.len(), SID_LEN);
        let p = parse_id(&id).unwrap();
        assert_eq!((p.worker, p.token, p.node), (1, t, node_tag("node-a")));
        assert_eq!(own_room_worker(&format!("chat1.{id}"), 2), Some(1));
        assert_eq!(own_room_worker(&id, 2), Some(1));
        assert_eq!(
            own_room_worker(&format!("chat1{id}"), 2),
            None,
            "not after a dot"
        );
        assert_eq!(own_room_worker(&id, 1), None, "no such worker");
        assert_eq!(own_room_worker("lobby", 2), None);
        assert!(parse_id("short").is_none());
    }

    #[test]
    fn session_state_stays_small() {
        let session = std::mem::size_of::<Session>();
        let entry = std::mem::size_of::<Entry>();
        let nsp = std::mem::size_of::<Nsp>();
        eprintln!("session {session} B, entry {entry} B, namespace {nsp} B");
        // An idle WebSocket session is these plus its one namespace, out of line.
        assert!(
            session <= 96 && entry <= 96 && nsp <= 80,
            "session {session} B, entry {entry} B, namespace {nsp} B"
        );
    }
}
