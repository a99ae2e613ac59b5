//! The worker's channel index (each channel it has subscribers for, with their slots) and
//! the replay plans of new subscriptions.
//!
//! Fan-out inside a worker takes no lock: [`Index`] is the worker's own. Subscribing goes
//! through the hub (under its lock, so "replay what is buffered" and "receive what is
//! applied from now on" meet without a hole, see `hub`); what the hub says to replay is a
//! [`PendingReplay`], played once every channel of the request is subscribed, so that a
//! stream's first cursor already names all of them.

use slab::Slab;
use std::collections::HashMap;
use std::sync::Arc;

use protocol::message::Message;

use super::remote::ReqKind;
use super::Core;
use crate::conn::Sub;
use crate::epoch::Epoch;
use crate::hub::{HubError, Since, Subscribed};
use crate::memory;
use crate::msg::{ChanKey, Msg};
use crate::reactor::{Backend, TokenState};
use crate::transport;

/// A subscription's cursor carries this bit while its position is being read from Redis:
/// every delivery is at or below it, so none gets through until the read is answered and
/// the cursor is set (seqs never come near 2^63).
pub const PAUSED: u64 = 1 << 63;

/// A worker-local channel: its subscribers on this worker.
#[derive(Debug)]
pub struct LocalChan {
    /// The hub's key of the channel.
    pub key: ChanKey,
    /// Its name.
    pub name: Arc<str>,
    /// The stream's epoch, as last seen here (written in SSE cursors).
    pub epoch: Epoch,
    /// The subscribed connections' slots.
    pub conns: Vec<u32>,
}

/// The channel -> subscribers index.
#[derive(Debug, Default)]
pub struct Index {
    chans: Slab<LocalChan>,
    by_key: HashMap<ChanKey, u32, TokenState>,
}

impl Index {
    /// The local index of a hub channel, when this worker has subscribers for it.
    pub fn local(&self, key: ChanKey) -> Option<u32> {
        self.by_key.get(&key).copied()
    }

    /// A local channel.
    pub fn chan(&self, local: u32) -> &LocalChan {
        &self.chans[local as usize]
    }

    /// A local channel, to change.
    pub fn chan_mut(&mut self, local: u32) -> &mut LocalChan {
        &mut self.chans[local as usize]
    }

    /// Adds `slot` to the channel of `s` (creating its local entry); returns the local
    /// index and the slot's position in its list.
    pub fn attach(&mut self, s: &Subscribed, slot: usize) -> (u32, u32) {
        let local = match self.by_key.get(&s.key) {
            Some(&l) => l,
            None => {
                let l = self.chans.insert(LocalChan {
                    key: s.key,
                    name: s.name.clone(),
                    epoch: s.epoch,
                    conns: Vec::new(),
                }) as u32;
                self.by_key.insert(s.key, l);
                l
            }
        };
        let chan = &mut self.chans[local as usize];
        if chan.epoch.is_none() {
            chan.epoch = s.epoch;
        }
        chan.conns.push(slot as u32);
        (local, chan.conns.len() as u32 - 1)
    }

    /// Removes position `pos` from a channel's list. Returns the channel's key, the slot
    /// that moved into `pos` (its subscription's position is to be fixed) and whether the
    /// channel is gone from the index (its last subscriber here left).
    pub fn detach(&mut self, local: u32, pos: u32) -> (ChanKey, Option<u32>, bool) {
        let chan = &mut self.chans[local as usize];
        chan.conns.swap_remove(pos as usize);
        let moved = chan.conns.get(pos as usize).copied();
        let key = chan.key;
        let empty = chan.conns.is_empty();
        if empty {
            self.by_key.remove(&key);
            self.chans.remove(local as usize);
        }
        (key, moved, empty)
    }

    /// The subscription of `subs` to the channel named `name`.
    pub fn by_name(&self, subs: &[Sub], name: &str) -> Option<u32> {
        subs.iter()
            .map(|s| s.local)
            .find(|&l| &*self.chans[l as usize].name == name)
    }

    /// Gives back the room of channels that are gone.
    pub fn shrink(&mut self) {
        if memory::sparse(self.by_key.len(), self.by_key.capacity()) {
            self.by_key.shrink_to(self.by_key.len() * 2);
        }
        if memory::sparse(self.chans.len(), self.chans.capacity()) {
            self.chans.shrink_to_fit();
        }
    }
}

/// A subscription whose buffered messages are still to be replayed.
pub struct PendingReplay {
    /// The local channel.
    pub local: u32,
    /// Its name.
    pub name: Arc<str>,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The stream's seq at subscription time.
    pub seq: u64,
    /// Asked-for messages no longer buffered.
    pub gap: Option<(u64, u64)>,
    /// The asked position is not in the stream: replayed from its start.
    pub reset: bool,
    /// The messages to replay.
    pub replay: Vec<Arc<Msg>>,
    /// The position to read from Redis (cluster), instead of a replay.
    pub remote: Option<(u64, Epoch)>,
}

impl<B: Backend> Core<B> {
    /// Subscribes connection `slot`; buffered messages to replay are left in
    /// `self.replay`. The new subscription's cursor starts just before what is replayed;
    /// it is paused when the position must be read from Redis. The channel is created
    /// only when `may_create`.
    pub(crate) fn subscribe(
        &mut self,
        slot: usize,
        name: &str,
        since: Since,
        only_if_nothing_to_replay: bool,
        may_create: bool,
    ) -> Result<Subscribed, HubError> {
        let authority = self.authority();
        let s = self.shared.hub.subscribe_with(
            self.id,
            name,
            since,
            authority,
            only_if_nothing_to_replay,
            may_create,
            &mut self.replay,
        )?;
        if s.registered {
            let (local, pos) = self.index.attach(&s, slot);
            let from = match since {
                Since::Now => s.seq,
                Since::Seq(n, _) => n.saturating_sub(1),
            };
            let last_seq = if s.remote {
                PAUSED | from
            } else if s.reset {
                0
            } else {
                from
            };
            self.conns[slot].subs.push(Sub {
                local,
                pos,
                last_seq,
            });
            // A long-poll (the one that subscribes only if nothing is to be replayed) is
            // not a member: it stays only until its answer.
            if !only_if_nothing_to_replay && super::presence::tracked(&self.shared.cfg, &s.name) {
                self.presence_join(slot, s.key, &s.name);
            }
        }
        Ok(s)
    }

