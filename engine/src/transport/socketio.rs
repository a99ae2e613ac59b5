//! Socket.IO (protocol v5) over Engine.IO v4, at `socketio_path` (`/socket.io/`).
//!
//! # Sessions
//!
//! An Engine.IO session lives in one record of the worker's connection table, so that
//! it has a token, a timer and subscriptions like any subscriber:
//!
//! - over WebSocket (`transport=websocket` without a `sid`) the session is the
//!   WebSocket's own record (`SioWs`): one record per socket, as for `/ws`;
//! - over long-polling the session is a record without a socket (`SioPoll`), and each
//!   HTTP request is a connection of its own: a GET with nothing to answer waits
//!   (`SioHeld`) until the session has a packet (at the latest its next ping);
//! - an upgrade (`transport=websocket&sid=...`) is a WebSocket in `SioProbe` that answers
//!   `2probe` with `3probe` (the session's held GET is released with a `6` noop) and, on
//!   `5`, takes the session over: the session's subscriptions are re-made on the
//!   WebSocket's record from their cursors, so the hub replays exactly what was
//!   published in between, and the packets the session had queued go out first.
//!
//! The Socket.IO part of each record (its namespaces, queued packets, held GET, a binary
//! packet waiting for its attachments) is in this module's [`Table`], indexed by slot, so
//! the connection record itself stays 56 bytes.
//!
//! # Which worker, which node
//!
//! The `sid` is 15 random-looking bytes in base64url: the worker, the record's slot and
//! generation, a tag of the node, and 6 random bytes (so a sid cannot be guessed from
//! another). SO_REUSEPORT spreads TCP connections over the workers at random, so a
//! polling request often lands on a worker that does not hold its session: it is
//! forwarded through the holding worker's inbox, which answers back through the
//! requesting worker's inbox (two queue hops and at most two wake-ups per request,
//! counted in `pushedge_socketio_forwarded_total`). A WebSocket upgrade that lands on
//! another worker moves the session there (`pushedge_socketio_moved_total`). A request
//! for a session of another cluster node (its node tag differs) is answered `400
//! Session ID unknown`: across nodes, polling needs sticky routing (as Socket.IO itself
//! requires) or `transports: ["websocket"]`; the client then opens a new session, and
//! with connection state recovery it gets what it missed.
//!
//! # Namespaces, rooms and events
//!
//! Namespace `/x` is the channel family `x.` (the main namespace `/` has
//! `socketio_main_prefix`, empty by default); room `r` of it is channel `x.r`. A socket is
//! in its namespace's `socketio_broadcast_room` and in the rooms of its CONNECT's
//! `auth.channels`, joins and leaves rooms with `emit("subscribe"|"unsubscribe", rooms,
//! ack)`, and its own room (its socket id) is addressed directly: a publish to
//! `<prefix><socket id>` is handed by the hub to the worker the id names (see
//! [`own_room_worker`]), without a subscription (a channel per socket would cost ~400 B).
//! A channel is delivered to the connected namespace with the longest matching prefix.
//!
//! A published message is an event (the admin's `event=`, default `message`) whose
//! arguments are its content: a text body is one string, a JSON body one value, a client
//! emit its arguments; `{"$binary":"<base64>"}` objects become binary attachments. Each
//! message is encoded once for the first namespace that receives it and shared by every
//! socket of that namespace ([`Encoded`]).
//!
//! # Connection state recovery
//!
//! With `socketio_recovery_secs > 0`, CONNECT answers carry a `pid` and each event an
//! offset (`SEQ@EPOCH/CHANNEL`) as its last argument; when a socket's transport is lost,
//! its rooms and cursors are kept for that long ([`Recoveries`]), and a CONNECT with the
//! `pid` and `offset` resumes them: same socket id, each room replayed from the channel
//! history (the offset's channel from the offset, the others from what had been written
//! when the transport closed).
//!
//! # Hot handover
//!
//! `ctl upgrade` carries every Socket.IO record ([`handover`]): the worker restores the
//! record in its slot with its generation (so sids, socket ids and a held GET's waiter
//! name the same record), its socket (none for a polling session), subscriptions with
//! their cursors, grant and timer; this module carries the [`Table`] entry (a session's
//! namespaces, ping state and deadline as time left, polling queue, held GET, query
//! token, a binary packet waiting for attachments, packets sent later; a held GET's
//! sid; a probe's progress) and the kept [`Recoveries`]. The successor has a node id of
//! its own: it accepts the node tags of the processes it took over from as its own, so
//! the sids they made stay valid. Refused, to be retried: a client publish waiting for
//! its hub answer, and a command between workers (a forwarded polling request, its
//! answer, a session moving for an upgrade) not handled yet when every worker froze.

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::engineio::{self as eio, ErrorCode, Packet, PacketType};
use protocol::http;
use protocol::message::{self, JsonStyle, Message};
use protocol::query::Query;
use protocol::socketio::{self as sio, SioType};
use protocol::ws::{self, CloseCode, DataKind, OpCode};

use crate::auth::Grant;
use crate::config::{pattern_matches, secs};
use crate::conn::{flag, State};
use crate::epoch::Epoch;
use crate::hub::Since;
use crate::inbox::{Cmd, PubDone};
use crate::limits::{
    SOCKETIO_CONNECT_TIMEOUT, SOCKETIO_FORWARD_WAIT, SOCKETIO_MAX_EARLY, SOCKETIO_MAX_EVENT,
    SOCKETIO_MAX_NAMESPACES, SOCKETIO_MAX_PACKETS, SOCKETIO_MAX_RECOVERY, SOCKETIO_MIN_QUEUE,
    SOCKETIO_TEST_CONNECT_TIMEOUT, SOCKETIO_TEST_PING,
};
use crate::metrics::Counter;
use crate::msg::{meta, Body, Msg, MsgKind};
use crate::reactor::{Backend, Part, Token, NO_SOCK};
use crate::shared::ClientPublish;
use crate::worker::http::{reject, unix_now, Reject};
use crate::worker::index::PAUSED;
use crate::worker::limiter::Limit;
use crate::worker::Core;

/// Bytes of a sid before base64: worker, slot (4), generation (4), node tag, random (5).
const SID_BYTES: usize = 15;
/// Length of a sid (and of a socket id).
pub const SID_LEN: usize = 20;
/// Most publish acks one session may wait for.
const MAX_PENDING_ACKS: usize = 256;
/// Timer entries tagged with this are a session's packets sent a moment later
/// ([`on_later`]).
pub const LATER_TAG: u8 = 2;

// ------------------------------------------------------------------ ids

/// What a sid (or a socket id) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SidParts {
    worker: usize,
    token: Token,
    node: u8,
}

fn node_tag(node_id: &str) -> u8 {
    node_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) as u8
}

/// True when a sid's node tag is this process's, or that of a process it took over from
/// (a hot handover keeps every session: see [`Recoveries::knows_tag`]).
fn ours<B: Backend>(cx: &Core<B>, tag: u8) -> bool {
    tag == node_tag(&cx.shared.node_id) || cx.shared.sio_recovery.knows_tag(tag)
}

/// A sid or socket id, kept inline (no allocation per socket).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Id([u8; SID_LEN]);

