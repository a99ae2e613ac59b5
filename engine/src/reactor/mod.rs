//! The reactor seam: what a worker needs from the operating system, behind one trait, so
//! that the connection logic in `worker/` and `transport/` does not know which backend
//! runs it.
//!
//! - [`epoll`]: readiness through mio (edge-triggered epoll); reads and writes are
//!   `read(2)` / `send(2)` / `writev(2)` on the worker's thread.
//! - [`uring`]: io_uring (see that module for how idle sockets are armed and why).
//!
//! Both backends follow one model:
//!
//! - **Listeners** have ids ([`ListenerId`]): a worker listens on several sockets (one per
//!   `[[listener]]` entry), [`Event::Acceptable`] says which has connections waiting.
//! - **Input**: [`Event::Readable`] says a connection has input; the worker then calls
//!   [`Backend::recv`] until it answers `WouldBlock`. The backend hands over the bytes
//!   (read from the socket by epoll, from a completed receive buffer by io_uring) and owns
//!   the read budget: after [`crate::limits::READ_BUDGET`] bytes of one connection in one
//!   turn it answers `WouldBlock` and reports the connection readable again on the next
//!   turn, so one busy peer cannot starve the others. `Ok(0)` is the peer's EOF.
//! - **Output**: [`Backend::send`] takes every byte offered. What the kernel does not
//!   take at once stays with the backend, in order (epoll: a queue per connection, written
//!   on the writable edge; io_uring: one send in flight per connection and a queue behind
//!   it). [`Event::Writable`] says that queue is empty again; [`Backend::pending`] counts
//!   it and [`Backend::backlog`] counts the part that is backed up because the peer does
//!   not read (what `slow_consumer_bytes` bounds). [`Event::Failed`] reports a send that
//!   failed.
//! - **Waking**: each backend has its own waker type next to it ([`Backend::Waker`]), that
//!   another thread uses to end [`Backend::wait`] early (the worker's inbox).
//!
//! A connection's socket is a plain `i32` handle that only the backend interprets (a file
//! descriptor for epoll, possibly a direct-descriptor index for io_uring); the backend
//! opens, reads, writes, shuts down and closes it. Connections are named by a [`Token`].

pub mod epoll;
pub mod queue;
pub mod token;
pub mod uring;

use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::inbox::Wake;

pub use token::Token;

/// A socket handle, interpreted by the backend.
pub type Sock = i32;

/// The handle of a record without a socket (a Socket.IO polling session): never given
/// to the backend.
pub const NO_SOCK: Sock = -1;

/// Which listener (index of the `[[listener]]` entry).
pub type ListenerId = u8;

/// Something that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A listener may have connections to accept: call [`Backend::accept`] with its id.
    Acceptable(ListenerId),
    /// The connection has input (or EOF): call [`Backend::recv`] until `WouldBlock`.
    Readable(Token),
    /// A send failed (reset, broken pipe): the connection is gone.
    Failed(Token),
    /// What the backend held for the connection is written.
    Writable(Token),
    /// The worker's waker was used.
    Wake,
}

/// A piece of output: copied if it has to be kept, or shared by reference.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// Bytes owned by the caller: copied if they cannot be written at once.
    Copy(&'a [u8]),
    /// A shared pre-encoded buffer: kept by reference.
    Shared(&'a Bytes),
}

impl Part<'_> {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Part::Copy(b) => b,
            Part::Shared(b) => b,
        }
    }

    /// An owned, shareable copy from `skip` on (a reference count for `Shared`).
    pub fn to_bytes(&self, skip: usize) -> Bytes {
        match self {
            Part::Copy(c) => Bytes::copy_from_slice(&c[skip..]),
            Part::Shared(s) => s.slice(skip..),
        }
    }
}

impl AsRef<[u8]> for Part<'_> {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// What a worker needs from its reactor.
pub trait Backend {
    /// What wakes [`Backend::wait`] from another thread.
    type Waker: Wake + 'static;

