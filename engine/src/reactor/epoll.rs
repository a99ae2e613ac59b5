//! The epoll backend (through mio, edge-triggered).
//!
//! Each connection is registered once for readable and writable readiness; with edge
//! triggering the backend reads until `WouldBlock` (or the read budget) and writes until
//! the socket stops taking bytes, and is told again when that changes. What the socket
//! did not take waits in a [`WriteQueue`] of this backend, written on the next writable
//! edge. An idle socket costs the kernel one epoll item (~150-200 B, see the README) and
//! this backend nothing.

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token as MioToken};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;

use super::queue::WriteQueue;
use super::{Backend, Event, Exported, ListenerId, Part, ReadBudget, Sock, Token, TokenState};
use crate::inbox::Wake;
use crate::limits::{EPOLL_EVENTS, EPOLL_MAX_IOV};

/// mio tokens of listeners: `LISTENER_BASE - id` (connection tokens are far below).
const LISTENER_BASE: usize = usize::MAX - 1;
const WAKER: MioToken = MioToken(usize::MAX);

/// Retries a syscall on EINTR; `-1` becomes the OS error.
macro_rules! syscall {
    ($e:expr) => {{
        loop {
            let r = $e;
            if r != -1 {
                break Ok(r);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                break Err(err);
            }
        }
    }};
}

/// The epoll backend's waker (an eventfd registered with the poll).
pub struct EpollWaker(mio::Waker);

impl Wake for EpollWaker {
    fn wake(&self) {
        // A failed wake (eventfd full) means a wake-up is already pending.
        let _ = self.0.wake();
    }
}

/// The epoll backend.
pub struct Epoll {
    poll: Poll,
    events: Events,
    listeners: Vec<(ListenerId, TcpListener)>,
    waker: Arc<EpollWaker>,
    /// Output the kernel did not take, by connection.
    queues: HashMap<Token, (Sock, WriteQueue), TokenState>,
    /// Input a hot handover brought (read by the old process, not by its worker), handed
    /// out before the socket's: bytes and how many were taken.
    early: HashMap<Token, (Vec<u8>, usize), TokenState>,
    budget: ReadBudget,
}

impl Epoll {
    /// A new epoll instance with its waker.
    pub fn new() -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(EpollWaker(mio::Waker::new(poll.registry(), WAKER)?));
        Ok(Epoll {
            poll,
            events: Events::with_capacity(EPOLL_EVENTS),
            listeners: Vec::new(),
            waker,
            queues: HashMap::default(),
            early: HashMap::default(),
            budget: ReadBudget::default(),
        })
    }

    fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Writes what is queued for `token`; true when the queue is empty now.
    fn write_queue(&mut self, token: Token) -> io::Result<bool> {
        let Some((sock, q)) = self.queues.get_mut(&token) else {
            return Ok(true);
        };
        while !q.is_empty() {
            let mut iov = [IoSlice::new(&[]); EPOLL_MAX_IOV];
            let mut n = 0;
            for (i, b) in q.bufs.iter().take(EPOLL_MAX_IOV).enumerate() {
                let start = if i == 0 { q.offset } else { 0 };
                iov[i] = IoSlice::new(&b[start..]);
                n += 1;
            }
            match writev(*sock, &iov[..n]) {
                Ok(0) => return Ok(false),
                Ok(w) => q.advance(w),
                Err(e) => return Err(e),
            }
        }
        self.queues.remove(&token);
        Ok(true)
    }
}

