//! The replica side of a cluster node: messages sequenced by Redis, applied from the
//! feed, and what this node knows of each stream for the re-seed after an outage.

use super::*;

impl Hub {
    /// A message sequenced elsewhere in the cluster (read from the Redis feed): recorded
    /// and delivered like a local publish, unless already seen.
    pub fn deliver_remote(&self, name: &str, epoch: Epoch, seq: u64, sender: &str, content: &str) {
        let now = Instant::now();
        let history_size = self.live.history_size();
        let mut inner = self.lock();
        let Ok(slot) = self.slot_or_create(&mut inner, name, now, true) else {
            return;
        };
        let ch = &mut inner.chans[slot];
        let mut delta = self.enter_epoch(ch, epoch, seq);
        if seq <= ch.seq {
            inner.buffered = inner.buffered.wrapping_add_signed(delta);
            return;
        }
        if ch.seq > 0 && seq > ch.seq + 1 {
            // Seqs this node never saw, which neither the feed nor the fill-in brought (a
            // Redis without persistence that died between answering a publish and
            // carrying it on the feed): the subscribers are told, never left silent.
            let gap = Arc::new(Msg::gap(
                ch.key,
                ch.name.clone(),
                ch.epoch,
                ch.seq + 1,
                seq - 1,
            ));
            self.push_to_subscribers(ch, &gap);
        }
        let msg = ch.data(seq, sender, content.into());
        delta += self.append(ch, msg, history_size, now);
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
        self.remote.fetch_add(1, Ordering::Relaxed);
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells a channel's subscribers that `from..=to` of stream `epoch` can no longer be
    /// delivered.
    pub fn deliver_gap(&self, name: &str, epoch: Epoch, from: u64, to: u64) {
        let mut inner = self.lock();
        let Some(&slot) = inner.names.get(name) else {
            return;
        };
        let ch = &mut inner.chans[slot];
        let mut delta = self.enter_epoch(ch, epoch, from);
        if to > ch.seq {
            delta -= ch.history.len() as isize;
            ch.history.clear();
            ch.seq = to;
            ch.taken = ch.taken.max(to);
            let msg = Arc::new(Msg::gap(ch.key, ch.name.clone(), ch.epoch, from, to));
            self.push_to_subscribers(ch, &msg);
        }
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
    }

    /// On a replica: the channel's stream is now `epoch` (a fill-in found that Redis
    /// moved on); what follows is that stream from its start.
    pub fn enter_stream(&self, name: &str, epoch: Epoch) {
        let mut inner = self.lock();
        let Some(&slot) = inner.names.get(name) else {
            return;
        };
        let ch = &mut inner.chans[slot];
        let delta = self.enter_epoch(ch, epoch, 1);
        inner.buffered = inner.buffered.wrapping_add_signed(delta);
    }

    /// The configured history size (live).
    pub fn history_size(&self) -> usize {
        self.live.history_size()
    }

    /// On a replica: this node's publisher got `seq` of stream `epoch` from Redis (the
    /// feed brings the message later). Raises the floor this node re-seeds Redis with.
    pub fn note_taken(&self, name: &str, epoch: Epoch, seq: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Ok(slot) = self.slot_or_create(&mut inner, name, now, true) else {
            return;
        };
        let ch = &mut inner.chans[slot];
        if ch.epoch.is_none() {
            ch.epoch = epoch;
        }
        if ch.epoch == epoch {
            ch.taken = ch.taken.max(seq);
        }
    }

    /// Another node's presence event: to this node's subscribers of the channel (every
    /// worker's inbox; a worker without subscribers of it ignores it).
    pub fn tell_presence(&self, channel: &str, joined: bool, sub: &str, info: &str) {
        let key = {
            let inner = self.lock();
            let Some(&slot) = inner.names.get(channel) else {
                return;
            };
            inner.chans[slot].key
        };
        let ev = std::sync::Arc::new(crate::presence::PresenceEvent {
            key,
            channel: channel.into(),
            joined,
            sub: sub.into(),
            info: info.into(),
            from: (usize::MAX, crate::reactor::Token::new(0, 0)),
        });
        for inbox in &self.inboxes {
            inbox.push(crate::inbox::Cmd::Presence(ev.clone()));
        }
    }

    /// The stream this node knows for a channel: epoch (none while the stream is empty)
    /// and highest seq it knows taken.
    pub fn local_stream(&self, name: &str) -> Option<(Epoch, u64)> {
        let inner = self.lock();
        let &slot = inner.names.get(name)?;
        let ch = &inner.chans[slot];
        Some((ch.shown_epoch(), ch.seq.max(ch.taken)))
    }

    /// Every channel with a known epoch, with the highest seq this node knows taken (the
    /// re-seed after a Redis outage).
    pub fn local_streams(&self) -> Vec<(String, Epoch, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .filter(|(_, c)| c.epoch.is_some() && !c.closing)
            .map(|(_, c)| (c.name.to_string(), c.epoch, c.seq.max(c.taken)))
            .collect()
    }

    /// Channels with local subscribers, with their epoch and applied seq (the fill-in).
    pub fn local_streams_with_subscribers(&self) -> Vec<(String, Epoch, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .filter(|(_, c)| c.subscribers > 0 && !c.closing)
            .map(|(_, c)| (c.name.to_string(), c.epoch, c.seq))
            .collect()
    }

    /// How many channels have seqs this node handed out that it has not applied yet (a
    /// drain waits for them to come back through the feed).
    pub fn unapplied(&self) -> usize {
        let inner = self.lock();
        inner.chans.iter().filter(|(_, c)| c.taken > c.seq).count()
    }

    /// Channels with local subscribers, with their counts.
    pub fn local_subscriber_counts(&self) -> Vec<(Arc<str>, u64)> {
        let inner = self.lock();
        inner
            .chans
            .iter()
            .filter(|(_, c)| c.subscribers > 0)
            .map(|(_, c)| (c.name.clone(), c.subscribers))
            .collect()
    }
}
