//! [`Counters`]: everything a run counts, in one struct.
//!
//! The same struct is, in turn:
//!
//! - what a child process fills while it runs ([`crate::child`]), completed at the end
//!   with the per-subscriber accounting;
//! - its final report on the pipe to the coordinator ([`crate::wire::ChildMsg::Final`],
//!   serde; histograms travel as base64 strings, see [`crate::hist`]);
//! - the coordinator's sum of all children's reports ([`Counters::add`]), from which the
//!   parts of the run's report are made ([`crate::report`]).
//!
//! A new counter is added here, and to [`Counters::add`], and nowhere else.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::account::{PubAgg, Tally};
use crate::hist::Hist;
use crate::wire::Outage;

/// What one child measured, or (after [`Counters::add`]) all of them together.
///
/// The field order is the order of the keys on the wire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Connect attempts.
    pub attempts: u64,
    /// Subscriptions established (reconnects included).
    pub established: u64,
    /// Established by a reconnect (storm).
    pub reconnects: u64,
    /// Failed attempts by reason.
    pub failed: BTreeMap<String, u64>,
    /// Drops by the server, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Open at the end (set when the child reports).
    pub open_at_end: u64,
    /// Storm: connections closed on purpose.
    pub churn_closed: u64,
    /// Unix ns of the first attempt (the earliest of all children).
    pub first_attempt_ns: Option<u64>,
    /// Unix ns of the last first-attempt subscription established (for the connect rate;
    /// the latest of all children).
    pub last_initial_ns: Option<u64>,
    /// Connections whose first attempt succeeded.
    pub initial_established: u64,
    /// Connect latency (start of connect to subscription established).
    pub connect_hist: Hist,
    /// Publish-to-delivery latency of first copies.
    pub latency_hist: Hist,
    /// Data messages received (all copies).
    pub received: u64,
    /// Messages that are not ours.
    pub foreign: u64,
    /// pushedge `gap` messages.
    pub gaps: u64,
    /// Messages whose seq does not follow the connection's earlier seqs.
    pub seq_errors: u64,
    /// Accounting of subscribers open at the end (set when the child reports).
    pub tally: Tally,
    /// Accounting of subscribers dropped during the run (set when the child reports).
    pub tally_dropped: Tally,
    /// Open subscribers that got every expected message (set when the child reports).
    pub complete: u64,
    /// Open subscribers missing some (set when the child reports).
    pub incomplete: u64,
    /// Per publish (`i * channels + channel`): first/last arrival and receivers.
    pub publishes: Vec<PubAgg>,
    /// Unix ns of the first data arrival (the earliest of all children).
    pub first_arrival_ns: Option<u64>,
    /// Unix ns of the last data arrival (the latest of all children).
    pub last_arrival_ns: Option<u64>,
    /// Handshake mode: connections closed as soon as they were subscribed.
    pub cycles: u64,
    /// Unix ns when the child stopped (the latest of all children).
    pub stop_ns: Option<u64>,
    /// TLS handshakes completed, full (no session resumed).
    pub tls_full: u64,
    /// TLS handshakes completed with a session resumed.
    pub tls_resumed: u64,
    /// TLS handshakes by protocol version (`"1.3"`, `"1.2"`).
    pub tls_versions: BTreeMap<String, u64>,
    /// Connect start to TLS handshake complete, full handshakes.
    pub tls_full_hist: Hist,
    /// Connect start to TLS handshake complete, resumed handshakes.
    pub tls_resumed_hist: Hist,
    /// Storm outages. In a child's report, only the one still open at the end (the
    /// others were sent as [`crate::wire::ChildMsg::Outage`] when they ended); the
    /// coordinator adds those to the merged counters.
    #[serde(rename = "outages_open")]
    pub outages: Vec<Outage>,
}

