//! The per-connection record and its state machine.
//!
//! ```text
//!            accept
//!              |
//!              v
//!   +-----> Http --(GET /ws, /echo: 101)--> Ws --------------------+
//!   |          |--(GET /sse)--------------> Sse -------------------+
//!   |          |--(GET /stream)-----------> Stream ----------------+
//!   |          |--(GET /iframe)-----------> Iframe ----------------+--> Closing --> (closed)
//!   |          |--(GET /poll, nothing yet)-> Poll --(answered)--+  |    (write side shut,
//!   |          |--(error, Connection: close)--------------------|--+     reading to EOF)
//!   +----------+--(answered, keep-alive)------------------------+
//! ```
//!
//! The record is kept small because a server holds hundreds of thousands of them: an idle
//! WebSocket subscriber is a socket, a generation, a timer id, two bytes of state, an empty
//! frame decoder, one inline subscription and an empty pointer to the rarely needed
//! [`Ext`] (unparsed input, unsent output, callbacks, token grant), which exists only
//! while it holds something. See `size_of::<Conn>()` in the tests.

use bytes::Bytes;
use std::collections::VecDeque;

use protocol::ws::Decoder;

use crate::auth::Grant;
use crate::metrics::Transport;
use crate::reactor::Sock;
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
}

impl State {
    /// The transport this state is counted under.
    pub fn transport(self) -> Transport {
        match self {
            State::Http | State::Closing => Transport::Http,
            State::Ws | State::Echo => Transport::Ws,
            State::Sse => Transport::Sse,
            State::Stream => Transport::Stream,
            State::Iframe => Transport::Iframe,
            State::Poll => Transport::Poll,
        }
    }

    /// True for the WebSocket states.
    pub fn is_ws(self) -> bool {
        matches!(self, State::Ws | State::Echo)
    }

    /// True for the streaming HTTP responses (SSE, NDJSON, iframe).
    pub fn is_stream(self) -> bool {
        matches!(self, State::Sse | State::Stream | State::Iframe)
    }
}

/// Bit flags of a connection.
pub mod flag {
    /// A ping was sent and its pong has not come.
    pub const AWAIT_PONG: u8 = 1;
    /// A WebSocket close frame was sent.
    pub const CLOSE_SENT: u8 = 2;
    /// Close (shut the write side) once the queue is written.
    pub const CLOSE_AFTER_FLUSH: u8 = 4;
    /// The connection has served a request (a timeout now is an idle keep-alive one).
    pub const SERVED: u8 = 8;
    /// The current request asked to keep the connection open.
    pub const KEEP_ALIVE: u8 = 16;
    /// The current long-poll answers as JSONP.
    pub const JSONP: u8 = 32;
    /// The writable edge arrived while nothing was queued.
    pub const WRITABLE: u8 = 64;
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

/// Unsent output: shared buffers plus the offset already written of the first.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Buffers in order.
    pub bufs: VecDeque<Bytes>,
    /// Bytes of `bufs[0]` already written.
    pub offset: usize,
    /// Bytes left to write in all buffers.
    pub bytes: usize,
}

impl WriteQueue {
    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Appends a buffer.
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.bytes += b.len();
        self.bufs.push_back(b);
    }

    /// Appends a buffer of which the first `written` bytes are already written (the
    /// queue must be empty). Keeping the buffer whole lets a slow-consumer cut keep the
    /// stream well-formed.
    pub fn push_partial(&mut self, b: Bytes, written: usize) {
        debug_assert!(
            self.bufs.is_empty(),
            "only the first buffer can be partly written"
        );
        debug_assert!(written < b.len());
        self.bytes += b.len() - written;
        self.offset = written;
        self.bufs.push_back(b);
    }

    /// Marks `n` bytes as written.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self.bufs.front().expect("advance within the queued bytes");
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.bufs.pop_front();
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    /// Drops every buffer after the first, keeping a partially written one whole so the
    /// stream stays well-formed.
    pub fn truncate_to_partial(&mut self) {
        if self.offset == 0 {
            self.bufs.clear();
        } else {
            self.bufs.truncate(1);
        }
        self.bytes = self.bufs.front().map_or(0, |b| b.len() - self.offset);
    }
}

/// What a connection needs only some of the time.
#[derive(Debug, Default)]
pub struct Ext {
    /// Received bytes not yet parsed (an incomplete head, or pipelined requests).
    pub rbuf: Vec<u8>,
    /// Unsent output.
    pub wq: WriteQueue,
    /// JSONP / iframe callback.
    pub callback: Option<Box<str>>,
    /// The verified token of a WebSocket subscriber (with `auth = "token"`).
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
}

impl Ext {
    /// True when nothing in it is needed any more.
    pub fn is_empty(&self) -> bool {
        self.rbuf.is_empty()
            && self.wq.is_empty()
            && self.callback.is_none()
            && self.grant.is_none()
            && self.poll_seq == 0
            && self.poll_items.is_empty()
            && self.origin.is_none()
            && self.partial_since.is_none()
            && self.token_deadline.is_none()
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket (a handle the reactor backend interprets; closed through it).
    pub sock: Sock,
    /// Generation: the slot's reuse count, carried in reactor tokens and timer keys.
    pub generation: u32,
    /// The connection's one timer (its meaning follows from the state).
    pub timer: TimerId,
    /// State.
    pub state: State,
    /// [`flag`] bits.
    pub flags: u8,
    /// WebSocket frame decoder (empty between frames).
    pub ws: Decoder,
    /// Subscriptions.
    pub subs: Subs,
    /// Rarely needed parts.
    pub ext: Option<Box<Ext>>,
}

impl Conn {
    /// A fresh connection waiting for its request head.
    pub fn new(sock: Sock, generation: u32) -> Conn {
        Conn {
            sock,
            generation,
            timer: TimerId::NONE,
            state: State::Http,
            flags: 0,
            ws: Decoder::new(),
            subs: Subs::None,
            ext: None,
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

    /// Bytes queued for writing.
    pub fn queued(&self) -> usize {
        self.ext.as_ref().map_or(0, |e| e.wq.bytes)
    }

    /// True when output is queued.
    pub fn has_queue(&self) -> bool {
        self.queued() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_is_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 56, "Conn is {size} bytes");
        // 4 (socket) + 4 (generation) + 4 (timer) + 2 (state, flags) + 8 (decoder)
        // + 24 (subscriptions) + 8 (extension), with padding.
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

    #[test]
    fn write_queue_accounting() {
        let mut q = WriteQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b""));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.bytes, 10);
        q.advance(3);
        assert_eq!((q.bytes, q.offset, q.bufs.len()), (7, 3, 2));
        q.advance(4);
        assert_eq!((q.bytes, q.offset, q.bufs.len()), (3, 2, 1));
        q.push(Bytes::from_static(b"!!"));
        q.truncate_to_partial();
        assert_eq!((q.bytes, q.bufs.len()), (3, 1));
        q.advance(3);
        assert!(q.is_empty());
        q.push(Bytes::from_static(b"x"));
        q.truncate_to_partial();
        assert!(q.is_empty());
        q.push_partial(Bytes::from_static(b"abcdef"), 2);
        q.push(Bytes::from_static(b"gh"));
        assert_eq!((q.bytes, q.offset), (6, 2));
        q.truncate_to_partial();
        assert_eq!(
            (q.bytes, q.bufs.len()),
            (4, 1),
            "the partly written buffer stays whole"
        );
    }
}