/// `writev(2)`, answering 0 for `WouldBlock`.
fn writev(sock: Sock, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the entries point at live
    // slices borrowed for the duration of the call; `sock` is an open socket owned by
    // this worker.
    let r = syscall!(unsafe { libc::writev(sock, iov.as_ptr().cast(), iov.len() as libc::c_int) });
    match r {
        Ok(w) => Ok(w as usize),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// `send(2)` of one buffer (the common case of a fan-out: it goes straight to the socket
/// layer, skipping the iovec import and file-position locking of writev), 0 for
/// `WouldBlock`.
fn send_one(sock: Sock, b: &[u8]) -> io::Result<usize> {
    // SAFETY: `b` is a live slice for the duration of the call; `sock` is an open socket
    // owned by this worker.
    let r = syscall!(unsafe { libc::send(sock, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL) });
    match r {
        Ok(w) => Ok(w as usize),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

impl Backend for Epoll {
    type Waker = EpollWaker;

    fn name(&self) -> &'static str {
        "epoll"
    }

    fn waker(&self) -> Arc<EpollWaker> {
        self.waker.clone()
    }

    fn listen(&mut self, id: ListenerId, listener: std::net::TcpListener) -> io::Result<()> {
        let mut l = TcpListener::from_std(listener);
        let token = MioToken(LISTENER_BASE - usize::from(id));
        self.registry()
            .register(&mut l, token, Interest::READABLE)?;
        self.listeners.push((id, l));
        Ok(())
    }

    fn stop_listening(&mut self) {
        for (_, mut l) in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    fn slots(&self) -> Option<usize> {
        None
    }

    fn pause_accept(&mut self, _id: ListenerId) {
        // Nothing is accepted ahead: the listener just stays unread until the next call.
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        let start = events.len();
        self.budget.new_turn(events);
        let timeout = if events.len() > start {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut writable = Vec::new();
        for ev in self.events.iter() {
            match ev.token() {
                WAKER => events.push(Event::Wake),
                MioToken(t) if t > LISTENER_BASE - 256 => {
                    events.push(Event::Acceptable((LISTENER_BASE - t) as ListenerId));
                }
                MioToken(t) => {
                    let t = Token::from_raw(t as u64);
                    if ev.is_writable() && self.queues.contains_key(&t) {
                        writable.push(t);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        events.push(Event::Readable(t));
                    }
                }
            }
        }
        for t in writable {
            match self.write_queue(t) {
                Ok(true) => events.push(Event::Writable(t)),
                Ok(false) => {}
                Err(_) => {
                    self.queues.remove(&t);
                    events.push(Event::Failed(t));
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, id: ListenerId, out: &mut Vec<Sock>, max: usize) -> io::Result<bool> {
        let Some((_, listener)) = self.listeners.iter().find(|(i, _)| *i == id) else {
            return Ok(false);
        };
        for _ in 0..max {
            match listener.accept() {
                // mio accepts with accept4(SOCK_NONBLOCK | SOCK_CLOEXEC); TCP_NODELAY is
                // inherited from the listener.
                Ok((s, _)) => out.push(s.into_raw_fd()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        self.registry().register(
            &mut SourceFd(&sock),
            MioToken(token.raw() as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn recv(&mut self, sock: Sock, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        if !self.budget.allow(token) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Empty but for the first reads after a hot handover: one branch otherwise.
        if let Some((early, taken)) = (!self.early.is_empty())
            .then(|| self.early.get_mut(&token))
            .flatten()
        {
            let n = (early.len() - *taken).min(buf.len());
            buf[..n].copy_from_slice(&early[*taken..*taken + n]);
            *taken += n;
            if *taken == early.len() {
                self.early.remove(&token);
            }
            self.budget.used(token, n);
            return Ok(n);
        }
        // SAFETY: `sock` is an open socket owned by this worker; `buf` is a valid,
        // writable buffer of `buf.len()` bytes for the duration of the call.
        let n = syscall!(unsafe { libc::read(sock, buf.as_mut_ptr().cast(), buf.len()) })?;
        self.budget.used(token, n as usize);
        Ok(n as usize)
    }

    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<()> {
        if let Some((_, q)) = self.queues.get_mut(&token) {
            for p in parts {
                q.push(p.to_bytes(0));
            }
            return Ok(());
        }
        let written = match parts {
            [one] => send_one(sock, one.bytes())?,
            _ => {
                let mut iov = [IoSlice::new(&[]); EPOLL_MAX_IOV];
                let n = parts.len().min(EPOLL_MAX_IOV);
                for (slot, p) in iov.iter_mut().zip(parts) {
                    *slot = IoSlice::new(p.bytes());
                }
                writev(sock, &iov[..n])?
            }
        };
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        if written == total {
            return Ok(());
        }
        let mut q = WriteQueue::default();
        let mut skip = written;
        for p in parts {
            let len = p.bytes().len();
            if skip >= len {
                skip -= len;
                continue;
            }
            if skip > 0 {
                // Kept whole so that a slow-consumer cut keeps the stream well-formed.
                q.push_partial(p.to_bytes(0), skip);
            } else {
                q.push(p.to_bytes(0));
            }
            skip = 0;
        }
        self.queues.insert(token, (sock, q));
        Ok(())
    }

    fn pending(&self, token: Token) -> usize {
        self.queues.get(&token).map_or(0, |(_, q)| q.bytes)
    }

    fn backlog(&self, token: Token) -> usize {
        // What the socket did not take is backed up by definition.
        self.pending(token)
    }

    fn truncate(&mut self, token: Token) {
        if let Some((_, q)) = self.queues.get_mut(&token) {
            q.truncate_to_partial();
        }
    }

    fn shutdown_write(&mut self, sock: Sock, _token: Token) -> io::Result<()> {
        // SAFETY: `sock` is an open socket owned by this worker.
        syscall!(unsafe { libc::shutdown(sock, libc::SHUT_WR) }).map(|_| ())
    }

    fn close(&mut self, sock: Sock, token: Token) {
        self.queues.remove(&token);
        self.early.remove(&token);
        // Closing the descriptor removes it from the epoll set (it is never duplicated).
        // SAFETY: `sock` is an open descriptor owned by this worker and not used again.
        unsafe {
            libc::close(sock);
        }
    }

    fn reject(&mut self, sock: Sock, answer: &'static [u8]) {
        let _ = send_one(sock, answer);
        // SAFETY: `sock` was just accepted, is owned by this worker and not used again.
        unsafe {
            libc::close(sock);
        }
    }

    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr> {
        // SAFETY: `sock` is an open socket owned by this worker for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(sock) };
        socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
    }

    fn shutdown(&mut self) {
        self.stop_listening();
        self.queues.clear();
    }

    fn export_conn(&self, _sock: Sock, token: Token) -> io::Result<Exported> {
        let Some((_, q)) = self.queues.get(&token) else {
            return Ok(Exported::default());
        };
        let mut out = Vec::with_capacity(q.bytes);
        for (i, b) in q.bufs.iter().enumerate() {
            let start = if i == 0 { q.offset } else { 0 };
            out.extend_from_slice(&b[start..]);
        }
        Ok(Exported {
            pending: out,
            ..Exported::default()
        })
    }

    fn import_conn(&mut self, sock: Sock, token: Token, state: Exported) -> io::Result<Sock> {
        let pending = state.pending;
        if !state.input.is_empty() {
            self.early.insert(token, (state.input, 0));
        }
        self.add(sock, token)?;
        if !pending.is_empty() {
            // Written on the writable edge the registration reports.
            let mut q = WriteQueue::default();
            q.push(bytes::Bytes::from(pending));
            self.queues.insert(token, (sock, q));
        }
        Ok(sock)
    }

    fn listener_fds(&self) -> Vec<(ListenerId, i32)> {
        use std::os::fd::AsRawFd;
        self.listeners
            .iter()
            .map(|(id, l)| (*id, l.as_raw_fd()))
            .collect()
    }
}
