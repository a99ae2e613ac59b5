//! Output through the ring: SEND / SENDMSG, at most one in flight per connection and a
//! queue behind it, so order is kept. The backend owns the bytes until the completion
//! (shared references for pre-encoded messages); a short send is continued from where it
//! stopped.

use bytes::Bytes;
use io_uring::opcode;
use io_uring::types::{Fd, Fixed};
use std::collections::VecDeque;

use super::userdata::{indexed, K_SEND};
use super::Uring;
use crate::limits::{URING_MAX_SEND_IOV, URING_SEND_POOL};
use crate::reactor::{Event, Part, Sock, Token};

/// One SEND / SENDMSG in flight. Boxed so that the iovecs and the header the kernel reads
/// stay put.
pub(super) struct SendOp {
    pub(super) token: Token,
    sock: Sock,
    bufs: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    hdr: libc::msghdr,
    /// First buffer not fully written, and bytes of it already written.
    first: usize,
    offset: usize,
    remaining: usize,
}

// SAFETY: the raw pointers in `iov` and `hdr` point into this op's own `bufs` and `iov`;
// the op moves between threads only before the worker starts, with nothing in flight.
unsafe impl Send for SendOp {}

impl SendOp {
    fn new() -> Box<SendOp> {
        Box::new(SendOp {
            token: Token::NONE,
            sock: -1,
            bufs: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            first: 0,
            offset: 0,
            remaining: 0,
        })
    }