impl Id {
    fn as_str(&self) -> &str {
        // Made from base64url text only.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    fn parse(s: &str) -> Option<Id> {
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

fn make_id<B: Backend>(cx: &mut Core<B>, token: Token) -> Id {
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

fn parse_id(s: &str) -> Option<SidParts> {
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
struct Nsp {
    /// `/`, `/chat1`.
    name: Box<str>,
    /// Its channel prefix.
    prefix: Box<str>,
    /// The socket id.
    sid: Id,
    /// The recovery id (with recovery on).
    pid: Option<Id>,
}

/// A binary packet waiting for its attachments.
#[derive(Debug)]
struct Partial {
    kind: SioType,
    nsp: Box<str>,
    id: Option<u64>,
    data: String,
    need: usize,
    got: Vec<Vec<u8>>,
}

/// An Engine.IO session. What only some sessions need (polling, binary packets,
/// publishes waiting for their outcome) is in [`Rare`], so that an idle WebSocket
/// session is its id, its namespaces and its clocks.
#[derive(Debug)]
pub struct Session {
    sid: Id,
    nsps: Vec<Nsp>,
    /// Without a pong, the session is dead at this time (checked by its timer, and by
    /// each polling request, which the timer's granularity could let in first).
    deadline: Instant,
    /// When it opened (a session that connects no namespace in time is closed).
    born: Instant,
    /// A ping went out and its pong has not come.
    awaiting_pong: bool,
    /// A probe began (`2probe`): polling requests are answered at once, with a noop.
    upgrading: bool,
    /// Plain Engine.IO echo (the conformance switch's `/engine.io/`): no Socket.IO.
    echo: bool,
    /// A namespace was connected once (the connect timeout is over).
    connected: bool,
    rare: Option<Box<Rare>>,
}

/// The parts of a session that most sessions do without.
#[derive(Debug, Default)]
struct Rare {
    /// Polling: packets waiting for the next GET, joined as a payload.
    queue: Vec<u8>,
    /// Polling: the GET waiting for packets.
    get: Option<Waiter>,
    /// The handshake's `token=` (a CONNECT without `auth.token` uses it).
    query_token: Option<Box<str>>,
    partial: Option<Box<Partial>>,
    /// Client publishes waiting for their outcome: channel, namespace, ack id.
    acks: VecDeque<(Arc<str>, Box<str>, Option<u64>)>,
    /// Conformance switch: `auth` events sent a moment after their CONNECT answer
    /// (namespace, auth), as the test suites read them one write at a time.
    later: Vec<(Box<str>, String)>,
}

impl Session {
    fn new(sid: Id, query_token: Option<Box<str>>, born: Instant) -> Session {
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
    fn r(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    fn rare_ref(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    /// The namespace a channel is delivered to: the longest matching prefix.
    fn nsp_of(&self, channel: &str) -> Option<&Nsp> {
        self.nsps
            .iter()
            .filter(|n| channel.starts_with(&*n.prefix))
            .max_by_key(|n| n.prefix.len())
    }

    fn nsp(&self, name: &str) -> Option<&Nsp> {
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
    slots: Vec<Option<Box<Entry>>>,
}

impl Table {
    fn put(&mut self, slot: usize, e: Entry) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(Box::new(e));
    }

    fn take(&mut self, slot: usize) -> Option<Box<Entry>> {
        self.slots.get_mut(slot).and_then(Option::take)
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Entry> {
        self.slots.get_mut(slot)?.as_deref_mut()
    }

    fn session(&self, slot: usize) -> Option<&Session> {
        match self.slots.get(slot)?.as_deref()? {
            Entry::Session(s) => Some(s),
            _ => None,
        }
    }

    fn session_mut(&mut self, slot: usize) -> Option<&mut Session> {
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

/// A session on its way to another record (an upgrade) or kept for recovery.
#[derive(Debug)]
pub struct Snapshot {
    sid: Id,
    nsps: Vec<Nsp>,
    channels: Vec<(Arc<str>, u64, Epoch)>,
    queue: Vec<u8>,
    grant: Option<Box<Grant>>,
    query_token: Option<Box<str>>,
    born: Instant,
    echo: bool,
}

/// A polling request for a session on another worker.
#[derive(Debug)]
pub enum Forwarded {
    /// A GET.
    Get,
    /// A POST and its body.
    Post(Vec<u8>),
    /// A probe began: release the held GET.
    Release,
    /// The upgrade is done: send the session over.
    Take,
    /// The waiting request is gone (its connection closed, or it timed out).
    Cancel,
    /// A probe for the session began: answered (an `Install` without a session) only
    /// when there is no such polling session.
    Check,
    /// A request broke the protocol (a body over `socketio_max_payload`): the session
    /// is closed.
    Close,
}

/// Socket.IO commands between workers.
#[derive(Debug)]
pub enum SioCmd {
    /// A request for a session of the receiving worker.
    Forward {
        /// Who waits for the answer.
        from: Waiter,
        /// The session.
        sid: Box<str>,
        /// What.
        req: Forwarded,
    },
    /// The answer to a forwarded request.
    Answer {
        /// The waiting connection.
        token: Token,
        /// HTTP status.
        status: u16,
        /// A JSON error (else text/plain).
        json: bool,
        /// The body.
        body: Vec<u8>,
    },
    /// A session for an upgrade (`None`: it is gone).
    Install {
        /// The probing WebSocket.
        token: Token,
        /// The session.
        snapshot: Option<Box<Snapshot>>,
    },
}

// ------------------------------------------------------------------ recovery

struct Record {
    nsp: Box<str>,
    sid: Id,
    channels: Vec<(Arc<str>, u64, Epoch)>,
    until: Instant,
}

/// Sockets that lost their transport, kept for connection state recovery (per process,
/// bounded by [`SOCKETIO_MAX_RECOVERY`], the oldest dropped first); and the count of
/// Socket.IO commands between workers not handled yet.
#[derive(Default)]
pub struct Recoveries {
    inner: Mutex<Kept>,
    /// [`SioCmd`]s pushed to an inbox and not yet handled (a hot handover cannot carry
    /// them: it refuses, to be retried, while there are any).
    in_flight: AtomicUsize,
    /// The node tags of the processes this one took over from (hot handover), as a set
    /// of 256 bits: their sids stay valid here.
    tags: [std::sync::atomic::AtomicU64; 4],
}

/// The records by `pid`, and their expiries in the order they were kept.
type Kept = (HashMap<Box<str>, Record>, VecDeque<(Instant, Box<str>)>);

impl Recoveries {
    fn keep(&self, pid: Box<str>, rec: Record) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        let now = Instant::now();
        while let Some((t, _)) = order.front() {
            if *t > now && map.len() < SOCKETIO_MAX_RECOVERY {
                break;
            }
            let (_, k) = order.pop_front().expect("front exists");
            if map
                .get(&k)
                .is_some_and(|r| r.until <= now || map.len() >= SOCKETIO_MAX_RECOVERY)
            {
                map.remove(&k);
            }
        }
        order.push_back((rec.until, pid.clone()));
        map.insert(pid, rec);
    }

    fn take(&self, pid: &str, nsp: &str) -> Option<Record> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rec = g.0.remove(pid)?;
        (rec.until > Instant::now() && &*rec.nsp == nsp).then_some(rec)
    }

    /// True for the node tag of a process this one took over from.
    fn knows_tag(&self, tag: u8) -> bool {
        self.tags[usize::from(tag >> 6)].load(Ordering::Relaxed) & (1 << (tag & 63)) != 0
    }

    /// Accepts the sids of node tag `tag` (a predecessor's).
    fn add_tag(&self, tag: u8) {
        self.tags[usize::from(tag >> 6)].fetch_or(1 << (tag & 63), Ordering::Relaxed);
    }

    /// The predecessors' node tags.
    fn known_tags(&self) -> Vec<u8> {
        (0..=u8::MAX).filter(|&t| self.knows_tag(t)).collect()
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// True with none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ------------------------------------------------------------------ settings

struct Timing {
    interval: Duration,
    timeout: Duration,
}

fn timing<B: Backend>(cx: &Core<B>) -> Timing {
    let cfg = &cx.shared.cfg;
    if cfg.socketio_test {
        let (interval, timeout) = SOCKETIO_TEST_PING;
        return Timing { interval, timeout };
    }
    Timing {
        interval: secs(cfg.socketio_ping_interval_secs),
        timeout: secs(cfg.socketio_ping_timeout_secs),
    }
}

fn recovery_on<B: Backend>(cx: &Core<B>) -> bool {
    cx.shared.cfg.socketio_recovery_secs > 0.0
}

/// Path of the plain Engine.IO echo of the conformance switch.
const ECHO_PATH: &str = "/engine.io";

fn path_is(path: &str, base: &str) -> bool {
    path.strip_prefix(base.trim_end_matches('/'))
        .is_some_and(|rest| rest.is_empty() || rest == "/")
}

/// Arms the session's ping (after `interval`); without an answer to it, the session is
/// dead `interval + timeout` from now.
fn arm_ping<B: Backend>(cx: &mut Core<B>, s: usize) {
    let t = timing(cx);
    let deadline = cx.now + t.interval + t.timeout;
    if let Some(session) = cx.sio.session_mut(s) {
        session.deadline = deadline;
    }
    cx.rearm(s, t.interval);
}

/// The path of the Socket.IO endpoint, with or without its last `/` (and, with
/// `socketio_test`, `/engine.io/`).
pub fn is_path(cfg: &crate::config::Config, path: &str) -> bool {
    cfg.socketio
        && (path_is(path, &cfg.socketio_path) || (cfg.socketio_test && path_is(path, ECHO_PATH)))
}

/// Channel prefix of a namespace; `None` for a name that cannot be one.
fn prefix_of(cfg: &crate::config::Config, nsp: &str) -> Option<Box<str>> {
    if nsp == "/" {
        return Some(cfg.socketio_main_prefix.as_str().into());
    }
    let name = nsp.strip_prefix('/')?;
    message::validate_channel(name).ok()?;
    if name.contains('/') {
        return None;
    }
    Some(format!("{name}.").into())
}

fn nsp_allowed(cfg: &crate::config::Config, nsp: &str) -> bool {
    if cfg.socketio_test {
        // The test suites' server: the main namespace and `/custom`.
        return nsp == "/" || nsp == "/custom";
    }
    cfg.socketio_namespaces
        .iter()
        .any(|p| pattern_matches(p, nsp))
}

// ------------------------------------------------------------------ HTTP side

fn eio_error<B: Backend>(cx: &mut Core<B>, slot: usize, code: ErrorCode) {
    let mut body = Vec::with_capacity(64);
    eio::write_error_json(&mut body, code);
    respond(cx, slot, code.status(), true, &body, true);
}

/// Writes a complete answer on connection `slot` (a request in `Http` or `SioHeld`);
/// `close` ends the connection after it.
fn respond<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    status: u16,
    json: bool,
    body: &[u8],
    close: bool,
) {
    if status >= 400 {
        if let Some(c) = Counter::for_status(status) {
            cx.stats.inc(c);
        }
    }
    let keep_alive = !close && cx.conns[slot].has(flag::KEEP_ALIVE) && !cx.draining;
    let content_type = if json {
        "application/json"
    } else {
        "text/plain; charset=UTF-8"
    };
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    cx.add_cors(slot, &mut headers);
    let mut out = Vec::with_capacity(256 + body.len());
    http::write_response(&mut out, status, &headers, body, keep_alive);
    if !keep_alive {
        cx.conns[slot].clear(flag::KEEP_ALIVE);
    }
    cx.send(slot, &[Part::Copy(&out)]);
    cx.access_answered(slot, status, body.len());
    cx.after_response(slot);
}

/// Answers a waiting connection, here or on its worker.
fn answer<B: Backend>(cx: &mut Core<B>, to: Waiter, status: u16, json: bool, body: &[u8]) {
    if to.worker != cx.id {
        push_cmd(
            cx,
            to.worker,
            SioCmd::Answer {
                token: to.token,
                status,
                json,
                body: body.to_vec(),
            },
        );
        return;
    }
    if !cx.conns.alive(to.token) {
        return;
    }
    let slot = to.token.slot();
    if cx.conns[slot].state() != State::SioHeld {
        return;
    }
    cx.sio.take(slot);
    respond(cx, slot, status, json, body, false);
}

fn answer_error<B: Backend>(cx: &mut Core<B>, to: Waiter, code: ErrorCode) {
    let mut body = Vec::with_capacity(64);
    eio::write_error_json(&mut body, code);
    answer(cx, to, code.status(), true, &body);
}

/// A request to `/socket.io/` (its head parsed and checked; `body` for a POST).
pub fn start<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    body: Option<&[u8]>,
) -> Result<(), Reject> {
    if q.get("EIO") != Some("4") {
        eio_error(cx, slot, ErrorCode::UnsupportedProtocolVersion);
        return Ok(());
    }
    let websocket = match q.get("transport") {
        Some("polling") => false,
        Some("websocket") => true,
        _ => {
            eio_error(cx, slot, ErrorCode::TransportUnknown);
            return Ok(());
        }
    };
    let me = Waiter {
        worker: cx.id,
        token: cx.conns.token(slot),
    };
    let sid = q.get("sid").filter(|s| !s.is_empty());
    if websocket {
        if req.method != http::Method::Get {
            eio_error(cx, slot, ErrorCode::BadHandshakeMethod);
            return Ok(());
        }
        return open_ws(cx, slot, req, q, sid);
    }
    let Some(sid) = sid else {
        if req.method != http::Method::Get {
            eio_error(cx, slot, ErrorCode::BadHandshakeMethod);
            return Ok(());
        }
        let echo = cx.shared.cfg.socketio_test && path_is(req.path(), ECHO_PATH);
        return open_polling(cx, slot, q, echo);
    };
    let what = match (req.method, body) {
        (http::Method::Get, _) => Forwarded::Get,
        (http::Method::Post, Some(b)) => Forwarded::Post(b.to_vec()),
        _ => {
            eio_error(cx, slot, ErrorCode::BadRequest);
            return Ok(());
        }
    };
    let Some(parts) = parse_id(sid).filter(|p| ours(cx, p.node)) else {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return Ok(());
    };
    if parts.worker >= cx.shared.inboxes.len() {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return Ok(());
    }
    // The request waits for its session's answer, here or on the session's worker.
    if !hold(cx, slot, sid) {
        return Ok(());
    }
    if parts.worker == cx.id {
        on_forwarded(cx, me, sid, what);
    } else {
        cx.stats.inc(Counter::SioForwarded);
        push_cmd(
            cx,
            parts.worker,
            SioCmd::Forward {
                from: me,
                sid: sid.into(),
                req: what,
            },
        );
    }
    Ok(())
}

/// The request waits for the answer of session `sid`. A session answers a GET at its
/// next ping at the latest, so the timer is only a bound.
fn hold<B: Backend>(cx: &mut Core<B>, slot: usize, sid: &str) -> bool {
    let moved = cx.conns[slot].hold_sio();
    if !cx.apply(slot, moved) {
        return false;
    }
    cx.sio.put(slot, Entry::Held { sid: sid.into() });
    let t = timing(cx);
    cx.arm(slot, t.interval + t.timeout + SOCKETIO_FORWARD_WAIT);
    true
}

/// A held request gives up: its session forgets it.
fn cancel<B: Backend>(cx: &mut Core<B>, slot: usize) {
    if let Some(Entry::Held { sid }) = cx.sio.take(slot).map(|b| *b) {
        let me = Waiter {
            worker: cx.id,
            token: cx.conns.token(slot),
        };
        forward_to_owner(cx, me, &sid, Forwarded::Cancel);
    }
}

/// A POST body over `socketio_max_payload`: 413, and the session is closed.
pub fn too_large<B: Backend>(cx: &mut Core<B>, slot: usize, q: &Query<'_>) {
    if let Some(sid) = q.get("sid").filter(|s| !s.is_empty()) {
        let me = Waiter {
            worker: cx.id,
            token: cx.conns.token(slot),
        };
        forward_to_owner(cx, me, sid, Forwarded::Close);
    }
    respond(
        cx,
        slot,
        413,
        true,
        br#"{"code":3,"message":"Payload too large"}"#,
        true,
    );
}

fn new_session<B: Backend>(cx: &mut Core<B>, slot: usize, q: &Query<'_>, echo: bool) -> Session {
    let token = cx.conns.token(slot);
    let sid = make_id(cx, token);
    let query_token = q.get("token").filter(|t| !t.is_empty()).map(Into::into);
    cx.stats.inc(Counter::SioSessions);
    let mut s = Session::new(sid, query_token, cx.now);
    s.echo = echo;
    s
}

fn open_packet<B: Backend>(cx: &Core<B>, sid: &str, upgrades: &[&str]) -> Vec<u8> {
    let t = timing(cx);
    let mut out = Vec::with_capacity(160);
    eio::write_open(
        &mut out,
        &eio::Open {
            sid,
            upgrades,
            ping_interval_ms: t.interval.as_millis() as u64,
            ping_timeout_ms: t.timeout.as_millis() as u64,
            max_payload: cx.shared.cfg.socketio_max_payload as u64,
        },
    );
    out
}

fn open_polling<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    q: &Query<'_>,
    echo: bool,
) -> Result<(), Reject> {
    if cx.draining {
        return Err(reject(503, "server shutting down"));
    }
    // A polling session takes a connection's place: it counts against max_connections
    // and, from its client's address, against max_connections_per_ip.
    let ip = cx.peer_ips.get(&slot).copied();
    if ip.is_some_and(|ip| !cx.shared.enter_ip(ip)) {
        cx.stats.inc(Counter::RejectedPerIp);
        return Err(reject(
            503,
            "too many connections from this address (max_connections_per_ip)",
        ));
    }
    if cx.shared.reserve_conns(1) == 0 {
        if let Some(ip) = ip {
            cx.shared.leave_ip(ip);
        }
        cx.stats.inc(Counter::RejectedFull);
        return Err(reject(503, "too many connections (max_connections)"));
    }
    let listener = cx.conns[slot].listener;
    let token = cx.conns.insert_session(NO_SOCK, listener);
    if let Some(ip) = ip {
        cx.peer_ips.insert(token.slot(), ip);
    }
    cx.stats.conn_delta(crate::metrics::Transport::Socketio, 1);
    let s = token.slot();
    let session = new_session(cx, s, q, echo);
    let open = open_packet(cx, session.sid.as_str(), &["websocket"]);
    cx.sio.put(s, Entry::Session(session));
    arm_ping(cx, s);
    respond(cx, slot, 200, false, &open, false);
    Ok(())
}

fn open_ws<B: Backend>(
    cx: &mut Core<B>,
    slot: usize,
    req: &http::Request<'_, '_>,
    q: &Query<'_>,
    sid: Option<&str>,
) -> Result<(), Reject> {
    let accept = match ws::handshake::check_request(req) {
        Ok(a) => a,
        Err(_) => {
            eio_error(cx, slot, ErrorCode::BadRequest);
            return Ok(());
        }
    };
    // A sid that cannot be one of this node's is refused; one that names a record that
    // is not (or no longer) a polling session is accepted and then closed, as WebSocket
    // clients expect of a session that went away (or moved on to another WebSocket).
    let foreign = sid.is_some_and(|sid| {
        parse_id(sid).is_none_or(|p| !ours(cx, p.node) || p.worker >= cx.shared.inboxes.len())
    });
    if foreign {
        eio_error(cx, slot, ErrorCode::UnknownSid);
        return Ok(());
    }
    if sid.is_none() && cx.draining {
        return Err(reject(503, "server shutting down"));
    }
    let mut out = Vec::with_capacity(160);
    ws::handshake::write_accept_response(&mut out, &accept);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.disarm(slot);
    cx.conns[slot].clear(flag::KEEP_ALIVE);
    let moved = cx.conns[slot].upgrade_sio(sid.is_some());
    if !cx.apply(slot, moved) {
        return Ok(());
    }
    if let Some(sid) = sid {
        cx.sio.put(
            slot,
            Entry::Probe {
                sid: sid.into(),
                asked: false,
                early: Vec::new(),
            },
        );
        let t = cx.live().handshake_timeout();
        cx.arm(slot, t);
        let me = Waiter {
            worker: cx.id,
            token: cx.conns.token(slot),
        };
        let known =
            parse_id(sid).filter(|p| ours(cx, p.node) && p.worker < cx.shared.inboxes.len());
        if known.is_none() {
            install(cx, me.token, None);
        } else {
            forward_to_owner(cx, me, sid, Forwarded::Check);
        }
        return Ok(());
    }
    let echo = cx.shared.cfg.socketio_test && path_is(req.path(), ECHO_PATH);
    let session = new_session(cx, slot, q, echo);
    let open = open_packet(cx, session.sid.as_str(), &[]);
    cx.sio.put(slot, Entry::Session(session));
    send_frame(cx, slot, OpCode::Text, &open);
    arm_ping(cx, slot);
    Ok(())
}

/// A polling request (or an upgrade step) for a session of this worker.
fn on_forwarded<B: Backend>(cx: &mut Core<B>, from: Waiter, sid: &str, req: Forwarded) {
    let found = parse_id(sid)
        .filter(|p| p.worker == cx.id && cx.conns.alive(p.token))
        .map(|p| p.token.slot())
        .filter(|&s| cx.sio.session(s).is_some_and(|x| x.sid.as_str() == sid));
    let Some(s) = found else {
        match req {
            Forwarded::Take | Forwarded::Check => install_remote(cx, from, None),
            Forwarded::Release | Forwarded::Cancel | Forwarded::Close => {}
            Forwarded::Get | Forwarded::Post(_) => answer_error(cx, from, ErrorCode::UnknownSid),
        }
        return;
    };
    let polling = cx.conns[s].state() == State::SioPoll;
    let dead = cx
        .sio
        .session(s)
        .is_some_and(|x| x.awaiting_pong && cx.now >= x.deadline);
    if dead && matches!(req, Forwarded::Get | Forwarded::Post(_)) {
        cx.stats.inc(Counter::HeartbeatTimeout);
        close_session(cx, s, true);
        return answer_error(cx, from, ErrorCode::UnknownSid);
    }
    match req {
        Forwarded::Get if polling => poll_get(cx, s, from),
        Forwarded::Post(body) if polling => {
            let ok = poll_post(cx, s, &body);
            if ok {
                answer(cx, from, 200, false, b"ok");
            } else {
                answer_error(cx, from, ErrorCode::BadRequest);
            }
        }
        Forwarded::Get | Forwarded::Post(_) => answer_error(cx, from, ErrorCode::BadRequest),
        Forwarded::Check if !polling => install_remote(cx, from, None),
        Forwarded::Check => {}
        Forwarded::Close => {
            cx.stats.inc(Counter::SioErrors);
            close_session(cx, s, false);
        }
        Forwarded::Release => release_get(cx, s),
        Forwarded::Cancel => {
            if let Some(session) = cx.sio.session_mut(s) {
                if session.r().get == Some(from) {
                    session.r().get = None;
                }
            }
        }
        Forwarded::Take => {
            let snap = take_session(cx, s);
            install_remote(cx, from, snap);
        }
    }
}

/// Pushes a Socket.IO command to a worker's inbox, counted until that worker handles it
/// (a handover refuses while one is in flight: see [`handover`]).
fn push_cmd<B: Backend>(cx: &Core<B>, worker: usize, cmd: SioCmd) {
    if let Some(inbox) = cx.shared.inboxes.get(worker) {
        cx.shared
            .sio_recovery
            .in_flight
            .fetch_add(1, Ordering::AcqRel);
        inbox.push(Cmd::Sio(Box::new(cmd)));
    }
}

fn install_remote<B: Backend>(cx: &mut Core<B>, to: Waiter, snap: Option<Box<Snapshot>>) {
    if to.worker == cx.id {
        return install(cx, to.token, snap);
    }
    cx.stats.inc(Counter::SioMoved);
    push_cmd(
        cx,
        to.worker,
        SioCmd::Install {
            token: to.token,
            snapshot: snap,
        },
    );
}

/// A Socket.IO command from another worker.
pub fn on_cmd<B: Backend>(cx: &mut Core<B>, cmd: SioCmd) {
    cx.shared
        .sio_recovery
        .in_flight
        .fetch_sub(1, Ordering::AcqRel);
    match cmd {
        SioCmd::Forward { from, sid, req } => on_forwarded(cx, from, &sid, req),
        SioCmd::Answer {
            token,
            status,
            json,
            body,
        } => {
            if cx.conns.alive(token) && cx.conns[token.slot()].state() == State::SioHeld {
                let slot = token.slot();
                cx.sio.take(slot);
                respond(cx, slot, status, json, &body, false);
            }
        }
        SioCmd::Install { token, snapshot } => install(cx, token, snapshot),
    }
}

fn poll_get<B: Backend>(cx: &mut Core<B>, s: usize, from: Waiter) {
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    if session.r().get.is_some() {
        // Overlapping GETs: the protocol's answer is an error and the end of the session.
        cx.stats.inc(Counter::SioErrors);
        answer_error(cx, from, ErrorCode::BadRequest);
        close_session(cx, s, false);
        return;
    }
    if session.upgrading {
        let mut body = std::mem::take(&mut session.r().queue);
        eio::push_separator(&mut body);
        eio::write_text(&mut body, PacketType::Noop, b"");
        return answer(cx, from, 200, false, &body);
    }
    if session.r().queue.is_empty() {
        session.r().get = Some(from);
        return;
    }
    let body = std::mem::take(&mut session.r().queue);
    answer(cx, from, 200, false, &body);
}

/// Answers the held GET with what is queued.
fn flush<B: Backend>(cx: &mut Core<B>, s: usize) {
    let limit = cx.live().slow_consumer_bytes().max(SOCKETIO_MIN_QUEUE);
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    if session.r().queue.is_empty() {
        return;
    }
    if let Some(to) = session.r().get.take() {
        let body = std::mem::take(&mut session.r().queue);
        answer(cx, to, 200, false, &body);
    } else if session.r().queue.len() > limit {
        cx.stats.inc(Counter::SlowConsumer);
        close_session(cx, s, true);
    }
}

/// A probe began: the held GET (and each one after it) is answered at once, with a
/// noop behind what is queued.
fn release_get<B: Backend>(cx: &mut Core<B>, s: usize) {
    if let Some(session) = cx.sio.session_mut(s) {
        session.upgrading = true;
        if let Some(to) = session.r().get.take() {
            let mut body = std::mem::take(&mut session.r().queue);
            eio::push_separator(&mut body);
            eio::write_text(&mut body, PacketType::Noop, b"");
            answer(cx, to, 200, false, &body);
        }
    }
}

/// The packets of a POST; false (and the session closed) for a bad payload.
fn poll_post<B: Backend>(cx: &mut Core<B>, s: usize, body: &[u8]) -> bool {
    let packets = match eio::decode_payload(body, SOCKETIO_MAX_PACKETS) {
        Ok(p) => p,
        Err(e) => {
            crate::debug!("worker {}: socket.io payload refused: {e}", cx.id);
            cx.stats.inc(Counter::SioErrors);
            close_session(cx, s, false);
            return false;
        }
    };
    for p in packets {
        if cx.conns[s].doomed() || cx.sio.session(s).is_none() {
            break;
        }
        on_packet(cx, s, p);
    }
    true
}

// ------------------------------------------------------------------ WebSocket side

fn send_frame<B: Backend>(cx: &mut Core<B>, slot: usize, op: OpCode, data: &[u8]) {
    let mut out = std::mem::take(&mut cx.out);
    out.clear();
    ws::encode_frame(&mut out, true, op, data);
    cx.send(slot, &[Part::Copy(&out)]);
    cx.out = out;
}

/// A WebSocket message of a `SioWs` or `SioProbe` connection.
pub fn on_ws_message<B: Backend>(cx: &mut Core<B>, slot: usize, kind: DataKind, data: &[u8]) {
    let state = cx.conns[slot].state();
    if state == State::SioProbe {
        return on_probe_message(cx, slot, kind, data);
    }
    let packet = match kind {
        DataKind::Binary => Packet::Binary(std::borrow::Cow::Borrowed(data)),
        DataKind::Text => {
            let Ok(text) = std::str::from_utf8(data) else {
                return protocol_error(cx, slot, "not UTF-8");
            };
            match eio::decode_text(text) {
                Ok((t, rest)) => Packet::Text(t, rest),
                Err(e) => return protocol_error(cx, slot, e.reason()),
            }
        }
    };
    on_packet(cx, slot, packet);
}

fn on_probe_message<B: Backend>(cx: &mut Core<B>, slot: usize, kind: DataKind, data: &[u8]) {
    let Some(Entry::Probe { sid, asked, early }) = cx.sio.get_mut(slot) else {
        return;
    };
    if *asked {
        // The session is on its way: what comes meanwhile waits for it.
        let held: usize = early.iter().map(|(_, d)| d.len()).sum();
        if held + data.len() > SOCKETIO_MAX_EARLY {
            return protocol_error(cx, slot, "too much sent during the upgrade");
        }
        early.push((kind, data.to_vec()));
        return;
    }
    let sid = sid.clone();
    match (kind, data) {
        (DataKind::Text, b"2probe") => {
            send_frame(cx, slot, OpCode::Text, b"3probe");
            let me = Waiter {
                worker: cx.id,
                token: cx.conns.token(slot),
            };
            forward_to_owner(cx, me, &sid, Forwarded::Release);
        }
        (DataKind::Text, b"5") => {
            if let Some(Entry::Probe { asked, .. }) = cx.sio.get_mut(slot) {
                *asked = true;
            }
            let me = Waiter {
                worker: cx.id,
                token: cx.conns.token(slot),
            };
            forward_to_owner(cx, me, &sid, Forwarded::Take);
        }
        (DataKind::Text, b"6") => {}
        _ => protocol_error(cx, slot, "unexpected packet during the upgrade"),
    }
}

fn forward_to_owner<B: Backend>(cx: &mut Core<B>, from: Waiter, sid: &str, req: Forwarded) {
    match parse_id(sid) {
        Some(p) if p.worker == cx.id => on_forwarded(cx, from, sid, req),
        Some(p) => push_cmd(
            cx,
            p.worker,
            SioCmd::Forward {
                from,
                sid: sid.into(),
                req,
            },
        ),
        None => {}
    }
}

/// Takes a polling session out of its record (an upgrade): its held GET released, its
/// subscriptions ended with their cursors kept, the record closed.
fn take_session<B: Backend>(cx: &mut Core<B>, s: usize) -> Option<Box<Snapshot>> {
    release_get(cx, s);
    let Some(Entry::Session(session)) = cx.sio.take(s).map(|b| *b) else {
        return None;
    };
    let mut channels = cursors(cx, s);
    channels.extend(own_rooms(cx, s, &session.nsps));
    let grant = cx.conns[s].ext.as_mut().and_then(|e| e.grant.take());
    cx.unsubscribe_all(s);
    cx.close(s);
    let rare = session.rare.map(|r| *r).unwrap_or_default();
    Some(Box::new(Snapshot {
        sid: session.sid,
        nsps: session.nsps,
        channels,
        queue: rare.queue,
        grant,
        query_token: rare.query_token,
        born: session.born,
        echo: session.echo,
    }))
}

/// The own rooms of a session's sockets that it is not subscribed to, each with where
/// its stream is now (what the socket has seen): a session that moves (an upgrade, a
/// recovery) subscribes to them, as its sockets' ids name a record that is gone.
fn own_rooms<B: Backend>(cx: &Core<B>, s: usize, nsps: &[Nsp]) -> Vec<(Arc<str>, u64, Epoch)> {
    if !cx.shared.cfg.socketio_own_room {
        return Vec::new();
    }
    let subs = cx.conns[s].subs.as_slice();
    nsps.iter()
        .map(|n| format!("{}{}", n.prefix, n.sid.as_str()))
        .filter(|name| cx.index.by_name(subs, name).is_none())
        .map(|name| {
            let (epoch, seq) = cx
                .shared
                .hub
                .local_stream(&name)
                .unwrap_or((Epoch::NONE, 0));
            (Arc::from(name), seq, epoch)
        })
        .collect()
}

/// Each subscription's channel and the last seq delivered.
fn cursors<B: Backend>(cx: &Core<B>, slot: usize) -> Vec<(Arc<str>, u64, Epoch)> {
    cx.conns[slot]
        .subs
        .as_slice()
        .iter()
        .map(|sub| {
            let c = cx.index.chan(sub.local);
            (c.name.clone(), sub.last_seq & !PAUSED, c.epoch)
        })
        .collect()
}

/// The session arrives at the probing WebSocket.
fn install<B: Backend>(cx: &mut Core<B>, token: Token, snap: Option<Box<Snapshot>>) {
    if !cx.conns.alive(token) || cx.conns[token.slot()].state() != State::SioProbe {
        return;
    }
    let slot = token.slot();
    let Some(snap) = snap else {
        return protocol_error(cx, slot, "the session is gone");
    };
    let early = match cx.sio.take(slot).map(|b| *b) {
        Some(Entry::Probe { early, .. }) => early,
        _ => Vec::new(),
    };
    let snap = *snap;
    let moved = cx.conns[slot].take_session();
    if !cx.apply(slot, moved) {
        return;
    }
    if let Some(g) = snap.grant {
        cx.conns[slot].ext().grant = Some(g);
        cx.watch_token(slot);
    }
    let names: Vec<String> = snap
        .channels
        .iter()
        .map(|(n, _, _)| n.to_string())
        .collect();
    let points: Vec<Since> = snap
        .channels
        .iter()
        .map(|&(_, seq, epoch)| Since::Seq(seq + 1, epoch))
        .collect();
    let pending = cx
        .subscribe_all(slot, &names, &points, true, false)
        .map(|p| p.0)
        .unwrap_or_default();
    let mut session = Session::new(snap.sid, snap.query_token, snap.born);
    session.nsps = snap.nsps;
    session.echo = snap.echo;
    cx.sio.put(slot, Entry::Session(session));
    if !snap.queue.is_empty() {
        if let Ok(packets) = eio::decode_payload(&snap.queue, usize::MAX) {
            let mut out = Vec::with_capacity(snap.queue.len() + 16);
            for p in packets {
                match p {
                    Packet::Text(t, d) => {
                        let mut text = Vec::with_capacity(d.len() + 1);
                        eio::write_text(&mut text, t, d.as_bytes());
                        ws::encode_frame(&mut out, true, OpCode::Text, &text);
                    }
                    Packet::Binary(b) => ws::encode_frame(&mut out, true, OpCode::Binary, &b),
                }
            }
            cx.send(slot, &[Part::Copy(&out)]);
        }
    }
    cx.replay_all(slot, pending);
    arm_ping(cx, slot);
    for (kind, data) in early {
        if cx.conns[slot].write_closed() {
            break;
        }
        on_ws_message(cx, slot, kind, &data);
    }
}

// ------------------------------------------------------------------ packets

fn protocol_error<B: Backend>(cx: &mut Core<B>, slot: usize, why: &str) {
    crate::debug!(
        "worker {}: socket.io protocol error on {slot}: {why}",
        cx.id
    );
    cx.stats.inc(Counter::SioErrors);
    match cx.conns[slot].state() {
        State::SioWs | State::SioProbe => {
            cx.sio.take(slot);
            super::ws::fail(cx, slot, CloseCode::PROTOCOL, why);
        }
        _ => close_session(cx, slot, false),
    }
}

fn echo<B: Backend>(cx: &Core<B>, s: usize) -> bool {
    cx.sio.session(s).is_some_and(|x| x.echo)
}

/// Sends one binary message to the session in `s`.
fn send_binary<B: Backend>(cx: &mut Core<B>, s: usize, data: &[u8]) {
    match cx.conns[s].state() {
        State::SioWs => send_frame(cx, s, OpCode::Binary, data),
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                eio::write_binary_b64(&mut session.r().queue, data);
                flush(cx, s);
            }
        }
        _ => {}
    }
}

/// One Engine.IO packet from the client of session `s`.
fn on_packet<B: Backend>(cx: &mut Core<B>, s: usize, p: Packet<'_>) {
    match p {
        Packet::Binary(data) if echo(cx, s) => send_binary(cx, s, &data),
        Packet::Text(PacketType::Message, data) if echo(cx, s) => {
            send_text(cx, s, PacketType::Message, data.as_bytes())
        }
        Packet::Binary(data) => on_attachment(cx, s, data.into_owned()),
        Packet::Text(PacketType::Pong, _) => {
            if let Some(session) = cx.sio.session_mut(s) {
                if session.awaiting_pong {
                    session.awaiting_pong = false;
                    arm_ping(cx, s);
                }
            }
        }
        Packet::Text(PacketType::Message, data) => on_sio_text(cx, s, data),
        // A client closing its Engine.IO session may come back for its state (as socket.io
        // recovers "transport close"); only a DISCONNECT is for good.
        Packet::Text(PacketType::Close, _) => close_session_with(cx, s, true, PacketType::Noop),
        Packet::Text(PacketType::Ping, data) => {
            // Not sent by v4 clients outside a probe; answered all the same.
            send_text(cx, s, PacketType::Pong, data.as_bytes());
        }
        Packet::Text(PacketType::Noop, _) => {}
        Packet::Text(PacketType::Open | PacketType::Upgrade, _) => {
            protocol_error(cx, s, "unexpected packet type")
        }
    }
}

fn on_sio_text<B: Backend>(cx: &mut Core<B>, s: usize, text: &str) {
    if cx
        .sio
        .session(s)
        .and_then(Session::rare_ref)
        .is_some_and(|r| r.partial.is_some())
    {
        return protocol_error(cx, s, "a text packet while attachments were expected");
    }
    let p = match sio::decode(text) {
        Ok(p) => p,
        Err(e) => return protocol_error(cx, s, &e.to_string()),
    };
    if matches!(p.kind, SioType::BinaryEvent | SioType::BinaryAck) && p.attachments > 0 {
        let partial = Partial {
            kind: p.kind,
            nsp: p.nsp.into(),
            id: p.id,
            data: p.data.unwrap_or("[]").to_string(),
            need: p.attachments as usize,
            got: Vec::new(),
        };
        if let Some(session) = cx.sio.session_mut(s) {
            session.r().partial = Some(Box::new(partial));
        }
        return;
    }
    on_sio_packet(cx, s, p.kind, p.nsp, p.id, p.data.map(str::to_string));
}

fn on_attachment<B: Backend>(cx: &mut Core<B>, s: usize, data: Vec<u8>) {
    let Some(session) = cx.sio.session_mut(s) else {
        return;
    };
    let Some(partial) = session.r().partial.as_mut() else {
        return protocol_error(cx, s, "a binary packet without its event");
    };
    partial.got.push(data);
    if partial.got.len() < partial.need {
        return;
    }
    let p = session.r().partial.take().expect("checked");
    let atts: Vec<&[u8]> = p.got.iter().map(Vec::as_slice).collect();
    match sio::inline_attachments(&p.data, &atts) {
        Ok(data) => on_sio_packet(cx, s, p.kind, &p.nsp, p.id, Some(data)),
        Err(e) => protocol_error(cx, s, &e.to_string()),
    }
}

fn on_sio_packet<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    kind: SioType,
    nsp: &str,
    id: Option<u64>,
    data: Option<String>,
) {
    match kind {
        SioType::Connect => connect(cx, s, nsp, data.as_deref()),
        SioType::Disconnect => disconnect_nsp(cx, s, nsp),
        SioType::Event | SioType::BinaryEvent => {
            let Some(data) = data else {
                return protocol_error(cx, s, "an event without data");
            };
            if cx.sio.session(s).and_then(|x| x.nsp(nsp)).is_none() {
                // Not connected to that namespace: the packet is for nobody.
                return;
            }
            match sio::split_event(&data) {
                Ok((name, args)) => on_event(cx, s, nsp, id, &name, &args),
                Err(e) => protocol_error(cx, s, &e.to_string()),
            }
        }
        // The server asks no acks.
        SioType::Ack | SioType::BinaryAck => {}
        SioType::ConnectError => protocol_error(cx, s, "CONNECT_ERROR from a client"),
    }
}

/// Sends a Socket.IO packet (raw JSON data) to session `s`.
fn send_sio<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    kind: SioType,
    nsp: &str,
    id: Option<u64>,
    data: Option<&[u8]>,
) {
    let mut text = Vec::with_capacity(32 + data.map_or(0, <[u8]>::len));
    sio::write(&mut text, kind, nsp, id, 0, data);
    send_text(cx, s, PacketType::Message, &text);
}

/// Emits `name(args...)` (raw JSON args), binary objects as attachments.
fn emit<B: Backend>(
    cx: &mut Core<B>,
    s: usize,
    nsp: &str,
    id: Option<u64>,
    ack: bool,
    name: &str,
    args: &[&str],
) {
    let mut data = Vec::with_capacity(64);
    if ack {
        data.push(b'[');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                data.push(b',');
            }
            data.extend_from_slice(a.as_bytes());
        }
        data.push(b']');
    } else {
        sio::write_event_data(&mut data, name, args);
    }
    let enc = encode_packet(
        if ack { SioType::Ack } else { SioType::Event },
        nsp,
        id,
        std::str::from_utf8(&data).unwrap_or("[]"),
    );
    send_encoded(cx, s, &enc);
}

/// Sends one text packet to the session in `s` (a WebSocket frame, or queued for the
/// next GET).
fn send_text<B: Backend>(cx: &mut Core<B>, s: usize, t: PacketType, data: &[u8]) {
    match cx.conns[s].state() {
        State::SioWs => {
            let mut text = Vec::with_capacity(data.len() + 1);
            eio::write_text(&mut text, t, data);
            send_frame(cx, s, OpCode::Text, &text);
        }
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                eio::write_text(&mut session.r().queue, t, data);
                flush(cx, s);
            }
        }
        _ => {}
    }
}

