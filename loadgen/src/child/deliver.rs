//! Delivery accounting: each data message a subscriber receives is recognised (ours or
//! foreign), checked against the subscriber's earlier arrivals and seqs, and counted per
//! publish; at the end, [`Child::report`] tallies every subscriber against what was
//! published and completes the child's [`Counters`].

use super::conn::{Logical, Stage};
use super::Child;
use crate::account::{Arrival, PubAgg};
use crate::counters::Counters;
use crate::payload;

/// The shape of the run, as delivery accounting needs it.
pub(super) struct Delivery {
    /// Messages published to every channel.
    pub(super) messages: u32,
    /// Channels of the run.
    pub(super) channels: u32,
}

impl Delivery {
    /// The per-publish aggregates, all empty (fanout; other modes publish nothing).
    pub(super) fn publishes(&self) -> Vec<PubAgg> {
        vec![PubAgg::default(); self.messages as usize * self.channels as usize]
    }

    /// One data message received by subscriber `l` of `channel` at `now_ns`.
    pub(super) fn on_data(
        &self,
        c: &mut Counters,
        l: &mut Logical,
        channel: u32,
        seq: Option<u64>,
        content: &[u8],
        now_ns: u64,
    ) {
        c.received += 1;
        let Some((t_ns, i)) = payload::decode(content) else {
            c.foreign += 1;
            return;
        };
        let p = i as usize * self.channels as usize + channel as usize;
        match l.tracker.record(i, self.messages) {
            Arrival::OutOfRange => {
                c.foreign += 1;
                return;
            }
            Arrival::Duplicate => {
                if let Some(agg) = c.publishes.get_mut(p) {
                    agg.duplicates += 1;
                }
            }
            a @ (Arrival::InOrder | Arrival::OutOfOrder) => {
                let lat_ns = now_ns.saturating_sub(t_ns);
                c.latency_hist.record_us(lat_ns / 1000);
                if let Some(agg) = c.publishes.get_mut(p) {
                    agg.arrive(lat_ns);
                    if a == Arrival::OutOfOrder {
                        agg.out_of_order += 1;
                    }
                }
                c.first_arrival_ns = Some(c.first_arrival_ns.map_or(now_ns, |f| f.min(now_ns)));
                c.last_arrival_ns = Some(c.last_arrival_ns.map_or(now_ns, |f| f.max(now_ns)));
            }
        }
        if let Some(seq) = seq {
            let off = seq as i64 - i64::from(i);
            match l.seq_offset {
                None => l.seq_offset = Some(off),
                Some(o) if o != off => c.seq_errors += 1,
                Some(_) => {}
            }
        }
    }
}

impl Child {
    /// The final report: the counters, with the connections open at the end, the open
    /// outage, and (fanout, once told what was published) every subscriber's tally.
    pub(super) fn report(&self) -> Counters {
        let mut r = self.counters.clone();
        r.open_at_end = self.open;
        r.outages = self.outage.iter().copied().collect();
        let Some(exp) = &self.expect else {
            return r;
        };
        let channels = self.targets_len();
        for (j, l) in self.logical.iter().enumerate() {
            if !l.ever_open {
                continue;
            }
            let c = self.channel_of(j as u32) as usize;
            let Some(e) = exp.get(c) else {
                continue;
            };
            let t = l.tracker.tally(e);
            if l.stage != Stage::Open {
                r.tally_dropped.add(&t);
                continue;
            }
            r.tally.add(&t);
            if t.lost == 0 {
                r.complete += 1;
                continue;
            }
            r.incomplete += 1;
            for i in l.tracker.missing(e) {
                if let Some(agg) = r.publishes.get_mut(i as usize * channels + c) {
                    agg.missing += 1;
                }
            }
        }
        r
    }
}