    /// The backend's name, for logs and `/info`.
    fn name(&self) -> &'static str;

    /// The waker of this backend.
    fn waker(&self) -> Arc<Self::Waker>;

    /// Starts accepting on a bound, listening, non-blocking socket.
    fn listen(&mut self, id: ListenerId, listener: std::net::TcpListener) -> io::Result<()>;

    /// Stops accepting on every listener and closes them.
    fn stop_listening(&mut self);

    /// The most connections this backend holds in a table of its own (io_uring direct
    /// descriptors), with room kept for the refusals it must still accept; `None` when
    /// its sockets are process descriptors (bounded by the descriptor budget alone).
    fn slots(&self) -> Option<usize>;

    /// Accepts nothing more on `id` until [`Backend::accept`] is called for it again (a
    /// backend that accepts ahead of the worker stops doing so: the cap was reached).
    fn pause_accept(&mut self, id: ListenerId);

    /// Submits what was queued and waits for events (at most `timeout`), appending them
    /// to `events`.
    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()>;

    /// Accepts up to `max` connections of listener `id` into `out`. `Ok(true)` when more
    /// may be waiting.
    fn accept(&mut self, id: ListenerId, out: &mut Vec<Sock>, max: usize) -> io::Result<bool>;

    /// Starts watching a new connection for input.
    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()>;

    /// The connection's next input, at most `buf.len()` bytes (see the module doc):
    /// `Ok(0)` at EOF, `WouldBlock` when there is nothing more this turn.
    fn recv(&mut self, sock: Sock, token: Token, buf: &mut [u8]) -> io::Result<usize>;

    /// Hands output over; the backend writes all of it, in order, or reports
    /// [`Event::Failed`]. An `Err` is a connection that cannot be written to at all.
    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<()>;

    /// Bytes the backend holds for a connection and has not written yet.
    fn pending(&self, token: Token) -> usize;

    /// Of those, the bytes that are backed up because the peer is not reading (what counts
    /// toward `slow_consumer_bytes`). A backend that completes sends asynchronously holds
    /// bytes for a moment even for a fast reader; only a send that stayed blocked through a
    /// whole turn counts here.
    fn backlog(&self, token: Token) -> usize;

    /// Drops what the backend holds for a connection, except a buffer already partly
    /// written (kept whole so the stream stays well-formed): a slow consumer's backlog.
    fn truncate(&mut self, token: Token);

    /// Shuts the write side of a connection (after its output is written).
    fn shutdown_write(&mut self, sock: Sock, token: Token) -> io::Result<()>;

    /// Closes a connection; late events for its token are to be ignored by the caller.
    fn close(&mut self, sock: Sock, token: Token);

