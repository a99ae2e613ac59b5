//! The per-connection record and its state machine.
//!
//! ```text
//!            accept
//!              |
//!              v
//!   +-----> Http --upgrade (GET /ws, /echo: 101)--> Ws | Echo --------+
//!   |          |--stream (GET /sse, /stream, /iframe)--> Sse | Stream | Iframe
//!   |          |                                                      +--shut--> Closing
//!   |          |--hold (GET /poll, nothing yet)--> Poll --answered--+ |  (write side shut,
//!   |          |--shut (an error, Connection: close)------------------+   reading to EOF)
//!   +----------+--answered (keep-alive)-----------------------------+
//!   |          |
//!   |          |--upgrade_sio (GET /socket.io/ websocket, no sid: 101)--> SioWs --shut--> Closing
//!   |          |--upgrade_sio (with the sid of a polling session: 101)--> SioProbe
//!   |          |                                   SioProbe --take_session (`5`)--> SioWs
//!   |          |--hold_sio (a polling request waiting for its session)--> SioHeld
//!   +----------+--answered----------------------------------------------- SioHeld
//!
//!   (no socket)  Conn::session() --> SioPoll   a polling session between its requests
//! ```
//!
//! The state is private to this module: it changes only through the transitions named
//! by the event that causes them ([`Conn::upgrade`], [`Conn::stream`], [`Conn::hold`],
//! [`Conn::answered`], [`Conn::shut`]), each of which refuses a move the diagram does not
//! have ([`Illegal`]). Closing for good is not a state: the worker's connection table
//! marks the record doomed and removes it once the handler that asked has returned, so no
//! handler ever finds its record gone underneath it.
//!
//! # The timer
//!
//! Each connection has one timer ([`Conn::timer`]); what it means follows from the state:
//!
//! | state | the timer fires when | then |
//! |---|---|---|
//! | `Http`, first request | `handshake_timeout_secs` passed since accept | 408 if a head had begun, else closed |
//! | `Http`, between requests | `idle_timeout_secs` of keep-alive idleness, or `handshake_timeout_secs` once the next head began | closed / 408 |
//! | `Ws` | the heartbeat is due (`heartbeat_secs`, the first jittered) | ping; the timer becomes the pong timeout |
//! | `Ws`, awaiting a pong | `pong_timeout_secs` passed | close 1008 "heartbeat timeout" |
//! | `Echo` | never armed | |
//! | `Sse`, `Stream`, `Iframe` | the heartbeat is due | `: ping` / `noop`, armed again |
//! | `Poll` | `poll_timeout_secs` passed | answered with `noop` |
//! | `SioWs` | the Engine.IO ping is due (`socketio_ping_interval_secs`) | ping `2`; the timer becomes the pong timeout |
//! | `SioWs`, `SioPoll` awaiting a pong | `socketio_ping_timeout_secs` passed | the session is closed |
//! | `SioPoll` | the ping is due | ping `2` queued (it answers the held GET) |
//! | `SioProbe` | `handshake_timeout_secs` passed without the upgrade | closed |
//! | `SioHeld` | `ping interval + timeout` (a forwarded request: plus [`crate::limits::SOCKETIO_FORWARD_WAIT`]) | answered `6` noop / 504 |
//! | any, closing gracefully ([`flag::CLOSE_AFTER_FLUSH`]) | `close_timeout_secs` passed | closed |
//! | `Closing` | `close_timeout_secs` passed | closed |
//!
//! Deadlines that are not the state's own (an unfinished WebSocket message, a token's
//! expiry) are *checks*: separate timer entries validated when they fire.
//!
//! The record is kept small because a server holds hundreds of thousands of them: an idle
//! WebSocket subscriber is a socket, a generation, a timer id, four bytes of state (state,
//! flags, WebSocket session, listener), an empty frame decoder, one inline subscription
//! and an empty pointer to the rarely needed [`Ext`] (unparsed input, callbacks, token
//! grant), which exists only while it holds something. See `size_of::<Conn>()` in the
//! tests.

use bytes::Bytes;

use protocol::ws::{Decoder, Session};