fn send_encoded<B: Backend>(cx: &mut Core<B>, s: usize, enc: &Encoded) {
    match cx.conns[s].state() {
        State::SioWs => cx.send(s, &[Part::Shared(&enc.ws)]),
        State::SioPoll => {
            if let Some(session) = cx.sio.session_mut(s) {
                eio::push_separator(&mut session.r().queue);
                session.r().queue.extend_from_slice(&enc.poll);
                flush(cx, s);
            }
        }
        _ => {}
    }
}

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

fn connect<B: Backend>(cx: &mut Core<B>, s: usize, nsp: &str, data: Option<&str>) {
    let cfg = &cx.shared.cfg;
    let prefix = match prefix_of(cfg, nsp) {
        Some(p) if nsp_allowed(cfg, nsp) => p,
        _ => return connect_error(cx, s, nsp, "Invalid namespace", 0),
    };
    let Some(session) = cx.sio.session(s) else {
        return;
    };
    if let Some(n) = session.nsp(nsp) {
        // Connected already: the same answer again.
        let reply = connect_reply(n.sid.as_str(), n.pid.as_ref().map(Id::as_str));
        return send_sio(cx, s, SioType::Connect, nsp, None, Some(&reply));
    }
    if session.nsps.len() >= SOCKETIO_MAX_NAMESPACES {
        return connect_error(cx, s, nsp, "too many namespaces on one connection", 0);
    }
    let auth: ConnectAuth = match data.map(serde_json::from_str) {
        None => ConnectAuth::default(),
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return connect_error(cx, s, nsp, "auth must be an object (token, channels)", 400)
        }
    };
    // The token: the CONNECT's, else the handshake's.
    let grant = if cx.shared.token_auth() {
        let token = auth
            .token
            .as_deref()
            .or(session.rare_ref().and_then(|r| r.query_token.as_deref()))
            .unwrap_or("");
        match cx.shared.verifier.verify(token, unix_now()) {
            Ok(g) => Some(g),
            Err(e) => {
                cx.stats.inc(Counter::Http401);
                cx.auth_failed(s, "socket.io connect", e.reason());
                return connect_error(cx, s, nsp, e.reason(), 401);
            }
        }
    } else {
        None
    };
    let mut rooms: Vec<String> = vec![cx.shared.cfg.socketio_broadcast_room.clone()];
    for r in auth.channels.iter().flatten() {
        if !rooms.contains(r) {
            rooms.push(r.clone());
        }
    }
    // Recovery: the same socket id and the rooms from where they were.
    let recovered = match (&auth.pid, recovery_on(cx)) {
        (Some(pid), true) => cx.shared.sio_recovery.take(pid, nsp),
        _ => None,
    };
    let offset = auth.offset.as_deref().and_then(parse_offset);
    let mut names: Vec<String> = Vec::new();
    let mut points: Vec<Since> = Vec::new();
    if let Some(rec) = &recovered {
        for (name, seq, epoch) in &rec.channels {
            let from = match &offset {
                Some((c, oseq, oepoch)) if c == &**name => Since::Seq(oseq + 1, *oepoch),
                _ => Since::Seq(seq + 1, *epoch),
            };
            names.push(name.to_string());
            points.push(from);
        }
    }
    for r in &rooms {
        let name = format!("{prefix}{r}");
        if message::validate_channel(&name).is_err() {
            return connect_error(cx, s, nsp, &format!("bad room name '{r}'"), 400);
        }
        if !names.contains(&name) {
            names.push(name);
            points.push(Since::Now);
        }
    }
    if let Some(g) = &grant {
        if let Some(n) = names.iter().find(|n| !g.allows(n)) {
            let why = format!("the token does not grant {n}");
            return connect_error(cx, s, nsp, &why, 403);
        }
    }
    // The user's own channel (`user_channels`), granted by the token's `sub` itself: a
    // channel of the main namespace (`user:U` has no namespace prefix).
    if nsp == "/" {
        cx.add_user_channel(grant.as_ref(), &mut names, &mut points);
    }
    let existing = cx.conns[s].subs.len();
    if existing + names.len() > cx.shared.cfg.max_channels_per_conn {
        let why = format!(
            "too many rooms (max_channels_per_conn {})",
            cx.shared.cfg.max_channels_per_conn
        );
        return connect_error(cx, s, nsp, &why, 400);
    }
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
    let (sid, pid) = match recovered {
        Some(rec) => {
            cx.stats.inc(Counter::SioRecovered);
            (rec.sid, auth.pid.as_deref().and_then(Id::parse))
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
    };
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
        let at = cx.now + crate::limits::TICK * 2;
        cx.wheel.insert(at, token.tagged(LATER_TAG));
    }
    cx.replay_all(s, pending);
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

