//! Connection state recovery: the sockets that lost their transport, kept for
//! `socketio_recovery_secs` ([`Recoveries`]), and what is kept of each.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::secs;
use crate::epoch::Epoch;
use crate::limits::SOCKETIO_MAX_RECOVERY;
use crate::reactor::Backend;
use crate::worker::Core;

use super::recovery_on;
use super::session::Id;
use super::upgrade::{cursors, own_rooms};

pub(super) struct Record {
    pub(super) nsp: Box<str>,
    pub(super) sid: Id,
    pub(super) channels: Vec<(Arc<str>, u64, Epoch)>,
    pub(super) until: Instant,
}

/// Sockets that lost their transport, kept for connection state recovery (per process,
/// bounded by [`SOCKETIO_MAX_RECOVERY`], the oldest dropped first); and the count of
/// Socket.IO commands between workers not handled yet.
#[derive(Default)]
pub struct Recoveries {
    pub(super) inner: Mutex<Kept>,
    /// [`SioCmd`](super::SioCmd)s pushed to an inbox and not yet handled (a hot handover
    /// cannot carry them: it refuses, to be retried, while there are any).
    pub(super) in_flight: AtomicUsize,
    /// The node tags of the processes this one took over from (hot handover), as a set
    /// of 256 bits: their sids stay valid here.
    pub(super) tags: [std::sync::atomic::AtomicU64; 4],
}

/// The records by `pid`, and their expiries in the order they were kept.
type Kept = (HashMap<Box<str>, Record>, VecDeque<(Instant, Box<str>)>);

impl Recoveries {
    pub(super) fn keep(&self, pid: Box<str>, rec: Record) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *g;
        let now = Instant::now();
        while let Some((t, _)) = order.front() {
            if *t > now && map.len() < SOCKETIO_MAX_RECOVERY {
                break;
            }
            let (_, k) = order.pop_front().expect("front exists");
            if map
                .get(&k)
                .is_some_and(|r| r.until <= now || map.len() >= SOCKETIO_MAX_RECOVERY)
            {
                map.remove(&k);
            }
        }
        order.push_back((rec.until, pid.clone()));
        map.insert(pid, rec);
    }

    pub(super) fn take(&self, pid: &str, nsp: &str) -> Option<Record> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rec = g.0.remove(pid)?;
        (rec.until > Instant::now() && &*rec.nsp == nsp).then_some(rec)
    }

    /// True for the node tag of a process this one took over from.
    pub(super) fn knows_tag(&self, tag: u8) -> bool {
        self.tags[usize::from(tag >> 6)].load(Ordering::Relaxed) & (1 << (tag & 63)) != 0
    }

    /// Accepts the sids of node tag `tag` (a predecessor's).
    pub(super) fn add_tag(&self, tag: u8) {
        self.tags[usize::from(tag >> 6)].fetch_or(1 << (tag & 63), Ordering::Relaxed);
    }

    /// The predecessors' node tags.
    pub(super) fn known_tags(&self) -> Vec<u8> {
        (0..=u8::MAX).filter(|&t| self.knows_tag(t)).collect()
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// True with none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps what a socket needs to resume (its transport was lost).
pub(super) fn keep_for_recovery<B: Backend>(cx: &mut Core<B>, s: usize) {
    if !recovery_on(cx) {
        return;
    }
    let Some(session) = cx.sio.session(s) else {
        return;
    };
    if session.nsps.is_empty() {
        return;
    }
    let channels = cursors(cx, s);
    let until = cx.now + secs(cx.shared.cfg.socketio_recovery_secs);
    let mut records = Vec::new();
    for n in &session.nsps {
        let Some(pid) = n.pid else {
            continue;
        };
        let mut mine: Vec<(Arc<str>, u64, Epoch)> = channels
            .iter()
            .filter(|(c, _, _)| session.nsp_of(c).is_some_and(|x| x.name == n.name))
            .cloned()
            .collect();
        // Its own room, which has no subscription unless it moved before.
        mine.extend(own_rooms(cx, s, std::slice::from_ref(n)));
        records.push((
            pid,
            Record {
                nsp: n.name.clone(),
                sid: n.sid,
                channels: mine,
                until,
            },
        ));
    }
    for (pid, rec) in records {
        cx.shared.sio_recovery.keep(pid.as_str().into(), rec);
    }
}
