//! Delivery accounting: which messages each subscriber got, lost, got twice or out of order.
//!
//! Message `i` (0-based, carried in the content) is published once to every channel.
//! A subscriber of a channel is expected to receive exactly the messages published to it,
//! each once, in increasing `i`. [`SeqTracker`] records one subscriber's arrivals:
//!
//! - *duplicated*: an `i` received again;
//! - *out of order*: an `i` received after a larger one;
//! - *lost*: an expected `i` never received (known only at the end: [`SeqTracker::tally`]);
//! - *unexpected*: an `i` received that was never (successfully) published.
//!
//! The usual case, everything in order, costs one counter: `0..next` have arrived and
//! nothing above. Only when a message arrives ahead of `next` does the tracker allocate a
//! bitset of the messages seen.
//!
//! [`PubAgg`] aggregates, per publish, the first and last arrival (relative to the send
//! time) and the number of receivers, mergeable across processes.

use serde::{Deserialize, Serialize};

/// How one arrival relates to the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one (possibly after a hole).
    InOrder,
    /// Already received.
    Duplicate,
    /// Smaller than one already received.
    OutOfOrder,
    /// Outside `0..limit`: not one of ours.
    OutOfRange,
}

/// One subscriber's arrivals. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Fast path: exactly `0..next` arrived. With a bitset: one past the largest seen.
    next: u32,
    /// Messages seen, once something arrived ahead of `next`.
    seen: Option<Box<[u64]>>,
    distinct: u32,
    duplicated: u32,
    out_of_order: u32,
}

/// What one channel was expected to deliver: messages `0..published` except `failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Messages `0..published` were sent to the channel.
    pub published: u32,
    /// Sent but not acknowledged by the server (sorted): neither expected nor forbidden.
    pub failed: Vec<u32>,
}

impl Expected {
    /// True when `i` had to arrive.
    pub fn wants(&self, i: u32) -> bool {
        i < self.published && self.failed.binary_search(&i).is_err()
    }

    /// Number of messages that had to arrive.
    pub fn count(&self) -> u32 {
        self.published - self.failed.iter().filter(|&&f| f < self.published).count() as u32
    }
}

/// The final accounting of one subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Distinct expected messages received.
    pub received: u64,
    /// Expected and never received.
    pub lost: u64,
    /// Received more than once (extra copies).
    pub duplicated: u64,
    /// Received after a larger one.
    pub out_of_order: u64,
    /// Received but never successfully published.
    pub unexpected: u64,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
    }
}

impl SeqTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the arrival of message `i`; `limit` is the number of messages of the run
    /// (larger `i` are not ours).
    pub fn record(&mut self, i: u32, limit: u32) -> Arrival {
        if i >= limit {
            return Arrival::OutOfRange;
        }
        let Some(seen) = self.seen.as_mut() else {
            if i == self.next {
                self.next += 1;
                self.distinct += 1;
                return Arrival::InOrder;
            }
            if i < self.next {
                self.duplicated += 1;
                return Arrival::Duplicate;
            }
            // Ahead of `next`: a hole opens. From now on keep a bitset.
            let mut bits = vec![0u64; limit.div_ceil(64) as usize].into_boxed_slice();
            for k in 0..self.next {
                bits[(k / 64) as usize] |= 1 << (k % 64);
            }
            bits[(i / 64) as usize] |= 1 << (i % 64);
            self.seen = Some(bits);
            self.next = i + 1;
            self.distinct += 1;
            return Arrival::InOrder;
        };
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if seen.get(word).is_some_and(|w| w & bit != 0) {
            self.duplicated += 1;
            return Arrival::Duplicate;
        }
        if let Some(w) = seen.get_mut(word) {
            *w |= bit;
        }
        self.distinct += 1;
        if i < self.next {
            self.out_of_order += 1;
            Arrival::OutOfOrder
        } else {
            self.next = i + 1;
            Arrival::InOrder
        }
    }

    /// True when message `i` arrived.
    pub fn has(&self, i: u32) -> bool {
        match &self.seen {
            None => i < self.next,
            Some(bits) => bits
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0),
        }
    }

    /// Distinct messages received so far.
    pub fn distinct(&self) -> u32 {
        self.distinct
    }

    /// The expected messages that never arrived.
    pub fn missing<'a>(&'a self, exp: &'a Expected) -> impl Iterator<Item = u32> + 'a {
        let from = match &self.seen {
            None => self.next.min(exp.published),
            Some(_) => 0,
        };
        (from..exp.published).filter(move |&i| exp.wants(i) && !self.has(i))
    }

    /// True when every expected message arrived.
    pub fn is_complete(&self, exp: &Expected) -> bool {
        if self.seen.is_none() && self.next >= exp.published {
            return true;
        }
        self.tally(exp).lost == 0
    }

    /// The accounting against what was expected.
    pub fn tally(&self, exp: &Expected) -> Tally {
        let (received, unexpected) = match &self.seen {
            None => {
                // Received exactly 0..next.
                let upto = self.next.min(exp.published);
                let failed_below = |n: u32| exp.failed.iter().filter(|&&f| f < n).count() as u32;
                let wanted_received = upto - failed_below(upto);
                let unexpected = (self.next - upto) + failed_below(upto);
                (wanted_received, unexpected)
            }
            Some(_) => {
                let mut received = 0;
                for i in 0..exp.published {
                    if exp.wants(i) && self.has(i) {
                        received += 1;
                    }
                }
                (received, self.distinct - received)
            }
        };
        Tally {
            received: u64::from(received),
            lost: u64::from(exp.count() - received),
            duplicated: u64::from(self.duplicated),
            out_of_order: u64::from(self.out_of_order),
            unexpected: u64::from(unexpected),
        }
    }
}