    /// Writes a short answer to a socket that will not be registered, then closes it.
    fn reject(&mut self, sock: Sock, answer: &'static [u8]);

    /// The peer's address, when the backend can tell.
    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr>;

    /// Releases everything: cancels in-flight operations and waits (bounded) for them.
    fn shutdown(&mut self);

    /// Gives back the spare capacity of the backend's own tables (called with the
    /// worker's own, when it returns memory after a burst; see `crate::memory`).
    fn shrink(&mut self) {}

    /// Hot handover, in the old process before the first [`Backend::export_conn`]: stops
    /// everything the backend has in flight (io_uring: cancels every operation in the ring
    /// and waits, bounded, for their completions; what they did is accounted), and starts
    /// nothing more until [`Backend::thaw`], so that the exports are exact. An error leaves
    /// the backend as `thaw` would.
    fn quiesce(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The handover was called off: starts again what [`Backend::quiesce`] stopped (what
    /// completed meanwhile is reported at the next [`Backend::wait`]).
    fn thaw(&mut self) {}

    /// Hot handover: what the backend holds for a connection (see [`Exported`]), leaving
    /// everything as it is (the handover may still be called off).
    fn export_conn(&self, sock: Sock, token: Token) -> io::Result<Exported>;

    /// Hot handover: process descriptors for `socks`, to pass to the successor, for a
    /// backend whose handles are not process descriptors (io_uring's direct descriptors:
    /// installed for the moment, closed once sent). `None`: each handle is its descriptor.
    fn handover_fds(&mut self, _socks: &[Sock]) -> io::Result<Option<Vec<std::os::fd::OwnedFd>>> {
        Ok(None)
    }

    /// Hot handover, in the successor: watches a connection taken over (as
    /// [`Backend::add`]) with the input it had received and the output it still had to
    /// write. Takes the descriptor `fd` over and returns the handle the backend knows the
    /// connection by from now on (an io_uring direct descriptor, or `fd` itself); on an
    /// error `fd` is still the caller's.
    fn import_conn(&mut self, fd: Sock, token: Token, state: Exported) -> io::Result<Sock>;

    /// Hot handover: the listening sockets (descriptors, by listener id).
    fn listener_fds(&self) -> Vec<(ListenerId, i32)>;
}

/// Binds a listener with SO_REUSEPORT (several workers and several processes share the
/// port; the kernel spreads the accepts).
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt
    // here instead of one per connection.
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(crate::limits::LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// What a backend (and the layers over it) hold for one connection, carried to the next
/// process by a hot handover.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Output not written yet, in order, from the first unwritten byte.
    pub pending: Vec<u8>,
    /// The TLS layer's state of an established TLS connection (empty: plain).
    pub tls: Vec<u8>,
    /// Input received from the socket and not taken by [`Backend::recv`] yet (bytes as
    /// they came from the socket, under any layer); handed out first by the successor.
    pub input: Vec<u8>,
}

/// A hasher for keys that are already well spread (tokens: slot and generation), far
/// cheaper than SipHash on the per-send paths.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenHasher(u64);

impl std::hash::Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend on every input bit.
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `HashMap` / `HashSet` state for token keys.
pub type TokenState = std::hash::BuildHasherDefault<TokenHasher>;

/// Kernel errors that mean "out of descriptors or memory": accepting should pause.
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The read budget both backends keep: bytes read from the connection being read in this
/// turn; past [`crate::limits::READ_BUDGET`] its next read waits for the next turn.
#[derive(Debug, Default)]
pub struct ReadBudget {
    current: Option<(Token, usize)>,
    /// Connections over budget this turn: reported readable again at the next wait.
    pub again: Vec<Token>,
}

impl ReadBudget {
    /// True when `token` may read more now; otherwise it is queued for the next turn.
    pub fn allow(&mut self, token: Token) -> bool {
        match self.current {
            Some((t, used)) if t == token && used >= crate::limits::READ_BUDGET => {
                self.current = None;
                self.again.push(token);
                false
            }
            Some((t, _)) if t == token => true,
            _ => {
                self.current = Some((token, 0));
                true
            }
        }
    }

    /// Counts `n` bytes read by `token`.
    pub fn used(&mut self, token: Token, n: usize) {
        if let Some((t, used)) = self.current.as_mut() {
            if *t == token {
                *used += n;
            }
        }
    }

    /// A new turn: every connection starts with a full budget; the ones held back are
    /// reported readable.
    pub fn new_turn(&mut self, events: &mut Vec<Event>) {
        self.current = None;
        events.extend(self.again.drain(..).map(Event::Readable));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_budget_holds_a_busy_connection_to_the_next_turn() {
        let mut b = ReadBudget::default();
        let (t, u) = (Token::new(1, 1), Token::new(2, 1));
        assert!(b.allow(t));
        b.used(t, crate::limits::READ_BUDGET);
        assert!(b.allow(u), "another connection has its own budget");
        assert!(b.allow(t), "a new current connection starts again");
        b.used(t, crate::limits::READ_BUDGET);
        assert!(!b.allow(t));
        let mut events = Vec::new();
        b.new_turn(&mut events);
        assert_eq!(events, vec![Event::Readable(t)]);
        assert!(b.allow(t));
    }
}
