//! Whole-channel operations (broadcast, close, clear), draining, listings and totals,
//! and the sweep that reclaims idle channels.

use super::*;

impl Hub {
    /// Publishes `content` to every channel; returns how many, and the last ticket.
    pub fn broadcast(&self, content: &str) -> Result<(usize, u64), HubError> {
        if content.len() > self.live.max_message_bytes() {
            return Err(HubError::TooBig);
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.draining {
            return Err(HubError::Draining);
        }
        self.check_frozen()?;
        let slots: Vec<usize> = inner.names.values().copied().collect();
        let mut n = 0;
        let mut ticket = 0;
        for slot in slots {
            let meta = PubMeta::default();
            let a = self.request_append(&mut inner, slot, content.into(), None, &meta, now)?;
            ticket = ticket.max(a.ticket);
            n += 1;
        }
        Ok((n, ticket))
    }

    /// Closes a channel: its subscribers get `close` and are unsubscribed, its history is
    /// dropped and the name is free again (a new stream, with a new epoch, can start at
    /// once). Returns the store ticket (0 when applied).
    pub fn close_channel(&self, name: &str) -> Result<u64, HubError> {
        let mut inner = self.lock();
        let slot = inner.names.remove(name).ok_or(HubError::NoChannel)?;
        let ch = &mut inner.chans[slot];
        ch.closing = true;
        let op = Op::Close {
            key: ch.key,
            name: ch.name.clone(),
        };
        Ok(self.dispatch(&mut inner, slot, op, Commit::ByWriter))
    }

    /// Drops a channel's history (its seq goes on). Returns the store ticket.
    pub fn clear(&self, name: &str) -> Result<u64, HubError> {
        let mut inner = self.lock();
        let slot = *inner.names.get(name).ok_or(HubError::NoChannel)?;
        let ch = &inner.chans[slot];
        let op = Op::Clear {
            key: ch.key,
            name: ch.name.clone(),
        };
        Ok(self.dispatch(&mut inner, slot, op, Commit::ByWriter))
    }

    /// Refuses publishes from now on (the first step of a drain).
    pub fn refuse_publishes(&self) {
        self.lock().draining = true;
    }

    /// Starts a drain: from now on publishes are refused, and every worker gets
    /// [`Cmd::Drain`] behind every message accepted before. False when it was already
    /// started.
    pub fn begin_drain(&self) -> bool {
        let mut inner = self.lock();
        if inner.drain_sent {
            return false;
        }
        inner.draining = true;
        inner.drain_sent = true;
        match &self.store {
            None => self.apply_locked(&mut inner, Op::Drain, false),
            Some(s) => {
                s.enqueue(Op::Drain, Commit::ByWriter);
            }
        }
        true
    }

    /// Undoes a drain: publishes are accepted again, and every worker gets
    /// [`Cmd::Resume`] (answering on `reply`) behind the drain command, so it cannot
    /// overtake it.
    pub fn resume(&self, reply: std::sync::mpsc::Sender<Result<(), String>>) {
        let mut inner = self.lock();
        inner.draining = false;
        inner.drain_sent = false;
        let op = Op::Resume { reply };
        match &self.store {
            None => self.apply_locked(&mut inner, op, false),
            Some(s) => {
                s.enqueue(op, Commit::ByWriter);
            }
        }
    }

    /// True once a drain started.
    pub fn draining(&self) -> bool {
        self.lock().draining
    }

    /// Channels whose name starts with `prefix`, sorted by name, at most `limit`.
    pub fn channels(&self, prefix: &str, limit: usize) -> Vec<ChannelInfo> {
        let limit = limit.min(MAX_LISTING);
        let inner = self.lock();
        let mut names: Vec<(&Arc<str>, usize)> = inner
            .names
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, &s)| (n, s))
            .collect();
        names.sort_unstable_by(|a, b| a.0.cmp(b.0));
        names
            .into_iter()
            .take(limit)
            .map(|(_, s)| inner.chans[s].info())
            .collect()
    }

    /// Totals over every channel.
    pub fn totals(&self) -> HubTotals {
        let inner = self.lock();
        HubTotals {
            channels: inner.chans.len(),
            subscriptions: inner.subscriptions,
            buffered: inner.buffered,
        }
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.lock().chans.len()
    }

    /// Reclaims empty channels idle for longer than `channel_ttl_secs`, looking at
    /// [`SWEEP_BATCH`] slots per call, and forgets expired idempotency records. Returns
    /// how many channels were reclaimed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        self.expire_idem(&mut inner);
        let cap = inner.chans.capacity();
        if cap == 0 {
            return 0;
        }
        let start = inner.sweep_cursor % cap;
        let end = (start + SWEEP_BATCH).min(cap);
        let mut dead = Vec::new();
        for slot in start..end {
            if let Some(ch) = inner.chans.get(slot) {
                if ch.subscribers == 0
                    && ch.pending == 0
                    && !ch.closing
                    && now.saturating_duration_since(ch.idle_since) >= self.channel_ttl
                {
                    dead.push(slot);
                }
            }
        }
        inner.sweep_cursor = if end >= cap { 0 } else { end };
        for slot in &dead {
            let ch = inner.chans.remove(*slot);
            inner.names.remove(&ch.name);
            inner.buffered -= ch.history.len();
            if let Some(s) = &self.store {
                s.enqueue(Op::Drop { name: ch.name }, Commit::ByWriter);
            }
        }
        Self::shrink(&mut inner);
        dead.len()
    }

    pub(super) fn expire_idem(&self, inner: &mut Inner) {
        let now = unix_now();
        while inner.idem.order.front().is_some_and(|e| e.0 <= now) {
            let (_, c, k) = inner.idem.order.pop_front().expect("checked above");
            let key = (c, k);
            if inner.idem.map.get(&key).is_some_and(|e| e.expires <= now) {
                inner.idem.map.remove(&key);
                self.forget_in_store(key.0, key.1);
            }
        }
    }
}
