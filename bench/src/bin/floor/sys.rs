//! The few libc calls the floor benchmark needs: epoll, signals, killing process groups,
//! and tying a child's life to its parent's. Every `unsafe` block of the binary is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// A level-triggered epoll instance that reports readability.
pub struct Epoll {
    fd: OwnedFd,
}

/// One ready descriptor: the token it was registered with.
pub type Event = libc::epoll_event;

/// An empty event slot for the buffer handed to [`Epoll::wait`].
pub const NO_EVENT: Event = libc::epoll_event { events: 0, u64: 0 };

/// The token of a ready event (read out of the packed struct by value).
pub fn token(ev: &Event) -> u64 {
    ev.u64
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is a new
        // descriptor that nothing else owns, so OwnedFd may take it.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by no one else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Watches `fd` for input (level-triggered), reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open (the caller keeps `fd` alive while it is
        // registered) and `ev` is a valid epoll_event that outlives the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns how many slots of `events` were
    /// filled; an interrupted wait returns 0.
    pub fn wait(&self, events: &mut [Event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid, writable buffer of at least `max` epoll_event
        // slots for the duration of the call; the kernel writes at most `max` of them.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// The last termination signal received (0: none yet).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Routes SIGINT, SIGTERM and SIGHUP to a flag that [`signalled`] reads (a watchdog
/// thread acts on it). Handlers are reset to the default in exec'd children.
pub fn catch_termination_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only stores into an
        // atomic, which is async-signal-safe; signal() takes no pointers besides it.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

/// The termination signal received so far, if any.
pub fn signalled() -> Option<i32> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// SIGKILL to the process group led by `pid` (children are started as group leaders) and
/// to `pid` itself.
pub fn kill_tree(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill() takes no pointers; signalling a group or process that is gone
    // only returns ESRCH.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

/// In a forked child before exec: have the kernel SIGKILL it when the thread that
/// started it exits (the coordinator's main thread), so no child outlives a coordinator
/// that was killed with SIGKILL. Async-signal-safe (one prctl and one getppid).
pub fn die_with_parent(parent: i32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes an integer argument only; getppid takes none.
    // Both are async-signal-safe, as required between fork and exec.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            // The parent died before the prctl took effect.
            libc::_exit(1);
        }
    }
    Ok(())
}

/// Starts `cmd` as the leader of its own process group (so a Ctrl-C at the terminal
/// reaches only the coordinator, which then kills the whole group) and makes the kernel
/// kill it when the coordinator's main thread goes away.
pub fn spawn_guarded(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as i32;
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, _exit); it allocates nothing and
    // touches no locks.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    cmd.spawn()
}
