//! The io_uring backend.
//!
//! - **Accept**: one multishot ACCEPT per worker listener. With direct descriptors
//!   (`uring_direct = true`, the default) accepted sockets go into the ring's own file
//!   table (IORING_FILE_INDEX_ALLOC) and take no slot in the process's descriptor table,
//!   so one process can hold more connections than `RLIMIT_NOFILE` (each ring's table is
//!   itself capped at `RLIMIT_NOFILE`, so the ceiling is about `workers * RLIMIT_NOFILE`).
//!   TCP_NODELAY is set on the listener and inherited by accepted sockets.
//! - **Idle sockets** are armed according to `uring_arm`:
//!   - `poll`: a multishot POLL_ADD per socket; when it fires, one RECV with a buffer from
//!     the worker's provided-buffer ring reads the input.
//!   - `recv`: a multishot RECV with the provided-buffer ring per socket.
//!
//!   That choice is a memory decision. `make bench-backends` (19,000 idle WebSocket
//!   subscribers in one process, kernel slab growth over both ends of every loopback
//!   connection, the client end being the same epoll loadgen in every row) measured on
//!   Linux 6.18:
//!
//!   | arming | kernel slab/conn | the arming's own cache | server RSS/conn above idle |
//!   |---|---:|---:|---:|
//!   | epoll (the other backend) | 7,979 B | `eventpoll_epi` 254 B | 127 B |
//!   | multishot POLL_ADD | 7,981 B | `io_kiocb` 258 B | 182 B |
//!   | multishot RECV + buffer ring | 8,444 B | `kmalloc-512` 519 B | 213 B |
//!
//!   RECV costs about 460 B more per idle socket than POLL_ADD and is no faster at
//!   fan-out, so the default is `poll`.
//! - **Input** lands in one of [`URING_BUFFERS`] buffers of [`URING_BUFFER_SIZE`] bytes (a provided
//!   buffer ring per worker); the worker copies it into its scratch buffer and the buffer
//!   goes straight back to the ring. A RECV that finds the ring empty (ENOBUFS) is retried
//!   on the next turn.
//! - **Output**: SEND / SENDMSG through the ring. The backend owns the bytes until the
//!   completion (shared references for pre-encoded messages) and keeps at most one send in
//!   flight per connection, queueing what comes meanwhile, so order is kept. During a
//!   fan-out every subscriber's SEND is queued and the whole batch goes to the kernel in
//!   one `io_uring_enter` at the end of the worker's turn.
//! - **Close**: cancel everything in flight on the socket, then CLOSE, linked. Completions
//!   that arrive for a closed connection are recognised by the generation carried in
//!   `user_data` and dropped (their buffers are recycled).
//! - **Completion-queue overflow**: the completion queue is [`URING_CQ_FACTOR`] times the
//!   submission queue; with IORING_FEAT_NODROP the kernel keeps overflowed completions and
//!   hands them over on the next enter. A multishot operation that the kernel ends (no
//!   IORING_CQE_F_MORE: overflow, error, buffers exhausted) is armed again.
//! - **Shutdown** cancels every operation and waits (bounded) for the last completion
//!   before the buffers are freed.

use bytes::Bytes;
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, Event, InputRef, Part, Sock, Token, TokenState};
use crate::inbox::Wake;
use crate::limits::{
    URING_BUFFERS, URING_BUFFER_SIZE, URING_CLOSE_SEND_GRACE, URING_CQ_FACTOR, URING_MAX_SEND_IOV,
    URING_SHUTDOWN_WAIT, URING_SQ_ENTRIES,
};
use crate::warn;

/// Buffer group id of the worker's provided-buffer ring.
const BGID: u16 = 7;

/// How idle sockets are armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Multishot POLL_ADD, then a one-shot RECV per readiness.
    Poll,
    /// Multishot RECV with provided buffers.
    Recv,
}

