//! Idempotency records: a publish retried with the same `key=` within the window gets
//! the first publish's answer, not a second message.

use super::*;

/// Idempotency records: (channel, key) -> the first publish, forgotten after the window
/// (or earlier, oldest first, past `idempotency_max_keys`).
#[derive(Default)]
pub(super) struct IdemTable {
    pub(super) map: HashMap<(Arc<str>, Box<str>), IdemEntry>,
    pub(super) order: VecDeque<(u64, Arc<str>, Box<str>)>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct IdemEntry {
    pub(super) epoch: Epoch,
    pub(super) seq: u64,
    pub(super) ticket: u64,
    pub(super) expires: u64,
}

impl Hub {
    pub(super) fn idem_lookup(&self, inner: &Inner, name: &str, key: &str) -> Option<Accepted> {
        let e = inner.idem.map.get(&(Arc::from(name), Box::from(key)))?;
        let ticket = match &self.store {
            Some(s) if s.committed() < e.ticket => e.ticket,
            _ => 0,
        };
        Some(Accepted {
            seq: e.seq,
            epoch: e.epoch,
            duplicate: true,
            ticket,
        })
    }

    pub(super) fn idem_insert(&self, inner: &mut Inner, name: &str, key: &str, a: Accepted) {
        let name: Arc<str> = Arc::from(name);
        let key: Box<str> = Box::from(key);
        let expires = unix_now() + self.idem_window.as_secs();
        while inner.idem.map.len() >= self.idem_max {
            let Some((_, c, k)) = inner.idem.order.pop_front() else {
                break;
            };
            if inner.idem.map.remove(&(c.clone(), k.clone())).is_some() {
                self.idem_evicted.fetch_add(1, Ordering::Relaxed);
                self.forget_in_store(c, k);
            }
        }
        inner
            .idem
            .order
            .push_back((expires, name.clone(), key.clone()));
        inner.idem.map.insert(
            (name, key),
            IdemEntry {
                epoch: a.epoch,
                seq: a.seq,
                ticket: a.ticket,
                expires,
            },
        );
    }

    pub(super) fn forget_in_store(&self, channel: Arc<str>, key: Box<str>) {
        if let Some(s) = &self.store {
            s.enqueue(Op::Forget { channel, key }, Commit::ByWriter);
        }
    }
}
