//! WebSocket client operations (`{"op":...}`: `sub`, `unsub`, `pub`, `ping`, `refresh`)
//! and what bounds one connection so that it cannot hurt the others:
//!
//! - **Its token's rights last as long as the token.** When `exp` passes the connection
//!   gets `{"type":"refresh","expires":E,"deadline":D}`; a WebSocket that sends
//!   `{"op":"refresh","token":T}` before `deadline` (`token_grace_secs` later) goes on, a
//!   stream must reconnect with a new token; at `deadline` the connection is closed (1008
//!   "token expired" / end of stream). Meanwhile `sub` and `pub` are refused (401).
//! - **What it may publish** is `client_publish` and, with `auth = "token"`, its token's
//!   `pub` claim too; the token's `sub` is stamped on what it publishes (`"from"`).
//! - **Rate limits**, token buckets per connection: channel creations by `sub`
//!   (`max_channel_creates_per_conn` per second, `channel_creates_burst` at once) and
//!   publishes (`client_publish_rate`, `client_publish_burst`), answered 429; past
//!   [`REFUSALS_BEFORE_CLOSE`] refusals the connection is closed (1008). A connection's
//!   buckets exist only while one of them is below its burst.
//! - **Messages must complete**: a message (or frame) begun must end within
//!   `message_timeout_secs`, or the connection is closed (1008).
//!
//! The token and message deadlines are *checks*: entries in the worker's timer wheel
//! tagged [`CHECK_TAG`], validated when they fire (a stale one does nothing), so they
//! need no room in the connection record.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::{self, Message};
use protocol::ws::CloseCode;

use super::*;
use crate::limits::{LIMITER_SWEEP, MIN_CHECK_DELAY, REFUSALS_BEFORE_CLOSE};
use crate::shared::ClientPublish;

/// Tag of a check entry in the timer wheel (tokens use the low 56 bits).
pub const CHECK_TAG: u64 = 1 << 56;

/// A client operation on a WebSocket (`{"op":"sub",...}`).
#[derive(serde::Deserialize)]
pub(super) struct Op<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    since: Option<SinceValue<'a>>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
}

/// `since` of a `sub` op: a number, or a position string (`"12@k3x9ab2q"`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(super) enum SinceValue<'a> {
    Num(u64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

/// A token bucket: `rate` per second, at most `burst` at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: u32) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(f64::from(burst));
        self.at = now;
    }

    /// Takes one; false when the bucket is empty.
    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now: Instant, rate: f64, burst: u32) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + dt * rate >= f64::from(burst)
    }
}

/// A connection's rate limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limiter {
    creates: Bucket,
    pubs: Bucket,
    refused: u32,
}

/// What a rate limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Limit {
    Creates,
    Publishes,
}

impl<B: Backend> Worker<B> {
    pub(super) fn op_error(&mut self, slot: usize, code: u16, reason: &str) {
        self.send_envelope(slot, &Message::Error { code, reason });
    }

