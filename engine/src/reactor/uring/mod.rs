//! The io_uring backend.
//!
//! - **Accept**: one multishot ACCEPT per listener of the worker. With direct descriptors
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
//!   fan-out, so the default is `poll`. (After the provided buffers went from 128 to 64,
//!   completions were reaped in batches and the tables shrink after a burst, POLL_ADD's
//!   figure is 193 B, against epoll's 140 B in the same run; most of the difference is
//!   fixed memory the first burst touches, see the README's "epoll and io_uring".)
//! - **Input** lands in one of [`crate::limits::URING_BUFFERS`] buffers of
//!   [`crate::limits::URING_BUFFER_SIZE`] bytes
//!   each (a provided buffer ring per worker, [`bufring`]) and waits with its connection
//!   ([`input`]) until the worker takes it with `recv`, which copies it into the worker's
//!   scratch buffer and gives the buffer straight back to the ring. A RECV that finds the
//!   ring empty (ENOBUFS) is retried on the next turn.
//! - **Output** ([`send`]): SEND / SENDMSG through the ring. The backend owns the bytes
//!   until the completion (shared references for pre-encoded messages) and keeps at most
//!   one send in flight per connection, queueing what comes meanwhile, so order is kept.
//!   During a fan-out every subscriber's SEND is queued and the whole batch goes to the
//!   kernel in one `io_uring_enter`, at the next wait.
//! - **User data** ([`userdata`]): the operation's kind, and the socket and generation or
//!   an index, in the [`Token`] layout.
//! - **Close**: cancel everything in flight on the socket, then CLOSE, linked. Completions
//!   that arrive for a closed connection are recognised by the generation carried in
//!   `user_data` and dropped (their buffers are recycled).
//! - **Hot handover** (`crate::handover`): `quiesce` cancels every operation by its own
//!   user data (the kernel hashes polls by it; a cancel of "any" scans its table for each
//!   match, quadratic in the sockets), then "any" for the rest, and waits for the
//!   completions, starting nothing new: a cancelled send wrote nothing, a completed one
//!   is counted, so what a connection still has to write is exact. `handover_fds`
//!   installs process descriptors for one batch (IORING_OP_FIXED_FD_INSTALL); `thaw`
//!   arms everything again if the handover is called off. In the successor the sockets
//!   taken over get the top slots of the direct table, registered before anything is
//!   submitted, with the kernel's allocation range kept below them until the worker
//!   runs (so an accept meanwhile cannot take one of those slots).
//! - **Completion-queue overflow**: the completion queue is
//!   [`crate::limits::URING_CQ_FACTOR`] times the
//!   submission queue; with IORING_FEAT_NODROP the kernel keeps overflowed completions and
//!   hands them over on the next enter. A multishot operation that the kernel ends (no
//!   IORING_CQE_F_MORE: overflow, error, buffers exhausted) is armed again.
//! - **Shutdown** cancels every operation and waits (bounded) for the last completion
//!   before the buffers are freed.

mod bufring;
mod handover;
mod input;
mod send;
mod userdata;

use io_uring::types::{CancelBuilder, Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, Event, Exported, ListenerId, Part, ReadBudget, Sock, Token, TokenState};
use crate::inbox::Wake;
use crate::limits::{
    URING_BUFFER_SIZE, URING_CLOSE_SEND_GRACE, URING_CQ_FACTOR, URING_INSTALL_WAIT,
    URING_REAP_BATCH, URING_SHUTDOWN_WAIT, URING_SQ_ENTRIES,
};
use crate::warn;
use bufring::{BufRing, BGID};
use input::Input;
use send::{SendOp, SendQueue};
use userdata::*;

/// How idle sockets are armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Multishot POLL_ADD, then a one-shot RECV per readiness.
    Poll,
    /// Multishot RECV with provided buffers.
    Recv,
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

/// The io_uring backend's waker: an eventfd the ring polls.
pub struct UringWaker(OwnedFd);

