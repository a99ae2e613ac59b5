//! Latency histograms: recording, the wire form between processes, merging, percentiles.
//!
//! Every histogram holds microseconds from 1 us to one hour with three significant digits
//! (HdrHistogram). A child process sends its histograms to the coordinator serialized with
//! HdrHistogram's V2 format and base64-encoded, inside a JSON line (that string is the
//! serde form of a [`Hist`]); the coordinator adds them up. Adding histograms is exact, so
//! merged percentiles are the percentiles of all samples of all processes (to the
//! histogram's precision), not an average of percentiles.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest recordable value: one hour in microseconds. Larger values are clamped.
pub const MAX_US: u64 = 3_600_000_000;
/// Significant digits kept.
pub const SIGFIG: u8 = 3;

/// A histogram of microseconds.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

/// Why a serialized histogram cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistError(pub String);

impl std::fmt::Display for HistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad histogram: {}", self.0)
    }
}

impl std::error::Error for HistError {}

/// Percentiles of a histogram, in microseconds (all 0 when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    /// An empty histogram.
    pub fn new() -> Self {
        Hist(
            Histogram::new_with_bounds(1, MAX_US, SIGFIG)
                .expect("1 us .. 1 h with 3 digits are valid bounds"),
        )
    }

    /// Records one sample (clamped to [0, MAX_US]).
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.min(MAX_US));
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Hist) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds always add");
    }

    /// The V2 serialization, base64-encoded.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .expect("serializing into a Vec cannot fail");
        STANDARD.encode(bytes)
    }

    /// Reads what [`Hist::to_base64`] wrote (by this or another process).
    pub fn from_base64(s: &str) -> Result<Hist, HistError> {
        let bytes = STANDARD
            .decode(s)
            .map_err(|e| HistError(format!("base64: {e}")))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| HistError(format!("{e:?}")))?;
        // Re-home the samples in a histogram with our bounds, so merging never fails
        // whatever bounds the sender used.
        let mut out = Hist::new();
        for v in h.iter_recorded() {
            out.0
                .saturating_record_n(v.value_iterated_to().min(MAX_US), v.count_at_value());
        }
        Ok(out)
    }

    /// The value at quantile `q` (0.0 ..= 1.0).
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// The usual percentiles.
    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            min: self.0.min(),
            mean: (self.0.mean() * 10.0).round() / 10.0,
            p50: self.0.value_at_quantile(0.50),
            p90: self.0.value_at_quantile(0.90),
            p99: self.0.value_at_quantile(0.99),
            p999: self.0.value_at_quantile(0.999),
            max: self.0.max(),
        }
    }
}

/// On the wire a histogram is the string [`Hist::to_base64`] writes.
impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

/// Reads the string [`Hist::to_base64`] wrote; a bad one is a [`HistError`].
impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        let s = String::deserialize(d)?;
        Hist::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values 1..=n scaled; three "processes" hold interleaved parts of the samples.
    #[test]
    fn merged_percentiles_equal_the_percentiles_of_all_samples() {
        let samples: Vec<u64> = (1..=30_000u64).map(|v| v * 7 % 100_003 + 50).collect();
        let mut whole = Hist::new();
        let mut parts = [Hist::new(), Hist::new(), Hist::new()];
        for (k, &s) in samples.iter().enumerate() {
            whole.record_us(s);
            parts[k % 3].record_us(s);
        }
        // Each process sends its histogram over the pipe as text.
        let wire: Vec<String> = parts.iter().map(Hist::to_base64).collect();
        let mut merged = Hist::new();
        for w in &wire {
            merged.merge(&Hist::from_base64(w).unwrap());
        }
        assert_eq!(merged.count(), samples.len() as u64);
        assert_eq!(merged.summary(), whole.summary());

        // And the percentiles are right to the histogram's precision (3 digits).
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = sorted[((q * sorted.len() as f64).ceil() as usize).max(1) - 1];
            let got = merged.quantile(q);
            let err = got.abs_diff(exact) as f64 / exact as f64;
            assert!(err <= 0.001, "q {q}: exact {exact} got {got}");
        }
    }

    #[test]
    fn skewed_processes_merge_by_weight() {
        // One fast process with many samples and one slow process with few: the merged
        // median is the fast one's, and the max is the slow one's.
        let mut fast = Hist::new();
        let mut slow = Hist::new();
        for _ in 0..9_900 {
            fast.record_us(100);
        }
        for _ in 0..100 {
            slow.record_us(50_000);
        }
        let mut merged = Hist::from_base64(&fast.to_base64()).unwrap();
        merged.merge(&Hist::from_base64(&slow.to_base64()).unwrap());
        let s = merged.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.p50, 100);
        assert_eq!(s.p90, 100);
        assert!(s.p999.abs_diff(50_000) <= 50, "{s:?}");
        assert!(s.max.abs_diff(50_000) <= 50, "{s:?}");
        assert_eq!(s.min, 100);
    }

    #[test]
    fn round_trip_keeps_every_count() {
        let mut h = Hist::new();
        for v in [0, 1, 2, 999, 1_000, 1_001, 123_456, MAX_US, MAX_US * 2] {
            h.record_us(v);
        }
        let back = Hist::from_base64(&h.to_base64()).unwrap();
        assert_eq!(back.summary(), h.summary());
        assert_eq!(back.count(), 9);
        assert!(back.summary().max <= MAX_US + MAX_US / 1000);
    }

    #[test]
    fn empty_and_garbage() {
        let e = Hist::from_base64(&Hist::new().to_base64()).unwrap();
        assert_eq!(e.summary(), Summary::default());
        assert!(Hist::from_base64("not base64!").is_err());
        assert!(Hist::from_base64("AAAA").is_err());
    }

    #[test]
    fn serde_carries_the_base64_form() {
        let mut h = Hist::new();
        h.record_us(250);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{}\"", h.to_base64()));
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary(), h.summary());
        let bad = serde_json::from_str::<Hist>("\"AAAA\"").unwrap_err();
        assert!(bad.to_string().starts_with("bad histogram"), "{bad}");
    }
}