    /// Subscribes to every channel before anything is written, so that nothing published
    /// after the response head can be missed; what each channel has to replay is returned
    /// for [`Core::replay_all`]. With `all_or_none` (a request's channels) an error undoes
    /// every subscription of the connection; without (a `sub` op), the others stay. Also
    /// says whether a channel was created.
    pub(crate) fn subscribe_all(
        &mut self,
        slot: usize,
        channels: &[String],
        points: &[Since],
        may_create: bool,
        all_or_none: bool,
    ) -> Result<(Vec<PendingReplay>, bool), HubError> {
        let mut pending = Vec::with_capacity(channels.len());
        let mut created = false;
        for (name, &since) in channels.iter().zip(points) {
            self.replay.clear();
            match self.subscribe(slot, name, since, false, may_create) {
                Ok(s) => {
                    created |= s.created;
                    let remote = match since {
                        Since::Seq(n, e) if s.remote => Some((n, e)),
                        _ => None,
                    };
                    pending.push(PendingReplay {
                        local: self.index.local(s.key).expect("just attached"),
                        name: s.name,
                        epoch: s.epoch,
                        seq: s.seq,
                        gap: s.gap,
                        reset: s.reset,
                        replay: std::mem::take(&mut self.replay),
                        remote,
                    });
                }
                Err(e) => {
                    self.replay.clear();
                    if all_or_none {
                        self.unsubscribe_all(slot);
                    }
                    return Err(e);
                }
            }
        }
        Ok((pending, created))
    }

    /// Replays what [`Core::subscribe_all`] found (a `reset` first where the position is
    /// not in the stream, a `gap` where the history no longer holds it); afterwards each
    /// cursor is at least the channel's seq at subscription time, so deliveries the
    /// replay covered are dropped. Positions to read from Redis are asked for here.
    pub(crate) fn replay_all(&mut self, slot: usize, pending: Vec<PendingReplay>) {
        for p in pending {
            if let Some((n, e)) = p.remote {
                self.request_remote(slot, p.local, &p.name, n, e, ReqKind::Stream);
                continue;
            }
            if p.reset {
                self.index.chan_mut(p.local).epoch = p.epoch;
                let m = Message::Reset {
                    channel: &p.name,
                    epoch: p.epoch.as_str(),
                    seq: p.seq,
                };
                transport::envelope(self, slot, &m);
            }
            if let Some((from, to)) = p.gap {
                self.raise_cursor(slot, p.local, to);
                let m = Message::Gap {
                    channel: &p.name,
                    from,
                    to,
                };
                transport::envelope(self, slot, &m);
            }
            for m in &p.replay {
                transport::deliver(self, slot, p.local, m, &mut None);
            }
            self.raise_cursor(slot, p.local, p.seq);
        }
    }

    /// Moves a subscription's cursor to at least `seq`.
    pub(crate) fn raise_cursor(&mut self, slot: usize, local: u32, seq: u64) {
        if let Some(sub) = self.conns[slot].subs.find_mut(local) {
            sub.last_seq = sub.last_seq.max(seq);
        }
    }

    /// Ends one subscription of a connection.
    pub(crate) fn unsubscribe(&mut self, slot: usize, local: u32) {
        self.leave_presence(slot, local);
        if let Some(sub) = self.conns[slot].subs.remove(local) {
            if sub.last_seq & PAUSED != 0 {
                let token = self.conns.token(slot);
                self.remote.forget(token, Some(local));
            }
            self.detach(local, sub.pos);
        }
    }

    /// Ends every subscription of a connection.
    pub(crate) fn unsubscribe_all(&mut self, slot: usize) {
        if self.conns[slot].subs.is_empty() {
            return;
        }
        let token = self.conns.token(slot);
        self.remote.forget(token, None);
        if !self.shared.cfg.presence.is_empty() {
            let locals: Vec<u32> = self.conns[slot]
                .subs
                .as_slice()
                .iter()
                .map(|s| s.local)
                .collect();
            for local in locals {
                self.leave_presence(slot, local);
            }
        }
        for sub in self.conns[slot].subs.take_all() {
            self.detach(sub.local, sub.pos);
        }
    }

    /// A subscription of a member of a tracked channel ends (a long-poll's is not one).
    fn leave_presence(&mut self, slot: usize, local: u32) {
        if self.shared.cfg.presence.is_empty()
            || self.conns[slot].state() == crate::conn::State::Poll
        {
            return;
        }
        if self.conns[slot].subs.find_mut(local).is_none() {
            return;
        }
        let chan = self.index.chan(local);
        if super::presence::tracked(&self.shared.cfg, &chan.name) {
            let (key, name) = (chan.key, chan.name.clone());
            self.presence_leave(slot, key, &name);
        }
    }

    fn detach(&mut self, local: u32, pos: u32) {
        let (key, moved, gone) = self.index.detach(local, pos);
        if let Some(moved) = moved {
            if let Some(s) = self.conns[moved as usize].subs.find_mut(local) {
                s.pos = pos;
            }
        }
        self.shared.hub.unsubscribe(self.id, key);
        if gone {
            self.freed += 1;
        }
    }
}