    pub(super) fn on_client_op(&mut self, slot: usize, text: &[u8]) {
        let op: Op<'_> = match serde_json::from_slice(text) {
            Ok(op) => op,
            Err(e) => {
                let reason = format!("invalid op: {e}");
                self.op_error(slot, 400, &reason);
                return;
            }
        };
        match &*op.op {
            "ping" => self.send_envelope(slot, &Message::Pong),
            "sub" => self.op_sub(slot, &op),
            "unsub" => {
                let Some(name) = op.channel.as_deref() else {
                    return self.op_error(slot, 400, "unsub needs a channel");
                };
                match self.local_by_name(slot, name) {
                    Some(local) => self.unsubscribe(slot, local),
                    None => self.op_error(slot, 404, "not subscribed"),
                }
            }
            "pub" => self.op_pub(slot, &op),
            "refresh" => self.op_refresh(slot, op.token.as_deref()),
            other => {
                let reason = format!(
                    "unknown op '{}'",
                    other.chars().take(32).collect::<String>()
                );
                self.op_error(slot, 400, &reason);
            }
        }
    }

    fn op_sub(&mut self, slot: usize, op: &Op<'_>) {
        let Some(name) = op.channel.as_deref() else {
            return self.op_error(slot, 400, "sub needs a channel");
        };
        if let Err(e) = message::validate_channel(name) {
            return self.op_error(slot, 400, &e.to_string());
        }
        if self.local_by_name(slot, name).is_some() {
            return self.op_error(slot, 409, "already subscribed");
        }
        let max = self.shared.cfg.max_channels_per_conn;
        if self.conns[slot].subs.len() >= max {
            let reason = format!("too many channels on one connection (max {max})");
            return self.op_error(slot, 400, &reason);
        }
        if let Err((code, reason)) = self.token_rights(slot) {
            return self.op_error(slot, code, reason);
        }
        if self.shared.token_auth() {
            let allowed = self.grant(slot).is_some_and(|g| g.allows(name));
            if !allowed {
                return self.op_error(slot, 403, auth::TokenError::Channel.reason());
            }
        }
        let since = match op_since(op.since.as_ref(), op.epoch.as_deref()) {
            Ok(s) => s,
            Err(e) => return self.op_error(slot, 400, &e),
        };
        // A sub that creates a channel takes from the connection's bucket; once it is
        // empty, subs to channels that exist still work.
        let may_create = self.limit_available(slot, Limit::Creates);
        match self.subscribe_all_creating(slot, name, since, may_create) {
            Ok((pending, created)) => {
                if created {
                    self.take_limit(slot, Limit::Creates);
                }
                self.replay_all(slot, pending);
            }
            Err(HubError::NoChannel) if !may_create => {
                self.stats.inc(Counter::CreateLimited);
                self.op_error(
                    slot,
                    429,
                    "creating channels too fast (max_channel_creates_per_conn)",
                );
                self.count_refusal(slot);
            }
            Err(e) => self.op_error(slot, e.status(), &e.reason()),
        }
    }

    fn op_pub(&mut self, slot: usize, op: &Op<'_>) {
        let Some(name) = op.channel.as_deref() else {
            return self.op_error(slot, 400, "pub needs a channel");
        };
        let Some(content) = op.content.as_deref() else {
            return self.op_error(slot, 400, "pub needs a string content");
        };
        let allowed = self
            .shared
            .cfg
            .client_publish
            .iter()
            .any(|p| crate::config::pattern_matches(p, name));
        if !allowed {
            return self.op_error(slot, 403, "clients may not publish to this channel");
        }
        if let Err((code, reason)) = self.token_rights(slot) {
            return self.op_error(slot, code, reason);
        }
        if self.shared.token_auth() && !self.grant(slot).is_some_and(|g| g.may_publish(name)) {
            return self.op_error(
                slot,
                403,
                "the token does not grant publishing to this channel (its pub claim)",
            );
        }
        if !self.take_limit(slot, Limit::Publishes) {
            self.stats.inc(Counter::PublishLimited);
            self.op_error(slot, 429, "publishing too fast (client_publish_rate)");
            self.count_refusal(slot);
            return;
        }
        self.client_publish(slot, name, content);
    }

    /// `{"op":"refresh","token":T}`: a new token for the connection, without
    /// reconnecting. It must grant every channel the connection is subscribed to.
    fn op_refresh(&mut self, slot: usize, token: Option<&str>) {
        if !self.shared.token_auth() {
            return self.op_error(slot, 400, "refresh needs auth = \"token\"");
        }
        let Some(token) = token else {
            return self.op_error(slot, 400, "refresh needs a token");
        };
        let grant = match auth::verify(token, self.shared.cfg.token_secret.as_bytes(), unix_now()) {
            Ok(g) => g,
            Err(e) => return self.op_error(slot, 401, e.reason()),
        };
        let missing = self.conns[slot]
            .subs
            .as_slice()
            .iter()
            .map(|s| &self.chans[s.local as usize].name)
            .find(|name| !grant.allows(name))
            .cloned();
        if let Some(name) = missing {
            let reason = format!("the new token does not grant {name}");
            return self.op_error(slot, 403, &reason);
        }
        let expires = grant.exp;
        let ext = self.conns[slot].ext();
        ext.grant = Some(Box::new(grant));
        ext.token_deadline = None;
        self.watch_token(slot);
        self.send_envelope(slot, &Message::Refreshed { expires });
    }

    /// A WebSocket client's publish: answered now in memory mode, after the commit with
    /// the disk store, after the helper thread's round trip in a cluster.
    fn client_publish(&mut self, slot: usize, name: &str, content: &str) {
        let token = token_of(slot, self.conns[slot].generation);
        let sender: Box<str> = self
            .grant(slot)
            .and_then(|g| g.sub.clone())
            .unwrap_or_default();
        let to = ReplyTo {
            worker: self.id,
            token,
        };
        match self.shared.publish_client(name, content, sender, to) {
            Ok(ClientPublish::Now(a)) => self.on_pub_done(PubDone {
                token,
                channel: Arc::from(name),
                result: Ok((a.seq, a.epoch, a.duplicate)),
            }),
            Ok(ClientPublish::Later) => {}
            Err(e) => self.op_error(slot, e.status(), &e.reason()),
        }
    }

    /// A client publish's outcome.
    pub(super) fn on_pub_done(&mut self, done: PubDone) {
        let (slot, generation) = split_token(done.token);
        if !self.alive(slot, generation) || self.conns[slot].state != State::Ws {
            return;
        }
        match done.result {
            Ok((seq, epoch, duplicate)) => {
                self.stats.inc(Counter::ClientPublished);
                self.send_envelope(
                    slot,
                    &Message::Ok {
                        channel: &done.channel,
                        seq,
                        epoch: epoch.as_str(),
                        duplicate,
                    },
                );
            }
            Err((status, reason)) => self.op_error(slot, status, &reason),
        }
    }

    // ------------------------------------------------------------------ token rights

    fn grant(&self, slot: usize) -> Option<&auth::Grant> {
        self.conns[slot].ext.as_ref()?.grant.as_deref()
    }

    /// `Err` once the connection's token has expired (until a `refresh`).
    fn token_rights(&self, slot: usize) -> Result<(), (u16, &'static str)> {
        match self.grant(slot) {
            Some(g) if g.exp <= unix_now() => Err((401, "token expired: send a refresh op")),
            _ => Ok(()),
        }
    }

    /// Schedules the check of the connection's token at its expiry.
    pub(super) fn watch_token(&mut self, slot: usize) {
        let Some(exp) = self.grant(slot).map(|g| g.exp) else {
            return;
        };
        let left = until_unix(exp);
        self.schedule_check(slot, self.now + left);
    }

    /// Makes sure a check runs by `at`: a check already due sooner does it (and
    /// schedules what is left), so a connection has one entry in the wheel at a time.
    fn schedule_check(&mut self, slot: usize, at: Instant) {
        let token = token_of(slot, self.conns[slot].generation);
        let ext = self.conns[slot].ext();
        if ext.check_at.is_some_and(|t| t <= at) {
            return;
        }
        ext.check_at = Some(at);
        self.wheel.insert(at, token | CHECK_TAG);
    }

    /// `at` has come (the wheel fires up to a tick early).
    fn due(&self, at: Instant) -> bool {
        self.now + crate::limits::TICK >= at
    }

    /// After WebSocket input: a message begun is timed, a finished one is not.
    pub(super) fn watch_message(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let partial = !conn.ws.is_idle();
        let since = conn.ext.as_ref().and_then(|e| e.partial_since);
        match (partial, since) {
            (true, None) => {
                conn.ext().partial_since = Some(self.now);
                let at = self.now + self.message_timeout();
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

    /// A check came due: an unfinished message, an expired token.
    pub(super) fn on_check(&mut self, slot: usize) {
        let now = self.now;
        let conn = &mut self.conns[slot];
        let (ws, poll) = (conn.state.is_ws(), conn.state == State::Poll);
        let Some(ext) = conn.ext.as_mut() else {
            return;
        };
        match ext.check_at {
            Some(t) if now + crate::limits::TICK >= t => ext.check_at = None,
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
                self.ws_fail(
                    slot,
                    CloseCode::POLICY,
                    "message not completed within message_timeout_secs",
                );
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
                self.send_envelope(slot, &notice);
            }
            Some(d) if self.due(d) => {
                self.stats.inc(Counter::TokenExpired);
                self.end(slot, CloseCode::POLICY, "token expired");
            }
            Some(d) => self.schedule_check(slot, d),
        }
    }

    // ------------------------------------------------------------------ rate limits

    fn limit_params(&self, limit: Limit) -> (f64, u32) {
        let cfg = &self.shared.cfg;
        match limit {
            Limit::Creates => (cfg.max_channel_creates_per_conn, cfg.channel_creates_burst),
            Limit::Publishes => (cfg.client_publish_rate, cfg.client_publish_burst),
        }
    }

    fn limiter(&mut self, slot: usize) -> &mut Limiter {
        let now = self.now;
        let (cb, pb) = (
            self.shared.cfg.channel_creates_burst,
            self.shared.cfg.client_publish_burst,
        );
        self.limiters.entry(slot).or_insert_with(|| Limiter {
            creates: Bucket::full(cb, now),
            pubs: Bucket::full(pb, now),
            refused: 0,
        })
    }

    fn limit_available(&mut self, slot: usize, limit: Limit) -> bool {
        let (rate, burst) = self.limit_params(limit);
        let now = self.now;
        let Some(l) = self.limiters.get_mut(&slot) else {
            return true;
        };
        let b = match limit {
            Limit::Creates => &mut l.creates,
            Limit::Publishes => &mut l.pubs,
        };
        b.refill(now, rate, burst);
        b.tokens >= 1.0
    }

    /// Takes one from a bucket; false when it is empty.
    fn take_limit(&mut self, slot: usize, limit: Limit) -> bool {
        let (rate, burst) = self.limit_params(limit);
        let now = self.now;
        let l = self.limiter(slot);
        let b = match limit {
            Limit::Creates => &mut l.creates,
            Limit::Publishes => &mut l.pubs,
        };
        b.take(now, rate, burst)
    }

    /// One more refusal; past [`REFUSALS_BEFORE_CLOSE`] the connection is closed.
    fn count_refusal(&mut self, slot: usize) {
        let l = self.limiter(slot);
        l.refused += 1;
        if l.refused > REFUSALS_BEFORE_CLOSE {
            self.stats.inc(Counter::LimitCloses);
            self.ws_close(
                slot,
                CloseCode::POLICY,
                "too many operations past the rate limits",
            );
        }
    }

    /// Drops the buckets of connections that are back to full (and of closed ones).
    pub(super) fn sweep_limiters(&mut self) {
        if self.limiters.is_empty() || self.now < self.limiter_sweep_at {
            return;
        }
        self.limiter_sweep_at = self.now + LIMITER_SWEEP;
        let now = self.now;
        let (cr, cb) = self.limit_params(Limit::Creates);
        let (pr, pb) = self.limit_params(Limit::Publishes);
        let conns = &self.conns;
        self.limiters.retain(|&slot, l| {
            conns.contains(slot) && !(l.creates.is_full(now, cr, cb) && l.pubs.is_full(now, pr, pb))
        });
    }
}

/// How long until the Unix time `exp` (seconds) is reached, at least
/// [`MIN_CHECK_DELAY`].
fn until_unix(exp: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp)
        .saturating_sub(now)
        .max(MIN_CHECK_DELAY)
}

