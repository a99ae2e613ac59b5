//! A worker's inbox: a lock-free queue plus a wake-up of the worker's reactor.
//!
//! Producers (publishers, the control socket, other threads) push a [`Cmd`] and wake the
//! worker only when it is not already awake for an earlier push: the `woken` flag turns a
//! burst of publishes into one wake-up syscall. The worker clears the flag before it
//! drains the queue, so a push that races with the drain triggers a fresh wake-up.

use crossbeam_queue::SegQueue;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::epoch::Epoch;
use crate::msg::Msg;
use crate::reactor::Token;

/// Something a worker can be woken with.
pub trait Wake: Send + Sync {
    /// Wakes the worker's reactor.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        // A failed wake (eventfd full) means a wake-up is already pending.
        let _ = mio::Waker::wake(self);
    }
}

/// One connection as listed by `conns`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnInfo {
    /// `worker:slot:generation`, the id `kick` takes.
    pub id: String,
    /// Transport (`ws`, `sse`, `poll`, `stream`, `iframe`, `http`).
    pub transport: &'static str,
    /// Peer address.
    pub peer: String,
    /// Subscribed channels.
    pub channels: Vec<String>,
    /// Its token's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Bytes queued and not yet written.
    pub queued: usize,
}

/// The outcome of a publish a WebSocket client made, answered after the fact (a disk-store
/// commit, a Redis round trip on a helper thread).
#[derive(Debug)]
pub struct PubDone {
    /// The publishing connection.
    pub token: Token,
    /// The channel.
    pub channel: Arc<str>,
    /// `(seq, epoch, duplicate)`, or `(status, reason)`.
    pub result: Result<(u64, Epoch, bool), (u16, String)>,
}

/// What a Redis read for a subscription found (cluster mode): the stream as Redis has it
/// from the asked position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStream {
    /// The stream's epoch in Redis ([`Epoch::NONE`]: Redis has no stream for the channel).
    pub epoch: Epoch,
    /// Its last seq.
    pub seq: u64,
    /// The asked position is not in this stream: the messages are from its start.
    pub reset: bool,
    /// Buffered messages from the asked seq (or from 1 after a reset), in order: seq,
    /// sender, content.
    pub messages: Vec<(u64, Box<str>, Box<str>)>,
    /// Asked-for messages no longer buffered.
    pub gap: Option<(u64, u64)>,
}

/// The answer to a Redis request a worker made for one of its connections.
#[derive(Debug)]
pub struct RemoteReply {
    /// The connection.
    pub token: Token,
    /// The worker's request id.
    pub req: u64,
    /// The stream, or why it could not be read.
    pub result: Result<RemoteStream, String>,
}

/// Work for a worker.
pub enum Cmd {
    /// Deliver a message (or a channel close) to local subscribers.
    Deliver(Arc<Msg>),
    /// A client publish's outcome.
    PubDone(PubDone),
    /// A Redis read's outcome.
    Remote(RemoteReply),
    /// Someone joined or left a channel whose presence is tracked.
    Presence(Arc<crate::worker::presence::PresenceEvent>),
    /// Socket.IO: a request for a session of this worker, an answer, a moved session.
    Sio(Box<crate::transport::socketio::SioCmd>),
    /// Close one connection; replies whether it existed.
    Kick {
        /// The connection.
        token: Token,
        /// Reply channel.
        reply: Sender<bool>,
    },
    /// List up to `limit` connections (only those of `user`, when given).
    Conns {
        /// Most connections to list.
        limit: usize,
        /// Only the connections whose token's `sub` is this.
        user: Option<Box<str>>,
        /// Reply channel.
        reply: Sender<Vec<ConnInfo>>,
    },
    /// Stop accepting and close every connection gracefully.
    Drain,
    /// Undo a drain: listen again (the listeners bound anew); answers on `reply`.
    Resume {
        /// The outcome.
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
    /// Exit the worker loop now.
    Shutdown,
    /// A hot handover (`crate::handover`): serialize every connection (closing nothing),
    /// answer on `reply`, then block until `resume` says whether to go on or to stop
    /// without closing anything.
    Freeze {
        /// The listeners and connections, or why they cannot be handed over.
        reply: Sender<Result<crate::handover::Frozen, String>>,
        /// What to do once the handover is decided.
        resume: std::sync::mpsc::Receiver<crate::handover::Resume>,
        /// The last attempt: TLS handshakes in progress are closed rather than refuse.
        last: bool,
    },
}

/// The inbox of one worker.
pub struct Inbox {
    queue: SegQueue<Cmd>,
    len: AtomicUsize,
    woken: AtomicBool,
    waker: Option<Arc<dyn Wake>>,
}

impl Inbox {
    /// An inbox that wakes `waker` on push.
    pub fn new(waker: Arc<dyn Wake>) -> Inbox {
        Inbox {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            woken: AtomicBool::new(false),
            waker: Some(waker),
        }
    }

    /// An inbox with no reactor behind it (tests).
    pub fn detached() -> Inbox {
        Inbox {
            queue: SegQueue::new(),
            len: AtomicUsize::new(0),
            woken: AtomicBool::new(false),
            waker: None,
        }
    }

    /// Queues a command and wakes the worker if it is not already awake.
    pub fn push(&self, cmd: Cmd) {
        self.queue.push(cmd);
        self.len.fetch_add(1, Ordering::Relaxed);
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Some(w) = &self.waker {
                w.wake();
            }
        }
    }

    /// Called by the worker before draining: later pushes wake it again.
    pub fn arm(&self) {
        self.woken.store(false, Ordering::Release);
    }

    /// Takes the next command.
    pub fn pop(&self) -> Option<Cmd> {
        let cmd = self.queue.pop();
        if cmd.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        cmd
    }

    /// Commands waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
