//! Presence: who is subscribed to the channels the `presence` patterns name.
//!
//! A member is a token's `sub` (all its connections together), or one anonymous
//! connection (`anon:<worker>:<slot>:<generation>`). The process-wide table
//! ([`Presence`], in `Shared`) counts each member's connections per channel; the first
//! connection of a member joining and the last one leaving are events, sent to the
//! channel's subscribers on every worker as `join` / `leave` envelopes, which take no seq
//! and no history slot. A crashed client leaves when its connection is closed (EOF, or
//! the heartbeat timeout). Long-polls are not members: each request subscribes only
//! until it is answered.
//!
//! Listing (`presence` WebSocket op, `GET /presence?channel=`) gives the count of
//! members and up to [`MAX_PRESENCE_LIST`] of them; a channel outside the patterns has
//! only its subscriber count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use protocol::message::{self, JsonStyle, Message};

use super::Core;
use crate::config::pattern_matches;
use crate::inbox::Cmd;
use crate::limits::MAX_PRESENCE_LIST;
use crate::msg::ChanKey;
use crate::reactor::Backend;

/// One member of a channel.
#[derive(Debug, Clone)]
struct Member {
    /// The token's `info` claim (JSON text), or empty.
    info: Box<str>,
    /// Its connections subscribed to the channel.
    conns: u32,
}

/// A channel's members by `sub`.
type Members = HashMap<Box<str>, Member>;

/// The members of each tracked channel, process-wide.
#[derive(Debug, Default)]
pub struct Presence {
    chans: Mutex<HashMap<Arc<str>, Members>>,
}

/// A join or a leave, for the workers to deliver.
#[derive(Debug)]
pub struct PresenceEvent {
    /// The channel's key (its subscribers in each worker's index).
    pub key: ChanKey,
    /// The channel.
    pub channel: Arc<str>,
    /// Joined, or left.
    pub joined: bool,
    /// The member.
    pub sub: Box<str>,
    /// Its `info` (JSON text) or empty.
    pub info: Box<str>,
    /// The connection whose subscription it is (worker, token): not told of itself.
    pub from: (usize, crate::reactor::Token),
}

/// One listing: the member count and some members (sub, info, connections).
pub type Listing = (usize, Vec<(Box<str>, Box<str>, u32)>);

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Members>> {
        self.chans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more connection of `sub` on `channel`; true when the member is new there.
    pub fn join(&self, channel: &Arc<str>, sub: &str, info: &str) -> bool {
        let mut chans = self.lock();
        let members = chans.entry(channel.clone()).or_default();
        match members.get_mut(sub) {
            Some(m) => {
                m.conns += 1;
                false
            }
            None => {
                members.insert(
                    sub.into(),
                    Member {
                        info: info.into(),
                        conns: 1,
                    },
                );
                true
            }
        }
    }

    /// One connection of `sub` fewer; true when the member has left the channel.
    pub fn leave(&self, channel: &str, sub: &str) -> bool {
        let mut chans = self.lock();
        let Some(members) = chans.get_mut(channel) else {
            return false;
        };
        let gone = match members.get_mut(sub) {
            Some(m) if m.conns > 1 => {
                m.conns -= 1;
                false
            }
            Some(_) => {
                members.remove(sub);
                true
            }
            None => false,
        };
        if members.is_empty() {
            chans.remove(channel);
        }
        gone
    }

    /// The members of `channel` (at most [`MAX_PRESENCE_LIST`], by `sub`).
    pub fn list(&self, channel: &str) -> Listing {
        let chans = self.lock();
        let Some(members) = chans.get(channel) else {
            return (0, Vec::new());
        };
        let mut list: Vec<(Box<str>, Box<str>, u32)> = members
            .iter()
            .map(|(s, m)| (s.clone(), m.info.clone(), m.conns))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list.truncate(MAX_PRESENCE_LIST);
        (members.len(), list)
    }
}

/// Whether `channel`'s presence is tracked.
pub fn tracked(cfg: &crate::config::Config, channel: &str) -> bool {
    !cfg.presence.is_empty() && cfg.presence.iter().any(|p| pattern_matches(p, channel))
}

