//! Redis reads a connection waits for (cluster mode): a subscription's position that this
//! node's copy of the stream cannot answer, or a long-poll's `next_seq`.
//!
//! The read goes to the cluster's helper thread; its answer comes back through the inbox
//! ([`crate::inbox::Cmd::Remote`]). Meanwhile the subscription's cursor is paused (see
//! [`super::index::PAUSED`]), so what the feed delivers waits; once the read is answered,
//! what Redis had is replayed, then what this node applied since.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

use protocol::message::Message;

use super::index::PAUSED;
use super::Core;
use crate::cluster::helper::{answer_failed, Job, ReplyTo};
use crate::conn::State;
use crate::epoch::Epoch;
use crate::hub::{CatchUp, HubError};
use crate::inbox::{RemoteReply, RemoteStream};
use crate::msg::{Msg, MsgKind};
use crate::reactor::{Backend, Token};
use crate::transport::{self, poll};

/// What a read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqKind {
    /// A streaming subscription's replay.
    Stream,
    /// A long-poll, answered with what the read finds.
    Poll,
    /// A long-poll's `next_seq`.
    NextSeq,
}

/// A Redis read a connection waits for.
#[derive(Debug, Clone, Copy)]
pub struct RemoteReq {
    /// The connection.
    pub token: Token,
    /// Its subscription (for `NextSeq`: the channel's place in the poll).
    pub local: u32,
    /// The asked position (for SSE cursors while waiting).
    pub since: u64,
    /// Its epoch.
    pub epoch: Epoch,
    /// What it is for.
    pub kind: ReqKind,
}

/// The reads in flight, by request number.
#[derive(Debug, Default)]
pub struct Remote {
    map: HashMap<u64, RemoteReq>,
    next: u64,
}

impl Remote {
    /// Forgets the reads a connection's subscription (or every one of its, with `None`)
    /// waits for.
    pub fn forget(&mut self, token: Token, local: Option<u32>) {
        if !self.map.is_empty() {
            self.map
                .retain(|_, r| !(r.token == token && local.is_none_or(|l| l == r.local)));
        }
    }

    /// The read a subscription waits for.
    pub fn asked(&self, token: Token, local: u32) -> Option<&RemoteReq> {
        self.map
            .values()
            .find(|r| r.token == token && r.local == local)
    }
}

/// One item a Redis replay emits.
enum Emit<'a> {
    Msg(&'a Arc<Msg>),
    Envelope(&'a Message<'a>),
}

impl<B: Backend> Core<B> {
    /// Asks the helper thread to read a position from Redis for subscription `local` of
    /// `slot` (or, for [`ReqKind::NextSeq`], the stream's state; `local` is then the
    /// channel's place in the poll).
    pub(crate) fn request_remote(
        &mut self,
        slot: usize,
        local: u32,
        name: &Arc<str>,
        since: u64,
        epoch: Epoch,
        kind: ReqKind,
    ) {
        let token = self.conns.token(slot);
        self.remote.next += 1;
        let req = self.remote.next;
        let r = RemoteReq {
            token,
            local,
            since,
            epoch,
            kind,
        };
        self.remote.map.insert(req, r);
        let Some(cluster) = self.shared.cluster.clone() else {
            return;
        };
        let job = Job::Read {
            to: ReplyTo {
                worker: self.id,
                token,
            },
            req,
            channel: name.clone(),
            since: (kind != ReqKind::NextSeq).then_some((since, epoch)),
            deadline: self.now + cluster.history_wait(),
        };
        if let Err(job) = cluster.submit_read(&self.shared.hub, job) {
            let e = HubError::Overloaded;
            answer_failed(std::slice::from_ref(&self.inbox), job, &e);
        }
    }

    /// A Redis read a connection waited for came back.
    pub(crate) fn on_remote(&mut self, reply: RemoteReply) {
        let Some(req) = self.remote.map.remove(&reply.req) else {
            return;
        };
        if !self.conns.alive(req.token) {
            return;
        }
        let slot = req.token.slot();
        if req.kind == ReqKind::NextSeq {
            self.on_next_seq(slot, req, reply.result);
            return;
        }
        let waiting = self.conns[slot]
            .subs
            .find_mut(req.local)
            .is_some_and(|s| s.last_seq & PAUSED != 0);
        if !waiting {
            return;
        }
        match reply.result {
            Ok(stream) => self.replay_remote(slot, req, stream),
            Err(reason) => {
                if let Some(sub) = self.conns[slot].subs.find_mut(req.local) {
                    sub.last_seq = req.since.saturating_sub(1);
                }
                let name = self.index.chan(req.local).name.clone();
                let reason = format!("cannot replay {name}: {reason}");
                let err = Message::Error {
                    code: 503,
                    reason: &reason,
                };
                if req.kind == ReqKind::Poll {
                    let item = poll::item(self, slot, &err);
                    poll::answer(self, slot, &[item]);
                } else {
                    transport::envelope(self, slot, &err);
                }
            }
        }
    }

