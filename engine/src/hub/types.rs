//! The hub's public types: errors, subscription answers, publish metadata, the ops
//! that carry every change from request to apply, and the hub's setup.

use super::*;

/// Why a hub operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    /// `max_channels` reached (503).
    ChannelLimit,
    /// The published content is larger than `max_message_bytes` (413).
    TooBig,
    /// A worker's inbox is full: the server cannot keep up (503).
    Overloaded,
    /// No such channel (404).
    NoChannel,
    /// The cluster broker is unreachable, or this node cannot deliver: nothing was
    /// accepted (503).
    Unavailable(String),
    /// The request reached Redis but its answer did not come back: the message may or
    /// may not have been published (504). A retry with the same idempotency key is safe.
    Unknown(String),
    /// The server is draining and accepts no more publishes (503).
    Draining,
    /// The disk store failed to write: nothing of this publish was accepted (503).
    Store(String),
    /// Not a channel name (400).
    BadChannel(protocol::message::ChannelError),
}

impl HubError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HubError::ChannelLimit
            | HubError::Overloaded
            | HubError::Unavailable(_)
            | HubError::Draining
            | HubError::Store(_) => 503,
            HubError::Unknown(_) => 504,
            HubError::TooBig => 413,
            HubError::NoChannel => 404,
            HubError::BadChannel(_) => 400,
        }
    }

    /// A reason for the client.
    pub fn reason(&self) -> String {
        match self {
            HubError::ChannelLimit => "channel limit reached (max_channels)".into(),
            HubError::TooBig => "message larger than max_message_bytes".into(),
            HubError::Overloaded => "server overloaded: fan-out queue full".into(),
            HubError::NoChannel => "no such channel".into(),
            HubError::Unavailable(why) => format!("not accepted: {why}"),
            HubError::Unknown(why) => format!(
                "outcome unknown: {why} (the message may have been published; retry with the same key to be safe)"
            ),
            HubError::Draining => "server draining: publishes are not accepted".into(),
            HubError::Store(why) => format!("not accepted: history store failed: {why}"),
            HubError::BadChannel(e) => e.to_string(),
        }
    }
}

/// Where to start a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Only messages published from now on.
    Now,
    /// Replay buffered messages with seq >= N first (a `gap` when N is older than the
    /// buffer); the epoch is the client's, or [`Epoch::NONE`] for a plain seq.
    Seq(u64, Epoch),
}

/// How much of a channel's stream the local hub can answer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Memory and disk modes: the hub holds the stream; it answers every position.
    Hub,
    /// A cluster node with its feed up: its copy answers positions it covers (same
    /// epoch, within its seq and its history); others are read from Redis.
    Replica,
    /// A cluster node with its feed down: every position is read from Redis.
    Stale,
}

/// The result of a subscription.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The channel's key.
    pub key: ChanKey,
    /// The channel's name (shared).
    pub name: Arc<str>,
    /// The stream's epoch ([`Epoch::NONE`] on a cluster node that has not learned it).
    pub epoch: Epoch,
    /// The channel's seq at subscription time.
    pub seq: u64,
    /// `(from, to)`: asked-for messages no longer buffered.
    pub gap: Option<(u64, u64)>,
    /// The asked-for position is not in this stream: a `reset` goes first, and the
    /// replay starts at the stream's beginning.
    pub reset: bool,
    /// The position must be read from Redis (nothing was replayed; the subscription is
    /// registered so that nothing published from now on is missed).
    pub remote: bool,
    /// Whether the subscriber was registered (see [`Hub::subscribe`]).
    pub registered: bool,
    /// The subscription created the channel.
    pub created: bool,
}

/// A channel's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Name.
    pub name: String,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Last seq.
    pub seq: u64,
    /// Subscribers on all workers.
    pub subscribers: u64,
    /// Messages in the history ring.
    pub buffered: usize,
}

/// Where to report a publish that is applied later (disk store): the worker's inbox
/// gets a [`Cmd::PubDone`] with the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify {
    /// The worker.
    pub worker: usize,
    /// The connection's token.
    pub token: crate::reactor::Token,
}

