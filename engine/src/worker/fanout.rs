//! Fan-out: the messages of one channel (in seq order) to this worker's subscribers of
//! it. The targets come from the worker's own index (no lock); each target's transport
//! gives the bytes ([`crate::transport`]). A message is encoded once per wire form and
//! the encoding is shared by reference with every subscriber.
//!
//! Subscribers whose wire form is shared get consecutive data messages in one write (or
//! one long-poll answer); the others (and closes, gaps, resets) get them one by one.

use bytes::Bytes;
use std::sync::Arc;

use super::Core;
use crate::conn::State;
use crate::msg::{Msg, MsgKind};
use crate::reactor::Backend;
use crate::transport;

impl<B: Backend> Core<B> {
    /// Delivers messages of one channel (in seq order) to its local subscribers.
    pub(crate) fn fan_out(&mut self, msgs: &[Arc<Msg>]) {
        let [first, ..] = msgs else {
            return;
        };
        if transport::socketio::is_own_room(&first.channel) {
            // A socket's own room has no subscription: its id names the socket.
            for m in msgs {
                transport::socketio::deliver_direct(self, m);
            }
        }
        let Some(local) = self.index.local(first.key) else {
            return;
        };
        if matches!(first.kind, MsgKind::Data | MsgKind::Reset)
            && first.epoch.is_some()
            && self.index.chan(local).epoch != first.epoch
        {
            self.index.chan_mut(local).epoch = first.epoch;
        }
        let all_data = msgs.iter().all(|m| m.kind == MsgKind::Data);
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend_from_slice(&self.index.chan(local).conns);
        // The iframe chunk of each message, for the next iframe subscriber with the same
        // callback (filled only when the channel has iframe subscribers).
        let mut iframe_cache: Vec<Option<(Box<str>, Bytes)>> = Vec::new();
        for &slot in &targets {
            let slot = slot as usize;
            if self.index.local(first.key) != Some(local) {
                // A close delivered earlier in this loop took the channel off the index.
                break;
            }
            let conn = &self.conns[slot];
            if conn.doomed() {
                continue;
            }
            let state = conn.state();
            let shared_form = matches!(state, State::Ws | State::Stream | State::Poll)
                || (state == State::Sse && conn.subs.len() == 1);
            if all_data && shared_form {
                transport::deliver_run(self, slot, local, msgs);
                continue;
            }
            if state == State::Iframe {
                iframe_cache.resize(msgs.len(), None);
            }
            for (i, m) in msgs.iter().enumerate() {
                let mut none = None;
                let cache = iframe_cache.get_mut(i).unwrap_or(&mut none);
                transport::deliver(self, slot, local, m, cache);
            }
        }
        self.targets = targets;
        self.stats.fanout_done(msgs.iter().map(|m| m.sequenced));
    }
}