fn disconnect_nsp<B: Backend>(cx: &mut Core<B>, s: usize, nsp: &str) {
    for local in nsp_locals(cx, s, nsp) {
        cx.unsubscribe(s, local);
    }
    if let Some(session) = cx.sio.session_mut(s) {
        session.nsps.retain(|n| &*n.name != nsp);
    }
}

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

fn json_str(s: &str) -> String {
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

fn on_event<B: Backend>(
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
    let rooms: Vec<String> = match args
        .first()
        .map(|a| serde_json::from_str::<serde_json::Value>(a))
    {
        Some(Ok(serde_json::Value::String(r))) => vec![r],
        Some(Ok(serde_json::Value::Array(v))) if v.iter().all(|x| x.is_string()) => v
            .into_iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => {
            return ask.refuse(cx, 400, "rooms must be a name or a list of names");
        }
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
    if let Err(e) = message::validate_channel(&channel) {
        return ask.refuse(cx, 400, &e.to_string());
    }
    let allowed = cx
        .shared
        .cfg
        .client_publish
        .iter()
        .any(|p| pattern_matches(p, &channel));
    if !allowed {
        return ask.refuse(
            cx,
            403,
            "clients may not publish to this channel (client_publish)",
        );
    }
    if cx.shared.token_auth() {
        let g = grant(cx, s);
        if g.is_some_and(|g| g.exp <= unix_now()) {
            return ask.refuse(cx, 401, "token expired");
        }
        if !g.is_some_and(|g| g.may_publish(&channel)) {
            let why = "the token does not grant publishing to this channel (its pub claim)";
            return ask.refuse(cx, 403, why);
        }
    }
    if content.len() > cx.live().max_message_bytes() {
        return ask.refuse(cx, 413, "message too large (max_message_bytes)");
    }
    let now = cx.now;
    let waiting = cx
        .sio
        .session(s)
        .and_then(Session::rare_ref)
        .map_or(0, |r| r.acks.len());
    if waiting >= MAX_PENDING_ACKS || !cx.limiters.take(s, Limit::Publishes, now) {
        cx.stats.inc(Counter::PublishLimited);
        return ask.refuse(cx, 429, "publishing too fast (client_publish_rate)");
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

// ------------------------------------------------------------------ delivery

/// A message's packets for one namespace: the WebSocket frames and the polling payload
/// (an event and its attachments each).
#[derive(Debug)]
pub struct Encoded {
    nsp: Box<str>,
    ws: Bytes,
    poll: Bytes,
}

/// Encodes a packet whose data may hold `{"$binary":...}` objects.
fn encode_packet(kind: SioType, nsp: &str, id: Option<u64>, data: &str) -> Encoded {
    let (data, atts) = if data.contains("\"$binary\"") {
        sio::extract_binaries(data).unwrap_or_else(|_| (data.to_string(), Vec::new()))
    } else {
        (data.to_string(), Vec::new())
    };
    let kind = match (kind, atts.is_empty()) {
        (SioType::Event, false) => SioType::BinaryEvent,
        (SioType::Ack, false) => SioType::BinaryAck,
        (k, _) => k,
    };
    let mut text = Vec::with_capacity(data.len() + 32);
    text.push(PacketType::Message.as_byte());
    sio::write(
        &mut text,
        kind,
        nsp,
        id,
        atts.len() as u32,
        Some(data.as_bytes()),
    );
    let mut ws_out = Vec::with_capacity(text.len() + 16);
    ws::encode_frame(&mut ws_out, true, OpCode::Text, &text);
    let mut poll = text;
    for a in &atts {
        ws::encode_frame(&mut ws_out, true, OpCode::Binary, a);
        eio::push_separator(&mut poll);
        eio::write_binary_b64(&mut poll, a);
    }
    Encoded {
        nsp: nsp.into(),
        ws: Bytes::from(ws_out),
        poll: Bytes::from(poll),
    }
}

/// A data message as an event of namespace `nsp`.
fn encode_msg(msg: &Msg, nsp: &str, offset: bool) -> Encoded {
    let (event, body) = msg.event();
    let name = if event.is_empty() { "message" } else { event };
    let text_arg;
    let mut args: Vec<&str> = Vec::with_capacity(2);
    let split;
    match body {
        Body::Text => {
            text_arg = json_str(&msg.content);
            args.push(&text_arg);
        }
        Body::Json => args.push(&msg.content),
        Body::Args => {
            split = sio::split_args(&msg.content).unwrap_or_else(|_| vec![msg.content.to_string()]);
            args.extend(split.iter().map(String::as_str));
        }
    }
    let off;
    if offset {
        let mut pos = Vec::with_capacity(msg.channel.len() + 32);
        protocol::cursor::write_position(&mut pos, msg.seq, msg.epoch.as_str());
        pos.push(b'/');
        pos.extend_from_slice(msg.channel.as_bytes());
        off = json_str(std::str::from_utf8(&pos).unwrap_or(""));
        args.push(&off);
    }
    let mut data = Vec::with_capacity(msg.content.len() + 48);
    sio::write_event_data(&mut data, name, &args);
    encode_packet(
        SioType::Event,
        nsp,
        None,
        std::str::from_utf8(&data).unwrap_or("[]"),
    )
}

/// Delivers one message (its cursor already advanced) to session `s`.
pub fn deliver<B: Backend>(cx: &mut Core<B>, s: usize, msg: &Arc<Msg>) {
    if msg.kind != MsgKind::Data {
        let env = msg.envelope();
        return envelope(cx, s, &env);
    }
    let Some(nsp) = cx
        .sio
        .session(s)
        .and_then(|x| x.nsp_of(&msg.channel))
        .map(|n| n.name.clone())
    else {
        return;
    };
    let offset = recovery_on(cx);
    let cache = msg.socketio_cache();
    let cached = cache.get_or_init(|| encode_msg(msg, &nsp, offset));
    if cached.nsp == nsp {
        send_encoded(cx, s, cached);
    } else {
        let enc = encode_msg(msg, &nsp, offset);
        send_encoded(cx, s, &enc);
    }
}

/// A message for a socket's own room (no subscription: the socket id names the worker).
pub fn deliver_direct<B: Backend>(cx: &mut Core<B>, msg: &Arc<Msg>) {
    if msg.kind != MsgKind::Data || !cx.shared.cfg.socketio_own_room {
        return;
    }
    let id = &msg.channel[msg.channel.len() - SID_LEN..];
    let Some(parts) = parse_id(id) else {
        return;
    };
    if parts.worker != cx.id || !cx.conns.alive(parts.token) {
        return;
    }
    let s = parts.token.slot();
    let prefix = &msg.channel[..msg.channel.len() - SID_LEN];
    let nsp = cx.sio.session(s).and_then(|x| {
        x.nsps
            .iter()
            .find(|n| n.sid.as_str() == id && &*n.prefix == prefix)
            .map(|n| n.name.clone())
    });
    let Some(nsp) = nsp else {
        return;
    };
    if cx
        .index
        .by_name(cx.conns[s].subs.as_slice(), &msg.channel)
        .is_some()
    {
        // Subscribed to it as well (a recovered socket): delivered through that.
        return;
    }
    let enc = encode_msg(msg, &nsp, recovery_on(cx));
    send_encoded(cx, s, &enc);
    cx.stats.inc(Counter::Delivered);
}

/// True for a channel that may be a socket's own room.
pub fn is_own_room(channel: &str) -> bool {
    channel.len() >= SID_LEN && own_room_worker(channel, usize::MAX).is_some()
}

/// An envelope (gap, reset, close, refresh, error) as an event named by its type, with
/// the envelope as its argument, to the namespace of its channel.
pub fn envelope<B: Backend>(cx: &mut Core<B>, s: usize, msg: &Message<'_>) {
    let channel = match msg {
        Message::Gap { channel, .. }
        | Message::Reset { channel, .. }
        | Message::Close { channel } => Some(*channel),
        _ => None,
    };
    let Some(session) = cx.sio.session(s) else {
        return;
    };
    let nsp = match channel {
        Some(c) => session.nsp_of(c),
        None => session.nsps.first(),
    };
    let Some(nsp) = nsp.map(|n| n.name.clone()) else {
        return;
    };
    let mut json = Vec::with_capacity(96);
    message::write_json(&mut json, msg, JsonStyle::Plain);
    let arg = String::from_utf8(json).unwrap_or_default();
    emit(cx, s, &nsp, None, false, msg.type_name(), &[&arg]);
}

// ------------------------------------------------------------------ timer and end

/// The record's timer (see the table in `conn`).
pub fn timer<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.conns[slot].state() {
        State::SioWs | State::SioPoll => {
            let Some(session) = cx.sio.session_mut(slot) else {
                return cx.close(slot);
            };
            if session.awaiting_pong {
                cx.stats.inc(Counter::HeartbeatTimeout);
                return close_session(cx, slot, true);
            }
            let connect_by = if cx.shared.cfg.socketio_test {
                SOCKETIO_TEST_CONNECT_TIMEOUT
            } else {
                SOCKETIO_CONNECT_TIMEOUT
            };
            if !session.connected && !session.echo && cx.now >= session.born + connect_by {
                return close_session(cx, slot, false);
            }
            session.awaiting_pong = true;
            let left = session.deadline.saturating_duration_since(cx.now);
            send_text(cx, slot, PacketType::Ping, b"");
            cx.rearm(slot, left);
        }
        State::SioProbe => cx.close(slot),
        State::SioHeld => {
            // A held request past its bound: released with a noop (its session is gone
            // or stuck).
            cancel(cx, slot);
            respond(cx, slot, 200, false, b"6", false);
        }
        _ => {}
    }
}

/// The packets a session sends a moment later (see [`Session::later`]).
pub fn on_later<B: Backend>(cx: &mut Core<B>, s: usize) {
    let later = match cx.sio.session_mut(s) {
        Some(session) => std::mem::take(&mut session.r().later),
        None => return,
    };
    for (nsp, auth) in later {
        emit(cx, s, &nsp, None, false, "auth", &[&auth]);
    }
}

/// Keeps what a socket needs to resume (its transport was lost).
fn keep_for_recovery<B: Backend>(cx: &mut Core<B>, s: usize) {
    if !recovery_on(cx) {
        return;
    }
    let Some(session) = cx.sio.session(s) else {
        return;
    };
    if session.nsps.is_empty() {
        return;
    }
    let channels = cursors(cx, s);
    let until = cx.now + secs(cx.shared.cfg.socketio_recovery_secs);
    let mut records = Vec::new();
    for n in &session.nsps {
        let Some(pid) = n.pid else {
            continue;
        };
        let mut mine: Vec<(Arc<str>, u64, Epoch)> = channels
            .iter()
            .filter(|(c, _, _)| session.nsp_of(c).is_some_and(|x| x.name == n.name))
            .cloned()
            .collect();
        // Its own room, which has no subscription unless it moved before.
        mine.extend(own_rooms(cx, s, std::slice::from_ref(n)));
        records.push((
            pid,
            Record {
                nsp: n.name.clone(),
                sid: n.sid,
                channels: mine,
                until,
            },
        ));
    }
    for (pid, rec) in records {
        cx.shared.sio_recovery.keep(pid.as_str().into(), rec);
    }
}

/// Ends a session: `lost` (its transport failed: kept for recovery) or on purpose; a
/// held GET gets the close packet.
fn close_session<B: Backend>(cx: &mut Core<B>, s: usize, lost: bool) {
    close_session_with(cx, s, lost, PacketType::Close)
}

/// [`close_session`], the held GET answered with `last` (a noop when the client asked
/// for the close).
fn close_session_with<B: Backend>(cx: &mut Core<B>, s: usize, lost: bool, last: PacketType) {
    if lost {
        keep_for_recovery(cx, s);
    }
    let state = cx.conns[s].state();
    let Some(entry) = cx.sio.take(s) else {
        return cx.close(s);
    };
    if let Entry::Session(mut session) = *entry {
        if let Some(to) = session.r().get.take() {
            let mut body = std::mem::take(&mut session.r().queue);
            eio::push_separator(&mut body);
            eio::write_text(&mut body, last, b"");
            answer(cx, to, 200, false, &body);
        }
    }
    match state {
        State::SioWs => {
            let mut text = Vec::with_capacity(2);
            eio::write_text(&mut text, PacketType::Close, b"");
            send_frame(cx, s, OpCode::Text, &text);
            super::ws::close(cx, s, CloseCode::NORMAL, "");
        }
        _ => cx.close(s),
    }
}

/// Ends the record gracefully (drain, kick, token expiry).
pub fn end<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.conns[slot].state() {
        State::SioWs | State::SioPoll => close_session(cx, slot, false),
        State::SioProbe => {
            cx.sio.take(slot);
            super::ws::close(cx, slot, CloseCode::GOING_AWAY, "server shutting down");
        }
        State::SioHeld => {
            cancel(cx, slot);
            cx.conns[slot].clear(flag::KEEP_ALIVE);
            respond(cx, slot, 200, false, b"6", true);
        }
        _ => {}
    }
}

/// The WebSocket's close handshake ended the session (the client's close frame).
pub fn on_ws_closed<B: Backend>(cx: &mut Core<B>, slot: usize) {
    keep_for_recovery(cx, slot);
    cx.sio.take(slot);
}

/// The record is being removed (after its handler): what is left of it goes. A session
/// whose transport went away under it (EOF, a reset) is kept for recovery.
pub fn closed<B: Backend>(cx: &mut Core<B>, slot: usize) {
    match cx.sio.get_mut(slot) {
        None => return,
        Some(Entry::Held { .. }) => return cancel(cx, slot),
        Some(Entry::Session(_)) => keep_for_recovery(cx, slot),
        Some(Entry::Probe { .. }) => {}
    }
    if let Some(Entry::Session(mut session)) = cx.sio.take(slot).map(|b| *b) {
        if let Some(to) = session.r().get.take() {
            let mut body = Vec::new();
            eio::write_text(&mut body, PacketType::Close, b"");
            answer(cx, to, 200, false, &body);
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

    #[test]
    fn a_message_is_an_event_with_its_arguments() {
        let e = Epoch::parse("e1").unwrap();
        let m = |content: &str, ev: &str, body: Body| {
            Msg::new(
                1,
                Arc::from("chat1.lobby"),
                e,
                3,
                MsgKind::Data,
                content.into(),
            )
            .with_sender(meta("", ev, body))
        };
        let enc = encode_msg(&m("hi \"you\"", "", Body::Text), "/chat1", false);
        assert_eq!(&enc.poll[..], br#"42/chat1,["message","hi \"you\""]"#);
        let enc = encode_msg(&m(r#"{"a":1}"#, "news", Body::Json), "/", true);
        assert_eq!(&enc.poll[..], br#"42["news",{"a":1},"3@e1/chat1.lobby"]"#);
        let enc = encode_msg(&m(r#"[1,"2"]"#, "chat", Body::Args), "/", false);
        assert_eq!(&enc.poll[..], br#"42["chat",1,"2"]"#);
        let enc = encode_msg(&m(r#"{"$binary":"AQID"}"#, "", Body::Json), "/", false);
        assert_eq!(
            &enc.poll[..],
            b"451-[\"message\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID"
        );
        // Over WebSocket: the text frame, then the attachment as a binary frame.
        assert_eq!(enc.ws[0], 0x81);
        assert_eq!(*enc.ws.last().unwrap(), 3);
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

// ------------------------------------------------------------------ hot handover

#[path = "socketio_handover.rs"]
mod handover;
pub use handover::{export, export_shared, import, import_shared};