// user_data: kind (8 bits) | generation (24 bits) | socket (32 bits), or kind | op index.
const K_ACCEPT: u64 = 1;
const K_WAKE: u64 = 2;
const K_POLL: u64 = 3;
const K_RECV: u64 = 4;
const K_RECVM: u64 = 5;
const K_SEND: u64 = 6;
const K_MISC: u64 = 7;
const K_INSTALL: u64 = 8;
const K_SHUT: u64 = 9;

fn ud(kind: u64, generation: u32, sock: Sock) -> u64 {
    kind << 56 | u64::from(generation & 0xFF_FFFF) << 32 | u64::from(sock as u32)
}

fn ud_kind(ud: u64) -> u64 {
    ud >> 56
}

fn ud_gen(ud: u64) -> u32 {
    ((ud >> 32) & 0xFF_FFFF) as u32
}

fn ud_sock(ud: u64) -> Sock {
    (ud & 0xFFFF_FFFF) as u32 as Sock
}

fn token_gen(token: Token) -> u32 {
    ((token >> 32) & 0xFF_FFFF) as u32
}

/// Builds an entry on the socket, as a direct descriptor or a plain one.
macro_rules! on_sock {
    ($self:expr, $sock:expr, |$fd:ident| $build:expr) => {
        if $self.direct {
            let $fd = Fixed($sock as u32);
            $build
        } else {
            let $fd = Fd($sock);
            $build
        }
    };
}

/// Wakes the worker by writing to an eventfd the ring polls.
struct EventFdWaker(OwnedFd);