/// The start of a `sub` op: `since` as a number or a position (`"12@k3x9ab2q"`), and an
/// optional `epoch` field.
pub(super) fn op_since(
    since: Option<&SinceValue<'_>>,
    epoch: Option<&str>,
) -> Result<Since, String> {
    let epoch = match epoch {
        None => Epoch::NONE,
        Some(e) => Epoch::parse(e).ok_or("epoch must be 1-16 characters of 0-9 a-z")?,
    };
    match since {
        None => Ok(Since::Now),
        Some(SinceValue::Num(n)) => Ok(Since::Seq(*n, epoch)),
        Some(SinceValue::Text(t)) => {
            let p = protocol::cursor::parse_position(t).map_err(|e| format!("since: {e}"))?;
            let e = p.epoch.and_then(Epoch::parse).unwrap_or(epoch);
            Ok(Since::Seq(p.seq, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate_up_to_their_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!(b.take(t0, 2.0, 3) && b.take(t0, 2.0, 3) && b.take(t0, 2.0, 3));
        assert!(!b.take(t0, 2.0, 3), "empty");
        let later = t0 + Duration::from_millis(500);
        assert!(b.take(later, 2.0, 3), "one back after half a second at 2/s");
        assert!(!b.take(later, 2.0, 3));
        assert!(!b.is_full(later, 2.0, 3));
        assert!(b.is_full(later + Duration::from_secs(2), 2.0, 3));
    }
}
