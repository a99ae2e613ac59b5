//! The reactor seam: what a worker needs from the operating system, behind one trait, so
//! that the connection logic in `worker.rs` does not know which backend runs it.
//!
//! - [`epoll`]: readiness through mio (edge-triggered epoll); reads and writes are
//!   `read(2)` / `writev(2)` on the worker's thread.
//! - `uring`: io_uring (see that module for how idle sockets are armed and why).
//!
//! A connection's socket is a plain `i32` handle that only the backend interprets (a file
//! descriptor for epoll, possibly a direct-descriptor index for io_uring); the backend
//! opens, reads, writes, shuts down and closes it. Sends are handed over with
//! [`Backend::send`]: a backend may take fewer bytes than offered (epoll, when the socket
//! buffer is full: the worker queues the rest and retries on [`Event::Writable`]) or all
//! of them and finish asynchronously (io_uring: it reports [`Event::Writable`] when its own
//! queue for the connection is empty again, and [`Backend::pending`] counts what it holds).

pub mod epoll;
pub mod uring;

use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::inbox::Wake;

/// Identifies a connection in events: slot in the worker's slab and generation.
pub type Token = u64;

/// A socket handle, interpreted by the backend.
pub type Sock = i32;

/// Something that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The listener may have connections to accept: call [`Backend::accept`].
    Acceptable,
    /// The connection may have input (or EOF, or an error): call [`Backend::read`] until
    /// it reports `WouldBlock`.
    Readable(Token),
    /// Input arrived in a backend buffer: take it with [`Backend::take_input`].
    Input(Token, InputRef),
    /// The connection's peer closed (no more input).
    Eof(Token),
    /// The connection failed (reset, send error).
    Failed(Token),
    /// The connection can take more output (epoll), or the backend's queue for it is empty
    /// again (io_uring).
    Writable(Token),
    /// The inbox was signalled.
    Wake,
}

/// Where input delivered by a completion-based backend lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRef {
    /// Backend buffer id.
    pub buf: u16,
    /// Bytes of input.
    pub len: u32,
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

    /// An owned, shareable copy (a reference count for `Shared`).
    pub fn to_bytes(&self, skip: usize) -> Bytes {
        match self {
            Part::Copy(c) => Bytes::copy_from_slice(&c[skip..]),
            Part::Shared(s) => s.slice(skip..),
        }
    }
}

/// What a worker needs from its reactor.
pub trait Backend {
    /// The backend's name, for logs and `/info`.
    fn name(&self) -> &'static str;

    /// A handle that wakes [`Backend::wait`] from another thread.
    fn waker(&self) -> Arc<dyn Wake>;

    /// Starts accepting on a bound, listening, non-blocking socket.
    fn listen(&mut self, listener: std::net::TcpListener) -> io::Result<()>;

    /// Stops accepting and closes the listener.
    fn stop_listening(&mut self);

    /// The most connections this backend holds in a table of its own (io_uring direct
    /// descriptors), with room kept for the refusals it must still accept; `None` when
    /// its sockets are process descriptors (bounded by the descriptor budget alone).
    fn slots(&self) -> Option<usize> {
        None
    }

    /// Accepts nothing more until [`Backend::accept`] is called again (a backend that
    /// accepts ahead of the worker stops doing so: the connection cap was reached).
    fn pause_accept(&mut self) {}

    /// Submits what was queued and waits for events (at most `timeout`), appending them
    /// to `events`.
    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()>;

    /// Accepts up to `max` connections into `out`. `Ok(true)` when more may be waiting.
    fn accept(&mut self, out: &mut Vec<Sock>, max: usize) -> io::Result<bool>;

    /// Starts watching a new connection for input.
    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()>;

    /// Reads into `buf` (readiness backends; a completion backend answers `WouldBlock`).
    fn read(&mut self, sock: Sock, buf: &mut [u8]) -> io::Result<usize>;

    /// Copies input announced by [`Event::Input`] into `buf` and recycles the backend
    /// buffer; returns the length.
    fn take_input(&mut self, input: InputRef, buf: &mut [u8]) -> usize;

    /// Hands output over. Returns how many bytes the backend took (the caller queues the
    /// rest and offers it again on [`Event::Writable`]).
    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<usize>;

    /// Bytes the backend holds for a connection and has not written yet.
    fn pending(&self, token: Token) -> usize;

    /// Of those, the bytes that are backed up because the peer is not reading (what counts
    /// toward `slow_consumer_bytes`). A backend that completes sends asynchronously holds
    /// bytes for a moment even for a fast reader; only a send that stayed blocked through a
    /// whole turn counts here.
    fn backlog(&self, token: Token) -> usize;

    /// Drops what the backend holds for a connection beyond what is already being
    /// written (a slow consumer's backlog).
    fn truncate(&mut self, token: Token);

    /// Shuts the write side of a connection (after its output is written).
    fn shutdown_write(&mut self, sock: Sock, token: Token) -> io::Result<()>;

    /// Closes a connection; late events for its token are to be ignored by the caller.
    fn close(&mut self, sock: Sock, token: Token);

    /// Writes a short answer to a socket that will not be registered, then closes it.
    fn reject(&mut self, sock: Sock, answer: &'static [u8]);

    /// Sets TCP_NODELAY where the backend can (best effort).
    fn set_nodelay(&mut self, sock: Sock);

    /// The peer's address, when the backend can tell.
    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr>;

    /// Submits queued operations without waiting (the end of a fan-out batch).
    fn flush(&mut self);

    /// Releases everything: cancels in-flight operations and waits (bounded) for them.
    fn shutdown(&mut self);
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