use crate::auth::Grant;
use crate::metrics::Transport;
use crate::reactor::{ListenerId, Sock};
use crate::timer::TimerId;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Waiting for (the rest of) a request head.
    Http,
    /// WebSocket subscriber.
    Ws,
    /// WebSocket echo (`/echo`, conformance testing).
    Echo,
    /// Server-Sent Events.
    Sse,
    /// Chunked NDJSON.
    Stream,
    /// Iframe script streaming.
    Iframe,
    /// A held long-poll request.
    Poll,
    /// Write side shut down; reading (and discarding) until the peer closes.
    Closing,
    /// A WebSocket carrying an Engine.IO session (Socket.IO).
    SioWs,
    /// A WebSocket upgrading an Engine.IO polling session (`2probe` .. `5`).
    SioProbe,
    /// An Engine.IO long-polling session between its requests: a record without a
    /// socket, in the table so that it has a token, a timer and subscriptions.
    SioPoll,
    /// A polling request of an Engine.IO session waiting for its answer (a held GET, or
    /// a request forwarded to the worker that holds its session).
    SioHeld,
}

impl State {
    /// The transport this state is counted under.
    pub fn transport(self) -> Transport {
        match self {
            State::Http | State::Closing | State::SioHeld => Transport::Http,
            State::SioWs | State::SioPoll => Transport::Socketio,
            State::SioProbe => Transport::Ws,
            State::Ws | State::Echo => Transport::Ws,
            State::Sse => Transport::Sse,
            State::Stream => Transport::Stream,
            State::Iframe => Transport::Iframe,
            State::Poll => Transport::Poll,
        }
    }

    /// The state of [`State`]`as u8` (a hot handover's record), or `None`.
    pub fn from_u8(v: u8) -> Option<State> {
        const ALL: [State; 12] = [
            State::Http,
            State::Ws,
            State::Echo,
            State::Sse,
            State::Stream,
            State::Iframe,
            State::Poll,
            State::Closing,
            State::SioWs,
            State::SioProbe,
            State::SioPoll,
            State::SioHeld,
        ];
        ALL.iter().copied().find(|s| *s as u8 == v)
    }

    /// True for the WebSocket states.
    pub fn is_ws(self) -> bool {
        matches!(
            self,
            State::Ws | State::Echo | State::SioWs | State::SioProbe
        )
    }

    /// True for the states that hold an Engine.IO session.
    pub fn is_sio_session(self) -> bool {
        matches!(self, State::SioWs | State::SioPoll)
    }

    /// True for the streaming HTTP responses (SSE, NDJSON, iframe).
    pub fn is_stream(self) -> bool {
        matches!(self, State::Sse | State::Stream | State::Iframe)
    }
}

/// A move the state diagram does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    /// The state the connection was in.
    pub from: State,
    /// The transition that was asked.
    pub event: &'static str,
}

impl std::fmt::Display for Illegal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no '{}' from state {:?}", self.event, self.from)
    }
}

/// A transition that happened: the transports counted before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Counted under this before.
    pub from: Transport,
    /// And under this now.
    pub to: Transport,
}

/// Bit flags of a connection.
pub mod flag {
    /// Doomed: closed by a handler, removed by the worker once the handler returns.
    pub const DOOMED: u8 = 1;
    /// A request body is being received (a Socket.IO POST): the unparsed input may hold
    /// up to `socketio_max_payload` more than a head.
    pub const BODY: u8 = 2;
    /// Close (shut the write side) once the output is written.
    pub const CLOSE_AFTER_FLUSH: u8 = 4;
    /// The connection has served a request (a timeout now is an idle keep-alive one).
    pub const SERVED: u8 = 8;
    /// The current request asked to keep the connection open.
    pub const KEEP_ALIVE: u8 = 16;
    /// The current long-poll answers as JSONP.
    pub const JSONP: u8 = 32;
    /// The current request's answers carry `Access-Control-Allow-Origin: *` (a specific
    /// origin is in [`super::Ext::origin`]).
    pub const CORS_ANY: u8 = 128;
}

/// One subscription of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Index of the worker-local channel.
    pub local: u32,
    /// Position of this connection in that channel's subscriber list.
    pub pos: u32,
    /// Highest seq delivered (or known) on this channel; deliveries at or below it are
    /// duplicates and dropped.
    pub last_seq: u64,
}

