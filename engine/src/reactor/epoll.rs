//! The epoll backend (through mio, edge-triggered).
//!
//! Each connection is registered once for readable and writable readiness; with edge
//! triggering the worker reads until `WouldBlock` and writes until the socket stops taking
//! bytes, and is told again when that changes. An idle socket costs the kernel one epoll
//! item (~150-200 B, see FACTS.md) and this backend nothing.

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token as MioToken, Waker};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Event, InputRef, Part, Sock, Token};
use crate::inbox::Wake;
use crate::limits::{EPOLL_EVENTS, EPOLL_MAX_IOV};

const LISTENER: MioToken = MioToken(usize::MAX);
const WAKER: MioToken = MioToken(usize::MAX - 1);

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

/// The epoll backend.
pub struct Epoll {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    waker: Arc<Waker>,
}

impl Epoll {
    /// A new epoll instance with its waker.
    pub fn new() -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Epoll {
            poll,
            events: Events::with_capacity(EPOLL_EVENTS),
            listener: None,
            waker,
        })
    }

    fn registry(&self) -> &Registry {
        self.poll.registry()
    }
}

impl Backend for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn listen(&mut self, listener: std::net::TcpListener) -> io::Result<()> {
        let mut l = TcpListener::from_std(listener);
        self.registry()
            .register(&mut l, LISTENER, Interest::READABLE)?;
        self.listener = Some(l);
        Ok(())
    }

    fn stop_listening(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => events.push(Event::Acceptable),
                WAKER => events.push(Event::Wake),
                MioToken(t) => {
                    let t = t as Token;
                    if ev.is_writable() {
                        events.push(Event::Writable(t));
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        events.push(Event::Readable(t));
                    }
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, out: &mut Vec<Sock>, max: usize) -> io::Result<bool> {
        let Some(listener) = &self.listener else {
            return Ok(false);
        };
        for _ in 0..max {
            match listener.accept() {
                // mio accepts with accept4(SOCK_NONBLOCK | SOCK_CLOEXEC).
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
            MioToken(token as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn read(&mut self, sock: Sock, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `sock` is an open socket owned by this worker; `buf` is a valid,
        // writable buffer of `buf.len()` bytes for the duration of the call.
        let n = syscall!(unsafe { libc::read(sock, buf.as_mut_ptr().cast(), buf.len()) })?;
        Ok(n as usize)
    }

    fn take_input(&mut self, _input: InputRef, _buf: &mut [u8]) -> usize {
        0
    }

    fn send(&mut self, sock: Sock, _token: Token, parts: &[Part<'_>]) -> io::Result<usize> {
        if let [one] = parts {
            // One buffer (the common case of a fan-out): send(2) goes straight to the
            // socket layer, skipping the iovec import and file-position locking of writev.
            let b = one.bytes();
            // SAFETY: `b` is a live slice for the duration of the call; `sock` is an open
            // socket owned by this worker.
            let r = syscall!(unsafe {
                libc::send(sock, b.as_ptr().cast(), b.len(), libc::MSG_NOSIGNAL)
            });
            return match r {
                Ok(w) => Ok(w as usize),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            };
        }
        let mut iov = [IoSlice::new(&[]); EPOLL_MAX_IOV];
        let n = parts.len().min(EPOLL_MAX_IOV);
        for (slot, p) in iov.iter_mut().zip(parts) {
            *slot = IoSlice::new(p.bytes());
        }
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the first `n` entries
        // point at live slices borrowed for the duration of the call; `sock` is an open
        // socket owned by this worker.
        let r = syscall!(unsafe { libc::writev(sock, iov.as_ptr().cast(), n as libc::c_int) });
        match r {
            Ok(w) => Ok(w as usize),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn pending(&self, _token: Token) -> usize {
        0
    }

    fn backlog(&self, _token: Token) -> usize {
        0
    }

    fn truncate(&mut self, _token: Token) {}

    fn shutdown_write(&mut self, sock: Sock, _token: Token) -> io::Result<()> {
        // SAFETY: `sock` is an open socket owned by this worker.
        syscall!(unsafe { libc::shutdown(sock, libc::SHUT_WR) }).map(|_| ())
    }

    fn close(&mut self, sock: Sock, _token: Token) {
        // Closing the descriptor removes it from the epoll set (it is never duplicated).
        // SAFETY: `sock` is an open descriptor owned by this worker and not used again.
        unsafe {
            libc::close(sock);
        }
    }

    fn reject(&mut self, sock: Sock, answer: &'static [u8]) {
        let _ = self.send(sock, 0, &[Part::Copy(answer)]);
        self.close(sock, 0);
    }

    fn set_nodelay(&mut self, sock: Sock) {
        // SAFETY: `sock` is an open socket owned by this worker for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(sock) };
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
    }

    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr> {
        // SAFETY: `sock` is an open socket owned by this worker for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(sock) };
        socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
    }

    fn flush(&mut self) {}

    fn shutdown(&mut self) {
        self.stop_listening();
    }
}