/// Per publish: first and last arrival (nanoseconds after the send time), receivers, and
/// the subscribers that got it twice, late, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubAgg {
    /// Earliest arrival, ns after sending (`u64::MAX` when none).
    pub first_ns: u64,
    /// Latest arrival, ns after sending.
    pub last_ns: u64,
    /// Subscribers that received it (first copies only).
    pub receivers: u32,
    /// Extra copies received.
    pub duplicates: u32,
    /// Subscribers that received it after a later message.
    pub out_of_order: u32,
    /// Subscribers open at the end that expected it and never received it.
    pub missing: u32,
}

impl Default for PubAgg {
    fn default() -> Self {
        PubAgg {
            first_ns: u64::MAX,
            last_ns: 0,
            receivers: 0,
            duplicates: 0,
            out_of_order: 0,
            missing: 0,
        }
    }
}

impl PubAgg {
    /// Counts one receiver that got it `ns` after it was sent.
    pub fn arrive(&mut self, ns: u64) {
        self.first_ns = self.first_ns.min(ns);
        self.last_ns = self.last_ns.max(ns);
        self.receivers += 1;
    }

    /// Adds another process's view of the same publish.
    pub fn merge(&mut self, o: &PubAgg) {
        self.first_ns = self.first_ns.min(o.first_ns);
        self.last_ns = self.last_ns.max(o.last_ns);
        self.receivers += o.receivers;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.missing += o.missing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seq: &[u32], limit: u32) -> (SeqTracker, Vec<Arrival>) {
        let mut t = SeqTracker::new();
        let arrivals = seq.iter().map(|&i| t.record(i, limit)).collect();
        (t, arrivals)
    }

    fn all(published: u32) -> Expected {
        Expected {
            published,
            failed: Vec::new(),
        }
    }

    #[test]
    fn in_order_is_clean_and_needs_no_bitset() {
        let (t, arr) = run(&(0..100).collect::<Vec<_>>(), 100);
        assert!(arr.iter().all(|a| *a == Arrival::InOrder));
        assert!(t.seen.is_none());
        assert_eq!(
            t.tally(&all(100)),
            Tally {
                received: 100,
                ..Tally::default()
            }
        );
        assert!(t.is_complete(&all(100)));
    }

    #[test]
    fn lost_at_the_end_and_in_the_middle() {
        // Tail lost: still the fast path.
        let (t, _) = run(&[0, 1, 2], 10);
        let tally = t.tally(&all(5));
        assert_eq!((tally.received, tally.lost), (3, 2));
        assert!(!t.is_complete(&all(5)));
        // Holes in the middle.
        let (t, arr) = run(&[0, 3, 4, 7], 10);
        assert_eq!(arr, vec![Arrival::InOrder; 4]);
        let tally = t.tally(&all(8));
        assert_eq!(tally.received, 4);
        assert_eq!(tally.lost, 4); // 1, 2, 5, 6
        assert_eq!(tally.out_of_order, 0);
        assert_eq!(tally.duplicated, 0);
    }