    /// Replays what Redis holds from the asked position, then what this node applied
    /// since the read; a long-poll is answered with it (or keeps waiting when it is
    /// nothing).
    fn replay_remote(&mut self, slot: usize, req: RemoteReq, stream: RemoteStream) {
        let local = req.local;
        let (key, name) = {
            let c = self.index.chan(local);
            (c.key, c.name.clone())
        };
        let poll = req.kind == ReqKind::Poll;
        let mut items: Vec<Bytes> = Vec::new();
        if let Some(sub) = self.conns[slot].subs.find_mut(local) {
            sub.last_seq = if stream.reset {
                0
            } else {
                req.since.saturating_sub(1)
            };
        }
        let epoch = stream.epoch;
        if epoch.is_some() {
            self.index.chan_mut(local).epoch = epoch;
        }
        if stream.reset {
            let m = Message::Reset {
                channel: &name,
                epoch: epoch.as_str(),
                seq: stream.seq,
            };
            self.emit(slot, local, Emit::Envelope(&m), poll, &mut items);
        }
        if let Some((from, to)) = stream.gap {
            let m = Message::Gap {
                channel: &name,
                from,
                to,
            };
            self.emit(slot, local, Emit::Envelope(&m), poll, &mut items);
        }
        for (seq, sender, content) in stream.messages {
            let m = Arc::new(
                Msg::new(key, name.clone(), epoch, seq, MsgKind::Data, content).with_sender(sender),
            );
            self.emit(slot, local, Emit::Msg(&m), poll, &mut items);
        }
        if self.catch_up(slot, req, (epoch, stream.seq), &mut items) && poll && !items.is_empty() {
            poll::answer(self, slot, &items);
        }
    }

    /// After a Redis replay: what the feed brought while Redis was being read. False when
    /// more had to be asked from Redis (the read goes on).
    fn catch_up(
        &mut self,
        slot: usize,
        req: RemoteReq,
        (mut epoch, mut cursor): (Epoch, u64),
        items: &mut Vec<Bytes>,
    ) -> bool {
        let (local, poll) = (req.local, req.kind == ReqKind::Poll);
        let (key, name) = {
            let c = self.index.chan(local);
            (c.key, c.name.clone())
        };
        loop {
            self.raise_cursor(slot, local, cursor);
            let mut replay = std::mem::take(&mut self.replay);
            replay.clear();
            let found = self
                .shared
                .hub
                .replay_after(key, epoch, cursor, &mut replay);
            for m in &replay {
                self.emit(slot, local, Emit::Msg(m), poll, items);
            }
            replay.clear();
            self.replay = replay;
            match found {
                CatchUp::Done(_) | CatchUp::Gone => return true,
                CatchUp::OtherEpoch(e, seq) => {
                    // The stream started again meanwhile: this node's copy is the newer.
                    epoch = e;
                    self.index.chan_mut(local).epoch = e;
                    if let Some(sub) = self.conns[slot].subs.find_mut(local) {
                        sub.last_seq = 0;
                    }
                    let m = Message::Reset {
                        channel: &name,
                        epoch: e.as_str(),
                        seq,
                    };
                    self.emit(slot, local, Emit::Envelope(&m), poll, items);
                    cursor = 0;
                }
                CatchUp::Short => {
                    // More arrived than this node keeps: read the rest from Redis.
                    if poll && !items.is_empty() {
                        return true;
                    }
                    if let Some(sub) = self.conns[slot].subs.find_mut(local) {
                        sub.last_seq = PAUSED | cursor;
                    }
                    self.request_remote(slot, local, &name, cursor + 1, epoch, req.kind);
                    return false;
                }
            }
        }
    }

    /// Sends one replayed item to a streaming subscriber, or collects it for a poll.
    fn emit(&mut self, slot: usize, local: u32, e: Emit<'_>, poll: bool, items: &mut Vec<Bytes>) {
        match e {
            Emit::Msg(m) => {
                let Some(sub) = self.conns[slot].subs.find_mut(local) else {
                    return;
                };
                if m.seq <= sub.last_seq {
                    return;
                }
                if poll {
                    sub.last_seq = m.seq;
                    items.push(poll::msg_item(&self.conns[slot], m));
                } else {
                    transport::deliver(self, slot, local, m, &mut None);
                }
            }
            Emit::Envelope(m) if poll => {
                let item = poll::item(self, slot, m);
                items.push(item);
            }
            Emit::Envelope(m) => transport::envelope(self, slot, m),
        }
    }

    /// A long-poll's `next_seq` read from Redis came back.
    fn on_next_seq(&mut self, slot: usize, req: RemoteReq, result: Result<RemoteStream, String>) {
        if self.conns[slot].state() != State::Poll {
            return;
        }
        let i = req.local as usize;
        let Some(name) = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.poll_names.get(i).cloned())
        else {
            return;
        };
        let item = match &result {
            Ok(s) => poll::item(
                self,
                slot,
                &Message::NextSeq {
                    channel: &name,
                    seq: s.seq + 1,
                    epoch: s.epoch.as_str(),
                },
            ),
            Err(reason) => {
                let reason = format!("cannot read {name} from redis: {reason}");
                poll::item(
                    self,
                    slot,
                    &Message::Error {
                        code: 503,
                        reason: &reason,
                    },
                )
            }
        };
        let ext = self.conns[slot].ext();
        if let Some(place) = ext.poll_items.get_mut(i) {
            *place = Some(item);
        }
        if ext.poll_items.iter().all(Option::is_some) {
            let items: Vec<Bytes> = ext.poll_items.drain(..).flatten().collect();
            ext.poll_names.clear();
            poll::answer(self, slot, &items);
        }
    }
}
