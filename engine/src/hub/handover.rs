//! The hub's part of a hot handover (see `crate::handover`): freezing publishes, the
//! memory-mode snapshot of every channel, and loading one in the successor.

use super::*;
use crate::store::{LoadedChannel, LoadedIdem};

impl Hub {
    /// Refuses publishes while a hot handover holds the world still (a WebSocket client's
    /// `pub` gets 503 and may retry; the admin port is not read meanwhile).
    pub(super) fn check_frozen(&self) -> Result<(), HubError> {
        if self.frozen.load(Ordering::Acquire) {
            return Err(HubError::Unavailable(
                "the server is being upgraded, retry".into(),
            ));
        }
        Ok(())
    }

    /// Freezes (or thaws) publishing. Taken under the hub's lock, so a publish that got
    /// through has pushed its deliveries before this returns.
    pub fn set_frozen(&self, frozen: bool) {
        let _inner = self.lock();
        self.frozen.store(frozen, Ordering::Release);
    }

    /// Every channel's stream and the idempotency records, as the disk store's load
    /// would give them (memory mode's handover to the successor).
    pub fn snapshot(&self) -> Loaded {
        let inner = self.lock();
        let channels = inner
            .chans
            .iter()
            .filter(|(_, c)| !c.closing)
            .map(|(_, c)| LoadedChannel {
                name: c.name.to_string(),
                epoch: c.epoch,
                seq: c.seq,
                history: c
                    .history
                    .iter()
                    .map(|m| (m.seq, crate::msg::pack(&m.sender, &m.content)))
                    .collect(),
            })
            .collect();
        let idem = inner
            .idem
            .map
            .iter()
            .map(|((chan, key), e)| LoadedIdem {
                channel: chan.to_string(),
                key: key.to_string(),
                epoch: e.epoch,
                seq: e.seq,
                expires: e.expires,
            })
            .collect();
        Loaded { channels, idem }
    }

    /// Loads what [`Hub::snapshot`] took in the old process (before any subscription),
    /// exactly as the disk store's contents are loaded.
    pub fn restore(&self, loaded: Loaded) {
        self.load(loaded);
    }
}