/// A connection's subscriptions: none, one inline (the common case), or several.
#[derive(Debug, Default)]
pub enum Subs {
    /// No subscription.
    #[default]
    None,
    /// One subscription, stored inline.
    One(Sub),
    /// Several.
    Many(Box<Vec<Sub>>),
}

impl Subs {
    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        match self {
            Subs::None => 0,
            Subs::One(_) => 1,
            Subs::Many(v) => v.len(),
        }
    }

    /// True without subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subscriptions as a slice.
    pub fn as_slice(&self) -> &[Sub] {
        match self {
            Subs::None => &[],
            Subs::One(s) => std::slice::from_ref(s),
            Subs::Many(v) => v,
        }
    }

    /// The subscriptions as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [Sub] {
        match self {
            Subs::None => &mut [],
            Subs::One(s) => std::slice::from_mut(s),
            Subs::Many(v) => v,
        }
    }

    /// The subscription to a local channel.
    pub fn find_mut(&mut self, local: u32) -> Option<&mut Sub> {
        self.as_mut_slice().iter_mut().find(|s| s.local == local)
    }

    /// Adds a subscription.
    pub fn push(&mut self, sub: Sub) {
        *self = match std::mem::take(self) {
            Subs::None => Subs::One(sub),
            Subs::One(a) => Subs::Many(Box::new(vec![a, sub])),
            Subs::Many(mut v) => {
                v.push(sub);
                Subs::Many(v)
            }
        };
    }

    /// Removes the subscription to a local channel; returns it.
    pub fn remove(&mut self, local: u32) -> Option<Sub> {
        match self {
            Subs::None => None,
            Subs::One(s) if s.local == local => {
                let s = *s;
                *self = Subs::None;
                Some(s)
            }
            Subs::One(_) => None,
            Subs::Many(v) => {
                let i = v.iter().position(|s| s.local == local)?;
                let s = v.swap_remove(i);
                if v.len() == 1 {
                    *self = Subs::One(v[0]);
                }
                Some(s)
            }
        }
    }

    /// Takes every subscription out.
    pub fn take_all(&mut self) -> Vec<Sub> {
        match std::mem::take(self) {
            Subs::None => Vec::new(),
            Subs::One(s) => vec![s],
            Subs::Many(v) => *v,
        }
    }
}

/// What a connection needs only some of the time.
#[derive(Debug, Default)]
pub struct Ext {
    /// Received bytes not yet parsed (an incomplete head, or pipelined requests).
    pub rbuf: Vec<u8>,
    /// JSONP / iframe callback.
    pub callback: Option<Box<str>>,
    /// The verified token of a subscriber (with `auth = "token"`).
    pub grant: Option<Box<Grant>>,
    /// The seq a held long-poll asked for (for the `noop` on timeout).
    pub poll_seq: u64,
    /// A long-poll's `next_seq` answer being put together from Redis reads (cluster):
    /// the channels, and the item of each once known.
    pub poll_names: Vec<std::sync::Arc<str>>,
    /// See `poll_names`.
    pub poll_items: Vec<Option<Bytes>>,
    /// The request's `Origin`, when an `allowed_origins` pattern names it (CORS answers
    /// name it, with credentials).
    pub origin: Option<Box<str>>,
    /// When the WebSocket message (or frame) being received began.
    pub partial_since: Option<std::time::Instant>,
    /// After the token expired: when the connection closes without a `refresh`.
    pub token_deadline: Option<std::time::Instant>,
    /// The earliest check (message timeout, token) waiting in the timer wheel: one
    /// pending check per connection, however often its deadlines move.
    pub check_at: Option<std::time::Instant>,
    /// WebSocket `pub` ops waiting for their outcome (disk store, cluster): channel and
    /// the op's `id`, answered in order per channel.
    pub pub_ids: std::collections::VecDeque<(std::sync::Arc<str>, Option<Box<str>>)>,
}

