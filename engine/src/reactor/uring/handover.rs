//! The io_uring backend's part of a hot handover (see the module doc of `super`, "Hot
//! handover"): stopping everything in flight, installing process descriptors for a
//! batch, thawing; in the successor, taking sockets into the direct table.

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fixed, SubmitArgs, Timespec};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::userdata::*;
use super::{Arm, Uring};
use crate::limits::URING_QUIESCE_WAIT;
use crate::reactor::{Backend, Event, Exported, Part, Sock, Token};
use crate::warn;

impl Uring {
    /// Submits and reaps until `done` says so or [`URING_QUIESCE_WAIT`] passed; what is
    /// reaped is dispatched (its events kept for the next wait).
    pub(super) fn settle(&mut self, mut done: impl FnMut(&mut Uring) -> bool) -> bool {
        let deadline = Instant::now() + URING_QUIESCE_WAIT;
        while !done(self) {
            if Instant::now() >= deadline {
                return false;
            }
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            let mut events = std::mem::take(&mut self.deferred);
            self.dispatch(&mut events);
            self.deferred = events;
        }
        true
    }

    /// Installs process descriptors for direct descriptors (IORING_OP_FIXED_FD_INSTALL),
    /// in one submission, and waits for them all.
    pub(super) fn install_all(&mut self, socks: &[Sock]) -> io::Result<Vec<OwnedFd>> {
        let mut got: HashMap<u64, i32> = HashMap::with_capacity(socks.len());
        for &sock in socks {
            let entry = opcode::FixedFdInstall::new(Fixed(sock as u32), 0)
                .build()
                .user_data(indexed(K_INSTALL, sock as u32 as usize));
            self.push(entry);
        }
        let want: HashSet<u64> = socks
            .iter()
            .map(|&s| indexed(K_INSTALL, s as u32 as usize))
            .collect();
        let deadline = Instant::now() + URING_QUIESCE_WAIT;
        while got.len() < want.len() && Instant::now() < deadline {
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut rest = Vec::new();
            let mut found = 0;
            for cqe in self.ring.completion() {
                let (u, res) = (cqe.user_data(), cqe.result());
                if want.contains(&u) {
                    got.insert(u, res);
                    found += 1;
                } else {
                    rest.push((u, res, cqe.flags()));
                }
            }
            self.in_flight = self.in_flight.saturating_sub(found);
            self.cqes.extend(rest);
        }
        // What was installed is owned here from now on (closed on an error).
        let mut fds = Vec::with_capacity(socks.len());
        let mut failed = None;
        for &sock in socks {
            match got.get(&indexed(K_INSTALL, sock as u32 as usize)) {
                // SAFETY: FIXED_FD_INSTALL returned a new descriptor that we own.
                Some(&fd) if fd >= 0 => fds.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Some(&e) => failed = failed.or(Some(io::Error::from_raw_os_error(-e))),
                None => failed = failed.or(Some(io::Error::other("descriptor installs timed out"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(fds),
        }
    }

    /// Lets the kernel allocate direct descriptors in `[0, len)` only
    /// (IORING_REGISTER_FILE_ALLOC_RANGE, which the crate does not wrap).
    pub(super) fn set_alloc_range(&mut self, len: u32) {
        let range = FileIndexRange {
            off: 0,
            len,
            resv: 0,
        };
        // SAFETY: io_uring_register(2) on our ring's descriptor with a pointer to a live
        // `io_uring_file_index_range` (layout: two u32 and a u64) and nr_args 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
                REGISTER_FILE_ALLOC_RANGE,
                &range as *const FileIndexRange,
                0,
            )
        };
        if r < 0 {
            warn!(
                "io_uring: cannot set the direct descriptors' allocation range: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Puts the descriptors a hot handover brought into the direct descriptor table, at
    /// the slots [`Backend::import_conn`] gave them, in one registration per run of
    /// consecutive slots, and closes them (the table holds the sockets). Runs before
    /// anything is submitted, so before any accept could take one of those slots: the
    /// kernel's allocator skips them from then on.
    pub(super) fn flush_direct(&mut self) {
        if self.to_register.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.to_register);
        list.sort_unstable_by_key(|&(slot, _)| slot);
        // Until the worker runs, the accepts' allocations stay below the slots taken over
        // (they are taken from the top down); its first wait gives the whole table back
        // (the slots taken are marked used by then).
        self.set_alloc_range(self.table as u32 - self.next_import);
        self.range_narrowed = true;
        let mut at = 0;
        while at < list.len() {
            let start = list[at].0;
            let run = list[at..]
                .iter()
                .enumerate()
                .take_while(|(i, (slot, _))| *slot == start + *i as u32)
                .count();
            let fds: Vec<i32> = list[at..at + run].iter().map(|&(_, fd)| fd).collect();
            if let Err(e) = self.ring.submitter().register_files_update(start, &fds) {
                // Their operations fail (EBADF), which closes the connections.
                warn!("io_uring: {run} connections taken over could not be registered: {e}");
            }
            for fd in fds {
                // SAFETY: the descriptor came with a handover record and is ours; the
                // table took its own reference to the socket.
                unsafe {
                    libc::close(fd);
                }
            }
            at += run;
        }
    }

    pub(super) fn quiesce_all(&mut self) -> io::Result<()> {
        self.submit();
        self.quiet = true;
        // Each operation by its own user data first: the kernel finds a poll by hashing
        // it, while a cancel of "any" scans its whole table for every match (quadratic:
        // ~300 ms for 5,000 idle sockets). "Any" then takes the rest (accepts, the
        // waker, shutdowns).
        let mut targets: Vec<u64> = Vec::with_capacity(self.tokens.len() + self.ops.len());
        for (sock, &token) in self.tokens.iter().enumerate() {
            if token == Token::NONE {
                continue;
            }
            let (sock, generation) = (sock as Sock, token.generation());
            match self.arm {
                Arm::Poll => {
                    targets.push(on_sock(K_POLL, generation, sock));
                    if self.recv_armed.contains(&token) {
                        targets.push(on_sock(K_RECV, generation, sock));
                    }
                }
                Arm::Recv => targets.push(on_sock(K_RECVM, generation, sock)),
            }
        }
        targets.extend(self.ops.iter().map(|(idx, _)| indexed(K_SEND, idx)));
        for ud in targets {
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud))
                .build()
                .user_data(misc());
            self.push(entry);
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(misc());
        self.push(entry);
        if !self.settle(|u| u.in_flight == 0) {
            let n = self.in_flight;
            self.thaw_all();
            return Err(io::Error::other(format!(
                "{n} io_uring operations did not stop"
            )));
        }
        self.parked = self.ops.iter().map(|(i, op)| (op.token, i)).collect();
        Ok(())
    }

    pub(super) fn thaw_all(&mut self) {
        if !self.quiet {
            return;
        }
        self.quiet = false;
        self.parked.clear();
        self.arm_waker();
        let ops: Vec<usize> = self.ops.iter().map(|(i, _)| i).collect();
        for idx in ops {
            self.submit_op(idx);
        }
        // Every receive was cancelled: arm every live connection again.
        self.recv_armed.clear();
        self.retry.clear();
        let live: Vec<(Sock, Token)> = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| **t != Token::NONE)
            .map(|(s, t)| (s as Sock, *t))
            .collect();
        for (sock, token) in live {
            self.arm_input(sock, token);
        }
        // The worker's next accept arms the listeners again (or keeps one paused).
        for l in &self.listeners {
            if !l.armed {
                self.deferred.push(Event::Acceptable(l.id));
            }
        }
    }

    pub(super) fn import(&mut self, fd: Sock, token: Token, state: Exported) -> io::Result<Sock> {
        let sock = if self.direct {
            // From the top of the table down, registered before the next submission
            // (`flush_direct`), which also keeps the kernel's allocator below them.
            if self.next_import as usize + 2 * crate::limits::REJECT_BATCH >= self.table {
                return Err(io::Error::other("the direct descriptor table is full"));
            }
            self.next_import += 1;
            let slot = self.table as u32 - self.next_import;
            self.to_register.push((slot, fd));
            slot as Sock
        } else {
            fd
        };
        if !state.input.is_empty() {
            self.early.insert(token, (state.input, 0));
        }
        self.add(sock, token)?;
        if !state.pending.is_empty() {
            let pending = bytes::Bytes::from(state.pending);
            self.queue_send(sock, token, &[Part::Shared(&pending)]);
        }
        Ok(sock)
    }
}

/// `IORING_REGISTER_FILE_ALLOC_RANGE`.
const REGISTER_FILE_ALLOC_RANGE: libc::c_long = 25;

/// `struct io_uring_file_index_range`.
#[repr(C)]
struct FileIndexRange {
    off: u32,
    len: u32,
    resv: u64,
}
