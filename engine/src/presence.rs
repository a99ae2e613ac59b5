//! Presence: who is subscribed to the channels the `presence` patterns name (the
//! process-wide table; the workers' side, joins and leaves, is `worker::presence`).
//!
//! A member is a token's `sub` (all its connections together), or one anonymous
//! connection (`anon:<worker>:<slot>:<generation>`). The table counts each member's
//! connections per channel. In a cluster each node reports its members to Redis with its
//! subscriber counts (a hash per node that expires with the node, see `cluster`), and the
//! admin port's listing merges the live nodes' reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use protocol::message::{self, JsonStyle};

use crate::config::pattern_matches;
use crate::limits::MAX_PRESENCE_LIST;

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
    pub key: crate::msg::ChanKey,
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

    /// Every tracked channel with members, as reported to Redis: channel and
    /// `[[sub, info or null, connections], ...]`.
    pub fn report(&self) -> Vec<(Arc<str>, String)> {
        let chans = self.lock();
        chans
            .iter()
            .map(|(c, members)| {
                let list: Vec<serde_json::Value> = members
                    .iter()
                    .map(|(s, m)| {
                        let info = serde_json::from_str(&m.info).unwrap_or(serde_json::Value::Null);
                        serde_json::json!([s, info, m.conns])
                    })
                    .collect();
                (c.clone(), serde_json::Value::Array(list).to_string())
            })
            .collect()
    }

    /// The members of `channel` (at most [`MAX_PRESENCE_LIST`], by `sub`).
    pub fn list(&self, channel: &str) -> Listing {
        let chans = self.lock();
        let Some(members) = chans.get(channel) else {
            return (0, Vec::new());
        };
        let list = members
            .iter()
            .map(|(s, m)| (s.clone(), m.info.clone(), m.conns))
            .collect();
        sorted(list)
    }
}

/// A listing from members in any order: sorted by `sub`, at most [`MAX_PRESENCE_LIST`].
pub fn sorted(mut list: Vec<(Box<str>, Box<str>, u32)>) -> Listing {
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let count = list.len();
    list.truncate(MAX_PRESENCE_LIST);
    (count, list)
}

/// Merges nodes' reports (`report`'s JSON) of one channel into a listing: a member on
/// several nodes is one, its connections added up.
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a str>) -> Listing {
    let mut by_sub: HashMap<Box<str>, (Box<str>, u32)> = HashMap::new();
    for r in reports {
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(r)
        else {
            continue;
        };
        for item in items {
            let (Some(sub), Some(conns)) = (item[0].as_str(), item[2].as_u64()) else {
                continue;
            };
            let info: Box<str> = match &item[1] {
                serde_json::Value::Null => Box::default(),
                v => v.to_string().into(),
            };
            let e = by_sub.entry(sub.into()).or_insert((info, 0));
            e.1 = e.1.saturating_add(conns as u32);
        }
    }
    sorted(by_sub.into_iter().map(|(s, (i, c))| (s, i, c)).collect())
}

/// Whether `channel`'s presence is tracked.
pub fn tracked(cfg: &crate::config::Config, channel: &str) -> bool {
    !cfg.presence.is_empty() && cfg.presence.iter().any(|p| pattern_matches(p, channel))
}

/// The presence answer: `{"type":"presence","channel":...,"count":N,"members":[...]}`
/// (`id` added when given), for a tracked channel; else the subscriber count alone.
/// `cluster`: merged from every live node's report (Redis, so not on a worker thread);
/// else this process's members.
pub fn answer_json(
    shared: &crate::shared::Shared,
    channel: &str,
    id: Option<&str>,
    cluster: bool,
) -> Result<Vec<u8>, (u16, String)> {
    message::validate_channel(channel).map_err(|e| (400, e.to_string()))?;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"presence\",\"channel\":");
    message::write_json_string(&mut out, channel, JsonStyle::Plain);
    if tracked(&shared.cfg, channel) {
        let (count, members) = match (&shared.cluster, cluster) {
            (Some(c), true) => c
                .presence(channel)
                .map_err(|e| (e.status(), format!("presence from redis: {}", e.reason())))?,
            _ => shared.presence.list(channel),
        };
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