impl Ext {
    /// True when nothing in it is needed any more.
    pub fn is_empty(&self) -> bool {
        self.rbuf.is_empty()
            && self.callback.is_none()
            && self.grant.is_none()
            && self.poll_seq == 0
            && self.poll_items.is_empty()
            && self.origin.is_none()
            && self.partial_since.is_none()
            && self.token_deadline.is_none()
            && self.pub_ids.is_empty()
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket (a handle the reactor backend interprets; closed through it).
    pub sock: Sock,
    /// Generation: the slot's reuse count, carried in reactor tokens and timer keys.
    pub generation: u32,
    /// The connection's one timer (its meaning follows from the state: see the module
    /// doc).
    pub timer: TimerId,
    state: State,
    /// [`flag`] bits.
    pub flags: u8,
    /// The WebSocket session (close handshake, pong awaited).
    pub session: Session,
    /// The listener it came from.
    pub listener: ListenerId,
    /// WebSocket frame decoder (empty between frames).
    pub ws: Decoder,
    /// Subscriptions.
    pub subs: Subs,
    /// Rarely needed parts.
    pub ext: Option<Box<Ext>>,
}

impl Conn {
    /// A fresh connection waiting for its request head.
    pub fn new(sock: Sock, generation: u32, listener: ListenerId) -> Conn {
        Conn {
            sock,
            generation,
            timer: TimerId::NONE,
            state: State::Http,
            flags: 0,
            session: Session::new(),
            listener,
            ws: Decoder::new(),
            subs: Subs::None,
            ext: None,
        }
    }

    /// The state.
    #[inline]
    pub fn state(&self) -> State {
        self.state
    }

    fn go(&mut self, to: State) -> Moved {
        let from = self.state.transport();
        self.state = to;
        Moved {
            from,
            to: to.transport(),
        }
    }

    fn refuse(&self, event: &'static str) -> Result<Moved, Illegal> {
        Err(Illegal {
            from: self.state,
            event,
        })
    }

    /// A hot handover's successor takes a connection over in the state the old process
    /// had it in (the only way into a state without its transition: the state machine
    /// was followed in the old process).
    pub fn restore(&mut self, to: State) -> Moved {
        self.go(to)
    }

    /// The 101 went out: a WebSocket (an echo session when `echo`).
    pub fn upgrade(&mut self, echo: bool) -> Result<Moved, Illegal> {
        match self.state {
            State::Http => Ok(self.go(if echo { State::Echo } else { State::Ws })),
            _ => self.refuse("upgrade"),
        }
    }

    /// A polling session's record (it has no socket: `sock` is [`Sock`]'s `NONE`).
    pub fn session(sock: Sock, generation: u32, listener: ListenerId) -> Conn {
        let mut c = Conn::new(sock, generation, listener);
        c.state = State::SioPoll;
        c
    }

    /// The 101 of a Socket.IO WebSocket went out: a new session (`probe` false), or a
    /// probe of a polling session's upgrade.
    pub fn upgrade_sio(&mut self, probe: bool) -> Result<Moved, Illegal> {
        match self.state {
            State::Http => Ok(self.go(if probe { State::SioProbe } else { State::SioWs })),
            _ => self.refuse("upgrade_sio"),
        }
    }

    /// The upgrade finished (`5`): the probe takes the polling session over.
    pub fn take_session(&mut self) -> Result<Moved, Illegal> {
        match self.state {
            State::SioProbe => Ok(self.go(State::SioWs)),
            _ => self.refuse("take_session"),
        }
    }

    /// A polling request waits for its session's answer.
    pub fn hold_sio(&mut self) -> Result<Moved, Illegal> {
        match self.state {
            State::Http => Ok(self.go(State::SioHeld)),
            _ => self.refuse("hold_sio"),
        }
    }

    /// A streaming response began (`to` is `Sse`, `Stream` or `Iframe`).
    pub fn stream(&mut self, to: State) -> Result<Moved, Illegal> {
        match self.state {
            State::Http if to.is_stream() => Ok(self.go(to)),
            _ => self.refuse("stream"),
        }
    }

    /// A long-poll found nothing yet and waits.
    pub fn hold(&mut self) -> Result<Moved, Illegal> {
        match self.state {
            State::Http => Ok(self.go(State::Poll)),
            _ => self.refuse("hold"),
        }
    }