impl Wake for UringWaker {
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

/// One listener of the worker.
struct Listener {
    id: ListenerId,
    sock: std::net::TcpListener,
    armed: bool,
    accepted: VecDeque<Sock>,
    error: Option<io::Error>,
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
    listeners: Vec<Listener>,
    waker: Arc<UringWaker>,
    tokens: Vec<Token>,
    recv_armed: HashSet<Token, TokenState>,
    retry: Vec<(Sock, Token)>,
    inputs: HashMap<Token, Input, TokenState>,
    budget: ReadBudget,
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
    /// SHUTDOWNs in flight, by `user_data` without its kind (generation and socket), with
    /// whether the socket's CLOSE waits for them. SHUTDOWN runs in a kernel worker and
    /// resolves a direct descriptor only then; closing first would let the index be
    /// reused by a new connection and shut that one instead.
    shutting: HashMap<u64, bool, TokenState>,
    /// Hot handover: everything in flight was cancelled ([`Backend::quiesce`]) and
    /// nothing new is started (no arming, no send submitted) until [`Backend::thaw`].
    quiet: bool,
    /// Events of completions reaped while quiesced, reported at the next wait.
    deferred: Vec<Event>,
    /// While quiesced: each connection's send op, if it has one.
    parked: HashMap<Token, usize, TokenState>,
    /// Input a hot handover brought, handed out before the ring's: bytes and how many
    /// were taken.
    early: HashMap<Token, (Vec<u8>, usize), TokenState>,
    /// Descriptors a hot handover brought, by the direct slot each is to take.
    to_register: Vec<(u32, i32)>,
    /// Connections taken over so far (their direct slots are the top ones).
    next_import: u32,
    /// The kernel's allocation range excludes the slots taken over (until the first wait).
    range_narrowed: bool,
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
        let waker = Arc::new(UringWaker(unsafe { OwnedFd::from_raw_fd(efd) }));
        let mut u = Uring {
            ring,
            bufs,
            direct,
            table: if direct { table as usize } else { 0 },
            arm,
            listeners: Vec::new(),
            waker,
            tokens: Vec::new(),
            recv_armed: HashSet::default(),
            retry: Vec::new(),
            inputs: HashMap::default(),
            budget: ReadBudget::default(),
            sends: HashMap::default(),
            ops: Slab::new(),
            pool: Vec::new(),
            cqes: Vec::with_capacity(URING_REAP_BATCH),
            in_flight: 0,
            turn: 0,
            doomed: VecDeque::new(),
            shutting: HashMap::default(),
            quiet: false,
            deferred: Vec::new(),
            parked: HashMap::default(),
            early: HashMap::default(),
            to_register: Vec::new(),
            next_import: 0,
            range_narrowed: false,
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
        self.flush_direct();
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

    /// Moves every completion from the ring into `self.cqes`.
    fn reap(&mut self) {
        while self.reap_batch() {}
    }

    /// Moves at most [`URING_REAP_BATCH`] completions into `self.cqes`; false when there
    /// were none.
    fn reap_batch(&mut self) -> bool {
        let cq = self.ring.completion();
        let before = self.cqes.len();
        for cqe in cq.take(URING_REAP_BATCH) {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        self.cqes.len() > before
    }

    fn arm_waker(&mut self) {
        if self.quiet {
            return;
        }
        let entry = opcode::PollAdd::new(Fd(self.waker.0.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(indexed(K_WAKE, 0));
        self.push(entry);
    }

    fn arm_accept(&mut self, i: usize) {
        // Direct descriptors have no close-on-exec flag (EINVAL if asked).
        if self.quiet {
            return;
        }
        let flags = if self.direct {
            libc::SOCK_NONBLOCK
        } else {
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        };
        let l = &mut self.listeners[i];
        let entry = opcode::AcceptMulti::new(Fd(l.sock.as_raw_fd()))
            .allocate_file_index(self.direct)
            .flags(flags)
            .build()
            .user_data(indexed(K_ACCEPT, usize::from(l.id)));
        l.armed = true;
        self.push(entry);
    }

    fn cancel_accept(&mut self, id: ListenerId) {
        let entry =
            opcode::AsyncCancel2::new(CancelBuilder::user_data(indexed(K_ACCEPT, id.into())).all())
                .build()
                .user_data(misc());
        self.push(entry);
    }

    fn arm_input(&mut self, sock: Sock, token: Token) {
        if self.quiet {
            return;
        }
        let generation = token.generation();
        let entry = match self.arm {
            Arm::Poll => on_sock!(self, sock, |fd| opcode::PollAdd::new(
                fd,
                (libc::POLLIN | libc::POLLRDHUP) as u32
            )
            .multi(true)
            .build()
            .user_data(on_sock(K_POLL, generation, sock))),
            Arm::Recv => {
                self.recv_armed.insert(token);
                on_sock!(self, sock, |fd| opcode::RecvMulti::new(fd, BGID)
                    .build()
                    .user_data(on_sock(K_RECVM, generation, sock)))
            }
        };
        self.push(entry);
    }

    fn submit_recv(&mut self, sock: Sock, token: Token) {
        if self.quiet {
            return;
        }
        self.recv_armed.insert(token);
        let generation = token.generation();
        let entry = on_sock!(self, sock, |fd| opcode::Recv::new(
            fd,
            std::ptr::null_mut(),
            URING_BUFFER_SIZE as u32
        )
        .buf_group(BGID)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(on_sock(K_RECV, generation, sock)));
        self.push(entry);
    }

    /// The live token of a socket, if `generation` matches it.
    fn live_token(&self, sock: Sock, generation: u32) -> Option<Token> {
        let t = *self.tokens.get(sock as usize)?;
        (t != Token::NONE && t.generation() == generation).then_some(t)
    }

    fn push_close(&mut self, sock: Sock) {
        let close = if self.direct {
            opcode::Close::new(Fixed(sock as u32)).build()
        } else {
            opcode::Close::new(Fd(sock)).build()
        }
        .user_data(misc());
        self.push(close);
    }

    /// Cancels the sends of closed connections that outlived their grace, and arms again
    /// the receives that found no buffer.
    fn before_wait(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, idx, token)) = self.doomed.front() {
            if deadline > now {
                break;
            }
            self.doomed.pop_front();
            if self.ops.get(idx).is_some_and(|op| op.token == token) {
                let entry =
                    opcode::AsyncCancel2::new(CancelBuilder::user_data(indexed(K_SEND, idx)))
                        .build()
                        .user_data(misc());
                self.push(entry);
            }
        }
        for (sock, token) in std::mem::take(&mut self.retry) {
            if self.live_token(sock, token.generation()) == Some(token) {
                match self.arm {
                    Arm::Poll => self.submit_recv(sock, token),
                    Arm::Recv => self.arm_input(sock, token),
                }
            }
        }
    }

    fn on_accept(&mut self, id: usize, res: i32, more: bool, events: &mut Vec<Event>) {
        crate::debug!("uring: accept {id} res {res} more {more}");
        let Some(l) = self.listeners.iter_mut().find(|l| usize::from(l.id) == id) else {
            if res >= 0 {
                self.push_close(res);
            }
            return;
        };
        if res >= 0 {
            l.accepted.push_back(res);
        } else if res != -libc::ECANCELED {
            l.error = Some(io::Error::from_raw_os_error(-res));
        }
        if !more {
            l.armed = false;
        }
        events.push(Event::Acceptable(l.id));
    }

    fn on_wake(&mut self, res: i32, more: bool, events: &mut Vec<Event>) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a live u64 from our own eventfd.
        unsafe {
            libc::read(
                self.waker.0.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        events.push(Event::Wake);
        if !more && res != -libc::ECANCELED {
            self.arm_waker();
        }
    }

    fn on_poll(&mut self, user_data: u64, res: i32, more: bool) {
        let sock = sock(user_data);
        let Some(token) = self.live_token(sock, generation(user_data)) else {
            return;
        };
        if res >= 0 && !self.recv_armed.contains(&token) {
            self.submit_recv(sock, token);
        }
        if !more && res != -libc::ECANCELED {
            self.arm_input(sock, token);
        }
    }

    /// Handles the completions reaped into `self.cqes`, in order.
    fn dispatch(&mut self, events: &mut Vec<Event>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        while !cqes.is_empty() {
            for &(user_data, res, flags) in &cqes {
                self.complete(user_data, res, flags, events);
            }
            cqes.clear();
            // A submit that found the completion queue backed up reaped into `self.cqes`
            // meanwhile: those come next.
            std::mem::swap(&mut cqes, &mut self.cqes);
        }
        if cqes.capacity() > self.cqes.capacity() {
            self.cqes = cqes;
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32, events: &mut Vec<Event>) {
        let more = cqueue::more(flags);
        let kind = kind(user_data);
        let is_final = !(more && matches!(kind, K_ACCEPT | K_WAKE | K_POLL | K_RECVM));
        if is_final {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match kind {
            K_ACCEPT => self.on_accept(index(user_data), res, more, events),
            K_WAKE => self.on_wake(res, more, events),
            K_POLL => self.on_poll(user_data, res, more),
            K_RECV | K_RECVM => self.on_input(
                kind,
                sock(user_data),
                generation(user_data),
                (res, flags),
                events,
            ),
            K_SEND => self.on_send(index(user_data), res, events),
            K_SHUT => {
                if let Some(true) = self.shutting.remove(&untagged(user_data)) {
                    self.push_close(sock(user_data));
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

    /// Waits (bounded) for the completion of a descriptor install for `sock`; the other
    /// completions that come meanwhile are kept for the next wait.
    fn wait_install(&mut self, sock: Sock) -> Option<i32> {
        let want = indexed(K_INSTALL, sock as u32 as usize);
        let deadline = Instant::now() + URING_INSTALL_WAIT;
        while Instant::now() < deadline {
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut found = None;
            let mut rest = Vec::new();
            for cqe in self.ring.completion() {
                let (u, res) = (cqe.user_data(), cqe.result());
                if u == want {
                    found = Some(res);
                } else {
                    rest.push((u, res, cqe.flags()));
                }
            }
            self.cqes.extend(rest);
            if let Some(res) = found {
                self.in_flight = self.in_flight.saturating_sub(1);
                return Some(res);
            }
        }
        None
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
    type Waker = UringWaker;

    fn name(&self) -> &'static str {
        match (self.direct, self.arm) {
            (true, Arm::Poll) => "uring (direct descriptors, poll-armed)",
            (true, Arm::Recv) => "uring (direct descriptors, recv-armed)",
            (false, Arm::Poll) => "uring (poll-armed)",
            (false, Arm::Recv) => "uring (recv-armed)",
        }
    }

    fn waker(&self) -> Arc<UringWaker> {
        self.waker.clone()
    }

    fn listen(&mut self, id: ListenerId, listener: std::net::TcpListener) -> io::Result<()> {
        self.listeners.push(Listener {
            id,
            sock: listener,
            armed: false,
            accepted: VecDeque::new(),
            error: None,
        });
        self.arm_accept(self.listeners.len() - 1);
        Ok(())
    }

    fn slots(&self) -> Option<usize> {
        // Refusals and sockets the multishot accepts took ahead also sit in the table.
        self.direct
            .then(|| self.table.saturating_sub(2 * crate::limits::REJECT_BATCH))
    }

    fn pause_accept(&mut self, id: ListenerId) {
        if self.listeners.iter().any(|l| l.id == id && l.armed) {
            // The multishot accept would go on taking sockets (and descriptors); it is
            // armed again by the next `accept`.
            self.cancel_accept(id);
        }
    }

    fn stop_listening(&mut self) {
        let ids: Vec<ListenerId> = self.listeners.iter().map(|l| l.id).collect();
        for id in ids {
            self.cancel_accept(id);
        }
        self.submit();
        // Sockets accepted ahead and never handed over are closed.
        let ahead: Vec<Sock> = self.listeners.drain(..).flat_map(|l| l.accepted).collect();
        for s in ahead {
            self.push_close(s);
        }
    }

    /// The per-connection tables (input, sends, shutdowns, the ops slab) grow to one entry
    /// per connection in a burst (every connection answering its handshake at once, a
    /// fan-out) and keep that capacity.
    fn shrink(&mut self) {
        use crate::memory::sparse;
        if sparse(self.inputs.len(), self.inputs.capacity()) {
            self.inputs.shrink_to(self.inputs.len() * 2);
        }
        if sparse(self.sends.len(), self.sends.capacity()) {
            self.sends.shrink_to(self.sends.len() * 2);
        }
        if sparse(self.recv_armed.len(), self.recv_armed.capacity()) {
            self.recv_armed.shrink_to(self.recv_armed.len() * 2);
        }
        if sparse(self.shutting.len(), self.shutting.capacity()) {
            self.shutting.shrink_to(self.shutting.len() * 2);
        }
        if sparse(self.ops.len(), self.ops.capacity()) {
            // Keys stay valid: only the vacant entries past the last op in flight go.
            self.ops.shrink_to_fit();
        }
        if sparse(self.doomed.len(), self.doomed.capacity()) {
            self.doomed.shrink_to(self.doomed.len() * 2);
        }
        if self.cqes.is_empty() && self.cqes.capacity() > URING_REAP_BATCH {
            // Grown by a reap of everything (a backed-up queue, a handover).
            self.cqes = Vec::with_capacity(URING_REAP_BATCH);
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        self.turn += 1;
        let start = events.len();
        events.append(&mut self.deferred);
        self.budget.new_turn(events);
        self.before_wait();
        self.flush_direct();
        if self.range_narrowed {
            self.range_narrowed = false;
            self.set_alloc_range(self.table as u32);
        }
        let ready =
            events.len() > start || !self.cqes.is_empty() || !self.ring.completion().is_empty();
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
        // In batches, all in this turn: the buffer stays small (a full completion queue
        // copied at once kept 256 KB resident per worker after a burst).
        self.dispatch(events);
        let most = (URING_SQ_ENTRIES * URING_CQ_FACTOR) as usize / URING_REAP_BATCH;
        for _ in 0..most {
            if !self.reap_batch() {
                break;
            }
            self.dispatch(events);
        }
        Ok(())
    }

    fn accept(&mut self, id: ListenerId, out: &mut Vec<Sock>, max: usize) -> io::Result<bool> {
        let Some(i) = self.listeners.iter().position(|l| l.id == id) else {
            return Ok(false);
        };
        let l = &mut self.listeners[i];
        while out.len() < max {
            match l.accepted.pop_front() {
                Some(s) => out.push(s),
                None => break,
            }
        }
        if let Some(e) = l.error.take() {
            return Err(e);
        }
        let more = !l.accepted.is_empty();
        if !l.armed {
            self.arm_accept(i);
        }
        Ok(more)
    }

    fn add(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let i = sock as usize;
        if self.tokens.len() <= i {
            self.tokens.resize(i + 1, Token::NONE);
        }
        self.tokens[i] = token;
        self.arm_input(sock, token);
        Ok(())
    }

    fn recv(&mut self, _sock: Sock, token: Token, buf: &mut [u8]) -> io::Result<usize> {
        self.take_input(token, buf)
    }

    fn send(&mut self, sock: Sock, token: Token, parts: &[Part<'_>]) -> io::Result<()> {
        self.queue_send(sock, token, parts);
        Ok(())
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
        self.truncate_queue(token);
    }

    fn shutdown_write(&mut self, sock: Sock, token: Token) -> io::Result<()> {
        let user_data = on_sock(K_SHUT, token.generation(), sock);
        let entry = on_sock!(self, sock, |fd| opcode::Shutdown::new(fd, libc::SHUT_WR)
            .build()
            .user_data(user_data));
        self.shutting.insert(untagged(user_data), false);
        self.push(entry);
        Ok(())
    }

    fn close(&mut self, sock: Sock, token: Token) {
        crate::debug!("uring: close sock {sock} token {token:?}");
        if let Some(t) = self.tokens.get_mut(sock as usize) {
            if *t == token {
                *t = Token::NONE;
            }
        }
        self.drop_input(token);
        // What is queued behind the send in flight is dropped (as epoll drops what the
        // kernel did not take); the send in flight keeps the socket open until it is done
        // or cancelled at the deadline, so the peer gets what was written before the close.
        self.sends.remove(&token);
        if let Some((idx, _)) = self.ops.iter().find(|(_, op)| op.token == token) {
            self.doomed
                .push_back((Instant::now() + URING_CLOSE_SEND_GRACE, idx, token));
        }
        self.recv_armed.remove(&token);
        let generation = token.generation();
        let kinds: &[u8] = match self.arm {
            Arm::Poll => &[K_POLL, K_RECV],
            Arm::Recv => &[K_RECVM],
        };
        for &kind in kinds {
            let entry = opcode::AsyncCancel2::new(
                CancelBuilder::user_data(on_sock(kind, generation, sock)).all(),
            )
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(misc());
            self.push(entry);
        }
        let key = untagged(on_sock(K_SHUT, generation, sock));
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
        .user_data(misc()));
        self.push(send);
        // Hard-linked: the close runs after the send, whatever its result.
        self.push_close(sock);
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
            .user_data(indexed(K_INSTALL, sock as u32 as usize));
        self.push(entry);
        let fd = self.wait_install(sock).filter(|&f| f >= 0)?;
        // SAFETY: FIXED_FD_INSTALL returned a new descriptor that we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        socket2::SockRef::from(&owned).peer_addr().ok()?.as_socket()
    }

    fn quiesce(&mut self) -> io::Result<()> {
        self.quiesce_all()
    }

    fn thaw(&mut self) {
        self.thaw_all()
    }

    fn export_conn(&self, _sock: Sock, token: Token) -> io::Result<Exported> {
        let mut e = Exported::default();
        self.unsent(token, &mut e.pending);
        self.untaken(token, &mut e.input);
        Ok(e)
    }

    fn handover_fds(&mut self, socks: &[Sock]) -> io::Result<Option<Vec<OwnedFd>>> {
        if !self.direct {
            return Ok(None);
        }
        self.install_all(socks).map(Some)
    }

    fn import_conn(&mut self, fd: Sock, token: Token, state: Exported) -> io::Result<Sock> {
        self.import(fd, token, state)
    }

    fn listener_fds(&self) -> Vec<(ListenerId, i32)> {
        self.listeners
            .iter()
            .map(|l| (l.id, l.sock.as_raw_fd()))
            .collect()
    }

    fn shutdown(&mut self) {
        self.stop_listening();
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(misc());
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