/// Adds `n` to `map[key]`.
pub fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    if let Some(v) = map.get_mut(key) {
        *v += n;
    } else {
        map.insert(key.to_string(), n);
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

impl Counters {
    /// Adds another process's counters: sums, histogram merges, the earliest first and
    /// latest last times, per-publish merges, and the outages appended.
    pub fn add(&mut self, o: &Counters) {
        self.attempts += o.attempts;
        self.established += o.established;
        self.reconnects += o.reconnects;
        for (k, v) in &o.failed {
            bump(&mut self.failed, k, *v);
        }
        for (k, v) in &o.dropped {
            bump(&mut self.dropped, k, *v);
        }
        self.open_at_end += o.open_at_end;
        self.churn_closed += o.churn_closed;
        self.first_attempt_ns = min_opt(self.first_attempt_ns, o.first_attempt_ns);
        self.last_initial_ns = max_opt(self.last_initial_ns, o.last_initial_ns);
        self.initial_established += o.initial_established;
        self.connect_hist.merge(&o.connect_hist);
        self.latency_hist.merge(&o.latency_hist);
        self.received += o.received;
        self.foreign += o.foreign;
        self.gaps += o.gaps;
        self.seq_errors += o.seq_errors;
        self.tally.add(&o.tally);
        self.tally_dropped.add(&o.tally_dropped);
        self.complete += o.complete;
        self.incomplete += o.incomplete;
        if self.publishes.len() < o.publishes.len() {
            self.publishes.resize(o.publishes.len(), PubAgg::default());
        }
        for (m, p) in self.publishes.iter_mut().zip(&o.publishes) {
            m.merge(p);
        }
        self.first_arrival_ns = min_opt(self.first_arrival_ns, o.first_arrival_ns);
        self.last_arrival_ns = max_opt(self.last_arrival_ns, o.last_arrival_ns);
        self.outages.extend(o.outages.iter().copied());
        self.cycles += o.cycles;
        self.stop_ns = max_opt(self.stop_ns, o.stop_ns);
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
        for (k, v) in &o.tls_versions {
            bump(&mut self.tls_versions, k, *v);
        }
        self.tls_full_hist.merge(&o.tls_full_hist);
        self.tls_resumed_hist.merge(&o.tls_resumed_hist);
    }

    /// Failed attempts, all reasons.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Drops by the server, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_merges_and_keeps_the_extremes() {
        let mut a = Counters {
            attempts: 3,
            first_attempt_ns: Some(20),
            last_initial_ns: Some(50),
            first_arrival_ns: None,
            last_arrival_ns: Some(7),
            tally: Tally {
                lost: 1,
                ..Tally::default()
            },
            ..Counters::default()
        };
        a.connect_hist.record_us(10);
        bump(&mut a.failed, "refused", 2);
        let mut b = Counters {
            attempts: 4,
            gaps: 1,
            first_attempt_ns: Some(10),
            last_initial_ns: Some(40),
            first_arrival_ns: Some(5),
            last_arrival_ns: Some(9),
            publishes: vec![PubAgg::default(); 2],
            outages: vec![Outage {
                start_ns: 1,
                end_ns: None,
                peak: 3,
            }],
            ..Counters::default()
        };
        b.connect_hist.record_us(30);
        bump(&mut b.failed, "refused", 1);
        bump(&mut b.failed, "timeout", 1);
        bump(&mut b.dropped, "eof", 4);
        let mut m = Counters::default();
        m.add(&a);
        m.add(&b);
        assert_eq!((m.attempts, m.gaps, m.tally.lost), (7, 1, 1));
        assert_eq!((m.failed_total(), m.dropped_total()), (4, 4));
        assert_eq!(m.failed["refused"], 3);
        assert_eq!(
            (m.first_attempt_ns, m.last_initial_ns),
            (Some(10), Some(50))
        );
        assert_eq!((m.first_arrival_ns, m.last_arrival_ns), (Some(5), Some(9)));
        assert_eq!(m.connect_hist.count(), 2);
        assert_eq!(m.publishes.len(), 2);
        assert_eq!(m.outages.len(), 1);
    }

    #[test]
    fn wire_keys_stay_the_same() {
        let mut c = Counters::default();
        c.latency_hist.record_us(5);
        let v = serde_json::to_value(&c).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "connect_hist",
            "latency_hist",
            "outages_open",
            "tally_dropped",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        let back: Counters = serde_json::from_value(v).unwrap();
        assert_eq!(back.latency_hist.count(), 1);
    }
}
