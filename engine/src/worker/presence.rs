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

use std::sync::Arc;

use protocol::message::{self, JsonStyle, Message};

use super::Core;
use crate::inbox::Cmd;
use crate::msg::ChanKey;
use crate::presence::answer_json;
pub use crate::presence::tracked;
use crate::reactor::Backend;

pub use crate::presence::PresenceEvent;

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
        Some(c) => answer_json(&cx.shared, c, id, false)
            .unwrap_or_else(|(code, reason)| error(code, reason)),
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
        if let Some(c) = &self.shared.cluster {
            c.tell_presence(&ev.channel, joined, &ev.sub, &ev.info);
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
