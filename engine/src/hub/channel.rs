//! One channel: its stream (epoch, seq), its history ring and subscriber count.

use super::*;

pub(super) struct Channel {
    pub(super) name: Arc<str>,
    pub(super) key: ChanKey,
    pub(super) epoch: Epoch,
    /// Last seq applied (what subscribers see).
    pub(super) seq: u64,
    /// Highest seq handed out: with the disk store, seqs waiting for their commit; in a
    /// cluster, seqs this node's publishers got from Redis before the feed brought them.
    pub(super) taken: u64,
    pub(super) history: VecDeque<Arc<Msg>>,
    pub(super) per_worker: Box<[u32]>,
    pub(super) subscribers: u64,
    pub(super) idle_since: Instant,
    /// Ops in the store not yet applied (a channel with some is never reclaimed).
    pub(super) pending: u32,
    /// Closed: off the name table, waiting for its close to be applied.
    pub(super) closing: bool,
}

impl Channel {
    /// The epoch clients are told: none until the stream has a message (an empty
    /// stream is the same whatever its epoch, and a channel freed while empty must not
    /// make a client's next position look like another stream's).
    pub(super) fn shown_epoch(&self) -> Epoch {
        if self.seq == 0 && self.taken == 0 {
            Epoch::NONE
        } else {
            self.epoch
        }
    }

    /// Nothing would be lost by forgetting it: no subscriber, nothing published, nothing
    /// waiting.
    pub(super) fn is_disposable(&self) -> bool {
        self.subscribers == 0
            && self.seq == 0
            && self.taken == 0
            && self.history.is_empty()
            && self.pending == 0
            && !self.closing
    }

    pub(super) fn info(&self) -> ChannelInfo {
        ChannelInfo {
            name: self.name.to_string(),
            epoch: self.shown_epoch(),
            seq: self.seq,
            subscribers: self.subscribers,
            buffered: self.history.len(),
        }
    }

    /// A data message of this channel's stream.
    pub(super) fn data(&self, seq: u64, sender: &str, content: Box<str>) -> Arc<Msg> {
        let m = Msg::new(
            self.key,
            self.name.clone(),
            self.epoch,
            seq,
            MsgKind::Data,
            content,
        );
        Arc::new(if sender.is_empty() {
            m
        } else {
            m.with_sender(sender.into())
        })
    }

    pub(super) fn oldest(&self) -> u64 {
        self.history.front().map_or(self.seq + 1, |m| m.seq)
    }

    /// Copies messages with seq >= `since` into `out`; returns the gap, if any.
    pub(super) fn replay(&self, since: u64, out: &mut Vec<Arc<Msg>>) -> Option<(u64, u64)> {
        let since = since.max(1);
        if since > self.seq {
            return None;
        }
        let oldest = self.oldest();
        let gap = (since < oldest).then(|| (since, oldest - 1));
        let skip = since.saturating_sub(oldest) as usize;
        out.extend(self.history.iter().skip(skip).cloned());
        gap
    }
}

/// What a subscription from a position needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    Live,
    From(u64),
    Reset,
    Remote,
}