impl Wake for EventFdWaker {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: the eventfd is open for the waker's lifetime; we write 8 bytes from a
        // live u64, as eventfd requires.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// The provided-buffer ring (IORING_REGISTER_PBUF_RING).
struct BufRing {
    ring: *mut BufRingEntry,
    layout: std::alloc::Layout,
    mem: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn new(uring: &IoUring) -> io::Result<BufRing> {
        let layout = std::alloc::Layout::from_size_align(
            usize::from(URING_BUFFERS) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(|_| io::Error::other("bad buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // Touch the buffers now, so that the idle footprint is counted at start.
        let mem = vec![0u8; usize::from(URING_BUFFERS) * URING_BUFFER_SIZE].into_boxed_slice();
        let mut br = BufRing {
            ring,
            layout,
            mem,
            tail: 0,
        };
        // SAFETY: `ring` is page-aligned, zeroed memory for URING_BUFFERS entries that lives
        // until after the ring is destroyed (BufRing is dropped after the IoUring, see the
        // field order of `Uring`).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring as u64, URING_BUFFERS, BGID, 0)?;
        }
        for bid in 0..URING_BUFFERS {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (URING_BUFFERS - 1));
        // SAFETY: idx < URING_BUFFERS, inside the ring allocation; the kernel only reads
        // entries between its head and our published tail, and this one is past it.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.mem[usize::from(bid) * URING_BUFFER_SIZE..].as_ptr() as u64);
        entry.set_len(URING_BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the ring base is the first entry; its `resv` field is the shared tail,
        // a naturally aligned u16 that the kernel reads atomically.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * URING_BUFFER_SIZE;
        &self.mem[start..start + len.min(URING_BUFFER_SIZE)]
    }
}

// SAFETY: the ring memory is owned by this value alone and only touched by the thread
// that owns the worker (the kernel reads it concurrently by design, through atomics on
// the tail).
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone.
        unsafe { std::alloc::dealloc(self.ring.cast(), self.layout) };
    }
}

/// One SEND / SENDMSG in flight. Boxed so that the iovecs and the header the kernel reads
/// stay put.
struct SendOp {
    token: Token,
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
            token: 0,
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
struct SendQueue {
    bufs: VecDeque<Bytes>,
    /// Bytes not yet written: queued plus the rest of the op in flight.
    bytes: usize,
    /// The turn in which the send in flight was started.
    started: u64,
}

/// The io_uring backend of one worker.
pub struct Uring {
    // Field order matters: the ring is dropped (closed) before the memory it used.
    ring: IoUring,
    bufs: BufRing,
    direct: bool,
    /// Size of the direct descriptor table (0 without one).
    table: usize,
    arm: Arm,
    listener: Option<std::net::TcpListener>,
    accept_armed: bool,
    accepted: VecDeque<Sock>,
    accept_error: Option<io::Error>,
    waker_fd: Arc<EventFdWaker>,
    tokens: Vec<Token>,
    recv_armed: HashSet<Token, TokenState>,
    retry: Vec<(Sock, Token)>,
    sends: HashMap<Token, SendQueue, TokenState>,
    ops: Slab<Box<SendOp>>,
    /// Recycled ops: boxed because the kernel holds pointers into them while in flight.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<SendOp>>,
    cqes: Vec<(u64, i32, u32)>,
    in_flight: usize,
    /// Wait calls so far (see [`Backend::backlog`]).
    turn: u64,
    /// Sends of closed connections, cancelled if still running at the deadline.
    doomed: VecDeque<(Instant, usize, Token)>,
    /// SHUTDOWNs in flight, by `user_data` payload (generation and socket), with whether
    /// the socket's CLOSE waits for them. SHUTDOWN runs in a kernel worker and resolves a
    /// direct descriptor only then; closing first would let the index be reused by a new
    /// connection and shut that one instead.
    shutting: HashMap<u64, bool, TokenState>,
}

impl Uring {
    /// A ring for one worker. `direct` asks for direct descriptors (falls back to plain
    /// descriptors when the table cannot be registered).
    pub fn new(direct: bool, arm: Arm) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_cqsize(URING_SQ_ENTRIES * URING_CQ_FACTOR)
            .setup_coop_taskrun()
            .build(URING_SQ_ENTRIES)?;
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::other("io_uring without IORING_FEAT_NODROP"));
        }
        let mut direct = direct;
        let table = nofile_limit().clamp(16, 1 << 20);
        if direct {
            if let Err(e) = ring.submitter().register_files_sparse(table) {
                warn!("io_uring: no direct descriptor table ({e}); using plain descriptors");
                direct = false;
            }
        }
        let bufs = BufRing::new(&ring)?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor owned by nobody else.
        let waker_fd = Arc::new(EventFdWaker(unsafe { OwnedFd::from_raw_fd(efd) }));
        let mut u = Uring {
            ring,
            bufs,
            direct,
            table: if direct { table as usize } else { 0 },
            arm,
            listener: None,
            accept_armed: false,
            accepted: VecDeque::new(),
            accept_error: None,
            waker_fd,
            tokens: Vec::new(),
            recv_armed: HashSet::default(),
            retry: Vec::new(),
            sends: HashMap::default(),
            ops: Slab::new(),
            pool: Vec::new(),
            cqes: Vec::with_capacity((URING_SQ_ENTRIES * URING_CQ_FACTOR) as usize),
            in_flight: 0,
            turn: 0,
            doomed: VecDeque::new(),
            shutting: HashMap::default(),
        };
        u.arm_waker();
        Ok(u)
    }