    fn advance(&mut self, mut n: usize) {
        self.remaining -= n;
        while n > 0 {
            let left = self.bufs[self.first].len() - self.offset;
            if n >= left {
                n -= left;
                self.first += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

/// A connection's output that waits behind its send in flight.
#[derive(Default)]
pub(super) struct SendQueue {
    bufs: VecDeque<Bytes>,
    /// Bytes not yet written: queued plus the rest of the op in flight.
    pub(super) bytes: usize,
    /// The turn in which the send in flight was started.
    pub(super) started: u64,
}

impl Uring {
    /// [`crate::reactor::Backend::send`].
    pub(super) fn queue_send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) {
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        if let Some(q) = self.sends.get_mut(&token) {
            q.bytes += total;
            q.bufs.extend(parts.iter().map(|p| p.to_bytes(0)));
            return;
        }
        let mut q = SendQueue {
            bufs: VecDeque::new(),
            bytes: total,
            started: self.turn,
        };
        if parts.len() > URING_MAX_SEND_IOV {
            q.bufs
                .extend(parts[URING_MAX_SEND_IOV..].iter().map(|p| p.to_bytes(0)));
        }
        self.sends.insert(token, q);
        let now = parts.iter().take(URING_MAX_SEND_IOV).map(|p| p.to_bytes(0));
        self.start_send(sock, token, now);
    }

    /// Drops what waits behind the send in flight (a slow consumer's backlog).
    pub(super) fn truncate_queue(&mut self, token: Token) {
        if let Some(q) = self.sends.get_mut(&token) {
            let dropped: usize = q.bufs.iter().map(Bytes::len).sum();
            q.bufs.clear();
            q.bytes -= dropped;
        }
    }

    /// Starts a send of `bufs` (already accounted in the connection's queue).
    fn start_send(&mut self, sock: Sock, token: Token, bufs: impl Iterator<Item = Bytes>) {
        let mut op = self.pool.pop().unwrap_or_else(SendOp::new);
        op.token = token;
        op.sock = sock;
        op.bufs.clear();
        op.bufs.extend(bufs);
        op.first = 0;
        op.offset = 0;
        op.remaining = op.bufs.iter().map(Bytes::len).sum();
        let idx = self.ops.insert(op);
        let turn = self.turn;
        if let Some(q) = self.sends.get_mut(&token) {
            q.started = turn;
        }
        self.submit_op(idx);
    }

    /// Submits what is left of op `idx` (held while quiesced: `thaw` submits it).
    pub(super) fn submit_op(&mut self, idx: usize) {
        if self.quiet {
            return;
        }
        let direct = self.direct;
        let op = &mut self.ops[idx];
        let user_data = indexed(K_SEND, idx);
        let flags = libc::MSG_NOSIGNAL;
        let entry = if op.bufs.len() - op.first == 1 {
            let b = &op.bufs[op.first][op.offset..];
            let (ptr, len) = (b.as_ptr(), b.len() as u32);
            if direct {
                opcode::Send::new(Fixed(op.sock as u32), ptr, len)
            } else {
                opcode::Send::new(Fd(op.sock), ptr, len)
            }
            .flags(flags)
            .build()
            .user_data(user_data)
        } else {
            op.iov.clear();
            for (i, b) in op.bufs[op.first..].iter().enumerate() {
                let s = if i == 0 { &b[op.offset..] } else { &b[..] };
                op.iov.push(libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                });
            }
            op.hdr.msg_iov = op.iov.as_mut_ptr();
            op.hdr.msg_iovlen = op.iov.len() as _;
            let hdr: *const libc::msghdr = &op.hdr;
            if direct {
                opcode::SendMsg::new(Fixed(op.sock as u32), hdr)
            } else {
                opcode::SendMsg::new(Fd(op.sock), hdr)
            }
            .flags(flags as u32)
            .build()
            .user_data(user_data)
        };
        self.push(entry);
    }

    /// A send completed: continue it, start the next, or report the queue empty.
    pub(super) fn on_send(&mut self, idx: usize, res: i32, events: &mut Vec<Event>) {
        if !self.ops.contains(idx) {
            return;
        }
        let token = self.ops[idx].token;
        let sock = self.ops[idx].sock;
        let live = self.live_token(sock, token.generation()) == Some(token);
        if live && self.quiet && res == -libc::ECANCELED {
            // Cancelled by `quiesce` before it wrote anything: it stays, whole, for the
            // export (or for `thaw`, which submits it again).
            return;
        }
        if res < 0 || !live {
            crate::debug!("uring: send op {idx} token {token:?} sock {sock} res {res} live {live}");
            let op = self.ops.remove(idx);
            self.recycle_op(op);
            if live {
                self.sends.remove(&token);
                events.push(Event::Failed(token));
            }
            return;
        }
        let n = res as usize;
        let op = &mut self.ops[idx];
        op.advance(n);
        let done = op.remaining == 0;
        if let Some(q) = self.sends.get_mut(&token) {
            q.bytes -= n.min(q.bytes);
        }
        if !done {
            self.submit_op(idx);
            return;
        }
        let op = self.ops.remove(idx);
        self.recycle_op(op);
        let next: Vec<Bytes> = match self.sends.get_mut(&token) {
            Some(q) if !q.bufs.is_empty() => {
                let n = q.bufs.len().min(URING_MAX_SEND_IOV);
                q.bufs.drain(..n).collect()
            }
            _ => Vec::new(),
        };
        if next.is_empty() {
            self.sends.remove(&token);
            events.push(Event::Writable(token));
        } else {
            self.start_send(sock, token, next.into_iter());
        }
    }

    /// Hot handover: what the connection still has to write, in order (the rest of its
    /// send in flight, then its queue), appended to `out`.
    pub(super) fn unsent(&self, token: Token, out: &mut Vec<u8>) {
        let Some(q) = self.sends.get(&token) else {
            return;
        };
        // `quiesce` indexed the ops by connection (at most one each).
        let op = self.parked.get(&token).and_then(|&i| self.ops.get(i));
        if let Some(op) = op.filter(|op| op.token == token) {
            for (i, b) in op.bufs.iter().enumerate().skip(op.first) {
                let start = if i == op.first { op.offset } else { 0 };
                out.extend_from_slice(&b[start..]);
            }
        }
        for b in &q.bufs {
            out.extend_from_slice(b);
        }
    }

    fn recycle_op(&mut self, mut op: Box<SendOp>) {
        op.bufs.clear();
        if self.pool.len() < URING_SEND_POOL {
            self.pool.push(op);
        }
    }
}
