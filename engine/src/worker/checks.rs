//! Deadlines a connection has besides its state's own timer: *checks*, entries in the
//! worker's timer wheel marked with [`CHECK_TAG`] and validated when they fire (a stale
//! one does nothing), so they need no room in the connection record. A connection has at
//! most one check in the wheel at a time ([`crate::conn::Ext::check_at`]); a check that
//! fires handles every deadline that has come and schedules the next.
//!
//! - **Messages must complete**: a WebSocket message (or frame) begun must end within
//!   `message_timeout_secs`, or the connection is closed (1008).
//! - **A token's rights last as long as the token**: when `exp` passes the connection
//!   gets `{"type":"refresh","expires":E,"deadline":D}`; a WebSocket that sends
//!   `{"op":"refresh","token":T}` before `deadline` (`token_grace_secs` later) goes on, a
//!   stream must reconnect with a new token; at `deadline` the connection is closed (1008
//!   "token expired" / end of stream). A held long-poll ends by its own timeout.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::message::Message;
use protocol::ws::CloseCode;

use super::http::unix_now;
use super::Core;
use crate::conn::State;
use crate::limits::{MIN_CHECK_DELAY, TICK};
use crate::metrics::Counter;
use crate::reactor::Backend;
use crate::transport;

/// Tag of a check entry in the timer wheel (see `reactor::token`).
pub const CHECK_TAG: u8 = 1;

/// How long until the Unix time `exp` (seconds) is reached, at least
/// [`MIN_CHECK_DELAY`].
fn until_unix(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp)
        .saturating_sub(now)
        .max(MIN_CHECK_DELAY)
}

impl<B: Backend> Core<B> {
    /// Schedules the check of the connection's token at its expiry.
    pub(crate) fn watch_token(&mut self, slot: usize) {
        let Some(exp) = self.conns[slot]
            .ext
            .as_ref()
            .and_then(|e| e.grant.as_ref())
            .map(|g| g.exp)
        else {
            return;
        };
        let at = self.now + until_unix(exp);
        self.schedule_check(slot, at);
    }

    /// After WebSocket input: a message begun is timed, a finished one is not.
    pub(crate) fn watch_message(&mut self, slot: usize) {
        let now = self.now;
        let conn = &mut self.conns[slot];
        let partial = !conn.ws.is_idle();
        let since = conn.ext.as_ref().and_then(|e| e.partial_since);
        match (partial, since) {
            (true, None) => {
                conn.ext().partial_since = Some(now);
                let at = now + self.message_timeout();
                self.schedule_check(slot, at);
            }
            (false, Some(_)) => {
                if let Some(e) = conn.ext.as_mut() {
                    e.partial_since = None;
                }
                conn.shrink();
            }
            _ => {}
        }
    }

    fn message_timeout(&self) -> Duration {
        crate::config::secs(self.shared.cfg.message_timeout_secs)
    }

    /// Makes sure a check runs by `at`: a check already due sooner does it (and
    /// schedules what is left), so a connection has one entry in the wheel at a time.
    fn schedule_check(&mut self, slot: usize, at: Instant) {
        let token = self.conns.token(slot);
        let ext = self.conns[slot].ext();
        if ext.check_at.is_some_and(|t| t <= at) {
            return;
        }
        ext.check_at = Some(at);
        self.wheel.insert(at, token.tagged(CHECK_TAG));
    }

    /// `at` has come (the wheel fires up to a tick early).
    fn due(&self, at: Instant) -> bool {
        self.now + TICK >= at
    }

    /// A check came due: an unfinished message, an expired token.
    pub(crate) fn on_check(&mut self, slot: usize) {
        let now = self.now;
        let conn = &mut self.conns[slot];
        let (ws, poll) = (conn.state().is_ws(), conn.state() == State::Poll);
        let Some(ext) = conn.ext.as_mut() else {
            return;
        };
        match ext.check_at {
            Some(t) if now + TICK >= t => ext.check_at = None,
            // Superseded by a sooner check, which ran and scheduled what was left.
            _ => return,
        }
        let partial = ext.partial_since;
        let exp = ext.grant.as_ref().map(|g| g.exp);
        let token_deadline = ext.token_deadline;
        if let (Some(since), true) = (partial, ws) {
            let at = since + self.message_timeout();
            if self.due(at) {
                self.stats.inc(Counter::MessageTimeout);
                let reason = "message not completed within message_timeout_secs";
                transport::ws::fail(self, slot, CloseCode::POLICY, reason);
                return;
            }
            self.schedule_check(slot, at);
        }
        match exp {
            Some(exp) if !poll => self.check_expiry(slot, exp, token_deadline),
            _ => {}
        }
    }

    /// The token part of a check: notice at `exp`, close at the deadline.
    fn check_expiry(&mut self, slot: usize, exp: u64, deadline: Option<Instant>) {
        if exp > unix_now() {
            // Early (the wheel's granularity, a clock step): look again at `exp`.
            let at = self.now + until_unix(exp);
            self.schedule_check(slot, at);
            return;
        }
        match deadline {
            None => {
                let grace = crate::config::secs(self.shared.cfg.token_grace_secs);
                let deadline = self.now + grace;
                self.conns[slot].ext().token_deadline = Some(deadline);
                self.schedule_check(slot, deadline);
                let notice = Message::Refresh {
                    expires: exp,
                    deadline: unix_now() + grace.as_secs(),
                };
                transport::envelope(self, slot, &notice);
            }
            Some(d) if self.due(d) => {
                self.stats.inc(Counter::TokenExpired);
                self.auth_failed(slot, "token", "token expired (not refreshed)");
                transport::end(self, slot, CloseCode::POLICY, "token expired");
            }
            Some(d) => self.schedule_check(slot, d),
        }
    }
}