/// The presence answer: `{"type":"presence","channel":...,"count":N,"members":[...]}`
/// (`id` added when given), for a tracked channel; else the subscriber count alone.
pub fn answer_json(
    shared: &crate::shared::Shared,
    channel: &str,
    id: Option<&str>,
) -> Result<Vec<u8>, (u16, String)> {
    message::validate_channel(channel).map_err(|e| (400, e.to_string()))?;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"presence\",\"channel\":");
    message::write_json_string(&mut out, channel, JsonStyle::Plain);
    if tracked(&shared.cfg, channel) {
        let (count, members) = shared.presence.list(channel);
        out.extend_from_slice(format!(",\"count\":{count},\"members\":[").as_bytes());
        for (i, (sub, info, conns)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"sub\":");
            message::write_json_string(&mut out, sub, JsonStyle::Plain);
            if !info.is_empty() {
                out.extend_from_slice(b",\"info\":");
                out.extend_from_slice(info.as_bytes());
            }
            out.extend_from_slice(format!(",\"conns\":{conns}}}").as_bytes());
        }
        out.push(b']');
        if members.len() < count {
            out.extend_from_slice(b",\"truncated\":true");
        }
    } else {
        // Cluster-wide where there is a cluster (the count Redis has).
        let subscribers = shared
            .channel_info(channel)
            .map_or(0, |(i, _)| i.subscribers);
        out.extend_from_slice(format!(",\"count\":{subscribers},\"tracked\":false").as_bytes());
    }
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// The `presence` WebSocket op.
pub fn op<B: Backend>(cx: &mut Core<B>, slot: usize, channel: Option<&str>, id: Option<&str>) {
    let error = |code: u16, reason: String| {
        let mut json = Vec::with_capacity(96);
        message::write_json(
            &mut json,
            &Message::Error {
                code,
                reason: &reason,
            },
            JsonStyle::Plain,
        );
        json.pop();
        json.extend_from_slice(b",\"op\":\"presence\"");
        if let Some(id) = id {
            json.extend_from_slice(b",\"id\":");
            json.extend_from_slice(id.as_bytes());
        }
        json.push(b'}');
        json
    };
    let json = match channel {
        None => error(400, "presence needs a channel".into()),
        Some(_) if !cx.shared.cfg.presence_public => error(
            403,
            "presence is not served on the subscriber port (presence_public)".into(),
        ),
        Some(c)
            if cx.shared.token_auth()
                && !cx.conns[slot]
                    .ext
                    .as_ref()
                    .and_then(|e| e.grant.as_deref())
                    .is_some_and(|g| g.allows(c)) =>
        {
            error(403, crate::auth::TokenError::Channel.reason().into())
        }
        Some(c) => {
            answer_json(&cx.shared, c, id).unwrap_or_else(|(code, reason)| error(code, reason))
        }
    };
    let mut out = Vec::with_capacity(json.len() + 10);
    message::write_ws_frame(&mut out, &json);
    cx.send(slot, &[crate::reactor::Part::Copy(&out)]);
}

impl<B: Backend> Core<B> {
    /// Who the connection in `slot` is, as a member: its token's `sub` and `info`, or
    /// itself.
    fn member(&self, slot: usize) -> (Box<str>, Box<str>) {
        let grant = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.grant.as_deref());
        match grant.and_then(|g| g.sub.clone()) {
            Some(sub) => (sub, grant.and_then(|g| g.info.clone()).unwrap_or_default()),
            None => {
                let g = self.conns[slot].generation;
                (
                    format!("anon:{}:{slot}:{g}", self.id).into(),
                    Box::default(),
                )
            }
        }
    }

    /// The connection in `slot` subscribed to a tracked channel.
    pub(crate) fn presence_join(&mut self, slot: usize, key: ChanKey, channel: &Arc<str>) {
        let (sub, info) = self.member(slot);
        if self.shared.presence.join(channel, &sub, &info) {
            self.tell_presence(slot, key, channel, true, sub, info);
        }
    }

    /// The connection in `slot` left a tracked channel.
    pub(crate) fn presence_leave(&mut self, slot: usize, key: ChanKey, channel: &Arc<str>) {
        let (sub, info) = self.member(slot);
        if self.shared.presence.leave(channel, &sub) {
            self.tell_presence(slot, key, channel, false, sub, info);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tell_presence(
        &mut self,
        slot: usize,
        key: ChanKey,
        channel: &Arc<str>,
        joined: bool,
        sub: Box<str>,
        info: Box<str>,
    ) {
        let ev = Arc::new(PresenceEvent {
            key,
            channel: channel.clone(),
            joined,
            sub,
            info,
            from: (self.id, self.conns.token(slot)),
        });
        for inbox in &self.shared.inboxes {
            inbox.push(Cmd::Presence(ev.clone()));
        }
    }

    /// A join or leave: to this worker's subscribers of the channel.
    pub(crate) fn on_presence(&mut self, ev: &PresenceEvent) {
        let Some(local) = self.index.local(ev.key) else {
            return;
        };
        let targets: Vec<u32> = self.index.chan(local).conns.clone();
        let msg = Message::Presence {
            joined: ev.joined,
            channel: &ev.channel,
            sub: &ev.sub,
            info: &ev.info,
        };
        let me = (ev.from.0 == self.id).then_some(ev.from.1);
        for slot in targets {
            let slot = slot as usize;
            if !self.conns[slot].doomed() && me != Some(self.conns.token(slot)) {
                crate::transport::envelope(self, slot, &msg);
            }
        }
    }
}