    /// Whether accepted sockets are direct descriptors.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Queues an entry, submitting first when the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        loop {
            // SAFETY: every pointer an entry carries (send buffers and headers in boxed
            // `SendOp`s, the static reject answers, the buffer ring) stays valid until
            // that entry's final completion has been reaped.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            self.submit();
        }
    }

    fn submit(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Completions are backed up: reap them, then try again.
                    self.reap();
                }
                Err(e) => {
                    warn!("io_uring submit failed: {e}");
                    return;
                }
            }
        }
    }

    /// Moves completions from the ring into `self.cqes`.
    fn reap(&mut self) {
        let cq = self.ring.completion();
        for cqe in cq {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    fn arm_waker(&mut self) {
        let entry = opcode::PollAdd::new(Fd(self.waker_fd.0.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(K_WAKE << 56);
        self.push(entry);
    }

    fn arm_accept(&mut self) {
        let Some(l) = &self.listener else {
            return;
        };
        // Direct descriptors have no close-on-exec flag (EINVAL if asked).
        let flags = if self.direct {
            libc::SOCK_NONBLOCK
        } else {
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        };
        let entry = opcode::AcceptMulti::new(Fd(l.as_raw_fd()))
            .allocate_file_index(self.direct)
            .flags(flags)
            .build()
            .user_data(K_ACCEPT << 56);
        self.accept_armed = true;
        self.push(entry);
    }

    fn arm_input(&mut self, sock: Sock, token: Token) {
        let generation = token_gen(token);
        let entry = match self.arm {
            Arm::Poll => on_sock!(self, sock, |fd| opcode::PollAdd::new(
                fd,
                (libc::POLLIN | libc::POLLRDHUP) as u32
            )
            .multi(true)
            .build()
            .user_data(ud(K_POLL, generation, sock))),
            Arm::Recv => {
                self.recv_armed.insert(token);
                on_sock!(self, sock, |fd| opcode::RecvMulti::new(fd, BGID)
                    .build()
                    .user_data(ud(K_RECVM, generation, sock)))
            }
        };
        self.push(entry);
    }

    fn submit_recv(&mut self, sock: Sock, token: Token) {
        self.recv_armed.insert(token);
        let generation = token_gen(token);
        let entry = on_sock!(self, sock, |fd| opcode::Recv::new(
            fd,
            std::ptr::null_mut(),
            URING_BUFFER_SIZE as u32
        )
        .buf_group(BGID)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(ud(K_RECV, generation, sock)));
        self.push(entry);
    }

    /// The live token of a socket, if `generation` matches it.
    fn live_token(&self, sock: Sock, generation: u32) -> Option<Token> {
        let t = *self.tokens.get(sock as usize)?;
        (t != 0 && token_gen(t) == generation).then_some(t)
    }

    fn push_close(&mut self, sock: Sock) {
        let close = if self.direct {
            opcode::Close::new(Fixed(sock as u32)).build()
        } else {
            opcode::Close::new(Fd(sock)).build()
        }
        .user_data(K_MISC << 56);
        self.push(close);
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

    /// Submits what is left of op `idx`.
    fn submit_op(&mut self, idx: usize) {
        let direct = self.direct;
        let op = &mut self.ops[idx];
        let user_data = K_SEND << 56 | idx as u64;
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

    fn on_send(&mut self, idx: usize, res: i32, events: &mut Vec<Event>) {
        if !self.ops.contains(idx) {
            return;
        }
        let token = self.ops[idx].token;
        let sock = self.ops[idx].sock;
        let live = self.live_token(sock, token_gen(token)) == Some(token);
        if res < 0 || !live {
            crate::debug!("uring: send op {idx} token {token:x} sock {sock} res {res} live {live}");
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

    fn recycle_op(&mut self, mut op: Box<SendOp>) {
        op.bufs.clear();
        if self.pool.len() < 1024 {
            self.pool.push(op);
        }
    }

    fn on_input(
        &mut self,
        kind: u64,
        sock: Sock,
        generation: u32,
        res: i32,
        flags: u32,
        events: &mut Vec<Event>,
    ) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(token) = self.live_token(sock, generation) else {
            if let Some(bid) = bid {
                self.bufs.push(bid);
                self.bufs.publish();
            }
            return;
        };
        if res > 0 {
            let bid = bid.expect("a RECV with buffer select that read data names its buffer");
            events.push(Event::Input(
                token,
                InputRef {
                    buf: bid,
                    len: res as u32,
                },
            ));
            match kind {
                K_RECV if cqueue::sock_nonempty(flags) || res as usize == URING_BUFFER_SIZE => {
                    self.submit_recv(sock, token);
                }
                K_RECV => {
                    self.recv_armed.remove(&token);
                }
                _ if !more => self.arm_input(sock, token),
                _ => {}
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufs.push(bid);
            self.bufs.publish();
        }
        self.recv_armed.remove(&token);
        crate::debug!("uring: input end on sock {sock} token {token:x}: res {res} kind {kind}");
        match -res {
            0 => events.push(Event::Eof(token)),
            libc::ENOBUFS => self.retry.push((sock, token)),
            libc::ECANCELED => {}
            _ => events.push(Event::Failed(token)),
        }
    }

    fn dispatch(&mut self, events: &mut Vec<Event>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        for &(user_data, res, flags) in &cqes {
            let more = cqueue::more(flags);
            let kind = ud_kind(user_data);
            let is_final = !(more && matches!(kind, K_ACCEPT | K_WAKE | K_POLL | K_RECVM));
            if is_final {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            match kind {
                K_ACCEPT => {
                    crate::debug!("uring: accept res {res} more {more}");
                    if res >= 0 {
                        self.accepted.push_back(res);
                    } else if res != -libc::ECANCELED {
                        self.accept_error = Some(io::Error::from_raw_os_error(-res));
                    }
                    if !more {
                        self.accept_armed = false;
                    }
                    events.push(Event::Acceptable);
                }
                K_WAKE => {
                    let mut v: u64 = 0;
                    // SAFETY: reading 8 bytes into a live u64 from our own eventfd.
                    unsafe {
                        libc::read(
                            self.waker_fd.0.as_raw_fd(),
                            (&mut v as *mut u64).cast(),
                            std::mem::size_of::<u64>(),
                        );
                    }
                    events.push(Event::Wake);
                    if !more && res != -libc::ECANCELED {
                        self.arm_waker();
                    }
                }
                K_POLL => {
                    let sock = ud_sock(user_data);
                    let Some(token) = self.live_token(sock, ud_gen(user_data)) else {
                        continue;
                    };
                    if res >= 0 && !self.recv_armed.contains(&token) {
                        self.submit_recv(sock, token);
                    }
                    if !more && res != -libc::ECANCELED {
                        self.arm_input(sock, token);
                    }
                }
                K_RECV | K_RECVM => self.on_input(
                    kind,
                    ud_sock(user_data),
                    ud_gen(user_data),
                    res,
                    flags,
                    events,
                ),
                K_SEND => self.on_send((user_data & 0xFFFF_FFFF) as usize, res, events),
                K_SHUT => {
                    if let Some(true) = self.shutting.remove(&(user_data & 0x00FF_FFFF_FFFF_FFFF)) {
                        self.push_close(ud_sock(user_data));
                    }
                }
                K_INSTALL if res >= 0 => {
                    // A peer-address lookup that gave up waiting: close what it installed.
                    // SAFETY: the descriptor was installed for us and nobody else has it.
                    drop(unsafe { OwnedFd::from_raw_fd(res) });
                }
                _ => {}
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }
}

fn nofile_limit() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(u64::from(u32::MAX)) as u32
    } else {
        1024
    }
}

impl Backend for Uring {
    fn slots(&self) -> Option<usize> {
        // Refusals and sockets the multishot accept took ahead also sit in the table.
        self.direct
            .then(|| self.table.saturating_sub(2 * crate::limits::REJECT_BATCH))
    }

    fn name(&self) -> &'static str {
        match (self.direct, self.arm) {
            (true, Arm::Poll) => "uring (direct descriptors, poll-armed)",
            (true, Arm::Recv) => "uring (direct descriptors, recv-armed)",
            (false, Arm::Poll) => "uring (poll-armed)",
            (false, Arm::Recv) => "uring (recv-armed)",
        }
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker_fd.clone()
    }

    fn listen(&mut self, listener: std::net::TcpListener) -> io::Result<()> {
        self.listener = Some(listener);
        self.arm_accept();
        Ok(())
    }

    fn pause_accept(&mut self) {
        if self.accept_armed {
            // The multishot accept would go on taking sockets (and descriptors); it is
            // armed again by the next `accept`.
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(K_ACCEPT << 56).all())
                .build()
                .user_data(K_MISC << 56);
            self.push(entry);
        }
    }

    fn stop_listening(&mut self) {
        if self.listener.is_some() {
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(K_ACCEPT << 56).all())
                .build()
                .user_data(K_MISC << 56);
            self.push(entry);
            self.submit();
            self.listener = None;
            self.accept_armed = false;
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        self.turn += 1;
        let now = Instant::now();
        while let Some(&(deadline, idx, token)) = self.doomed.front() {
            if deadline > now {
                break;
            }
            self.doomed.pop_front();
            if self.ops.get(idx).is_some_and(|op| op.token == token) {
                let entry =
                    opcode::AsyncCancel2::new(CancelBuilder::user_data(K_SEND << 56 | idx as u64))
                        .build()
                        .user_data(K_MISC << 56);
                self.push(entry);
            }
        }
        for (sock, token) in std::mem::take(&mut self.retry) {
            if self.live_token(sock, token_gen(token)) == Some(token) {
                match self.arm {
                    Arm::Poll => self.submit_recv(sock, token),
                    Arm::Recv => self.arm_input(sock, token),
                }
            }
        }
        let ready = !self.cqes.is_empty() || !self.ring.completion().is_empty();
        let result = match timeout {
            _ if ready => self.ring.submit().map(drop),
            Some(t) if t.is_zero() => self.ring.submit().map(drop),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args).map(drop)
            }
            None => self.ring.submit_and_wait(1).map(drop),
        };
        match result {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        self.dispatch(events);
        Ok(())
    }

    fn accept(&mut self, out: &mut Vec<Sock>, max: usize) -> io::Result<bool> {
        while out.len() < max {
            match self.accepted.pop_front() {
                Some(s) => out.push(s),
                None => break,
            }
        }
        if let Some(e) = self.accept_error.take() {
            return Err(e);
        }
        if !self.accept_armed && self.listener.is_some() {
            self.arm_accept();
        }
        Ok(!self.accepted.is_empty())
    }

    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let i = sock as usize;
        if self.tokens.len() <= i {
            self.tokens.resize(i + 1, 0);
        }
        self.tokens[i] = token;
        self.arm_input(sock, token);
        Ok(())
    }

    fn read(&mut self, _sock: Sock, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn take_input(&mut self, input: InputRef, buf: &mut [u8]) -> usize {
        let src = self.bufs.slice(input.buf, input.len as usize);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        self.bufs.push(input.buf);
        self.bufs.publish();
        n
    }

    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<usize> {
        let total: usize = parts.iter().map(|p| p.bytes().len()).sum();
        if let Some(q) = self.sends.get_mut(&token) {
            q.bytes += total;
            q.bufs.extend(parts.iter().map(|p| p.to_bytes(0)));
            return Ok(total);
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
        let now: Vec<Bytes> = parts
            .iter()
            .take(URING_MAX_SEND_IOV)
            .map(|p| p.to_bytes(0))
            .collect();
        self.start_send(sock, token, now.into_iter());
        Ok(total)
    }

    fn pending(&self, token: Token) -> usize {
        self.sends.get(&token).map_or(0, |q| q.bytes)
    }

    fn backlog(&self, token: Token) -> usize {
        // A send started in an earlier turn and still not complete after the kernel was
        // entered and its completions reaped is waiting for the peer to read.
        self.sends
            .get(&token)
            .filter(|q| q.started < self.turn)
            .map_or(0, |q| q.bytes)
    }

    fn truncate(&mut self, token: Token) {
        if let Some(q) = self.sends.get_mut(&token) {
            let dropped: usize = q.bufs.iter().map(Bytes::len).sum();
            q.bufs.clear();
            q.bytes -= dropped;
        }
    }

    fn shutdown_write(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let user_data = ud(K_SHUT, token_gen(token), sock);
        let entry = on_sock!(self, sock, |fd| opcode::Shutdown::new(fd, libc::SHUT_WR)
            .build()
            .user_data(user_data));
        self.shutting
            .insert(user_data & 0x00FF_FFFF_FFFF_FFFF, false);
        self.push(entry);
        Ok(())
    }

    fn close(&mut self, sock: Sock, token: Token) {
        crate::debug!("uring: close sock {sock} token {token:x}");
        if let Some(t) = self.tokens.get_mut(sock as usize) {
            if *t == token {
                *t = 0;
            }
        }
        // What is queued behind the send in flight is dropped (as epoll drops what the
        // kernel did not take); the send in flight keeps the socket open until it is done
        // or cancelled at the deadline, so the peer gets what was written before the close.
        self.sends.remove(&token);
        if let Some((idx, _)) = self.ops.iter().find(|(_, op)| op.token == token) {
            self.doomed
                .push_back((Instant::now() + URING_CLOSE_SEND_GRACE, idx, token));
        }
        self.recv_armed.remove(&token);
        let generation = token_gen(token);
        let kinds: &[u64] = match self.arm {
            Arm::Poll => &[K_POLL, K_RECV],
            Arm::Recv => &[K_RECVM],
        };
        for &kind in kinds {
            let entry = opcode::AsyncCancel2::new(
                CancelBuilder::user_data(ud(kind, generation, sock)).all(),
            )
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(K_MISC << 56);
            self.push(entry);
        }
        let key = ud(K_SHUT, generation, sock) & 0x00FF_FFFF_FFFF_FFFF;
        match self.shutting.get_mut(&key) {
            Some(close_waits) => *close_waits = true,
            None => self.push_close(sock),
        }
    }

    fn reject(&mut self, sock: Sock, answer: &'static [u8]) {
        let send = on_sock!(self, sock, |fd| opcode::Send::new(
            fd,
            answer.as_ptr(),
            answer.len() as u32
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .flags(squeue::Flags::IO_HARDLINK)
        .user_data(K_MISC << 56));
        self.push(send);
        // Hard-linked: the close runs after the send, whatever its result.
        self.push_close(sock);
    }

    fn set_nodelay(&mut self, _sock: Sock) {
        // Inherited from the listener (set before it is handed over).
    }

    fn peer_addr(&mut self, sock: Sock) -> Option<SocketAddr> {
        if !self.direct {
            // SAFETY: `sock` is an open descriptor owned by this worker for this call.
            let fd = unsafe { BorrowedFd::borrow_raw(sock) };
            return socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket();
        }
        // A direct descriptor has no process descriptor to ask: install one for a moment
        // (IORING_OP_FIXED_FD_INSTALL), ask it, close it. Operators' `conns` only.
        let entry = opcode::FixedFdInstall::new(Fixed(sock as u32), 0)
            .build()
            .user_data(K_INSTALL << 56 | u64::from(sock as u32));
        self.push(entry);
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut fd = None;
        while fd.is_none() && Instant::now() < deadline {
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut rest = Vec::new();
            for cqe in self.ring.completion() {
                let (u, res) = (cqe.user_data(), cqe.result());
                if u == K_INSTALL << 56 | u64::from(sock as u32) {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    fd = Some(res);
                } else {
                    rest.push((u, res, cqe.flags()));
                }
            }
            // Everything else is dispatched on the next wait.
            self.cqes.extend(rest);
        }
        let fd = fd.filter(|&f| f >= 0)?;
        // SAFETY: FIXED_FD_INSTALL returned a new descriptor that we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        socket2::SockRef::from(&owned).peer_addr().ok()?.as_socket()
    }

    fn flush(&mut self) {
        if !self.ring.submission().is_empty() {
            self.submit();
        }
    }

    fn shutdown(&mut self) {
        self.stop_listening();
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(K_MISC << 56);
        self.push(entry);
        let deadline = Instant::now() + URING_SHUTDOWN_WAIT;
        let mut events = Vec::new();
        // Everything that completes from now on is stale.
        self.sends.clear();
        self.tokens.clear();
        while self.in_flight > 0 && Instant::now() < deadline {
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            self.dispatch(&mut events);
            events.clear();
        }
        if self.in_flight > 0 {
            warn!(
                "io_uring: {} operations still in flight at shutdown",
                self.in_flight
            );
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}