/// How a publish is made.
#[derive(Debug, Clone, Copy)]
pub struct PubMeta<'a> {
    /// An idempotency key.
    pub key: Option<&'a str>,
    /// Who publishes (a client's token `sub`, stamped as `from`); empty for backends.
    pub sender: &'a str,
    /// Who to tell when it is applied (a worker's client publish, disk store).
    pub notify: Option<Notify>,
    /// Who commits it (disk store).
    pub commit: Commit,
}

impl Default for PubMeta<'_> {
    fn default() -> Self {
        PubMeta {
            key: None,
            sender: "",
            notify: None,
            commit: Commit::ByWriter,
        }
    }
}

/// A publish the hub accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The message's seq.
    pub seq: u64,
    /// Its stream's epoch.
    pub epoch: Epoch,
    /// An idempotency key matched an earlier publish: its seq, nothing published again.
    pub duplicate: bool,
    /// With the disk store: the store ticket to wait for before acknowledging (see
    /// [`Store::committed`]); 0 when the message is already applied.
    pub ticket: u64,
}

/// An idempotency record kept for a channel and key.
#[derive(Debug, Clone)]
pub struct IdemRecord {
    /// The key.
    pub key: Box<str>,
    /// Unix seconds at which the record is forgotten.
    pub expires: u64,
}

/// A change requested under the hub lock and applied after it (at once in memory mode,
/// after the commit with the disk store).
#[derive(Debug)]
pub enum Op {
    /// A published message.
    Append {
        /// The message.
        msg: Arc<Msg>,
        /// Its idempotency key, to store beside it.
        idem: Option<IdemRecord>,
        /// Who to tell once it is applied.
        notify: Option<Notify>,
    },
    /// Close the channel: subscribers get `close`; the stream ends.
    Close {
        /// The closing channel.
        key: ChanKey,
        /// Its name.
        name: Arc<str>,
    },
    /// Drop the channel's history (its seq goes on).
    Clear {
        /// The channel.
        key: ChanKey,
        /// Its name.
        name: Arc<str>,
    },
    /// The channel was reclaimed (store only: the hub removed it at the request).
    Drop {
        /// Its name.
        name: Arc<str>,
    },
    /// An idempotency record expired (store only).
    Forget {
        /// The channel.
        channel: Arc<str>,
        /// The key.
        key: Box<str>,
    },
    /// Start draining the workers, behind everything accepted before.
    Drain,
    /// Undo a drain: every worker listens again and answers on `reply`.
    Resume {
        /// Where each worker answers.
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
}

/// Totals for `/info` and `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubTotals {
    /// Channels.
    pub channels: usize,
    /// Subscriptions on all workers.
    pub subscriptions: u64,
    /// Messages buffered in all history rings.
    pub buffered: usize,
}

/// How a hub is set up.
pub struct HubConfig {
    /// Live keys (history size, message size).
    pub live: Arc<Live>,
    /// `max_channels`.
    pub max_channels: usize,
    /// `channel_ttl_secs`.
    pub channel_ttl: Duration,
    /// `idempotency_window_secs`.
    pub idempotency_window: Duration,
    /// `idempotency_max_keys`.
    pub idempotency_max_keys: usize,
    /// A cluster replica (messages sequenced by Redis).
    pub replica: bool,
}

/// What [`Hub::replay_after`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Everything after the asked seq was copied; the channel's seq.
    Done(u64),
    /// The channel is now in another stream (epoch, seq).
    OtherEpoch(Epoch, u64),
    /// The local history does not reach back to the asked seq.
    Short,
    /// The channel is gone.
    Gone,
}

impl HubConfig {
    /// The hub settings of a configuration.
    pub fn from_config(cfg: &crate::config::Config, live: Arc<Live>, replica: bool) -> HubConfig {
        HubConfig {
            live,
            max_channels: cfg.max_channels,
            channel_ttl: crate::config::secs(cfg.channel_ttl_secs),
            idempotency_window: crate::config::secs(cfg.idempotency_window_secs),
            idempotency_max_keys: cfg.idempotency_max_keys,
            replica,
        }
    }
}