    /// A whole response went out: back to waiting for a request head.
    pub fn answered(&mut self) -> Result<Moved, Illegal> {
        match self.state {
            State::Http | State::Poll | State::SioHeld => Ok(self.go(State::Http)),
            _ => self.refuse("answered"),
        }
    }

    /// The write side was shut: only the peer's EOF is waited for.
    pub fn shut(&mut self) -> Result<Moved, Illegal> {
        match self.state {
            State::Closing => self.refuse("shut"),
            _ => Ok(self.go(State::Closing)),
        }
    }

    /// True when flag bit(s) are set.
    #[inline]
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Sets flag bit(s).
    #[inline]
    pub fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    /// Clears flag bit(s).
    #[inline]
    pub fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    /// Doomed: closed, waiting to be removed.
    #[inline]
    pub fn doomed(&self) -> bool {
        self.has(flag::DOOMED)
    }

    /// Nothing more may be written: doomed, shut, or closing once its output is out.
    #[inline]
    pub fn write_closed(&self) -> bool {
        self.has(flag::DOOMED | flag::CLOSE_AFTER_FLUSH) || self.state == State::Closing
    }

    /// The extension, created on first use.
    pub fn ext(&mut self) -> &mut Ext {
        self.ext.get_or_insert_with(Box::default)
    }

    /// Frees the extension when it holds nothing.
    pub fn shrink(&mut self) {
        if self.ext.as_ref().is_some_and(|e| e.is_empty()) {
            self.ext = None;
        } else if let Some(e) = self.ext.as_mut() {
            if e.rbuf.is_empty() && e.rbuf.capacity() > 0 {
                e.rbuf = Vec::new();
            }
        }
    }

    /// True when received input waits to be parsed.
    pub fn has_saved_input(&self) -> bool {
        self.ext.as_ref().is_some_and(|e| !e.rbuf.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 56, "Conn is {size} bytes");
        // 4 (socket) + 4 (generation) + 4 (timer) + 4 (state, flags, session, listener)
        // + 8 (decoder) + 24 (subscriptions) + 8 (extension).
    }

    #[test]
    fn transitions_follow_the_diagram_and_refuse_the_rest() {
        let mut c = Conn::new(3, 1, 0);
        assert_eq!(c.state(), State::Http);
        assert!(c.stream(State::Ws).is_err(), "not a streaming state");
        c.hold().unwrap();
        assert_eq!(
            c.upgrade(false),
            Err(Illegal {
                from: State::Poll,
                event: "upgrade"
            })
        );
        let m = c.answered().unwrap();
        assert_eq!((m.from, m.to), (Transport::Poll, Transport::Http));
        c.upgrade(false).unwrap();
        assert!(c.answered().is_err(), "a WebSocket has no response");
        c.shut().unwrap();
        assert_eq!(c.state(), State::Closing);
        assert!(c.shut().is_err());
        assert!(c.write_closed());
        let mut s = Conn::new(3, 2, 0);
        s.stream(State::Iframe).unwrap();
        assert!(s.hold().is_err());
        let mut p = Conn::new(4, 1, 0);
        p.upgrade_sio(true).unwrap();
        assert!(p.hold_sio().is_err());
        let m = p.take_session().unwrap();
        assert_eq!((m.from, m.to), (Transport::Ws, Transport::Socketio));
        assert!(p.take_session().is_err());
        let mut h = Conn::new(5, 1, 0);
        h.hold_sio().unwrap();
        h.answered().unwrap();
        assert_eq!(Conn::session(0, 1, 0).state(), State::SioPoll);
    }

    #[test]
    fn subs_grow_and_shrink() {
        let mut s = Subs::None;
        for i in 0..3 {
            s.push(Sub {
                local: i,
                pos: 0,
                last_seq: 0,
            });
        }
        assert_eq!(s.len(), 3);
        assert!(s.remove(1).is_some());
        assert!(s.remove(1).is_none());
        assert!(s.remove(0).is_some());
        assert!(matches!(s, Subs::One(Sub { local: 2, .. })));
        s.find_mut(2).unwrap().last_seq = 9;
        assert_eq!(s.as_slice()[0].last_seq, 9);
        assert_eq!(s.take_all().len(), 1);
        assert!(s.is_empty());
    }
}