    #[test]
    fn duplicates_on_both_paths() {
        let (t, arr) = run(&[0, 1, 1, 0, 2], 5);
        assert_eq!(
            arr,
            vec![
                Arrival::InOrder,
                Arrival::InOrder,
                Arrival::Duplicate,
                Arrival::Duplicate,
                Arrival::InOrder
            ]
        );
        assert_eq!(t.tally(&all(3)).duplicated, 2);
        let (t, arr) = run(&[0, 2, 2, 1, 1], 5);
        assert_eq!(arr[2], Arrival::Duplicate);
        assert_eq!(arr[3], Arrival::OutOfOrder);
        assert_eq!(arr[4], Arrival::Duplicate);
        let tally = t.tally(&all(3));
        assert_eq!(
            (
                tally.received,
                tally.lost,
                tally.duplicated,
                tally.out_of_order
            ),
            (3, 0, 2, 1)
        );
    }

    #[test]
    fn out_of_order_counts_each_late_message() {
        let (t, arr) = run(&[3, 2, 1, 0, 4], 5);
        assert_eq!(
            arr,
            vec![
                Arrival::InOrder,
                Arrival::OutOfOrder,
                Arrival::OutOfOrder,
                Arrival::OutOfOrder,
                Arrival::InOrder
            ]
        );
        let tally = t.tally(&all(5));
        assert_eq!((tally.received, tally.lost, tally.out_of_order), (5, 0, 3));
        assert!(t.is_complete(&all(5)));
        // A swap of neighbours is one out-of-order arrival.
        let (t, _) = run(&[0, 2, 1, 3], 4);
        assert_eq!(t.tally(&all(4)).out_of_order, 1);
    }

    #[test]
    fn out_of_range_and_unexpected() {
        let (t, arr) = run(&[0, 1, 99, 2], 10);
        assert_eq!(arr[2], Arrival::OutOfRange);
        assert_eq!(t.tally(&all(3)).unexpected, 0);
        // Publishing stopped after 2 messages but 3 arrived (fast path).
        let tally = t.tally(&all(2));
        assert_eq!((tally.received, tally.unexpected, tally.lost), (2, 1, 0));
        // A publish that failed (no reply) is neither lost nor... expected.
        let exp = Expected {
            published: 5,
            failed: vec![1, 3],
        };
        assert_eq!(exp.count(), 3);
        let (t, _) = run(&[0, 2, 4], 10);
        assert_eq!(
            t.tally(&exp),
            Tally {
                received: 3,
                ..Tally::default()
            }
        );
        let (t, _) = run(&[0, 1, 2, 3, 4], 10);
        let tally = t.tally(&exp);
        assert_eq!((tally.received, tally.unexpected, tally.lost), (3, 2, 0));
        let (t, _) = run(&[0, 1], 10);
        let tally = t.tally(&exp);
        assert_eq!((tally.received, tally.unexpected, tally.lost), (1, 1, 2));
    }

    #[test]
    fn bitset_covers_the_last_word() {
        let limit = 130;
        let (t, _) = run(&[129, 64, 63, 0, 129], limit);
        assert!(t.has(129) && t.has(64) && t.has(63) && t.has(0));
        assert!(!t.has(1) && !t.has(128));
        let tally = t.tally(&all(limit));
        assert_eq!(tally.received, 4);
        assert_eq!(tally.lost, 126);
        assert_eq!(tally.duplicated, 1);
        assert_eq!(tally.out_of_order, 3);
    }

    #[test]
    fn missing_lists_the_holes() {
        let exp = Expected {
            published: 8,
            failed: vec![6],
        };
        let (t, _) = run(&[0, 1, 2], 10);
        assert_eq!(t.missing(&exp).collect::<Vec<_>>(), vec![3, 4, 5, 7]);
        let (t, _) = run(&[0, 3, 2, 7], 10);
        assert_eq!(t.missing(&exp).collect::<Vec<_>>(), vec![1, 4, 5]);
        let (t, _) = run(&(0..8).collect::<Vec<_>>(), 10);
        assert_eq!(t.missing(&exp).count(), 0);
    }

    #[test]
    fn nothing_received() {
        let t = SeqTracker::new();
        assert_eq!(t.tally(&all(7)).lost, 7);
        assert!(t.is_complete(&all(0)));
    }

    #[test]
    fn publish_aggregates_merge() {
        let mut a = PubAgg::default();
        a.arrive(300);
        a.arrive(100);
        let mut b = PubAgg::default();
        b.arrive(50);
        b.arrive(900);
        b.duplicates = 2;
        b.missing = 1;
        a.out_of_order = 1;
        let mut none = PubAgg::default();
        none.merge(&PubAgg::default());
        a.merge(&b);
        a.merge(&none);
        assert_eq!(
            a,
            PubAgg {
                first_ns: 50,
                last_ns: 900,
                receivers: 4,
                duplicates: 2,
                out_of_order: 1,
                missing: 1,
            }
        );
    }
}
